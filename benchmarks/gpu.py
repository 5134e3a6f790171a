"""Everything a GPU can show, as one command, most informative first: the CUDA tests, `difnet train`
itself under torchrun on CUDA (NCCL, DDP, SyncBatchNorm, gradient checkpointing, the auxiliary losses,
evaluation, resumption), one epoch of CamVid training of DifNet-18 and Sim-DeepLab-18 at full
resolution, a two-rank SyncBatchNorm check (two GPUs), the model benchmark's Table 4 at 505x505 (CUDA
columns only), the walk benchmark and the CuPy reference tests. Each section runs in a child process
within what is left of `--budget` (a hung one is killed with every process it started) and is
reported as passed, failed or skipped with its reason, its time and its result; logs and the
benchmarks' own results go under `<output>/gpu-logs/`, the summary to `<output>/gpu.{json,md}` and
stdout. Exits non-zero when a section failed or when none ran.

    python -m benchmarks.gpu --output $OUT                              # on a GPU, <= 8 minutes
    python -m benchmarks.gpu --sections tests train --budget 120        # a subset
    python -m benchmarks.gpu --dry-run --output /tmp/gpu                # CPU, tiny sizes (CI)
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from benchmarks._measure import (
    PROJECT_ROOT,
    RESULTS_DIR,
    machine_info,
    markdown_table,
    project_environment,
    write_results,
)
from benchmarks.camvid import DEFAULT_DATA, HALF_RESOLUTION
from difnet.data import CamVid
from difnet.models.serialization import read_checkpoint
from difnet.training.loop import LAST
from difnet.training.records import LOG_NAME, read_log

DEFAULT_BUDGET_S = 480.0
SYNC_TOLERANCE = 1e-3  # relative gap below which two sets of running statistics agree
UNSYNCED_GAP = 1e-2  # relative gap above which they differ (the shards' means differ by 1)
TORCHRUN_TIMEOUT_S = 150.0  # a process group that hangs must not eat the whole budget
PYTEST_TIMEOUT_S = 150.0
TRAIN_STEPS = 2  # optimiser steps of the `train` section's first epoch, and of its resumed second
CAMVID_CROP = (360, 480)  # the `camvid` section's crops (H, W): CamVid's full resolution
NCCL_RANKS = re.compile(r"NCCL INFO .*?\bnranks (\d+)", re.IGNORECASE)
SUMMARY_COLUMNS = {"name": "section", "status": "status", "seconds": "time (s)", "result": "result"}


@dataclass
class Section:
    """The outcome of one section: passed, failed or skipped, why, and what it measured."""

    name: str
    status: str = "skipped"
    result: str = ""
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Run:
    """Where and how big the sections run: a GPU at full size, or the CPU at tiny sizes."""

    dry: bool
    logs: Path
    camvid_root: Path
    deadline: float

    @property
    def device(self) -> str:
        return "cpu" if self.dry else "cuda"

    def left_s(self) -> float:
        return self.deadline - time.monotonic()

    def env(self) -> dict[str, str]:
        """The children's environment: the project importable, no GPU in a dry run; on a GPU NCCL
        logs its setup (`NCCL_DEBUG=INFO`), which says how many ranks it joined."""
        env = project_environment()
        if self.dry:
            env["CUDA_VISIBLE_DEVICES"] = ""
        else:
            env.setdefault("NCCL_DEBUG", "INFO")
        return env

    def child(self, name: str, argv: list[str], cap_s: float | None = None) -> subprocess.CompletedProcess:
        """`python <argv>` from the project root within the time left (and `cap_s`), its output in
        `<name>.log`. One that outlives that is killed with every process it started (torchrun's
        workers run in sessions of their own) and fails the section as hung."""
        log = self.logs / f"{name}.log"
        timeout = max(1.0, min(self.left_s(), cap_s or float("inf")))
        process = subprocess.Popen([sys.executable, *argv], cwd=PROJECT_ROOT, env=self.env(), text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            started = kill_tree(process.pid)
            stdout, stderr = process.communicate()
            log.write_text(f"$ python {' '.join(argv)}\n{stdout}\n{stderr}")
            raise SectionFailed(f"hung: no result after {timeout:.0f} s, so it and the {started} processes "
                                f"it started were killed; see {log.name}") from None  # fmt: skip
        log.write_text(f"$ python {' '.join(argv)}\n{stdout}\n{stderr}")
        return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)

    def checked_child(
        self, name: str, argv: list[str], cap_s: float | None = None
    ) -> subprocess.CompletedProcess:
        """`child`, failing the section with the end of stderr when the command fails."""
        done = self.child(name, argv, cap_s)
        if done.returncode != 0:
            raise SectionFailed(f"exit status {done.returncode}: {_last_line(done.stderr)} (see {name}.log)")
        return done


class SectionFailed(Exception):
    """A section's check failed; the message says which and why."""


