"""Augmentation drawn from a seed per sample, so that a sample's crop, scale and flip depend only on
the run's seed, the epoch and the sample's index, never on which process loads it: a run is
reproduced exactly whatever `--workers` (or the number of GPUs) it resumes with."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeVar

import numpy as np
import torch
from torch.utils.data import Dataset

Item = TypeVar("Item")


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of sample `index`'s augmentation in `epoch` of a run seeded with `seed` (mixed by
    NumPy's SeedSequence, so nearby triples give unrelated streams)."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, np.uint64)[0])


@contextmanager
def seeded_random_state(seed: int) -> Iterator[None]:
    """torch's CPU generator, NumPy's and Python's global ones seeded with `seed`, and restored on
    exit, so the draws inside leave the caller's random streams where they were."""
    saved = torch.get_rng_state(), np.random.get_state(), random.getstate()
    torch.default_generator.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
    try:
        yield
    finally:
        torch.set_rng_state(saved[0])
        np.random.set_state(saved[1])
        random.setstate(saved[2])


class SampleSeeded(Dataset[Item]):
    """`dataset` with item `i` of epoch `epoch` read under `seeded_random_state(sample_seed(seed,
    epoch, i))`. Set `epoch` before each epoch's DataLoader iterator is made (workers that are not
    persistent copy the dataset then)."""

    def __init__(self, dataset: Dataset[Item], seed: int) -> None:
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Item:
        with seeded_random_state(sample_seed(self.seed, self.epoch, index)):
            return self.dataset[index]


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """The seed of one process's generators in one epoch."""
    return (seed * 1_000_003 + epoch * 1_009 + rank) % 2**63


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), NumPy and Python's `random`."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
