"""The smp baselines of the CamVid runner (benchmarks/smp_models.py): built, trained and loaded as
the project's own models are, through `difnet.models.register_model`."""

from __future__ import annotations

import pytest
import torch

import benchmarks.smp_models as smp_models
from difnet.models import MODELS, ModelOptions, SegmentationModel, build_model, load_model, register_model
from difnet.training.config import TrainConfig


def test_the_smp_models_and_encoders_are_registered_without_importing_smp():
    assert {"smp-deeplabv3plus", "smp-unet", "smp-fpn"} <= set(MODELS)
    TrainConfig(model="smp-unet", depth=18, dataset="synthetic")  # a recipe needs no smp


def test_register_model_refuses_a_taken_name_and_a_class_without_its_own_name():
    with pytest.raises(ValueError, match="'smp-unet' is already registered"):
        register_model(smp_models.SmpUnet, ModelOptions("again", arguments=()))
    with pytest.raises(ValueError, match="needs its own lower-case `name`"):
        register_model(type("Unnamed", (SegmentationModel,), {}), ModelOptions("x", arguments=()))
    with pytest.raises(TypeError, match="SegmentationModel subclass"):
        register_model(torch.nn.Linear, ModelOptions("x", arguments=()))


@pytest.mark.parametrize("name", ["smp-deeplabv3plus", "smp-unet"])
def test_an_smp_model_takes_any_image_size_and_round_trips_exactly(name, tmp_path):
    pytest.importorskip("segmentation_models_pytorch", reason="the smp baselines need difnet[smp]")
    torch.manual_seed(0)
    model = build_model(name, depth=18, num_classes=5).eval()
    images = torch.randn(2, 3, 45, 61)
    logits = model(images)
    assert logits.shape == (2, 5, 45, 61) and torch.isfinite(logits).all()
    last = model.net.segmentation_head[0]
    assert torch.equal(last.bias, torch.zeros_like(last.bias)) and last.weight.std() < 0.02  # DeepLab's init
    model.save_pretrained(tmp_path / name)
    assert torch.equal(load_model(tmp_path / name)(images), logits)
    assert set(model.param_groups()) == {"backbone", "head"}


def test_an_smp_model_refuses_what_it_cannot_do():
    pytest.importorskip("segmentation_models_pytorch", reason="the smp baselines need difnet[smp]")
    with pytest.raises(ValueError, match="contradicts encoder"):
        build_model("smp-unet", depth=18, encoder="smp-resnet34")
    with pytest.raises(ValueError, match="gradient_checkpointing=False"):
        build_model("smp-unet", depth=18, gradient_checkpointing=True)
    with pytest.raises(ValueError, match="only the resnet\\* encoders"):
        build_model("smp-unet", depth=18, pretrained_backbone="imagenet")
