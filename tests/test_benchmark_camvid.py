"""The CamVid verdict runner's bookkeeping: recipes, the held-aside split, selection, packing."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from benchmarks.camvid import (
    STAGE_ONE,
    VARIANTS,
    pack,
    recipe,
    record_path,
    select,
    with_samples,
)
from benchmarks.camvid_report import verdict_gaps
from difnet.data.base import Sample


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_variant_is_a_valid_recipe_differing_only_in_its_overrides(variant, tmp_path):
    config = recipe(variant, 1, "remedy", 8, tmp_path, "cpu", tmp_path)
    baseline = recipe("sim-he", 1, "remedy", 8, tmp_path, "cpu", tmp_path).to_dict()
    model, overrides = VARIANTS[variant]
    changed = {k for k, v in config.to_dict().items() if baseline[k] != v} - {"output_dir", "seed_from"}
    assert changed <= {"model", *overrides} and config.model == model
    assert config.epochs == 8 and config.seed == 1 and config.depth == 18


def test_a_second_stage_starts_from_the_first_stage_run_of_its_seed_and_phase(tmp_path):
    second = recipe("walk-dist-r3", 2, "verdict", 4, tmp_path, "cpu", tmp_path)
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


def write_records(output: Path, phase: str, split: str, scores: dict[str, tuple[float, ...]]) -> None:
    for variant, mious in scores.items():
        for seed, miou in enumerate(mious):
            record = {"variant": variant, "seed": seed, "phase": phase, split: {"miou": miou}}
            record_path(output, variant, seed, phase, 8).write_text(json.dumps(record))


def test_selection_takes_inits_on_val_and_difnets_remedy_on_the_held_aside_frames(tmp_path):
    val = {
        "sim-he": (0.30, 0.40),
        "sim-normal": (0.36, 0.36),
        "dif-he": (0.2, 0.2),
        "dif-normal": (0.31, 0.32),
    }
    write_records(tmp_path, "screen", "val", val)
    assert select(tmp_path, list(VARIANTS), 8) == {"simdeeplab": "sim-normal", "difnet": "dif-normal"}
    remedy = {
        "dif-normal": (0.5, 0.5),
        "dif-aux": (0.7, 0.1),
        "dif-shared": (0.52, 0.5),
        "dif-he": (0.9, 0.9),
    }
    write_records(tmp_path, "remedy", "holdout", remedy)  # dif-he is not DifNet's init: not a candidate
    assert select(tmp_path, list(VARIANTS), 8) == {"simdeeplab": "sim-normal", "difnet": "dif-shared"}


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