class SectionSkipped(Exception):
    """A section cannot run here; the message says why."""


def descendants(pid: int) -> list[int]:
    """The processes that process `pid` started, and theirs, from Linux's /proc (none without it)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])  # the field after the state
        except (OSError, IndexError, ValueError):
            continue  # the process ended meanwhile
        children.setdefault(parent, []).append(int(stat.parent.name))
    found, pending = [], [pid]
    while pending:
        offspring = children.get(pending.pop(), [])
        found += offspring
        pending += offspring
    return found


def kill_tree(pid: int) -> int:
    """SIGKILL process `pid` and every process it started, stopping them all first so that none
    starts another meanwhile; returns how many it had started."""
    stopped: list[int] = []
    pending = [pid]
    while pending:
        for process in pending:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process, signal.SIGSTOP)
        stopped += pending
        pending = [p for p in descendants(pid) if p not in stopped]
    for process in stopped:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process, signal.SIGKILL)
    return len(stopped) - 1


def _last_line(text: str) -> str:
    """The last line naming an error (else the last line) of a child's output, for the summary."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line or "error:" in line]
    return (errors or lines or ["(no output)"])[-1][-300:]


def cuda_or_skip(run: Run) -> None:
    """Skip a GPU-only section when no GPU is here (a dry run has none on purpose)."""
    if not run.dry and not torch.cuda.is_available():
        raise SectionSkipped("CUDA is not available (use --dry-run for the CPU version)")


def pytest_section(run: Run, name: str, argv: list[str]) -> tuple[str, dict[str, Any]]:
    """Run pytest on `argv` (at most `PYTEST_TIMEOUT_S`); passed when tests ran and none failed,
    skipped when all were skipped."""
    report = run.logs / f"{name}.xml"
    argv = ["-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}", *argv]
    done = run.child(name, argv, cap_s=PYTEST_TIMEOUT_S)
    if not report.is_file():
        raise SectionFailed(
            f"pytest wrote no report (exit status {done.returncode}): {_last_line(done.stderr)}"
        )
    suite = ElementTree.parse(report).getroot()
    suite = suite.find("testsuite") if suite.tag == "testsuites" else suite
    counts = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    reasons = sorted({s.get("message", "") for s in suite.iter("skipped")})
    failed = [c.get("name") for c in suite.iter("testcase") if c.find("failure") is not None
              or c.find("error") is not None]  # fmt: skip
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    result = f"{passed} passed, {len(failed)} failed, {counts['skipped']} skipped"
    details = {**counts, "passed": passed, "failed_tests": failed, "skip_reasons": reasons}
    if failed or done.returncode not in (0, 5):
        raise SectionFailed(f"{result}: {', '.join(failed) or _last_line(done.stdout)} (see {name}.log)")
    if passed == 0:
        raise SectionSkipped(f"all {counts['skipped']} tests skipped: {'; '.join(reasons)}")
    return result, details


def cuda_tests(run: Run) -> tuple[str, dict[str, Any]]:
    """tests/test_cuda.py: fused vs materialized walk in fp32/bf16/fp16, fp16 GradScaler steps."""
    return pytest_section(run, "tests", ["tests/test_cuda.py"])


def cupy_tests(run: Run) -> tuple[str, dict[str, Any]]:
    """The reference's property tests on CuPy (tests/test_reference_properties.py, CuPy cases)."""
    if importlib.util.find_spec("cupy") is None:
        raise SectionSkipped("CuPy is not installed")
    return pytest_section(run, "cupy", ["tests/test_reference_properties.py", "-k", "cupy"])


