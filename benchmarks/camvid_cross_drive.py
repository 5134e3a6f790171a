"""The cross-drive verdict as one resumable command: DifNet against the models a user would pick
instead, judged on the drive 0006R0 that no model trains on (`benchmarks.camvid.DRIVES`).

Stages, each planned from the records the ones before it left (`plan`):

- **rates**: every model family's rate search (Sim-DeepLab-18, smp's DeepLabV3+ and U-Net at the
  same rates, `DRIVE_RATE_GRID`, widened by one rate past an end of the grid where a family's best
  sits at that end) on the remedy split's held-aside frames, seed 0; a family's rate is chosen
  once all its rates have a record.
- **class weights**: each family at its rate and the staged DifNet's first stage with the
  class-balanced loss CamVid papers train with (median-frequency weights, variants `*-mfw`), once, on
  the same frames and seed: a screen reported beside the verdict, which trains unweighted as the
  staged verdict did.
- **verdict**: each family at its rate and the staged DifNet's first stage train `VERDICT_EPOCHS` on
  the drives 0001TP and 0016E5, seed by seed.
- **second stage**: on each seed's frozen first stage, the staged verdict's chosen walks
  (`selection.json`) and DifNet's head on the chosen DeepLabV3+ run, `STAGE_TWO_EPOCHS` each.
- **val**: the same models (each family at its rate, the staged DifNet, DifNet's head on DeepLabV3+)
  trained on CamVid's train and scored on val (phase `verdict`), so that the ranking on the unseen
  drive can be set beside the one on val, which shares a drive with train.
- **equal time**: each family again for the epochs the staged DifNet's two stages take, from the
  step times measured alone (`step_seconds.json`).
- **refinement**: every model of the verdict and of val alone, with the image walk fitted on its training
  frames (`refine`; a guided DifNet's own walk is fitted instead, `fit-guided`) and with a fitted
  dense CRF (`refine --crf`).

    python -m benchmarks.camvid_cross_drive --dry-run     # what the records choose, what is missing
    python -m benchmarks.camvid_cross_drive --parallel 2  # every step still missing, stage by stage
    python -m benchmarks.camvid_cross_drive --report      # results/camvid_cross_drive.md from the records

Each step runs as its `python -m benchmarks.camvid` subcommand, which this module builds on.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from benchmarks._measure import markdown_table
from benchmarks.camvid import (
    PHASE_FOLDERS,
    RESULTS,
    RUNS,
    SCREEN_EPOCHS,
    SEEDS,
    STAGE_TWO_EPOCHS,
    VERDICT_EPOCHS,
    Runs,
    add_data_arguments,
    add_queue_arguments,
    add_training_arguments,
    best_of,
    measured_step_seconds,
    pack,
    recipe,
    run_name,
    step_done,
)
from benchmarks.camvid_report import small_miou
from benchmarks.camvid_variants import DRIVE_EDGE_RATES, DRIVE_RATE_GRID, FIRST_STAGES, STAGE_ONE, VARIANTS
from difnet.data.camvid import CAMVID_CLASSES
from difnet.models import build_model
from difnet.models.parameters import count_parameters

CLASS_NAMES = list(CAMVID_CLASSES)

PHASE = "drive-verdict"
FAMILIES = ("sim", "smp-deeplabv3plus", "smp-unet")  # the variant-name prefixes of the rate search
Step = tuple[str, int, str, int, str]  # variant, seed, phase, epochs, step of benchmarks.camvid
STAGES = ("rates", "class weights", "verdict", "second stage", "val", "equal time", "refinement")


def searched_rates(output: Path, family: str) -> tuple[list[str], str | None]:
    """The rate variants `family` searches so far and the one it chooses (None until all have run):
    the best held-aside mIoU over `DRIVE_RATE_GRID`, or, where that best is at an end of the grid,
    over the grid and the rate past that end (`DRIVE_EDGE_RATES`)."""
    searched = [f"{family}-lr{lr}" for lr in DRIVE_RATE_GRID]
    edges = dict(
        zip((searched[0], searched[-1]), (f"{family}-lr{lr}" for lr in DRIVE_EDGE_RATES), strict=True)
    )
    best = best_rate(output, searched)
    if best in edges:
        searched.append(edges[best])
        best = best_rate(output, searched)
    return searched, best


def best_rate(output: Path, rates: Sequence[str]) -> str | None:
    """The variant of `rates` with the best held-aside mIoU, once each has its record under `output`."""
    if not all(step_done(output, (v, 0, "remedy", SCREEN_EPOCHS)) for v in rates):
        return None
    return best_of(output, "remedy", rates, SCREEN_EPOCHS, lambda r: r["holdout"]["miou"])


def chosen_rates(output: Path) -> dict[str, str]:
    """Each family's chosen rate variant (`searched_rates`), for the families that have chosen."""
    return {family: best for family in FAMILIES if (best := searched_rates(output, family)[1])}


