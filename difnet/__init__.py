"""DifNet: semantic segmentation by diffusion networks (Jiang et al., NeurIPS 2018)."""

__version__ = "0.1.0"

from difnet import diffusion
from difnet.models import DifNet, DifNetOutput, SimDeepLab, build_model, count_parameters

__all__ = [
    "DifNet",
    "DifNetOutput",
    "SimDeepLab",
    "__version__",
    "build_model",
    "count_parameters",
    "diffusion",
]
