"""The `difnet` command line: `train`, `evaluate`, `predict`, `visualize`, `export` and `demo`.

Each subcommand is a thin layer over the library; errors the library raises for bad input
(`ValueError`, `TypeError`, missing or existing files) are printed as `difnet: error: ...`
with exit status 2, like argparse's own errors, instead of a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from difnet import __version__
from difnet.data import DATASETS
from difnet.devices import default_device
from difnet.export import ExportMismatchError
from difnet.models.preprocessing import Preprocessing
from difnet.training.loop import NonFiniteLossError
from difnet.training.settings import Default

TRAINING_FAILED = 1
EXPORT_FAILED = 1
SOME_INPUTS_FAILED = 1
USAGE_ERROR = 2
INTERRUPTED = 130
BOUNDARY_ERRORS = (
    ValueError,
    TypeError,
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    IsADirectoryError,
    ImportError,
)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows defaults and keeps the hand-wrapped examples of each epilog.

    No default is shown for flags (`--no-aspp` defaults to ASPP on, not to "True"), for options
    whose default is None, or where the help already says what the default is."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        default = action.default.value if isinstance(action.default, Default) else action.default
        if action.nargs == 0 or default is None or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def pixel(text: str) -> tuple[int, int]:
    """argparse type of a `y,x` pixel."""
    try:
        y, x = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a pixel as y,x (e.g. 40,60), got {text!r}") from None
    return y, x


def positive_count(text: str) -> int:
    """argparse type of a count of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text!r}")
    return value


