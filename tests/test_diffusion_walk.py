"""The walk op and cascade layers of `difnet.diffusion`, against explicit P and `reference`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import reference
from difnet.diffusion import (
    SIMILARITIES,
    Cascade,
    RandomWalk,
    TransitionKernel,
    flatten_nodes,
    propagate,
    transition_matrix,
    transition_rows,
    unflatten_nodes,
    walk_step,
)


class LargestTensor(TorchDispatchMode):
    """Records the element count of the largest tensor any op produces while active (a sparse
    tensor counts its stored entries, not its dense shape)."""

    def __init__(self) -> None:
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for leaf in tree_flatten(out)[0]:
            if isinstance(leaf, torch.Tensor):
                stored = leaf.values().numel() if leaf.layout != torch.strided else leaf.numel()
                self.numel = max(self.numel, stored)
        return out


def walk_inputs(batch, nodes, width, classes, *, scale=0.3, dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    features = scale * torch.randn(batch, nodes, width, generator=generator, dtype=dtype)
    values = torch.randn(batch, nodes, classes, generator=generator, dtype=dtype)
    return features.requires_grad_(), values.requires_grad_()


def assert_agree(actual, expected, tol=1e-5):
    """Equal up to `tol` times the larger of 1 and the expected tensor's largest magnitude."""
    scale = max(1.0, expected.abs().max().item())
    torch.testing.assert_close(actual, expected, rtol=0, atol=tol * scale)


def value_and_grads(walk, features, values, upstream):
    out = propagate(features, values, walk=walk)
    return (out, *torch.autograd.grad(out, (features, values), upstream))


@given(
    batch=st.integers(1, 3),
    nodes=st.integers(1, 90),
    width=st.sampled_from([8, 16, 64]),
    classes=st.integers(1, 140),
)
def test_fused_matches_materialized_in_values_and_gradients(batch, nodes, width, classes):
    features, values = walk_inputs(batch, nodes, width, classes)
    upstream = torch.randn(batch, nodes, classes)
    fused = value_and_grads("fused", features, values, upstream)
    explicit = value_and_grads("materialized", features, values, upstream)
    assert fused[0].shape == (batch, nodes, classes)
    for a, b in zip(fused, explicit, strict=True):
        assert_agree(a, b)


@pytest.mark.parametrize("batch", [1, 2])
def test_fused_walk_never_holds_an_n_by_n_tensor(batch):
    nodes, classes = 1024, 21
    features, values = walk_inputs(batch, nodes, 64, classes)
    for walk, holds_matrix in (("fused", False), ("materialized", True)):
        with LargestTensor() as largest:
            out = propagate(features, values, walk=walk)
            torch.autograd.grad(out, (features, values), torch.ones_like(out))
        assert (largest.numel >= batch * nodes * nodes) == holds_matrix, (walk, largest.numel)


@given(
    similarity=st.sampled_from(SIMILARITIES),
    radius=st.sampled_from([None, 1, 2, 4]),
    height=st.integers(1, 9),
    width=st.integers(1, 9),
    classes=st.integers(1, 20),
    learned_temperature=st.booleans(),
)
def test_every_kernel_fused_matches_materialized_in_values_and_gradients(
    similarity, radius, height, width, classes, learned_temperature
):
    kernel, grid = TransitionKernel(similarity, radius), (height, width)
    features, values = walk_inputs(2, height * width, 8, classes, scale=0.5)
    temperature = torch.tensor(0.8, requires_grad=True) if learned_temperature else None
    upstream = torch.randn(2, height * width, classes)
    results = []
    for walk in ("fused", "materialized"):
        out = propagate(features, values, walk=walk, kernel=kernel, grid=grid, temperature=temperature)
        if kernel.is_identity:  # P = I: the values themselves
            assert out is values
            continue
        inputs = (features, values, temperature) if learned_temperature else (features, values)
        results.append((out, *torch.autograd.grad(out, inputs, upstream)))
    for a, b in zip(*results, strict=True) if results else ():
        assert_agree(a, b)


@pytest.mark.parametrize(
    ("similarity", "radius"), [("dot", None), ("distance", None), ("dot", 3), ("distance", 3)]
)
def test_every_kernels_walk_never_holds_an_n_by_n_tensor_at_4096_nodes(similarity, radius):
    nodes, grid = 4096, (64, 64)
    features, values = walk_inputs(1, nodes, 64, 21)
    temperature = torch.tensor(1.0, requires_grad=True)
    with LargestTensor() as largest:
        out = propagate(features, values, kernel=TransitionKernel(similarity, radius), grid=grid,
                        temperature=temperature)  # fmt: skip
        torch.autograd.grad(out, (features, values, temperature), torch.ones_like(out))
    assert largest.numel < nodes * nodes // 16, largest.numel


