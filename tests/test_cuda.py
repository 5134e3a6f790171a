"""The CUDA paths: fused walk against materialized (fp32, bf16, fp16), CUDA against CPU, mixed-precision
forward and backward, and fp16/bf16 training steps with the gradient scaler. Skipped without CUDA;
`python -m benchmarks.gpu` runs them on a GPU."""

from __future__ import annotations

import contextlib

import pytest
import torch

from difnet.diffusion import propagate
from difnet.models import DifNet, build_model
from difnet.training import TrainConfig, read_checkpoint, train
from difnet.training.loop import seed_everything

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")

HALF_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
TINY = dict(
    model="difnet", depth=18, dataset="synthetic", num_classes=3, image_size=(64, 64),
    crop_size=64, batch_size=2, epochs=1, max_steps_per_epoch=2, workers=0, device="cuda",
    progress=False, val_split=None, overwrite=True,
)  # fmt: skip


def walk_inputs(nodes: int, dtype: torch.dtype, device: str = "cuda") -> tuple[torch.Tensor, ...]:
    """Features [1, N, 64] with unit-variance logits, values and upstream gradients [1, N, 21]."""
    generator = torch.Generator().manual_seed(nodes)
    features = torch.randn(1, nodes, 64, generator=generator) * 64**-0.25
    values, upstream = torch.randn(2, 1, nodes, 21, generator=generator)
    return tuple(t.to(device=device, dtype=dtype) for t in (features, values, upstream))


def walk_and_gradients(walk: str, features, values, upstream, autocast: torch.dtype | None):
    """`P y` and its gradients with respect to features and values, optionally under autocast."""
    features, values = features.detach().requires_grad_(), values.detach().requires_grad_()
    with torch.autocast("cuda", dtype=autocast) if autocast else contextlib.nullcontext():
        out = propagate(features, values, walk=walk)
    return (out, *torch.autograd.grad(out, (features, values), upstream.to(out.dtype)))


def assert_walks_close(actual: tuple[torch.Tensor, ...], expected: tuple[torch.Tensor, ...]) -> None:
    """`P y` and both gradients agree to float32 accuracy, or to 2 ulps of a half-precision dtype
    (the gradients come back in the inputs' dtype)."""
    for name, a, b in zip(("P y", "d features", "d values"), actual, expected):
        assert a.dtype == b.dtype, name
        rtol = max(1e-4, 2 * torch.finfo(a.dtype).eps)
        torch.testing.assert_close(a.cpu().float(), b.cpu().float(), rtol=rtol, atol=1e-4, msg=name)


@pytest.mark.parametrize("nodes", [41**2, 64**2])
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_fused_walk_matches_materialized_on_cuda(nodes, precision):
    dtype = HALF_DTYPES.get(precision, torch.float32)
    inputs = walk_inputs(nodes, dtype)
    autocast = HALF_DTYPES.get(precision)
    fused = walk_and_gradients("fused", *inputs, autocast)
    materialized = walk_and_gradients("materialized", *inputs, autocast)
    assert fused[0].dtype == torch.float32  # the walk runs in float32 whatever its inputs
    assert fused[1].dtype == dtype  # and hands back gradients in the inputs' dtype
    assert_walks_close(fused, materialized)


def test_cuda_walk_matches_cpu():
    cpu = walk_and_gradients("fused", *walk_inputs(41**2, torch.float32, "cpu"), None)
    cuda = walk_and_gradients("fused", *walk_inputs(41**2, torch.float32), None)
    assert_walks_close(cuda, cpu)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_difnet_forward_and_backward_under_cuda_autocast(precision):
    torch.manual_seed(0)
    model = DifNet(depth=18, num_classes=5).cuda().train()
    images = torch.randn(2, 3, 97, 129, device="cuda")
    with torch.autocast("cuda", dtype=HALF_DTYPES[precision]):
        out = model(images)
    assert out.shape == (2, 5, 97, 129)
    out.float().square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_difnet_eval_forward_on_cuda_matches_cpu(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # float32 convolutions, as on the CPU
    torch.manual_seed(0)
    model = DifNet(depth=18, num_classes=5).eval()
    images = torch.randn(1, 3, 97, 129)
    with torch.no_grad():
        expected = model(images)
        actual = model.cuda()(images.cuda()).cpu()
    torch.testing.assert_close(actual, expected, rtol=1e-3, atol=1e-3 * float(expected.abs().max()))


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_mixed_precision_training_steps_on_cuda(tmp_path, precision):
    # enough steps for the fp16 scaler to settle from 2^16 (each overflow skips a step and halves it)
    config = TrainConfig(
        **{**TINY, "max_steps_per_epoch": 8}, precision=precision, output_dir=str(tmp_path / "run")
    )
    result = train(config)
    saved = read_checkpoint(tmp_path / "run" / "last.pt")
    assert saved["step"] == 8 and saved["config"]["device"] == "cuda"
    assert all(torch.isfinite(v).all() for v in saved["model"].values() if v.is_floating_point())
    seed_everything(config.seed)  # the weights the run started from, as the trainer built them
    initial = dict(build_model(**config.model_arguments(3)).named_parameters())
    moved = [name for name, value in initial.items() if not torch.equal(value, saved["model"][name].cpu())]
    assert len(moved) > len(initial) / 2, f"only {len(moved)} of {len(initial)} parameters changed"
    if precision == "fp16":  # the scaler is on and kept, and it ran most steps; bf16 needs none
        assert saved["grad_scaler"]["scale"] > 0
        assert result.history[-1]["fp16_skipped_steps"] < 4