def positive_scale(text: str) -> float:
    """argparse type of an inference scale factor (> 0)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"scales must be positive, got {text!r}")
    return value


def add_checkpoint_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint",
        type=Path,
        required=True,
        metavar="PATH",
        help="a checkpoint written by `difnet train` (best.pt, last.pt) or a "
        "save_pretrained folder (e.g. runs/x/best)",
    )


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=default_device(), help="torch device to run on")


def add_inference_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--scales",
        type=positive_scale,
        nargs="+",
        default=[1.0],
        metavar="S",
        help="image scales whose predictions are averaged (e.g. 0.75 1 1.25)",
    )
    parser.add_argument("--flip", action="store_true", help="also average horizontally flipped predictions")
    parser.add_argument(
        "--mode",
        choices=("whole", "slide"),
        default="whole",
        help="whole images, or sliding windows (--window, --stride) for large ones; "
        "DifNet then diffuses within each window",
    )
    parser.add_argument(
        "--window",
        type=int,
        nargs=2,
        default=[505, 505],
        metavar=("H", "W"),
        help="sliding-window size (--mode slide)",
    )
    parser.add_argument(
        "--stride",
        type=int,
        nargs=2,
        default=[337, 337],
        metavar=("H", "W"),
        help="sliding-window step (--mode slide); overlaps are averaged",
    )
    parser.add_argument(
        "--max-size",
        type=int,
        metavar="PX",
        help="first shrink images whose longer side exceeds PX (masks keep the input size)",
    )
    refiners = parser.add_mutually_exclusive_group()
    for option, refiner, what in (
        (
            "--bilateral-walk",
            "BilateralWalk",
            "diffuse the model's probabilities along the image's colours at stride 2",
        ),
        (
            "--dense-crf",
            "DenseCRF",
            'refine the model\'s probabilities with a dense CRF (needs pip install "difnet[crf]")',
        ),
    ):
        refiners.add_argument(
            option,
            type=refiner_setting(refiner),
            nargs="?",
            const="",
            metavar="KEY=VALUE,...",
            help=f"{what} (difnet.refinement.{refiner}); optionally override its number fields, e.g. "
            + (
                "steps=30,colour_sigma=0.05" if refiner == "BilateralWalk" else "iterations=10,colour_sigma=5"
            ),
        )
    add_device_argument(parser)
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def refiner_setting(name: str) -> Callable[[str], Any]:
    """The parser of a refiner option's value: `difnet.refinement`'s class `name` with the given
    KEY=VALUE fields (its numbers) overridden."""

    def parse(text: str) -> Any:
        from dataclasses import fields

        import difnet.refinement

        refiner = getattr(difnet.refinement, name)
        types = {f.name: type(f.default) for f in fields(refiner) if type(f.default) in (int, float)}
        overrides: dict = {}
        for item in filter(None, text.split(",")):
            key, _, value = item.partition("=")
            if key not in types or not value:
                raise argparse.ArgumentTypeError(
                    f"expected KEY=VALUE with KEY one of {sorted(types)}, got {item!r}"
                )
            try:
                overrides[key] = types[key](value)
            except ValueError:
                raise argparse.ArgumentTypeError(
                    f"{key} takes a {types[key].__name__}, got {value!r}"
                ) from None
        try:
            return refiner(**overrides)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    parse.__name__ = name  # argparse names the type in its errors
    return parse


def refined(model: torch.nn.Module, args: argparse.Namespace) -> torch.nn.Module:
    """`model`, followed by the `--bilateral-walk` or the `--dense-crf` when one is asked for."""
    from difnet.refinement import RefinedModel

    refiner = args.bilateral_walk or args.dense_crf
    return model if refiner is None else RefinedModel(model, refiner)


def inference_options(args: argparse.Namespace) -> dict:
    """The keyword options of `predict_files` / `evaluate` given by `add_inference_arguments`."""
    from difnet.evaluation import SlidingWindow

    if args.max_size is not None and args.max_size < 16:
        raise ValueError(f"--max-size must be at least 16 pixels (got {args.max_size})")
    window = SlidingWindow(tuple(args.window), tuple(args.stride)) if args.mode == "slide" else None
    return {"scales": tuple(args.scales), "flip": args.flip, "device": args.device,
            "window": window, "max_size": args.max_size, "progress": args.progress}  # fmt: skip


def add_image_size_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--image-size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="resize images to HxW for the model (default: the size it was trained at, saved with it)",
    )


def load_checkpoint_model(path: Path) -> tuple[torch.nn.Module, dict]:
    """The model and metadata of a checkpoint or a save_pretrained folder."""
    from difnet.models.loading import load_model_with_metadata

    return load_model_with_metadata(path)


def load_inference_model(path: Path) -> tuple[torch.nn.Module, dict]:
    """`load_checkpoint_model`, or for a `.onnx` file the file run by onnxruntime."""
    if path.suffix.lower() == ".onnx":
        from difnet.export import OnnxSegmenter

        return OnnxSegmenter(path), {}
    return load_checkpoint_model(path)


def inference_preprocessing(
    model: torch.nn.Module, image_size: Sequence[int] | None
) -> tuple[Preprocessing, str]:
    """The `Preprocessing` a command applies to `model`'s inputs and the phrase saying where it came
    from: saved with the model, its size overridden by `--image-size`, or fixed by an ONNX file."""
    saved, fixed = model.preprocessing, getattr(model, "input_size", None)
    if image_size is not None and fixed is not None and tuple(image_size) != fixed:
        raise ValueError(
            f"--image-size {image_size[0]} {image_size[1]}: the ONNX file takes only {fixed[0]}x{fixed[1]} "
            "inputs (export another size with difnet export --height/--width)"
        )
    if image_size is not None:
        return saved.with_image_size(
            image_size
        ), "size given on the command line, normalisation saved with the model"
    if fixed is not None:
        return saved.with_image_size(fixed), "the ONNX file's fixed input size and saved normalisation"
    return saved, "saved with the model"


def announce_preprocessing(
    command: str, preprocessing: Preprocessing, origin: str, protocol: str = ""
) -> None:
    """The one line every command prints about how it prepares images."""
    print(f"{command}: {preprocessing.describe()} ({origin}){protocol}", flush=True)


def model_palette(model: torch.nn.Module) -> list[tuple[int, int, int]]:
    """The palette saved with a model, or a generic one for its number of classes."""
    from difnet.data.palettes import generic_palette

    return model.palette or generic_palette(model.num_classes)


# --- train -------------------------------------------------------------------------------------

TRAIN_EPILOG = """\
examples:
  # DifNet-18 on generated scenes (no data needed), a few minutes on a CPU
  difnet train --model difnet --depth 18 --dataset synthetic --epochs 5 --output-dir runs/syn

  # the paper's recipe on Pascal VOC 2012 + SBD (see examples/train_voc.py for the layout)
  difnet train --model difnet --depth 50 --dataset voc --data-root /data/VOCdevkit/VOC2012 \\
      --train-split train_aug --output-dir runs/voc-difnet50

  # continue an interrupted run exactly where it stopped
  difnet train ... --resume runs/voc-difnet50/last.pt

  # a new run from a recipe file (a run's config.json, or examples/voc_recipe.toml) with one change
  difnet train --config runs/voc-difnet50/config.json --seed 1 --output-dir runs/voc-difnet50-seed1

