"""ONNX export: a trained model as a file that onnxruntime (and other ONNX runtimes) run.

The batch is always dynamic. DifNet's height and width are fixed at export: Psi's max pooling
windows depend on the input size and are written into the graph as constants, so the file
refuses other sizes (onnxruntime names the expected dimensions) rather than answering wrongly.
Sim-DeepLab can also be exported with dynamic height and width (`dynamic_size=True`).

The file is self-contained (weights inside) whenever they fit protobuf's 2 GB limit, and carries
in its `metadata_props` what a deployment needs to prepare images and read the output: the
difnet version, the model config, the input size, the training's resize policy and mean/std, the
class names and the palette. `OnnxSegmenter` runs such a file in onnxruntime with that metadata.
Needs the `[onnx]` extra (onnx, onnxscript; onnxruntime to verify and run the file).
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from difnet import __version__
from difnet.models import DifNet, Preprocessing, SegmentationModel
from difnet.models.validation import MIN_IMAGE_SIZE

EXAMPLE_BATCH = 2  # a batch of 1 would let the exporter specialise the batch dimension to 1
PROTOBUF_LIMIT = 2**31 - 2**20  # bytes an ONNX file can hold with its weights inside (2 GB, less the graph)
DEFAULT_SIZE = (321, 321)
VERIFY_TOLERANCE = 1e-3  # the largest |ONNX - eager| logit accepted, relative to max(1, largest |logit|)


class ExportMismatchError(RuntimeError):
    """The exported file's logits differ from eager PyTorch's beyond `VERIFY_TOLERANCE`."""


@dataclass(frozen=True)
class ExportResult:
    """Where the file went, its input size (None where dynamic) and, when onnxruntime is
    installed, the largest absolute difference of its logits from eager PyTorch's and the
    largest absolute logit (float32 rounding grows with it). `external_data` names the weights
    file that must travel with `path` when the weights exceed 2 GB (None: one self-contained file)."""

    path: Path
    height: int | None
    width: int | None
    external_data: Path | None = None  # the weights file beside `path` when over 2 GB, else None
    max_abs_difference: float | None = None
    max_abs_logit: float | None = None


def export_onnx(
    model: SegmentationModel,
    output: str | Path,
    *,
    height: int | None = None,
    width: int | None = None,
    dynamic_size: bool = False,
    verify: bool = True,
) -> ExportResult:
    """Export `model` (put in eval mode) to the ONNX file `output` for inputs
    `[batch, in_channels, height, width]`, input "images", output "logits"; with `verify`,
    run the file in onnxruntime on random images and compare with eager PyTorch, raising an
    `ExportMismatchError` beyond `VERIFY_TOLERANCE`.

    `height` and `width` default to the size the model was trained at
    (`model.preprocessing.image_size`), else 321x321; another fixed size than the trained one
    is exported with a warning.
    """
    trained = model.preprocessing.image_size
    height = (trained or DEFAULT_SIZE)[0] if height is None else height
    width = (trained or DEFAULT_SIZE)[1] if width is None else width
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value < MIN_IMAGE_SIZE:
            raise ValueError(f"{name} must be an integer >= {MIN_IMAGE_SIZE} (got {value!r})")
    if trained is not None and not dynamic_size and (height, width) != tuple(trained):
        warnings.warn(
            f"exporting for {height}x{width} inputs, but the model was trained on images resized to "
            f"{trained[0]}x{trained[1]}: images will be resized to {height}x{width}, a scale it was not "
            "trained at (omit --height/--width to export the trained size)",
            stacklevel=2,
        )
    if dynamic_size and isinstance(model, DifNet):
        raise ValueError(
            "DifNet cannot be exported with a dynamic height and width: its Psi max-pooling "
            "windows depend on the input size; export one file per size with --height/--width "
            "(the batch stays dynamic)"
        )
    _require("onnx", "onnxscript")
    model = model.eval()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    images = example_images(model, EXAMPLE_BATCH, height, width, seed=0)
    dims = {0: torch.export.Dim("batch", min=1, max=1024)}
    if dynamic_size:
        dims |= {
            2: torch.export.Dim("height", min=MIN_IMAGE_SIZE),
            3: torch.export.Dim("width", min=MIN_IMAGE_SIZE),
        }
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's notes on optional torchvision ops
        program = torch.onnx.export(
            model, (images,), None, dynamo=True, input_names=["images"],
            output_names=["logits"], dynamic_shapes={"images": dims}, verbose=False,
        )  # fmt: skip
    size = (None, None) if dynamic_size else (height, width)
    program.model.metadata_props.update(onnx_metadata(model, *size))
    external = weight_bytes(model) > PROTOBUF_LIMIT
    program.save(str(output), external_data=external)
    checked = _verify(model, output, height, width) if verify and _has("onnxruntime") else ()
    if checked and checked[0] > VERIFY_TOLERANCE * max(1.0, checked[1]):
        raise ExportMismatchError(
            f"{output}: onnxruntime's logits differ from PyTorch's by up to {checked[0]:.3g} (logits up to "
            f"{checked[1]:.3g}), beyond the tolerance {VERIFY_TOLERANCE:g} x max(1, largest |logit|); the "
            "file was written but does not compute what the model does"
        )
    data = output.with_name(output.name + ".data") if external else None
    return ExportResult(output, *size, data, *checked)


def example_images(model: nn.Module, batch: int, height: int, width: int, seed: int) -> Tensor:
    """Seeded random images for `model`, on the model's device (a CUDA model exports from CUDA inputs)."""
    device = next(model.parameters()).device
    images = torch.randn(
        batch, model.in_channels, height, width, generator=torch.Generator().manual_seed(seed)
    )
    return images.to(device)


