"""The CamVid verdict runner's bookkeeping: recipes, the held-aside split, selection, packing."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from benchmarks.camvid import (
    HOLDOUT_SEQUENCE,
    VARIANTS,
    pack,
    recipe,
    record_path,
    select,
    with_samples,
)
from difnet.data.base import Sample


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_variant_is_a_valid_recipe_differing_only_in_its_overrides(variant, tmp_path):
    config = recipe(variant, 1, "screen", 8, tmp_path, "cpu", tmp_path)
    baseline = recipe("sim-he", 1, "screen", 8, tmp_path, "cpu", tmp_path).to_dict()
    model, overrides = VARIANTS[variant]
    changed = {k for k, v in config.to_dict().items() if baseline[k] != v} - {"output_dir"}
    assert changed <= {"model", *overrides} and config.model == model
    assert config.epochs == 8 and config.seed == 1 and config.depth == 18


def test_the_held_aside_sequence_and_the_rest_partition_the_split():
    class Fake:
        samples = [Sample(Path(f"train/{name}.png"), Path(f"trainannot/{name}.png"))
                   for name in ("0001TP_1", "0006R0_1", "0001TP_2", "0016E5_9")]  # fmt: skip

    held, rest = with_samples(Fake(), keep=True), with_samples(Fake(), keep=False)
    assert [s.image.stem for s in held.samples] == ["0001TP_1", "0001TP_2"]
    assert [s.image.stem for s in rest.samples] == ["0006R0_1", "0016E5_9"]
    assert all(s.image.name.startswith(HOLDOUT_SEQUENCE) for s in held.samples)


def write_record(output: Path, variant: str, seed: int, miou: float) -> None:
    record = {"variant": variant, "seed": seed, "phase": "screen", "holdout": {"miou": miou}}
    record_path(output, variant, seed, "screen", 8).write_text(json.dumps(record))


def test_selection_takes_each_models_best_mean_over_seeds(tmp_path):
    for variant, mious in {"sim-he": (0.30, 0.40), "sim-normal": (0.36, 0.36), "dif-he": (0.2, 0.2),
                           "dif-aux": (0.5, 0.1), "dif-normal": (0.31, 0.32)}.items():  # fmt: skip
        for seed, miou in enumerate(mious):
            write_record(tmp_path, variant, seed, miou)
    best = select(tmp_path, list(VARIANTS), 8)
    assert best == {"simdeeplab": "sim-normal", "difnet": "dif-normal"}


def test_pack_keeps_records_and_logs_but_no_weights(tmp_path):
    write_record(tmp_path, "sim-he", 0, 0.3)
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
