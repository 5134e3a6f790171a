"""The production PyTorch models: DifNet, Sim-DeepLab and their components."""

from difnet.models.difnet import DifNet, DifNetOutput
from difnet.models.factory import MODELS, build_model, format_parameter_counts, parameter_counts
from difnet.models.parameters import count_parameters
from difnet.models.pretrained import LoadReport
from difnet.models.resnet import RESNET_DEPTHS, DilatedResNet, dilated_resnet
from difnet.models.simdeeplab import SimDeepLab

__all__ = [
    "MODELS",
    "RESNET_DEPTHS",
    "DifNet",
    "DifNetOutput",
    "DilatedResNet",
    "LoadReport",
    "SimDeepLab",
    "build_model",
    "count_parameters",
    "dilated_resnet",
    "format_parameter_counts",
    "parameter_counts",
]
