"""`python -m benchmarks.gpu`: its dry run (CPU, tiny sizes) shows every section in the order it runs
and reports each as run or skipped with a reason; the script fails when a section fails, hangs or
when nothing ran; its GPU-only choices (NCCL's ranks, the `train` section's command lines, the
full-resolution CamVid) are checked here without a GPU."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks import camvid, gpu
from difnet.cli import build_parser
from difnet.training import TrainConfig

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
    for name in ("train", "syncbn", "walk", "model"):  # shrunk on the CPU, never skipped
        assert sections[name]["status"] == "passed", sections[name]
    assert sections["syncbn"]["details"]["max_relative_gaps"]["rank0_vs_shard0_alone"] == 0.0
    train = sections["train"]["details"]
    assert (train["backend"], train["ranks"]) == ("gloo", 1) and train["resume_check"]["weights_equal"]
    assert "CUDA is not available" in sections["tests"]["result"]
    assert sections["camvid"]["status"] == ("passed" if camvid.DEFAULT_DATA.is_dir() else "skipped")
    page = (tmp_path / "gpu.md").read_text()
    assert "GPU: no CUDA device" in page and "## One walk P y" in page and "| syncbn | passed |" in page
    plan = [
        line.split(":")[0].strip() for line in done.stdout.splitlines() if re.match(r"  \d+\. \w+:", line)
    ]
    assert plan == [f"{number}. {name}" for number, name in enumerate(gpu.SECTIONS, start=1)]
    assert "syncbn: passed" in done.stdout and "train: passed" in done.stdout


def test_the_most_informative_sections_run_first_and_camvid_reads_the_shared_data():
    assert list(gpu.SECTIONS)[:3] == ["tests", "train", "camvid"]
    assert gpu.parse_args([]).camvid_root == camvid.DEFAULT_DATA


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


NCCL_LOG = "host:1:1 [0] NCCL INFO comm 0x5f rank 0 nranks 2 cudaDev 0 busId 1000 - Init COMPLETE"


def gpu_run(tmp_path: Path) -> gpu.Run:
    """A run on a GPU (the tests stand its GPU-only steps in)."""
    return gpu.Run(dry=False, logs=tmp_path, camvid_root=tmp_path, deadline=time.monotonic() + 600)


def test_syncbn_is_skipped_on_one_gpu_and_says_why(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu, "cuda_or_skip", lambda run: None)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(gpu, "syncbn_step", lambda *args: pytest.fail("no torchrun on one GPU"))
    with pytest.raises(
        gpu.SectionSkipped, match="needs two GPUs, this machine has 1: NCCL refuses two ranks"
    ):
        gpu.syncbn(gpu_run(tmp_path))


@pytest.mark.parametrize("nccl_log, error", [(NCCL_LOG, None), ("", "no NCCL INFO line"),
                                             (NCCL_LOG.replace("nranks 2", "nranks 1"), r"\[1\] ranks")])  # fmt: skip
def test_syncbn_runs_nccl_on_two_gpus_and_nccls_log_must_show_both_ranks(
    tmp_path, monkeypatch, nccl_log, error
):
    calls = []

    def torchrun(run: gpu.Run, backend: str, directory: Path) -> subprocess.CompletedProcess:
        calls.append(backend)
        fake_statistics(directory, shard0=0.5)  # synchronised: the ranks agree and match the whole batch
        return subprocess.CompletedProcess([], 0, "", nccl_log)

    monkeypatch.setattr(gpu, "syncbn_step", torchrun)
    monkeypatch.setattr(gpu, "cuda_or_skip", lambda run: None)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    if error:
        with pytest.raises(gpu.SectionFailed, match=f"expected NCCL on 2 rank\\(s\\).*{error}"):
            gpu.syncbn(gpu_run(tmp_path))
        return
    result, details = gpu.syncbn(gpu_run(tmp_path))
    assert calls == ["nccl"] and (details["backend"], details["ranks"]) == ("nccl", 2)
    assert result.startswith("NCCL on 2 rank(s) (NCCL's log: nranks 2); SyncBatchNorm: the ranks agree")


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
        return subprocess.CompletedProcess([], 0, "", NCCL_LOG)

    monkeypatch.setattr(gpu, "syncbn_step", torchrun)
    monkeypatch.setattr(gpu, "cuda_or_skip", lambda run: None)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(gpu.SectionFailed, match=re.escape(broken)):
        gpu.syncbn(gpu_run(tmp_path))


@pytest.mark.parametrize("gpus, ranks", [(1, 1), (2, 2), (8, 2)])
def test_the_train_section_runs_difnet_train_itself_under_torchrun_on_cuda(
    tmp_path, monkeypatch, gpus, ranks
):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    run = gpu_run(tmp_path)
    assert gpu.train_ranks(run) == ranks
    commands = gpu.train_commands(run, tmp_path / "run", ranks)
    assert list(commands) == ["first", "resume-check", "resumed"]
    first, check, resumed = commands.values()
    for argv in (first, resumed):
        assert argv[:4] == ["-m", "torch.distributed.run", "--nproc_per_node", str(ranks)]
        assert argv[argv.index("-m", 1) :][:3] == ["-m", "difnet.cli", "train"]
    assert check == ["-m", "benchmarks._resume_check", str(tmp_path / "run" / "last.pt"), "cuda"]

    def config(argv: list[str]) -> TrainConfig:
        return TrainConfig.from_args(build_parser().parse_args(argv[argv.index("difnet.cli") + 1 :]))

    trained = config(first)
    assert (trained.device, trained.dataset, trained.val_split, trained.epochs) == (
        "cuda",
        "synthetic",
        "val",
        1,
    )
    assert trained.max_steps_per_epoch == gpu.TRAIN_STEPS and trained.gradient_checkpointing
    assert trained.model == "difnet" and trained.aux_seed_weight > 0 and trained.transition_loss_weight > 0
    assert trained.output_dir == str(tmp_path / "run")
    options = build_parser().parse_args(resumed[resumed.index("difnet.cli") + 1 :])
    assert (options.resume, options.epochs, options.device) == (str(tmp_path / "run" / "last.pt"), 2, "cuda")


def test_a_hung_child_is_killed_with_the_processes_it_started(tmp_path):
    """torchrun's workers run in sessions of their own and hold its output pipes: killing torchrun
    alone leaves them running and the wait for its output as long as theirs."""
    hang = ("import subprocess, sys, time; worker = subprocess.Popen([sys.executable, '-c', "
            "'import time; time.sleep(30)'], start_new_session=True); print('worker', worker.pid, flush=True); "
            "time.sleep(30)")  # fmt: skip
    run = gpu.Run(dry=True, logs=tmp_path, camvid_root=tmp_path, deadline=time.monotonic() + 600)
    started = time.monotonic()
    with pytest.raises(gpu.SectionFailed, match=r"hung: no result after 3 s, so it and the 1 processes it"):
        run.child("hang", ["-c", hang], cap_s=3)
    assert time.monotonic() - started < 15
    worker = int(re.search(r"^worker (\d+)$", (tmp_path / "hang.log").read_text(), re.M).group(1))
    for _ in range(50):  # killed, then reaped by whoever adopted it
        state = Path(f"/proc/{worker}/stat")
        if not state.exists() or state.read_text().rsplit(")", 1)[1].split()[0] == "Z":
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"worker {worker} still runs")


def camvid_copy(root: Path, width: int, height: int) -> Path:
    """A one-image CamVid in the SegNet layout with `width` x `height` images."""
    for folder in ("train", "trainannot"):
        (root / folder).mkdir(parents=True)
    Image.fromarray(np.zeros((height, width, 3), np.uint8)).save(root / "train" / "a.png")
    Image.fromarray(np.zeros((height, width), np.uint8)).save(root / "trainannot" / "a.png")
    (root / "train.txt").write_text("/x/train/a.png /x/trainannot/a.png\n")
    return root


def test_camvid_refuses_the_shrunk_copy_by_its_image_size(tmp_path):
    shrunk = camvid_copy(tmp_path / "camvid240", *reversed(camvid.HALF_RESOLUTION))
    run = gpu.Run(dry=True, logs=tmp_path, camvid_root=shrunk, deadline=time.monotonic() + 600)
    with pytest.raises(gpu.SectionFailed, match=r"holds 240x180 images \(a.png\), the half-resolution copy "
                       r"`python -m benchmarks.camvid shrink` writes; this section trains 480x360 crops"):  # fmt: skip
        gpu.camvid(run)
    gpu.check_full_resolution(camvid_copy(tmp_path / "full", 480, 360))  # the original passes


def test_a_spent_budget_skips_the_sections_left(tmp_path):
    run = gpu.Run(dry=True, logs=tmp_path, camvid_root=tmp_path, deadline=0.0)
    section = gpu.run_section("walk", run)
    assert section.status == "skipped" and section.result == "the budget was spent before it started"


@pytest.mark.parametrize("budget", ["0", "-5"])
def test_budget_must_be_positive(budget):
    with pytest.raises(SystemExit):
        gpu.parse_args(["--budget", budget])