def chosen_walks() -> str:
    """The staged verdict's chosen second stage, from its committed `selection.json`."""
    return json.loads((RUNS / "selection.json").read_text())["best"]["difnet"]


def equal_time_epochs(seconds: dict[str, float], staged: Sequence[str], variant: str) -> int:
    """The epochs of `variant` that take as long as the staged DifNet (`staged`: its first stage,
    then its second) at `VERDICT_EPOCHS` and `STAGE_TWO_EPOCHS`, from each one's step seconds: every
    model makes the same steps per epoch."""
    first, second = staged
    staged_seconds = VERDICT_EPOCHS * seconds[first] + STAGE_TWO_EPOCHS * seconds[second]
    return max(VERDICT_EPOCHS, round(staged_seconds / seconds[variant]))


def refinements(variant: str, seed: int, phase: str, epochs: int) -> list[Step]:
    """A finished run's post-processing steps: its image walk fitted (a guided DifNet's own walk, a
    model without one the bilateral walk), then a dense CRF fitted."""
    model, options = VARIANTS[variant]
    walk = "fit-guided" if model == "difnet" and options.get("guided_walk_stride") else "refine"
    return [(variant, seed, phase, epochs, walk), (variant, seed, phase, epochs, "refine --crf")]


def plan(output: Path, seeds: Sequence[int]) -> list[tuple[str, list[Step]]]:
    """Each stage of `STAGES` whose choices the records under `output` make so far, with its steps; a
    stage waiting on a choice is left out, with every later one."""
    searched = [v for family in FAMILIES for v in searched_rates(output, family)[0]]
    stages = [("rates", [(v, 0, "remedy", SCREEN_EPOCHS, "run") for v in searched])]
    rates = chosen_rates(output)
    if len(rates) < len(FAMILIES):
        return stages
    walks, deeplab = chosen_walks(), rates["smp-deeplabv3plus"]
    head = next(v for v, first in FIRST_STAGES.items() if first == deeplab)
    verdict = [*rates.values(), STAGE_ONE]
    stages.append(("class weights", [(f"{v}-mfw", 0, "remedy", SCREEN_EPOCHS, "run") for v in verdict]))
    trained = {
        phase: [(v, s, phase, VERDICT_EPOCHS, "run") for s in seeds for v in verdict]
        + [(v, s, phase, STAGE_TWO_EPOCHS, "run") for s in seeds for v in (walks, head)]
        for phase in (PHASE, "verdict")
    }
    stages.append(("verdict", [step for step in trained[PHASE] if step[3] == VERDICT_EPOCHS]))
    stages.append(("second stage", [step for step in trained[PHASE] if step[3] == STAGE_TWO_EPOCHS]))
    stages.append(("val", trained["verdict"]))
    timing = output / "step_seconds.json"
    seconds = json.loads(timing.read_text())["seconds"] if timing.is_file() else {}
    if not all(v in seconds for v in (*rates.values(), STAGE_ONE, walks)):
        return stages
    budgets = {v: equal_time_epochs(seconds, (STAGE_ONE, walks), v) for v in rates.values()}
    equal = [
        (v, s, PHASE, epochs, "run")
        for s in seeds
        for v, epochs in budgets.items()
        if epochs > VERDICT_EPOCHS
    ]
    stages.append(("equal time", equal))
    models = [step[:4] for step in (*trained[PHASE], *trained["verdict"], *equal) if step[0] != STAGE_ONE]
    stages.append(("refinement", [step for run in models for step in refinements(*run)]))
    return stages


