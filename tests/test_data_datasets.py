"""Every dataset reads its real on-disk layout (written small by `data_fixtures`, and the real
CamVid files when present) into normalised images and class-id labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from data_fixtures import (
    CAMVID_FOREIGN_ROOT,
    write_ade20k_fixture,
    write_camvid_fixture,
    write_context_fixture,
    write_folder_fixture,
    write_list,
    write_voc_fixture,
)
from PIL import Image

from difnet.data import (
    CAMVID_CLASSES,
    CONTEXT_CLASSES,
    VOC_CLASSES,
    VOC_PALETTE,
    CamVid,
    EvalTransform,
    FolderDataset,
    PascalContext,
    SyntheticShapes,
    TrainTransform,
    VOCSegmentation,
    build_dataset,
    colorize,
    denormalize,
    generic_palette,
    palette_image,
)


def file_pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def file_values(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def check_item(dataset, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Item `index` has the contract's types and shapes and matches its files."""
    image, label = dataset[index]
    sample = dataset.samples[index]
    height, width = file_values(sample.mask).shape[:2]
    assert image.dtype == torch.float32 and image.shape == (3, height, width)
    assert label.dtype == torch.int64 and label.shape == (height, width)
    np.testing.assert_array_equal(denormalize(image), file_pixels(sample.image))
    values = set(label.unique().tolist())
    assert values <= set(range(dataset.num_classes)) | {255}
    return image, label


def check_metadata(dataset, class_names) -> None:
    assert dataset.num_classes == len(class_names) == len(dataset.palette)
    assert dataset.class_names == list(class_names)
    assert dataset.ignore_index == 255
    assert all(len(colour) == 3 for colour in dataset.palette)


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory):
    return write_voc_fixture(tmp_path_factory.mktemp("voc"))


@pytest.mark.parametrize("split, count", [("train", 3), ("val", 2), ("trainval", 5), ("train_aug", 5)])
def test_voc_splits_read_their_lists_and_masks(voc_root, split, count):
    dataset = VOCSegmentation(voc_root, split)
    assert len(dataset) == count
    check_metadata(dataset, VOC_CLASSES)
    folder = "SegmentationClassAug" if split == "train_aug" else "SegmentationClass"
    assert all(s.mask.parent.name == folder for s in dataset.samples)
    for index in range(count):
        _, label = check_item(dataset, index)
        np.testing.assert_array_equal(label.numpy(), file_values(dataset.samples[index].mask))


def test_voc_palette_masks_are_read_as_class_ids_not_colours(voc_root):
    dataset = VOCSegmentation(voc_root, "train")
    mask = dataset.samples[0].mask
    with Image.open(mask) as image:
        assert image.mode == "P"
    _, label = dataset[0]
    ids = set(label.unique().tolist())
    assert 255 in ids and len(ids - {0, 255}) >= 1
    # The same pixels through the palette are colours, which would not be class ids.
    assert not np.array_equal(file_pixels(mask)[..., 0], label.numpy())


def test_voc_train_aug_matches_voc_masks_where_both_exist(voc_root):
    voc, aug = VOCSegmentation(voc_root, "train"), VOCSegmentation(voc_root, "train_aug")
    for index in range(len(voc)):
        assert voc.samples[index].image == aug.samples[index].image
        assert torch.equal(voc[index][1], aug[index][1])


def test_voc_root_may_be_the_devkit_or_its_parent(voc_root):
    for root in (voc_root, voc_root.parent, voc_root.parent.parent):
        assert VOCSegmentation(root, "val").root == voc_root


def test_voc_accepts_deeplab_style_train_aug_list(tmp_path):
    root = write_voc_fixture(tmp_path, n_train=2, n_val=1, n_aug_only=1)
    ids = ["2007_000000", "2007_000001", "2007_000003"]
    lines = [f"/JPEGImages/{i}.jpg /SegmentationClassAug/{i}.png" for i in ids]
    write_list(root / "ImageSets" / "Segmentation" / "train_aug.txt", lines)
    dataset = VOCSegmentation(root, "train_aug")
    assert [s.image.stem for s in dataset.samples] == ids


@pytest.mark.parametrize("split, count", [("train", 3), ("val", 2)])
def test_pascal_context_reads_60_class_label_pngs(tmp_path, split, count):
    root = write_context_fixture(tmp_path)
    dataset = PascalContext(root.parent.parent, split)
    assert dataset.root == root and len(dataset) == count
    check_metadata(dataset, CONTEXT_CLASSES)
    assert dataset.num_classes == 60 and dataset.class_names[0] == "background"
    for index in range(count):
        _, label = check_item(dataset, index)
        np.testing.assert_array_equal(label.numpy(), file_values(dataset.samples[index].mask))


@pytest.fixture(scope="module")
def camvid_fixture(tmp_path_factory):
    return write_camvid_fixture(tmp_path_factory.mktemp("camvid"))


