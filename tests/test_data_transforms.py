"""Properties of the paper's augmentation (random scale, padded crop, flip) and of evaluation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from difnet.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EvalTransform,
    TrainTransform,
    denormalize,
)

sizes = st.tuples(st.integers(4, 40), st.integers(4, 40))
seeds = st.integers(0, 2**31 - 1)


def scene(size: tuple[int, int], seed: int, num_classes: int = 6) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    label = rng.integers(0, num_classes, size).astype(np.uint8)
    label[rng.random(size) < 0.1] = 255
    return image, label


def coordinate_scene(size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """An image whose red/green channels are each pixel's row/column, and a label that is a
    function of the same position: after any crop and flip they must still agree."""
    rows, cols = np.mgrid[0 : size[0], 0 : size[1]]
    image = np.stack([rows + 1, cols + 1, np.zeros_like(rows)], axis=-1).astype(np.uint8)
    return image, ((rows * 7 + cols) % 200).astype(np.uint8)


@given(
    size=sizes,
    crop=st.one_of(st.integers(1, 48), st.tuples(st.integers(1, 48), st.integers(1, 48))),
    scale=st.tuples(st.floats(0.25, 2.0), st.floats(0.0, 1.0)),
    seed=seeds,
)
def test_output_has_the_crop_size_and_only_input_labels_or_ignore(size, crop, scale, seed):
    image, label = scene(size, seed)
    transform = TrainTransform(crop_size=crop, scale_range=(scale[0], scale[0] + scale[1]))
    torch.manual_seed(seed)
    out_image, out_label = transform(image, label)
    crop_h, crop_w = (crop, crop) if isinstance(crop, int) else crop
    assert out_image.shape == (3, crop_h, crop_w) and out_image.dtype == torch.float32
    assert out_label.shape == (crop_h, crop_w) and out_label.dtype == torch.int64
    assert set(out_label.unique().tolist()) <= set(np.unique(label).tolist()) | {255}


@given(size=sizes, crop=st.tuples(st.integers(1, 48), st.integers(1, 48)), seed=seeds)
def test_crop_padding_and_flip_move_image_and_label_together(size, crop, seed):
    image, label = coordinate_scene(size)
    torch.manual_seed(seed)
    out_image, out_label = TrainTransform(crop_size=crop, scale_range=(1.0, 1.0))(image, label)
    pixels = denormalize(out_image).astype(np.int64)
    padded = out_label.numpy() == 255
    mean_colour = np.round(np.asarray(IMAGENET_MEAN) * 255)
    np.testing.assert_array_equal(pixels[padded], np.broadcast_to(mean_colour, pixels[padded].shape))
    rows, cols = pixels[~padded, 0] - 1, pixels[~padded, 1] - 1
    np.testing.assert_array_equal(out_label.numpy()[~padded], (rows * 7 + cols) % 200)
    assert padded.sum() == crop[0] * crop[1] - min(crop[0], size[0]) * min(crop[1], size[1])


def test_flip_happens_about_half_of_the_time_and_only_when_enabled():
    image, label = coordinate_scene((8, 10))
    flipped = []
    for flip in (True, False):
        torch.manual_seed(0)
        transform = TrainTransform(crop_size=(8, 10), scale_range=(1.0, 1.0), flip=flip)
        outputs = [transform(image, label)[1] for _ in range(40)]
        flipped.append(sum(bool((out[:, 0] == torch.from_numpy(label[:, -1])).all()) for out in outputs))
    assert 10 <= flipped[0] <= 30 and flipped[1] == 0


def nearest_sources(index: int, source: int, target: int) -> set[int]:
    """The source pixel(s) nearest to output pixel `index` of a `source` -> `target` resize
    (two on a tie)."""
    centre = (index + 0.5) * source / target
    return {min(int(np.floor(centre + d)), source - 1) for d in (-1e-9, 1e-9)}


@given(size=st.tuples(st.integers(4, 20), st.integers(4, 20)), scale=st.floats(0.5, 2.0), seed=seeds)
def test_scale_resizes_the_label_by_nearest_neighbour(size, scale, seed):
    image, label = scene(size, seed)
    label[label == 255] = 0
    torch.manual_seed(seed)
    transform = TrainTransform(crop_size=64, scale_range=(scale, scale), flip=False)
    _, out_label = transform(image, label)  # a crop larger than the scaled image keeps all of it
    expected = (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))
    assert int((out_label != 255).sum()) == expected[0] * expected[1]
    for i in range(expected[0]):
        for j in range(expected[1]):
            rows, cols = (
                nearest_sources(i, size[0], expected[0]),
                nearest_sources(j, size[1], expected[1]),
            )
            assert int(out_label[i, j]) in {int(label[r, c]) for r in rows for c in cols}


@given(size=st.tuples(st.integers(8, 15), st.integers(8, 15)), scale=st.floats(0.75, 2.0), seed=seeds)
def test_scale_keeps_image_and_label_aligned(size, scale, seed):
    rows, cols = np.mgrid[0 : size[0], 0 : size[1]]
    image = np.stack([rows * 10, cols * 10, np.zeros_like(rows)], axis=-1).astype(np.uint8)
    label = rows * 16 + cols  # position codes below 255
    torch.manual_seed(seed)
    transform = TrainTransform(crop_size=40, scale_range=(scale, scale), flip=seed % 2 == 0)
    out_image, out_label = transform(image, label)
    pixels, codes = denormalize(out_image).astype(float) / 10, out_label.numpy()
    inside = np.zeros_like(codes, dtype=bool)
    inside[2:-2, 2:-2] = True  # bilinear filters are exact on ramps away from the border
    inside &= (codes != 255) & np.roll(codes != 255, 2, 0) & np.roll(codes != 255, -2, 0)
    inside &= np.roll(codes != 255, 2, 1) & np.roll(codes != 255, -2, 1)
    assert np.abs(pixels[inside, 0] - codes[inside] // 16).max(initial=0) <= 1
    assert np.abs(pixels[inside, 1] - codes[inside] % 16).max(initial=0) <= 1


def test_augmentation_is_reproducible_from_torch_seed():
    image, label = scene((30, 40), 1)
    transform = TrainTransform(crop_size=24)
    runs = []
    for _ in range(2):
        torch.manual_seed(123)
        runs.append([transform(image, label) for _ in range(5)])
    for (a_image, a_label), (b_image, b_label) in zip(*runs, strict=True):
        assert torch.equal(a_image, b_image) and torch.equal(a_label, b_label)
    assert not all(torch.equal(runs[0][0][1], other[1]) for other in runs[0][1:])


def test_eval_transform_normalises_the_whole_image():
    image, label = scene((7, 9), 2)
    out_image, out_label = EvalTransform()(image, label)
    expected = (image / 255.0 - np.asarray(IMAGENET_MEAN)) / np.asarray(IMAGENET_STD)
    np.testing.assert_allclose(out_image.permute(1, 2, 0).numpy(), expected, atol=1e-6)
    assert out_label.dtype == torch.int64 and torch.equal(out_label, torch.from_numpy(label).long())
    np.testing.assert_array_equal(denormalize(out_image), image)


def test_transforms_accept_pil_images_and_masks():
    image, label = scene((12, 16), 3)
    from_arrays = EvalTransform()(image, label)
    from_pil = EvalTransform()(Image.fromarray(image), Image.fromarray(label))
    assert all(torch.equal(a, b) for a, b in zip(from_arrays, from_pil, strict=True))
    grey = EvalTransform()(Image.fromarray(image[..., 0]), label)[0]
    np.testing.assert_array_equal(denormalize(grey), np.repeat(image[..., :1], 3, axis=2))


def test_custom_mean_and_std():
    image, label = scene((5, 5), 4)
    out, _ = EvalTransform(mean=(0.5, 0.5, 0.5), std=[0.5, 0.5, 0.5])(image, label)
    np.testing.assert_allclose(out.permute(1, 2, 0).numpy(), image / 127.5 - 1, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, problem",
    [
        ({"crop_size": 0}, r"crop_size must be a positive int .* \(got 0\)"),
        ({"crop_size": (32, 32, 3)}, "crop_size must be"),
        ({"crop_size": 32.5}, "crop_size must be"),
        ({"scale_range": (0.0, 1.0)}, r"0 < low <= high \(got \(0\.0, 1\.0\)\)"),
        ({"scale_range": (1.5, 0.5)}, "0 < low <= high"),
        ({"scale_range": 1.0}, "scale_range must be"),
        ({"mean": (0.5, 0.5)}, r"mean and std need one value per channel each"),
        ({"mean": (), "std": ()}, "mean must hold one value per image channel"),
        ({"std": (0.2, 0.0, 0.2)}, "std must be positive"),
    ],
)
def test_bad_transform_arguments_are_refused(kwargs, problem):
    with pytest.raises(ValueError, match=problem):
        TrainTransform(**kwargs)


@pytest.mark.parametrize("transform", [EvalTransform(), TrainTransform(crop_size=8)])
def test_bad_transform_inputs_are_refused(transform):
    image, label = scene((10, 12), 5)
    with pytest.raises(TypeError, match=r"uint8 \[H, W, 3\] array \(got float64 \(10, 12, 3\)\)"):
        transform(image.astype(np.float64), label)
    with pytest.raises(TypeError, match=r"label must be an integer \[H, W\] array .*float32"):
        transform(image, label.astype(np.float32))
    with pytest.raises(ValueError, match=r"image is 10x12 \(HxW\) but its label is 10x11"):
        transform(image, label[:, :11])


def test_denormalize_refuses_batches():
    with pytest.raises(ValueError, match=r"\[3, H, W\] tensor \(got \(1, 3, 4, 4\)\)"):
        denormalize(torch.zeros(1, 3, 4, 4))
