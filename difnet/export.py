"""ONNX export: a trained model as a file that onnxruntime (and other ONNX runtimes) run.

The batch is always dynamic. DifNet's height and width are fixed at export: Psi's max pooling
windows depend on the input size and are written into the graph as constants, so the file
refuses other sizes (onnxruntime names the expected dimensions) rather than answering wrongly.
Sim-DeepLab can also be exported with dynamic height and width (`dynamic_size=True`).
Needs the `[onnx]` extra (onnx, onnxscript; onnxruntime to verify the file).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from difnet.models import DifNet, SegmentationModel
from difnet.models.validation import MIN_IMAGE_SIZE

EXAMPLE_BATCH = 2  # a batch of 1 would let the exporter specialise the batch dimension to 1


@dataclass(frozen=True)
class ExportResult:
    """Where the file went, its input size (None where dynamic) and, when onnxruntime is
    installed, the largest absolute difference of its logits from eager PyTorch's and the
    largest absolute logit (float32 rounding grows with it)."""

    path: Path
    height: int | None
    width: int | None
    max_abs_difference: float | None = None
    max_abs_logit: float | None = None


def export_onnx(
    model: SegmentationModel,
    output: str | Path,
    *,
    height: int = 321,
    width: int = 321,
    dynamic_size: bool = False,
    verify: bool = True,
) -> ExportResult:
    """Export `model` (put in eval mode) to the ONNX file `output` for inputs
    `[batch, in_channels, height, width]`, input "images", output "logits"; with `verify`,
    run the file in onnxruntime on random images and compare with eager PyTorch."""
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value < MIN_IMAGE_SIZE:
            raise ValueError(f"{name} must be an integer >= {MIN_IMAGE_SIZE} (got {value!r})")
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
    images = torch.randn(
        EXAMPLE_BATCH, model.in_channels, height, width, generator=torch.Generator().manual_seed(0)
    )
    dims = {0: torch.export.Dim("batch", min=1, max=1024)}
    if dynamic_size:
        dims |= {
            2: torch.export.Dim("height", min=MIN_IMAGE_SIZE),
            3: torch.export.Dim("width", min=MIN_IMAGE_SIZE),
        }
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's notes on optional torchvision ops
        torch.onnx.export(
            model, (images,), str(output), dynamo=True, input_names=["images"],
            output_names=["logits"], dynamic_shapes={"images": dims}, verbose=False,
        )  # fmt: skip
    size = (None, None) if dynamic_size else (height, width)
    checked = _verify(model, output, height, width) if verify and _has("onnxruntime") else ()
    return ExportResult(output, *size, *checked)


def _verify(model: SegmentationModel, path: Path, height: int, width: int) -> tuple[float, float]:
    """The largest |ONNX - eager| logit over a random batch of 3 at the exported size, and the
    largest |logit|."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    images = torch.randn(3, model.in_channels, height, width, generator=torch.Generator().manual_seed(1))
    (logits,) = session.run(["logits"], {"images": images.numpy()})
    with torch.no_grad():
        expected = model(images)
    return float((torch.from_numpy(logits) - expected).abs().max()), float(expected.abs().max())


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _require(*modules: str) -> None:
    missing = [module for module in modules if not _has(module)]
    if missing:
        raise ImportError(f"ONNX export needs {', '.join(missing)}: pip install 'difnet[onnx]'")
