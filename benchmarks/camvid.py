"""The CamVid verdict: Sim-DeepLab-18 at its best against the best DifNet-18, from scratch.

Every run resumable and recorded with the commit that produced it, in stages (`plan`):

- **screen**: both models x both score-head inits train `SCREEN_EPOCHS` on CamVid `train`
  without the dusk sequence 0001TP and are scored on `val`: each model keeps its better init.
- **remedy**: DifNet at that init and with each remedy in `VARIANTS`, the baseline at each rate,
  and the staged DifNet's first stage (the seed alone, every P_t = I) train `SCREEN_EPOCHS` on
  `train` without the first 60 frames of 0016E5 (daytime) and are scored on those 60 images only;
  the best mean over the seeds is each one's configuration. `val` plays no part in this choice.
- **second stage**: each second-stage candidate trains `STAGE_TWO_EPOCHS` on its seed's frozen
  first stage, scored there by its walk gain (its output minus its seed).
- **verdict**: each configuration trains `VERDICT_EPOCHS` on all of `train` (the staged DifNet's
  first stage, then its chosen second stage), scored on `val` every 2 epochs (learning curves),
  then per class and, for DifNet, by `difnet.diagnostics`. Equal steps, and equal time: the
  baseline again with the epochs DifNet's training time buys. `select` and `selection.json` hold
  both verdicts' choices: the jointly trained DifNet's and the staged one's.
- **cross-drive** (`--phase drive-screen`, `drive-verdict`): whole drives train and a drive no model
  trains on scores (`DRIVES`); records under `cross-drive/screen/` and `cross-drive/verdict/`, their
  score under `holdout` with the drive named in `held_out_drive`.

    python -m benchmarks.camvid all --dry-run                       # what the records choose, what is missing
    python -m benchmarks.camvid all --device cuda --parallel 24     # every run still missing
    python -m benchmarks.camvid_cross_drive --dry-run               # the cross-drive verdict's stages
    python -m benchmarks.camvid run --variant dif-aux --seed 0 --phase remedy --epochs 8   # one run
    python -m benchmarks.camvid report                              # results/camvid_verdict.*
    python -m benchmarks.camvid rediagnose --variant walk-dist-r1 --seed 0 --phase remedy --epochs 3
                                                 # recompute a finished run's diagnostics
    python -m benchmarks.camvid refine --variant sim-lr0.007 --seed 0 --phase remedy --epochs 8 [--crf]
                                 # fit a bilateral walk (or a dense CRF) on its training images, score with and without
    python -m benchmarks.camvid fit-scalars --variant walk-dist-r1 --seed 0 --phase verdict --epochs 3
                          # pick the walk scalars on its training images, score them where it was scored
    python -m benchmarks.camvid fit-guided --variant walk-dist-r1-guided --seed 0 --phase verdict --epochs 3
                   # pick the guided walk's stride, steps and mu on its training images, score them
    python -m benchmarks.camvid shrink --to .camvid240             # a 240x180 copy to ship

A run whose record exists is not repeated; one killed mid-way resumes from its `last.pt`. Records
go to `benchmarks/results/camvid/<phase>/`, where they are committed, so a later session (or a
GPU) carries on with the runs still missing; the run folders beside them hold weights and are
git-ignored. Every record names the commit of each segment of its run (a resumed run has one per
process that trained it, kept in the run folder's segments.json), and whether the tree differed.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import signal
import statistics
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import IO

import numpy as np
import torch
from PIL import Image

import benchmarks.smp_models  # noqa: F401  (registers the smp-* models the variants name)
from benchmarks._measure import machine_info, synchronize
from benchmarks.camvid_variants import (
    FIRST_STAGES,
    INIT_VARIANTS,
    RATES,
    REMEDIES,
    SECOND_STAGES,
    SMALL_CLASSES,
    STAGE_ONE,
    STAGE_ONE_EPOCHS,
    VARIANTS,
)
from difnet.data import CamVid, EvalTransform, TrainTransform
from difnet.data.base import SegmentationDataset
from difnet.diagnostics import diagnose, transition_shares
from difnet.evaluation import evaluate
from difnet.metrics import mean_of_defined
from difnet.models import DifNet, build_model, load_model
from difnet.refinement import (
    ImageRefiner,
    RefinedModel,
    bilateral_grid,
    cheapest_within,
    fit_bilateral_walk,
    fit_dense_crf,
    fit_guided_walk,
    guided_grid,
    guided_walk_of,
)
from difnet.training import TrainConfig, train
from difnet.training.losses import training_loss
from difnet.training.sample_seeds import seed_everything

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "camvid"
RESULTS = ROOT / "benchmarks" / "results"
RUNS = RESULTS / "camvid"  # records are kept (committed); run folders with weights are ignored
HALF_RESOLUTION = (180, 240)
RECIPE_SCALES = (0.75, 1.25)
# What each selection phase holds aside from `train`: the first `count` frames of a sequence, a
# stretch of video whose neighbouring frames are not trained on. 0001TP is at dusk and scores
# 7-12 mIoU for every model (too hard to rank them); 0016E5's first minutes are daytime, like val.
HELD_ASIDE = {"screen": ("0001TP", 62), "remedy": ("0016E5", 60)}
# The cross-drive protocol: whole drives train and a drive no model trains on scores, since CamVid
# val is the drive 0016E5 whose other frames are in train, which flatters every model. The screens
# and rate searches train on 0016E5 (train's 204 frames and val's 101) and score 0001TP's 62; the
# verdict trains on 0001TP and 0016E5 (367 frames) and scores 0006R0's 101.
DRIVES = {"drive-screen": (("0016E5",), "0001TP"), "drive-verdict": (("0001TP", "0016E5"), "0006R0")}
PHASE_FOLDERS = {"drive-screen": "cross-drive/screen", "drive-verdict": "cross-drive/verdict"}
PHASES = (*HELD_ASIDE, "verdict", *DRIVES)
SCREEN_EPOCHS, VERDICT_EPOCHS, EVAL_EVERY = 8, 16, 2
SEEDS = {"screen": (0, 1), "verdict": (0, 1, 2)}
STAGE_TWO_EPOCHS = 3  # a second stage trains this long on its frozen first stage
# The staged verdict's baseline at equal time: 1.25x the steps of its 16 epochs, since DifNet's two
# stages and its guided fit took 1.2-1.4x the baseline's 16 epochs in the recorded times.
STAGED_EQUAL_TIME_EPOCHS = 20
SEGMENTS = "segments.json"  # in a run folder: the provenance of each process that trained it


# --- data --------------------------------------------------------------------------------------


def held_aside_names(dataset: CamVid, phase: str) -> list[str]:
    """The image names `phase` holds aside: the first frames of its sequence, in frame order."""
    sequence, count = HELD_ASIDE[phase]
    return sorted(s.image.name for s in dataset.samples if s.image.name.startswith(sequence))[:count]


def with_samples(dataset: CamVid, phase: str, keep: bool) -> CamVid:
    """A copy of `dataset` holding only the images `phase` holds aside (`keep`) or all the others."""
    held = set(held_aside_names(dataset, phase))
    part = copy.copy(dataset)
    part.samples = [s for s in dataset.samples if (s.image.name in held) == keep]
    return part


def of_drives(dataset: CamVid, drives: Sequence[str]) -> CamVid:
    """A copy of `dataset` holding only the frames of `drives` (CamVid names a frame by its drive)."""
    part = copy.copy(dataset)
    part.samples = [s for s in dataset.samples if s.image.name.startswith(tuple(drives))]
    return part


def scored_split(phase: str) -> str:
    """The record key of a phase's score: `holdout` for frames or a drive held out of training."""
    return "holdout" if phase in HELD_ASIDE or phase in DRIVES else "val"


