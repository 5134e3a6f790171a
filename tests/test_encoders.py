"""The encoder registry: every registered encoder's contract, as an encoder (stage maps of its
declared channels and strides at odd input sizes) and as DifNet's encoders (output shapes, the
saved model's round trip, fused against materialized walks, ONNX export, a training step), and
the registry's refusals.

Encoders up to ResNet-18's size run by default; the deeper ResNets share the ResNet-18's code and
run with `-m slow` (each of their cases takes seconds on a CPU)."""

from __future__ import annotations

import copy
import importlib.util
import math
from functools import cache

import pytest
import torch

from difnet import DifNet, load_model
from difnet.encoders import BUILT_IN_ENCODERS, ENCODERS, SmallCNN, build_encoder, register_encoder
from difnet.models import count_parameters

QUICK_PARAMETERS = 12_000_000  # ResNet-18 (11.2 M) and smaller
CLASSES = 3
ODD_SIZE = (37, 45)
NO_ONNX = any(importlib.util.find_spec(m) is None for m in ("onnx", "onnxscript", "onnxruntime"))


@cache
def encoder_parameters(name: str) -> int:
    """The parameter count of encoder `name`, built on the meta device (no memory, no init)."""
    with torch.device("meta"):
        return count_parameters(build_encoder(name))


def every_encoder(*, quick: tuple[str, ...] | None = None) -> list:
    """Every encoder the library registers, as a parameter; those beyond ResNet-18's size (or outside `quick`,
    when given) are marked slow."""
    return [
        pytest.param(name, marks=() if (name in quick if quick else encoder_parameters(name) <= QUICK_PARAMETERS)
                     else pytest.mark.slow)
        for name in sorted(BUILT_IN_ENCODERS)  # not those another test registers
    ]  # fmt: skip


def images(batch: int = 2, size: tuple[int, int] = ODD_SIZE, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(seed))


@cache
def contract_model(name: str) -> DifNet:
    """An eval DifNet on encoder `name` in both branches (seeded), shared by the contract's cases;
    the He-initialised score head gives logits of order 1, so that tolerances mean something."""
    torch.manual_seed(0)
    return DifNet(encoder=name, num_classes=CLASSES, head_init="he").eval()


def test_registry_holds_the_dilated_and_plain_resnets_and_the_small_cnn():
    assert {"resnet50", "resnet50_os16", "resnet50_os32", "resnet18", "small_cnn"} <= set(ENCODERS)
    assert [build_encoder(f"resnet18{tail}").strides[-1] for tail in ("", "_os16", "_os32")] == [8, 16, 32]


@pytest.mark.parametrize("name", every_encoder())
def test_encoder_returns_its_declared_channels_at_its_strides(name):
    encoder = build_encoder(name, in_channels=2).eval()
    with torch.no_grad():
        stages = encoder(torch.randn(1, 2, 37, 41))
    assert [s.shape[1] for s in stages] == list(encoder.out_channels)
    assert [tuple(s.shape[-2:]) for s in stages] == [
        (math.ceil(37 / r), math.ceil(41 / r)) for r in encoder.strides
    ]


@pytest.mark.parametrize("name", every_encoder())
def test_difnet_on_the_encoder_gives_logits_at_odd_sizes_and_walks_on_the_scores_grid(name):
    model = contract_model(name)
    strides = model.seed_backbone.strides
    with torch.no_grad():
        out = model.forward_intermediates(images())
    assert out.logits.shape == (2, CLASSES, *ODD_SIZE)
    assert tuple(out.scores.shape[-2:]) == tuple(math.ceil(side / strides[-1]) for side in ODD_SIZE)
    assert len(out.walks) == 1 + len(strides) and all(y.shape == out.scores.shape for y in out.walks)
    assert model.diffusion_stride == strides[-1] and model.head.grid_level is None


@pytest.mark.parametrize("name", every_encoder())
def test_difnet_on_the_encoder_saves_and_loads_to_identical_logits(name, tmp_path):
    model = contract_model(name)
    folder = model.save_pretrained(tmp_path / name)
    loaded = load_model(folder)
    assert type(loaded) is DifNet and loaded.config == model.config
    assert loaded.config["encoder"] == loaded.config["similarity_encoder"] == name
    x = images(seed=1)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", every_encoder())
def test_difnet_on_the_encoder_fused_and_materialized_walks_agree(name):
    model = contract_model(name)
    with torch.device("meta"):  # the twin's weights are the model's own: no init to pay for
        twin = DifNet(encoder=name, num_classes=CLASSES, walk="materialized")
    twin.load_state_dict(model.state_dict(), assign=True)
    x = images(seed=2)
    with torch.no_grad():
        fused, materialized = model.forward_intermediates(x), twin.eval().forward_intermediates(x)
    scale = fused.logits.abs().max().item()
    assert (fused.walks[-1] - fused.seed).abs().max() > 0.01 * scale  # the walks moved the seed
    torch.testing.assert_close(fused.logits, materialized.logits, rtol=0, atol=1e-5 * scale)


@pytest.mark.skipif(NO_ONNX, reason="the [onnx] extra (onnx, onnxscript, onnxruntime) is not installed")
@pytest.mark.parametrize("name", every_encoder(quick=("small_cnn",)))
def test_difnet_on_the_encoder_exports_to_onnx_computing_its_logits(name, tmp_path):
    """`export_onnx` checks the file in onnxruntime against eager PyTorch and raises beyond its
    tolerance. Each export takes over 10 s: by default only the small CNN's (tests/test_onnx_file.py
    exports the ResNet-18's)."""
    from difnet.export import export_onnx

    result = export_onnx(contract_model(name), tmp_path / "model.onnx", height=ODD_SIZE[0], width=ODD_SIZE[1])
    assert result.max_abs_difference is not None and (result.height, result.width) == ODD_SIZE


@pytest.mark.parametrize("name", every_encoder())
def test_difnet_on_the_encoder_takes_a_training_step_that_changes_every_part(name):
    model = copy.deepcopy(contract_model(name)).train()
    parts = {"seed encoder": model.seed_backbone, "similarity encoder": model.similarity_backbone,
             "score head": model.classifier, "diffusion head": model.head}  # fmt: skip
    before = {part: [p.detach().clone() for p in module.parameters()] for part, module in parts.items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    labels = torch.randint(0, CLASSES, (2, *ODD_SIZE), generator=torch.Generator().manual_seed(0))
    torch.nn.functional.cross_entropy(model(images()), labels).backward()
    optimizer.step()
    for part, module in parts.items():
        changed = [not torch.equal(p, old) for p, old in zip(module.parameters(), before[part], strict=True)]
        assert any(changed), f"the {part} did not change"


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