def free_port() -> int:
    """A TCP port free on this machine now, for a process group's rendezvous."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def torchrun(processes: int) -> list[str]:
    """`python -m torch.distributed.run` for `processes` ranks on this machine, on a free port."""
    return ["-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_addr", "127.0.0.1",
            "--master_port", str(free_port())]  # fmt: skip


def nccl_ranks(output: str) -> set[int]:
    """The rank counts of the communicators NCCL reports setting up (`NCCL_DEBUG=INFO`); empty
    when NCCL logged nothing, so never ran."""
    return {int(count) for count in NCCL_RANKS.findall(output)}


def backend_evidence(run: Run, done: subprocess.CompletedProcess, processes: int, log: str) -> str:
    """Which backend the torchrun of `done` ran over, on how many ranks: on a GPU NCCL's own log
    must show a communicator of `processes` ranks (else the section fails); a dry run is gloo."""
    if run.dry:
        return f"gloo on the CPU, {processes} rank(s) (dry run)"
    counts = nccl_ranks(done.stdout + done.stderr)
    if counts != {processes}:
        seen = f"communicators of {sorted(counts)} ranks" if counts else "no NCCL INFO line"
        raise SectionFailed(f"expected NCCL on {processes} rank(s), its log shows {seen} (see {log})")
    return f"NCCL on {processes} rank(s) (NCCL's log: nranks {processes})"


def syncbn_step(run: Run, backend: str, directory: Path) -> subprocess.CompletedProcess:
    """torchrun: 2 processes (on a GPU each, or the CPU), one DDP step each on its half of a batch."""
    size = 33 if run.dry else 129
    argv = [*torchrun(2), "-m", "benchmarks._syncbn_step", backend, run.device, str(size), str(directory)]
    return run.child(f"syncbn-{backend}", argv, cap_s=TORCHRUN_TIMEOUT_S)


def largest_gap(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """The largest difference between two sets of running statistics, relative to each buffer's
    largest magnitude (at least 1)."""
    return max(float((a[n] - b[n]).abs().max() / b[n].abs().max().clamp(min=1.0)) for n in a)


def statistics_checks(gaps: dict[str, float], synchronised: bool) -> dict[str, bool]:
    """What the running statistics must show. Synchronised: the ranks agree and match the whole
    batch, not rank 0's shard alone. Per-process (CPU): rank 0 matches its shard and the ranks differ."""
    if synchronised:
        return {
            "rank0_vs_rank1": gaps["rank0_vs_rank1"] <= SYNC_TOLERANCE,
            "rank0_vs_whole_batch": gaps["rank0_vs_whole_batch"] <= SYNC_TOLERANCE,
            "rank0_vs_shard0_alone (differ)": gaps["rank0_vs_shard0_alone"] >= UNSYNCED_GAP,
        }
    return {
        "rank0_vs_shard0_alone": gaps["rank0_vs_shard0_alone"] <= SYNC_TOLERANCE,
        "rank0_vs_rank1 (differ)": gaps["rank0_vs_rank1"] >= UNSYNCED_GAP,
    }


def syncbn(run: Run) -> tuple[str, dict[str, Any]]:
    """SyncBatchNorm over NCCL on two GPUs, one rank each: both ranks' running statistics agree,
    match the whole batch's and differ from one shard's. Skipped on one GPU: NCCL refuses two ranks
    on one GPU, and with one rank SyncBatchNorm has nothing to gather (the `train` section runs the
    library's NCCL path on one rank). On the CPU (dry run) SyncBatchNorm cannot run: the step runs
    over gloo with per-process BatchNorm and rank 0 must match its own shard instead (the harness works)."""
    cuda_or_skip(run)
    if not run.dry and torch.cuda.device_count() < 2:
        raise SectionSkipped(
            f"needs two GPUs, this machine has {torch.cuda.device_count()}: NCCL refuses two ranks on one "
            "GPU, and with one rank SyncBatchNorm has nothing to gather (the `train` section runs the "
            "library's NCCL path on one rank)"
        )
    backend = "gloo" if run.dry else "nccl"
    directory = run.logs / "syncbn"
    done = syncbn_step(run, backend, directory)
    log = f"syncbn-{backend}.log"
    if done.returncode != 0:
        raise SectionFailed(
            f"torchrun ({backend}, 2 ranks) exit status {done.returncode}: {_last_line(done.stderr)} (see {log})"
        )
    ran = backend_evidence(run, done, 2, log)
    stats = {name: torch.load(directory / f"{name}.pt", weights_only=True)
             for name in ("rank0", "rank1", "shard0", "whole")}  # fmt: skip
    gaps = {
        "rank0_vs_rank1": largest_gap(stats["rank0"], stats["rank1"]),
        "rank0_vs_whole_batch": largest_gap(stats["rank0"], stats["whole"]),
        "rank0_vs_shard0_alone": largest_gap(stats["rank0"], stats["shard0"]),
        "shard0_vs_whole_batch": largest_gap(stats["shard0"], stats["whole"]),
    }
    details = {"backend": backend, "ranks": 2, "device": run.device, "max_relative_gaps": gaps}
    numbers = ", ".join(f"{k} {v:.2e}" for k, v in gaps.items())
    broken = [
        check for check, holds in statistics_checks(gaps, synchronised=not run.dry).items() if not holds
    ]
    if broken:
        raise SectionFailed(f"running statistics: {', '.join(broken)} do not hold ({numbers})")
    verdict = (
        "per-process BatchNorm (SyncBatchNorm needs CUDA): rank 0 matches its shard"
        if run.dry
        else "SyncBatchNorm: the ranks agree and match the whole batch, not one shard"
    )
    return f"{ran}; {verdict} ({numbers})", details


