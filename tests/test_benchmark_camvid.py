"""The CamVid verdict runner's bookkeeping: recipes, the held-aside split, selection, packing."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tarfile
import time
from pathlib import Path

import pytest

from benchmarks import camvid
from benchmarks.camvid import (
    RUNS,
    SEGMENTS,
    STAGE_ONE,
    STAGES,
    VARIANTS,
    pack,
    plan,
    queue,
    recipe,
    record_path,
    select,
    selection,
    start_segment,
    step_seconds,
    with_samples,
)
from benchmarks.camvid_report import report, small_miou, verdict_gaps
from benchmarks.camvid_variants import SMALL_CLASSES
from difnet.data.base import Sample
from difnet.data.camvid import CAMVID_CLASSES


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_variant_is_a_valid_recipe_differing_only_in_its_overrides(variant, tmp_path):
    config = recipe(variant, 1, "remedy", 8, tmp_path, "cpu", tmp_path)
    baseline = recipe("sim-he", 1, "remedy", 8, tmp_path, "cpu", tmp_path).to_dict()
    model, overrides = VARIANTS[variant]
    changed = {k for k, v in config.to_dict().items() if baseline[k] != v} - {"output_dir", "seed_from"}
    assert changed <= {"model", *overrides} and config.model == model
    assert config.epochs == 8 and config.seed == 1 and config.depth == 18


def test_a_second_stage_starts_from_the_first_stage_run_of_its_seed_and_phase(tmp_path):
    second = recipe("walk-dist-r1", 2, "verdict", 4, tmp_path, "cpu", tmp_path)
    assert second.seed_from == str(tmp_path / "verdict" / "seed-aux-shared-e16-seed2" / "last.pt")
    first = recipe(STAGE_ONE, 2, "verdict", 16, tmp_path, "cpu", tmp_path)
    assert (first.kernel, first.shared_backbone, first.aux_seed_weight) == ("identity", True, 0.4)
    assert recipe("dif-aux-shared", 2, "verdict", 16, tmp_path, "cpu", tmp_path).seed_from is None


class FakeSplit:
    def __init__(self, names: list[str]) -> None:
        self.samples = [Sample(Path(f"train/{n}.png"), Path(f"trainannot/{n}.png")) for n in names]


def test_the_held_aside_images_and_the_rest_partition_the_split():
    split = FakeSplit(["0001TP_1", "0006R0_1", "0001TP_2", "0016E5_9"])
    held, rest = with_samples(split, "screen", keep=True), with_samples(split, "screen", keep=False)
    assert [s.image.stem for s in held.samples] == ["0001TP_1", "0001TP_2"]
    assert [s.image.stem for s in rest.samples] == ["0006R0_1", "0016E5_9"]


def test_the_remedy_phase_holds_aside_the_first_60_frames_of_0016E5_in_frame_order():
    frames = [f"0016E5_{index:05d}" for index in range(100, 0, -1)]  # listed out of order
    split = FakeSplit(["0001TP_1", *frames, "0006R0_1"])
    held, rest = with_samples(split, "remedy", keep=True), with_samples(split, "remedy", keep=False)
    assert sorted(s.image.stem for s in held.samples) == [f"0016E5_{i:05d}" for i in range(1, 61)]
    assert len(rest.samples) == 42 and "0001TP_1" in {s.image.stem for s in rest.samples}


def test_the_cross_drive_phases_train_on_whole_drives_and_score_one_no_model_trains_on(camvid_root, tmp_path):
    for phase, (trained, held_out, sizes) in {
        "drive-screen": (("0016E5",), "0001TP", (305, 62)),
        "drive-verdict": (("0001TP", "0016E5"), "0006R0", (367, 101)),
    }.items():
        data = camvid.phase_datasets(camvid_root, phase, (160, 160))
        drives = {split: {s.image.name.split("_")[0] for s in data[split].samples} for split in data}
        assert drives == {"train": set(trained), "val": {held_out}}
        assert (len(data["train"]), len(data["val"])) == sizes
        assert {s.image.name for s in camvid.fit_images(camvid_root, phase).samples} <= {
            s.image.name for s in data["train"].samples
        }
    assert record_path(tmp_path, "sim-lr0.02", 1, "drive-verdict", 16) == (
        tmp_path / "cross-drive" / "verdict" / "sim-lr0.02-e16-seed1.json"
    )


def write_records(output: Path, phase: str, split: str, scores: dict[str, tuple[float, ...]]) -> None:
    for variant, mious in scores.items():
        for seed, miou in enumerate(mious):
            record = {"variant": variant, "seed": seed, "phase": phase, split: {"miou": miou}}
            record_path(output, variant, seed, phase, 8).write_text(json.dumps(record))


def test_every_committed_record_is_of_a_variant_the_runner_still_has():
    records = [json.loads(p.read_text()) for p in sorted(RUNS.glob("*/*.json"))]
    assert records and {r["variant"] for r in records} <= set(VARIANTS)


def test_the_committed_records_select_what_selection_json_says():
    # the staged verdict's second stage is chosen on seed 0, the seed every candidate ran:
    # walk-dist-r1-guided1 ran on seed 0 only, and its gain there beats walk-dist-r1-guided's mean
    # over both seeds, not its gain on seed 0
    assert selection(RUNS) == json.loads((RUNS / "selection.json").read_text())
    assert select(RUNS)["best"] == {"simdeeplab": "sim-lr0.007", "difnet": "walk-dist-r1-guided"}
    assert select(RUNS)["joint"] == {"simdeeplab": "sim-normal", "difnet": "dif-aux-shared"}


def all_args(output: Path) -> argparse.Namespace:
    """The arguments of `python -m benchmarks.camvid all` with its defaults, on `output`."""
    return argparse.Namespace(output=output, variants=list(VARIANTS), phases=["screen", "remedy", "verdict"],
                              screen_seeds=[0, 1], verdict_seeds=[0, 1, 2], screen_epochs=8,
                              verdict_epochs=16)  # fmt: skip


def test_all_would_queue_only_the_staged_baselines_third_equal_time_seed(monkeypatch, capsys):
    planned = dict(plan(all_args(RUNS)))
    assert list(planned) == list(STAGES)
    assert planned["staged verdict"] == [("walk-dist-r1-guided", s, "verdict", 3) for s in (0, 1, 2)]
    assert queue(all_args(RUNS)) == [("verdict", ("sim-lr0.007", 2, "verdict", 20))]
    monkeypatch.setattr(sys, "argv", ["camvid", "all", "--dry-run"])
    camvid.main()
    out = capsys.readouterr().out
    assert "1 runs to queue:\n  verdict: verdict/sim-lr0.007-e20-seed2\n" in out and "waiting" not in out


def test_all_starts_only_the_missing_run_and_keeps_the_committed_selection(tmp_path, started_runs):
    for path in [*RUNS.glob("*.json"), *RUNS.glob("*/*.json")]:  # the records, not the run folders
        (tmp_path / path.relative_to(RUNS)).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path.relative_to(RUNS)).write_bytes(path.read_bytes())
    args = argparse.Namespace(**vars(all_args(tmp_path)), dry_run=False, minutes=1.0, archive=None, parallel=2,
                              threads=1, device="cpu", crop=[160, 160], timing_steps=1, max_steps=None)  # fmt: skip
    camvid.run_all(args)
    assert started_runs == [("sim-lr0.007", 2, "verdict", 20, "run")]
    for name in ("selection.json", "step_seconds.json"):
        assert (tmp_path / name).read_text() == (RUNS / name).read_text()


def test_all_without_records_plans_the_screen_and_waits_on_its_choice(tmp_path):
    assert plan(all_args(tmp_path)) == [
        ("screen", [(v, seed, "screen", 8) for seed in (0, 1) for v in ("sim-he", "sim-normal", "dif-he", "dif-normal")])
    ]  # fmt: skip
    assert not list(tmp_path.iterdir())  # planning writes nothing


def test_pack_keeps_records_and_logs_but_no_weights(tmp_path):
    write_records(tmp_path, "screen", "holdout", {"sim-he": (0.3,)})
    run = tmp_path / "screen" / "sim-he-e8-seed0"
    (run / "best").mkdir(parents=True)
    (run / "last.pt").write_bytes(b"weights")
    (run / "best" / "config.json").write_text("{}")
    (run / "log.jsonl").write_text("{}\n")
    archive = tmp_path / "runs.tar.gz"
    pack(tmp_path, archive)
    with tarfile.open(archive) as tar:
        names = sorted(tar.getnames())
    assert names == ["screen/sim-he-e8-seed0.json", "screen/sim-he-e8-seed0/log.jsonl"]


def test_the_gaps_wait_for_difnets_verdict_runs():
    baseline = [{"variant": "sim-normal", "epochs": 16, "seed": 0, "val": {"miou": 0.4}}]
    selection = {"best": {"simdeeplab": "sim-normal", "difnet": "dif-aux"}, "equal_time_epochs": 18}
    gaps = verdict_gaps({"sim-normal @ 16 epochs": baseline}, selection, [])
    assert gaps == {"lines": ["dif-aux: no verdict run finished yet, no gaps"]}


def test_each_segment_of_a_resumed_run_keeps_its_commit(tmp_path, monkeypatch):
    commits = iter(["aaa", "bbb", "ccc", "ddd"])
    monkeypatch.setattr(camvid, "provenance", lambda: {"commit": next(commits), "dirty": "no"})
    run = tmp_path / "screen" / "sim-he-e8-seed0"
    assert [s["commit"] for s in start_segment(run, resumed=False)] == ["aaa"]
    assert [s["commit"] for s in start_segment(run, resumed=True)] == ["aaa", "bbb"]
    assert [s["commit"] for s in json.loads((run / SEGMENTS).read_text())] == ["aaa", "bbb"]
    assert [s["commit"] for s in start_segment(run, resumed=False)] == ["ccc"]  # a fresh run starts anew
    (run / SEGMENTS).unlink()  # resumed from a checkpoint written before segments were kept
    assert [s["commit"] for s in start_segment(run, resumed=True)] == ["unknown", "ddd"]


NAMES = list(CAMVID_CLASSES)


def metrics(miou: float, small: dict[str, float | None]) -> dict:
    """A split's metrics: IoU 0.8 for the large classes, `small` for the small ones."""
    per_class = [small.get(name, 0.8) for name in NAMES]
    return {"miou": miou, "pixel_accuracy": 0.9, "per_class_iou": per_class}


