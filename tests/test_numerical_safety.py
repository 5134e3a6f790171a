"""Numerical safety: the transition softmax and the fused walk stay finite and row-stochastic for
feature norms up to 1e4 (also under bfloat16 autocast), and training stops or skips a step whose
loss is not finite without damaging the last checkpoint."""

from __future__ import annotations

import math
from itertools import count

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor
from torch.utils._pytree import tree_flatten
from torch_threads import single_thread

import reference
from difnet.diffusion import propagate, transition_matrix, transition_rows
from difnet.models import DifNet
from difnet.training import TrainConfig, train
from difnet.training.checkpoint import read_checkpoint
from difnet.training.loop import LAST, EpochSampler, NonFiniteLossError
from difnet.training.records import read_log

MAX_NORM = 1e4
WIDTHS = (4, 8, 16, 64)
LAYOUTS = ("random", "collinear", "repeated")
ROW_SUM_TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 1e-2}
POISONED_CALL = 2  # the third forward pass: epoch 2, batch 1, step 3


@st.composite
def node_features(draw: st.DrawFn) -> np.ndarray:
    """`[B, N, d]` float64 features, N <= 64, node norms up to a drawn maximum <= 1e4 (node 0 at it)."""
    batch, nodes = draw(st.integers(1, 2)), draw(st.integers(1, 64))
    width = draw(st.sampled_from(WIDTHS))
    largest = 10.0 ** draw(st.floats(-2.0, math.log10(MAX_NORM)))
    layout = draw(st.sampled_from(LAYOUTS))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    directions = rng.standard_normal((batch, nodes, width))
    if layout == "collinear":  # every node along one direction, either way: the largest logits
        directions = directions[:, :1] * rng.choice([-1.0, 1.0], (batch, nodes, 1))
    norms = largest * rng.uniform(0.0, 1.0, (batch, nodes, 1))
    norms[:, 0] = largest
    features = directions / np.linalg.norm(directions, axis=-1, keepdims=True) * norms
    if layout == "repeated":  # nodes drawn again: tied rows and columns of the logits
        picks = rng.integers(0, nodes, nodes)
        features = features[:, np.concatenate([[0], picks[1:]])]
    return features


def largest_norm_features(width: int) -> np.ndarray:
    """`[1, 64, width]` features whose every node has norm `MAX_NORM`."""
    directions = np.random.default_rng(width).standard_normal((1, 64, width))
    return directions / np.linalg.norm(directions, axis=-1, keepdims=True) * MAX_NORM


def assert_row_stochastic(matrix: Tensor | np.ndarray) -> None:
    """Finite, non-negative entries and rows summing to 1 within the matrix dtype's tolerance."""
    matrix = torch.as_tensor(matrix)
    tolerance = ROW_SUM_TOLERANCE[matrix.dtype]
    matrix = matrix.double()
    assert torch.isfinite(matrix).all()
    assert (matrix >= 0).all()
    torch.testing.assert_close(
        matrix.sum(-1), torch.ones(matrix.shape[:-1], dtype=torch.float64), rtol=0, atol=tolerance
    )


# --- transition matrices and the fused walk ----------------------------------------------------


def check_reference_transition(features: np.ndarray, dtype: type) -> None:
    """`reference.transition_matrix` in `dtype` is row-stochastic and keeps the dtype."""
    matrix = reference.transition_matrix(features.astype(dtype))
    assert matrix.dtype == dtype
    assert_row_stochastic(matrix)


def check_torch_transition(features: np.ndarray, autocast: bool) -> None:
    """`transition_matrix` and `transition_rows` are row-stochastic, with or without autocast."""
    f = torch.from_numpy(features).float()
    nodes = torch.arange(0, f.shape[1], 3)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        matrix, rows = transition_matrix(f), transition_rows(f, nodes)
    assert rows.shape == (f.shape[0], len(nodes), f.shape[1])
    assert_row_stochastic(matrix)
    assert_row_stochastic(rows)


def check_fused_walk(
    features: np.ndarray, values: np.ndarray, autocast: bool, feature_dtype: torch.dtype
) -> None:
    """`P y` and its gradients are finite, `P 1 = 1`, and `P y` lies within each column's range of `y`."""
    f = torch.from_numpy(features).to(feature_dtype).requires_grad_()  # gradients: the split CPU kernel
    y = torch.from_numpy(values).float().requires_grad_()
    ones = torch.ones_like(y)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        walked, kept = propagate(f, y, walk="fused"), propagate(f, ones, walk="fused")
    assert walked.dtype == kept.dtype == torch.float32
    torch.testing.assert_close(kept, ones, rtol=0, atol=1e-5)
    slack = 1e-5 * y.detach().abs().amax(dim=1, keepdim=True)
    assert (walked >= y.amin(dim=1, keepdim=True) - slack).all()
    assert (walked <= y.amax(dim=1, keepdim=True) + slack).all()
    (walked.sum() + kept.sum()).backward()
    assert torch.isfinite(f.grad).all() and torch.isfinite(y.grad).all()


