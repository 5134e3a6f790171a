"""The local transition's sparse-matrix route on the CPU (`difnet.diffusion.sparse`) computes what
the offset sums compute, in values and gradients, at odd grids, batch > 1 and both radii; it is
the route a walk takes on the CPU, and subnormal weights and values are zero on it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from difnet.diffusion import kernels
from difnet.diffusion.guided import GuidedWalk
from difnet.diffusion.kernels import (
    TransitionKernel,
    _local_apply,
    flatten_nodes,
    local_transition,
    unflatten_nodes,
)
from difnet.diffusion.sparse import (
    CsrApply,
    CsrRestartWalk,
    CsrTransition,
    has_csr_product,
    padded_grid_columns,
)


def offset_weights(batch, radius, height, width, dtype=torch.float64, seed=0):
    """A softmax over the offsets of random logits, zero outside the grid, as local kernels have."""
    generator = torch.Generator().manual_seed(seed)
    side = 2 * radius + 1
    logits = torch.randn(batch, side * side, height, width, generator=generator, dtype=dtype)
    inside = F.pad(torch.ones(1, 1, height, width, dtype=torch.bool), (radius,) * 4)
    inside = torch.cat(
        [inside[:, :, dy : dy + height, dx : dx + width] for dy in range(side) for dx in range(side)], 1
    )
    return torch.softmax(logits.masked_fill(~inside, float("-inf")), dim=1)


def offset_sums(weights, values, radius):
    """`P y` summed offset by offset, the route the sparse one replaces on the CPU."""
    maps = unflatten_nodes(values, weights.shape[-2:]).contiguous()
    return flatten_nodes(_local_apply(weights, F.pad(maps, (radius,) * 4), radius))


@pytest.mark.parametrize(
    ("radius", "height", "width", "classes"), [(1, 5, 7, 3), (3, 9, 4, 11), (3, 13, 17, 1)]
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_sparse_product_is_the_offset_sum(radius, height, width, classes, dtype):
    weights = offset_weights(2, radius, height, width, dtype)
    values = torch.randn(2, height * width, classes, dtype=dtype)
    transition = CsrTransition(weights, radius)
    expected = offset_sums(weights, values, radius)
    torch.testing.assert_close(transition.product(transition.matrices, values), expected)
    # P^T: <P y, g> = <y, P^T g>
    grad = torch.randn_like(values)
    transposed = transition.product(transition.transposed, grad)
    torch.testing.assert_close((expected * grad).sum(), (values * transposed).sum())


@pytest.mark.parametrize(("radius", "height", "width"), [(1, 4, 5), (2, 5, 3)])
def test_the_sparse_product_passes_gradcheck_in_weights_and_values(radius, height, width):
    weights = offset_weights(2, radius, height, width).requires_grad_()
    values = torch.randn(2, height * width, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda w, v: CsrApply.apply(w, v, CsrTransition(w, radius)), (weights, values)
    )


def test_the_sparse_products_gradients_are_the_offset_sums():
    weights = offset_weights(2, 3, 11, 6).requires_grad_()
    values = torch.randn(2, 66, 5, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(2, 66, 5, dtype=torch.float64)
    sparse = torch.autograd.grad(
        CsrApply.apply(weights, values, CsrTransition(weights, 3)), (weights, values), upstream
    )
    dense = torch.autograd.grad(offset_sums(weights, values, 3), (weights, values), upstream)
    for a, b in zip(sparse, dense, strict=True):
        torch.testing.assert_close(a, b)


def test_a_row_lists_the_padded_grids_window_in_order():
    rows, columns = padded_grid_columns(2, 3, 1)
    assert rows.dtype == columns.dtype == torch.int32  # MKL's index type: no copy a product
    assert rows.tolist() == list(range(0, 6 * 9 + 1, 9))
    # node (1, 2) of a 2x3 grid padded by 1 (width 5): padded rows 1..3, columns 2..4
    assert columns[5 * 9 : 6 * 9].tolist() == [7, 8, 9, 12, 13, 14, 17, 18, 19]


@pytest.mark.parametrize("similarity", ["dot", "distance"])
def test_a_walk_on_the_cpu_takes_the_sparse_route_with_and_without_gradients(similarity, monkeypatch):
    features = torch.randn(2, 35, 4, dtype=torch.float64, requires_grad=True)
    values = torch.randn(2, 35, 3, dtype=torch.float64, requires_grad=True)
    kernel, grid = TransitionKernel(similarity, 2), (5, 7)
    taken, product = [], CsrTransition.product
    monkeypatch.setattr(CsrTransition, "product", lambda self, m, v: taken.append(1) or product(self, m, v))
    sparse = local_transition(features, kernel, grid)(values)
    with torch.no_grad():
        local_transition(features, kernel, grid)(values)
    assert len(taken) == 2
    sparse_grads = torch.autograd.grad(sparse.sum(), (features, values))
    monkeypatch.setattr(kernels, "has_csr_product", lambda weights: False)
    dense = local_transition(features, kernel, grid)(values)
    torch.testing.assert_close(sparse, dense)
    for a, b in zip(sparse_grads, torch.autograd.grad(dense.sum(), (features, values)), strict=True):
        torch.testing.assert_close(a, b)


def test_half_precision_and_other_devices_keep_the_offset_sums():
    assert has_csr_product(torch.zeros(1, dtype=torch.float32))
    assert not has_csr_product(torch.zeros(1, dtype=torch.bfloat16))
    assert not has_csr_product(torch.zeros(1, device="meta"))


def test_subnormal_weights_and_values_are_zero_on_the_sparse_route():
    tiny = torch.finfo(torch.float32).tiny
    # features far apart: the distance kernel's weights underflow past the normal floats
    features = torch.tensor([0.0, 9.5, 19.0, 28.5]).view(1, 4, 1)  # exp(-9.5^2) is subnormal
    walk = local_transition(features, TransitionKernel("distance", 1), (1, 4))
    values = torch.tensor([1.0, tiny / 4, 0.0, 1.0]).view(1, 4, 1)
    with torch.no_grad():
        out = walk(values)
    assert torch.isfinite(out).all()
    assert not ((out.abs() > 0) & (out.abs() < tiny)).any()


def test_a_learned_guided_walks_gradients_agree_on_both_routes(monkeypatch):
    torch.manual_seed(0)
    images, probabilities = (
        torch.rand(2, 3, 13, 10, dtype=torch.float64),
        torch.rand(2, 4, 13, 10, dtype=torch.float64),
    )
    grads = []
    for csr in (True, False):
        monkeypatch.setattr(kernels, "has_csr_product", lambda weights, csr=csr: csr)
        torch.manual_seed(1)
        walk = GuidedWalk(3, stride=1, steps=12, solver="steps").double()
        (
            walk(probabilities, images)
            * torch.linspace(0, 1, 2 * 4 * 13 * 10, dtype=torch.float64).view(2, 4, 13, 10)
        ).sum().backward()
        grads.append([parameter.grad for parameter in walk.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)


def stepwise_walk(weights, start, mu, radius, counts):
    """The restart walk step by step through `CsrApply`, one autograd node a product."""
    transition, states, y = CsrTransition(weights, radius), {0: start}, start
    for t in range(1, max(counts) + 1):
        y = states[t] = torch.lerp(start, CsrApply.apply(weights, y, transition), mu)
    return [states[n] for n in counts]


@pytest.mark.parametrize("columns", [256, 4])  # 4: the weights' gradient in chunks of 1-2 steps
@pytest.mark.parametrize(("radius", "height", "width", "counts"), [(1, 5, 7, (2, 5)), (2, 4, 9, (0, 1, 6))])
def test_the_walk_as_one_node_is_the_walk_step_by_step(columns, radius, height, width, counts, monkeypatch):
    monkeypatch.setattr(CsrRestartWalk, "sampled_columns", columns)
    weights = offset_weights(2, radius, height, width).requires_grad_()
    start = torch.randn(2, height * width, 3, dtype=torch.float64, requires_grad=True)
    mu = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)
    fused = CsrRestartWalk.apply(weights, start, mu, CsrTransition(weights, radius), counts)
    stepwise = stepwise_walk(weights, start, mu, radius, counts)
    upstream = [torch.randn_like(s) for s in stepwise]
    for a, b in zip(fused, stepwise, strict=True):
        torch.testing.assert_close(a, b)
    inputs = (weights, start, mu)
    expected = torch.autograd.grad(stepwise, inputs, upstream)
    for a, b in zip(torch.autograd.grad(fused, inputs, upstream), expected, strict=True):
        torch.testing.assert_close(a, b)


def test_the_walk_as_one_node_passes_gradcheck():
    weights = offset_weights(1, 1, 3, 4).requires_grad_()
    start = torch.randn(1, 12, 2, dtype=torch.float64, requires_grad=True)
    mu = torch.tensor(0.6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda w, s, m: CsrRestartWalk.apply(w, s, m, CsrTransition(w, 1), (1, 3)), (weights, start, mu)
    )


def test_the_walks_restart_gradient_holds_in_float32():
    """d p / d mu summed from differences of states, not of two large sums that cancel (an upstream
    gradient nearly the same for every class, as a loss on probabilities gives, makes them cancel):
    in float32 it errs no more than the step-by-step route does (the cancelling sums erred 200x)."""
    generator = torch.Generator().manual_seed(0)
    weights = offset_weights(1, 3, 40, 50, torch.float32)
    start = torch.rand(1, 2000, 11, generator=generator).softmax(-1)
    upstream = 1 + 0.01 * torch.randn(1, 2000, 11, generator=generator)

    def mu_gradient(walk, dtype):
        w, mu = weights.to(dtype).requires_grad_(), torch.tensor(0.97, dtype=dtype, requires_grad=True)
        return torch.autograd.grad(walk(w, start.to(dtype), mu), mu, upstream.to(dtype))[0].double()

    def fused(w, s, mu):
        return CsrRestartWalk.apply(w, s, mu, CsrTransition(w, 3), (15,))

    def stepwise(w, s, mu):
        return stepwise_walk(w, s, mu, 3, (15,))

    exact = mu_gradient(stepwise, torch.float64)
    assert (mu_gradient(fused, torch.float32) - exact).abs() <= 4 * (
        mu_gradient(stepwise, torch.float32) - exact
    ).abs()


def test_a_guided_walk_in_training_is_one_node_and_without_gradients_steps(monkeypatch):
    walk = GuidedWalk(3, stride=2, steps=4, solver="steps")
    images, probabilities = torch.rand(2, 3, 10, 14), torch.rand(2, 4, 5, 7).softmax(1)
    nodes, apply = [], CsrRestartWalk.apply
    monkeypatch.setattr(CsrRestartWalk, "apply", lambda *a: nodes.append(1) or apply(*a))
    walk(probabilities, images).sum().backward()
    with torch.no_grad():
        walk(probabilities, images)
    assert nodes == [1] and all(p.grad is not None for p in walk.parameters())
