"""The paper's mechanism figures for a trained DifNet (Figs. 2-4 and Table 3) as matplotlib PNGs.

Figures are built on `matplotlib.figure.Figure` with the Agg canvas and no pyplot state, so
they draw headless and never open a window. Maps computed on the model's coarse grids are
drawn over the whole image with `extent`, so every panel lines up with the input pixels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from scipy.ndimage import distance_transform_edt
from scipy.ndimage import label as connected_components
from torch import Tensor

from difnet.data import IGNORE_INDEX, colorize, generic_palette
from difnet.data.transforms import normalize, resize_bilinear, resize_nearest
from difnet.devices import resolve_device
from difnet.models import DifNet, DifNetOutput
from difnet.models.heads import upsample
from difnet.models.preprocessing import Preprocessing
from difnet.predict import output_paths_free

Palette = Sequence[tuple[int, int, int]]
Pixel = tuple[int, int]

PANEL_INCHES = 2.4
DEFAULT_NUM_PIXELS = 3
FIGURE_NAMES = ("fig2_maps", "fig3_transitions", "fig4_walks", "table3_walk_parameters")


@dataclass
class Mechanism:
    """One image through DifNet: the image `uint8 [H, W, 3]`, the model's output (batch of
    one, on the CPU), the chosen pixels `(y, x)` and their transition rows `[5, n, h, w]`."""

    image: np.ndarray
    output: DifNetOutput
    pixels: list[Pixel]
    rows: Tensor


def label_map(maps: Tensor, size: tuple[int, int]) -> np.ndarray:
    """Per-pixel argmax `[H, W]` of class maps `[1, K, h, w]`, resized bilinearly as the model does."""
    logits = upsample(maps.float(), size)
    return logits[0].argmax(0).numpy()


def influence_map(scores: Tensor) -> np.ndarray:
    """The influence map `E = sum_k |x_k|` `[h, w]` of score maps `[1, K, h, w]` (Fig. 2)."""
    return scores[0].abs().sum(0).numpy()


def grid_node(pixel: Pixel, image_size: tuple[int, int], grid: tuple[int, int]) -> Pixel:
    """The `(row, col)` node of a `grid` that covers image pixel `(y, x)`."""
    (y, x), (height, width), (rows, cols) = pixel, image_size, grid
    return min(rows - 1, y * rows // height), min(cols - 1, x * cols // width)


def check_pixels(pixels: Sequence[Pixel], image_size: tuple[int, int]) -> list[Pixel]:
    """The `(y, x)` pixels as int pairs, or a `ValueError` naming the first outside the image."""
    height, width = image_size
    checked = []
    for pixel in pixels:
        if len(pixel) != 2:
            raise ValueError(f"pixels must be (y, x) pairs (got {pixel!r})")
        y, x = (int(v) for v in pixel)
        if not (0 <= y < height and 0 <= x < width):
            raise ValueError(f"pixel (y={y}, x={x}) lies outside the {height}x{width} image")
        checked.append((y, x))
    if not checked:
        raise ValueError("pixels must name at least one (y, x) pixel")
    return checked


def default_pixels(labels: np.ndarray, count: int = DEFAULT_NUM_PIXELS) -> list[Pixel]:
    """One pixel in each of the `count` largest connected regions of `labels` `[H, W]` (255 =
    ignore): the one farthest from the region's boundary, where its transition rows are telling."""
    components = {}
    regions = []  # (size, class, component id)
    for cls in np.unique(labels[labels != IGNORE_INDEX]):
        components[cls], _ = connected_components(labels == cls)
        sizes = np.bincount(components[cls].ravel())
        regions += [(int(size), cls, i) for i, size in enumerate(sizes) if i > 0]
    pixels = []
    for _, cls, i in sorted(regions, key=lambda region: -region[0])[:count]:
        distance = distance_transform_edt(np.pad(components[cls] == i, 1))[1:-1, 1:-1]
        y, x = np.unravel_index(int(distance.argmax()), labels.shape)
        pixels.append((int(y), int(x)))
    return pixels


