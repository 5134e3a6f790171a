"""The encoder registry: every registered encoder's contract (stage maps of its declared channels
and strides at odd input sizes), DifNet's diffusion head on it, and the registry's refusals."""

import math

import pytest
import torch

from difnet import DiffusionHead
from difnet.encoders import ENCODERS, SmallCNN, build_encoder, register_encoder

# depth 18 and the small CNN keep the contract fast; deeper ResNets share their code
FAST = sorted(name for name in ENCODERS if "18" in name or name == "small_cnn")


def test_registry_holds_the_dilated_and_plain_resnets_and_the_small_cnn():
    assert {"resnet50", "resnet50_os16", "resnet50_os32", "resnet18", "small_cnn"} <= set(ENCODERS)
    assert [build_encoder(f"resnet18{tail}").strides[-1] for tail in ("", "_os16", "_os32")] == [8, 16, 32]


@pytest.mark.parametrize("name", FAST)
def test_encoder_returns_its_declared_channels_at_its_strides(name):
    encoder = build_encoder(name, in_channels=2).eval()
    with torch.no_grad():
        stages = encoder(torch.randn(1, 2, 37, 41))
    assert [s.shape[1] for s in stages] == list(encoder.out_channels)
    assert [tuple(s.shape[-2:]) for s in stages] == [
        (math.ceil(37 / r), math.ceil(41 / r)) for r in encoder.strides
    ]


@pytest.mark.parametrize("name", FAST)
def test_diffusion_head_on_the_encoder_trains_and_its_walks_agree(name):
    torch.manual_seed(0)
    encoder = build_encoder(name)
    classifier = torch.nn.Conv2d(encoder.out_channels[-1], 3, 1)
    heads = {
        walk: DiffusionHead([3, *encoder.out_channels], 3, walk=walk) for walk in ("fused", "materialized")
    }
    heads["materialized"].load_state_dict(heads["fused"].state_dict())
    images = torch.randn(2, 3, 35, 39)
    stages = encoder(images)
    logits = {walk: head(classifier(stages[-1]), [images, *stages]).logits for walk, head in heads.items()}
    torch.testing.assert_close(logits["fused"], logits["materialized"], rtol=0, atol=1e-5)
    assert logits["fused"].shape == (2, 3, 35, 39)
    parameters = [*encoder.parameters(), *classifier.parameters(), *heads["fused"].parameters()]
    optimizer = torch.optim.SGD(parameters, lr=0.01)
    torch.nn.functional.cross_entropy(logits["fused"], torch.randint(0, 3, (2, 35, 39))).backward()
    optimizer.step()
    assert all(p.grad is not None for p in heads["fused"].parameters())


def test_unregistered_and_duplicate_names_are_refused():
    with pytest.raises(
        ValueError, match=r"encoder must be one of \[.*'resnet18'.*'small_cnn'.*\] \(got 'vgg16'\)"
    ):
        build_encoder("vgg16")
    with pytest.raises(ValueError, match="encoder 'small_cnn' is already registered"):
        register_encoder("small_cnn", SmallCNN)
    register_encoder("my_cnn", SmallCNN)
    try:
        assert build_encoder("my_cnn").strides == (2, 4, 8, 8)
    finally:
        del ENCODERS["my_cnn"]
