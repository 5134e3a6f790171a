"""Tables of the staged walk experiments on CamVid (`benchmarks.camvid`, variants `seed-*`, `walk-*`,
`sim-lr*`) from their run records: the first-stage seeds, the second-stage screen scored by the
walk gain, the baseline's rate search, the control, the walk scalars picked on training frames,
and each run with and without a fitted bilateral walk (`difnet.refinement`). Every table lists the commits behind it.
The verdict's learning curves go beside it (the control, the rated baseline, each second stage).

    python -m benchmarks.camvid_walks --output /work/runs/camvid   # writes results/camvid_walks.md and .png
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path

from benchmarks.camvid import RESULTS, RUNS
from benchmarks.camvid_report import curves
from benchmarks.camvid_variants import SMALL_CLASSES, STAGE_ONE, STAGE_ONE_EPOCHS
from difnet.data.camvid import CAMVID_CLASSES
from difnet.diagnostics import GUIDED_SEED_STAGE, GUIDED_STAGE

RERUNS = "{phase}/reruns"  # the records of runs made again where their weights were gone


def load(output: Path, phase: str, prefix: str, suffix: str = "") -> dict[str, list[dict]]:
    """The records of `phase` (a folder under `output`) whose variant starts with `prefix`, by
    variant (named with `suffix`), in seed order."""
    groups: dict[str, list[dict]] = {}
    for path in sorted((output / phase).glob(f"{prefix}*.json")):
        record = json.loads(path.read_text())
        groups.setdefault(record["variant"] + f"-e{record['epochs']}{suffix}", []).append(record)
    return {name: sorted(runs, key=lambda r: r["seed"]) for name, runs in sorted(groups.items())}


def pct(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{100 * value:+.1f}" if signed else f"{100 * value:.1f}"


def mean(values: Sequence[float]) -> float | None:
    return statistics.mean(values) if values else None


def small_miou(per_class: list[float | None], names: list[str]) -> float | None:
    """Mean IoU over the small classes present (absent ones are skipped, as mIoU skips them)."""
    present = [per_class[names.index(n)] for n in SMALL_CLASSES if per_class[names.index(n)] is not None]
    return statistics.mean(present) if present else None


def commits(runs: Sequence[dict]) -> str:
    return ", ".join(sorted({r["provenance"]["commit"][:7] for r in runs}))


def minutes(runs: Sequence[dict]) -> str:
    return " / ".join(f"{r['train_seconds'] / 60:.0f}" for r in runs)


def table(header: Sequence[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|---" * len(header) + "|",
        *("| " + " | ".join(r) + " |" for r in rows),
    ]


def levels(values: Sequence[float | None] | None) -> str:
    return "-" if values is None else ", ".join("-" if v is None else f"{v:.2f}" for v in values)


def output_stage(diagnostics: dict) -> str:
    """The stage that is the model's output: the last walk, or the guided walk after it."""
    stages = diagnostics["miou"]
    return (
        GUIDED_STAGE
        if GUIDED_STAGE in stages
        else [stage for stage in stages if stage.startswith("walk ")][-1]
    )


def error_shares(diagnostics: dict) -> str:
    """At the nodes the seed gets wrong, per level: share to the true class / to the seed's class
    ("-" for records written before the diagnostics kept them)."""
    true, chosen = diagnostics.get("seed_error_share"), diagnostics.get("seed_error_seed_share")
    if true is None or chosen is None:
        return "-"
    return ", ".join(levels([t]) + " / " + levels([c]) for t, c in zip(true, chosen, strict=True))