The output directory receives last.pt, best.pt, log.jsonl and config.json.
"""


def add_train_parser(subparsers: argparse._SubParsersAction) -> None:
    from difnet.training import TrainConfig

    parser = subparsers.add_parser(
        "train",
        help="train DifNet or Sim-DeepLab with the paper's recipe",
        description="Train a segmentation model; every option of the recipe can be overridden.",
        epilog=TRAIN_EPILOG,
        formatter_class=HelpFormatter,
    )
    TrainConfig.add_arguments(parser)
    parser.set_defaults(run=run_train)


def run_train(args: argparse.Namespace) -> None:
    from difnet.training import TrainConfig, train

    result = train(TrainConfig.from_args(args))
    if result.best_miou is not None:
        print(f"best val mIoU: {100 * result.best_miou:.2f}")
    for name, path in result.checkpoint_paths.items():
        print(f"{name} checkpoint: {path}")


# --- evaluate ----------------------------------------------------------------------------------

EVALUATE_EPILOG = """\
examples:
  # the validation split the checkpoint was trained against
  difnet evaluate --checkpoint runs/syn/best.pt

  # CamVid val with multi-scale and flip averaging, metrics to JSON
  difnet evaluate --checkpoint runs/camvid/best.pt --dataset camvid \\
      --data-root ../shared/data/camvid --split val --scales 0.75 1 1.25 --flip \\
      --output camvid-val.json
