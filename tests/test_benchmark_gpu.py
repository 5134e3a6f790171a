"""`python -m benchmarks.gpu`: its dry run (CPU, tiny sizes) reports every section as run or skipped
with a reason, and the script fails when a section fails or when nothing ran."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import gpu

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def test_dry_run_reports_every_section_run_or_skipped_with_a_reason(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(PROJECT_ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu", "--dry-run", "--output", str(tmp_path)],
        capture_output=True, text=True, cwd=PROJECT_ROOT, env=env, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu.json").read_text())
    sections = {s["name"]: s for s in report["sections"]}
    assert list(sections) == list(gpu.SECTIONS) and report["dry_run"]
    assert all(s["status"] in ("passed", "skipped") and s["result"] for s in sections.values())
    for name in ("syncbn", "walk", "model"):  # shrunk on the CPU, never skipped
        assert sections[name]["status"] == "passed", sections[name]
    assert sections["syncbn"]["details"]["max_relative_gaps"]["rank0_vs_shard0_alone"] == 0.0
    assert "CUDA is not available" in sections["tests"]["result"]
    assert sections["camvid"]["status"] == ("passed" if gpu.DEFAULT_CAMVID.is_dir() else "skipped")
    page = (tmp_path / "gpu.md").read_text()
    assert "GPU: no CUDA device" in page and "## One walk P y" in page and "| syncbn | passed |" in page
    assert "syncbn: passed" in done.stdout


def test_a_run_where_nothing_ran_fails(tmp_path, capsys):
    argv = [
        "--dry-run",
        "--sections",
        "camvid",
        "--camvid-root",
        str(tmp_path / "nowhere"),
        "--output",
        str(tmp_path),
    ]
    assert gpu.main(argv) == 1
    assert "no section ran" in capsys.readouterr().err
    section = json.loads((tmp_path / "gpu.json").read_text())["sections"][0]
    assert section["status"] == "skipped" and "CamVid not found at" in section["result"]


def test_a_failing_section_is_reported_and_fails_the_run(tmp_path, monkeypatch):
    def broken(run: gpu.Run) -> tuple[str, dict]:
        raise RuntimeError("the kernel fell over")

    monkeypatch.setitem(gpu.SECTIONS, "walk", broken)
    assert gpu.main(["--dry-run", "--sections", "walk", "--output", str(tmp_path)]) == 1
    section = json.loads((tmp_path / "gpu.json").read_text())["sections"][0]
    assert section == {**section, "status": "failed", "result": "RuntimeError: the kernel fell over"}


def fake_statistics(directory: Path, **offsets: float) -> None:
    """The four files a torchrun step leaves: one BatchNorm's running mean per run, shifted by `offsets`."""
    directory.mkdir(parents=True)
    for name in ("rank0", "rank1", "shard0", "whole"):
        torch.save(
            {"bn.running_mean": torch.full((4,), 2.0 + offsets.get(name, 0.0))}, directory / f"{name}.pt"
        )


def test_syncbn_falls_back_to_gloo_when_nccl_refuses_two_ranks_on_one_gpu(tmp_path, monkeypatch):
    calls = []

    def torchrun(run: gpu.Run, backend: str, directory: Path) -> subprocess.CompletedProcess:
        calls.append(backend)
        if backend == "nccl":
            return subprocess.CompletedProcess(
                [], 1, "", "ncclInvalidUsage\nDuplicate GPU detected : rank 1 and rank 0"
            )
        fake_statistics(directory, shard0=0.5)  # synchronised: the ranks agree and match the whole batch
        return subprocess.CompletedProcess([], 0, "", "")

    monkeypatch.setattr(gpu, "syncbn_step", torchrun)
    monkeypatch.setattr(gpu, "cuda_or_skip", lambda run: None)
    result, details = gpu.syncbn(gpu.Run(dry=False, logs=tmp_path, camvid_root=tmp_path, deadline=1e12))
    assert calls == ["nccl", "gloo"] and details["backend"] == "gloo"
    assert result.startswith("SyncBatchNorm over gloo") and "NCCL refused two ranks on one GPU" in result


@pytest.mark.parametrize(
    "offsets, broken",
    [
        ({"rank1": 0.5}, "rank0_vs_rank1"),  # the ranks disagree
        ({"whole": 0.5, "shard0": 0.5}, "rank0_vs_whole_batch"),  # rank 0 saw only its shard
        ({}, "rank0_vs_shard0_alone (differ)"),  # the shard alone gives the same: nothing to tell apart
    ],
)
def test_unsynchronised_statistics_fail_the_syncbn_section(tmp_path, monkeypatch, offsets, broken):
    def torchrun(run: gpu.Run, backend: str, directory: Path) -> subprocess.CompletedProcess:
        fake_statistics(directory, **offsets)
        return subprocess.CompletedProcess([], 0, "", "")

    monkeypatch.setattr(gpu, "syncbn_step", torchrun)
    monkeypatch.setattr(gpu, "cuda_or_skip", lambda run: None)
    with pytest.raises(gpu.SectionFailed, match=re.escape(broken)):
        gpu.syncbn(gpu.Run(dry=False, logs=tmp_path, camvid_root=tmp_path, deadline=1e12))


def test_a_spent_budget_skips_the_sections_left(tmp_path):
    run = gpu.Run(dry=True, logs=tmp_path, camvid_root=tmp_path, deadline=0.0)
    section = gpu.run_section("walk", run)
    assert section.status == "skipped" and section.result == "the budget was spent before it started"


@pytest.mark.parametrize("budget", ["0", "-5"])
def test_budget_must_be_positive(budget):
    with pytest.raises(SystemExit):
        gpu.parse_args(["--budget", budget])