def test_a_local_kernel_connects_only_nodes_within_its_radius():
    features, _ = walk_inputs(1, 20, 4, 1, scale=1.0)
    P = transition_matrix(features.detach(), kernel=TransitionKernel("distance", 1), grid=(4, 5))
    rows, cols = torch.arange(20) // 5, torch.arange(20) % 5
    near = ((rows[:, None] - rows[None]).abs() <= 1) & ((cols[:, None] - cols[None]).abs() <= 1)
    assert bool((P[0][~near] == 0).all()) and bool((P[0][near] > 0).all())
    torch.testing.assert_close(P.sum(-1), torch.ones(1, 20))


def test_the_distance_kernel_does_not_favour_high_norm_nodes():
    features = torch.tensor([[[1.0, 0.0], [1.1, 0.0], [8.0, 0.0]]])
    dot = transition_matrix(features)[0, 0]
    distance = transition_matrix(features, kernel=TransitionKernel("distance"))[0, 0]
    assert dot.argmax() == 2 and distance[1] > distance[2]  # the inner product prefers the long vector


@pytest.mark.parametrize(
    ("kernel", "match"),
    [
        (lambda: TransitionKernel("cosine"), "similarity must be one of"),
        (lambda: TransitionKernel("dot", 0), "radius must be a positive number"),
        (
            lambda: propagate(torch.randn(1, 6, 2), torch.randn(1, 6, 1), kernel=TransitionKernel("dot", 1)),
            "a local kernel needs the \\(h, w\\) grid",
        ),  # fmt: skip
        (lambda: RandomWalk(beta_init=1.0), "beta_init must lie strictly between 0 and 1"),
    ],
)
def test_bad_kernel_settings_are_refused_by_name(kernel, match):
    with pytest.raises(ValueError, match=match):
        kernel()


def test_a_walk_starting_near_switched_off_barely_moves_its_input():
    walk = RandomWalk(beta_init=0.01)
    features, values = walk_inputs(1, 30, 8, 3)
    out = walk(features, values, values)
    assert walk.beta.item() == pytest.approx(0.01)
    assert (out - values).abs().max() < 0.02 * (propagate(features, values) - values).abs().max() + 1e-6


def test_walk_is_row_stochastic_and_keeps_constants():
    features, _ = walk_inputs(2, 30, 16, 1, scale=1.0)
    P = transition_matrix(features.detach())
    torch.testing.assert_close(P.sum(-1), torch.ones(2, 30))
    constant = torch.full((2, 30, 4), 3.0)
    torch.testing.assert_close(propagate(features.detach(), constant), constant)


def test_transition_rows_are_rows_of_the_matrix():
    features, _ = walk_inputs(2, 40, 16, 1, scale=1.0)
    nodes = torch.tensor([0, 7, 39])
    torch.testing.assert_close(transition_rows(features, nodes), transition_matrix(features)[:, nodes])


def test_propagate_matches_reference_in_float64():
    features, values = walk_inputs(2, 50, 16, 5, scale=1.0, dtype=torch.float64)
    P = reference.transition_matrix(features.detach().numpy())
    expected = P @ values.detach().numpy()
    np.testing.assert_allclose(propagate(features, values).detach().numpy(), expected, atol=1e-12)