def phase_datasets(data_root: Path, phase: str, crop: tuple[int, int]) -> dict[str, SegmentationDataset]:
    """`{"train", "val"}` of a phase: a selection phase scores its held-aside images as its val;
    the verdict trains on all of train and scores val; a cross-drive phase trains on its drives'
    frames of train and val and scores the drive it holds out."""
    augment = TrainTransform(crop, RECIPE_SCALES)
    if phase in DRIVES:
        trained, held_out = DRIVES[phase]
        return {
            "train": of_drives(CamVid(data_root, "trainval", augment, resize=HALF_RESOLUTION), trained),
            "val": of_drives(
                CamVid(data_root, "trainval", EvalTransform(), resize=HALF_RESOLUTION), [held_out]
            ),
        }
    train_set = CamVid(data_root, "train", augment, resize=HALF_RESOLUTION)
    if phase in HELD_ASIDE:
        holdout = CamVid(data_root, "train", EvalTransform(), resize=HALF_RESOLUTION)
        return {
            "train": with_samples(train_set, phase, keep=False),
            "val": with_samples(holdout, phase, keep=True),
        }
    return {"train": train_set, "val": CamVid(data_root, "val", EvalTransform(), resize=HALF_RESOLUTION)}


def shrink(source: Path, target: Path) -> None:
    """Write CamVid train/val at 240x180 exactly as `CamVid(resize=(180, 240))` loads them, so the
    copy (a fifth of the size) loads to the same tensors: for a remote machine."""
    for split in ("train", "val"):
        dataset = CamVid(source, split, resize=HALF_RESOLUTION)
        lines = []
        for folder in (split, f"{split}annot"):
            (target / folder).mkdir(parents=True, exist_ok=True)
        for index, sample in enumerate(dataset.samples):
            image, label = dataset.load(index)
            height, width = HALF_RESOLUTION
            image = np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR))
            label = np.asarray(Image.fromarray(label).resize((width, height), Image.Resampling.NEAREST))
            Image.fromarray(image).save(target / split / sample.image.name)
            Image.fromarray(label).save(target / f"{split}annot" / sample.mask.name)
            lines.append(f"/{split}/{sample.image.name} /{split}annot/{sample.mask.name}")
        (target / f"{split}.txt").write_text("\n".join(lines) + "\n")


# --- one run -----------------------------------------------------------------------------------


def recipe(
    variant: str,
    seed: int,
    phase: str,
    epochs: int,
    output: Path,
    device: str,
    data_root: Path,
    crop: tuple[int, int] = (160, 160),
    max_steps: int | None = None,
) -> TrainConfig:
    """The shared recipe (the earlier benchmark's: batch 8, lr 0.01 for every parameter, crops of
    the 240x180 images, scale 0.75-1.25) with the variant's overrides."""
    model, overrides = VARIANTS[variant]
    shared = dict(
        model=model, depth=18, dataset="camvid", data_root=str(data_root), image_size=HALF_RESOLUTION,
        crop_size=crop, scale_range=RECIPE_SCALES, batch_size=8, epochs=epochs, lr=0.01, seed=seed,
        workers=0, device=device, output_dir=str(output / run_name(variant, seed, phase, epochs)),
        overwrite=True, eval_every=EVAL_EVERY, progress=False, max_steps_per_epoch=max_steps,
    )  # fmt: skip
    if (first := first_stage(variant)) and phase in STAGE_ONE_EPOCHS:  # timing starts from random weights
        overrides = {**overrides, "seed_from": str(stage_one_checkpoint(output, seed, phase, first))}
    return TrainConfig(**{**shared, **overrides})


