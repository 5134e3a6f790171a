"""Training at scale: gradient checkpointing (same gradients, BN statistics moved once) and
mixed precision (fp16 with a gradient scaler, bf16, the deprecated --bf16)."""

from __future__ import annotations

import argparse
import copy

import pytest
import torch
from torch import nn
from torch_threads import single_thread

from difnet.models import DifNet, SimDeepLab
from difnet.training import TrainConfig, read_checkpoint, train

TINY = dict(
    model="difnet", depth=18, dataset="synthetic", num_classes=3, image_size=(32, 32),
    crop_size=32, batch_size=2, epochs=1, max_steps_per_epoch=1, workers=0, device="cpu",
    progress=False, val_split=None, overwrite=True,
)  # fmt: skip


def one_training_step(model: torch.nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    model.train()
    model(images).square().mean().backward()
    return {name: p.grad for name, p in model.named_parameters()}


@pytest.mark.parametrize(
    "build",
    [lambda **o: DifNet(depth=18, num_classes=3, **o), lambda **o: SimDeepLab(depth=18, num_classes=3, **o)],
)
def test_gradient_checkpointing_gives_the_same_gradients_and_moves_bn_statistics_once(build):
    torch.manual_seed(0)
    plain = build()
    recomputed = build(gradient_checkpointing=True)
    recomputed.load_state_dict(plain.state_dict())
    images = torch.randn(2, 3, 48, 40)
    with single_thread():
        expected, actual = one_training_step(plain, images), one_training_step(recomputed, images)
    for name, grad in expected.items():
        torch.testing.assert_close(actual[name], grad, rtol=0, atol=0, msg=name)
    plain_state, recomputed_state = plain.state_dict(), recomputed.state_dict()
    for name, buffer in plain_state.items():  # running statistics and batch counts
        assert torch.equal(recomputed_state[name], buffer), name
    assert all(int(v) == 1 for k, v in recomputed_state.items() if k.endswith("num_batches_tracked"))


def test_gradient_checkpointing_moves_sync_batch_norm_statistics_once():
    """Under torchrun the model is converted to SyncBatchNorm (which runs as plain BN on CPU without a
    process group); the recompute must still leave every BN layer's statistics alone."""
    torch.manual_seed(0)
    model = nn.SyncBatchNorm.convert_sync_batchnorm(
        DifNet(depth=18, num_classes=3, gradient_checkpointing=True)
    )
    with single_thread():
        one_training_step(model, torch.randn(2, 3, 48, 40))
    counts = {k: int(v) for k, v in model.state_dict().items() if k.endswith("num_batches_tracked")}
    assert counts and all(count == 1 for count in counts.values()), counts


def test_gradient_checkpointing_leaves_inference_alone():
    torch.manual_seed(0)
    model = DifNet(depth=18, num_classes=3, gradient_checkpointing=True).eval()
    reference = copy.deepcopy(model)
    reference.seed_backbone.gradient_checkpointing = False
    reference.similarity_backbone.gradient_checkpointing = False
    images = torch.randn(1, 3, 40, 40)
    with torch.no_grad():
        torch.testing.assert_close(model(images), reference(images), rtol=0, atol=0)


def test_fp16_trains_with_a_gradient_scaler_that_the_checkpoint_keeps(tmp_path):
    config = TrainConfig(**TINY, precision="fp16", output_dir=str(tmp_path / "run"))
    with single_thread():
        train(config)
    saved = read_checkpoint(tmp_path / "run" / "last.pt")
    assert saved["config"]["precision"] == "fp16" and saved["step"] == 1
    assert saved["grad_scaler"]["scale"] > 0
    assert all(torch.isfinite(v).all() for v in saved["model"].values() if v.is_floating_point())
    with single_thread():  # resuming restores the scaler (an fp16 run goes on where it stood)
        train(TrainConfig(**{**TINY, "epochs": 2}, precision="fp16", output_dir=str(tmp_path / "run"),
                          resume=str(tmp_path / "run" / "last.pt")))  # fmt: skip
    assert read_checkpoint(tmp_path / "run" / "last.pt")["step"] == 2


def test_precision_option_and_the_deprecated_bf16_alias():
    parser = argparse.ArgumentParser()
    TrainConfig.add_arguments(parser)
    assert TrainConfig.from_args(parser.parse_args(["--precision", "fp16"])).precision == "fp16"
    with pytest.warns(FutureWarning, match="--bf16 is deprecated; use --precision bf16"):
        args = parser.parse_args(["--bf16"])
    assert TrainConfig.from_args(args).precision == "bf16"
    assert TrainConfig.from_args(parser.parse_args([])).precision == "fp32"
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16, fp16"):
        TrainConfig(device="cpu", precision="fp8")
    legacy = {**TrainConfig(device="cpu").to_dict(), "bf16": True}
    legacy.pop("precision")
    assert TrainConfig.from_dict(legacy).precision == "bf16"