SMALL_D = {"Pole": 0.2, "SignSymbol": 0.3, "Fence": None, "Pedestrian": 0.4, "Bicyclist": 0.1}  # mean 0.25
SMALL_S = dict.fromkeys(["Pole", "SignSymbol", "Fence", "Pedestrian", "Bicyclist"], 0.1)


def verdict_record(
    variant: str, seed: int, epochs: int, miou: float, small: dict, commits: list[str]
) -> dict:
    segments = [{"commit": c, "dirty": "no", "torch": "2.x", "cpu": "a CPU"} for c in commits]
    return {"variant": variant, "seed": seed, "phase": "verdict", "epochs": epochs, "steps": 10 * epochs,
            "train_seconds": 100.0, "resumed": len(commits) > 1, "val": metrics(miou, small),
            "curve": [{"epoch": epochs, "miou": miou}], "provenance": segments[-1], "segments": segments}  # fmt: skip


SELECTION = {"best": {"simdeeplab": "sim-normal", "difnet": "dif-aux-shared"}, "equal_time_epochs": 18}
RECORDS = [
    verdict_record("dif-aux-shared", 0, 16, 0.50, SMALL_D, ["1111111aaa", "2222222bbb"]),
    verdict_record("dif-aux-shared", 1, 16, 0.60, SMALL_D, ["2222222bbb"]),
    verdict_record("sim-normal", 0, 16, 0.50, SMALL_S, ["3333333ccc"]),
    verdict_record("sim-normal", 1, 16, 0.52, SMALL_S, ["3333333ccc"]),
    verdict_record("sim-normal", 0, 18, 0.54, SMALL_S, ["2222222bbb"]),
]