"""


def add_evaluate_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="mIoU, per-class IoU and accuracies of a checkpoint on a dataset split",
        description="Evaluate a checkpoint on whole images and print the metrics table.",
        epilog=EVALUATE_EPILOG,
        formatter_class=HelpFormatter,
    )
    add_checkpoint_argument(parser)
    parser.add_argument("--dataset", help="dataset name (default: the checkpoint's)")
    parser.add_argument("--data-root", type=Path, help="dataset root (default: the checkpoint's)")
    parser.add_argument("--split", help="split to evaluate (default: the checkpoint's validation split)")
    add_image_size_argument(parser)
    parser.add_argument(
        "--native-size",
        action="store_true",
        help="score at the labels' own size, the prediction resized back to it (mmseg's protocol, "
        "the one papers report); default: images and labels resized to the model's size, as "
        "training's validation scored them",
    )
    parser.add_argument(
        "--limit", type=positive_count, metavar="N", help="evaluate only the first N images (a quick check)"
    )
    add_inference_arguments(parser)
    parser.add_argument(
        "--output", type=Path, metavar="JSON", help="also write the metrics to this JSON file"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    parser.add_argument(
        "--diagnose",
        nargs="*",
        metavar="CLASS",
        help="DifNet: also score the seed, every walk, a label oracle and the best of a grid of "
        "walk-scalar settings per class, and each level's in-class share and self-weight "
        "(difnet.diagnostics); CLASS names are shown apart as small classes; only with the default "
        "protocol (one whole image at the scored size)",
    )
    parser.set_defaults(run=run_evaluate)


def check_diagnose_protocol(args: argparse.Namespace) -> None:
    """Refuse evaluation options under which `--diagnose` would score other inputs than the table:
    the diagnostics run each whole image once at the scored size, as the default protocol does."""
    given = [option for option, used in (("--native-size", args.native_size), ("--flip", args.flip),
                                         ("--scales", tuple(args.scales) != (1.0,)),
                                         ("--mode slide", args.mode == "slide"),
                                         ("--max-size", args.max_size is not None),
                                         ("--bilateral-walk", args.bilateral_walk is not None),
                                         ("--dense-crf", args.dense_crf is not None)) if used]  # fmt: skip
    if given:
        raise ValueError(
            f"--diagnose does not go with {', '.join(given)}: the diagnostics score each whole image "
            "once at the size the table is scored at, so their walk-5 mIoU is the table's only under "
            "the default protocol; run --diagnose without them"
        )


def run_evaluate(args: argparse.Namespace) -> None:
    from difnet.data.base import check_resize
    from difnet.evaluation import evaluate
    from difnet.predict import output_paths_free
    from difnet.training import TrainConfig

    if args.output is not None:
        output_paths_free([args.output], overwrite=args.overwrite)
    if args.diagnose is not None:
        check_diagnose_protocol(args)
    model, metadata = load_inference_model(args.checkpoint)
    if "config" not in metadata and args.dataset is None:
        raise ValueError(f"{args.checkpoint} holds no training recipe to take the dataset from; "
                         "pass --dataset and --data-root")  # fmt: skip
    preprocessing, origin = inference_preprocessing(model, args.image_size)
    settings = {**metadata.get("config", {}), "num_classes": model.num_classes,
                "mean": list(preprocessing.mean), "std": list(preprocessing.std)}  # fmt: skip
    if args.dataset is not None:
        settings["dataset"] = args.dataset
    if args.data_root is not None:
        settings["data_root"] = str(args.data_root)
    if settings.get("dataset") != "synthetic":
        settings["image_size"] = None  # read at the files' size; the protocol resizes below
    config = TrainConfig.from_dict(settings)
    dataset = config.build_dataset(args.split or config.val_split or "val", config.eval_transform())
    size = preprocessing.image_size
    if size is None:
        protocol = ""
    elif args.native_size:
        protocol = "; scored at the labels' own size, predictions resized back (--native-size)"
    else:
        dataset.resize = check_resize(size)
        protocol = "; labels resized likewise, as training's validation scored them"
    announce_preprocessing("evaluate", preprocessing, origin, protocol)
    input_size = size if args.native_size else None
    result = evaluate(refined(model, args), dataset, input_size=input_size, limit=args.limit,
                      **inference_options(args))  # fmt: skip
    print(result.format_table())
    payload = result.to_dict()
    if args.diagnose is not None:
        from difnet.diagnostics import diagnose

        diagnostics = diagnose(model, dataset, args.diagnose, device=args.device, limit=args.limit)
        print("\nDiffusion diagnostics (whole images at the dataset's size):\n" + diagnostics.format())
        payload["diagnostics"] = diagnostics.to_dict()
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"metrics written to {args.output}")


# --- predict -----------------------------------------------------------------------------------

PREDICT_EPILOG = """\
examples:
  # one image -> masks/street.png (class ids, coloured by the checkpoint's palette)
  difnet predict --checkpoint runs/camvid/best.pt --input street.jpg --output masks

  # every image of a folder, with colour overlays and flip averaging
  difnet predict --checkpoint best.pt --input photos/ --output masks --overlay --flip

  # several files and folders at once
  difnet predict --checkpoint best.pt --input a.jpg b.jpg more-photos/ --output masks

