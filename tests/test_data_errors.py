"""Every bad dataset input fails with an error that names the file, folder or value at fault:
layout problems when the dataset is built, content problems when the item is read."""

from __future__ import annotations

import re

import numpy as np
import pytest
from data_fixtures import (
    random_image,
    save_image,
    save_mask,
    write_camvid_fixture,
    write_context_fixture,
    write_folder_fixture,
    write_list,
    write_voc_fixture,
)

from difnet.data import (
    CamVid,
    FolderDataset,
    PascalContext,
    SyntheticShapes,
    VOCSegmentation,
    build_dataset,
)

RNG = np.random.default_rng(0)


@pytest.fixture
def voc(tmp_path):
    return write_voc_fixture(tmp_path, n_train=2, n_val=1, n_aug_only=1)


def escaped(path) -> str:
    return re.escape(str(path))


# --- layout: raised at construction ------------------------------------------------------------


@pytest.mark.parametrize(
    "dataset, layout",
    [
        (VOCSegmentation, "JPEGImages/"),
        (PascalContext, "SegmentationClassContext/"),
        (CamVid, "trainannot/"),
    ],
)
def test_missing_root_says_what_is_expected(tmp_path, dataset, layout):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=f"{escaped(missing)} does not exist.*{layout}"):
        dataset(missing, "train")


def test_root_without_the_layout_says_what_is_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{escaped(tmp_path)} has no JPEGImages.*VOC2012"):
        VOCSegmentation(tmp_path, "train")
    with pytest.raises(FileNotFoundError, match="has no train.txt.*SegNet"):
        CamVid(tmp_path, "train")