def train_ranks(run: Run) -> int:
    """The `train` section's processes: one per GPU, two at most (NCCL refuses two ranks on one
    GPU); one in a dry run."""
    return 1 if run.dry else min(2, torch.cuda.device_count())


def train_commands(run: Run, directory: Path, processes: int) -> dict[str, list[str]]:
    """The `train` section's commands (argv after `python`), in the order they run: `difnet train`
    under torchrun for one epoch of `TRAIN_STEPS` steps on synthetic scenes, with gradient
    checkpointing and the auxiliary seed and transition losses, evaluated on every rank; the check
    that resuming its `last.pt` restores what it saved; the run resumed for a second epoch."""
    size = "40" if run.dry else "129"
    checkpoint = str(directory / LAST)
    where = ["--device", run.device, "--workers", "0" if run.dry else "2", "--no-progress"]
    return {
        "first": [*torchrun(processes), "-m", "difnet.cli", "train", "--model", "difnet", "--depth", "18",
                  "--dataset", "synthetic", "--num-classes", "5", "--image-size", size, size,
                  "--crop-size", size, "--batch-size", "2", "--epochs", "1",
                  "--max-steps-per-epoch", str(TRAIN_STEPS), "--val-split", "val", "--gradient-checkpointing",
                  "--aux-seed-weight", "0.4", "--transition-loss-weight", "0.1", "--output-dir",
                  str(directory), *where],
        "resume-check": ["-m", "benchmarks._resume_check", checkpoint, run.device],
        "resumed": [*torchrun(processes), "-m", "difnet.cli", "train", "--resume", checkpoint,
                    "--epochs", "2", *where],
    }  # fmt: skip


def check_run_log(directory: Path, epochs: int) -> dict[str, Any]:
    """The `train` section's run after `epochs` epochs: its log must hold a finite training loss at
    the end of each epoch and a validation record for each; returns the last of each."""
    records = read_log(directory)
    trained = [r for r in records if r["event"] == "train"]
    val = [r for r in records if r["event"] == "val"]
    steps = [TRAIN_STEPS * (epoch + 1) for epoch in range(epochs)]
    if [r["step"] for r in trained] != steps or not all(math.isfinite(r["loss"]) for r in trained):
        raise SectionFailed(f"training records at steps {[(r['step'], r['loss']) for r in trained]}, "
                            f"expected a finite loss at steps {steps}")  # fmt: skip
    if [r["epoch"] for r in val] != list(range(1, epochs + 1)):
        raise SectionFailed(
            f"validation records of epochs {[r['epoch'] for r in val]}, expected 1 to {epochs}"
        )
    return {"train": trained[-1], "val": val[-1]}