Masks are palette PNGs: pixel values are class ids, so they load back as label maps. An image
that cannot be read or predicted is skipped; the others are still written, the failures are
listed at the end and the exit status is 1.
"""


def add_predict_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="segment images into palette PNG masks",
        description="Segment an image or a folder of images with a trained checkpoint.",
        epilog=PREDICT_EPILOG,
        formatter_class=HelpFormatter,
    )
    add_checkpoint_argument(parser)
    parser.add_argument(
        "--input",
        type=Path,
        nargs="+",
        required=True,
        metavar="IMG_OR_DIR",
        help="image files and directories of images",
    )
    parser.add_argument(
        "--output",
        type=Path,
        required=True,
        metavar="DIR",
        help="directory for <name>.png masks (created if missing)",
    )
    parser.add_argument(
        "--overlay",
        action="store_true",
        help="also write <name>_overlay.png, the mask blended over the image",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    add_image_size_argument(parser)
    add_inference_arguments(parser)
    parser.set_defaults(run=run_predict)


def run_predict(args: argparse.Namespace) -> int:
    from difnet.predict import Failure, find_images, predict_files

    images = find_images(*args.input)
    model, _ = load_inference_model(args.checkpoint)
    preprocessing, origin = inference_preprocessing(model, args.image_size)
    back = "" if preprocessing.image_size is None else "; masks resized back to each image's size"
    announce_preprocessing("predict", preprocessing, origin, back)
    failures: list[Failure] = []
    written = predict_files(
        refined(model, args),
        images,
        args.output,
        model_palette(model),
        overlay=args.overlay,
        overwrite=args.overwrite,
        normalization=preprocessing.normalization(),
        input_size=preprocessing.image_size,
        failures=failures,
        **inference_options(args),
    )
    print(f"wrote {len(written)} file(s) to {args.output}")
    if not failures:
        return 0
    for failure in failures:
        print(f"  {failure.path}: {failure.reason}", file=sys.stderr)
    print(f"difnet: error: {len(failures)} of {len(images)} image(s) could not be predicted (listed above)",
          file=sys.stderr)  # fmt: skip
    return SOME_INPUTS_FAILED


# --- visualize ---------------------------------------------------------------------------------

VISUALIZE_EPILOG = """\
examples:
  difnet visualize --checkpoint runs/camvid/best.pt --image 0001TP_008550.png \\
      --label 0001TP_008550_annot.png --output figures --pixels 120,200 60,300

Writes fig2_maps.png (image, ground truth, score-map argmax, influence map E = sum_k |x_k|,
importance map M), fig3_transitions.png (rows of P_1..P_5 of the chosen pixels),
fig4_walks.png (seed and the output after each walk) and table3_walk_parameters.png (learned
mu_t, beta_t, also printed). Without --pixels, one pixel per large predicted region is chosen.
The label is read as the dataset reads its masks: 255 and the dataset's void value (CamVid's 11)
are shown as ignored (white); other values outside the checkpoint's classes are refused.
"""


def add_visualize_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "visualize",
        help="the paper's mechanism figures (Figs. 2-4, Table 3) for one image",
        description="Draw DifNet's score, importance, transition and walk maps for one image.",
        epilog=VISUALIZE_EPILOG,
        formatter_class=HelpFormatter,
    )
    add_checkpoint_argument(parser)
    parser.add_argument("--image", type=Path, required=True, help="the input image")
    parser.add_argument("--label", type=Path, help="its ground-truth mask (class ids; palette or grey PNG)")
    parser.add_argument(
        "--dataset",
        choices=DATASETS,
        help="the dataset whose mask values --label follows (default: the checkpoint's)",
    )
    parser.add_argument("--output", type=Path, required=True, metavar="DIR", help="directory for the PNGs")
    parser.add_argument(
        "--pixels",
        type=pixel,
        nargs="+",
        metavar="Y,X",
        help="image pixels whose transition rows Fig. 3 shows",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing figures")
    add_image_size_argument(parser)
    add_device_argument(parser)
    parser.set_defaults(run=run_visualize)


def run_visualize(args: argparse.Namespace) -> None:
    from difnet.data import read_label
    from difnet.data.base import read_image
    from difnet.visualize import format_walk_parameters, write_mechanism_figures

    image = read_image(args.image)
    model, metadata = load_checkpoint_model(args.checkpoint)
    dataset = args.dataset or metadata.get("config", {}).get("dataset")
    label = read_label(args.label, model.num_classes, dataset) if args.label else None
    preprocessing, origin = inference_preprocessing(model, args.image_size)
    announce_preprocessing("visualize", preprocessing, origin, "; --pixels lie on the resized image"
                           if preprocessing.image_size else "")  # fmt: skip
    paths = write_mechanism_figures(
        model,
        image,
        args.output,
        label=label,
        palette=model_palette(model),
        class_names=model.class_names,
        pixels=args.pixels,
        overwrite=args.overwrite,
        device=args.device,
        preprocessing=preprocessing,
    )
    print(format_walk_parameters(model.walk_scalars()))
    for path in paths.values():
        print(f"wrote {path}")


# --- demo --------------------------------------------------------------------------------------

DEMO_EPILOG = """\
examples:
  difnet demo                     # under 3 minutes on 2 CPU cores
  difnet demo --quick             # a 20-second smoke run (numbers are not meaningful)
  difnet demo --paper-difnet      # the paper's exact DifNet in one stage instead of the staged one
  difnet demo --steps 400 --size 96 --output my-demo --overwrite