def test_walk_runs_in_float32_under_bfloat16_autocast():
    features, values = walk_inputs(1, 30, 64, 3, scale=1.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = propagate(features.bfloat16(), values)
    assert out.dtype == torch.float32
    expected = propagate(features.bfloat16().float(), values)
    torch.testing.assert_close(out, expected)


def test_transition_matrix_and_rows_run_in_float32_under_bfloat16_autocast():
    features, _ = walk_inputs(1, 30, 64, 3, scale=1.0)
    nodes = torch.tensor([0, 11])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        matrix, rows = transition_matrix(features), transition_rows(features, nodes)
    assert matrix.dtype == rows.dtype == torch.float32
    torch.testing.assert_close(matrix, transition_matrix(features), rtol=0, atol=1e-6)
    torch.testing.assert_close(rows, transition_rows(features, nodes), rtol=0, atol=1e-6)


def test_unknown_walk_method_is_refused():
    features, values = walk_inputs(1, 4, 8, 2)
    with pytest.raises(ValueError, match="walk must be one of"):
        propagate(features, values, walk="dense")
    with pytest.raises(ValueError, match="walk must be one of"):
        RandomWalk("dense")


@pytest.mark.parametrize(
    "features, values",
    [((1, 5, 8), (1, 6, 2)), ((2, 5, 8), (1, 5, 2)), ((5, 8), (5, 2)), ((1, 5, 8), (1, 5, 2, 1))],
)
def test_mismatched_walk_inputs_name_their_shapes(features, values):
    with pytest.raises(ValueError, match=r"must share B and N \(got"):
        propagate(torch.zeros(features), torch.zeros(values))


def test_random_walk_follows_eqs_4_and_5():
    walk = RandomWalk()
    assert walk.mu.item() == walk.beta.item() == 0.5
    with torch.no_grad():
        walk.raw_mu.fill_(0.3)
        walk.raw_beta.fill_(-1.2)
    features, y = walk_inputs(2, 25, 16, 4, scale=1.0)
    seed = torch.randn(2, 25, 4)
    mu, beta = torch.sigmoid(torch.tensor(0.3)), torch.sigmoid(torch.tensor(-1.2))
    restarted = mu * transition_matrix(features) @ y + (1 - mu) * seed
    expected = beta * restarted + (1 - beta) * y
    torch.testing.assert_close(walk(features, y, seed), expected)


@pytest.mark.parametrize("walk", ["fused", "materialized"])
def test_cascade_matches_reference_cascade(walk):
    torch.manual_seed(0)
    cascade = Cascade(3, walk).double()
    with torch.no_grad():
        for layer, (raw_mu, raw_beta) in zip(
            cascade.walks, [(-0.4, 0.2), (0.0, 1.1), (2.0, -0.7)], strict=True
        ):
            layer.raw_mu.fill_(raw_mu)
            layer.raw_beta.fill_(raw_beta)
    features = [torch.randn(2, 36, 8, dtype=torch.float64) for _ in range(3)]
    seed = torch.randn(2, 36, 5, dtype=torch.float64)
    outputs = cascade(features, seed)
    expected = reference.cascade(
        [reference.transition_matrix(f.numpy()) for f in features],
        seed.numpy(),
        cascade.mu.tolist(),
        cascade.beta.tolist(),
    )
    assert len(outputs) == 3
    for ours, theirs in zip(outputs, expected[1:], strict=True):
        np.testing.assert_allclose(ours.detach().numpy(), theirs, rtol=0, atol=1e-10)


def test_cascade_gradients_reach_every_walk_weight_and_feature():
    cascade = Cascade(2)
    features = [walk_inputs(1, 20, 8, 1, seed=i)[0] for i in range(2)]
    seed = torch.randn(1, 20, 3, requires_grad=True)
    cascade(features, seed)[-1].square().sum().backward()
    for tensor in [*cascade.parameters(), *features, seed]:
        assert tensor.grad is not None and tensor.grad.abs().sum() > 0


def test_cascade_refuses_a_wrong_number_of_feature_tensors():
    with pytest.raises(ValueError, match="expected 3 feature tensors"):
        Cascade(3)([torch.zeros(1, 4, 8)] * 2, torch.zeros(1, 4, 2))
    with pytest.raises(ValueError, match="num_walks"):
        Cascade(0)


def test_flatten_and_unflatten_nodes_round_trip():
    maps = torch.randn(2, 5, 3, 4)
    nodes = flatten_nodes(maps)
    assert nodes.shape == (2, 12, 5) and nodes.is_contiguous()
    torch.testing.assert_close(nodes[:, 1 * 4 + 2], maps[:, :, 1, 2])
    torch.testing.assert_close(unflatten_nodes(nodes, (3, 4)), maps)


def test_a_step_with_beta_the_number_one_is_the_restart_bit_for_bit_and_keeps_its_gradient():
    walked, y, seed = (torch.rand(2, 9, 3, generator=torch.Generator().manual_seed(i)) for i in range(3))
    mu = torch.tensor(0.8, requires_grad=True)
    skipped = walk_step(walked, y, seed, mu, 1.0)
    assert torch.equal(skipped, walk_step(walked, y, seed, mu, torch.tensor(1.0)))
    assert torch.equal(skipped, torch.lerp(seed, walked, mu))
    skipped.sum().backward()
    assert mu.grad is not None and torch.isclose(mu.grad, (walked - seed).sum())
