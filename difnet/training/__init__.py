"""Training with the paper's recipe: the config, the loop (single process or torchrun + DDP) and
crash-safe checkpoints."""

from difnet.training.checkpoint import load_model, read_checkpoint, save_model
from difnet.training.config import TrainConfig
from difnet.training.loop import NonFiniteLossError, TrainResult, train

__all__ = [
    "NonFiniteLossError",
    "TrainConfig",
    "TrainResult",
    "load_model",
    "read_checkpoint",
    "save_model",
    "train",
]
