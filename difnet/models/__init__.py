"""The production PyTorch models: DifNet, Sim-DeepLab and their components."""

from difnet.models.base import SegmentationModel
from difnet.models.diffusion_head import DiffusionHead, DifNetOutput
from difnet.models.difnet import DifNet
from difnet.models.factory import (
    MODELS,
    build_model,
    format_parameter_counts,
    parameter_counts,
    register_model,
)
from difnet.models.finetune import FineTuneReport
from difnet.models.loading import load_model, load_model_with_metadata
from difnet.models.options import ModelOptions
from difnet.models.parameters import count_parameters
from difnet.models.preprocessing import Preprocessing
from difnet.models.pretrained import LoadReport
from difnet.models.resnet import RESNET_DEPTHS, DilatedResNet, dilated_resnet
from difnet.models.serialization import initialize_from, push_to_hub, save_pretrained
from difnet.models.simdeeplab import SimDeepLab

__all__ = [
    "MODELS",
    "RESNET_DEPTHS",
    "DifNet",
    "DifNetOutput",
    "DiffusionHead",
    "DilatedResNet",
    "FineTuneReport",
    "LoadReport",
    "ModelOptions",
    "Preprocessing",
    "SegmentationModel",
    "SimDeepLab",
    "build_model",
    "count_parameters",
    "dilated_resnet",
    "format_parameter_counts",
    "initialize_from",
    "load_model",
    "load_model_with_metadata",
    "parameter_counts",
    "push_to_hub",
    "register_model",
    "save_pretrained",
]
