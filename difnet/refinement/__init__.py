"""Refinement after a model: a walk on the image with a fixed setting (`BilateralWalk`) or a dense
CRF (`DenseCRF`) after any model (`RefinedModel`), the guided walk's setting of a DifNet, and the
one search that fits each of them on images the scores are not taken on (`fitting`)."""

from difnet.refinement.bilateral import (
    BilateralFit,
    BilateralWalk,
    bilateral_grid,
    fit_bilateral_walk,
)
from difnet.refinement.dense_crf import DenseCRF, DenseCRFFit, dense_crf_grid, fit_dense_crf
from difnet.refinement.fitting import SettingFit, cheapest_within, fit_setting
from difnet.refinement.guided import GuidedFit, GuidedSetting, fit_guided_walk, guided_grid, guided_walk_of
from difnet.refinement.refined import ImageRefiner, RefinedModel

__all__ = [
    "BilateralFit",
    "BilateralWalk",
    "DenseCRF",
    "DenseCRFFit",
    "GuidedFit",
    "GuidedSetting",
    "ImageRefiner",
    "RefinedModel",
    "SettingFit",
    "bilateral_grid",
    "cheapest_within",
    "dense_crf_grid",
    "fit_bilateral_walk",
    "fit_dense_crf",
    "fit_guided_walk",
    "fit_setting",
    "guided_grid",
    "guided_walk_of",
]
