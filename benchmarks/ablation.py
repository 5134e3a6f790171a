"""The walk-fix ablation on SyntheticShapes: which change lets DifNet's walks learn from scratch.

Every variant trains with the demo's recipe (`difnet.demo.DemoConfig`) at 300 steps over 400
scenes for each seed,
is evaluated on the held-out scenes, and, for DifNet, diagnosed (`difnet.diagnostics`): mIoU
of the seed and after each walk, mean self-weight of each P_t, learned mu_t / beta_t. Runs are
appended to the JSON as they finish, so an interrupted ablation resumes where it stopped.

    python -m benchmarks.ablation                       # every variant, seeds 0 and 1
    python -m benchmarks.ablation --variants simdeeplab psi-scaled --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from benchmarks._measure import RESULTS_DIR, describe_machine, machine_info
from difnet.demo import DemoConfig, demo_datasets
from difnet.diagnostics import diagnose
from difnet.evaluation import evaluate
from difnet.models import DifNet
from difnet.training import train

ABLATION_STEPS, ABLATION_SCENES = 300, 400  # the demo's budget when the ablation was run

VARIANTS: dict[str, tuple[str, dict]] = {
    "simdeeplab": ("Sim-DeepLab-18", {"model": "simdeeplab"}),
    "authors": ("DifNet-18, authors' init (Psi BN scale 1)", {"psi_scale_init": 1.0}),
    "psi-scaled": ("DifNet-18, Psi BN scale 64^-1/4 (default)", {}),
    "psi-scaled-walk-lr": (
        "DifNet-18, Psi BN scale 64^-1/4, walks at 30x lr without decay",
        {"walk_lr_mult": 30.0, "walk_weight_decay": 0.0},
    ),
    "stride4": (
        "DifNet-18, authors' init, diffusion stride 4",
        {"psi_scale_init": 1.0, "diffusion_stride": 4},
    ),
}


def run(variant: str, seed: int, demo: DemoConfig) -> dict:
    """Train and evaluate one variant with one seed; the record of the run."""
    name, overrides = VARIANTS[variant]
    demo = replace(demo, seed=seed, output_dir=demo.output_dir / f"{variant}-seed{seed}", overwrite=True)
    overrides = {"model": "difnet", **overrides}
    config = replace(demo.train_config(overrides.pop("model")), progress=False, **overrides)
    train_set, val_set = demo_datasets(demo)
    start = time.perf_counter()
    torch.manual_seed(seed)
    model = train(config, dataset_overrides={"train": train_set, "val": val_set}).model
    seconds = time.perf_counter() - start
    record = {
        "variant": variant, "name": name, "seed": seed, "train_seconds": round(seconds, 1),
        "miou": evaluate(model, val_set, progress=False).metrics.miou,
        "threads": torch.get_num_threads(), "config": config.to_dict(),
    }  # fmt: skip
    if isinstance(model, DifNet):
        record["diagnostics"] = diagnose(model, val_set).to_dict()
    return record


def markdown(records: list[dict], demo: DemoConfig) -> str:
    """Every run, then the mean and spread of each variant's mIoU, in %."""
    lines = [
        "| variant | seed | mIoU | seed mIoU -> after walk 5 | mean self-weight P_t[i,i], levels 0-4 "
        "| mu | beta | train s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        d = r.get("diagnostics")
        stages = f"{100 * d['miou']['seed']:.1f} -> {100 * d['miou']['walk 5']:.1f}" if d else "-"
        weights = ", ".join(f"{v:.2f}" for v in d["mean_self_weight"]) if d else "-"
        mu = ", ".join(f"{v:.2f}" for v in d["mu"]) if d else "-"
        beta = ", ".join(f"{v:.2f}" for v in d["beta"]) if d else "-"
        lines.append(
            f"| {r['name']} | {r['seed']} | {100 * r['miou']:.1f} | {stages} | {weights} | {mu} "
            f"| {beta} | {r['train_seconds']:.0f} |"
        )
    lines += ["", "| variant | runs | mean mIoU | min | max |", "|---|---|---|---|---|"]
    for variant, (name, _) in VARIANTS.items():
        scores = [100 * r["miou"] for r in records if r["variant"] == variant]
        if scores:
            lines.append(
                f"| {name} | {len(scores)} | {statistics.mean(scores):.1f} | {min(scores):.1f} "
                f"| {max(scores):.1f} |"
            )
    lines += [
        "",
        f"SyntheticShapes {demo.size}x{demo.size}, {demo.num_classes} classes, {demo.steps} steps "
        f"of batch {demo.batch_size}, lr {demo.lr}, {demo.training_scenes} training and "
        f"{demo.val_images} held-out scenes per seed. {describe_machine(machine_info())}",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variants", nargs="+", choices=tuple(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--steps", type=int, default=ABLATION_STEPS)
    parser.add_argument("--output", type=Path, default=Path("runs") / "ablation")
    parser.add_argument("--results", type=Path, default=RESULTS_DIR / "ablation.json")
    args = parser.parse_args()
    demo = DemoConfig(output_dir=args.output, steps=args.steps, train_images=ABLATION_SCENES)
    records = json.loads(args.results.read_text())["runs"] if args.results.is_file() else []
    done = {(r["variant"], r["seed"]) for r in records}
    for seed in args.seeds:
        for variant in args.variants:
            if (variant, seed) in done:
                continue
            records.append(run(variant, seed, demo))
            print(f"{variant} seed {seed}: mIoU {100 * records[-1]['miou']:.1f}", flush=True)
            args.results.write_text(json.dumps({"machine": machine_info(), "runs": records}, indent=2) + "\n")
            args.results.with_suffix(".md").write_text(markdown(records, demo))
    print(markdown(records, demo))


if __name__ == "__main__":
    main()