def library_training(run: Run) -> tuple[str, dict[str, Any]]:
    """`difnet train` itself under torchrun on CUDA for a few steps, then resumed from its checkpoint.
    It takes NCCL, DDP with device_ids, SyncBatchNorm under gradient checkpointing, the auxiliary and
    transition losses through DDP and evaluation on every rank; the resumed run must restore the
    saved weights and optimiser state exactly and carry the step count on."""
    cuda_or_skip(run)
    processes = train_ranks(run)
    with tempfile.TemporaryDirectory(prefix="train-") as folder:
        directory = Path(folder) / "run"
        commands = train_commands(run, directory, processes)
        first = run.checked_child("train-first", commands["first"], cap_s=TORCHRUN_TIMEOUT_S)
        ran = backend_evidence(run, first, processes, "train-first.log")
        after_first = check_run_log(directory, 1)
        saved = read_checkpoint(directory / LAST)
        if (saved["epoch"], saved["step"]) != (1, TRAIN_STEPS):
            raise SectionFailed(
                f"{LAST} holds epoch {saved['epoch']}, step {saved['step']}; expected 1, {TRAIN_STEPS}"
            )
        check = json.loads(
            run.checked_child("train-resume-check", commands["resume-check"]).stdout.splitlines()[-1]
        )
        if not (check["weights_equal"] and check["optimizer_equal"] and check["step"] == TRAIN_STEPS):
            raise SectionFailed(f"resuming {LAST} did not restore what it saved: {check}")
        run.checked_child("train-resumed", commands["resumed"], cap_s=TORCHRUN_TIMEOUT_S)
        after_resume = check_run_log(directory, 2)
        final = read_checkpoint(directory / LAST)
        shutil.copyfile(directory / LOG_NAME, run.logs / "train.jsonl")
    if (final["epoch"], final["step"], len(final["history"])) != (2, 2 * TRAIN_STEPS, 2):
        raise SectionFailed(f"the resumed {LAST} holds epoch {final['epoch']}, step {final['step']}, "
                            f"{len(final['history'])} epochs of history; expected 2, {2 * TRAIN_STEPS}, 2")  # fmt: skip
    if all(torch.equal(final["model"][k], v) for k, v in saved["model"].items() if v.is_floating_point()):
        raise SectionFailed("the resumed run left the weights as it found them")
    sync = ("BatchNorm per process (SyncBatchNorm needs CUDA)" if run.dry else
            f"SyncBatchNorm ({'gathering over 2 ranks' if processes > 1 else 'one rank: nothing to gather'})")  # fmt: skip
    loss, miou = after_resume["train"]["loss"], 100 * after_resume["val"]["miou"]
    result = (f"`difnet train` under torchrun, {ran}: DDP, {sync} under gradient "
              f"checkpointing, aux seed + transition losses; resumed with weights and optimiser state as "
              f"saved, to step {final['step']} (loss {loss:.3f}, val mIoU {miou:.1f})")  # fmt: skip
    details = {"backend": "gloo" if run.dry else "nccl", "ranks": processes, "resume_check": check,
               "after_first_epoch": after_first, "after_resume": after_resume}  # fmt: skip
    return result, details


def benchmark_section(run: Run, name: str, argv: list[str]) -> tuple[str, dict[str, Any]]:
    """`python -m benchmarks.<name> argv` writing into the logs; its JSON becomes the details."""
    cuda_or_skip(run)
    directory = run.logs / name
    run.checked_child(name, ["-m", f"benchmarks.{name}", "--devices", run.device,
                             "--output-dir", str(directory), *argv])  # fmt: skip
    payload = json.loads((directory / f"{name}.json").read_text())
    return f"{name}.json and {name}.md in gpu-logs/{name}/", payload


def walk(run: Run) -> tuple[str, dict[str, Any]]:
    """benchmarks/walk.py on the GPU: fused vs materialized walks, the cascade's share at 505x505."""
    argv = (
        ["--sizes", "256", "--image-size", "65", "--budget", "0.1", "--sgemm-size", "256"]
        if run.dry
        else ["--budget", "2"]
    )
    result, payload = benchmark_section(run, "walk", argv)
    fused = [r for r in payload["walks"] if r["walk"] == "fused"]
    speedups = ", ".join(f"N={r['n']} {r['mode']} {r['speedup']:.2f}x" for r in fused)
    return f"fused speed-up {speedups}; {result}", payload


def model(run: Run) -> tuple[str, dict[str, Any]]:
    """benchmarks/model.py's Table 4 at 505x505 on the GPU (its CUDA columns only)."""
    argv = (
        ["--sizes", "65", "--difnet-depths", "18", "--simdeeplab-depths", "18", "--warmup", "0",
         "--repeats", "1", "--train-size", "33"]
        if run.dry
        else ["--sizes", "505", "--warmup", "3", "--repeats", "10"]
    )  # fmt: skip
    result, payload = benchmark_section(run, "model", argv)
    forward = ", ".join(f"{r['model']} {r['forward_ms']:.1f} ms" for r in payload["inference"])
    return f"whole forward {forward}; {result}", payload


