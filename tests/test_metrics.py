"""Confusion-matrix metrics against hand-computed and scikit-learn values, the handling of absent
and ignored classes, input checks, and the sum over processes."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hypothesis import given
from hypothesis import strategies as st
from sklearn.metrics import confusion_matrix, jaccard_score

from difnet.metrics import ConfusionMatrix, SegmentationMetrics

TARGET = torch.tensor([[0, 0, 1], [1, 2, 255]])
PRED = torch.tensor([[0, 1, 1], [1, 0, 2]])


def test_metrics_of_a_hand_computed_confusion_matrix():
    metrics = ConfusionMatrix(3)
    metrics.update(PRED, TARGET)
    # rows: ground truth, columns: prediction; the 255 pixel is not counted.
    assert metrics.matrix.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    result = metrics.compute()
    assert result.per_class_iou == pytest.approx([1 / 3, 2 / 3, 0.0])  # TP / (TP + FP + FN)
    assert result.miou == pytest.approx(1 / 3)
    assert result.pixel_accuracy == pytest.approx(3 / 5)
    assert result.per_class_accuracy == pytest.approx([1 / 2, 1.0, 0.0])
    assert result.mean_class_accuracy == pytest.approx(1 / 2)
    assert result.num_pixels == 5


def test_absent_classes_have_no_iou_and_leave_the_mean():
    metrics = ConfusionMatrix(4)
    # class 2: never labelled nor predicted; class 3: predicted but never labelled.
    metrics.update(torch.tensor([0, 0, 1, 3]), torch.tensor([0, 0, 1, 1]))
    result = metrics.compute()
    assert result.per_class_iou == pytest.approx([1.0, 1 / 2, None, 0.0])
    assert result.miou == pytest.approx((1.0 + 1 / 2 + 0.0) / 3)
    assert result.per_class_accuracy == pytest.approx([1.0, 1 / 2, None, None])
    assert result.mean_class_accuracy == pytest.approx(3 / 4)
    text = json.dumps(result.to_dict(), allow_nan=False)
    assert json.loads(text)["per_class_iou"][2] is None


def test_perfect_prediction_scores_one():
    target = torch.randint(0, 5, (2, 6, 7), generator=torch.Generator().manual_seed(0))
    metrics = ConfusionMatrix(5)
    metrics.update(target.clone(), target)
    result = metrics.compute()
    assert result.miou == result.pixel_accuracy == result.mean_class_accuracy == 1.0


def test_ignored_pixels_count_for_nothing_whatever_is_predicted_there():
    target = torch.tensor([[1, 255], [255, 0]])
    metrics = ConfusionMatrix(2)
    metrics.update(torch.tensor([[1, 99], [-5, 0]]), target)
    assert metrics.matrix.tolist() == [[1, 0], [0, 1]]


def test_custom_ignore_index():
    metrics = ConfusionMatrix(2, ignore_index=-1)
    metrics.update(torch.tensor([0, 1, 1]), torch.tensor([0, -1, 1]))
    assert metrics.compute().num_pixels == 2


@pytest.mark.filterwarnings("ignore:A single label was found:UserWarning")  # scikit-learn, K=1
@given(
    num_classes=st.integers(1, 6),
    batches=st.lists(st.integers(1, 40), min_size=1, max_size=4),
    seed=st.integers(0, 2**31 - 1),
)
def test_accumulated_batches_match_scikit_learn(num_classes, batches, seed):
    rng = np.random.default_rng(seed)
    metrics, targets, preds = ConfusionMatrix(num_classes), [], []
    for size in batches:
        target = rng.integers(0, num_classes, size)
        target[rng.random(size) < 0.2] = 255
        pred = rng.integers(0, num_classes, size)
        metrics.update(torch.from_numpy(pred), torch.from_numpy(target))
        targets.append(target)
        preds.append(pred)
    target, pred = np.concatenate(targets), np.concatenate(preds)
    valid = target != 255
    target, pred = target[valid], pred[valid]
    if not valid.any():
        assert int(metrics.matrix.sum()) == 0
        return
    labels = list(range(num_classes))
    np.testing.assert_array_equal(metrics.matrix.numpy(), confusion_matrix(target, pred, labels=labels))
    result = metrics.compute()
    seen = np.isin(labels, target) | np.isin(labels, pred)
    assert [v is not None for v in result.per_class_iou] == seen.tolist()
    iou = jaccard_score(target, pred, labels=labels, average=None, zero_division=0)
    np.testing.assert_allclose([v or 0.0 for v in result.per_class_iou], iou)
    assert result.miou == pytest.approx(iou[seen].mean())
    assert result.pixel_accuracy == pytest.approx((target == pred).mean())


def test_reset_forgets_counts():
    metrics = ConfusionMatrix(3)
    metrics.update(PRED, TARGET)
    metrics.reset()
    assert int(metrics.matrix.sum()) == 0
    metrics.update(TARGET.clamp(max=2), TARGET)
    assert metrics.compute().miou == 1.0


def test_metrics_are_plain_json():
    metrics = ConfusionMatrix(3)
    metrics.update(PRED, TARGET)
    result = metrics.compute()
    assert isinstance(result, SegmentationMetrics)
    values = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert set(values) == {
        "miou",
        "per_class_iou",
        "pixel_accuracy",
        "mean_class_accuracy",
        "per_class_accuracy",
        "num_pixels",
    }


@pytest.mark.parametrize(
    "pred, target, error, problem",
    [
        (
            PRED.float(),
            TARGET,
            TypeError,
            r"pred must hold integer class ids .*float32.*argmax\(1\)",
        ),
        (PRED, TARGET.float(), TypeError, "target must hold integer class ids"),
        (PRED.numpy(), TARGET, TypeError, "pred must be a torch.Tensor"),
        (PRED[:1], TARGET, ValueError, r"same shape \(got \(1, 3\) and \(2, 3\)\)"),
        (PRED + 2, TARGET, ValueError, r"pred holds values \[3\] outside \[0, 3\)"),
        (
            PRED,
            TARGET.where(TARGET != 1, 7),
            ValueError,
            r"target holds values \[7\] outside \[0, 3\) and 255",
        ),
    ],
)
def test_bad_inputs_are_refused(pred, target, error, problem):
    metrics = ConfusionMatrix(3)
    with pytest.raises(error, match=problem):
        metrics.update(pred, target)
    assert int(metrics.matrix.sum()) == 0


def test_bad_arguments_and_empty_counts_are_refused():
    with pytest.raises(ValueError, match="num_classes must be a positive integer"):
        ConfusionMatrix(0)
    with pytest.raises(ValueError, match=r"ignore_index 2 is a class id; .*\[0, 3\)"):
        ConfusionMatrix(3, ignore_index=2)
    metrics = ConfusionMatrix(3)
    metrics.update(PRED, torch.full_like(TARGET, 255))
    with pytest.raises(ValueError, match="no labelled pixels were counted"):
        metrics.compute()


def test_all_reduce_is_a_no_op_without_a_process_group():
    metrics = ConfusionMatrix(3)
    metrics.update(PRED, TARGET)
    before = metrics.matrix.clone()
    metrics.all_reduce()
    assert torch.equal(metrics.matrix, before)


def reduce_in_process(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        metrics = ConfusionMatrix(3)
        metrics.update(PRED if rank == 0 else TARGET.clamp(max=2), TARGET)
        metrics.all_reduce()
        np.save(f"{out_dir}/rank{rank}.npy", metrics.matrix.numpy())
    finally:
        dist.destroy_process_group()


def test_all_reduce_sums_the_counts_of_all_processes(tmp_path):
    args = (2, str(tmp_path / "init"), str(tmp_path))
    # fork: no re-import of torch in the children, which keeps the test well under a second.
    context = mp.start_processes(reduce_in_process, args, nprocs=2, join=False, start_method="fork")
    deadline = time.monotonic() + 60
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the two gloo processes did not finish within 60 s")
    expected = np.array([[1, 1, 0], [0, 2, 0], [1, 0, 0]]) + np.diag([2, 2, 1])
    for rank in range(2):
        np.testing.assert_array_equal(np.load(tmp_path / f"rank{rank}.npy"), expected)