def test_the_small_class_mean_skips_an_absent_iou_as_the_diagnostics_do():
    assert small_miou(metrics(0.5, SMALL_D), NAMES) == pytest.approx(0.25)
    assert small_miou(metrics(0.5, dict.fromkeys(SMALL_S)), NAMES) is None


def test_the_verdict_gaps_are_differences_of_the_means_over_seeds():
    groups: dict[str, list[dict]] = {}
    for r in RECORDS:
        groups.setdefault(f"{r['variant']} @ {r['epochs']} epochs", []).append(r)
    gaps = verdict_gaps(groups, SELECTION, NAMES)
    assert gaps["equal steps"]["miou_gap"] == pytest.approx(0.55 - 0.51)
    assert gaps["equal time"]["miou_gap"] == pytest.approx(0.55 - 0.54)
    assert gaps["equal steps"]["small_class_gap"] == pytest.approx(0.25 - 0.1)
    assert (gaps["equal steps"]["difnet_seeds"], gaps["equal time"]["baseline_seeds"]) == (2, 1)
    assert gaps["lines"][0].startswith("equal steps: DifNet-18 minus Sim-DeepLab-18 = +4.0 mIoU")
    assert "small classes +15.0" in gaps["lines"][0]


def test_the_report_tables_name_every_commit_behind_them(tmp_path):
    runs, results = tmp_path / "runs", tmp_path / "results"
    for r in RECORDS:
        record_path(runs, r["variant"], r["seed"], "verdict", r["epochs"]).write_text(json.dumps(r))
    screen = {**RECORDS[2], "phase": "screen", "holdout": metrics(0.3, SMALL_S), "segments": None,
              "provenance": {"commit": "4444444ddd", "dirty": "yes", "torch": "2.x", "cpu": "a CPU"}}  # fmt: skip
    record_path(runs, "sim-normal", 0, "screen", 8).write_text(json.dumps(screen))
    (runs / "selection.json").write_text(json.dumps(SELECTION))
    report(runs, results)
    page = (results / "camvid_verdict.md").read_text()
    assert "Code: 4444444 (tree differed: yes) (1 run)." in page  # under the screen's tables
    assert "Code: 1111111 (1 run), 2222222 (3 runs), 3333333 (2 runs)." in page  # under the verdict's
    verdict = page[page.index("## Verdict") :]
    assert (
        "| dif-aux-shared @ 16 epochs | 50.0 / 60.0 | **55.0 ± 7.1** | 25.0 ± 0.0 | 160 | 100* / 100 |"
        in verdict
    )
    assert "| Fence (small) | - | 10.0 | 10.0 |" in verdict  # absent for DifNet: no IoU, not 0
    assert "| small-class mIoU | 25.0 | 10.0 | 10.0 |" in verdict
    assert (results / "camvid_curves.png").is_file()
    summary = json.loads((results / "camvid_verdict.json").read_text())
    assert summary["gaps"]["equal steps"]["miou_gap"] == pytest.approx(0.04)