@pytest.mark.parametrize("split, count", [("train", 3), ("val", 2), ("test", 2), ("trainval", 5)])
def test_camvid_resolves_foreign_list_paths_under_root(camvid_fixture, split, count):
    dataset = CamVid(camvid_fixture, split)
    assert len(dataset) == count
    check_metadata(dataset, CAMVID_CLASSES)
    list_text = (camvid_fixture / "train.txt").read_text()
    assert CAMVID_FOREIGN_ROOT in list_text and str(camvid_fixture) not in list_text
    for index, sample in enumerate(dataset.samples):
        assert sample.image.is_relative_to(camvid_fixture)
        assert sample.mask.parent.name == sample.image.parent.name + "annot"
        _, label = check_item(dataset, index)
        raw = file_values(sample.mask)
        expected = np.where(raw == 11, 255, raw)
        np.testing.assert_array_equal(label.numpy(), expected)
        assert (label[0] == 255).all()  # the fixture's unlabelled row


def test_camvid_accepts_windows_style_list_paths(tmp_path):
    root = write_camvid_fixture(tmp_path, n_train=1, n_val=0, n_test=0)
    name = "0001TP_000000.png"
    write_list(root / "train.txt", [rf"C:\SegNet\CamVid\train\{name} C:\SegNet\CamVid\trainannot\{name}"])
    assert CamVid(root, "train").samples[0].image == root / "train" / name


def test_camvid_root_may_hold_only_the_split_in_use(tmp_path):
    root = write_camvid_fixture(tmp_path, n_train=0, n_val=0, n_test=2)
    dataset = CamVid(root, "test")
    assert len(dataset) == 2 and dataset.root == root
    with pytest.raises(FileNotFoundError, match=r"split file .*train\.txt not found"):
        CamVid(root, "train")


def test_folder_dataset_pairs_images_and_masks_by_stem(tmp_path):
    images, masks = write_folder_fixture(tmp_path, n=3, num_classes=4)
    (images / "notes.txt").write_text("not an image")
    dataset = FolderDataset(images, masks, num_classes=4)
    assert len(dataset) == 3
    check_metadata(dataset, [f"class {c}" for c in range(4)])
    assert {s.image.suffix for s in dataset.samples} == {".jpg", ".png"}
    for index, sample in enumerate(dataset.samples):
        assert sample.image.stem == sample.mask.stem
        _, label = check_item(dataset, index)
        np.testing.assert_array_equal(label.numpy(), file_values(sample.mask))


def test_folder_dataset_takes_class_names_and_palette(tmp_path):
    images, masks = write_folder_fixture(tmp_path, n=1, num_classes=2)
    dataset = FolderDataset(images, masks, 2, class_names=["sea", "land"], palette=[(0, 0, 255), (0, 255, 0)])
    assert dataset.class_names == ["sea", "land"] and dataset.palette == [(0, 0, 255), (0, 255, 0)]


def test_transforms_apply_to_file_datasets(voc_root):
    torch.manual_seed(0)
    dataset = VOCSegmentation(voc_root, "train", TrainTransform(crop_size=(24, 30)))
    image, label = dataset[1]
    assert image.shape == (3, 24, 30) and label.shape == (24, 30)
    image, label = dataset[-1]  # negative indices count from the end
    assert image.shape == (3, 24, 30)


def test_load_gives_raw_arrays_before_the_transform(camvid_fixture):
    dataset = CamVid(camvid_fixture, "val")
    image, label = dataset.load(0)
    assert image.dtype == np.uint8 and image.shape == (36, 48, 3)
    assert label.dtype == np.uint8 and label.shape == (36, 48)
    assert torch.equal(dataset[0][1], torch.from_numpy(label).long())


def test_build_dataset_builds_every_dataset(tmp_path, voc_root, camvid_fixture):
    context = write_context_fixture(tmp_path / "context")
    write_folder_fixture(tmp_path / "folder" / "val", n=2, num_classes=3)
    transform = EvalTransform()
    built = {
        "voc": build_dataset("voc", voc_root, "train_aug", transform),
        "context": build_dataset("context", context, "val", transform),
        "camvid": build_dataset("camvid", camvid_fixture, "train", transform),
        "folder": build_dataset("folder", tmp_path / "folder", "val", transform, num_classes=3),
        "synthetic": build_dataset("synthetic", None, "val", transform, num_images=3, size=32),
    }
    expected = {
        "voc": (VOCSegmentation, 5, 21),
        "context": (PascalContext, 2, 60),
        "camvid": (CamVid, 3, 11),
        "folder": (FolderDataset, 2, 3),
        "synthetic": (SyntheticShapes, 3, 5),
    }
    for name, dataset in built.items():
        kind, length, classes = expected[name]
        assert isinstance(dataset, kind) and len(dataset) == length
        assert dataset.num_classes == classes and dataset.transform is transform