def train_camvid(run: Run, name: str, options: list[str]) -> tuple[float, list[dict[str, Any]]]:
    """`difnet train` of `name`-18 on CamVid for one epoch: its wall time and log records. The run's
    directory is temporary (its checkpoints are large); its log is kept as `camvid-<name>.jsonl`."""
    with tempfile.TemporaryDirectory(prefix=f"camvid-{name}-") as output:
        started = time.perf_counter()
        run.checked_child(f"camvid-{name}", ["-m", "difnet.cli", "train", "--model", name, "--depth", "18",
                                             "--dataset", "camvid", "--data-root", str(run.camvid_root),
                                             "--epochs", "1", "--scale-range", "0.75", "1.25",
                                             "--device", run.device, "--no-progress", "--overwrite",
                                             "--output-dir", output, *options])  # fmt: skip
        seconds = time.perf_counter() - started
        shutil.copyfile(Path(output) / LOG_NAME, run.logs / f"camvid-{name}.jsonl")
        return seconds, read_log(output)


def check_full_resolution(root: Path) -> None:
    """Refuse a CamVid whose images are smaller than the `CAMVID_CROP` crops, such as the 240x180
    copy `python -m benchmarks.camvid shrink` writes: its crops would be mostly padding."""
    first = CamVid(root, "train").samples[0].image
    with Image.open(first) as image:
        width, height = image.size
    if height < CAMVID_CROP[0] or width < CAMVID_CROP[1]:
        shrunk = (height, width) == HALF_RESOLUTION
        raise SectionFailed(
            f"CamVid at {root} holds {width}x{height} images ({first.name})"
            + (", the half-resolution copy `python -m benchmarks.camvid shrink` writes" if shrunk else "")
            + f"; this section trains {CAMVID_CROP[1]}x{CAMVID_CROP[0]} crops of the full-resolution "
            "images: pass the original CamVid with --camvid-root"
        )


def camvid(run: Run) -> tuple[str, dict[str, Any]]:
    """One epoch of DifNet-18 and Sim-DeepLab-18 on CamVid train at full resolution (480x360), then
    val mIoU; the copy `benchmarks.camvid shrink` writes is refused. A dry run trains one step on
    60x45 images and skips validation."""
    cuda_or_skip(run)
    if not (run.camvid_root / "train.txt").is_file():
        raise SectionSkipped(f"CamVid not found at {run.camvid_root} (pass --camvid-root)")
    check_full_resolution(run.camvid_root)
    options = ["--image-size", "45", "60", "--crop-size", "45", "60", "--max-steps-per-epoch", "1",
               "--batch-size", "2", "--workers", "0", "--val-split", "none"] if run.dry else \
        ["--crop-size", *map(str, CAMVID_CROP), "--batch-size", "8", "--workers", "8"]  # fmt: skip
    details, results = {}, []
    for name in ("difnet", "simdeeplab"):
        seconds, records = train_camvid(run, name, options)
        trained = [r for r in records if r["event"] == "train"]
        val = [r for r in records if r["event"] == "val"]
        if not trained or not (val or run.dry):
            raise SectionFailed(f"{name}: no training or validation record in camvid-{name}.jsonl")
        details[name] = {
            "seconds": seconds,
            "last_train_record": trained[-1],
            "val": val[-1] if val else None,
        }
        score = f"val mIoU {100 * val[-1]['miou']:.2f}" if val else "not validated (dry run)"
        results.append(f"{name}-18 {score}, loss {trained[-1]['loss']:.3f} at step {trained[-1]['step']}, "
                       f"{trained[-1]['images_per_second']:.1f} images/s ({seconds:.0f} s)")  # fmt: skip
    return "; ".join(results), details


# in the order they run, most informative first: the kernels everything else relies on (a minute),
# the library's own CUDA training path, real data at full resolution; then what needs two GPUs, the
# timings, and the reference's CuPy port
SECTIONS: dict[str, Callable[[Run], tuple[str, dict[str, Any]]]] = {
    "tests": cuda_tests,
    "train": library_training,
    "camvid": camvid,
    "syncbn": syncbn,
    "model": model,
    "walk": walk,
    "cupy": cupy_tests,
}