def test_runs_close_their_logs_and_reap_the_runs_the_deadline_stops(tmp_path, monkeypatch):
    scripts = {"quick": "print('done')", "slow": "import time; print('started', flush=True); time.sleep(600)"}
    monkeypatch.setattr(
        camvid.Runs, "command", lambda self, variant, *_: [sys.executable, "-c", scripts[variant]]
    )
    monkeypatch.setattr(camvid.Runs, "poll_s", 0.2)
    spawned = []
    spawn = camvid.Runs.spawn

    def recording_spawn(self, *entry):  # noqa: ANN001, ANN202
        spawned.append(spawn(self, *entry))
        return spawned[-1]

    monkeypatch.setattr(camvid.Runs, "spawn", recording_spawn)
    runs = camvid.Runs(argparse.Namespace(output=tmp_path, parallel=2, threads=1))
    runs.pending = [("quick", 0, "screen", 8), ("slow", 0, "screen", 8)]
    assert runs.wait(time.time() + 3, on_tick=lambda: None) is False
    assert all(process.returncode is not None for process, _ in spawned)  # reaped, no zombie left
    assert all(log.closed for _, log in spawned)
    assert spawned[0][0].returncode == 0 and spawned[1][0].returncode == -signal.SIGTERM
    assert record_path(tmp_path, "quick", 0, "screen", 8).with_suffix(".log").read_text() == "done\n"
    assert runs.running == [] and runs.pending == []


def test_rediagnose_replaces_a_records_diagnostics_and_names_the_commit_that_computed_them(
    tmp_path, monkeypatch
):
    import torch

    from difnet.data import SyntheticShapes
    from difnet.models import DifNet, SimDeepLab

    scenes = SyntheticShapes(1, size=48, num_classes=len(NAMES), seed=0)
    scenes.class_names = NAMES
    monkeypatch.setattr(camvid, "phase_datasets", lambda root, phase, crop: {"val": scenes})
    monkeypatch.setattr(camvid, "provenance", lambda: {"commit": "eeeeeee", "dirty": "no"})
    torch.manual_seed(0)
    models = {"difnet": DifNet(depth=18, num_classes=len(NAMES)), "sim": SimDeepLab(depth=18, num_classes=11)}
    args = argparse.Namespace(variant="walk-dist-r1", seed=0, phase="remedy", epochs=3, output=tmp_path,
                              data_root=tmp_path, device="cpu")  # fmt: skip
    path = record_path(tmp_path, "walk-dist-r1", 0, "remedy", 3)
    with pytest.raises(SystemExit, match="no record .*walk-dist-r1-e3-seed0.json: run it first"):
        camvid.rediagnose(args)
    record = {"variant": "walk-dist-r1", "holdout": {"miou": 0.3}, "diagnostics": {"old": 1}}
    path.write_text(json.dumps(record))
    monkeypatch.setattr(camvid, "load_model", lambda source: models["difnet"])
    record = camvid.rediagnose(args)
    assert json.loads(path.read_text()) == record and record["holdout"] == {"miou": 0.3}
    diagnostics = record["diagnostics"]
    assert "old" not in diagnostics and diagnostics["split"] == "holdout"
    assert diagnostics["provenance"]["commit"] == "eeeeeee"
    assert len(diagnostics["seed_error_share"]) == 5
    monkeypatch.setattr(camvid, "load_model", lambda source: models["sim"])
    with pytest.raises(SystemExit, match="holds a SimDeepLab: only a DifNet has diagnostics"):
        camvid.rediagnose(args)


def fit_and_scored_scenes(monkeypatch) -> tuple:
    """Scenes a post-processing setting is fitted on and scenes it is scored on, in place of a phase's
    CamVid frames, with a fixed commit in the records."""
    from difnet.data import SyntheticShapes

    fitted, scored = (SyntheticShapes(n, size=40, num_classes=len(NAMES), seed=n) for n in (2, 1))
    for scenes in (fitted, scored):
        scenes.class_names = NAMES
    monkeypatch.setattr(camvid, "fit_images", lambda root, phase: fitted)
    monkeypatch.setattr(camvid, "phase_datasets", lambda root, phase, crop: {"val": scored})
    monkeypatch.setattr(camvid, "provenance", lambda: {"commit": "eeeeeee", "dirty": "no"})
    return fitted, scored


