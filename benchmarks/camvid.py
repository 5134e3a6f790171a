"""The CamVid experiment: DifNet-18 against Sim-DeepLab-18 with one recipe, seed and budget.

Both models train on CamVid `train` at half resolution (240x180) with random scale, crop and
flip, from an ImageNet ResNet-18 when `../shared/weights/` holds torchvision's checkpoint and
from scratch otherwise, and are evaluated on whole `val` images after the last epoch. By
default the two runs go in parallel processes of one thread each, so they share the machine
evenly. Results (per-class IoU, mIoU, pixel accuracy, wall time, learned mu_t/beta_t, the
validation history) go to `benchmarks/results/camvid.{json,md}`.

    python -m benchmarks.camvid                        # both models, about an hour on 2 cores
    python -m benchmarks.camvid --model difnet --epochs 1 --output runs/try
    python -m benchmarks.camvid --stages               # then: mIoU after each walk, M's statistics
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks._measure import describe_machine, machine_info
from difnet.data import CamVid, EvalTransform
from difnet.diffusion import transition_matrix
from difnet.evaluation import evaluate
from difnet.metrics import ConfusionMatrix
from difnet.models import DifNet
from difnet.models.heads import upsample
from difnet.training import TrainConfig, load_model, train

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "camvid"
RESNET18_IMAGENET = ROOT.parent / "shared" / "weights" / "resnet18-f37072fd.pth"
RESULTS = ROOT / "benchmarks" / "results"
MODELS = {"simdeeplab": "Sim-DeepLab-18", "difnet": "DifNet-18"}
HALF_RESOLUTION = (180, 240)


def recipe(args: argparse.Namespace, model: str) -> TrainConfig:
    """The shared recipe; only `model` differs between the two runs."""
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
        head_lr_mult=args.head_lr_mult,
        seed=args.seed,
        workers=1,
        device="cpu",
        output_dir=str(args.output / model),
        overwrite=True,
        eval_every=args.eval_every,
        progress=False,
    )


def run_one(args: argparse.Namespace, model: str) -> dict:
    """Train one model, evaluate its final weights on `val`, write and return its record."""
    config = recipe(args, model)
    start = time.perf_counter()
    result = train(config)
    train_seconds = time.perf_counter() - start
    val = CamVid(args.data_root, "val", EvalTransform(), resize=HALF_RESOLUTION)
    evaluation = evaluate(result.model, val, progress=False)
    record = {
        "model": MODELS[model],
        "initialisation": "ImageNet ResNet-18" if config.pretrained_backbone else "from scratch",
        "train_seconds": round(train_seconds, 1),
        "threads": torch.get_num_threads(),
        **evaluation.to_dict(),
        "walk_parameters": result.model.walk_parameters() if isinstance(result.model, DifNet) else None,
        "history": result.history,
        "config": config.to_dict(),
    }
    (args.output / f"{model}.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def spawn(args: argparse.Namespace, model: str) -> subprocess.Popen:
    """This script for one model in a single-threaded child process, logging to a file."""
    command = [sys.executable, "-m", "benchmarks.camvid", "--model", model, *forwarded(args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    log = (args.output / f"{model}.log").open("w")
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def forwarded(args: argparse.Namespace) -> list[str]:
    return [
        "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--lr", str(args.lr),
        "--head-lr-mult", str(args.head_lr_mult),
        "--crop", *map(str, args.crop), "--seed", str(args.seed), "--eval-every", str(args.eval_every),
        "--data-root", str(args.data_root), "--output", str(args.output),
    ]  # fmt: skip


def markdown(records: list[dict], wall_seconds: float) -> str:
    """Per-class IoU and the summary metrics of both models side by side, in %."""
    names = records[0]["class_names"]
    lines = ["| class | " + " | ".join(r["model"] for r in records) + " |", "|---" * (len(records) + 1) + "|"]
    for index, name in enumerate(names):
        cells = [r["metrics"]["per_class_iou"][index] for r in records]
        lines.append(f"| {name} | " + " | ".join("-" if c is None else f"{100 * c:.1f}" for c in cells) + " |")
    for label, key in (("**mIoU**", "miou"), ("pixel accuracy", "pixel_accuracy"),
                       ("mean class accuracy", "mean_class_accuracy")):
        lines.append(f"| {label} | " + " | ".join(f"{100 * r['metrics'][key]:.1f}" for r in records) + " |")
    lines.append("| train time (min) | " + " | ".join(f"{r['train_seconds'] / 60:.1f}" for r in records) + " |")
    difnet = next(r for r in records if r["walk_parameters"])
    walks = difnet["walk_parameters"]
    lines += [
        "",
        f"Learned walk weights of DifNet-18 (walks 1-{len(walks['mu'])}):",
        "",
        "| | " + " | ".join(f"walk {t + 1}" for t in range(len(walks["mu"]))) + " |",
        "|---" * (len(walks["mu"]) + 1) + "|",
        "| mu | " + " | ".join(f"{v:.3f}" for v in walks["mu"]) + " |",
        "| beta | " + " | ".join(f"{v:.3f}" for v in walks["beta"]) + " |",
        "",
        f"Validation mIoU during training: "
        + "; ".join(
            f"{r['model']}: " + ", ".join(f"epoch {h['epoch']} {100 * h['miou']:.1f}" for h in r["history"] if "miou" in h)
            for r in records
        ),
        "",
        f"Initialisation: {records[0]['initialisation']}. Wall time of the whole experiment "
        f"{wall_seconds / 60:.1f} min. {describe_machine(machine_info())}",
    ]
    return "\n".join(lines) + "\n"


@torch.no_grad()
def walk_stages(checkpoint: Path, data_root: Path) -> dict:
    """Val mIoU of the seed's argmax and of each walk's output, the importance map's statistics
    and each P_t's mean self-weight P_t[i, i], for a trained DifNet: whether the walks help,
    whether M collapsed, and whether the P_t are near the identity (walks that do not mix)."""
    model, _ = load_model(checkpoint)
    val = CamVid(data_root, "val", EvalTransform(), resize=HALF_RESOLUTION)
    names = ["seed", *(f"walk {t}" for t in range(1, 6))]
    matrices = {name: ConfusionMatrix(val.num_classes) for name in names}
    importance, self_weights = [], []
    for index in range(len(val)):
        image, label = val[index]
        out = model.forward_intermediates(image[None])
        features, _ = model._diffusion_features(model.similarity_branch(image[None]))
        self_weights.append([float(transition_matrix(f).diagonal(dim1=1, dim2=2).mean()) for f in features])
        for name, maps in zip(names, [out.seed, *out.walks], strict=True):
            matrices[name].update(upsample(maps, label.shape).argmax(1)[0], label)
        importance.append(out.importance.flatten())
    importance = torch.cat(importance)
    return {
        "miou": {name: matrix.compute().miou for name, matrix in matrices.items()},
        "importance": {
            "mean": float(importance.mean()), "min": float(importance.min()),
            "max": float(importance.max()), "fraction_below_0.05": float((importance < 0.05).float().mean()),
        },
        "mean_self_weight": torch.tensor(self_weights).mean(0).tolist(),
    }


def stages_markdown(stages: dict) -> str:
    """The per-stage val mIoU and the importance map's statistics as markdown."""
    names = list(stages["miou"])
    m = stages["importance"]
    return "\n".join([
        "| | " + " | ".join(names) + " |",
        "|---" * (len(names) + 1) + "|",
        "| val mIoU (%) | " + " | ".join(f"{100 * v:.1f}" for v in stages["miou"].values()) + " |",
        "",
        f"Importance map M over val: mean {m['mean']:.3f}, min {m['min']:.3f}, max {m['max']:.3f}, "
        f"{100 * m['fraction_below_0.05']:.1f}% of nodes below 0.05.",
        "",
        "Mean self-weight P_t[i, i] of levels 0-4 (1 = the walk leaves y unchanged): "
        + ", ".join(f"{v:.3f}" for v in stages["mean_self_weight"]) + ".",
    ]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=tuple(MODELS), help="train only this model, in this process")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--head-lr-mult", type=float, default=1.0,
                        help="from scratch, the paper's 10x let the scores diverge and DifNet's M collapse")
    parser.add_argument("--crop", type=int, nargs=2, default=[160, 160], metavar=("H", "W"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-every", type=int, default=4)
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--output", type=Path, default=ROOT / "runs" / "camvid")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for camvid.json/.md")
    parser.add_argument("--stages", action="store_true",
                        help="only analyse the trained DifNet: val mIoU after each walk, M's statistics")
    args = parser.parse_args()
    if not (args.data_root / "train.txt").is_file():
        sys.exit(f"CamVid not found at {args.data_root}: pass --data-root (the SegNet tutorial layout)")
    args.output.mkdir(parents=True, exist_ok=True)
    if args.stages:
        stages = walk_stages(args.output / "difnet" / "last.pt", args.data_root)
        (args.results / "camvid_stages.json").write_text(json.dumps(stages, indent=2) + "\n")
        (args.results / "camvid_stages.md").write_text(stages_markdown(stages))
        print(stages_markdown(stages))
        return
    if args.model:
        run_one(args, args.model)
        return
    start = time.perf_counter()
    children = {model: spawn(args, model) for model in MODELS}
    failed = [model for model, child in children.items() if child.wait() != 0]
    if failed:
        sys.exit(f"training failed for {', '.join(failed)}; see {args.output}/<model>.log")
    wall = time.perf_counter() - start
    records = [json.loads((args.output / f"{model}.json").read_text()) for model in MODELS]
    args.results.mkdir(parents=True, exist_ok=True)
    summary = {"machine": machine_info(), "wall_seconds": round(wall, 1), "runs": records}
    (args.results / "camvid.json").write_text(json.dumps(summary, indent=2) + "\n")
    (args.results / "camvid.md").write_text(markdown(records, wall))
    print(markdown(records, wall))


if __name__ == "__main__":
    main()