def screen_rows(groups: dict[str, list[dict]], names: list[str]) -> list[list[str]]:
    """One row per second-stage candidate: the walk gain per seed and its mean, the best override,
    the small classes from seed to walk 5, the in-class share, the shares at the seed's errors and
    the self-weight (seed 0)."""
    rows = []
    for variant, runs in groups.items():
        diagnostics = [r["diagnostics"] for r in runs]
        gains = [d["walk_gain"] for d in diagnostics]
        small: Callable[[str | None], float | None] = lambda stage: mean(  # noqa: E731
            [v for d in diagnostics
             if (v := small_miou(d["per_class_iou"][stage or output_stage(d)], names)) is not None]
        )  # fmt: skip
        best = diagnostics[0]["best_override"]
        rows.append([
            variant, " / ".join(pct(d["miou"]["seed"]) for d in diagnostics),
            " / ".join(pct(g, signed=True) for g in gains), f"**{pct(mean(gains), signed=True)}**",
            f"{best['setting']} ({pct(best['gain'], signed=True)})",
            f"{pct(small('seed'))} -> {pct(small(None))}",
            levels(diagnostics[0]["in_class_share"]), error_shares(diagnostics[0]),
            levels(diagnostics[0]["mean_self_weight"]),
            " / ".join(f"{min(d['beta']):.2f}-{max(d['beta']):.2f}" for d in diagnostics),
            minutes(runs), commits(runs),
        ])  # fmt: skip
    return rows


def bilateral_rows(groups: dict[str, list[dict]]) -> list[list[str]]:
    """One row per run that `benchmarks.camvid refine` scored with and without a bilateral walk
    (with `--widen`, its stride is named too)."""
    rows = []
    for name, runs in groups.items():
        for r in runs:
            if "bilateral_walk" not in r:
                continue
            walk = r["bilateral_walk"]
            fitted = walk.get("widened", walk["fit"])["walk"]  # the wider search's choice, if it ran
            keys = ("stride", "steps", "colour_sigma", "position_sigma", "mu") if "widened" in walk else (
                "steps", "colour_sigma", "position_sigma", "mu")  # fmt: skip
            setting = ", ".join(f"{key} {fitted[key]}" for key in keys)
            rows.append([name, str(r["seed"]), pct(walk["model"]["miou"]), pct(walk["refined"]["miou"]),
                         f"**{pct(walk['gain'], signed=True)}**",
                         f"{pct(walk['model']['small_class_miou'])} -> {pct(walk['refined']['small_class_miou'])}",
                         setting, f"{walk['seconds']:.0f}", walk["provenance"]["commit"][:7]])  # fmt: skip
    return rows


def val_rows(groups: dict[str, list[dict]], names: list[str]) -> list[list[str]]:
    """One row per verdict configuration (the control's, the baseline's): val mIoU per seed and
    its mean, the small classes, seed 0's curve, the training minutes."""
    return [
        [v, " / ".join(pct(r["val"]["miou"]) for r in runs), pct(mean([r["val"]["miou"] for r in runs])),
         " / ".join(pct(small_miou(r["val"]["per_class_iou"], names)) for r in runs),
         ", ".join(pct(c["miou"]) for c in runs[0]["curve"]), minutes(runs), commits(runs)]
        for v, runs in groups.items()
    ]  # fmt: skip


def staged_rows(
    staged: dict[str, list[dict]], control: list[dict], baselines: dict[str, list[dict]], names: list[str]
) -> list[list[str]]:
    """One row per second-stage candidate of the verdict: its walk gain on val per seed, the small
    classes, its lead over each baseline, and the minutes of both stages against the baseline's."""
    stage_one = {r["seed"]: r["train_seconds"] for r in control}
    rows = []
    for variant, runs in staged.items():
        diagnostics = [r["diagnostics"] for r in runs]
        gains = [d["walk_gain"] for d in diagnostics]
        model = mean([r["val"]["miou"] for r in runs])
        seconds = mean([stage_one[r["seed"]] + r["train_seconds"] for r in runs if r["seed"] in stage_one])
        leads = "; ".join(
            f"{name} {pct(model - mean([b['val']['miou'] for b in base]), signed=True)} "
            f"({len(runs)} seeds against {len(base)}; {seconds / mean([b['train_seconds'] for b in base]):.2f}x its time)"
            for name, base in baselines.items()
        )
        small = [
            f"{pct(small_miou(d['per_class_iou']['seed'], names))} -> "
            f"{pct(small_miou(d['per_class_iou'][output_stage(d)], names))}"
            for d in diagnostics
        ]
        rows.append([
            variant, " / ".join(pct(d["miou"]["seed"]) for d in diagnostics),
            " / ".join(pct(r["val"]["miou"]) for r in runs),
            " / ".join(pct(g, signed=True) for g in gains), f"**{pct(mean(gains), signed=True)}**",
            " / ".join(small), f"{diagnostics[0]['best_override']['setting']} "
            f"({pct(diagnostics[0]['best_override']['gain'], signed=True)})",
            leads, minutes(runs), commits(runs),
        ])  # fmt: skip
    return rows


