"""DifNet end to end on tiny inputs: shapes, parity with `reference`, walks, gradients, API."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import reference
from difnet.diffusion import flatten_nodes, transition_matrix
from difnet.models import DifNet, DifNetOutput

NUM_CLASSES = 4


def tiny_difnet(**kwargs) -> DifNet:
    torch.manual_seed(0)
    return DifNet(depth=18, num_classes=NUM_CLASSES, **kwargs)


def spread_transitions(model: DifNet, gain: float = 0.15) -> DifNet:
    """Shrink the projections' BN gains so P_t is far from the identity (more to compare)."""
    with torch.no_grad():
        for projection in model.projections:
            projection.bn.weight.fill_(gain)
    return model


def images(batch: int = 1, height: int = 65, width: int = 65, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(1), dtype=dtype)


def seed_grid_side(side: int) -> int:
    """Stride-2 conv, ceil-mode stride-2 max-pool, stride-2 layer2: the output-stride-8 side."""
    side = (side - 1) // 2 + 1
    side = -(-(side - 1) // 2) + 1
    return (side - 1) // 2 + 1


@pytest.mark.parametrize("batch, height, width", [(1, 65, 67), (2, 33, 50), (1, 16, 16)])
def test_logits_have_input_size_for_any_size(batch, height, width):
    model = tiny_difnet()
    out = model.forward_intermediates(images(batch, height, width))
    grid = (seed_grid_side(height), seed_grid_side(width))
    assert isinstance(out, DifNetOutput)
    assert out.logits.shape == (batch, NUM_CLASSES, height, width)
    assert out.scores.shape == out.seed.shape == (batch, NUM_CLASSES, *grid)
    assert out.importance.shape == (batch, 1, *grid)
    assert ((out.importance > 0) & (out.importance < 1)).all()
    torch.testing.assert_close(out.seed, out.importance * out.scores)
    assert len(out.walks) == 5 and all(y.shape == out.seed.shape for y in out.walks)
    assert out.mu.shape == out.beta.shape == (5,)
    torch.testing.assert_close(model(images(batch, height, width)), out.logits)


def test_diffusion_stride_4_walks_on_a_twice_finer_grid():
    out = tiny_difnet(diffusion_stride=4).forward_intermediates(images(1, 65, 67))
    assert out.seed.shape[-2:] == (9, 9)
    assert all(y.shape == (1, NUM_CLASSES, 17, 18) for y in out.walks)
    assert out.logits.shape == (1, NUM_CLASSES, 65, 67)


def capture_projections(model: DifNet) -> list[torch.Tensor]:
    captured: list[torch.Tensor] = []
    for projection in model.projections:
        projection.register_forward_hook(lambda module, args, out: captured.append(out))
    return captured


@pytest.mark.parametrize("diffusion_stride", [8, 4])
def test_cascade_matches_reference_on_the_models_own_features(diffusion_stride):
    model = spread_transitions(tiny_difnet(diffusion_stride=diffusion_stride)).double()
    with torch.no_grad():
        model.cascade.walks[0].raw_mu.fill_(-0.8)
        model.cascade.walks[3].raw_beta.fill_(1.5)
    projections = capture_projections(model)
    with torch.no_grad():
        out = model.forward_intermediates(images(2, 41, 37, dtype=torch.float64))
    grid = out.walks[0].shape[-2:]
    Ps = [reference.transition_matrix(flatten_nodes(f).numpy()) for f in projections]
    assert max(P.max(axis=-1).mean() for P in Ps) < 0.9, "P_t is close to the identity"
    seed = F.interpolate(out.seed, size=grid, mode="bilinear", align_corners=False)
    expected = reference.cascade(Ps, flatten_nodes(seed).numpy(), out.mu.tolist(), out.beta.tolist())
    for ours, theirs in zip(out.walks, expected[1:], strict=True):
        np.testing.assert_allclose(flatten_nodes(ours).numpy(), theirs, rtol=0, atol=1e-6)


def forward_backward(model: DifNet, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad()
    logits = model(x)
    target = torch.randint(
        0, NUM_CLASSES, (x.shape[0], *x.shape[-2:]), generator=torch.Generator().manual_seed(2)
    )
    F.cross_entropy(logits, target).backward()
    return logits.detach(), {name: p.grad for name, p in model.named_parameters()}


@pytest.mark.parametrize("diffusion_stride", [8, 4])
def test_branches_and_diffuse_compose_to_forward(diffusion_stride):
    model = tiny_difnet(diffusion_stride=diffusion_stride).eval()
    x = images(2, 41, 37)
    with torch.no_grad():
        levels = model.similarity_branch(x)
        out = model.diffuse(model.seed_branch(x), levels)
        whole = model.forward_intermediates(x)
    assert len(levels) == 5 and levels[0] is x
    torch.testing.assert_close(out.scores, whole.scores, rtol=0, atol=0)
    torch.testing.assert_close(out.logits, whole.logits, rtol=0, atol=0)


def test_fused_and_materialized_models_agree_in_values_and_gradients():
    fused = spread_transitions(tiny_difnet())
    explicit = tiny_difnet(walk="materialized")
    explicit.load_state_dict(fused.state_dict())
    x = images(2, 49, 45)
    logits, grads = forward_backward(fused, x)
    logits_explicit, grads_explicit = forward_backward(explicit, x)
    torch.testing.assert_close(logits, logits_explicit, rtol=0, atol=1e-5)
    for name, grad in grads.items():  # 1e-5 of the largest gradient of each tensor
        scale = max(1.0, grads_explicit[name].abs().max().item())
        torch.testing.assert_close(grad, grads_explicit[name], rtol=0, atol=1e-5 * scale, msg=name)


def test_gradients_reach_every_parameter():
    model = tiny_difnet()
    _, grads = forward_backward(model, images(2))
    dead = [name for name, grad in grads.items() if grad is None or not grad.abs().sum() > 0]
    assert dead == []
    for prefix in (
        "head.cascade.",
        "head.projections.",
        "seed_backbone.",
        "similarity_backbone.",
        "head.importance.",
    ):
        assert any(name.startswith(prefix) for name in grads), prefix


def test_transition_rows_are_rows_of_each_p_t():
    model = spread_transitions(tiny_difnet())
    projections = capture_projections(model)
    x = images(2, 40, 48)
    nodes = [[0, 0], [2, 3], [4, 5]]
    with torch.no_grad():
        rows = model.transition_maps(x, nodes)
    assert rows.shape == (2, 5, 3, 6, 7)
    for level, f in enumerate(projections):
        P = transition_matrix(flatten_nodes(f))
        torch.testing.assert_close(rows[:, level].flatten(-2), P[:, [0, 17, 33]])


@pytest.mark.parametrize(
    "nodes, problem",
    [
        ([[0, 7]], "diffusion grid"),
        ([[-1, 0]], "diffusion grid"),
        ([0, 1], r"\[n, 2\]"),
        ([[0.5, 1.0]], "integer"),
    ],
)
def test_transition_rows_refuses_bad_nodes(nodes, problem):
    with pytest.raises(ValueError, match=problem):
        tiny_difnet().transition_maps(images(1, 40, 48), nodes)


def test_walk_parameters_start_at_one_half_and_follow_the_raw_parameters():
    model = tiny_difnet()
    assert model.walk_scalars() == {"mu": [0.5] * 5, "beta": [0.5] * 5}
    with torch.no_grad():
        model.cascade.walks[2].raw_mu.fill_(1.0)
    assert model.walk_scalars()["mu"][2] == pytest.approx(1 / (1 + math.exp(-1.0)))


def test_param_groups_split_backbones_heads_and_walks():
    model = tiny_difnet()
    groups = model.param_groups()
    assert set(groups) == {"backbone", "head", "walk"}
    ids = {name: {id(p) for p in params} for name, params in groups.items()}
    assert sum(len(i) for i in ids.values()) == len(set.union(*ids.values()))  # disjoint
    assert set.union(*ids.values()) == {id(p) for p in model.parameters()}
    backbones = [*model.seed_backbone.parameters(), *model.similarity_backbone.parameters()]
    assert ids["backbone"] == {id(p) for p in backbones}
    assert ids["walk"] == {id(p) for w in model.cascade.walks for p in (w.raw_mu, w.raw_beta)}


def test_eval_mode_is_deterministic_and_batch_independent():
    model = tiny_difnet().eval()
    x = images(3, 40, 40)
    with torch.no_grad():
        batched = model(x)
        single = model(x[1:2])
    torch.testing.assert_close(batched[1:2], single, rtol=1e-5, atol=1e-5)


def test_noaspp_head_is_a_single_convolution():
    model = tiny_difnet(aspp=False)
    assert isinstance(model.classifier, torch.nn.Conv2d)
    assert model(images(1, 33, 33)).shape == (1, NUM_CLASSES, 33, 33)


@pytest.mark.parametrize(
    "kwargs, problem",
    [
        ({"depth": 20}, "depth must be one of"),
        ({"num_classes": 0}, "num_classes"),
        ({"walk": "dense"}, "walk must be one of"),
        ({"diffusion_stride": 16}, "diffusion_stride must be one of"),
    ],
)
def test_bad_constructor_arguments_are_refused(kwargs, problem):
    with pytest.raises(ValueError, match=problem):
        DifNet(**{"depth": 18, **kwargs})