def test_refine_fits_on_training_images_and_scores_with_and_without_the_walk(tmp_path, monkeypatch):
    import torch

    from difnet.evaluation import evaluate
    from difnet.models import SimDeepLab
    from difnet.refinement import BilateralWalk, GuidedSetting, RefinedModel

    fitted, scored = fit_and_scored_scenes(monkeypatch)
    settings = [BilateralWalk(steps=1, mu=0.5), BilateralWalk(steps=2, colour_sigma=0.2)]
    monkeypatch.setattr(camvid, "bilateral_grid", lambda: settings)
    torch.manual_seed(0)
    model = SimDeepLab(depth=18, num_classes=len(NAMES))
    monkeypatch.setattr(camvid, "load_model", lambda source: model)
    args = argparse.Namespace(variant="sim-lr0.007", seed=0, phase="remedy", epochs=8, output=tmp_path,
                              data_root=tmp_path, device="cpu", widen=False, crf=False, tolerance=[])  # fmt: skip
    path = record_path(tmp_path, "sim-lr0.007", 0, "remedy", 8)
    with pytest.raises(SystemExit, match="no record .*sim-lr0.007-e8-seed0.json: run it first"):
        camvid.refine(args)
    path.write_text(json.dumps({"variant": "sim-lr0.007", "holdout": {"miou": 0.3}}))
    record = camvid.refine(args)
    assert json.loads(path.read_text()) == record and record["holdout"] == {"miou": 0.3}
    walk = record["bilateral_walk"]
    assert walk["fit_images"] == 2 and walk["split"] == "holdout"
    assert [tried["steps"] for tried in walk["fit"]["tried"]] == [1, 2]
    assert walk["gain"] == pytest.approx(walk["refined"]["miou"] - walk["model"]["miou"])
    assert walk["provenance"]["commit"] == "eeeeeee"
    small = [NAMES.index(name) for name in SMALL_CLASSES]
    expected = [walk["model"]["per_class_iou"][i] for i in small]
    assert walk["model"]["small_class_miou"] == pytest.approx(
        sum(v for v in expected if v is not None) / len([v for v in expected if v is not None])
    )
    assert "widened" not in walk
    monkeypatch.setattr(camvid, "guided_grid", lambda: [GuidedSetting(1, 3, 0.9)])
    widened = camvid.refine(argparse.Namespace(**{**vars(args), "widen": True}))["bilateral_walk"]
    fitted = BilateralWalk(**widened["fit"]["walk"])
    assert [BilateralWalk(**{k: v for k, v in t.items() if k != "miou"}) for t in widened["widened"]["tried"]] == [
        fitted, BilateralWalk(1, fitted.radius, 3, fitted.colour_sigma, fitted.position_sigma, 0.9)]  # fmt: skip
    chosen = BilateralWalk(**widened["widened"]["walk"])
    assert widened["refined"]["miou"] == pytest.approx(
        evaluate(RefinedModel(model, chosen), scored, progress=False).metrics.miou
    )
    assert walk["refine_ms_per_image"] > 0 and walk["threads"] >= 1
    assert "fastest_within" not in widened
    # with a tolerance of the whole range, the cheapest walk tried is scored beside the best
    fastest = camvid.refine(argparse.Namespace(**{**vars(args), "widen": True, "tolerance": [0.0, 1.0]}))[
        "bilateral_walk"
    ]
    cheapest = min((BilateralWalk(**{k: v for k, v in t.items() if k != "miou"}) for t in fastest["widened"]["tried"]),
                   key=lambda walk: walk.cost)  # fmt: skip
    exact, whole = fastest["fastest_within"]
    assert exact["tolerance"] == 0.0 and BilateralWalk(**exact["walk"]) == BilateralWalk(
        **fastest["widened"]["walk"]
    )
    assert BilateralWalk(**whole["walk"]) == cheapest and whole["refine_ms_per_image"] > 0
    assert whole["refined"]["miou"] == pytest.approx(
        evaluate(RefinedModel(model, cheapest), scored, progress=False).metrics.miou
    )
    pytest.importorskip("pydensecrf", reason='the dense CRF needs pydensecrf2 (pip install "difnet[crf]")')
    from functools import partial

    from difnet.refinement import DenseCRF, fit_dense_crf

    crfs = [DenseCRF(iterations=1), DenseCRF(iterations=2, colour_sigma=5.0)]
    monkeypatch.setattr(camvid, "fit_dense_crf", partial(fit_dense_crf, settings=crfs))
    crf = camvid.refine(argparse.Namespace(**{**vars(args), "crf": True}))["dense_crf"]
    assert [DenseCRF(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in t.items() if k != "miou"})
            for t in crf["fit"]["tried"]] == crfs  # fmt: skip
    assert crf["refined"]["miou"] == pytest.approx(
        evaluate(RefinedModel(model, DenseCRF(**{k: (tuple(v) if isinstance(v, list) else v)
                                                for k, v in crf["fit"]["crf"].items()})), scored, progress=False).metrics.miou
    )  # fmt: skip
    assert "bilateral_walk" in json.loads(path.read_text()) and crf["refine_ms_per_image"] > 0