def weight_bytes(model: nn.Module) -> int:
    """The bytes of the model's parameters and buffers, as the ONNX file stores them."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def onnx_metadata(model: SegmentationModel, height: int | None, width: int | None) -> dict[str, str]:
    """The `metadata_props` of an exported file: plain strings, JSON where structured."""
    preprocessing = model.preprocessing
    palette = [list(colour) for colour in model.palette] if model.palette is not None else None
    return {
        "difnet_version": __version__,
        "model": json.dumps(model.config),
        "input_size": "dynamic" if height is None else f"{height}x{width}",
        "image_size": json.dumps(preprocessing.to_dict()["image_size"]),
        "mean": json.dumps(list(preprocessing.mean)),
        "std": json.dumps(list(preprocessing.std)),
        "class_names": json.dumps(model.class_names),
        "palette": json.dumps(palette),
    }


class OnnxSegmenter(nn.Module):
    """An exported difnet ONNX file run by onnxruntime, with the metadata it carries:
    `images [B, C, H, W] -> logits [B, K, H, W]` like the PyTorch model, plus `num_classes`,
    `in_channels`, `class_names`, `palette`, `preprocessing` and `input_size` (the fixed
    `(h, w)` of a DifNet file, None where dynamic)."""

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        _require("onnxruntime")
        import onnxruntime

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"ONNX file {self.path} does not exist")
        self.session = onnxruntime.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
        props = self.session.get_modelmeta().custom_metadata_map
        if "difnet_version" not in props:
            raise ValueError(f"{self.path} is not an ONNX file written by difnet export (no difnet metadata)")
        config: dict[str, Any] = json.loads(props["model"])
        self.num_classes, self.in_channels = config["num_classes"], config.get("in_channels", 3)
        self.class_names = json.loads(props["class_names"])
        palette = json.loads(props["palette"])
        self.palette = [tuple(colour) for colour in palette] if palette is not None else None
        size = json.loads(props["image_size"])
        self.preprocessing = Preprocessing(
            size and tuple(size), json.loads(props["mean"]), json.loads(props["std"])
        )
        fixed = props["input_size"]
        self.input_size = None if fixed == "dynamic" else tuple(int(v) for v in fixed.split("x"))

    def forward(self, images: Tensor) -> Tensor:
        """Logits of `images` from onnxruntime, on the images' device."""
        (logits,) = self.session.run(["logits"], {"images": images.detach().float().cpu().numpy()})
        return torch.from_numpy(logits).to(images.device)


def _verify(model: SegmentationModel, path: Path, height: int, width: int) -> tuple[float, float]:
    """The largest |ONNX - eager| logit over a random batch of 3 at the exported size, and the
    largest |logit|."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    images = example_images(model, 3, height, width, seed=1)
    (logits,) = session.run(["logits"], {"images": images.cpu().numpy()})
    with torch.no_grad(), _without_tf32():
        expected = model(images).float().cpu()
    return float((torch.from_numpy(logits) - expected).abs().max()), float(expected.abs().max())


@contextlib.contextmanager
def _without_tf32() -> Iterator[None]:
    """CUDA's float32 matmuls and convolutions in full precision (TF32 would differ from the file
    by more than the tolerance), restored afterwards."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _require(*modules: str) -> None:
    missing = [module for module in modules if not _has(module)]
    if missing:
        raise ImportError(f"ONNX export needs {', '.join(missing)}: pip install 'difnet[onnx]'")
