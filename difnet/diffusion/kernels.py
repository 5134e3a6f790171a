"""Transition matrices of node features and their products `P y`, the step of every walk here.

A transition matrix is `P = softmax(logits)` (row-wise) of node features `f` of shape
`[B, N, d]`; a walk carries node values `y` of shape `[B, N, K]`. The `TransitionKernel` says how
the logits come from the features: the paper's inner product `f_i . f_j`, the negative squared
distance, or the identity (no diffusion), optionally only between nodes within a radius on the
grid and scaled by a learned temperature. For a global kernel `P y` is attention (queries and keys
from `f`, values `y`, scale 1), so the default `walk="fused"` computes it with
`scaled_dot_product_attention`; a local kernel sums over the `(2r + 1)^2` grid offsets. Neither
holds an `N x N` tensor, in forward or backward. Maps `[B, C, h, w]` become node tensors with
`flatten_nodes` and back with `unflatten_nodes`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import reduce
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from difnet.diffusion.sparse import CsrApply, CsrRestartWalk, CsrTransition, has_csr_product

WalkMethod = Literal["fused", "materialized"]
WALK_METHODS: tuple[str, ...] = ("fused", "materialized")
# "dot": the paper's f_i . f_j; "distance": -||f_i - f_j||^2, which does not favour high-norm
# nodes; "identity": P = I, every walk returns the seed (staged training's first stage)
SIMILARITIES: tuple[str, ...] = ("dot", "distance", "identity")


@dataclass(frozen=True)
class TransitionKernel:
    """How the rows of `P` come from node features: `similarity` (one of `SIMILARITIES`) gives the
    logits, and `radius` (grid cells, Chebyshev distance) keeps only the nodes that close to the
    row's node; None connects every node to every node, as the paper does."""

    similarity: str = "dot"
    radius: int | None = None

    def __post_init__(self) -> None:
        if self.similarity not in SIMILARITIES:
            raise ValueError(f"kernel similarity must be one of {SIMILARITIES} (got {self.similarity!r})")
        radius = self.radius
        if radius is not None and (isinstance(radius, bool) or not isinstance(radius, int) or radius < 1):
            raise ValueError(
                f"kernel radius must be a positive number of grid cells or None (got {radius!r})"
            )

    @property
    def is_identity(self) -> bool:
        return self.similarity == "identity"

    @property
    def is_local(self) -> bool:
        return self.radius is not None and not self.is_identity


PAPER_KERNEL = TransitionKernel()


def flatten_nodes(maps: Tensor) -> Tensor:
    """`[B, C, h, w]` maps -> contiguous `[B, h*w, C]` node tensor (free for channels_last maps)."""
    return maps.flatten(2).transpose(1, 2).contiguous()


def unflatten_nodes(nodes: Tensor, size: tuple[int, int]) -> Tensor:
    """`[B, h*w, C]` node tensor -> `[B, C, h, w]` maps, as a view (channels_last strides)."""
    return nodes.unflatten(1, size).permute(0, 3, 1, 2)


def transition_logits(
    features: Tensor,
    rows: Tensor | None = None,
    *,
    kernel: TransitionKernel = PAPER_KERNEL,
    grid: Sequence[int] | None = None,
    temperature: Tensor | float | None = None,
) -> Tensor:
    """Explicit logits `[B, n, N]` of rows `rows` (flat node indices `[n]`, all when None) of the
    transition matrix of features `[B, N, d]`; `-inf` outside a local kernel's radius. For
    inspection, tests and the materialised walk only."""
    if kernel.is_identity:
        raise ValueError("the identity kernel has no logits: its P is I")
    queries = features if rows is None else features[:, rows]
    logits = queries @ features.transpose(1, 2)
    if kernel.similarity == "distance":
        squared = (features * features).sum(-1)
        query_squared = squared if rows is None else squared[:, rows]
        logits = 2 * logits - query_squared[..., None] - squared[:, None, :]
    if temperature is not None:
        logits = logits * temperature
    if kernel.is_local:
        logits = logits.masked_fill(~_within_radius(rows, _grid(grid, features), kernel.radius,
                                                    features.device), float("-inf"))  # fmt: skip
    return logits


def transition_matrix(
    features: Tensor,
    *,
    kernel: TransitionKernel = PAPER_KERNEL,
    grid: Sequence[int] | None = None,
    temperature: Tensor | float | None = None,
) -> Tensor:
    """Explicit `P` `[B, N, N]` of features `[B, N, d]` (the paper's `softmax(f f^T)` by default);
    for inspection only. In at least float32 with autocast off, as `propagate` computes `P y`."""
    return transition_rows(features, None, kernel=kernel, grid=grid, temperature=temperature)