def test_fit_scalars_picks_on_training_images_and_scores_from_the_runs_own_diagnostics(tmp_path, monkeypatch):
    import torch

    from difnet.data import SyntheticShapes
    from difnet.diagnostics import WALK_OVERRIDES
    from difnet.models import DifNet, SimDeepLab

    fitted = SyntheticShapes(2, size=40, num_classes=len(NAMES), seed=2)
    fitted.class_names = NAMES
    monkeypatch.setattr(camvid, "fit_images", lambda root, phase: fitted)
    monkeypatch.setattr(camvid, "provenance", lambda: {"commit": "eeeeeee", "dirty": "no"})
    torch.manual_seed(0)
    difnet = DifNet(depth=18, num_classes=len(NAMES), kernel="distance", kernel_radius=1)
    monkeypatch.setattr(camvid, "load_model", lambda source: difnet)
    args = argparse.Namespace(variant="walk-dist-r1", seed=0, phase="verdict", epochs=3, output=tmp_path,
                              data_root=tmp_path, device="cpu")  # fmt: skip
    path = record_path(tmp_path, "walk-dist-r1", 0, "verdict", 3)
    with pytest.raises(SystemExit, match="no record .*walk-dist-r1-e3-seed0.json: run it first"):
        camvid.fit_scalars(args)
    path.write_text(json.dumps({"variant": "walk-dist-r1", "diagnostics": {"miou": {"seed": 0.4}}}))
    with pytest.raises(SystemExit, match="has no walk-override scores: rediagnose it first"):
        camvid.fit_scalars(args)
    scored = {o.name: 0.4 + i / 1000 for i, o in enumerate(WALK_OVERRIDES)}
    path.write_text(json.dumps({"diagnostics": {"miou": {"seed": 0.4}, "overrides": scored, "split": "val"}}))
    record = camvid.fit_scalars(args)
    fit = record["walk_scalar_fit"]
    assert json.loads(path.read_text()) == record and fit["fit_images"] == 2 and fit["split"] == "val"
    expected = camvid.diagnose(difnet, fitted, SMALL_CLASSES).best_override
    assert fit["setting"] == expected["setting"] and fit["fit"]["best"] == pytest.approx(expected["miou"])
    assert fit["miou"] == scored[fit["setting"]] and fit["gain"] == pytest.approx(fit["miou"] - 0.4)
    assert fit["provenance"]["commit"] == "eeeeeee"
    monkeypatch.setattr(camvid, "load_model", lambda source: SimDeepLab(depth=18, num_classes=len(NAMES)))
    with pytest.raises(SystemExit, match="holds a SimDeepLab: only a DifNet walks"):
        camvid.fit_scalars(args)


def test_fit_guided_picks_on_training_images_and_scores_where_the_run_was_scored(tmp_path, monkeypatch):
    import torch

    from difnet.evaluation import evaluate
    from difnet.models import DifNet
    from difnet.refinement import GuidedSetting, fit_guided_walk

    fitted, scored = fit_and_scored_scenes(monkeypatch)
    settings = [GuidedSetting(1, 2, 0.9), GuidedSetting(2, 4, 0.99)]
    monkeypatch.setattr(
        camvid, "fit_guided_walk", lambda model, images, device: fit_guided_walk(model, images, settings)
    )
    torch.manual_seed(0)
    model = DifNet(
        depth=18, num_classes=len(NAMES), shared_backbone=True, guided_walk_stride=2, guided_walk_steps=3
    )
    monkeypatch.setattr(camvid, "load_model", lambda source: model)
    args = argparse.Namespace(variant="walk-dist-r1-guided", seed=0, phase="verdict", epochs=3, output=tmp_path,
                              data_root=tmp_path, device="cpu")  # fmt: skip
    path = record_path(tmp_path, "walk-dist-r1-guided", 0, "verdict", 3)
    path.write_text(json.dumps({"variant": "walk-dist-r1-guided"}))
    with pytest.raises(SystemExit, match="has no diagnostics: rediagnose it first"):
        camvid.fit_guided(args)
    path.write_text(json.dumps({"diagnostics": {"miou": {"seed": 0.4}, "split": "val"}}))
    record = camvid.fit_guided(args)
    fit = record["guided_walk_fit"]
    assert json.loads(path.read_text()) == record and fit["fit_images"] == 2 and fit["split"] == "val"
    assert [(t["stride"], t["steps"]) for t in fit["fit"]["tried"]] == [
        (2, 3),
        (1, 2),
        (2, 4),
    ]  # its own first
    picked, own = fit["fit"]["setting"], GuidedSetting.from_model(model)
    assert (own.stride, own.steps) == (picked["stride"], picked["steps"]) and own.mu == pytest.approx(
        picked["mu"]
    )
    assert fit["miou"] == pytest.approx(evaluate(model, scored, progress=False).metrics.miou)
    assert fit["gain"] == pytest.approx(fit["miou"] - 0.4) and fit["provenance"]["commit"] == "eeeeeee"
    monkeypatch.setattr(camvid, "load_model", lambda source: DifNet(depth=18, num_classes=len(NAMES)))
    with pytest.raises(SystemExit, match="must be a DifNet with a guided walk"):
        camvid.fit_guided(args)


def test_walk_report_lists_each_refined_run_with_its_gain_and_setting(tmp_path):
    from benchmarks.camvid_walks import report

    walk = {"stride": 2, "radius": 3, "steps": 5, "colour_sigma": 0.1, "position_sigma": 2.0, "mu": 0.9}
    record = {"variant": "sim-lr0.007", "epochs": 8, "seed": 1, "train_seconds": 600.0,
              "holdout": {"miou": 0.3, "per_class_iou": [0.3] * len(NAMES)},
              "provenance": {"commit": "aaaaaaa"},
              "bilateral_walk": {"fit": {"walk": walk}, "model": {"miou": 0.300, "small_class_miou": 0.02},
                                 "refined": {"miou": 0.306, "small_class_miou": 0.01}, "gain": 0.006,
                                 "seconds": 95.0, "provenance": {"commit": "bbbbbbb"}}}  # fmt: skip
    (tmp_path / "remedy").mkdir()
    (tmp_path / "remedy" / "sim-lr0.007-e8-seed1.json").write_text(json.dumps(record))
    text = report(tmp_path, tmp_path).read_text()
    row = "| sim-lr0.007-e8 | 1 | 30.0 | 30.6 | **+0.6** | 2.0 -> 1.0 | steps 5, colour_sigma 0.1, "
    assert row + "position_sigma 2.0, mu 0.9 | 95 | bbbbbbb |" in text