def first_stage(variant: str) -> str | None:
    """The first-stage variant a second stage `variant` starts from: `STAGE_ONE` for the walks,
    `FIRST_STAGES`' for DifNet's head on an smp model, None for a model trained whole."""
    return STAGE_ONE if variant.startswith("walk-") else FIRST_STAGES.get(variant)


def stage_one_checkpoint(output: Path, seed: int, phase: str, first: str = STAGE_ONE) -> Path:
    """The final weights of the first-stage run `first` that a second-stage run of `seed` in `phase`
    starts from."""
    return output / run_name(first, seed, phase, STAGE_ONE_EPOCHS[phase]) / "last.pt"


def run_name(variant: str, seed: int, phase: str, epochs: int) -> str:
    return f"{PHASE_FOLDERS.get(phase, phase)}/{variant}-e{epochs}-seed{seed}"


def provenance() -> dict:
    """The commit the code came from, whether the tree differed from it, the library versions."""

    def git(*arguments: str) -> str:
        done = subprocess.run(["git", *arguments], cwd=ROOT, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else "unknown"

    commit = os.environ.get("DIFNET_COMMIT") or git("rev-parse", "HEAD")
    dirty = os.environ.get("DIFNET_DIRTY") or ("yes" if git("status", "--porcelain", "--", "difnet",
                                                               "benchmarks") else "no")  # fmt: skip
    return {"commit": commit, "dirty": dirty, "numpy": np.__version__, **machine_info()}


def start_segment(out: Path, resumed: bool) -> list[dict]:
    """Append this process's provenance to the run folder's `SEGMENTS` file (a fresh run starts it
    anew) and return every segment so far, so a resumed run keeps the commit of each part."""
    path = out / SEGMENTS
    earlier = json.loads(path.read_text()) if resumed and path.is_file() else []
    if resumed and not earlier:
        earlier = [{"commit": "unknown", "dirty": "unknown", "note": f"ran before {SEGMENTS} was kept"}]
    segments = [*earlier, provenance()]
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(segments, indent=2) + "\n")
    return segments


def run_one(args: argparse.Namespace) -> dict:
    """Train one variant and seed (resuming from its last.pt), score it, write its record."""
    config = recipe(args.variant, args.seed, args.phase, args.epochs, args.output, args.device,
                    args.data_root, tuple(args.crop), args.max_steps)  # fmt: skip
    out = Path(config.output_dir)
    last = out / "last.pt"
    if last.is_file():
        config.resume, config.overwrite = str(last), False
    segments = start_segment(out, resumed=last.is_file())
    data = phase_datasets(args.data_root, args.phase, config.crop_size)
    record: dict = {"variant": args.variant, "seed": args.seed, "phase": args.phase, "epochs": args.epochs,
                    "command": " ".join(sys.argv), "resumed": last.is_file()}  # fmt: skip
    if args.phase in HELD_ASIDE:
        names = [s.image.name for s in data["val"].samples]
        record["held_aside"] = {"images": len(names), "first": names[0], "last": names[-1]}
    if args.phase in DRIVES:
        trained, held_out = DRIVES[args.phase]
        record["held_out_drive"] = {"drive": held_out, "images": len(data["val"]), "trained_on": list(trained),
                                    "train_images": len(data["train"])}  # fmt: skip
    if config.model == "difnet" and config.kernel != "identity":
        # how the transitions start, with the batch statistics training sees, on the images the
        # trained model is diagnosed on
        seed_everything(config.seed)
        fresh = build_model(**config.model_arguments(data["train"].num_classes)).to(args.device)
        small = [data["val"].class_names.index(name) for name in SMALL_CLASSES]
        record["init_transitions"] = transition_shares(
            fresh, data["val"], small, batch_statistics=True, device=args.device
        )
        del fresh
    start = time.perf_counter()
    result = train(config, dataset_overrides=data)
    record["train_seconds"] = round(time.perf_counter() - start, 1)
    record["steps"] = result.history[-1]["step"]
    record["curve"] = [{"epoch": h["epoch"], "miou": h["miou"]} for h in result.history if "miou" in h]
    split = scored_split(args.phase)
    scored = {split: data["val"]}
    if args.phase == "screen" and args.variant in INIT_VARIANTS:
        scored["val"] = CamVid(args.data_root, "val", EvalTransform(), resize=HALF_RESOLUTION)
    for name, dataset in scored.items():
        record[name] = evaluate(result.model, dataset, device=args.device, progress=False).metrics.to_dict()
    if isinstance(result.model, DifNet):
        record["diagnostics"] = diagnose(
            result.model, data["val"], SMALL_CLASSES, device=args.device
        ).to_dict()
        record["diagnostics"]["split"] = split
    record["config"] = config.to_dict()
    record["provenance"], record["segments"] = segments[-1], segments
    path = record_path(args.output, args.variant, args.seed, args.phase, args.epochs)
    path.write_text(json.dumps(record, indent=2) + "\n")
    return record