@torch.no_grad()
def inspect(
    model: DifNet,
    image: np.ndarray,
    pixels: Sequence[Pixel] | None = None,
    *,
    label: np.ndarray | None = None,
    device: str = "cpu",
    normalization: Mapping[str, Sequence[float]] | None = None,
) -> Mechanism:
    """Run DifNet on one `uint8 [H, W, 3]` image and take the transition rows of `pixels`
    (`(y, x)` in image coordinates; by default one per large region of `label`, or of the
    prediction when no label is given), normalised by `normalization` (ImageNet's by default)."""
    if not isinstance(model, DifNet):
        raise TypeError(f"the mechanism figures need a DifNet model (got {type(model).__name__})")
    device = resolve_device(device)
    model.eval().to(device)
    batch = normalize(image, **(normalization or {}))[None].to(device)
    model.check_images(batch)
    levels = model.similarity_branch(batch)  # once, for the outputs and the transition rows
    output = model.diffuse(model.seed_branch(batch), levels)
    output = DifNetOutput(
        logits=output.logits.cpu(),
        scores=output.scores.cpu(),
        importance=output.importance.cpu(),
        seed=output.seed.cpu(),
        walks=[y.cpu() for y in output.walks],
        mu=output.mu.cpu(),
        beta=output.beta.cpu(),
    )
    size = image.shape[:2]
    if pixels is None:
        pixels = default_pixels(output.logits[0].argmax(0).numpy() if label is None else label)
    pixels = check_pixels(pixels, size)
    grid = tuple(output.walks[-1].shape[-2:])
    nodes = [grid_node(p, size, grid) for p in pixels]
    rows = model.transition_maps(batch, nodes, levels=levels)[0].cpu()
    return Mechanism(image=image, output=output, pixels=pixels, rows=rows)


def _panel(ax: Axes, title: str) -> None:
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()


def draw_image(ax: Axes, image: np.ndarray, title: str = "image") -> None:
    """An RGB image panel."""
    ax.imshow(image)
    _panel(ax, title)


def draw_labels(ax: Axes, labels: np.ndarray, palette: Palette, title: str) -> None:
    """A class-label panel `[H, W]` coloured by `palette` (ignored pixels white)."""
    ax.imshow(colorize(labels, palette), interpolation="nearest")
    _panel(ax, title)


def draw_heat(
    ax: Axes,
    values: np.ndarray,
    image_size: tuple[int, int],
    title: str,
    *,
    background: np.ndarray | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
) -> None:
    """A heat map of grid `values` `[h, w]` stretched over the image (optionally drawn over a
    grey `background` image), with its colour bar."""
    height, width = image_size
    extent = (-0.5, width - 0.5, height - 0.5, -0.5)
    if background is not None:
        ax.imshow(background.mean(axis=2), cmap="gray", extent=extent)
    heat = ax.imshow(
        values,
        cmap="jet",
        extent=extent,
        vmin=vmin,
        vmax=vmax,
        alpha=0.6 if background is not None else 1.0,
        interpolation="nearest",
    )
    ax.figure.colorbar(heat, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=7)
    _panel(ax, title)


def add_class_legend(
    figure: Figure, labels: Sequence[np.ndarray], palette: Palette, class_names: Sequence[str] | None
) -> None:
    """A legend under the figure for the classes that appear in any of `labels`."""
    present = np.unique(np.concatenate([np.unique(lab) for lab in labels]))
    present = [int(c) for c in present if c < len(palette)]
    names = class_names or [f"class {c}" for c in range(len(palette))]
    handles = [Patch(color=np.asarray(palette[c]) / 255, label=names[c]) for c in present]
    figure.legend(handles=handles, loc="lower center", ncol=min(len(handles), 8), fontsize=8)


def new_figure(rows: int, cols: int, *, legend: bool = False) -> tuple[Figure, np.ndarray]:
    """An Agg-backed figure with a `rows x cols` grid of axes (room at the bottom for a legend)."""
    figure = Figure(figsize=(cols * PANEL_INCHES, rows * PANEL_INCHES + (0.5 if legend else 0)))
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, cols, squeeze=False)
    figure.subplots_adjust(bottom=0.12 if legend else 0.02, top=0.9, wspace=0.25, hspace=0.3)
    return figure, axes


def maps_figure(
    mechanism: Mechanism,
    palette: Palette,
    *,
    label: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
) -> Figure:
    """Fig. 2: image, ground truth (if given), score-map argmax, influence map `E = sum_k |x_k|`
    and importance map `M`."""
    out, size = mechanism.output, mechanism.image.shape[:2]
    scores = label_map(out.scores, size)
    figure, axes = new_figure(1, 4 + (label is not None), legend=True)
    panels = iter(axes[0])
    draw_image(next(panels), mechanism.image)
    if label is not None:
        draw_labels(next(panels), label, palette, "ground truth")
    draw_labels(next(panels), scores, palette, "score map argmax")
    draw_heat(next(panels), influence_map(out.scores), size, "influence E = sum |x_k|")
    draw_heat(next(panels), out.importance[0, 0].numpy(), size, "importance M", vmin=0, vmax=1)
    add_class_legend(figure, [scores] if label is None else [label, scores], palette, class_names)
    figure.suptitle("Score, influence and importance maps (cf. Fig. 2)", fontsize=10)
    return figure


