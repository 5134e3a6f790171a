"""Activation checkpointing that keeps BatchNorm exact: the recomputation in backward sees the same
batch, so it normalises identically, but must not move the running statistics a second time."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.checkpoint import checkpoint


def batch_norms(module: nn.Module) -> list[_BatchNorm]:
    """The BN layers inside `module`, of every kind (plain BN and the SyncBatchNorm that distributed
    training converts them to, which is not a subclass of `nn.BatchNorm2d`)."""
    return [m for m in module.modules() if isinstance(m, _BatchNorm)]


def recomputed(function: Callable[[Tensor], Tensor], x: Tensor, norms: Sequence[_BatchNorm]) -> Tensor:
    """`function(x)` under activation checkpointing. The recomputation in backward sees the same
    batch, so it normalises identically, but must not move the running statistics of `norms`
    (the BN layers inside `function`) a second time."""
    calls = 0

    def tracked_once(x: Tensor) -> Tensor:
        nonlocal calls
        calls += 1
        if calls == 1:
            return function(x)
        with _running_stats_frozen(norms):
            return function(x)

    return checkpoint(tracked_once, x, use_reentrant=False)


@contextmanager
def _running_stats_frozen(norms: Sequence[_BatchNorm]) -> Iterator[None]:
    """BN layers run as in training (same saved tensors, which checkpointing compares) but with
    momentum 0, so their running statistics stay as they are, and their batch counts restored."""
    norms = [norm for norm in norms if norm.track_running_stats]
    saved = [(norm.momentum, norm.num_batches_tracked.clone()) for norm in norms]
    for norm in norms:
        norm.momentum = 0.0
    try:
        yield
    finally:
        for norm, (momentum, count) in zip(norms, saved, strict=True):
            norm.momentum = momentum
            norm.num_batches_tracked.copy_(count)