def plan(names: list[str], run: Run) -> str:
    """The sections `names` in the order they run, each with what it checks (its docstring's first
    sentence), and where: printed first, in a dry run too."""
    where = "dry run: the CPU at tiny sizes" if run.dry else f"{torch.cuda.device_count()} GPU(s)"
    lines = [f"{len(names)} sections, in this order ({where}, budget {run.left_s():.0f} s):"]
    for number, name in enumerate(names, start=1):
        summary = " ".join((SECTIONS[name].__doc__ or "").split()).split(". ", 1)[0].rstrip(".")
        lines.append(f"  {number}. {name}: {summary}")
    return "\n".join(lines)


def run_section(name: str, run: Run) -> Section:
    """One section, timed; a section that finds the budget spent is skipped."""
    section = Section(name)
    if run.left_s() <= 0:
        section.result = "the budget was spent before it started"
        return section
    started = time.perf_counter()
    try:
        section.result, section.details = SECTIONS[name](run)
        section.status = "passed"
    except SectionSkipped as skipped:
        section.result = str(skipped)
    except Exception as failed:  # noqa: BLE001 -- one broken section must not lose the others' report
        section.status, section.result = "failed", f"{type(failed).__name__}: {failed}"
    section.seconds = round(time.perf_counter() - started, 1)
    return section


def report(sections: list[Section], info: dict[str, Any], args: argparse.Namespace, logs: Path) -> str:
    """The markdown page: what ran on which GPU, each section's status, time and result, then the
    tables of the walk and model benchmarks that ran (their headings one level down)."""
    gpu = info.get("cuda_device", "no CUDA device")
    mode = "dry run (CPU, tiny sizes)" if args.dry_run else f"budget {args.budget:.0f} s"
    parts = [
        "# GPU checks (`python -m benchmarks.gpu`)",
        f"GPU: {gpu}. torch {info['torch']} (CUDA {torch.version.cuda}), CPU {info['cpu']}, {info['date']}; {mode}.",
        markdown_table([asdict(s) for s in sections], SUMMARY_COLUMNS),
        f"Logs of every section: `{logs.name}/` next to this file.",
    ]
    for section in sections:
        page = logs / section.name / f"{section.name}.md"
        if section.status == "passed" and page.is_file():
            parts.append(page.read_text().strip().replace("\n#", "\n##").replace("# ", "## ", 1))
    return "\n\n".join(parts)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sections", nargs="+", choices=list(SECTIONS), default=list(SECTIONS),
                        help=f"which sections to run, in this order (default: all, {' '.join(SECTIONS)})")  # fmt: skip
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S,
                        help="seconds for all sections; what is left when one starts bounds it")  # fmt: skip
    parser.add_argument("--camvid-root", type=Path, default=DEFAULT_DATA,
                        help="full-resolution CamVid in the SegNet layout (default: %(default)s)")  # fmt: skip
    parser.add_argument("--output", type=Path, default=RESULTS_DIR, help="where gpu.{json,md} go")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: check the script itself")
    args = parser.parse_args(argv)
    if args.budget <= 0:
        parser.error(f"--budget must be positive (got {args.budget})")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logs = args.output / "gpu-logs"
    logs.mkdir(parents=True, exist_ok=True)
    run = Run(args.dry_run, logs, args.camvid_root, time.monotonic() + args.budget)
    info = machine_info()
    print(f"GPU: {info.get('cuda_device', 'no CUDA device')}\n{plan(args.sections, run)}", flush=True)
    sections = []
    for name in args.sections:
        sections.append(run_section(name, run))
        print(
            f"{name}: {sections[-1].status} ({sections[-1].seconds:.1f} s) {sections[-1].result}", flush=True
        )
    markdown = report(sections, info, args, logs)
    payload = {"machine": info, "dry_run": args.dry_run, "budget_s": args.budget,
               "sections": [asdict(s) for s in sections]}  # fmt: skip
    paths = write_results("gpu", payload, markdown, args.output)
    print(
        f"\n{markdown_table([asdict(s) for s in sections], SUMMARY_COLUMNS)}\n\nwrote {paths[0]} and {paths[1]}"
    )
    if any(s.status == "failed" for s in sections):
        return 1
    if not any(s.status == "passed" for s in sections):
        print("no section ran: nothing was checked", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
