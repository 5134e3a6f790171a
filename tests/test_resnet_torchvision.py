"""The benchmark behind keeping the hand-written ResNet: with torchvision's weights layout it is
torchvision's network where both build the same layout, and torchvision refuses the dilated
ResNet-18 the project trains."""

from __future__ import annotations

import pytest

pytest.importorskip("torchvision")

from benchmarks.resnet_torchvision import compare  # noqa: E402


def test_the_undilated_resnet18_is_torchvisions_to_the_bit_where_the_grids_agree():
    row = compare(18, 32, repeats=1)
    assert row["torchvision"] == "built"
    assert row["max_abs_difference_161"] == 0.0
    assert row["grid_160"] == "(6, 6) vs (5, 5)" and row["max_abs_difference_160"] is None
    assert all(
        row[f"{name}_{call}_ms"] > 0 for name in ("ours", "torchvision") for call in ("forward", "train_step")
    )


def test_torchvision_refuses_the_dilated_resnet18():
    row = compare(18, 8, repeats=1)
    assert row["torchvision"].startswith("refused: Dilation > 1 not supported")
