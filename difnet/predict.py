"""Inference on image files: class-label masks written as palette PNGs, plus optional overlays.

Any image size works: the model runs on the whole image (optionally multi-scale and flipped,
as in evaluation) and its logits are resized to the image before the argmax.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from difnet.data import colorize, palette_image
from difnet.data.base import IMAGE_SUFFIXES, conversion_note, decode_image
from difnet.data.transforms import normalize
from difnet.devices import resolve_device
from difnet.evaluation import SlidingWindow, predict_probabilities
from difnet.progress import progress_bar

Palette = Sequence[tuple[int, int, int]]

OVERLAY_ALPHA = 0.5


@dataclass(frozen=True)
class Failure:
    """An input image that could not be read or predicted, and why."""

    path: Path
    reason: str


def find_images(*paths: str | Path) -> list[Path]:
    """The image files named by `paths`, in order: each file itself, or a directory's images
    (sorted)."""
    return [image for path in paths for image in _images_of(Path(path))]


def _images_of(path: Path) -> list[Path]:
    """`[path]` for a file; a directory's image files, sorted."""
    if path.is_file():
        return [path]
    if not path.exists():
        raise FileNotFoundError(f"input {path} does not exist")
    images = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise FileNotFoundError(
            f"input directory {path} holds no images (looked for {', '.join(IMAGE_SUFFIXES)})"
        )
    return images


@torch.no_grad()
def predict_labels(
    model: nn.Module,
    image: np.ndarray,
    *,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    device: str | torch.device = "cpu",
    window: SlidingWindow | None = None,
    max_size: int | None = None,
    normalization: Mapping[str, Sequence[float]] | None = None,
    input_size: Sequence[int] | None = None,
) -> np.ndarray:
    """The predicted class of every pixel of a `uint8 [H, W, C]` image, as `uint8 [H, W]`
    (`window`, `max_size`, `input_size`: see `difnet.evaluation.predict_probabilities`;
    `normalization`: `{"mean": [...], "std": [...]}` per channel as in training, ImageNet's by
    default; a loaded model's `preprocessing` gives both as training used them)."""
    batch = normalize(image, **(normalization or {}))[None].to(device)
    probabilities = predict_probabilities(
        model, batch, scales, flip, window=window, max_size=max_size, input_size=input_size
    )
    return probabilities[0].argmax(0).to(torch.uint8).cpu().numpy()


def blend(
    image: np.ndarray, labels: np.ndarray, palette: Palette, alpha: float = OVERLAY_ALPHA
) -> np.ndarray:
    """The image with its labels' colours laid over it at opacity `alpha`, `uint8 [H, W, 3]`."""
    mixed = (1 - alpha) * image.astype(np.float32) + alpha * colorize(labels, palette).astype(np.float32)
    return mixed.round().astype(np.uint8)


def output_paths_free(paths: Iterable[Path], *, overwrite: bool) -> None:
    """Raise `FileExistsError` naming the existing `paths`, unless `overwrite` is set."""
    existing = [str(p) for p in paths if p.exists()]
    if existing and not overwrite:
        shown = ", ".join(existing[:3]) + (f" and {len(existing) - 3} more" if len(existing) > 3 else "")
        raise FileExistsError(f"refusing to overwrite {shown} (pass --overwrite to replace)")


def mask_paths(images: Sequence[Path], output_dir: Path, *, overlay: bool) -> list[tuple[Path, Path | None]]:
    """`(mask, overlay or None)` output paths of each input image, named after its stem."""
    paths, owners = [], {}
    for source in images:
        pair = (
            output_dir / f"{source.stem}.png",
            output_dir / f"{source.stem}_overlay.png" if overlay else None,
        )
        for target in filter(None, pair):
            if target in owners:
                raise ValueError(f"inputs {owners[target]} and {source} would both write {target}")
            owners[target] = source
        paths.append(pair)
    return paths


def predict_files(
    model: nn.Module,
    images: Sequence[Path],
    output_dir: str | Path,
    palette: Palette,
    *,
    overlay: bool = False,
    overwrite: bool = False,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    device: str | torch.device = "cpu",
    progress: bool = True,
    window: SlidingWindow | None = None,
    max_size: int | None = None,
    normalization: Mapping[str, Sequence[float]] | None = None,
    input_size: Sequence[int] | None = None,
    failures: list[Failure] | None = None,
) -> list[Path]:
    """Predict each image file and write `<stem>.png` palette masks (and `<stem>_overlay.png`
    when `overlay`) into `output_dir`; returns the written paths.

    All output paths are checked before any work, so a refused run writes nothing. An image
    that cannot be read or predicted raises a `ValueError`, or, when a `failures` list is
    given, is recorded there and skipped so that the other images are still predicted.
    """
    output_dir = Path(output_dir)
    paths = mask_paths(images, output_dir, overlay=overlay)
    output_paths_free([q for pair in paths for q in pair if q is not None], overwrite=overwrite)
    output_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(device)
    model.eval().to(device)
    written, channels, converted = [], getattr(model, "in_channels", 3), None
    for source, (mask_path, overlay_path) in zip(
        progress_bar(images, enabled=progress, desc="predict", unit="image"), paths
    ):
        try:
            image, mode = decode_image(source, channels)
            labels = predict_labels(model, image, scales=scales, flip=flip, device=device,
                                    window=window, max_size=max_size, normalization=normalization,
                                    input_size=input_size)  # fmt: skip
        except ValueError as error:
            if failures is None:
                raise ValueError(f"cannot predict {source}: {error}") from error
            failures.append(Failure(source, str(error)))
            continue
        converted = converted or conversion_note(mode, channels, source)
        palette_image(labels, palette).save(mask_path)
        written.append(mask_path)
        if overlay_path is not None:
            picture = image[..., :3] if image.shape[2] >= 3 else image.repeat(3, axis=2)  # RGB(-NIR), grey
            Image.fromarray(blend(picture, labels, palette)).save(overlay_path)
            written.append(overlay_path)
    if converted is not None:
        warnings.warn(f"{converted} (the first such input; others may be alike)", stacklevel=2)
    return written
