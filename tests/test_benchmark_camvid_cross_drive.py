"""The cross-drive verdict's plan: the rate search first, each family at its chosen rate, the staged
DifNet's two stages, equal time from the measured step times, every model refined two ways."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchmarks import camvid_cross_drive
from benchmarks.camvid import Runs, record_path, step_done
from benchmarks.camvid_cross_drive import (
    STAGES,
    chosen_rates,
    equal_time_epochs,
    missing,
    plan,
    report,
    run_cross_drive,
    summary_rows,
)
from benchmarks.camvid_cross_drive import main as cross_drive_main
from difnet.models.factory import parameter_counts

# held-aside mIoU of each rate-search run: U-Net best at 0.02, DeepLabV3+ at 0.04, Sim-DeepLab at 0.007
SCORES = {"sim-lr0.007": 0.29, "sim-lr0.01": 0.285, "sim-lr0.02": 0.28, "sim-lr0.04": 0.2,
          "smp-deeplabv3plus-lr0.007": 0.25, "smp-deeplabv3plus-lr0.01": 0.27, "smp-deeplabv3plus-lr0.02": 0.289,
          "smp-deeplabv3plus-lr0.04": 0.295, "smp-unet-lr0.007": 0.26, "smp-unet-lr0.01": 0.28,
          "smp-unet-lr0.02": 0.305, "smp-unet-lr0.04": 0.3,
          # past the grid's ends where a family's best sits at one
          "sim-lr0.0035": 0.285, "smp-deeplabv3plus-lr0.08": 0.29}  # fmt: skip
CHOSEN = ["sim-lr0.007", "smp-deeplabv3plus-lr0.04", "smp-unet-lr0.02"]


def write_rates(output: Path, scores: dict[str, float]) -> None:
    for variant, miou in scores.items():
        record = {"variant": variant, "seed": 0, "phase": "remedy", "holdout": {"miou": miou}}
        record_path(output, variant, 0, "remedy", 8).write_text(json.dumps(record))


def test_without_records_only_the_rate_search_is_planned():
    grid = [
        f"{family}-lr{lr}"
        for family in ("sim", "smp-deeplabv3plus", "smp-unet")
        for lr in (0.007, 0.01, 0.02, 0.04)
    ]
    assert plan(Path("/nonexistent"), [0]) == [("rates", [(v, 0, "remedy", 8, "run") for v in grid])]


def test_a_best_rate_at_an_end_of_the_grid_widens_the_search_past_that_end(tmp_path):
    edges = ("sim-lr0.0035", "smp-deeplabv3plus-lr0.08")  # Sim-DeepLab best at 0.007, DeepLabV3+ at 0.04
    write_rates(tmp_path, {v: s for v, s in SCORES.items() if v not in edges})
    assert chosen_rates(tmp_path) == {"smp-unet": "smp-unet-lr0.02"}  # U-Net's best is inside the grid
    assert [step[0] for _, step in missing(tmp_path, [0])] == list(edges)
    write_rates(tmp_path, {"sim-lr0.0035": 0.3, "smp-deeplabv3plus-lr0.08": 0.29})
    assert chosen_rates(tmp_path) == {
        "sim": "sim-lr0.0035", "smp-deeplabv3plus": "smp-deeplabv3plus-lr0.04", "smp-unet": "smp-unet-lr0.02"
    }  # fmt: skip


def test_a_family_gets_its_rate_only_once_all_its_rates_have_run(tmp_path):
    write_rates(tmp_path, {v: s for v, s in SCORES.items() if v != "smp-unet-lr0.04"})
    assert chosen_rates(tmp_path) == {"sim": "sim-lr0.007", "smp-deeplabv3plus": "smp-deeplabv3plus-lr0.04"}
    assert [stage for stage, _ in plan(tmp_path, [0])] == ["rates"]
    assert [step for _, step in missing(tmp_path, [0])] == [("smp-unet-lr0.04", 0, "remedy", 8, "run")]


def test_the_verdict_trains_each_family_at_its_rate_then_the_second_stages_on_each_seed(tmp_path):
    write_rates(tmp_path, SCORES)
    stages = dict(plan(tmp_path, [0, 1]))
    assert list(stages) == ["rates", "class weights", "verdict", "second stage", "val"]  # equal time waits
    assert stages["class weights"] == [
        (f"{v}-mfw", 0, "remedy", 8, "run") for v in (*CHOSEN, "seed-aux-shared")
    ]
    assert stages["verdict"] == [
        (v, seed, "drive-verdict", 16, "run") for seed in (0, 1) for v in (*CHOSEN, "seed-aux-shared")
    ]
    assert stages["second stage"] == [
        (v, seed, "drive-verdict", 3, "run")
        for seed in (0, 1)
        for v in ("walk-dist-r1-guided", "smp-deeplabv3plus-lr0.04-difhead")
    ]
    # the same models trained on train and scored on val, beside the unseen drive's ranking
    assert stages["val"] == [
        (v, s, "verdict", e, r) for v, s, _, e, r in (*stages["verdict"], *stages["second stage"])
    ]


def test_equal_time_buys_each_model_the_staged_difnets_seconds():
    seconds = {"seed-aux-shared": 2.0, "walk-dist-r1-guided": 4.0, "sim-lr0.007": 2.0, "smp-unet-lr0.02": 1.0}
    staged = ("seed-aux-shared", "walk-dist-r1-guided")
    assert equal_time_epochs(seconds, staged, "smp-unet-lr0.02") == 16 * 2 + 3 * 4
    assert equal_time_epochs(seconds, staged, "sim-lr0.007") == 22
    assert equal_time_epochs({**seconds, "slow": 10.0}, staged, "slow") == 16  # never fewer steps


def test_every_verdict_model_is_refined_by_its_image_walk_and_a_dense_crf(tmp_path):
    write_rates(tmp_path, SCORES)
    seconds = dict.fromkeys([*CHOSEN, "seed-aux-shared"], 1.0) | {"walk-dist-r1-guided": 1.0}
    (tmp_path / "step_seconds.json").write_text(json.dumps({"seconds": seconds}))
    stages = dict(plan(tmp_path, [0]))
    assert list(stages) == list(STAGES)
    assert stages["equal time"] == [(v, 0, "drive-verdict", 19, "run") for v in CHOSEN]
    refined = stages["refinement"]
    assert ("walk-dist-r1-guided", 0, "drive-verdict", 3, "fit-guided") in refined
    assert ("smp-deeplabv3plus-lr0.04-difhead", 0, "drive-verdict", 3, "refine") in refined
    for variant, epochs in [*((v, e) for v in CHOSEN for e in (16, 19)), ("walk-dist-r1-guided", 3)]:
        assert (variant, 0, "drive-verdict", epochs, "refine --crf") in refined
    assert not any(step[0] == "seed-aux-shared" for step in refined)  # the first stage is not a verdict model
    assert ("smp-unet-lr0.02", 0, "verdict", 16, "refine") in refined  # the val runs too
    assert len(refined) == 2 * (2 * (len(CHOSEN) + 2) + len(CHOSEN))


def test_a_refinement_is_done_once_its_key_is_in_the_runs_record(tmp_path):
    run = ("sim-lr0.007", 0, "drive-verdict", 16)
    assert not step_done(tmp_path, run) and not step_done(tmp_path, run, "refine --crf")
    record_path(tmp_path, *run).write_text(json.dumps({"variant": "sim-lr0.007"}))
    assert step_done(tmp_path, run) and not step_done(tmp_path, run, "refine --crf")
    record_path(tmp_path, *run).write_text(json.dumps({"dense_crf": {"gain": 0.0}}))
    assert step_done(tmp_path, run, "refine --crf") and not step_done(tmp_path, run, "refine")


def test_a_step_runs_as_its_subcommand_with_the_runs_arguments(tmp_path):
    args = argparse.Namespace(
        output=tmp_path, device="cpu", data_root=tmp_path, crop=[160, 160], max_steps=None
    )
    command = Runs(args).command("sim-lr0.007", 1, "drive-verdict", 16, "refine --crf")
    assert command[1:6] == ["-m", "benchmarks.camvid", "refine", "--crf", "--variant"]
    assert command[command.index("--seed") + 1] == "1" and command[command.index("--epochs") + 1] == "16"


def test_the_command_runs_the_missing_steps_stage_by_stage(tmp_path, monkeypatch, capsys, started_runs):
    write_rates(tmp_path, {v: s for v, s in SCORES.items() if v != "smp-unet-lr0.04"})
    args = argparse.Namespace(output=tmp_path, seeds=[0], dry_run=False, report=False, minutes=1.0, archive=None, parallel=1,
                              threads=1, device="cpu", crop=[160, 160], max_steps=None, data_root=tmp_path)  # fmt: skip
    run_cross_drive(args)
    # the missing rate only: the next stages wait on its record, which the stubbed run never writes
    assert started_runs == [("smp-unet-lr0.04", 0, "remedy", 8, "run")]
    assert "class weights: waiting on a choice" in capsys.readouterr().out
    monkeypatch.setattr(sys, "argv", ["camvid_cross_drive", "--dry-run", "--output", str(tmp_path)])
    cross_drive_main()
    out = capsys.readouterr().out
    assert "1 steps to run:\n  rates: run remedy/smp-unet-lr0.04-e8-seed0\n" in out
    assert "waiting on choices the records do not make yet: class weights, verdict" in out


def test_the_report_averages_each_models_seeds_alone_and_refined(tmp_path):
    per_class = [0.5] * 11
    for seed, (alone, walk, crf) in enumerate([(0.30, 0.32, 0.31), (0.34, 0.35, None)]):
        record = {"variant": "sim-lr0.007", "seed": seed, "epochs": 16, "train_seconds": 100.0 + seed,
                  "holdout": {"miou": alone, "per_class_iou": per_class},
                  "bilateral_walk": {"refined": {"miou": walk}, "refine_ms_per_image": 50.0}}  # fmt: skip
        if crf is not None:
            record["dense_crf"] = {"refined": {"miou": crf}, "refine_ms_per_image": 80.0}
        record_path(tmp_path, "sim-lr0.007", seed, "drive-verdict", 16).write_text(json.dumps(record))
    guided = {"variant": "walk-dist-r1-guided", "seed": 0, "epochs": 3, "train_seconds": 300.0,
              "val": {"miou": 0.46, "per_class_iou": per_class}, "guided_walk_fit": {"miou": 0.47}}  # fmt: skip
    record_path(tmp_path, "walk-dist-r1-guided", 0, "verdict", 3).write_text(json.dumps(guided))
    (tmp_path / "step_seconds.json").write_text(json.dumps({"seconds": {"sim-lr0.007": 0.9}}))
    unseen, val = summary_rows(tmp_path)
    assert unseen.pop("parameters_m") == round(
        parameter_counts((18,), num_classes=11)["simdeeplab"][18] / 1e6, 2
    )
    assert unseen.pop("step_s") == 0.9
    assert unseen == {"phase": "0006R0 (unseen)", "variant": "sim-lr0.007", "epochs": 16, "seeds": "0, 1",
                      "alone": 32.0, "walk": 33.5, "walk_seeds": 2, "crf": 31.0, "crf_seeds": 1, "small": 50.0,
                      "walk_ms": 50.0, "crf_ms": 80.0, "train_s": 100.5}  # fmt: skip
    assert (val["phase"], val["alone"], val["walk"], val["crf"]) == ("val", 46.0, 47.0, None)
    page = report(tmp_path, tmp_path).read_text()
    assert (
        "| 0006R0 (unseen) | sim-lr0.007 | 16 | 0, 1 | 32 | 33.5 | 2 | 31 | 1 | 50 | 50 | 80 | 100.5 | "
        in page
    )


def test_the_rate_search_widens_within_one_command_once_the_grids_records_are_in(
    tmp_path, monkeypatch, capsys
):
    # every stubbed run writes its record at once, scored as SCORES says (the grid's ends win)
    def wait(self, deadline, on_tick):
        write_rates(tmp_path, {step[0]: SCORES[step[0]] for step in self.pending if step[0] in SCORES})
        started.extend(self.pending)
        self.pending = []
        return True

    started = []
    monkeypatch.setattr(Runs, "wait", wait)
    monkeypatch.setattr(camvid_cross_drive, "STAGES", ("rates", "class weights"))
    args = argparse.Namespace(output=tmp_path, seeds=[0], dry_run=False, report=False, minutes=1.0, archive=None, parallel=1,
                              threads=1, device="cpu", crop=[160, 160], max_steps=None, data_root=tmp_path)  # fmt: skip
    run_cross_drive(args)
    rates = [step[0] for step in started if step[2] == "remedy" and not step[0].endswith("-mfw")]
    assert len(rates) == 12 + 2 and {"sim-lr0.0035", "smp-deeplabv3plus-lr0.08"} <= set(rates)
    assert rates.index("sim-lr0.0035") > rates.index("sim-lr0.007")  # after the grid it widens
    # the stage after the rates starts in the same command: the class weights at the chosen rates
    assert [step[0] for step in started[len(rates) :]] == [f"{v}-mfw" for v in (
        "sim-lr0.007", "smp-deeplabv3plus-lr0.04", "smp-unet-lr0.02", "seed-aux-shared")]  # fmt: skip