def transition_rows(
    features: Tensor,
    nodes: Tensor | None,
    *,
    kernel: TransitionKernel = PAPER_KERNEL,
    grid: Sequence[int] | None = None,
    temperature: Tensor | float | None = None,
) -> Tensor:
    """Rows `P[:, nodes]` `[B, n, N]` for flat node indices `[n]` (every row when None), in at
    least float32 with autocast off."""
    with full_precision(features) as (features,):
        if kernel.is_identity:
            eye = torch.eye(features.shape[1], dtype=features.dtype, device=features.device)
            return (eye if nodes is None else eye[nodes]).expand(features.shape[0], -1, -1)
        logits = transition_logits(features, nodes, kernel=kernel, grid=grid, temperature=temperature)
        return torch.softmax(logits, dim=-1)


def _grid(grid: Sequence[int] | None, features: Tensor) -> tuple[int, int]:
    """The `(h, w)` grid a local kernel needs, checked against the node count."""
    if grid is None or len(grid) != 2 or grid[0] * grid[1] != features.shape[1]:
        raise ValueError(
            f"a local kernel needs the (h, w) grid of the {features.shape[1]} nodes (got {grid!r})"
        )
    return int(grid[0]), int(grid[1])


def _within_radius(rows: Tensor | None, grid: tuple[int, int], radius: int, device: torch.device) -> Tensor:
    """`[n, N]` mask of the nodes within `radius` cells (Chebyshev) of each row's node."""
    height, width = grid
    every = torch.arange(height * width, device=device)
    chosen = every if rows is None else rows.to(device)
    row_y, row_x = (chosen // width)[:, None], (chosen % width)[:, None]
    return ((row_y - every // width).abs() <= radius) & ((row_x - every % width).abs() <= radius)


@contextmanager
def full_precision(*tensors: Tensor) -> Iterator[tuple[Tensor, ...]]:
    """`tensors` in their common dtype promoted to at least float32, with autocast off inside: the
    logits `f f^T` are unscaled inner products, too large for bfloat16's 8-bit mantissa."""
    dtype = reduce(torch.promote_types, (t.dtype for t in tensors), torch.float32)
    with torch.autocast(tensors[0].device.type, enabled=False):
        yield tuple(t.to(dtype) for t in tensors)


def propagate(
    features: Tensor,
    values: Tensor,
    *,
    walk: WalkMethod = "fused",
    kernel: TransitionKernel = PAPER_KERNEL,
    grid: Sequence[int] | None = None,
    temperature: Tensor | float | None = None,
) -> Tensor:
    """One transition `P y` of features `[B, N, d]` and values `[B, N, K]`, with `P` from `kernel`
    (the paper's `softmax(f f^T)` by default) scaled by `temperature`; a local kernel needs the
    nodes' `(h, w)` `grid`. Runs in at least float32 with autocast off (`full_precision`).
    Returns `[B, N, K]`."""
    if walk not in WALK_METHODS:
        raise ValueError(f"walk must be one of {WALK_METHODS} (got {walk!r})")
    if features.dim() != 3 or values.dim() != 3 or features.shape[:2] != values.shape[:2]:
        raise ValueError(
            "features [B, N, d] and values [B, N, K] must share B and N "
            f"(got {tuple(features.shape)} and {tuple(values.shape)})"
        )
    with full_precision(features, values) as (features, values):
        if kernel.is_identity:
            return values
        if walk == "materialized":
            return transition_matrix(features, kernel=kernel, grid=grid, temperature=temperature) @ values
        if kernel.is_local:
            return local_transition(features, kernel, grid, temperature)(values)
        queries, keys = _attention_inputs(features, kernel, temperature)
        return _fused_propagate(queries, keys, values)


def _attention_inputs(
    features: Tensor, kernel: TransitionKernel, temperature: Tensor | float | None
) -> tuple[Tensor, Tensor]:
    """Queries and keys whose inner products are the kernel's logits up to a per-row constant:
    `-||f_i - f_j||^2 = 2 f_i . f_j - ||f_j||^2 - ||f_i||^2`, the last term cancelled by the
    softmax, is `[f_i, 1] . [2 f_j, -||f_j||^2]`."""
    queries, keys = features, features
    if kernel.similarity == "distance":
        ones = torch.ones_like(features[..., :1])
        queries = torch.cat([features, ones], dim=-1)
        keys = torch.cat([2 * features, -(features * features).sum(-1, keepdim=True)], dim=-1)
    if temperature is not None:
        queries = queries * temperature
    return queries, keys


def _fused_propagate(queries: Tensor, keys: Tensor, values: Tensor) -> Tensor:
    """`softmax(q k^T) y` through `scaled_dot_product_attention`, in value-column blocks of width `d`.

    The CPU flash kernel needs the value width to equal `d`, so the `K` columns are
    zero-padded to `heads * d` and each block of `d` columns is one attention head sharing
    the same queries and keys (stride-0 views; copies only with several heads and splits).
    """
    batch, num_nodes, width = queries.shape
    num_values = values.shape[-1]
    heads = -(-num_values // width)  # integer ceil keeps symbolic sizes symbolic under export
    splits = _query_splits(queries, batch * heads)
    rows = -(-num_nodes // splits)

    queries = F.pad(queries, (0, 0, 0, splits * rows - num_nodes))
    queries = queries.view(batch, 1, splits, rows, width).expand(-1, heads, -1, -1, -1)
    keys = keys.reshape(batch, 1, 1, num_nodes, width).expand(-1, heads, splits, -1, -1)
    padded = F.pad(values, (0, heads * width - num_values))
    padded = padded.view(batch, num_nodes, heads, 1, width).permute(0, 2, 3, 1, 4)
    padded = padded.expand(-1, -1, splits, -1, -1)

    def heads_first(x: Tensor) -> Tensor:
        return x.reshape(batch, heads * splits, x.shape[-2], width)

    out = F.scaled_dot_product_attention(
        heads_first(queries), heads_first(keys), heads_first(padded), scale=1.0
    )
    out = out.reshape(batch, heads, splits * rows, width)[:, :, :num_nodes]
    return out.transpose(1, 2).reshape(batch, num_nodes, heads * width)[..., :num_values]


def _query_splits(features: Tensor, independent: int) -> int:
    """How many query blocks to cut each head into so the CPU backward kernel uses every thread.

    PyTorch's CPU flash backward parallelises over batch x heads only; with fewer of those
    than threads it runs one thread calling a threaded BLAS on small blocks, which ran up to
    18x slower on this project's 2-core CPU while another process held a core (and no faster
    when idle). Splitting queries costs `splits - 1` extra `[N, d]` key/value gradient
    buffers. GPUs parallelise over blocks themselves, and under torch.compile the thread
    count is not traceable, so both keep one block.
    """
    if features.device.type != "cpu" or not torch.is_grad_enabled() or torch.compiler.is_compiling():
        return 1
    return max(1, -(-torch.get_num_threads() // independent))


def local_transition(
    features: Tensor,
    kernel: TransitionKernel,
    grid: Sequence[int],
    temperature: Tensor | float | None = None,
) -> LocalTransition:
    """`y -> P y` for the local `kernel` of features `[B, N, d]` on `grid`, values `[B, N, K]`: the
    logits for each of the `(2r + 1)^2` grid offsets and their softmax over the offsets inside the
    grid are computed once, so that a walk of many steps on one `P` pays for them once. Memory grows
    as `N (d + (2r + 1)^2)`, never `N^2`: the shifted maps are views of one padded copy."""
    if not kernel.is_local:
        raise ValueError(f"local_transition needs a local kernel with a radius (got {kernel})")
    radius, (height, width) = kernel.radius, _grid(grid, features)
    # one memory layout (channels first) for the offsets' products: channels-last views ran 3x slower
    maps = unflatten_nodes(features, (height, width)).contiguous()
    padded = F.pad(maps, (radius,) * 4)
    side = 2 * radius + 1

    def shifted(x: Tensor, dy: int, dx: int) -> Tensor:
        return x[:, :, dy : dy + height, dx : dx + width]

    offsets = [(dy, dx) for dy in range(side) for dx in range(side)]
    logits = torch.stack([(maps * shifted(padded, dy, dx)).sum(1) for dy, dx in offsets], dim=1)
    if kernel.similarity == "distance":
        squared = (maps * maps).sum(1, keepdim=True)
        padded_squared = F.pad(squared, (radius,) * 4)
        neighbours = torch.cat([shifted(padded_squared, dy, dx) for dy, dx in offsets], dim=1)
        logits = 2 * logits - neighbours - squared
    if temperature is not None:
        logits = logits * temperature
    inside = F.pad(torch.ones(1, 1, height, width, dtype=torch.bool, device=features.device), (radius,) * 4)
    inside = torch.cat([shifted(inside, dy, dx) for dy, dx in offsets], dim=1)
    weights = torch.softmax(logits.masked_fill(~inside, float("-inf")), dim=1)
    # weights that underflow to subnormal floats (far colours on real images) become zero: the CPU
    # multiplies subnormals many times slower, and a walk on a CamVid frame took 2-4x as long
    return LocalTransition(weights.masked_fill(weights < torch.finfo(weights.dtype).tiny, 0), radius)


class LocalTransition:
    """`P y` of a local kernel's offset weights `[B, (2r + 1)^2, h, w]`, values `[B, N, K]`: as
    sparse-matrix products on the CPU in full precision (`CsrTransition`), else summed offset by
    offset; `restart_walk` runs a whole walk with restart as one autograd node on the CPU."""

    def __init__(self, weights: Tensor, radius: int) -> None:
        self.weights, self.radius = weights, radius
        self.sparse = CsrTransition(weights, radius) if has_csr_product(weights) else None

    def __call__(self, values: Tensor) -> Tensor:
        weights, radius = self.weights, self.radius
        values = values.to(weights.dtype)
        tracked = torch.is_grad_enabled() and (weights.requires_grad or values.requires_grad)
        traced = _traced()
        if self.sparse is not None and not traced:
            if tracked:
                return CsrApply.apply(weights, values, self.sparse)
            return self.sparse.product(self.sparse.matrices, values)
        # one memory layout for every elementwise op (node tensors unflatten to channels-last views)
        maps = unflatten_nodes(values, weights.shape[-2:]).contiguous()
        if tracked and not traced:
            return flatten_nodes(_LocalApply.apply(weights, maps, radius))
        return flatten_nodes(_local_apply(weights, F.pad(maps, (radius,) * 4), radius))

    def restart_walk(self, start: Tensor, mu: Tensor | float, counts: Sequence[int]) -> list[Tensor] | None:
        """`p_n` after each of `counts` (ascending) steps of `p_n = mu P p_(n-1) + (1 - mu) p_0`
        from `p_0 = start` as one autograd node (`CsrRestartWalk`), where gradients are tracked
        through sparse-matrix products; None elsewhere (the walk then runs step by step)."""
        if self.sparse is None or not counts or not torch.is_grad_enabled() or _traced():
            return None
        mu = torch.as_tensor(mu, dtype=self.weights.dtype, device=self.weights.device)
        start = start.to(self.weights.dtype)
        if not any(t.requires_grad for t in (self.weights, start, mu)):
            return None
        return list(CsrRestartWalk.apply(self.weights, start, mu, self.sparse, tuple(counts)))


def _traced() -> bool:
    """Whether torch.compile or TorchScript is tracing: their graphs take the offset sums."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


def _local_apply(weights: Tensor, padded: Tensor, radius: int) -> Tensor:
    """`sum_o weights[:, o] * (values shifted by offset o)` for values padded by `radius`."""
    side = 2 * radius + 1
    height, width = weights.shape[-2:]
    out = weights[:, :1] * padded[:, :, :height, :width]
    for o in range(1, side * side):
        dy, dx = divmod(o, side)
        out.addcmul_(weights[:, o : o + 1], padded[:, :, dy : dy + height, dx : dx + width])
    return out


class _LocalApply(torch.autograd.Function):
    """`_local_apply` with a backward of its own: autograd's would allocate a whole padded gradient
    for each of the `(2r + 1)^2` shifted views, which made a 15-step walk at stride 2 ten times
    slower than the network it follows."""

    @staticmethod
    def forward(ctx, weights: Tensor, maps: Tensor, radius: int) -> Tensor:  # noqa: ANN001
        padded = F.pad(maps, (radius,) * 4)
        ctx.save_for_backward(weights, padded)
        ctx.radius = radius
        return _local_apply(weights, padded, radius)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:  # noqa: ANN001
        weights, padded = ctx.saved_tensors
        grad, radius, side = grad.contiguous(), ctx.radius, 2 * ctx.radius + 1
        height, width = weights.shape[-2:]
        grad_weights = torch.empty_like(weights) if ctx.needs_input_grad[0] else None
        grad_padded = torch.zeros_like(padded) if ctx.needs_input_grad[1] else None
        for o in range(side * side):
            dy, dx = divmod(o, side)
            window = (slice(None), slice(None), slice(dy, dy + height), slice(dx, dx + width))
            if grad_weights is not None:
                grad_weights[:, o] = (grad * padded[window]).sum(1)
            if grad_padded is not None:
                grad_padded[window].addcmul_(weights[:, o : o + 1], grad)
        if grad_padded is None:
            return grad_weights, None, None
        return (
            grad_weights,
            grad_padded[:, :, radius : radius + height, radius : radius + width].contiguous(),
            None,
        )