def test_walk_report_lists_a_baseline_run_again_apart_from_its_first_run(tmp_path):
    from benchmarks.camvid_walks import report

    walk = {"stride": 1, "radius": 3, "steps": 100, "colour_sigma": 0.1, "position_sigma": 2.0, "mu": 0.99}
    refined = {"fit": {"walk": {}}, "widened": {"walk": walk}, "model": {"miou": 0.43, "small_class_miou": 0.07},
               "refined": {"miou": 0.446, "small_class_miou": 0.06}, "gain": 0.016, "seconds": 800.0,
               "provenance": {"commit": "fffffff"}}  # fmt: skip
    first = {"variant": "sim-lr0.007", "epochs": 16, "seed": 0, "train_seconds": 2400.0, "curve": [{"epoch": 16, "miou": 0.43}],
             "val": {"miou": 0.43, "per_class_iou": [0.43] * len(NAMES)}, "provenance": {"commit": "aaaaaaa"}}  # fmt: skip
    again = {**first, "val": {"miou": 0.44, "per_class_iou": [0.44] * len(NAMES)}, "bilateral_walk": refined}
    (tmp_path / "verdict" / "reruns").mkdir(parents=True)
    (tmp_path / "verdict" / "sim-lr0.007-e16-seed0.json").write_text(json.dumps(first))
    (tmp_path / "verdict" / "reruns" / "sim-lr0.007-e16-seed0.json").write_text(json.dumps(again))
    text = report(tmp_path, tmp_path).read_text()
    assert "| sim-lr0.007-e16 | 43.0 | 43.0 |" in text and "| sim-lr0.007-e16 (rerun) | 44.0 | 44.0 |" in text
    row = "| sim-lr0.007-e16 (rerun) | 0 | 43.0 | 44.6 | **+1.6** | 7.0 -> 6.0 | stride 1, steps 100, "
    assert row + "colour_sigma 0.1, position_sigma 2.0, mu 0.99 | 800 | fffffff |" in text


def test_walk_report_scores_the_staged_verdict_by_its_walk_gain_and_lead_over_the_baseline(tmp_path):
    from benchmarks.camvid_walks import report, second_stage_curves

    def val(miou: float) -> dict:
        return {"miou": miou, "per_class_iou": [miou] * len(NAMES)}

    per_class = {"seed": [0.46] * len(NAMES), "walk 5": [0.47] * len(NAMES)}
    diagnostics = {"walk_gain": 0.01, "miou": {"seed": 0.46, "walk 5": 0.47}, "per_class_iou": per_class,
                   "best_override": {"setting": "mu 0.5, beta 0.25", "gain": 0.012}}  # fmt: skip
    provenance = {"provenance": {"commit": "ccccccc"}, "epochs": 16, "seed": 0}
    records = {
        "seed-aux-shared-e16-seed0": {"variant": "seed-aux-shared", "train_seconds": 2400.0, "val": val(0.46),
                                      "curve": [{"epoch": 16, "miou": 0.46}], **provenance},
        "walk-dist-r1-e3-seed0": {"variant": "walk-dist-r1", "train_seconds": 240.0, "val": val(0.47),
                                  "curve": [{"epoch": 2, "miou": 0.465}, {"epoch": 3, "miou": 0.47}],
                                  "diagnostics": diagnostics, **provenance, "epochs": 3},
        "sim-lr0.007-e16-seed0": {"variant": "sim-lr0.007", "train_seconds": 2000.0, "val": val(0.44),
                                  "curve": [{"epoch": 8, "miou": 0.40}, {"epoch": 16, "miou": 0.44}], **provenance},
    }  # fmt: skip
    (tmp_path / "verdict").mkdir()
    for name, record in records.items():
        (tmp_path / "verdict" / f"{name}.json").write_text(json.dumps(record))
    text = report(tmp_path, tmp_path).read_text()
    assert "| sim-lr0.007-e16 | 44.0 | 44.0 | 44.0 | 40.0, 44.0 | 33 | ccccccc |" in text
    assert (
        "| walk-dist-r1-e3 | 46.0 | 47.0 | +1.0 | **+1.0** | 46.0 -> 47.0 | mu 0.5, beta 0.25 (+1.2) | "
        "sim-lr0.007-e16 +3.0 (1 seeds against 1; 1.32x its time) | 4 | ccccccc |" in text
    )
    per_class = (
        "| class | seed-aux-shared-e16 (1 seeds) | walk-dist-r1-e3 (1 seeds) | sim-lr0.007-e16 (1 seeds) |"
    )
    assert (
        per_class in text
        and "| Sky | 46.0 | 47.0 | 44.0 |" in text
        and "| **mIoU** | **46.0** | **47.0** |" in text
    )
    assert "| walk-dist-r1-e3 | val |" not in text  # no scalars picked yet
    assert (tmp_path / "camvid_walks_curves.png").stat().st_size > 0
    drawn = second_stage_curves({"walk-dist-r1-e3": [records["walk-dist-r1-e3-seed0"]]})
    assert drawn == {"walk-dist-r1-e3 (second stage)": [{"curve": [
        {"epoch": 16, "miou": 0.46}, {"epoch": 18, "miou": 0.465}, {"epoch": 19, "miou": 0.47}]}]}  # fmt: skip
    fit = {"setting": "mu 0.8, beta 0.5, walk 1 off", "fit": {"seed": 0.44, "learned": 0.441, "best": 0.442},
           "miou": 0.465, "gain": 0.005, "seconds": 81.0, "provenance": {"commit": "ddddddd"}}  # fmt: skip
    staged = {**records["walk-dist-r1-e3-seed0"], "walk_scalar_fit": fit}
    (tmp_path / "verdict" / "walk-dist-r1-e3-seed0.json").write_text(json.dumps(staged))
    text = report(tmp_path, tmp_path).read_text()
    assert (
        "| walk-dist-r1-e3 | val | 0 | 46.0 | +1.0 | mu 0.8, beta 0.5, walk 1 off | **+0.5** | 44.0 | +0.1 | +0.2 | "
        "81 | ddddddd |" in text
    )


