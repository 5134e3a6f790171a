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


def test_difnets_head_on_an_smp_model_takes_its_frozen_network_and_trains_the_head_alone(tmp_path):
    pytest.importorskip("segmentation_models_pytorch", reason="the smp baselines need difnet[smp]")
    from difnet.models.serialization import load_seed_branch

    torch.manual_seed(0)
    first = build_model("smp-deeplabv3plus", depth=18, num_classes=4).eval()
    first.save_pretrained(tmp_path / "first")
    model = build_model("smp-deeplabv3plus-difhead", depth=18, num_classes=4)
    load_seed_branch(model, tmp_path / "first")
    model.freeze_seed_branch().train()
    images = torch.randn(2, 3, 41, 53)
    out = model(images, intermediates=True)
    assert out.logits.shape == (2, 4, 41, 53) and len(out.walks) == 6 and not model.net.training
    out.logits.sum().backward()
    assert all(p.grad is None for p in model.net.parameters()) and any(
        p.grad is not None for p in model.head.parameters()
    )
    torch.testing.assert_close(
        model.net.state_dict()["segmentation_head.0.weight"],
        first.state_dict()["net.segmentation_head.0.weight"],
    )
    model.eval().save_pretrained(tmp_path / "second")
    assert torch.equal(load_model(tmp_path / "second")(images), model(images))
    with pytest.raises(ValueError, match="name 'smp-deeplabv3plus' there, 'smp-fpn' here"):
        load_seed_branch(build_model("smp-fpn-difhead", depth=18, num_classes=4), tmp_path / "first")


def test_the_difhead_variant_starts_from_its_smp_run(tmp_path):
    from benchmarks.camvid import recipe

    config = recipe("smp-deeplabv3plus-lr0.02-difhead", 1, "remedy", 3, tmp_path, "cpu", tmp_path)
    assert config.seed_from == str(tmp_path / "remedy" / "smp-deeplabv3plus-lr0.02-e8-seed1" / "last.pt")
    assert (config.model, config.kernel, config.kernel_radius, config.guided_walk_stride) == (
        "smp-deeplabv3plus-difhead", "distance", 1, 2)  # fmt: skip