Both models train from scratch with the same recipe, seed and number of steps on generated
scenes (the staged DifNet's second stage, its walks alone, adds --walk-steps); the demo prints
their per-class IoU and mIoU and DifNet's walk gain, and writes demo.png (image, ground truth,
seed, importance map, every walk output and both predictions) and results.json.
"""


def add_demo_parser(subparsers: argparse._SubParsersAction) -> None:
    from difnet.demo import DemoConfig

    parser = subparsers.add_parser(
        "demo",
        help="train DifNet-18 and Sim-DeepLab-18 on generated scenes and compare them",
        description="Train, evaluate and compare DifNet-18 and Sim-DeepLab-18 on SyntheticShapes, on CPU.",
        epilog=DEMO_EPILOG,
        formatter_class=HelpFormatter,
    )
    DemoConfig.add_arguments(parser)
    parser.set_defaults(run=run_demo)


def run_demo(args: argparse.Namespace) -> None:
    from difnet.demo import DemoConfig
    from difnet.demo import run_demo as demo

    config = DemoConfig.from_args(args)
    print(f"training Sim-DeepLab-18 and DifNet-18 side by side for {config.steps} steps each on "
          f"{config.size}x{config.size} generated scenes; DifNet-18: {config.difnet_description}...",
          flush=True)  # fmt: skip
    result = demo(config)
    print(result.format_table())
    print(f"figure: {result.figure_path}")
    print(f"results: {result.results_path}")


# --- export ------------------------------------------------------------------------------------

EXPORT_EPILOG = """\
examples:
  # DifNet for 321x321 inputs (any batch), checked against PyTorch in onnxruntime
  difnet export --checkpoint runs/voc/best --output difnet.onnx --height 321 --width 321

  # Sim-DeepLab for any batch, height and width
  difnet export --checkpoint runs/baseline/best.pt --output simdeeplab.onnx --dynamic

  # run the file without PyTorch weights: predict resizes to its input size and back
  difnet predict --checkpoint difnet.onnx --input street.jpg --output masks