def walk_values(features: np.ndarray, classes: int, seed: int) -> np.ndarray:
    """`[B, N, classes]` values on the features' nodes, of magnitude 1e-2 to 1e3."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((*features.shape[:2], classes)) * 10.0 ** rng.uniform(-2, 3)


@given(features=node_features(), dtype=st.sampled_from([np.float32, np.float64]))
def test_reference_transition_is_finite_and_row_stochastic(features, dtype):
    check_reference_transition(features, dtype)


@given(features=node_features(), autocast=st.booleans())
def test_transition_matrix_and_rows_are_finite_and_row_stochastic(features, autocast):
    check_torch_transition(features, autocast)


@given(
    features=node_features(),
    classes=st.integers(1, 5),
    seed=st.integers(0, 2**32 - 1),
    autocast=st.booleans(),
    feature_dtype=st.sampled_from([torch.float32, torch.bfloat16]),
)
def test_fused_walk_is_finite_keeps_constants_and_stays_within_the_values(
    features, classes, seed, autocast, feature_dtype
):
    check_fused_walk(features, walk_values(features, classes, seed), autocast, feature_dtype)


@pytest.mark.parametrize("width", WIDTHS)
def test_everything_holds_at_feature_norm_1e4(width):
    features = largest_norm_features(width)
    for dtype in (np.float32, np.float64):
        check_reference_transition(features, dtype)
    for autocast in (False, True):
        check_torch_transition(features, autocast)
        for feature_dtype in (torch.float32, torch.bfloat16):
            check_fused_walk(features, walk_values(features, 5, width), autocast, feature_dtype)


# --- non-finite losses in training -------------------------------------------------------------


def poison_forward(monkeypatch: pytest.MonkeyPatch, at_call: int) -> None:
    """Make DifNet's forward return NaN logits (still on the graph) on its `at_call`-th call."""
    original, calls = DifNet.forward, count()

    def forward(self: DifNet, images: Tensor) -> Tensor:
        logits = original(self, images)
        return logits * math.nan if next(calls) == at_call else logits

    monkeypatch.setattr(DifNet, "forward", forward)


def nan_config(tmp_path, policy: str) -> TrainConfig:
    """Two epochs of two steps on synthetic scenes, reacting to non-finite steps with `policy`."""
    return TrainConfig(
        model="difnet", depth=18, dataset="synthetic", image_size=(32, 32), crop_size=32,
        batch_size=4, epochs=2, max_steps_per_epoch=2, num_classes=3, workers=0, device="cpu",
        progress=False, val_split=None, output_dir=str(tmp_path / "run"), overwrite=True,
        on_nonfinite=policy,
    )  # fmt: skip


def poisoned_samples(config: TrainConfig) -> list[int]:
    """The training-split indices of the poisoned batch (epoch 2, batch 1)."""
    sampler = EpochSampler(len(config.build_dataset(config.train_split)), config.seed)
    sampler.set_epoch(1)
    return list(sampler)[: config.batch_size]


def assert_finite_checkpoint(payload: dict, epoch: int, step: int) -> None:
    """The checkpoint is of `epoch` and `step`, and all its weights and optimiser state are finite."""
    assert (payload["epoch"], payload["step"]) == (epoch, step)
    leaves = tree_flatten([payload["model"], payload["optimizer"]])[0]
    assert all(torch.isfinite(leaf).all() for leaf in leaves if isinstance(leaf, Tensor))


def nonfinite_records(config: TrainConfig) -> list[dict]:
    """The `nonfinite` records of the run's log.jsonl, without their time."""
    records = [r for r in read_log(config.output_dir) if r["event"] == "nonfinite"]
    return [{key: value for key, value in r.items() if key != "time"} for r in records]


def test_a_nan_loss_stops_the_run_naming_the_step_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    config = nan_config(tmp_path, "stop")
    poison_forward(monkeypatch, POISONED_CALL)
    with pytest.raises(NonFiniteLossError) as stopped, single_thread():
        train(config)
    message, samples = str(stopped.value), poisoned_samples(config)
    assert "epoch 2, step 3 (batch 1 of the epoch" in message
    assert f"samples {samples}" in message
    assert_finite_checkpoint(read_checkpoint(tmp_path / "run" / LAST), epoch=1, step=2)
    assert nonfinite_records(config) == [
        {"event": "nonfinite", "step": 3, "epoch": 2, "batch": 1, "samples": samples, "action": "stop"}
    ]


def test_a_nan_loss_is_skipped_and_the_run_finishes_with_finite_weights(tmp_path, monkeypatch):
    config = nan_config(tmp_path, "skip")
    poison_forward(monkeypatch, POISONED_CALL)
    with single_thread():
        result = train(config)
    assert all(torch.isfinite(p).all() for p in result.model.state_dict().values())
    assert_finite_checkpoint(read_checkpoint(tmp_path / "run" / LAST), epoch=2, step=4)
    assert nonfinite_records(config) == [
        {"event": "nonfinite", "step": 3, "epoch": 2, "batch": 1,
         "samples": poisoned_samples(config), "action": "skip"}
    ]  # fmt: skip
