"""Practicalities: channels_last, bfloat16 autocast, torch.export and torch.compile."""

from __future__ import annotations

import pytest
import torch

from difnet.models import DifNet, SimDeepLab


def tiny(model_class=DifNet):
    torch.manual_seed(0)
    return model_class(depth=18, num_classes=3)


def images(batch=2, size=41):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("model_class", [DifNet, SimDeepLab])
def test_channels_last_gives_the_same_logits_and_trains(model_class):
    model = tiny(model_class).eval()
    x = images()
    with torch.no_grad():
        expected = model(x)
    model = model.to(memory_format=torch.channels_last)
    with torch.no_grad():
        logits = model(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)
    model.train()
    model(x.to(memory_format=torch.channels_last)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("model_class", [DifNet, SimDeepLab])
def test_bfloat16_autocast_runs_forward_and_backward(model_class):
    model = tiny(model_class)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(images())
    assert logits.shape == (2, 3, 41, 41) and torch.isfinite(logits).all()
    logits.float().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_difnet_walks_stay_in_float32_under_autocast():
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = tiny().forward_intermediates(images())
    assert out.scores.dtype == torch.bfloat16
    assert all(y.dtype == torch.float32 for y in out.walks)


@pytest.mark.parametrize("training", [True, False])
def test_bfloat16_autocast_leaves_the_transition_matrices_as_in_float32(training):
    """Psi_t and P_t run in float32 under autocast: rounding the node features to bfloat16 moved
    rows of P by up to 0.32 in L1 at the authors' Psi scale."""
    torch.manual_seed(0)
    model = DifNet(depth=18, num_classes=3, psi_scale_init=1.0).train(training)
    x, nodes = images(), [(0, 0), (2, 3), (5, 5)]
    with torch.no_grad():
        levels = model.similarity_branch(x)  # the same float32 levels for both
        expected = model.transition_maps(x, nodes, levels=levels)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            rows = model.transition_maps(x, nodes, levels=levels)
    worst_l1_per_level = (rows.float() - expected).abs().flatten(3).sum(-1).amax(dim=(0, 2))
    assert worst_l1_per_level.max() < 1e-5, worst_l1_per_level
    assert rows.dtype == torch.float32


def test_eval_model_exports_with_a_dynamic_batch_and_matches():
    model = tiny().eval()
    batch = torch.export.Dim("batch", min=1, max=16)
    exported = torch.export.export(model, (images(batch=2),), dynamic_shapes={"images": {0: batch}})
    for size in (1, 3):
        other = images(batch=size) + 1
        with torch.no_grad():
            torch.testing.assert_close(exported.module()(other), model(other), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_compiled_model_matches_eager_in_forward_and_backward():
    model = tiny()
    x = images()
    compiled = torch.compile(model)
    logits = compiled(x)
    torch.testing.assert_close(logits, model(x), rtol=1e-4, atol=1e-4)
    logits.sum().backward()
    assert model.cascade.walks[0].raw_mu.grad is not None