def rediagnose(args: argparse.Namespace) -> dict:
    """Recompute the diagnostics of a finished DifNet run from its `last.pt` with this commit's
    `diagnose`, on the images the run was scored on, and write them into its record with the
    commit that computed them: a diagnostic added after a run was trained reaches its record
    without training it again."""
    path = record_path(args.output, args.variant, args.seed, args.phase, args.epochs)
    if not path.is_file():
        raise SystemExit(f"no record {path}: run it first")
    record = json.loads(path.read_text())
    last = path.with_suffix("") / "last.pt"
    model = load_model(last)
    if not isinstance(model, DifNet):
        raise SystemExit(f"{last} holds a {type(model).__name__}: only a DifNet has diagnostics")
    data = phase_datasets(args.data_root, args.phase, (160, 160))
    record["diagnostics"] = {
        **diagnose(model, data["val"], SMALL_CLASSES, device=args.device).to_dict(),
        "split": scored_split(args.phase),
        "provenance": provenance(),
    }
    path.write_text(json.dumps(record, indent=2) + "\n")
    return record


def fit_images(data_root: Path, phase: str, every: int = 5) -> CamVid:
    """Every `every`-th training image the phase trains on, at the eval transform: where a
    post-processing setting is fitted, apart from the images it is scored on."""
    images = CamVid(data_root, "train", EvalTransform(), resize=HALF_RESOLUTION)
    if phase in HELD_ASIDE:
        images = with_samples(images, phase, keep=False)
    if phase in DRIVES:
        images = of_drives(
            CamVid(data_root, "trainval", EvalTransform(), resize=HALF_RESOLUTION), DRIVES[phase][0]
        )
    images.samples = images.samples[::every]
    return images


def finished_run(args: argparse.Namespace) -> tuple[Path, dict, torch.nn.Module]:
    """The record of the finished run `args` names, and its model from `last.pt` on `args.device`."""
    path = record_path(args.output, args.variant, args.seed, args.phase, args.epochs)
    if not path.is_file():
        raise SystemExit(f"no record {path}: run it first")
    return path, json.loads(path.read_text()), load_model(path.with_suffix("") / "last.pt").to(args.device)


def scored_metrics(model: torch.nn.Module, scored_on: SegmentationDataset, device: str) -> dict:
    """`model`'s metrics on `scored_on`, with the mean IoU of `SMALL_CLASSES`."""
    metrics = evaluate(model, scored_on, device=device, progress=False).metrics
    small = [scored_on.class_names.index(name) for name in SMALL_CLASSES]
    return {
        **metrics.to_dict(),
        "small_class_miou": mean_of_defined([metrics.per_class_iou[i] for i in small]),
    }


@torch.no_grad()
def refine_milliseconds(
    model: torch.nn.Module, refiner: ImageRefiner, images: SegmentationDataset, device: str
) -> float:
    """The median milliseconds `refiner` takes on one of `images` after `model`, the model's own time
    left out."""
    model.eval()
    times = []
    for image, _ in images:
        probabilities = model(image[None].to(device)).float().softmax(1)
        start = time.perf_counter()
        refiner(probabilities, image[None].to(device))
        times.append(time.perf_counter() - start)
    return round(1000 * statistics.median(times), 1)


def refine(args: argparse.Namespace) -> dict:
    """Fit a `BilateralWalk` (or, with `args.crf`, a `DenseCRF`) to a finished run's model on its
    training images (`fit_images`), then score the model with and without it where the run was
    scored, with the refinement's milliseconds per image there, and write both into its record
    (`bilateral_walk` or `dense_crf`) with the commit that computed them. With `args.widen`, the
    fitted walk's stride, steps and mu are then searched again over
    `difnet.refinement.guided_grid()`, the search `fit-guided` gives a guided DifNet's walk. For each
    of `args.tolerance`, the cheapest walk the fit puts within it of the best is scored too
    (`fastest_within`): what the walk's speed costs in mIoU where it is scored."""
    path, record, model = finished_run(args)
    fitted_on = fit_images(args.data_root, args.phase)
    start = time.perf_counter()
    widened = None
    if args.crf:
        fit = first = fit_dense_crf(model, fitted_on, device=args.device)
    else:
        fit = first = fit_bilateral_walk(model, fitted_on, bilateral_grid(), device=args.device)
        if args.widen:
            wider = [fit.walk, *(replace(fit.walk, **asdict(setting)) for setting in guided_grid())]
            widened = fit = fit_bilateral_walk(
                model, fitted_on, list(dict.fromkeys(wider)), device=args.device
            )
    scored_on = phase_datasets(args.data_root, args.phase, (160, 160))["val"]
    scores = {
        name: scored_metrics(scored, scored_on, args.device)
        for name, scored in (("model", model), ("refined", RefinedModel(model, fit.chosen)))
    }
    fastest = []
    for tolerance in [] if args.crf else args.tolerance:
        walk = cheapest_within(fit.scores, tolerance, lambda setting: setting.cost)
        refined = scored_metrics(RefinedModel(model, walk), scored_on, args.device)
        fastest.append({"tolerance": tolerance, "walk": asdict(walk), "cost_vs_chosen": walk.cost / fit.chosen.cost,
                        "refined": refined, "gain": refined["miou"] - scores["model"]["miou"],
                        "refine_ms_per_image": refine_milliseconds(model, walk, scored_on, args.device)})  # fmt: skip
    record["dense_crf" if args.crf else "bilateral_walk"] = {
        "fit": first.to_dict(),
        **({} if widened is None else {"widened": widened.to_dict()}),
        **({"fastest_within": fastest} if fastest else {}),
        "fit_images": len(fitted_on),
        "split": scored_split(args.phase),
        **scores,
        "gain": scores["refined"]["miou"] - scores["model"]["miou"],
        "refine_ms_per_image": refine_milliseconds(model, fit.chosen, scored_on, args.device),
        "threads": torch.get_num_threads(),
        "seconds": round(time.perf_counter() - start, 1),
        "provenance": provenance(),
    }
    path.write_text(json.dumps(record, indent=2) + "\n")
    return record