def scalar_fit_rows(groups: dict[str, list[dict]], scored_on: str) -> list[list[str]]:
    """One row per run that `benchmarks.camvid fit-scalars` gave walk scalars picked on its
    training frames: the gain over the seed with the learned and with the picked scalars, where the
    run was scored and on the frames they were picked on."""
    rows = []
    for name, runs in groups.items():
        for r in runs:
            if "walk_scalar_fit" not in r:
                continue
            fit, scored = r["walk_scalar_fit"], r["diagnostics"]
            on_fit = fit["fit"]
            rows.append([name, scored_on, str(r["seed"]), pct(scored["miou"]["seed"]),
                         pct(scored["walk_gain"], signed=True),
                         fit["setting"], f"**{pct(fit['gain'], signed=True)}**", pct(on_fit["seed"]),
                         pct(on_fit["learned"] - on_fit["seed"], signed=True),
                         pct(on_fit["best"] - on_fit["seed"], signed=True), f"{fit['seconds']:.0f}",
                         fit["provenance"]["commit"][:7]])  # fmt: skip
    return rows


def guided_rows(groups: dict[str, list[dict]], scored_on: str) -> list[list[str]]:
    """One row per run whose cascade ends with a guided walk: the seed, walk 5, the guided walk on
    the seed alone and after walk 5 (the output), and what each adds to the seed."""
    rows = []
    for name, runs in groups.items():
        for r in runs:
            miou = r["diagnostics"]["miou"]
            if GUIDED_STAGE not in miou:
                continue
            seed, on_seed = miou["seed"], miou.get(GUIDED_SEED_STAGE)  # older records lack it
            rows.append([name, scored_on, str(r["seed"]), pct(seed), pct(miou["walk 5"]), pct(on_seed),
                         pct(miou[GUIDED_STAGE]), pct(miou["walk 5"] - seed, signed=True),
                         "-" if on_seed is None else pct(on_seed - seed, signed=True),
                         f"**{pct(miou[GUIDED_STAGE] - seed, signed=True)}**", r["provenance"]["commit"][:7]])  # fmt: skip
    return rows


def guided_fit_rows(groups: dict[str, list[dict]], scored_on: str) -> list[list[str]]:
    """One row per run that `benchmarks.camvid fit-guided` gave a guided-walk setting picked on its
    training frames: the walk gain with the learned setting and with the picked one, and the small
    classes, where the run was scored and on the frames the setting was picked on."""
    rows = []
    for name, runs in groups.items():
        for r in runs:
            if "guided_walk_fit" not in r:
                continue
            fit, scored = r["guided_walk_fit"], r["diagnostics"]
            setting, tried = fit["fit"]["setting"], fit["fit"]
            small_seed = scored["small_class_miou"]["seed"]
            rows.append([name, scored_on, str(r["seed"]), pct(scored["miou"]["seed"]),
                         pct(scored["walk_gain"], signed=True),
                         f"stride {setting['stride']}, {setting['steps']} steps, mu {setting['mu']:g}",
                         pct(fit["miou"]), f"**{pct(fit['gain'], signed=True)}**",
                         f"{pct(small_seed)} -> {pct(fit['small_class_miou'])}",
                         pct(tried["best_miou"] - tried["model_miou"], signed=True), f"{fit['seconds']:.0f}",
                         fit["provenance"]["commit"][:7]])  # fmt: skip
    return rows


