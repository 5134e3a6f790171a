"""Random walks on learned transition matrices: the cascade of DifNet, usable on any features.

A transition matrix is `P = softmax(f f^T)` (row-wise) for node features `f` of shape
`[B, N, d]`; a walk carries node values `y` of shape `[B, N, K]`. `P y` is attention with
queries = keys = `f`, values = `y` and scale 1, so the default `walk="fused"` computes it with
`scaled_dot_product_attention` and never holds an `N x N` tensor, in forward or backward.
Maps `[B, C, h, w]` become node tensors with `flatten_nodes` and back with `unflatten_nodes`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import reduce
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

WalkMethod = Literal["fused", "materialized"]
WALK_METHODS: tuple[str, ...] = ("fused", "materialized")


def flatten_nodes(maps: Tensor) -> Tensor:
    """`[B, C, h, w]` maps -> contiguous `[B, h*w, C]` node tensor (free for channels_last maps)."""
    return maps.flatten(2).transpose(1, 2).contiguous()


def unflatten_nodes(nodes: Tensor, size: tuple[int, int]) -> Tensor:
    """`[B, h*w, C]` node tensor -> `[B, C, h, w]` maps, as a view (channels_last strides)."""
    return nodes.unflatten(1, size).permute(0, 3, 1, 2)


def transition_matrix(features: Tensor) -> Tensor:
    """Explicit `P = softmax(f f^T)` `[B, N, N]` of features `[B, N, d]`; for inspection only.
    In at least float32 with autocast off, as `propagate` computes `P y`."""
    with full_precision(features) as (features,):
        return torch.softmax(features @ features.transpose(1, 2), dim=-1)


def transition_rows(features: Tensor, nodes: Tensor) -> Tensor:
    """Rows `P[:, nodes]` `[B, n, N]` of `P = softmax(f f^T)` for flat node indices `[n]`, in at
    least float32 with autocast off."""
    with full_precision(features) as (features,):
        return torch.softmax(features[:, nodes] @ features.transpose(1, 2), dim=-1)


@contextmanager
def full_precision(*tensors: Tensor) -> Iterator[tuple[Tensor, ...]]:
    """`tensors` in their common dtype promoted to at least float32, with autocast off inside: the
    logits `f f^T` are unscaled inner products, too large for bfloat16's 8-bit mantissa."""
    dtype = reduce(torch.promote_types, (t.dtype for t in tensors), torch.float32)
    with torch.autocast(tensors[0].device.type, enabled=False):
        yield tuple(t.to(dtype) for t in tensors)


def propagate(features: Tensor, values: Tensor, *, walk: WalkMethod = "fused") -> Tensor:
    """One transition `P y` with `P = softmax(f f^T)`: features `[B, N, d]`, values `[B, N, K]`.

    Runs in at least float32 with autocast off (`full_precision`). Returns `[B, N, K]`.
    """
    if walk not in WALK_METHODS:
        raise ValueError(f"walk must be one of {WALK_METHODS} (got {walk!r})")
    if features.dim() != 3 or values.dim() != 3 or features.shape[:2] != values.shape[:2]:
        raise ValueError(
            "features [B, N, d] and values [B, N, K] must share B and N "
            f"(got {tuple(features.shape)} and {tuple(values.shape)})"
        )
    with full_precision(features, values) as (features, values):
        if walk == "materialized":
            return transition_matrix(features) @ values
        return _fused_propagate(features, values)


def _fused_propagate(features: Tensor, values: Tensor) -> Tensor:
    """`P y` through `scaled_dot_product_attention`, in value-column blocks of width `d`.

    The CPU flash kernel needs the value width to equal `d`, so the `K` columns are
    zero-padded to `heads * d` and each block of `d` columns is one attention head sharing
    the same queries and keys (stride-0 views; copies only with several heads and splits).
    """
    batch, num_nodes, width = features.shape
    num_values = values.shape[-1]
    heads = -(-num_values // width)  # integer ceil keeps symbolic sizes symbolic under export
    splits = _query_splits(features, batch * heads)
    rows = -(-num_nodes // splits)

    queries = F.pad(features, (0, 0, 0, splits * rows - num_nodes))
    queries = queries.view(batch, 1, splits, rows, width).expand(-1, heads, -1, -1, -1)
    keys = features.view(batch, 1, 1, num_nodes, width).expand(-1, heads, splits, -1, -1)
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


def walk_step(walked: Tensor, y: Tensor, seed: Tensor, mu: Tensor | float, beta: Tensor | float) -> Tensor:
    """Eqs. 4-5 given `walked = P y`: `beta (mu P y + (1 - mu) s) + (1 - beta) y`, in `walked`'s
    dtype; a step apart so walks on other transition matrices (e.g. label-built) share it."""
    restarted = torch.lerp(seed.to(walked.dtype), walked, mu)  # Eq. 4
    return torch.lerp(y.to(walked.dtype), restarted, beta)  # Eq. 5


class RandomWalk(nn.Module):
    """One walk of the cascade: `y' = beta R + (1 - beta) y`, `R = mu P y + (1 - mu) s`.

    `mu` and `beta` live in (0, 1) as sigmoids of raw parameters initialised at 0 (value 0.5).
    """

    def __init__(self, walk: WalkMethod = "fused") -> None:
        super().__init__()
        if walk not in WALK_METHODS:
            raise ValueError(f"walk must be one of {WALK_METHODS} (got {walk!r})")
        self.walk = walk
        self.raw_mu = nn.Parameter(torch.zeros(()))
        self.raw_beta = nn.Parameter(torch.zeros(()))

    @property
    def mu(self) -> Tensor:
        """The restart weight `mu_t` in (0, 1)."""
        return torch.sigmoid(self.raw_mu)

    @property
    def beta(self) -> Tensor:
        """The step weight `beta_t` in (0, 1)."""
        return torch.sigmoid(self.raw_beta)

    def forward(self, features: Tensor, y: Tensor, seed: Tensor) -> Tensor:
        """Features `[B, N, d]`, current values `y` and seed `s` `[B, N, K]` -> next `y`."""
        return walk_step(propagate(features, y, walk=self.walk), y, seed, self.mu, self.beta)

    def extra_repr(self) -> str:
        return f"walk={self.walk!r}"


class Cascade(nn.Module):
    """A cascade of random walks, one per transition matrix, all restarting from the seed.

    `forward(features, seed)` takes one `[B, N, d]` feature tensor per walk and the seed
    `[B, N, K]`, and returns `[y_1, ..., y_T]`.
    """

    def __init__(self, num_walks: int, walk: WalkMethod = "fused") -> None:
        super().__init__()
        if num_walks < 1:
            raise ValueError(f"num_walks must be at least 1 (got {num_walks})")
        self.walks = nn.ModuleList(RandomWalk(walk) for _ in range(num_walks))

    @property
    def mu(self) -> Tensor:
        """`[T]` tensor of the walks' `mu_t`."""
        return torch.stack([walk.mu for walk in self.walks])

    @property
    def beta(self) -> Tensor:
        """`[T]` tensor of the walks' `beta_t`."""
        return torch.stack([walk.beta for walk in self.walks])

    def forward(self, features: Sequence[Tensor], seed: Tensor) -> list[Tensor]:
        """Run every walk in turn from `y_0 = s`; returns `[y_1, ..., y_T]`."""
        if len(features) != len(self.walks):
            raise ValueError(
                f"expected {len(self.walks)} feature tensors, one per walk (got {len(features)})"
            )
        outputs = []
        y = seed
        for walk, f in zip(self.walks, features, strict=True):
            y = walk(f, y, seed)
            outputs.append(y)
        return outputs
