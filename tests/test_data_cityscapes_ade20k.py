"""Cityscapes and ADE20K: their label mappings (Cityscapes' checked against the official table
of `cityscapesscripts`), their layouts on tiny generated fixtures, and training and evaluation
through the `difnet` command line."""

from __future__ import annotations

import numpy as np
import pytest
from data_fixtures import save_mask, write_ade20k_fixture, write_cityscapes_fixture

from difnet.cli import main
from difnet.data import (
    ADE20K,
    ADE20K_CLASSES,
    ADE20K_PALETTE,
    CITYSCAPES_CLASSES,
    CITYSCAPES_PALETTE,
    Cityscapes,
    build_dataset,
)
from difnet.data.base import read_mask
from difnet.data.cityscapes import NUM_LABEL_IDS, TRAIN_IDS

FIXTURES = {"cityscapes": write_cityscapes_fixture, "ade20k": write_ade20k_fixture}


def test_cityscapes_label_ids_map_to_the_official_train_ids():
    labels = pytest.importorskip("cityscapesscripts.helpers.labels", reason="needs the test extra").labels
    official = {label.id: label.trainId for label in labels if 0 <= label.id < NUM_LABEL_IDS}
    assert sorted(official) == list(range(NUM_LABEL_IDS))
    expected = [official[i] if 0 <= official[i] < len(CITYSCAPES_CLASSES) else 255 for i in official]
    assert TRAIN_IDS[:NUM_LABEL_IDS].tolist() == expected
    assert (TRAIN_IDS[NUM_LABEL_IDS:] == 255).all()
    evaluated = sorted(
        (label for label in labels if 0 <= label.trainId < 255), key=lambda label: label.trainId
    )
    assert [label.name for label in evaluated] == list(CITYSCAPES_CLASSES)
    assert [tuple(label.color) for label in evaluated] == CITYSCAPES_PALETTE


def test_cityscapes_reads_the_official_layout_as_train_ids(tmp_path):
    root = write_cityscapes_fixture(tmp_path)
    train, val = Cityscapes(tmp_path, "train"), build_dataset("cityscapes", root, "val")  # nested root too
    assert (len(train), len(val), train.num_classes) == (3, 2, 19)
    for dataset in (train, val):
        for sample, (image, label) in zip(dataset.samples, dataset, strict=True):
            assert sample.mask.name.endswith("_gtFine_labelIds.png")
            assert image.shape == (3, 32, 64)
            assert label.numpy().tolist() == TRAIN_IDS[read_mask(sample.mask)].tolist()
    road = train[0][1][-1]
    assert (road == CITYSCAPES_CLASSES.index("road")).all()
    assert (train[0][1][0, 0] == 255).item()  # label id 0, "unlabeled"


def test_cityscapes_prefers_train_id_masks_and_resizes(tmp_path):
    root = write_cityscapes_fixture(tmp_path, train_ids=True)
    dataset = build_dataset("cityscapes", root, "train", resize=(16, 32))
    assert all(sample.mask.name.endswith("_gtFine_labelTrainIds.png") for sample in dataset.samples)
    image, label = dataset[1]
    assert image.shape == (3, 16, 32) and (label == 7).all()


def test_cityscapes_refuses_values_that_are_no_label_id(tmp_path):
    root = write_cityscapes_fixture(tmp_path, n_val=1)
    dataset = Cityscapes(root, "val")
    save_mask(dataset.samples[0].mask, np.full((32, 64), 40, dtype=np.uint8))
    with pytest.raises(
        ValueError, match=r"labelIds\.png holds values \[40\] that are no Cityscapes label ids"
    ):
        dataset[0]


def test_ade20k_maps_other_to_ignore_and_shifts_the_classes(tmp_path):
    root = write_ade20k_fixture(tmp_path)
    dataset = ADE20K(tmp_path, "val")  # the folder holding ADEChallengeData2016
    assert (len(ADE20K(root, "train")), len(dataset), dataset.num_classes) == (3, 2, 150)

    save_mask(dataset.samples[0].mask, np.resize(np.arange(151, dtype=np.uint8), (36, 48)))
    label = dataset[0][1].numpy()
    raw = np.resize(np.arange(151), (36, 48))
    assert label.tolist() == np.where(raw == 0, 255, raw - 1).tolist()
    assert set(np.unique(label)) == set(range(150)) | {255}


def test_ade20k_names_palette_and_refusals(tmp_path):
    assert len(ADE20K_CLASSES) == len(set(ADE20K_CLASSES)) == len(ADE20K_PALETTE) == 150
    assert (ADE20K_CLASSES[0], ADE20K_CLASSES[12], ADE20K_CLASSES[-1]) == ("wall", "person", "flag")
    root = write_ade20k_fixture(tmp_path, n_val=1)
    with pytest.raises(ValueError, match="unknown ADE20K split 'validation'; choose one of train, val"):
        ADE20K(root, "validation")
    dataset = ADE20K(root, "val")
    save_mask(dataset.samples[0].mask, np.full((36, 48), 151, dtype=np.uint8))
    with pytest.raises(ValueError, match=r"holds values \[151\] above 150"):
        dataset[0]


@pytest.mark.parametrize("dataset", sorted(FIXTURES))
def test_train_and_evaluate_through_the_cli(tmp_path, capsys, dataset):
    root = FIXTURES[dataset](tmp_path)
    output = tmp_path / "run"
    status = main(["train", "--model", "simdeeplab", "--depth", "18", "--dataset", dataset,
                   "--data-root", str(root), "--crop-size", "32", "--batch-size", "2", "--epochs", "1",
                   "--max-steps-per-epoch", "1", "--workers", "0", "--device", "cpu", "--no-progress",
                   "--output-dir", str(output)])  # fmt: skip
    assert status == 0 and "best val mIoU" in capsys.readouterr().out
    assert main(["evaluate", "--checkpoint", str(output / "best.pt"), "--device", "cpu"]) == 0
    table = capsys.readouterr().out
    last_class = {"cityscapes": CITYSCAPES_CLASSES, "ade20k": ADE20K_CLASSES}[dataset][-1]
    assert "mIoU" in table and last_class in table
