"""Tables and learning curves of the CamVid verdict (`benchmarks.camvid`) from its run records.

Writes `camvid_verdict.json` (every record, the selection, the gaps) and `camvid_verdict.md`, and
`camvid_curves.png` (val mIoU every 2 epochs, one line per run) under the results folder.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from benchmarks.camvid_variants import SMALL_CLASSES  # noqa: E402


def load_records(output: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(output.glob("*/*.json"))]


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def mean_present(values: Iterable[float | None]) -> float | None:
    """The mean of the values that are not None (an IoU is None for a class absent from a split
    and never predicted, and the diagnostics skip it too); None when none is."""
    present = [v for v in values if v is not None]
    return statistics.mean(present) if present else None


def mean_std(values: list[float | None]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    spread = f" ± {100 * statistics.stdev(values):.1f}" if len(values) > 1 else ""
    return f"{100 * statistics.mean(values):.1f}{spread}"


def small_miou(metrics: dict, names: list[str]) -> float | None:
    """The mean IoU of the small classes that have one (None if none has)."""
    return mean_present(metrics["per_class_iou"][names.index(n)] for n in SMALL_CLASSES)


def screen_table(records: list[dict], names: list[str]) -> list[str]:
    lines = [
        "| variant | held-aside mIoU per seed | mean | small-class mIoU | val mIoU (init runs) "
        "| seed -> walk 5 -> oracle (held-aside) | mu | steps | train s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    by_variant: dict[str, list[dict]] = {}
    for r in records:
        by_variant.setdefault(r["variant"], []).append(r)
    for variant, runs in by_variant.items():
        runs.sort(key=lambda r: r["seed"])
        holdout = [r["holdout"]["miou"] for r in runs]
        val = [r["val"]["miou"] for r in runs if "val" in r]
        diag = [r["diagnostics"] for r in runs if r.get("diagnostics")]
        stages = "-"
        if diag:
            stages = " -> ".join(
                pct(statistics.mean(d["miou"][s] for d in diag)) for s in ("seed", "walk 5", "oracle")
            )
        mu = (
            "-"
            if not diag
            else f"{min(min(d['mu']) for d in diag):.2f}-{max(max(d['mu']) for d in diag):.2f}"
        )
        lines.append(
            f"| {variant} | {' / '.join(pct(v) for v in holdout)} | **{mean_std(holdout)}** "
            f"| {mean_std([small_miou(r['holdout'], names) for r in runs])} | {mean_std(val)} | {stages} | {mu} "
            f"| {runs[0]['steps']} | {' / '.join(train_seconds(r) for r in runs)} |"
        )
    return lines


def verdict_groups(records: list[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(f"{r['variant']} @ {r['epochs']} epochs", []).append(r)
    return groups


def report(output: Path, results: Path) -> None:
    """Read every record under `output`, write the verdict's JSON, Markdown and curves to `results`."""
    records = load_records(output)
    if not records:
        raise SystemExit(f"no run records under {output}: run `python -m benchmarks.camvid all` first")
    names = _class_names(records)
    screen = [r for r in records if r["phase"] == "screen"]
    remedy = [r for r in records if r["phase"] == "remedy"]
    verdict = [r for r in records if r["phase"] == "verdict"]
    selection_path = output / "selection.json"
    selection = json.loads(selection_path.read_text()) if selection_path.is_file() else {}
    timing_path = output / "step_seconds.json"
    timing = json.loads(timing_path.read_text()) if timing_path.is_file() else {}
    results.mkdir(parents=True, exist_ok=True)
    lines = ["# CamVid verdict: Sim-DeepLab-18 against DifNet-18 from scratch", ""]
    provenance = records[0]["provenance"]
    lines += [
        f"torch {provenance['torch']}, {provenance.get('cuda_device', provenance['cpu'])}. Under each table, "
        "the commits its runs came from (every segment of a resumed run); each run's own provenance "
        "is in camvid_verdict.json.",
        "",
    ]
    if any(r.get("resumed") for r in records):
        lines += ["Training seconds marked * belong to runs resumed from their last checkpoint after a stop: "
                  "they count the part after the resume only.", ""]  # fmt: skip
    if timing:
        lines += ["## Step time, each variant alone (a batch of 8 crops, forward + backward + SGD)", "",
                  "| variant | ms per step |", "|---|---|"]  # fmt: skip
        lines += [f"| {v} | {1000 * s:.1f} |" for v, s in timing["seconds"].items()]
        lines += ["", commits_line([{"provenance": timing["provenance"]}]), ""]
    lines += ["## Init screen (train without 0001TP; each model keeps the init better on val)", ""]
    lines += screen_table(screen, names) + [""]
    init_runs = verdict_groups([r for r in screen if "val" in r])
    if init_runs:
        lines += per_class_table(init_runs, names) + [""]
    lines += diagnostics_table(verdict_groups(screen), names) + [commits_line(screen), ""]
    if remedy:
        lines += [
            "## Remedy screen (train without the first 60 frames of 0016E5, scored on those 60 only)",
            "",
        ]
        lines += screen_table(remedy, names) + [""]
        lines += diagnostics_table(verdict_groups(remedy), names) + [commits_line(remedy), ""]
    joint = selection.get("joint", selection)  # an older selection.json holds the joint verdict's only
    if joint:
        lines += [f"Selected (inits on val, DifNet's remedy on the held-aside frames): {joint['best']}; "
                  f"equal-time budget for the baseline: {joint['equal_time_epochs']} epochs.", ""]  # fmt: skip
    if "joint" in selection:
        lines += [f"The staged verdict's choice (its tables: camvid_walks.md): {selection['best']} on the first "
                  f"stage {selection['stage_one']}; the baseline at equal time {selection['equal_time_epochs']} "
                  "epochs.", ""]  # fmt: skip
    gaps = {}
    if verdict:
        groups = verdict_groups(verdict)
        lines += ["## Verdict (all of train, scored on val)", "",
                  "| run | val mIoU per seed | mean ± sd | small-class mIoU | steps | train s |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        for label, runs in groups.items():
            runs.sort(key=lambda r: r["seed"])
            lines.append(
                f"| {label} | {' / '.join(pct(r['val']['miou']) for r in runs)} | "
                f"**{mean_std([r['val']['miou'] for r in runs])}** | "
                f"{mean_std([small_miou(r['val'], names) for r in runs])} | {runs[0]['steps']} | "
                f"{' / '.join(train_seconds(r) for r in runs)} |"
            )
        gaps = verdict_gaps(groups, joint, names)
        lines += [""] + [f"- {line}" for line in gaps["lines"]] + [""]
        lines += per_class_table(groups, names) + [""]
        lines += diagnostics_table(groups, names) + [commits_line(verdict), ""]
        curves(groups, results / "camvid_curves.png")
        lines += ["Learning curves: camvid_curves.png (val mIoU every 2 epochs, each run).", ""]
    (results / "camvid_verdict.md").write_text("\n".join(lines) + "\n")
    summary = {"selection": selection, "timing": timing, "gaps": gaps, "runs": records}
    (results / "camvid_verdict.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("\n".join(lines))


def record_commits(record: dict) -> list[str]:
    """The commits a run came from, one per segment (a resumed run has several; records written
    before segments were kept name the last only), marked where the tree differed from it."""
    segments = record.get("segments") or [record["provenance"]]
    return [s["commit"][:7] + ("" if s.get("dirty", "no") == "no" else f" (tree differed: {s['dirty']})")
            for s in segments]  # fmt: skip


def commits_line(records: list[dict]) -> str:
    """Every commit behind the runs of a table, with how many runs each produced (part of)."""
    runs: dict[str, int] = {}
    for record in records:
        for commit in dict.fromkeys(record_commits(record)):
            runs[commit] = runs.get(commit, 0) + 1
    listed = ", ".join(f"{commit} ({count} run{'s' * (count > 1)})" for commit, count in runs.items())
    return f"Code: {listed}."


def train_seconds(record: dict) -> str:
    """A run's training seconds, starred when it resumed (its record times the last part only)."""
    return f"{round(record['train_seconds'])}{'*' if record.get('resumed') else ''}"


def _class_names(records: list[dict]) -> list[str]:
    for r in records:
        if r.get("diagnostics"):
            return r["diagnostics"]["class_names"]
    from difnet.data.camvid import CAMVID_CLASSES

    return list(CAMVID_CLASSES)


def verdict_gaps(groups: dict[str, list[dict]], selection: dict, names: list[str]) -> dict:
    """DifNet minus the baseline at equal steps and at equal time, in mIoU and small-class mIoU."""
    best = selection.get("best", {})
    if len(best) != 2:
        return {"lines": ["selection incomplete: no gaps"]}

    def group(variant: str, epochs: int) -> list[dict]:
        return groups.get(f"{variant} @ {epochs} epochs", [])

    epochs = max(
        (r["epochs"] for runs in groups.values() for r in runs if r["variant"] == best["difnet"]), default=0
    )
    if not epochs:
        return {"lines": [f"{best['difnet']}: no verdict run finished yet, no gaps"]}
    difnet = group(best["difnet"], epochs)
    baselines = {"equal steps": group(best["simdeeplab"], epochs),
                 "equal time": group(best["simdeeplab"], max(selection["equal_time_epochs"], epochs))}  # fmt: skip
    out: dict = {"lines": []}
    for budget, baseline in baselines.items():
        if not difnet or not baseline:
            out["lines"].append(f"{budget}: runs missing")
            continue
        gap = statistics.mean(r["val"]["miou"] for r in difnet) - statistics.mean(
            r["val"]["miou"] for r in baseline
        )
        small_means = [mean_present(small_miou(r["val"], names) for r in runs) for runs in (difnet, baseline)]
        small = None if None in small_means else small_means[0] - small_means[1]
        out[budget] = {"miou_gap": gap, "small_class_gap": small, "difnet_seeds": len(difnet),
                       "baseline_seeds": len(baseline)}  # fmt: skip
        out["lines"].append(
            f"{budget}: DifNet-18 minus Sim-DeepLab-18 = {100 * gap:+.1f} mIoU (means over {len(difnet)} and "
            f"{len(baseline)} seeds; target >= +2.0 at equal steps, >= 0 at equal time); small classes "
            + ("without an IoU" if small is None else f"{100 * small:+.1f} (target >= 0)")
        )
    return out


def per_class_table(groups: dict[str, list[dict]], names: list[str]) -> list[str]:
    labels = list(groups)
    lines = ["Per-class val IoU, mean over seeds:", "", "| class | " + " | ".join(labels) + " |",
             "|---" * (len(labels) + 1) + "|"]  # fmt: skip
    for index, name in enumerate(names):
        cells = [pct(mean_present(r["val"]["per_class_iou"][index] for r in groups[g])) for g in labels]
        lines.append(f"| {name}{' (small)' if name in SMALL_CLASSES else ''} | " + " | ".join(cells) + " |")
    for label, key in (("**mIoU**", "miou"), ("pixel accuracy", "pixel_accuracy")):
        cells = [pct(statistics.mean(r["val"][key] for r in groups[g])) for g in labels]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    small = [pct(mean_present(small_miou(r["val"], names) for r in groups[g])) for g in labels]
    lines.append("| small-class mIoU | " + " | ".join(small) + " |")
    lines.append("| seeds | " + " | ".join(str(len(groups[g])) for g in labels) + " |")
    return lines


def diagnostics_table(groups: dict[str, list[dict]], names: list[str]) -> list[str]:
    lines = []
    for label, runs in groups.items():
        diag = [r["diagnostics"] for r in runs if r.get("diagnostics")]
        if not diag:
            continue
        stages = list(diag[0]["miou"])
        split = diag[0].get("split", "val")
        lines += [f"DifNet diagnostics on {split}, {label}, mean over {len(diag)} seeds (per-class IoU by stage):", "",
                  "| class | " + " | ".join(stages) + " |", "|---" * (len(stages) + 1) + "|"]  # fmt: skip
        for index, name in enumerate(names):
            cells = [pct(mean_present(d["per_class_iou"][s][index] for d in diag)) for s in stages]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append(
            "| **mIoU** | "
            + " | ".join(pct(statistics.mean(d["miou"][s] for d in diag)) for s in stages)
            + " |"
        )
        lines.append("")
        lines += transition_lines(runs, diag)
        lines += [
            f"mu after training: {levels([d['mu'] for d in diag])}; beta: {levels([d['beta'] for d in diag])}; "
            f"importance map mean {statistics.mean(d['importance']['mean'] for d in diag):.3f}.",
            "",
        ]
    return lines


def levels(rows: list[list[float | None]]) -> str:
    """Per-level means over runs of per-level figures, skipping the undefined ones."""
    return ", ".join(f"{statistics.mean(v for v in column if v is not None):.2f}" for column in zip(*rows))


def transition_lines(runs: list[dict], diag: list[dict]) -> list[str]:
    """The transitions' figures, levels 0-4: the in-class share of the mass sent to other nodes and
    the self-weight where the records have them; older records' in-class mass counted self-weight."""
    if "in_class_share" in diag[0]:
        init = [r["init_transitions"] for r in runs if "init_transitions" in r]
        return [
            f"In-class share of the mass sent to other nodes (labelled nodes): at init "
            f"{levels([i['in_class_share'] for i in init])}; after training "
            f"{levels([d['in_class_share'] for d in diag])}.",
            f"Nodes of small classes: at init {levels([i['small_class_share'] for i in init])}; after "
            f"training {levels([d['small_class_share'] for d in diag])}.",
            f"Self-weight P_t[i, i]: at init {levels([i['mean_self_weight'] for i in init])}; after "
            f"training {levels([d['mean_self_weight'] for d in diag])}.",
        ]
    init = [r["init_in_class_mass"] for r in runs if "init_in_class_mass" in r]
    init_small = [r["init_small_class_mass"] for r in runs if "init_small_class_mass" in r]
    return [
        f"In-class transition mass counting self-weight (an identity P scores 1), levels 0-4: at init "
        f"{levels(init)}; after training {levels([d['in_class_mass'] for d in diag])}.",
        f"Nodes of small classes, counting self-weight: at init {levels(init_small)}; after training "
        f"{levels([d['small_class_mass'] for d in diag])}.",
    ]


def curves(
    groups: dict[str, list[dict]], path: Path, title: str = "CamVid val, from scratch (each line one seed)"
) -> None:
    """Val mIoU against the epoch, one line per run and one colour per group."""
    figure, axis = plt.subplots(figsize=(7, 4.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for colour, (label, runs) in zip(colours, groups.items()):
        for index, r in enumerate(runs):
            epochs = [p["epoch"] for p in r["curve"]]
            axis.plot(epochs, [100 * p["miou"] for p in r["curve"]], color=colour, alpha=0.8,
                      label=label if index == 0 else None)  # fmt: skip
    axis.set_xlabel("epoch")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_ylabel("val mIoU (%)")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
