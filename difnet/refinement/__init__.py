"""Refinement after a model: a walk on the image with a fixed setting (`BilateralWalk`) after any
model (`RefinedModel`), the guided walk's setting of a DifNet, and the one search that fits both on
images the scores are not taken on (`fitting`)."""

from difnet.refinement.bilateral import (
    BilateralFit,
    BilateralWalk,
    RefinedModel,
    bilateral_grid,
    fit_bilateral_walk,
)
from difnet.refinement.fitting import SettingFit, fit_setting
from difnet.refinement.guided import GuidedFit, GuidedSetting, fit_guided_walk, guided_grid, guided_walk_of

__all__ = [
    "BilateralFit",
    "BilateralWalk",
    "GuidedFit",
    "GuidedSetting",
    "RefinedModel",
    "SettingFit",
    "bilateral_grid",
    "fit_bilateral_walk",
    "fit_guided_walk",
    "fit_setting",
    "guided_grid",
    "guided_walk_of",
]