def fit_scalars(args: argparse.Namespace) -> dict:
    """Pick the walk-scalar setting (`difnet.diagnostics.WALK_OVERRIDES`) with the best mIoU on a
    finished DifNet run's training images (`fit_images`), and record its score and gain over the
    seed where the run was scored, read off the run's own diagnostics: the scalars chosen without
    the scored images, as the bilateral walk's setting is."""
    path, record, model = finished_run(args)
    scored = record.get("diagnostics", {})
    if "overrides" not in scored:
        raise SystemExit(f"{path} has no walk-override scores: rediagnose it first")
    if not isinstance(model, DifNet):
        raise SystemExit(f"{path.with_suffix('')} holds a {type(model).__name__}: only a DifNet walks")
    fitted_on = fit_images(args.data_root, args.phase)
    start = time.perf_counter()
    fit = diagnose(model, fitted_on, SMALL_CLASSES, device=args.device)
    setting = fit.best_override["setting"]
    record["walk_scalar_fit"] = {
        "setting": setting,
        "fit_images": len(fitted_on),
        "fit": {
            "seed": fit.miou["seed"],
            "learned": fit.miou[f"walk {len(fit.mu)}"],
            "best": fit.best_override["miou"],
        },  # fmt: skip
        "split": scored["split"],
        "miou": scored["overrides"][setting],
        "gain": scored["overrides"][setting] - scored["miou"]["seed"],
        "seconds": round(time.perf_counter() - start, 1),
        "provenance": provenance(),
    }
    path.write_text(json.dumps(record, indent=2) + "\n")
    return record


def fit_guided(args: argparse.Namespace) -> dict:
    """Pick the guided walk's stride, steps and restart weight (`difnet.refinement.guided`) by mIoU on a
    finished guided DifNet run's training images (`fit_images`), then score the model with them
    where the run was scored, against its seed read off the run's own diagnostics."""
    path, record, model = finished_run(args)
    scored = record.get("diagnostics", {})
    if "seed" not in scored.get("miou", {}):
        raise SystemExit(f"{path} has no diagnostics: rediagnose it first")
    try:
        guided_walk_of(model)
    except ValueError as error:
        raise SystemExit(f"{path.with_suffix('')}: {error}") from None
    fitted_on = fit_images(args.data_root, args.phase)
    start = time.perf_counter()
    fit = fit_guided_walk(model, fitted_on, device=args.device)
    model.set_guided_walk(**asdict(fit.setting))
    metrics = scored_metrics(
        model, phase_datasets(args.data_root, args.phase, (160, 160))["val"], args.device
    )
    record["guided_walk_fit"] = {
        "fit": fit.to_dict(),
        "fit_images": len(fitted_on),
        "split": scored["split"],
        **metrics,
        "gain": metrics["miou"] - scored["miou"]["seed"],
        "seconds": round(time.perf_counter() - start, 1),
        "provenance": provenance(),
    }
    path.write_text(json.dumps(record, indent=2) + "\n")
    return record


def record_path(output: Path, variant: str, seed: int, phase: str, epochs: int) -> Path:
    path = output / (run_name(variant, seed, phase, epochs) + ".json")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


# --- timing ------------------------------------------------------------------------------------


def step_seconds(variant: str, device: str, crop: tuple[int, int], steps: int = 10, warmup: int = 3) -> float:
    """Median seconds of one training step (forward, backward, SGD) of `variant` alone on a batch
    of 8 random crops, from random weights (a second stage's seed frozen, as it trains): what
    decides the equal-time budget."""
    config = recipe(variant, 0, "timing", 1, Path("unused"), device, DEFAULT_DATA)
    seed_everything(0)
    model = build_model(**config.model_arguments(11)).to(device).train()
    if first_stage(variant):  # a second stage trains on its frozen first stage's seed
        model.freeze_seed_branch()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    images = torch.randn(8, 3, *crop, device=device)
    labels = torch.randint(0, 11, (8, *crop), device=device)
    times = []
    for index in range(warmup + steps):
        synchronize(device)
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = training_loss(model, images, labels, config.aux_seed_weight, config.transition_loss_weight)
        loss.backward()
        optimizer.step()
        synchronize(device)
        if index >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


# --- orchestration -----------------------------------------------------------------------------