def missing(output: Path, seeds: Sequence[int]) -> list[tuple[str, Step]]:
    """The steps of `plan` without their record yet, by stage."""
    return [(stage, step) for stage, steps in plan(output, seeds) for step in steps
            if not step_done(output, step[:4], step[4])]  # fmt: skip


def describe(step: Step) -> str:
    variant, seed, phase, epochs, name = step
    return f"{name} {run_name(variant, seed, phase, epochs)}"


def dry_run(args: argparse.Namespace) -> list[tuple[str, Step]]:
    """Print the rates the records choose and the steps still missing, running nothing."""
    queued = missing(args.output, args.seeds)
    print("chosen rates:", json.dumps(chosen_rates(args.output)), flush=True)
    print(
        f"{len(queued)} steps to run:", *(f"  {stage}: {describe(step)}" for stage, step in queued), sep="\n"
    )
    if waiting := [stage for stage in STAGES if stage not in dict(plan(args.output, args.seeds))]:
        print("waiting on choices the records do not make yet:", ", ".join(waiting))
    return queued


def run_cross_drive(args: argparse.Namespace) -> None:
    """The stages of `plan` in order, each once the steps before it have finished, skipping every step
    whose record is there; the step times the equal-time budgets need are measured alone first."""
    if args.dry_run:
        dry_run(args)
        return
    if args.report:
        print("wrote", report(args.output, RESULTS), flush=True)
        return
    deadline = time.time() + 60 * args.minutes
    runs = Runs(args)
    for stage in STAGES:
        if stage == "equal time" and len(rates := chosen_rates(args.output)) == len(FAMILIES):
            measured_step_seconds(args, [*rates.values(), STAGE_ONE, chosen_walks()])
        if not run_stage(stage, args, runs, deadline):
            break
    pack(args.output, args.archive)
    if runs.failed:
        print("failed steps:", runs.failed, flush=True)


def run_stage(stage: str, args: argparse.Namespace, runs: Runs, deadline: float) -> bool:
    """Run `stage`'s steps until its plan has none left to add (a stage grows as its own records
    come in: the rate search widens past the grid's end); False when it waits on a choice the
    records do not make or the deadline cut it."""
    added: set[Step] = set()
    while True:
        planned = dict(plan(args.output, args.seeds))
        if stage not in planned:
            print(f"{stage}: waiting on a choice the records do not make", flush=True)
            return False
        new = [step for step in planned[stage] if step not in added]
        if not new:
            return True
        for step in new:
            runs.add(*step)
        added.update(new)
        if not runs.wait(deadline, lambda: None):
            print(f"{stage}: cut by the deadline", flush=True)
            return False


def scored(record: dict) -> dict:
    """A run record's own scores: where its phase scored it (`holdout` or `val`)."""
    return record["holdout"] if "holdout" in record else record["val"]


def refined(record: dict, key: str) -> dict | None:
    """The scores with a refinement (`bilateral_walk`, `guided_walk_fit`, `dense_crf`), if it ran."""
    if key not in record:
        return None
    return record[key]["refined"] if "refined" in record[key] else record[key]


