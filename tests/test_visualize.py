"""`difnet.visualize`: the mechanism figures are written, and their pixel choices and maps are right."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from difnet.models import DifNet, SimDeepLab
from difnet.visualize import (
    FIGURE_NAMES,
    check_pixels,
    default_pixels,
    format_walk_parameters,
    grid_node,
    influence_map,
    inspect,
    write_mechanism_figures,
)

NUM_CLASSES = 3


@pytest.fixture(scope="module")
def model() -> DifNet:
    torch.manual_seed(0)
    return DifNet(depth=18, num_classes=NUM_CLASSES).eval()


def scene(height: int = 48, width: int = 64) -> tuple[np.ndarray, np.ndarray]:
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    label = np.zeros((height, width), dtype=np.int64)
    label[10:30, 12:40] = 1
    label[:, 56:] = 2
    label[0] = 255
    return image, label


def test_writes_the_four_figures_as_pngs(model, tmp_path):
    image, label = scene()
    paths = write_mechanism_figures(
        model,
        image,
        tmp_path / "figs",
        label=label,
        class_names=["bg", "box", "band"],
        pixels=[(5, 5), (20, 30)],
    )
    assert list(paths) == list(FIGURE_NAMES)
    for path in paths.values():
        with Image.open(path) as png:
            assert png.format == "PNG" and png.width > 200 and png.height > 50
            assert np.asarray(png.convert("L")).std() > 5  # something was drawn
    with pytest.raises(FileExistsError, match="fig2_maps.png"):
        write_mechanism_figures(model, image, tmp_path / "figs")
    write_mechanism_figures(model, image, tmp_path / "figs", overwrite=True)


def test_inspect_takes_the_rows_of_the_chosen_pixels(model):
    image, _ = scene()
    mechanism = inspect(model, image, [(0, 0), (47, 63)])
    grid = mechanism.output.walks[-1].shape[-2:]
    assert mechanism.rows.shape == (5, 2, *grid)
    torch.testing.assert_close(mechanism.rows.sum(dim=(-2, -1)), torch.ones(5, 2))


def test_influence_map_sums_absolute_scores():
    scores = torch.tensor([[[[1.0, -2.0]], [[-3.0, 0.5]]]])
    np.testing.assert_allclose(influence_map(scores), [[4.0, 2.5]])


def test_default_pixels_pick_the_interior_of_the_largest_regions():
    _, label = scene()
    pixels = default_pixels(label, count=3)
    assert [label[p] for p in pixels] == [0, 1, 2]  # background is the largest region, then the box
    y, x = pixels[1]
    assert 15 <= y <= 25 and 20 <= x <= 32  # well inside the box, away from its edges


@given(st.integers(1, 40), st.integers(1, 40), st.integers(1, 12), st.integers(1, 12), st.data())
def test_grid_node_lies_on_the_grid_under_the_pixel(height, width, rows, cols, data):
    y, x = data.draw(st.integers(0, height - 1)), data.draw(st.integers(0, width - 1))
    row, col = grid_node((y, x), (height, width), (rows, cols))
    assert 0 <= row < rows and 0 <= col < cols
    assert row * height <= y * rows < (row + 1) * height


def test_bad_pixels_and_models_are_refused(model):
    with pytest.raises(ValueError, match=r"pixel \(y=48, x=0\) lies outside the 48x64 image"):
        check_pixels([(48, 0)], (48, 64))
    with pytest.raises(TypeError, match="DifNet model .*SimDeepLab"):
        inspect(SimDeepLab(depth=18, num_classes=NUM_CLASSES), scene()[0])
    image, label = scene()
    with pytest.raises(ValueError, match="label shape"):
        write_mechanism_figures(model, image, "unused", label=label[:10])


def test_walk_parameters_table_lists_every_walk():
    table = format_walk_parameters({"mu": [0.416, 0.5], "beta": [0.1, 0.9]})
    assert "| mu | 0.416 | 0.500 |" in table and "| beta | 0.100 | 0.900 |" in table
