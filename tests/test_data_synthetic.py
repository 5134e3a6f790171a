"""SyntheticShapes: deterministic scenes in which every class appears, classes share colours in
pairs (so shape and context decide), and thin structures are thin."""

from __future__ import annotations

import colorsys

import numpy as np
import pytest
import torch

from difnet.data import SyntheticShapes, TrainTransform
from difnet.data.synthetic import class_family, class_shape


def test_same_seed_gives_identical_scenes_in_any_order():
    first, second = SyntheticShapes(6, 48, seed=3), SyntheticShapes(6, 48, seed=3)
    for index in (5, 0, 3):
        a, b = first.load(index), second.load(index)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    assert torch.equal(first[2][0], second[2][0]) and torch.equal(first[2][1], second[2][1])


def test_different_seeds_and_indices_give_different_scenes():
    scenes = [SyntheticShapes(2, 48, seed=seed).load(index) for seed in (0, 1) for index in (0, 1)]
    for i, a in enumerate(scenes):
        for b in scenes[i + 1 :]:
            assert not np.array_equal(a[0], b[0]) and not np.array_equal(a[1], b[1])


@pytest.mark.parametrize("num_classes", [2, 5, 9, 13])
def test_every_scene_holds_every_class(num_classes):
    dataset = SyntheticShapes(6, (64, 80), num_classes=num_classes, seed=1)
    for index in range(len(dataset)):
        image, label = dataset.load(index)
        assert image.shape == (64, 80, 3) and image.dtype == np.uint8
        assert label.shape == (64, 80) and label.dtype == np.uint8
        counts = np.bincount(label.ravel(), minlength=num_classes)
        assert len(counts) == num_classes and (counts > 0).all()


def test_metadata_names_shapes_and_colour_families():
    dataset = SyntheticShapes(2, 32, num_classes=5)
    assert dataset.class_names == [
        "background",
        "orange disk",
        "orange square",
        "teal line",
        "teal triangle",
    ]
    assert len(dataset.palette) == 5 and len(set(dataset.palette)) == 5
    assert dataset.ignore_index == 255 and dataset.num_classes == 5
    assert class_family(1) == class_family(2) != class_family(3)
    assert class_shape(1) != class_shape(2) and class_shape(7) == class_shape(1)


def mean_hue(images, labels, class_id: int) -> float:
    pixels = np.concatenate([image[label == class_id] for image, label in zip(images, labels)])
    r, g, b = pixels.mean(0) / 255
    return colorsys.rgb_to_hsv(r, g, b)[0]


def hue_distance(a: float, b: float) -> float:
    return min(abs(a - b), 1 - abs(a - b))


def test_class_pairs_share_a_colour_family_and_differ_across_families():
    dataset = SyntheticShapes(12, 64, num_classes=5, seed=2)
    images, labels = zip(*(dataset.load(i) for i in range(len(dataset))), strict=True)
    hues = {k: mean_hue(images, labels, k) for k in range(1, 5)}
    same_family = max(hue_distance(hues[1], hues[2]), hue_distance(hues[3], hues[4]))
    across = min(hue_distance(hues[a], hues[b]) for a in (1, 2) for b in (3, 4))
    assert same_family < 0.05
    assert across > 0.2


def interior_fraction(labels: list[np.ndarray], class_id: int) -> float:
    """Fraction of a class's pixels whose four neighbours are of the same class."""
    inside = total = 0
    for label in labels:
        mask = label == class_id
        core = mask[1:-1, 1:-1] & mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2] & mask[1:-1, 2:]
        inside, total = inside + core.sum(), total + mask.sum()
    return inside / total


def test_lines_are_thin_and_shapes_are_solid():
    dataset = SyntheticShapes(8, 64, num_classes=5, seed=4)
    labels = [dataset.load(i)[1] for i in range(len(dataset))]
    assert interior_fraction(labels, 3) < 0.3  # "teal line": 2-3 px wide
    for solid in (1, 2, 4):
        assert interior_fraction(labels, solid) > 0.5


def test_items_are_normalised_tensors_and_take_a_transform():
    image, label = SyntheticShapes(2, (40, 56))[1]
    assert image.shape == (3, 40, 56) and image.dtype == torch.float32
    assert label.shape == (40, 56) and label.dtype == torch.int64
    assert -3 < float(image.min()) < float(image.max()) < 3
    torch.manual_seed(0)
    image, label = SyntheticShapes(2, 64, transform=TrainTransform(crop_size=48))[0]
    assert image.shape == (3, 48, 48) and label.shape == (48, 48)
