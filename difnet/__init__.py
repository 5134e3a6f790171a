"""DifNet: semantic segmentation by diffusion networks (Jiang et al., NeurIPS 2018)."""

from difnet.models import (
    DiffusionHead,
    DifNet,
    DifNetOutput,
    SegmentationModel,
    SimDeepLab,
    build_model,
    count_parameters,
    load_model,
)

# isort: split
# after difnet.models: the encoder registry builds its ResNets, and the models' base imports the registry
from difnet import diffusion, encoders
from difnet.version import __version__

__all__ = [
    "DifNet",
    "DifNetOutput",
    "DiffusionHead",
    "SegmentationModel",
    "SimDeepLab",
    "__version__",
    "build_model",
    "count_parameters",
    "diffusion",
    "encoders",
    "load_model",
]
