"""`difnet.predict`: palette PNG masks of any image size, overlays, refusal to overwrite, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from difnet.data import colorize, generic_palette
from difnet.models import DifNet, SimDeepLab
from difnet.predict import blend, find_images, mask_paths, predict_files, predict_labels

NUM_CLASSES = 3
PALETTE = generic_palette(NUM_CLASSES)


@pytest.fixture(scope="module")
def model() -> DifNet:
    torch.manual_seed(0)
    return DifNet(depth=18, num_classes=NUM_CLASSES).eval()


def write_image(path, height: int, width: int, seed: int = 0):
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def test_masks_are_palette_pngs_of_the_input_size(model, tmp_path):
    source = write_image(tmp_path / "odd.jpg", 37, 53)
    written = predict_files(model, [source], tmp_path / "out", PALETTE, progress=False)
    assert written == [tmp_path / "out" / "odd.png"]
    with Image.open(written[0]) as mask:
        assert mask.format == "PNG" and mask.mode == "P" and mask.size == (53, 37)
        values = np.asarray(mask)
        colours = mask.getpalette()[: 3 * NUM_CLASSES]
    assert values.max() < NUM_CLASSES
    assert colours == [v for colour in PALETTE for v in colour]
    expected = predict_labels(model, np.asarray(Image.open(source).convert("RGB")))
    np.testing.assert_array_equal(values, expected)


def test_a_directory_gives_one_mask_and_overlay_per_image(tmp_path):
    torch.manual_seed(0)
    baseline = SimDeepLab(depth=18, num_classes=NUM_CLASSES)
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_image(inputs / "a.png", 40, 30, seed=1)
    write_image(inputs / "b.jpeg", 20, 70, seed=2)
    (inputs / "notes.txt").write_text("not an image")
    written = predict_files(
        baseline, find_images(inputs), tmp_path / "out", PALETTE, overlay=True, progress=False
    )
    assert sorted(p.name for p in written) == ["a.png", "a_overlay.png", "b.png", "b_overlay.png"]
    with Image.open(tmp_path / "out" / "b_overlay.png") as overlay:
        assert overlay.mode == "RGB" and overlay.size == (70, 20)


def test_flip_and_scales_reach_the_prediction(model):
    image = np.random.default_rng(3).integers(0, 256, (33, 41, 3), dtype=np.uint8)
    labels = predict_labels(model, image, scales=(0.75, 1.0), flip=True)
    assert labels.shape == (33, 41) and labels.dtype == np.uint8 and labels.max() < NUM_CLASSES


def test_existing_outputs_are_refused_unless_overwrite(model, tmp_path):
    source = write_image(tmp_path / "x.png", 24, 24)
    output = tmp_path / "out"
    output.mkdir()
    (output / "x.png").write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match="x.png.*--overwrite"):
        predict_files(model, [source], output, PALETTE, progress=False)
    assert (output / "x.png").read_bytes() == b"keep me"
    predict_files(model, [source], output, PALETTE, overwrite=True, progress=False)
    with Image.open(output / "x.png") as mask:
        assert mask.size == (24, 24)


def test_inputs_writing_the_same_file_are_refused(tmp_path):
    with pytest.raises(ValueError, match="a.jpg.*a.png.*both write"):
        mask_paths([tmp_path / "a.jpg", tmp_path / "a.png"], tmp_path / "out", overlay=False)


def test_missing_and_empty_inputs_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        find_images(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty holds no images"):
        find_images(tmp_path / "empty")


def test_unreadable_and_too_small_images_name_the_file(model, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match="broken.png"):
        predict_files(model, [broken], tmp_path / "out", PALETTE, progress=False)
    tiny = write_image(tmp_path / "tiny.png", 8, 8)
    with pytest.raises(ValueError, match="tiny.png.*16x16"):
        predict_files(model, [tiny], tmp_path / "out", PALETTE, progress=False)


@given(st.integers(1, 12), st.integers(1, 12), st.integers(0, 2**32 - 1), st.floats(0, 1))
def test_blend_interpolates_between_image_and_colours(height, width, seed, alpha):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    labels = rng.integers(0, NUM_CLASSES, (height, width))
    mixed = blend(image, labels, PALETTE, alpha).astype(int)
    colours = colorize(labels, PALETTE).astype(int)
    low, high = np.minimum(image, colours), np.maximum(image, colours)
    assert ((low <= mixed) & (mixed <= high)).all()
    if alpha == 0:
        np.testing.assert_array_equal(mixed, image)


def test_sliding_windows_cover_the_image_as_mmseg_places_them():
    from difnet.evaluation import SlidingWindow

    boxes = SlidingWindow((40, 40), (30, 30)).boxes(100, 50)
    assert boxes == [(0, 40, 0, 40), (0, 40, 10, 50), (30, 70, 0, 40), (30, 70, 10, 50),
                     (60, 100, 0, 40), (60, 100, 10, 50)]  # fmt: skip
    assert SlidingWindow((64, 64), (32, 32)).boxes(30, 20) == [(0, 30, 0, 20)]  # one clipped window
    with pytest.raises(ValueError, match=r"window must be two integers >= 16 \(got \(8, 40\)\)"):
        SlidingWindow((8, 40), (4, 4))


def test_a_stride_longer_than_the_window_is_refused():
    """Such a stride leaves pixels no window covers (they averaged 0/0 = NaN and read as class 0)."""
    from difnet.evaluation import SlidingWindow

    with pytest.raises(ValueError, match=r"stride \(50, 80\) is longer than the window \(50, 50\)"):
        SlidingWindow((50, 50), (50, 80))
    assert SlidingWindow((50, 50), (50, 50)).boxes(60, 60)  # a stride equal to the window tiles it


def test_slide_and_max_size_inference_average_windows_and_keep_the_size():
    import torch

    from difnet.evaluation import SlidingWindow, predict_probabilities
    from difnet.models import SimDeepLab

    torch.manual_seed(0)
    model = SimDeepLab(depth=18, num_classes=3).eval()
    images = torch.randn(1, 3, 70, 90)
    whole = predict_probabilities(model, images)
    one_window = predict_probabilities(model, images, window=SlidingWindow((70, 90), (70, 90)))
    torch.testing.assert_close(one_window, whole)
    slid = predict_probabilities(model, images, window=SlidingWindow((48, 48), (32, 32)))
    assert slid.shape == whole.shape
    torch.testing.assert_close(slid.sum(1), torch.ones(1, 70, 90))
    left = model(images[..., :48, :48]).softmax(1)  # the top-left pixel lies in one window only
    torch.testing.assert_close(slid[..., 0, 0], left[..., 0, 0])
    capped = predict_probabilities(model, images, max_size=45)
    assert capped.shape == whole.shape


def test_failures_are_collected_and_the_other_images_predicted(model, tmp_path):
    from difnet.predict import Failure

    good = write_image(tmp_path / "good.png", 24, 24)
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    with pytest.raises(ValueError, match=r"cannot predict .*bad\.png: cannot read image"):
        predict_files(model, [bad, good], tmp_path / "strict", PALETTE, progress=False)
    failures: list[Failure] = []
    written = predict_files(model, [bad, good], tmp_path / "out", PALETTE, progress=False, failures=failures)
    assert written == [tmp_path / "out" / "good.png"]
    assert [f.path for f in failures] == [bad] and "cannot read image" in failures[0].reason
