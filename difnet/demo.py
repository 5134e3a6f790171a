"""`difnet demo`: DifNet-18 against Sim-DeepLab-18, trained from scratch on generated scenes.

DifNet-18 is the staged DifNet that CamVid's verdict measured best: a first stage trains its seed
branch with every walk switched off (`SEED_STAGE`), a second stage trains only its walks on that
frozen seed (`WALK_STAGE`). `paper_difnet` trains the paper's exact model in one stage instead.
Both models train with the same recipe, seed and number of steps on `SyntheticShapes` (DifNet's
second stage adds `walk_steps`, as on CamVid), are evaluated on the same held-out scenes, and are
compared in a table, with DifNet's walk gain, and a figure. The two trainings run side by side in
separate processes, each with its share of the CPU cores; the default budget takes under 3 minutes
on 2 cores; `--quick` is a seconds-long smoke run.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from difnet.data import SyntheticShapes, denormalize
from difnet.data.transforms import normalize
from difnet.diagnostics import diagnose
from difnet.evaluation import EvaluationResult, evaluate, percent
from difnet.models import DifNet, load_model
from difnet.predict import output_paths_free
from difnet.training import TrainConfig, train
from difnet.visualize import (
    add_class_legend,
    draw_heat,
    draw_image,
    draw_labels,
    format_walk_parameters,
    label_map,
    new_figure,
)

MODELS = (("simdeeplab", "Sim-DeepLab-18"), ("difnet", "DifNet-18"))
# The staged DifNet of CamVid's verdict (benchmarks/results/camvid_walks.md). First stage: the seed
# branch with every P_t = I and an auxiliary cross-entropy (weight 0.4) on the seed scores; the
# similarity levels read the seed backbone. Second stage: only Psi_t and the walks train, on the
# frozen seed, with the distance kernel between neighbouring cells, and the cascade ends with the
# guided walk on the image at stride 2 (`difnet.diffusion.guided`).
SEED_STAGE = {"shared_backbone": True, "kernel": "identity", "aux_seed_weight": 0.4}
WALK_STAGE = {"shared_backbone": True, "kernel": "distance", "kernel_radius": 1, "guided_walk_stride": 2}
FIGURE_NAME = "demo.png"
RESULTS_NAME = "results.json"


@dataclass
class DemoConfig:
    """The demo's budget and recipe; both models get exactly the same."""

    output_dir: Path = Path("difnet-demo")
    steps: int = 180
    walk_steps: int = 34  # the second stage's, 3/16 of `steps` as on CamVid; ignored by paper_difnet
    size: int = 64
    train_images: int | None = None  # None: steps x batch_size, so every step sees new scenes
    val_images: int = 48
    num_classes: int = 5
    batch_size: int = 8
    lr: float = 0.01
    seed: int = 0
    paper_difnet: bool = False  # True: the paper's exact DifNet in one stage instead of the staged one
    overwrite: bool = False

    @classmethod
    def quick(cls, **overrides: object) -> DemoConfig:
        """A seconds-long smoke run: the whole pipeline, numbers not meaningful."""
        return replace(cls(steps=6, walk_steps=2, size=32, val_images=4, batch_size=4), **overrides)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """The demo's options (`--quick` picks the smoke-run defaults; explicit options win)."""
        default = cls()
        parser.add_argument(
            "--output",
            type=Path,
            default=default.output_dir,
            metavar="DIR",
            help="directory for the checkpoints, demo.png and results.json",
        )
        parser.add_argument("--steps", type=int, help=f"training steps per model (default {default.steps})")
        parser.add_argument(
            "--walk-steps",
            type=int,
            help=f"steps of the staged DifNet's second stage, its walks alone (default {default.walk_steps})",
        )
        parser.add_argument(
            "--size", type=int, help=f"side of the square scenes in pixels (default {default.size})"
        )
        parser.add_argument("--seed", type=int, default=default.seed, help="seed of the data and both models")
        parser.add_argument("--quick", action="store_true", help="a ~20 s smoke run of the whole demo")
        parser.add_argument(
            "--paper-difnet",
            action="store_true",
            help="train the paper's exact DifNet (separate backbones, no seed loss, one stage) instead "
            "of the staged DifNet of the CamVid verdict",
        )
        parser.add_argument("--overwrite", action="store_true", help="replace the results of an earlier demo")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> DemoConfig:
        """The config of parsed `add_arguments` options."""
        explicit = {
            key: getattr(args, key)
            for key in ("steps", "walk_steps", "size")
            if getattr(args, key) is not None
        }
        config = (cls.quick if args.quick else cls)(
            output_dir=args.output,
            seed=args.seed,
            paper_difnet=args.paper_difnet,
            overwrite=args.overwrite,
            **explicit,
        )
        config.check()
        return config

    def check(self) -> None:
        """Raise a `ValueError` naming the first option out of range."""
        if self.steps < 1:
            raise ValueError(f"--steps must be at least 1 (got {self.steps})")
        if self.walk_steps < 1:
            raise ValueError(f"--walk-steps must be at least 1 (got {self.walk_steps})")
        if self.size < 32:
            raise ValueError(f"--size must be at least 32 pixels (got {self.size})")

    @property
    def training_scenes(self) -> int:
        """How many generated scenes the training split holds."""
        return self.train_images or self.steps * self.batch_size

    @property
    def difnet_description(self) -> str:
        """Which DifNet the demo trains, in words."""
        if self.paper_difnet:
            return "the paper's exact model, trained in one stage"
        weight = SEED_STAGE["aux_seed_weight"]
        return (
            f"staged, as in the CamVid verdict: {self.steps} steps of the seed branch alone (walks off, "
            f"auxiliary seed loss {weight}), then {self.walk_steps} steps of the walks alone on the frozen "
            "seed (distance kernel, 3x3 neighbourhood, then the guided walk on the image at stride 2); "
            "--paper-difnet: the paper's"
        )

    def train_config(self, model: str) -> TrainConfig:
        """The training recipe of one model: the paper's, at the demo's scale and budget. For the
        staged DifNet (unless `paper_difnet`) this is its first stage, `walk_config` its second."""
        if model == "difnet" and not self.paper_difnet:
            return self._recipe(model, self.steps, self.output_dir / "difnet-seed", **SEED_STAGE)
        return self._recipe(model, self.steps, self.output_dir / model)

    def walk_config(self, seed_checkpoint: Path) -> TrainConfig:
        """The staged DifNet's second stage: `walk_steps` of its walks on the seed branch of
        `seed_checkpoint` (the first stage's weights), frozen."""
        return self._recipe("difnet", self.walk_steps, self.output_dir / "difnet", seed_from=str(seed_checkpoint),
                            **WALK_STAGE)  # fmt: skip

    def _recipe(self, model: str, steps: int, output_dir: Path, **options: object) -> TrainConfig:
        steps_per_epoch = math.ceil(self.training_scenes / self.batch_size)
        return TrainConfig(
            model=model,
            depth=18,
            dataset="synthetic",
            crop_size=self.size,
            batch_size=self.batch_size,
            epochs=math.ceil(steps / steps_per_epoch),
            max_steps_per_epoch=min(steps, steps_per_epoch),
            lr=self.lr,  # one rate for every parameter, as the authors; from scratch, 0.01
            seed=self.seed,
            workers=0,
            progress=False,  # two trainings side by side: their bars would interleave
            output_dir=str(output_dir),
            overwrite=self.overwrite,
            device="cpu",
            **options,
        )