def test_build_dataset_synthetic_splits_use_offset_seeds():
    train = build_dataset("synthetic", None, "train", num_images=2, size=32, seed=5)
    val = build_dataset("synthetic", None, "val", num_images=2, size=32, seed=5)
    assert (train.seed, val.seed) == (5, 6)
    assert len(build_dataset("synthetic", None, "train")) == 400
    np.testing.assert_array_equal(val.load(1)[0], SyntheticShapes(2, 32, seed=6).load(1)[0])


def test_colorize_and_palette_image_colour_class_ids():
    labels = np.array([[0, 1, 2], [20, 255, 15]], dtype=np.int64)
    rgb = colorize(labels, VOC_PALETTE)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 3, 3)
    assert [tuple(c) for c in rgb[0]] == VOC_PALETTE[:3]
    assert tuple(rgb[1, 0]) == VOC_PALETTE[20] and tuple(rgb[1, 1]) == (255, 255, 255)
    image = palette_image(labels, VOC_PALETTE)
    assert image.mode == "P"
    np.testing.assert_array_equal(np.asarray(image), labels)
    np.testing.assert_array_equal(np.asarray(image.convert("RGB")), rgb)


def test_palettes_have_distinct_colours():
    assert VOC_PALETTE[:4] == [(0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0)]
    for n in (2, 21, 60, 255):
        assert len(set(generic_palette(n))) == n
    assert generic_palette(60)[:21] == VOC_PALETTE


def test_colorize_refuses_ids_outside_the_palette():
    with pytest.raises(ValueError, match=r"values \[3, 7\] outside the palette's 3 classes"):
        colorize(np.array([[0, 3], [7, 255]]), generic_palette(3))
    with pytest.raises(ValueError, match="integer array"):
        palette_image(np.zeros((2, 2), dtype=np.float32), generic_palette(3))


def test_real_camvid_items_are_360x480_with_ignored_unlabelled(camvid_root):
    for split, count in (("train", 367), ("val", 101)):
        dataset = CamVid(camvid_root, split)
        assert len(dataset) == count
        image, label = dataset[0]
        assert image.shape == (3, 360, 480) and label.shape == (360, 480)
        assert image.dtype == torch.float32 and label.dtype == torch.int64
        raw = file_values(dataset.samples[0].mask)
        assert set(np.unique(raw).tolist()) <= set(range(12))
        assert set(label.unique().tolist()) <= set(range(11)) | {255}
        np.testing.assert_array_equal(label.numpy() == 255, raw == 11)


def test_camvid_resize_to_half_resolution(camvid_root: Path) -> None:
    """`resize=(180, 240)` gives the half-resolution CamVid used by the experiment."""
    image, label = CamVid(camvid_root, "val", resize=(180, 240))[0]
    assert image.shape == (3, 180, 240) and label.shape == (180, 240)
    values = set(label.unique().tolist())
    assert values <= set(range(11)) | {255}


def test_resize_rejects_bad_size(camvid_root: Path) -> None:
    with pytest.raises(ValueError, match="resize must be"):
        CamVid(camvid_root, "val", resize=(0, 240))


@pytest.mark.parametrize(
    "mode, says",
    [("RGBA", "its alpha band dropped; if its 4 bands"), ("LA", "its alpha band dropped ("),
     ("CMYK", "converted from CMYK to RGB; if its 4 bands")],
)  # fmt: skip
def test_images_losing_bands_as_rgb_warn_once_per_dataset(tmp_path, mode, says):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir(), masks.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        Image.fromarray(rng.integers(0, 256, (20, 20, len(mode)), dtype=np.uint8), mode).save(
            images / f"{name}.{'jpg' if mode == 'CMYK' else 'png'}"
        )
        Image.fromarray(np.zeros((20, 20), np.uint8)).save(masks / f"{name}.png")
    dataset = FolderDataset(images, masks, num_classes=2)
    with pytest.warns(UserWarning, match=rf"image .*a\.\w+ is a mode-'{mode}' image") as caught:
        dataset[0], dataset[1]
    assert len(caught) == 1 and says in str(caught[0].message)


@pytest.mark.parametrize("dataset", ["voc", "context", "ade20k", "folder"])
def test_image_size_resizes_every_file_dataset_on_load(tmp_path, dataset):
    """`image_size` is not dropped for any dataset: each resizes its items, and the model saves it."""
    from difnet.training import TrainConfig

    writers = {"voc": write_voc_fixture, "context": write_context_fixture, "ade20k": write_ade20k_fixture,
               "folder": lambda root: write_folder_fixture(root / "train") and root}  # fmt: skip
    root = writers[dataset](tmp_path)
    config = TrainConfig(dataset=dataset, data_root=str(root), image_size=(24, 30), crop_size=24, device="cpu",
                         num_classes=4 if dataset == "folder" else None)  # fmt: skip
    image, label = config.build_dataset("train")[0]
    assert image.shape == (3, 24, 30) and label.shape == (24, 30)
    assert config.preprocessing().image_size == (24, 30)