class Runs:
    """Child processes, `parallel` at a time, each one step of this script (`run` by default, or
    `refine`, `refine --crf`, `fit-guided` on a finished run), logging to a file."""

    poll_s = 5.0  # how often `wait` looks at the runs
    stop_grace_s = 30.0  # how long a run stopped at the deadline may take to exit before SIGKILL

    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.pending, self.running, self.failed = args, [], [], []

    def add(self, variant: str, seed: int, phase: str, epochs: int, step: str = "run") -> None:
        if not step_done(self.args.output, (variant, seed, phase, epochs), step):
            self.pending.append((variant, seed, phase, epochs, step))

    def command(self, variant: str, seed: int, phase: str, epochs: int, step: str = "run") -> list[str]:
        """The command line of one step of this script."""
        a = self.args
        command = [sys.executable, "-m", "benchmarks.camvid", *step.split(), "--variant", variant, "--seed",
                   str(seed), "--phase", phase, "--epochs", str(epochs), "--device", a.device, "--data-root",
                   str(a.data_root), "--output", str(a.output), "--crop", *map(str, a.crop)]  # fmt: skip
        if a.max_steps:
            command += ["--max-steps", str(a.max_steps)]
        return command

    def spawn(
        self, variant: str, seed: int, phase: str, epochs: int, step: str = "run"
    ) -> tuple[subprocess.Popen, IO[str]]:
        """Start one step writing to its log file; the process and the open log, closed once it ends."""
        record = record_path(self.args.output, variant, seed, phase, epochs)
        name = "" if step == "run" else "." + "-".join(word.lstrip("-") for word in step.split())
        log = (record.parent / f"{record.stem}{name}.log").open("w")
        threads = str(self.args.threads)
        env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        try:
            command = self.command(variant, seed, phase, epochs, step)
            return subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT), log
        except BaseException:
            log.close()
            raise

    def wait(self, deadline: float, on_tick) -> bool:  # noqa: ANN001
        """Run everything pending; False if the deadline stopped unfinished runs."""
        while self.pending or self.running:
            while self.pending and len(self.running) < self.args.parallel:
                entry = self.pending.pop(0)
                self.running.append((entry, *self.spawn(*entry)))
            time.sleep(self.poll_s)
            on_tick()
            for item in [item for item in self.running if item[1].poll() is not None]:
                self.running.remove(item)
                item[2].close()
                if item[1].returncode != 0:
                    self.failed.append(item[0])
            if time.time() > deadline:
                self.stop()
                return False
        return True

    def stop(self) -> None:
        """SIGTERM every running run and reap it (SIGKILL after `stop_grace_s`), close its log, and
        drop what is pending."""
        for _, process, _ in self.running:
            process.send_signal(signal.SIGTERM)
        for _, process, log in self.running:
            try:
                process.wait(timeout=self.stop_grace_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            log.close()
        self.running, self.pending = [], []


def seed_scores(output: Path, phase: str, variant: str, epochs: int, score: Callable[[dict], float]) -> dict:
    """`score` of each finished run of `variant` in `phase`, by seed."""
    runs = [
        json.loads(p.read_text())
        for p in (output / PHASE_FOLDERS.get(phase, phase)).glob(f"{variant}-e{epochs}-seed*.json")
    ]
    return {r["seed"]: score(r) for r in runs}


def best_of(
    output: Path, phase: str, variants: Sequence[str], epochs: int, score: Callable[[dict], float]
) -> str | None:
    """The variant with the best mean `score` in `phase` over the seeds that every variant with a
    finished run has (a candidate run on fewer seeds is compared on those); None if none finished."""
    scored = {v: s for v in variants if (s := seed_scores(output, phase, v, epochs, score))}
    shared = set.intersection(*map(set, scored.values())) if scored else set()
    if not shared:
        return None
    return max(scored, key=lambda v: statistics.mean(scored[v][seed] for seed in shared))


def select(output: Path, epochs: int = SCREEN_EPOCHS, variants: Sequence[str] = tuple(VARIANTS)) -> dict:
    """The choices the records under `output` make, as the protocol makes them, among `variants`:

    - `inits`: each model's better score-head init on val (the screen);
    - `joint`: the jointly trained verdict's pair, that baseline and the best of DifNet's init and
      its remedies on the remedy split's held-aside frames;
    - `stage_one`, `best`: the staged verdict's, the first stage the second stages freeze, the
      baseline's best rate and the second stage with the best walk gain (output minus seed) on
      those frames, over `STAGE_TWO_EPOCHS`.

    `val` plays no part after the screen. A choice no finished run makes yet is left out."""
    wanted = [v for v in VARIANTS if v in variants]
    holdout, on_val = (lambda r: r["holdout"]["miou"]), (lambda r: r["val"]["miou"])  # noqa: E731
    inits = {}
    for model in ("simdeeplab", "difnet"):
        candidates = [v for v in wanted if v in INIT_VARIANTS and VARIANTS[v][0] == model]
        if init := best_of(output, "screen", candidates, epochs, on_val):
            inits[model] = init
    joint = dict(inits)
    if "difnet" in inits:
        candidates = [inits["difnet"], *(v for v in wanted if v in REMEDIES)]
        joint["difnet"] = best_of(output, "remedy", candidates, epochs, holdout) or inits["difnet"]
    best = {}
    if rate := best_of(output, "remedy", [v for v in wanted if v in RATES], epochs, holdout):
        best["simdeeplab"] = rate
    second = [v for v in wanted if v in SECOND_STAGES]
    if stage := best_of(output, "remedy", second, STAGE_TWO_EPOCHS, lambda r: r["diagnostics"]["walk_gain"]):
        best["difnet"] = stage
    return {"inits": inits, "joint": joint, "stage_one": STAGE_ONE, "best": best}


def selection(output: Path, epochs: int = SCREEN_EPOCHS, verdict_epochs: int = VERDICT_EPOCHS,
              variants: Sequence[str] = tuple(VARIANTS)) -> dict:  # fmt: skip
    """`select`'s choices with each verdict's budget for the baseline at equal time, as
    `selection.json` holds them: the joint verdict's from the step times measured alone
    (`step_seconds.json`; left out while they are not), the staged verdict's
    `STAGED_EQUAL_TIME_EPOCHS`."""
    chosen = select(output, epochs, variants)
    joint = {"best": chosen["joint"]}
    timing = output / "step_seconds.json"
    seconds = json.loads(timing.read_text())["seconds"] if timing.is_file() else {}
    if len(chosen["joint"]) == 2 and all(v in seconds for v in chosen["joint"].values()):
        ratio = seconds[chosen["joint"]["difnet"]] / seconds[chosen["joint"]["simdeeplab"]]
        joint["equal_time_epochs"] = round(verdict_epochs * ratio)
    return {**chosen, "joint": joint, "equal_time_epochs": STAGED_EQUAL_TIME_EPOCHS}


def pack(output: Path, archive: Path | None) -> None:
    """Every record, log and log.jsonl under `output` (no weights) into `archive`, atomically."""
    if archive is None:
        return
    partial = archive.with_suffix(".partial")
    with tarfile.open(partial, "w:gz") as tar:
        for path in sorted(output.rglob("*")):
            if path.is_file() and path.suffix in (".json", ".log", ".jsonl") and "best" not in path.parts:
                tar.add(path, arcname=str(path.relative_to(output)))
    partial.replace(archive)


Run = tuple[str, int, str, int]  # variant, seed, phase, epochs
STAGES = ("screen", "remedy", "second stage", "verdict", "staged verdict")


def plan(args: argparse.Namespace) -> list[tuple[str, list[Run]]]:
    """Each stage of the protocol (`STAGES`) whose choices the records under `args.output` make so
    far, with its runs (seed by seed, among `args.variants`, in `args.phases`): the init screen; the
    remedy screen (DifNet's init and its remedies, the baseline's rates, the first stage); the second
    stages on seed 0 of the remedy split's first stages; the verdict (the joint pair at equal steps and
    at equal time, the first stage on all of train, the staged verdict's baseline at equal steps and
    at equal time, the chosen second stage on the remedy split's other seeds); and the chosen second
    stage on the verdict's first stages. A stage waiting on a choice is left out, with every later one."""
    chosen = selection(args.output, args.screen_epochs, args.verdict_epochs, args.variants)
    wanted = lambda group: [v for v in VARIANTS if v in group and v in args.variants]  # noqa: E731
    screen, verdict = list(args.screen_seeds), list(args.verdict_seeds)

    def runs(variants: Sequence[str], seeds: Sequence[int], phase: str, epochs: int) -> list[Run]:
        return [(v, seed, phase, epochs) for seed in seeds for v in variants]

    inits, joint, best = chosen["inits"], chosen["joint"], chosen["best"]
    stages = [("screen", runs(wanted(INIT_VARIANTS), screen, "screen", args.screen_epochs))]
    if "difnet" not in inits:
        return stages
    stages.append(("remedy", runs([inits["difnet"], *wanted(REMEDIES)], screen, "remedy", args.screen_epochs)
                   + runs(wanted(RATES), screen, "remedy", args.screen_epochs)
                   + runs([STAGE_ONE], screen, "remedy", STAGE_ONE_EPOCHS["remedy"])))  # fmt: skip
    stages.append(("second stage", runs(wanted(SECOND_STAGES), screen[:1], "remedy", STAGE_TWO_EPOCHS)))
    if len(joint["best"]) < 2 or len(best) < 2 or "equal_time_epochs" not in joint:
        return stages
    epochs, sim = args.verdict_epochs, joint["best"]["simdeeplab"]
    stages.append(("verdict", runs([joint["best"]["difnet"], sim], verdict, "verdict", epochs)
                   + runs([sim], verdict, "verdict", max(joint["equal_time_epochs"], epochs))
                   + runs([STAGE_ONE], verdict, "verdict", STAGE_ONE_EPOCHS["verdict"])
                   + runs([best["simdeeplab"]], verdict, "verdict", epochs)
                   + runs([best["simdeeplab"]], verdict, "verdict", max(chosen["equal_time_epochs"], epochs))
                   + runs([best["difnet"]], screen[1:], "remedy", STAGE_TWO_EPOCHS)))  # fmt: skip
    stages.append(("staged verdict", runs([best["difnet"]], verdict, "verdict", STAGE_TWO_EPOCHS)))
    return [(name, sorted(dict.fromkeys(r for r in planned if r[2] in args.phases), key=lambda r: r[1]))
            for name, planned in stages]  # fmt: skip


def has_record(output: Path, run: Run) -> bool:
    variant, seed, phase, epochs = run
    return (output / (run_name(variant, seed, phase, epochs) + ".json")).is_file()


# the key each post-processing step writes into the record of the run it refines
STEP_KEYS = {"refine": "bilateral_walk", "refine --crf": "dense_crf", "fit-guided": "guided_walk_fit"}


def step_done(output: Path, run: Run, step: str = "run") -> bool:
    """Whether `step` (`run`, or one of `STEP_KEYS`) of `run` has left its record."""
    if not has_record(output, run) or step == "run":
        return has_record(output, run)
    return STEP_KEYS[step] in json.loads((output / (run_name(*run) + ".json")).read_text())


def queue(args: argparse.Namespace) -> list[tuple[str, Run]]:
    """The runs `all` would start now, by stage: those of `plan` that have no record yet."""
    return [(stage, run) for stage, runs in plan(args) for run in runs if not has_record(args.output, run)]


def dry_run(args: argparse.Namespace) -> list[tuple[str, Run]]:
    """Print what the records choose and what `all` would queue, running nothing."""
    chosen = selection(args.output, args.screen_epochs, args.verdict_epochs, args.variants)
    queued = queue(args)
    planned = [stage for stage, _ in plan(args)]
    print("selection:", json.dumps(chosen), flush=True)
    print(f"{len(queued)} runs to queue:", *(f"  {stage}: {run_name(v, seed, phase, epochs)}"
                                            for stage, (v, seed, phase, epochs) in queued), sep="\n")  # fmt: skip
    if waiting := [stage for stage in STAGES if stage not in planned]:
        print("waiting on choices the records do not make yet:", ", ".join(waiting))
    return queued


def run_all(args: argparse.Namespace) -> None:
    """The stages of `plan` in order, each once the runs before it have finished, skipping every run
    whose record exists; the step times the joint verdict's equal-time budget needs are measured
    alone before the verdict, where they are missing. Then `selection.json`, once complete."""
    if args.dry_run:
        dry_run(args)
        return
    deadline = time.time() + 60 * args.minutes
    args.output.mkdir(parents=True, exist_ok=True)
    last_pack = [0.0]

    def tick() -> None:
        if time.time() - last_pack[0] > 30:
            pack(args.output, args.archive)
            last_pack[0] = time.time()

    runs = Runs(args)
    for stage in STAGES:
        joint = select(args.output, args.screen_epochs, args.variants)["joint"]
        if stage == "verdict" and len(joint) == 2:
            measured_step_seconds(args, [joint["simdeeplab"], joint["difnet"]])
        planned = dict(plan(args))
        if stage not in planned:
            print(f"{stage}: waiting on a choice the records do not make", flush=True)
            break
        for run in planned[stage]:
            runs.add(*run)
        if not runs.wait(deadline, tick):
            print(f"{stage}: cut by the deadline", flush=True)
            break
    chosen = selection(args.output, args.screen_epochs, args.verdict_epochs, args.variants)
    print("selected:", json.dumps(chosen), flush=True)
    if len(chosen["best"]) == 2 and "equal_time_epochs" in chosen["joint"]:
        (args.output / "selection.json").write_text(json.dumps(chosen, indent=2) + "\n")
    pack(args.output, args.archive)
    if runs.failed:
        print("failed runs:", runs.failed, flush=True)


def measured_step_seconds(args: argparse.Namespace, variants: list[str]) -> dict[str, float]:
    """Step seconds of `variants`, measured alone once and kept in step_seconds.json (rewritten only
    when one was missing)."""
    path = args.output / "step_seconds.json"
    stored = json.loads(path.read_text())["seconds"] if path.is_file() else {}
    missing = [variant for variant in variants if variant not in stored]
    for variant in missing:
        stored[variant] = step_seconds(variant, args.device, tuple(args.crop), args.timing_steps)
    if missing:
        payload = {"device": args.device, "threads": args.threads, "seconds": stored}
        path.write_text(json.dumps({**payload, "provenance": provenance()}, indent=2) + "\n")
    print("step seconds:", json.dumps(stored), flush=True)
    return stored


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments every command that reads the frames takes: where they are, where runs go."""
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--output", type=Path, default=RUNS, help="run folders and their records")


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments every command that trains or scores a model takes."""
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--crop", type=int, nargs=2, default=[160, 160], metavar=("H", "W"))
    parser.add_argument("--max-steps", type=int, help="cut every epoch to this many steps (smoke runs)")


def add_queue_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of a command that queues runs (`all`, the cross-drive verdict)."""
    parser.add_argument("--parallel", type=int, default=2, help="runs at a time")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--minutes", type=float, default=600.0, help="stop unfinished runs after this")
    parser.add_argument("--archive", type=Path, help="pack records and logs into this .tar.gz")
    parser.add_argument("--timing-steps", type=int, default=10, help="timed steps per variant")
    parser.add_argument(
        "--dry-run", action="store_true", help="print the selection and the runs it would queue"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("run", "rediagnose", "refine", "fit-scalars", "fit-guided", "all", "report", "shrink"):
        sub = commands.add_parser(name)
        add_data_arguments(sub)
        if name in ("run", "rediagnose", "refine", "fit-scalars", "fit-guided", "all"):
            add_training_arguments(sub)
        if name == "refine":
            refiner = sub.add_mutually_exclusive_group()
            refiner.add_argument(
                "--widen", action="store_true", help="then search the fitted walk's stride, steps and mu"
            )
            refiner.add_argument("--crf", action="store_true", help="fit a dense CRF instead of the walk")
            sub.add_argument(
                "--tolerance", type=float, nargs="*", default=[], metavar="MIOU",
                help="also score, for each, the cheapest walk within that much fit mIoU (a fraction) of the best",
            )  # fmt: skip
        if name in ("run", "rediagnose", "refine", "fit-scalars", "fit-guided"):
            sub.add_argument("--variant", choices=tuple(VARIANTS), required=True)
            sub.add_argument("--seed", type=int, default=0)
            sub.add_argument("--phase", choices=PHASES, required=True)
            sub.add_argument("--epochs", type=int, required=True)
        if name == "all":
            add_queue_arguments(sub)
            sub.add_argument("--variants", nargs="+", choices=tuple(VARIANTS), default=list(VARIANTS))
            sub.add_argument(
                "--phases", nargs="+", choices=(*HELD_ASIDE, "verdict"), default=[*HELD_ASIDE, "verdict"]
            )
            sub.add_argument("--screen-epochs", type=int, default=SCREEN_EPOCHS)
            sub.add_argument("--verdict-epochs", type=int, default=VERDICT_EPOCHS)
            sub.add_argument("--screen-seeds", type=int, nargs="+", default=list(SEEDS["screen"]))
            sub.add_argument("--verdict-seeds", type=int, nargs="+", default=list(SEEDS["verdict"]))
        if name == "report":
            sub.add_argument("--results", type=Path, default=RESULTS)
        if name == "shrink":
            sub.add_argument("--to", type=Path, required=True)
    args = parser.parse_args()
    if args.command == "shrink":
        shrink(args.data_root, args.to)
    elif args.command == "run":
        run_one(args)
    elif args.command == "rediagnose":
        rediagnose(args)
    elif args.command == "refine":
        refine(args)
    elif args.command == "fit-scalars":
        fit_scalars(args)
    elif args.command == "fit-guided":
        fit_guided(args)
    elif args.command == "all":
        run_all(args)
    else:
        from benchmarks.camvid_report import report

        report(args.output, args.results)


if __name__ == "__main__":
    main()