def transitions_figure(mechanism: Mechanism) -> Figure:
    """Fig. 3: for each chosen pixel (a row), the rows of `P_1..P_5` as heat maps over the image."""
    size = mechanism.image.shape[:2]
    levels = mechanism.rows.shape[0]
    figure, axes = new_figure(len(mechanism.pixels), levels + 1)
    for i, (y, x) in enumerate(mechanism.pixels):
        draw_image(axes[i, 0], mechanism.image, f"pixel (y={y}, x={x})")
        axes[i, 0].plot([x], [y], marker="+", color="red", markersize=12, markeredgewidth=2)
        for t in range(levels):
            row = mechanism.rows[t, i].numpy()
            draw_heat(axes[i, t + 1], row, size, f"P_{t + 1} row", background=mechanism.image, vmin=0)
    figure.suptitle("Transition-matrix rows of chosen pixels (cf. Fig. 3)", fontsize=10)
    return figure


def walks_figure(
    mechanism: Mechanism, palette: Palette, *, class_names: Sequence[str] | None = None
) -> Figure:
    """Fig. 4: the argmax of the seed `s = M x` and of the output after each walk `y_1..y_5`."""
    out, size = mechanism.output, mechanism.image.shape[:2]
    maps = [label_map(m, size) for m in (out.seed, *out.walks)]
    titles = ["seed s", *(f"after walk {t}" for t in range(1, len(out.walks) + 1))]
    figure, axes = new_figure(1, len(maps) + 1, legend=True)
    draw_image(axes[0, 0], mechanism.image)
    for ax, labels, title in zip(axes[0, 1:], maps, titles):
        draw_labels(ax, labels, palette, title)
    add_class_legend(figure, maps, palette, class_names)
    figure.suptitle("The seed and the output of each random walk (cf. Fig. 4)", fontsize=10)
    return figure


def format_walk_parameters(parameters: dict[str, Sequence[float]]) -> str:
    """The learned `mu_t`, `beta_t` as a markdown table, one column per walk (Table 3)."""
    walks = range(1, len(parameters["mu"]) + 1)
    lines = ["| | " + " | ".join(f"walk {t}" for t in walks) + " |", "|---" * (len(walks) + 1) + "|"]
    for name in ("mu", "beta"):
        lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in parameters[name]) + " |")
    return "\n".join(lines)


def walk_parameters_figure(parameters: dict[str, Sequence[float]]) -> Figure:
    """Table 3: the learned `mu_t`, `beta_t` drawn as a small table."""
    walks = len(parameters["mu"])
    figure = Figure(figsize=(1.0 + 0.9 * walks, 1.3))
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    ax.set_axis_off()
    cells = [[f"{v:.3f}" for v in parameters[name]] for name in ("mu", "beta")]
    table = ax.table(
        cellText=cells,
        rowLabels=["mu", "beta"],
        colLabels=[f"walk {t}" for t in range(1, walks + 1)],
        loc="center",
    )
    table.scale(1, 1.4)
    ax.set_title("Learned walk weights (cf. Table 3)", fontsize=10)
    return figure


def write_mechanism_figures(
    model: DifNet,
    image: np.ndarray,
    output_dir: str | Path,
    *,
    label: np.ndarray | None = None,
    palette: Palette | None = None,
    class_names: Sequence[str] | None = None,
    pixels: Sequence[Pixel] | None = None,
    overwrite: bool = False,
    device: str = "cpu",
    preprocessing: Preprocessing | None = None,
) -> dict[str, Path]:
    """Draw Figs. 2-4 and Table 3 for one image into `output_dir`; returns `{name: PNG path}`.

    `label` is the ground truth `[H, W]` (255 = ignore); `pixels` the `(y, x)` pixels of Fig. 3.
    The image (and label) are first prepared as `preprocessing` says (default: the model's own):
    resized to its `image_size`, where `pixels` then lie, and normalised. Existing files are
    refused unless `overwrite`.
    """
    if label is not None and label.shape != image.shape[:2]:
        raise ValueError(f"label shape {label.shape} does not match the image size {image.shape[:2]}")
    preprocessing = preprocessing or model.preprocessing
    if preprocessing.image_size is not None:
        image = resize_bilinear(image, preprocessing.image_size)
        label = resize_nearest(label, preprocessing.image_size) if label is not None else None
    output_dir = Path(output_dir)
    paths = {name: output_dir / f"{name}.png" for name in FIGURE_NAMES}
    output_paths_free(paths.values(), overwrite=overwrite)
    mechanism = inspect(
        model, image, pixels, label=label, device=device, normalization=preprocessing.normalization()
    )
    palette = palette or generic_palette(model.num_classes)
    figures = {
        "fig2_maps": maps_figure(mechanism, palette, label=label, class_names=class_names),
        "fig3_transitions": transitions_figure(mechanism),
        "fig4_walks": walks_figure(mechanism, palette, class_names=class_names),
        "table3_walk_parameters": walk_parameters_figure(model.walk_scalars()),
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    for name, figure in figures.items():
        figure.savefig(paths[name], dpi=110, bbox_inches="tight")
    return paths