DifNet's height and width are fixed at export (its Psi pooling windows depend on them; by
default the size the model was trained at, another size with a warning); the file refuses
other sizes. The export fails when onnxruntime's logits differ from PyTorch's beyond 1e-3 of the
largest logit (at least 1). The weights are
inside the file (one self-contained file) up to protobuf's 2 GB limit, and its
metadata_props hold the difnet version, input size, mean/std, class names and palette.
Needs pip install 'difnet[onnx]'.
"""


def add_export_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a trained model to ONNX",
        description="Export a checkpoint or save_pretrained folder to an ONNX file.",
        epilog=EXPORT_EPILOG,
        formatter_class=HelpFormatter,
    )
    add_checkpoint_argument(parser)
    parser.add_argument("--output", type=Path, required=True, metavar="FILE", help="the .onnx file to write")
    parser.add_argument(
        "--height",
        type=int,
        help="input height, fixed unless --dynamic (default: the trained size, else 321)",
    )
    parser.add_argument(
        "--width", type=int, help="input width, fixed unless --dynamic (default: the trained size, else 321)"
    )
    parser.add_argument(
        "--dynamic",
        action="store_true",
        help="dynamic height and width too (Sim-DeepLab only; the batch is always dynamic)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    parser.set_defaults(run=run_export)


def run_export(args: argparse.Namespace) -> None:
    from difnet.export import export_onnx
    from difnet.predict import output_paths_free

    output_paths_free([args.output], overwrite=args.overwrite)
    model, _ = load_checkpoint_model(args.checkpoint)
    announce_preprocessing("export", model.preprocessing, "saved with the model; written into the file")
    result = export_onnx(model, args.output, height=args.height, width=args.width, dynamic_size=args.dynamic)
    size = "any height and width" if result.height is None else f"{result.height}x{result.width} inputs"
    print(f"wrote {result.path}: {type(model).__name__} on {model.encoder}, any batch, {size}")
    if result.external_data is None:
        print("one self-contained file: weights, input size, mean/std, class names and palette inside")
    else:
        print(f"the weights exceed protobuf's 2 GB limit: they went to {result.external_data}, "
              "which must stay beside the .onnx file")  # fmt: skip
    if result.max_abs_difference is not None:
        print(
            f"onnxruntime vs PyTorch: max |logit difference| {result.max_abs_difference:.2e} "
            f"(logits up to {result.max_abs_logit:.3g} in magnitude), within the tolerance"
        )


# --- main --------------------------------------------------------------------------------------

PARSERS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    add_train_parser,
    add_evaluate_parser,
    add_predict_parser,
    add_visualize_parser,
    add_demo_parser,
    add_export_parser,
)


def build_parser() -> argparse.ArgumentParser:
    """The `difnet` parser with one subparser per subcommand."""
    parser = argparse.ArgumentParser(
        prog="difnet",
        description="DifNet: semantic segmentation by diffusion networks (NeurIPS 2018).",
        epilog="Start with `difnet demo`; `difnet <command> --help` explains each command.",
    )
    parser.add_argument("--version", action="version", version=f"difnet {__version__}")
    subparsers = parser.add_subparsers(title="commands", dest="command", required=True, metavar="COMMAND")
    for add_parser in PARSERS:
        add_parser(subparsers)
    for command in subparsers.choices.values():
        command.set_defaults(command_parser=command)  # its usage for errors argparse leaves to the top
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `difnet` command line; returns the exit status."""
    args, unknown = build_parser().parse_known_args(argv)
    if unknown:
        args.command_parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        with warnings.catch_warnings():
            warnings.showwarning = show_warning
            status = args.run(args)
    except BOUNDARY_ERRORS as error:
        print(f"difnet: error: {error}", file=sys.stderr)
        return USAGE_ERROR
    except NonFiniteLossError as error:
        print(f"difnet: training stopped: {error}", file=sys.stderr)
        return TRAINING_FAILED
    except ExportMismatchError as error:
        print(f"difnet: export failed: {error}", file=sys.stderr)
        return EXPORT_FAILED
    except KeyboardInterrupt:
        print("difnet: interrupted", file=sys.stderr)
        return INTERRUPTED
    return status or 0


def show_warning(message: Warning | str, category: type[Warning], *_: object, **__: object) -> None:
    """Print a warning as one `difnet: warning: ...` line, like the errors, without the source line."""
    print(f"difnet: warning: {message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
