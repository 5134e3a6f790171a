"""The CamVid experiment: DifNet-18 against Sim-DeepLab-18 with one recipe and budget, over seeds.

Every (model, seed) run trains on CamVid `train` at half resolution (240x180) with random scale,
crop and flip, from an ImageNet ResNet-18 when `../shared/weights/` holds torchvision's
checkpoint and from scratch otherwise, and is evaluated on whole `val` images after the last
epoch; a DifNet run is also diagnosed (`difnet.diagnostics`: mIoU of the seed and after each
walk, the importance map, each P_t's mean self-weight). Runs go in single-threaded child
processes, `--parallel` at a time; a run whose record exists is not repeated, so an interrupted
experiment resumes. Every run and the per-model means go to `benchmarks/results/camvid.{json,md}`.

    python -m benchmarks.camvid                          # both models, seeds 0 and 1
    python -m benchmarks.camvid --seeds 0 1 2 --parallel 1
    python -m benchmarks.camvid --model difnet --seed 0 --epochs 1 --output runs/try   # one run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks._measure import describe_machine, machine_info
from difnet.data import CamVid, EvalTransform
from difnet.diagnostics import walk_diagnostics
from difnet.evaluation import evaluate
from difnet.models import DifNet
from difnet.training import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "camvid"
RESNET18_IMAGENET = ROOT.parent / "shared" / "weights" / "resnet18-f37072fd.pth"
RESULTS = ROOT / "benchmarks" / "results"
MODELS = {"simdeeplab": "Sim-DeepLab-18", "difnet": "DifNet-18"}
HALF_RESOLUTION = (180, 240)


def recipe(args: argparse.Namespace, model: str, seed: int) -> TrainConfig:
    """The shared recipe; only `model` and `seed` differ between runs."""
    return TrainConfig(
        model=model,
        depth=18,
        pretrained_backbone=str(RESNET18_IMAGENET) if RESNET18_IMAGENET.is_file() else None,
        dataset="camvid",
        data_root=str(args.data_root),
        train_split="train",
        val_split="val",
        image_size=HALF_RESOLUTION,
        crop_size=tuple(args.crop),
        scale_range=(0.75, 1.25),
        batch_size=args.batch_size,
        epochs=args.epochs,
        lr=args.lr,
        seed=seed,
        workers=1,
        device="cpu",
        output_dir=str(run_dir(args, seed) / model),
        overwrite=True,
        eval_every=args.eval_every,
        progress=False,
    )


def run_dir(args: argparse.Namespace, seed: int) -> Path:
    return args.output / f"seed{seed}"


def record_path(args: argparse.Namespace, model: str, seed: int) -> Path:
    return run_dir(args, seed) / f"{model}.json"


def run_one(args: argparse.Namespace, model: str, seed: int) -> dict:
    """Train one model with one seed, evaluate (and diagnose) it on `val`; write its record."""
    config = recipe(args, model, seed)
    start = time.perf_counter()
    result = train(config)
    train_seconds = time.perf_counter() - start
    val = CamVid(args.data_root, "val", EvalTransform(), resize=HALF_RESOLUTION)
    evaluation = evaluate(result.model, val, progress=False)
    is_difnet = isinstance(result.model, DifNet)
    record = {
        "model": MODELS[model],
        "seed": seed,
        "initialisation": "ImageNet ResNet-18" if config.pretrained_backbone else "from scratch",
        "train_seconds": round(train_seconds, 1),
        "threads": torch.get_num_threads(),
        **evaluation.to_dict(),
        "diagnostics": walk_diagnostics(result.model, val).to_dict() if is_difnet else None,
        "history": result.history,
        "config": config.to_dict(),
    }
    record_path(args, model, seed).write_text(json.dumps(record, indent=2) + "\n")
    return record


def spawn(args: argparse.Namespace, model: str, seed: int) -> subprocess.Popen:
    """This script for one run in a single-threaded child process, logging to a file."""
    command = [sys.executable, "-m", "benchmarks.camvid", "--model", model, "--seed", str(seed),
               *forwarded(args)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    run_dir(args, seed).mkdir(parents=True, exist_ok=True)
    log = (run_dir(args, seed) / f"{model}.log").open("w")
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def forwarded(args: argparse.Namespace) -> list[str]:
    return [
        "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--lr", str(args.lr),
        "--crop", *map(str, args.crop), "--eval-every", str(args.eval_every),
        "--data-root", str(args.data_root), "--output", str(args.output),
    ]  # fmt: skip


def run_all(args: argparse.Namespace) -> None:
    """Every (model, seed) run without a record, `args.parallel` child processes at a time."""
    pending = [(model, seed) for seed in args.seeds for model in MODELS
               if not record_path(args, model, seed).is_file()]  # fmt: skip
    running: list[tuple[str, int, subprocess.Popen]] = []
    failed = []
    while pending or running:
        while pending and len(running) < args.parallel:
            model, seed = pending.pop(0)
            running.append((model, seed, spawn(args, model, seed)))
        time.sleep(5)
        for entry in [e for e in running if e[2].poll() is not None]:
            running.remove(entry)
            if entry[2].returncode != 0:
                failed.append(f"{entry[0]} seed {entry[1]}")
    if failed:
        sys.exit(f"training failed for {', '.join(failed)}; see {args.output}/seed<N>/<model>.log")


def mean_of(records: list[dict], key: str) -> float:
    return statistics.mean(r["metrics"][key] for r in records)


def markdown(records: list[dict]) -> str:
    """Every run, then per-class IoU and the summary metrics of each model's mean, in %."""
    lines = [
        "| model | seed | mIoU | pixel acc. | train min | seed -> walk 1..5 mIoU | mean P_t[i,i], levels 0-4 "
        "| mu | beta |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        d = r.get("diagnostics")
        cells = ["-"] * 4
        if d:
            cells = [
                " / ".join(f"{100 * v:.1f}" for v in d["miou"].values()),
                ", ".join(f"{v:.2f}" for v in d["mean_self_weight"]),
                ", ".join(f"{v:.2f}" for v in d["mu"]),
                ", ".join(f"{v:.2f}" for v in d["beta"]),
            ]
        lines.append(
            f"| {r['model']} | {r['seed']} | {100 * r['metrics']['miou']:.1f} "
            f"| {100 * r['metrics']['pixel_accuracy']:.1f} | {r['train_seconds'] / 60:.1f} | "
            + " | ".join(cells)
            + " |"
        )
    by_model = {name: [r for r in records if r["model"] == name] for name in MODELS.values()}
    by_model = {name: runs for name, runs in by_model.items() if runs}
    names = records[0]["class_names"]
    lines += ["", "Means over seeds:", "", "| class | " + " | ".join(
        f"{name} ({len(runs)} seeds)" for name, runs in by_model.items()) + " |",
        "|---" * (len(by_model) + 1) + "|"]  # fmt: skip
    for index, name in enumerate(names):
        cells = []
        for runs in by_model.values():
            values = [r["metrics"]["per_class_iou"][index] for r in runs]
            cells.append("-" if None in values else f"{100 * statistics.mean(values):.1f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for label, key in (("**mIoU**", "miou"), ("pixel accuracy", "pixel_accuracy"),
                       ("mean class accuracy", "mean_class_accuracy")):  # fmt: skip
        lines.append(
            f"| {label} | "
            + " | ".join(f"{100 * mean_of(runs, key):.1f}" for runs in by_model.values())
            + " |"
        )
    config = records[0]["config"]
    lines += [
        "",
        f"Recipe: {config['epochs']} epochs, batch {config['batch_size']}, crops "
        f"{config['crop_size'][0]}x{config['crop_size'][1]} of 240x180 images, scale "
        f"{config['scale_range'][0]}-{config['scale_range'][1]}, lr {config['lr']} for every "
        f"parameter, poly 0.9, weight decay {config['weight_decay']}; "
        f"{records[0]['initialisation']}; one thread per run. {describe_machine(machine_info())}",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", choices=tuple(MODELS), help="train only this model with --seed, in this process"
    )
    parser.add_argument("--seed", type=int, default=0, help="the seed of a single --model run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--parallel", type=int, default=2, help="runs at a time, one thread each")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--lr",
        type=float,
        default=0.01,
        help="one rate for every parameter, as the authors; from scratch 0.01 "
        "rather than their 2.5e-3 for fine-tuning ImageNet weights",
    )
    parser.add_argument("--crop", type=int, nargs=2, default=[160, 160], metavar=("H", "W"))
    parser.add_argument("--eval-every", type=int, default=4)
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--output", type=Path, default=ROOT / "runs" / "camvid")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for camvid.json/.md")
    args = parser.parse_args()
    if not (args.data_root / "train.txt").is_file():
        sys.exit(f"CamVid not found at {args.data_root}: pass --data-root (the SegNet tutorial layout)")
    if args.model:
        run_dir(args, args.seed).mkdir(parents=True, exist_ok=True)
        run_one(args, args.model, args.seed)
        return
    start = time.perf_counter()
    run_all(args)
    records = [json.loads(record_path(args, model, seed).read_text())
               for seed in args.seeds for model in MODELS]  # fmt: skip
    args.results.mkdir(parents=True, exist_ok=True)
    summary = {
        "machine": machine_info(),
        "wall_seconds_of_this_invocation": round(time.perf_counter() - start, 1),
        "means": {
            name: {
                key: mean_of([r for r in records if r["model"] == name], key)
                for key in ("miou", "pixel_accuracy", "mean_class_accuracy")
            }
            for name in MODELS.values()
        },  # fmt: skip
        "runs": records,
    }
    (args.results / "camvid.json").write_text(json.dumps(summary, indent=2) + "\n")
    (args.results / "camvid.md").write_text(markdown(records))
    print(markdown(records))


if __name__ == "__main__":
    main()