@dataclass
class ModelResult:
    """One model's evaluation and training time."""

    name: str
    evaluation: EvaluationResult
    train_seconds: float
    walk_scalars: dict[str, list[float]] | None = None
    seed_miou: float | None = None  # DifNet: its own seed's mIoU, before the walks


@dataclass
class DemoResult:
    """Both models' results and where the figure and the JSON went."""

    models: list[ModelResult]
    class_names: list[str]
    figure_path: Path
    results_path: Path
    config: DemoConfig = field(repr=False, default_factory=DemoConfig)

    def format_table(self) -> str:
        """Per-class IoU, mIoU and pixel accuracy (in %) of both models, plus DifNet's walk weights."""
        header = "| class | " + " | ".join(m.name for m in self.models) + " |"
        lines = [header, "|---" * (len(self.models) + 1) + "|"]
        metrics = [m.evaluation.metrics for m in self.models]
        rows = [(name, [mt.per_class_iou[i] for mt in metrics]) for i, name in enumerate(self.class_names)]
        rows += [
            ("**mIoU**", [mt.miou for mt in metrics]),
            ("pixel accuracy", [mt.pixel_accuracy for mt in metrics]),
        ]
        lines += [
            f"| {name} | " + " | ".join(percent(v, digits=1) for v in values) + " |" for name, values in rows
        ]
        lines.append("| train time (s) | " + " | ".join(f"{m.train_seconds:.0f}" for m in self.models) + " |")
        lines += ["", f"DifNet-18: {self.config.difnet_description}."]
        for m in self.models:
            if m.seed_miou is not None:
                gain = m.evaluation.metrics.miou - m.seed_miou
                lines.append(f"{m.name} walk gain (its output minus its own seed): "
                             f"{percent(m.seed_miou, digits=1)} -> {percent(m.evaluation.metrics.miou, digits=1)}, "
                             f"{100 * gain:+.1f} mIoU")  # fmt: skip
        walks = [m.walk_scalars for m in self.models if m.walk_scalars]
        if walks:
            lines += ["", "DifNet-18 learned walk weights (cf. Table 3):", format_walk_parameters(walks[0])]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """Plain-typed results for `results.json`."""
        return {
            "config": {**asdict(self.config), "output_dir": str(self.config.output_dir)},
            "models": {
                m.name: {
                    **m.evaluation.to_dict(),
                    "train_seconds": m.train_seconds,
                    "walk_parameters": m.walk_scalars,
                    "seed_miou": m.seed_miou,
                }
                for m in self.models
            },
        }