def summary_rows(output: Path) -> list[dict]:
    """One row per model, phase and budget of the cross-drive verdict and its val twin: the mean over
    its seeds of the mIoU alone, with its image walk and with a dense CRF, the small classes' mIoU
    alone, the refinements' milliseconds per image, the training seconds, the parameters and the
    step seconds measured alone (`step_seconds.json`, where measured)."""
    groups: dict[tuple[str, str, int], list[dict]] = {}
    for folder, phase in ((PHASE_FOLDERS[PHASE], PHASE), ("verdict", "verdict")):
        for path in sorted((output / folder).glob("*.json")):
            record = json.loads(path.read_text())
            groups.setdefault((phase, record["variant"], record["epochs"]), []).append(record)
    timing = output / "step_seconds.json"
    steps = json.loads(timing.read_text())["seconds"] if timing.is_file() else {}
    rows = []
    for (phase, variant, epochs), records in sorted(groups.items()):
        walks = [refined(r, "guided_walk_fit") or refined(r, "bilateral_walk") for r in records]
        crfs = [refined(r, "dense_crf") for r in records]
        rows.append({
            "phase": "0006R0 (unseen)" if phase == PHASE else "val", "variant": variant, "epochs": epochs,
            "seeds": ", ".join(str(r["seed"]) for r in records),
            "alone": mean_percent([scored(r)["miou"] for r in records]),
            "walk": mean_percent([w["miou"] for w in walks if w]), "walk_seeds": sum(map(bool, walks)),
            "crf": mean_percent([c["miou"] for c in crfs if c]), "crf_seeds": sum(map(bool, crfs)),
            "small": mean_percent([m for r in records if (m := small_miou(scored(r), CLASS_NAMES)) is not None]),
            "walk_ms": mean_of(milliseconds(records, "bilateral_walk")),
            "crf_ms": mean_of(milliseconds(records, "dense_crf")),
            "train_s": mean_of([r["train_seconds"] for r in records]),
            "parameters_m": round(parameter_count(variant) / 1e6, 2),
            "step_s": steps.get(variant),
        })  # fmt: skip
    return rows


@functools.cache
def parameter_count(variant: str) -> int:
    """The parameters of `variant`'s model for CamVid's 11 classes."""
    config = recipe(variant, 0, "verdict", 1, Path("unused"), "cpu", Path("unused"))
    with torch.device("meta"):  # no memory, no init
        return count_parameters(build_model(**config.model_arguments(11)))


def milliseconds(records: Sequence[dict], key: str) -> list[float]:
    """The milliseconds per image of refinement `key` in each of `records` that measured them."""
    return [r[key]["refine_ms_per_image"] for r in records if "refine_ms_per_image" in r.get(key, {})]


def mean_of(values: Sequence[float]) -> float | None:
    return round(statistics.mean(values), 1) if values else None


def mean_percent(values: Sequence[float]) -> float | None:
    return round(100 * statistics.mean(values), 2) if values else None


REPORT_COLUMNS = {
    "phase": "scored on", "variant": "run", "epochs": "epochs", "seeds": "seeds", "alone": "mIoU alone",
    "walk": "+ image walk", "walk_seeds": "(seeds)", "crf": "+ dense CRF", "crf_seeds": "(seeds)",
    "small": "small classes alone", "walk_ms": "walk ms/image", "crf_ms": "CRF ms/image", "train_s": "train s",
    "parameters_m": "parameters (M)", "step_s": "step s (alone)",
}  # fmt: skip


def report(output: Path, results: Path) -> Path:
    """Write the cross-drive verdict's table (`summary_rows`) to `results`/camvid_cross_drive.md."""
    rows = summary_rows(output)
    page = results / "camvid_cross_drive.md"
    page.write_text(
        "# CamVid across drives: every run so far\n\n"
        "Means over the seeds listed; each refinement's mean over the seeds it ran on. The image walk is "
        "the fitted bilateral walk, or for a guided DifNet its own walk fitted. Written by "
        "`python -m benchmarks.camvid_cross_drive --report` from the records.\n\n"
        f"{markdown_table(rows, REPORT_COLUMNS)}\n"
    )
    return page


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_data_arguments(parser)
    add_training_arguments(parser)
    add_queue_arguments(parser)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS["verdict"]))
    parser.add_argument("--report", action="store_true", help="write the table of the records so far")
    run_cross_drive(parser.parse_args())


if __name__ == "__main__":
    main()