def per_class_table(groups: dict[str, list[dict]], names: list[str]) -> list[str]:
    """Val IoU per class of each configuration of `groups`, the mean over its seeds (classes a
    seed never scores are left out of that seed's mean), and their mIoU."""
    columns = list(groups)

    def class_mean(runs: list[dict], index: int) -> float | None:
        return mean([v for r in runs if (v := r["val"]["per_class_iou"][index]) is not None])

    rows = [[name, *(pct(class_mean(groups[c], i)) for c in columns)] for i, name in enumerate(names)]
    rows.append(["**mIoU**", *(f"**{pct(mean([r['val']['miou'] for r in groups[c]]))}**" for c in columns)])
    header = ["class", *(f"{c} ({len(groups[c])} seeds)" for c in columns)]
    return ["", "## Per class on val: the control, the staged DifNet and the baseline (means over seeds)", "",
            *table(header, rows)]  # fmt: skip


def second_stage_curves(staged: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """Each second stage's val curve drawn on from the first stage it froze: its seed's val score at
    the first stage's last epoch, then its own epochs counted after it."""
    start = STAGE_ONE_EPOCHS["verdict"]
    return {
        f"{name} (second stage)": [
            {"curve": [{"epoch": start, "miou": r["diagnostics"]["miou"]["seed"]},
                       *({"epoch": start + p["epoch"], "miou": p["miou"]} for p in r["curve"])]}
            for r in runs
        ]
        for name, runs in staged.items()
    }  # fmt: skip


def bilateral_table(scored_on: str, groups: dict[str, list[dict]]) -> list[str]:
    """The section listing each run of `groups` scored with and without its fitted bilateral walk."""
    return [
        "", f"## The bilateral walk: fitted on every 5th training frame, scored on {scored_on}", "",
        *table(["run", "seed", "model mIoU", "with the walk", "gain", "small classes model -> walk",
                "fitted setting", "fit s", "commit"], bilateral_rows(groups)),
    ]  # fmt: skip


def report(output: Path, results: Path) -> Path:
    """Write `camvid_walks.md` under `results` from the records under `output`; returns its path."""
    # first stages run again where their weights were gone, for later second stages
    stage_one = {
        **load(output, "remedy", STAGE_ONE),
        **load(output, RERUNS.format(phase="remedy"), STAGE_ONE, " (rerun)"),
    }
    screen = load(output, "remedy", "walk-")
    rates = load(output, "remedy", "sim-lr")
    first_control = load(output, "verdict", STAGE_ONE)  # the seeds of the staged verdicts' times
    control = {**first_control, **load(output, RERUNS.format(phase="verdict"), STAGE_ONE, " (rerun)")}
    staged = load(output, "verdict", "walk-")
    baselines = {
        **load(output, "verdict", "sim-"),
        **load(output, RERUNS.format(phase="verdict"), "sim-", " (rerun)"),
    }
    names = list(CAMVID_CLASSES)
    lines = ["# CamVid: staged walks, the baseline's rate and the control", ""]
    lines += ["## First stage (the seed alone: every P_t = I), 8 epochs on the remedy split", ""]
    lines += table(
        ["run", "held-aside mIoU per seed", "small-class mIoU", "train min", "commit"],
        [
            [
                v,
                " / ".join(pct(r["holdout"]["miou"]) for r in runs),
                " / ".join(pct(small_miou(r["holdout"]["per_class_iou"], names)) for r in runs),
                minutes(runs),
                commits(runs),
            ]
            for v, runs in stage_one.items()
        ],  # fmt: skip
    )
    lines += [
        "",
        "## Second stage: the screen (walk gain = walk 5 minus the seed, on the held-aside frames)",
        "",
    ]
    lines += table(
        ["candidate", "seed mIoU per seed", "walk gain per seed", "mean gain", "best override (seed 0)",
         "small classes seed -> walk 5", "in-class share, levels 0-4 (seed 0)",
         "at the seed's errors: share to true / to seed's class (seed 0)", "self-weight (seed 0)",
         "beta range", "train min", "commit"],
        screen_rows(screen, names),
    )  # fmt: skip
    lines += ["", "## Sim-DeepLab-18's rate search, 8 epochs on the remedy split", ""]
    lines += table(
        ["rate", "held-aside mIoU per seed", "mean", "train min", "commit"],
        [
            [
                v,
                " / ".join(pct(r["holdout"]["miou"]) for r in runs),
                pct(mean([r["holdout"]["miou"] for r in runs])),
                minutes(runs),
                commits(runs),
            ]
            for v, runs in rates.items()
        ],  # fmt: skip
    )
    for title, groups in (
        ("Control: the first stage on all of train, 16 epochs, scored on val", control),
        ("The baseline on val (sim-normal is lr 0.01)", baselines),
    ):
        lines += ["", f"## {title}", ""]
        lines += table(
            [
                "run",
                "val mIoU per seed",
                "mean",
                "small-class mIoU",
                "val every 2 epochs (seed 0)",
                "train min",
                "commit",
            ],
            val_rows(groups, names),
        )
    lines += [
        "",
        "## The staged verdict: the second stage on the control's seeds, scored on val",
        "",
        "The seed is the control's model (its val score); walk 5 is the staged DifNet's output. The lead "
        "is the staged DifNet's mean minus the baseline's; the time is both stages' training against "
        "the baseline's.",
        "",
    ]
    lines += table(
        ["candidate", "seed val per seed", "walk 5 val per seed", "walk gain per seed", "mean gain",
         "small classes seed -> walk 5", "best override (seed 0)", "lead over the baseline",
         "second-stage min", "commit"],
        staged_rows(staged, [r for runs in first_control.values() for r in runs], baselines, names),
    )  # fmt: skip
    lines += per_class_table({**control, **staged, **baselines}, names)
    rated = {name: runs for name, runs in baselines.items() if name.startswith("sim-lr")}
    drawn = {**control, **rated, **second_stage_curves(staged)}
    if drawn:
        curves(drawn, results / "camvid_walks_curves.png",
               title="CamVid val: control, baseline, second stages (a line a seed)")  # fmt: skip
        lines += ["", "Learning curves: camvid_walks_curves.png (val mIoU every 2 epochs, each run; a second "
                  "stage starts from its seed's score at the first stage's last epoch)."]  # fmt: skip
    lines += [
        "",
        "## The walk scalars picked on every 5th training frame (`fit-scalars`), scored where the run was",
        "",
        "The learned P_t are kept; the setting is the best of the headroom diagnostic's grid on the "
        "training frames (the screen's: train less the held-aside frames), and its score where the run "
        "was scored is read off the run's own diagnostics.",
        "",
    ]
    lines += table(
        ["run", "scored on", "seed", "seed mIoU", "learned gain", "picked setting", "picked gain", "seed on the fit frames",
         "learned gain there", "picked gain there", "fit s", "commit"],
        scalar_fit_rows(screen, "held-aside") + scalar_fit_rows(staged, "val"),
    )  # fmt: skip
    lines += [
        "",
        "## The guided walk: what the cascade and the walk on the image at stride 2 each add",
        "",
        "Each run's own diagnostics: the guided walk on the seed skips the cascade; the output is the "
        "guided walk after walk 5.",
        "",
    ]
    lines += table(
        ["run", "scored on", "seed", "seed mIoU", "walk 5", "guided walk on the seed", "output",
         "walk 5 gain", "guided-on-seed gain", "walk gain", "commit"],
        guided_rows(screen, "held-aside") + guided_rows(staged, "val"),
    )  # fmt: skip
    lines += [
        "",
        "## The guided walk's stride, steps and restart weight picked on every 5th training frame",
        "",
        "`benchmarks.camvid fit-guided` (`difnet.refinement.guided`): strides 1 and 2, mu 0.97 and 0.99, 15 to 100 "
        "steps and the run's own setting, picked by mIoU on the training frames; the learned colour map and "
        "position scale are kept. The seed is read off the run's own diagnostics.",
        "",
    ]
    lines += table(
        ["run", "scored on", "seed", "seed mIoU", "learned walk gain", "picked setting", "picked mIoU",
         "picked walk gain", "small classes seed -> picked", "gain over the learned on the fit frames", "fit s",
         "commit"],
        guided_fit_rows(screen, "held-aside") + guided_fit_rows(staged, "val"),
    )  # fmt: skip
    lines += bilateral_table("the held-aside frames", {**stage_one, **screen, **rates})
    lines += bilateral_table("val (the verdict's models)", {**staged, **baselines})
    path = results / "camvid_walks.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output", type=Path, default=RUNS, help="the run folders and their records")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    print(report(args.output, args.results).read_text())


if __name__ == "__main__":
    main()