def demo_datasets(config: DemoConfig) -> tuple[SyntheticShapes, SyntheticShapes]:
    """Training and validation scenes, generated from different seeds."""
    size, classes = config.size, config.num_classes
    augmentation = config.train_config("difnet").train_transform()
    return (
        SyntheticShapes(
            config.training_scenes, size=size, num_classes=classes, seed=config.seed, transform=augmentation
        ),
        SyntheticShapes(config.val_images, size=size, num_classes=classes, seed=config.seed + 1),
    )


def demo_figure(
    image: np.ndarray,
    label: np.ndarray,
    difnet: DifNet,
    baseline: nn.Module,
    palette: Sequence[tuple[int, int, int]],
    class_names: Sequence[str],
) -> Figure:
    """Image, ground truth, both predictions and DifNet's importance map (top row); DifNet's
    seed and the output after each walk, and after its guided walk where it has one (bottom row)."""
    batch = normalize(image)[None]
    size = image.shape[:2]
    with torch.no_grad():
        out = difnet.eval().forward_intermediates(batch)
        baseline_labels = label_map(baseline.eval()(batch), size)
    difnet_labels = label_map(out.logits, size)
    guided = [] if out.guided_probabilities is None else [out.logits]
    walks = [label_map(y, size) for y in (out.seed, *out.walks, *guided)]
    figure, axes = new_figure(2, len(walks), legend=True)
    top = iter(axes[0])
    draw_image(next(top), image)
    draw_labels(next(top), label, palette, "ground truth")
    draw_labels(next(top), baseline_labels, palette, "Sim-DeepLab-18")
    draw_labels(next(top), difnet_labels, palette, "DifNet-18")
    draw_heat(next(top), out.importance[0, 0].numpy(), size, "importance M", vmin=0, vmax=1)
    for ax in top:
        ax.set_axis_off()
    titles = ["seed s = M x", *(f"after walk {t}" for t in range(1, len(out.walks) + 1))]
    titles += ["after the guided walk"] * len(guided)
    for ax, labels, title in zip(axes[1], walks, titles):
        draw_labels(ax, labels, palette, title)
    add_class_legend(figure, [label, baseline_labels, difnet_labels, *walks], palette, class_names)
    figure.suptitle("DifNet-18 vs Sim-DeepLab-18 on a held-out scene", fontsize=10)
    return figure


def train_and_evaluate(config: DemoConfig, key: str, threads: int) -> ModelResult:
    """Train model `key` on `threads` threads (the staged DifNet in its two stages) and evaluate it
    on the held-out scenes (the body of one demo process; the model's checkpoint is left in its
    output folder)."""
    torch.set_num_threads(threads)
    train_set, val_set = demo_datasets(config)
    start = time.perf_counter()
    torch.manual_seed(config.seed)
    # no validation during training: the demo evaluates the final weights once, below
    datasets = {"train": train_set, "val": None}
    first = config.train_config(key)
    model = train(first, dataset_overrides=datasets).model
    if key == "difnet" and not config.paper_difnet:
        model = train(
            config.walk_config(Path(first.output_dir) / "last.pt"), dataset_overrides=datasets
        ).model
    seconds = time.perf_counter() - start
    evaluation = evaluate(model, val_set, progress=False)
    if not isinstance(model, DifNet):
        return ModelResult(dict(MODELS)[key], evaluation, seconds)
    seed_miou = diagnose(model, val_set).miou["seed"]
    return ModelResult(dict(MODELS)[key], evaluation, seconds, model.walk_scalars(), seed_miou)


def run_demo(config: DemoConfig) -> DemoResult:
    """Train both models side by side, evaluate them on the held-out scenes, write the figure
    and the JSON."""
    config.check()
    figure_path = config.output_dir / FIGURE_NAME
    results_path = config.output_dir / RESULTS_NAME
    output_paths_free([figure_path, results_path], overwrite=config.overwrite)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = max(1, cores // len(MODELS))
    spawn = multiprocessing.get_context("spawn")  # no fork of a process that holds torch threads
    with ProcessPoolExecutor(max_workers=len(MODELS), mp_context=spawn) as pool:
        futures = [pool.submit(train_and_evaluate, config, key, threads) for key, _ in MODELS]
        results = [future.result() for future in futures]
    trained = {key: load_model(config.output_dir / key / "last.pt") for key, _ in MODELS}
    _, val_set = demo_datasets(config)
    image, label = val_set[0]
    figure = demo_figure(
        denormalize(image),
        label.numpy(),
        trained["difnet"],
        trained["simdeeplab"],
        val_set.palette,
        val_set.class_names,
    )
    config.output_dir.mkdir(parents=True, exist_ok=True)
    figure.savefig(figure_path, dpi=110, bbox_inches="tight")
    demo = DemoResult(results, list(val_set.class_names), figure_path, results_path, config)
    results_path.write_text(json.dumps(demo.to_dict(), indent=2) + "\n")
    return demo