def test_missing_split_file_names_it(voc):
    (voc / "ImageSets" / "Segmentation" / "val.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"split file .*Segmentation/val\.txt not found"):
        VOCSegmentation(voc, "val")


def test_missing_train_aug_list_explains_sbd(voc):
    (voc / "ImageSets" / "Segmentation" / "train_aug.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"train_aug\.txt not found.*10,582 ids.*SBD"):
        VOCSegmentation(voc, "train_aug")


def test_missing_sbd_masks_folder_is_named(voc):
    for mask in (voc / "SegmentationClassAug").iterdir():
        mask.unlink()
    (voc / "SegmentationClassAug").rmdir()
    with pytest.raises(FileNotFoundError, match=r"folder .*SegmentationClassAug not found.*SBD"):
        VOCSegmentation(voc, "train_aug")


def test_missing_context_masks_folder_is_named(tmp_path):
    root = write_context_fixture(tmp_path, n_train=1, n_val=1)
    for mask in (root / "SegmentationClassContext").iterdir():
        mask.unlink()
    (root / "SegmentationClassContext").rmdir()
    with pytest.raises(FileNotFoundError, match="SegmentationClassContext not found.*60-class"):
        PascalContext(root, "val")


def test_empty_split_file_is_refused(voc):
    write_list(voc / "ImageSets" / "Segmentation" / "train.txt", [])
    with pytest.raises(ValueError, match=r"split file .*train\.txt is empty"):
        VOCSegmentation(voc, "train")


@pytest.mark.parametrize("dataset", [VOCSegmentation, PascalContext, CamVid])
def test_unknown_split_lists_the_valid_ones(tmp_path, dataset):
    with pytest.raises(ValueError, match=r"unknown .* split 'tarin'; choose one of train, val"):
        dataset(tmp_path, "tarin")


def test_image_without_its_mask_names_both(voc):
    mask = voc / "SegmentationClass" / "2007_000001.png"
    mask.unlink()
    with pytest.raises(
        FileNotFoundError,
        match=rf"image .*2007_000001\.jpg has no mask: expected {escaped(mask)} \(1 of 2 masks",
    ):
        VOCSegmentation(voc, "train")


def test_listed_image_that_does_not_exist_is_named(voc):
    write_list(voc / "ImageSets" / "Segmentation" / "val.txt", ["2007_000002", "2007_999999"])
    with pytest.raises(FileNotFoundError, match=r"image .*2007_999999\.jpg listed by .*val\.txt"):
        VOCSegmentation(voc, "val")


def test_camvid_list_line_without_two_paths_is_named(tmp_path):
    root = write_camvid_fixture(tmp_path, n_train=2, n_val=0, n_test=0)
    lines = (root / "train.txt").read_text().splitlines()
    write_list(root / "train.txt", [lines[0], lines[1].split()[0]])
    with pytest.raises(ValueError, match=r"train\.txt line 2: expected two paths"):
        CamVid(root, "train")


def test_camvid_list_entry_missing_under_root_is_named(tmp_path):
    root = write_camvid_fixture(tmp_path, n_train=1, n_val=0, n_test=0)
    (root / "trainannot" / "0001TP_000000.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"has no mask: expected .*trainannot/0001TP_000000"):
        CamVid(root, "train")


def test_folder_dataset_errors(tmp_path):
    images, masks = write_folder_fixture(tmp_path, n=2, num_classes=3)
    with pytest.raises(FileNotFoundError, match=r"folder .*nowhere not found; expected a folder of images"):
        FolderDataset(tmp_path / "nowhere", masks, 3)
    with pytest.raises(ValueError, match=r"num_classes must be in \[1, 255\] \(got 256\)"):
        FolderDataset(images, masks, 256)
    with pytest.raises(TypeError, match="num_classes must be an int"):
        FolderDataset(images, masks, 2.0)
    save_image(images / "scene0.png", random_image(RNG, (40, 52)))  # beside scene0.jpg
    with pytest.raises(ValueError, match=r"scene0\.jpg and .*scene0\.png have the same name"):
        FolderDataset(images, masks, 3)
    (images / "scene0.png").unlink()
    (masks / "scene1.png").unlink()
    with pytest.raises(
        FileNotFoundError, match=r"image .*scene1\.png has no mask: expected .*masks/scene1\.png"
    ):
        FolderDataset(images, masks, 3)


def test_folder_without_images_is_refused(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(ValueError, match=r"folder .*images lists no images"):
        FolderDataset(tmp_path / "images", tmp_path / "masks", 2)


def test_build_dataset_errors(tmp_path):
    with pytest.raises(ValueError, match=r"unknown dataset 'coco'; choose one of voc, context, camvid"):
        build_dataset("coco", tmp_path, "train")
    with pytest.raises(ValueError, match="'voc' needs a data root"):
        build_dataset("voc", None, "train")
    with pytest.raises(ValueError, match="'folder' needs the option num_classes"):
        build_dataset("folder", tmp_path, "train")
    with pytest.raises(TypeError, match=r"'voc' takes only the option resize \(got size\)"):
        build_dataset("voc", tmp_path, "train", size=3)
    with pytest.raises(ValueError, match="unknown synthetic split 'dev'"):
        build_dataset("synthetic", None, "dev")


@pytest.mark.parametrize(
    "kwargs, problem",
    [
        ({"num_images": 0}, "num_images must be a positive integer"),
        ({"num_images": 2, "size": 8}, r"size must be .* >= 16 \(got 8\)"),
        ({"num_images": 2, "size": (32, 32, 3)}, "size must be"),
        (
            {"num_images": 2, "num_classes": 1},
            r"num_classes must be an integer in \[2, 13\] \(got 1\)",
        ),
        ({"num_images": 2, "num_classes": 14}, r"\[2, 13\] \(got 14\)"),
        ({"num_images": 2, "seed": -1}, "seed must be a non-negative integer"),
    ],
)
def test_synthetic_shapes_argument_errors(kwargs, problem):
    with pytest.raises(ValueError, match=problem):
        SyntheticShapes(**kwargs)


def test_non_callable_transform_is_refused():
    with pytest.raises(TypeError, match="transform must be callable"):
        SyntheticShapes(2, transform="flip")


def test_index_out_of_range_raises_index_error():
    dataset = SyntheticShapes(3, 32)
    with pytest.raises(IndexError, match="index 3 is out of range for a dataset of 3 items"):
        dataset[3]
    with pytest.raises(IndexError, match="index -4"):
        dataset[-4]


# --- content: raised when the item is read -----------------------------------------------------


def test_size_mismatch_names_both_files_and_sizes(voc):
    mask = voc / "SegmentationClass" / "2007_000000.png"
    save_mask(mask, np.zeros((40, 50), dtype=np.uint8))
    dataset = VOCSegmentation(voc, "train")
    with pytest.raises(
        ValueError,
        match=rf"image .*2007_000000\.jpg is 40x52 \(HxW\) but its mask {escaped(mask)} is 40x50",
    ):
        dataset[0]
    dataset[1]  # the other item is fine


def test_label_values_out_of_range_name_the_file_and_values(voc):
    labels = np.zeros((40, 52), dtype=np.uint8)
    labels[:5], labels[-5:], labels[10:12] = 21, 37, 255
    mask = save_mask(voc / "SegmentationClassAug" / "2007_000003.png", labels)
    dataset = VOCSegmentation(voc, "train_aug")
    with pytest.raises(
        ValueError, match=rf"mask {escaped(mask)} holds values \[21, 37\] outside \[0, 21\) and 255"
    ):
        dataset[2]


def test_camvid_values_above_unlabelled_are_refused(tmp_path):
    root = write_camvid_fixture(tmp_path, n_train=1, n_val=0, n_test=0)
    labels = np.full((36, 48), 12, dtype=np.uint8)
    save_mask(root / "trainannot" / "0001TP_000000.png", labels)
    with pytest.raises(ValueError, match=r"holds values \[12\] outside \[0, 11\)"):
        CamVid(root, "train")[0]


def test_colour_mask_is_refused_with_a_hint(voc):
    mask = voc / "SegmentationClass" / "2007_000000.png"
    save_image(mask, random_image(RNG, (40, 52)))
    with pytest.raises(ValueError, match=rf"mask {escaped(mask)} is a mode-'RGB' image.*not colours"):
        VOCSegmentation(voc, "train")[0]


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_unreadable_images_are_named(tmp_path, suffix, damage):
    images, masks = write_folder_fixture(tmp_path, n=1, num_classes=3)
    image = save_image(images / f"scene0{suffix}", random_image(RNG, (40, 52)))
    if suffix == ".png":
        (images / "scene0.jpg").unlink()
    data = image.read_bytes()
    damaged = {"garbage": b"not an image at all" * 10, "truncated": data[: len(data) // 2]}
    image.write_bytes(damaged.get(damage, b""))
    dataset = FolderDataset(images, masks, 3)
    with pytest.raises(ValueError, match=rf"cannot read image {escaped(image)}: "):
        dataset[0]


def test_unreadable_mask_is_named(voc):
    mask = voc / "SegmentationClass" / "2007_000002.png"
    mask.write_bytes(mask.read_bytes()[:60])
    with pytest.raises(ValueError, match=rf"cannot read mask {escaped(mask)}: "):
        VOCSegmentation(voc, "val")[0]