def test_walk_report_splits_a_guided_runs_gain_between_the_cascade_and_the_guided_walk(tmp_path):
    from benchmarks.camvid_walks import report

    stages = {"seed": 0.46, "walk 5": 0.463, "guided walk": 0.475, "oracle": 0.5, "seed, guided walk": 0.47}
    per_class = {stage: [miou] * len(NAMES) for stage, miou in stages.items()}
    per_class["seed"][NAMES.index("Pole")] = 0.1  # the small classes: the seed's Pole is worse
    diagnostics = {"walk_gain": 0.015, "miou": stages, "per_class_iou": per_class,
                   "best_override": {"setting": "mu 0.5, beta 0.25", "gain": 0.004}}  # fmt: skip
    val = {"miou": 0.475, "per_class_iou": [0.475] * len(NAMES)}
    record = {"variant": "walk-dist-r1-guided", "train_seconds": 600.0, "val": val, "seed": 1, "epochs": 3,
              "curve": [{"epoch": 3, "miou": 0.475}], "diagnostics": diagnostics,
              "provenance": {"commit": "eeeeeee"}}  # fmt: skip
    (tmp_path / "verdict").mkdir()
    (tmp_path / "verdict" / "walk-dist-r1-guided-e3-seed1.json").write_text(json.dumps(record))
    text = report(tmp_path, tmp_path).read_text()
    assert (
        "| walk-dist-r1-guided-e3 | val | 1 | 46.0 | 46.3 | 47.0 | 47.5 | +0.3 | +1.0 | **+1.5** | eeeeeee |"
        in text
    )
    # the small classes are read at the output, the guided walk: (10 + 4 x 46) / 5 -> 47.5
    assert "| 38.8 -> 47.5 |" in text


def test_walk_report_lists_a_guided_runs_picked_setting_against_its_learned_one(tmp_path):
    from benchmarks.camvid_walks import report

    stages = {"seed": 0.46, "walk 5": 0.463, "guided walk": 0.475, "oracle": 0.5, "seed, guided walk": 0.47}
    diagnostics = {"walk_gain": 0.015, "miou": stages, "small_class_miou": {"seed": 0.09, "guided walk": 0.08},
                   "per_class_iou": {stage: [miou] * len(NAMES) for stage, miou in stages.items()},
                   "best_override": {"setting": "mu 0.5, beta 0.25", "gain": 0.004}}  # fmt: skip
    fit = {"fit": {"setting": {"stride": 1, "steps": 60, "mu": 0.99}, "model_miou": 0.40, "best_miou": 0.404},
           "miou": 0.479, "small_class_miou": 0.095, "gain": 0.019, "seconds": 412.0,
           "provenance": {"commit": "fffffff"}}  # fmt: skip
    record = {"variant": "walk-dist-r1-guided", "train_seconds": 600.0, "seed": 2, "epochs": 3,
              "val": {"miou": 0.475, "per_class_iou": [0.475] * len(NAMES)}, "diagnostics": diagnostics,
              "curve": [{"epoch": 3, "miou": 0.475}], "guided_walk_fit": fit,
              "provenance": {"commit": "eeeeeee"}}  # fmt: skip
    (tmp_path / "verdict").mkdir()
    (tmp_path / "verdict" / "walk-dist-r1-guided-e3-seed2.json").write_text(json.dumps(record))
    text = report(tmp_path, tmp_path).read_text()
    assert (
        "| walk-dist-r1-guided-e3 | val | 2 | 46.0 | +1.5 | stride 1, 60 steps, mu 0.99 | 47.9 | **+1.9** | "
        "9.0 -> 9.5 | +0.4 | 412 | fffffff |" in text
    )


@pytest.mark.parametrize("variant", ["walk-dist-r1-guided", "smp-deeplabv3plus-lr0.04-difhead"])
def test_a_second_stages_step_time_is_measured_on_random_weights_without_its_first_stage(variant):
    # the equal-time budget needs the second stage's step time before any first stage has run
    if variant.startswith("smp-"):
        pytest.importorskip("segmentation_models_pytorch")
    assert step_seconds(variant, "cpu", (48, 48), steps=1, warmup=0) > 0
