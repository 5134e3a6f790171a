"""Everything a GPU can show, as one command: the CUDA tests, a two-process NCCL + SyncBatchNorm step
on one GPU, the CuPy reference tests, the walk benchmark, the model benchmark's Table 4 at 505x505
(CUDA columns only) and one epoch of CamVid training of DifNet-18 and Sim-DeepLab-18 at full
resolution. Each section runs in a child process within what is left of `--budget` and is reported
as passed, failed or skipped with its reason, its time and its result; logs and the benchmarks' own
results go under `<output>/gpu-logs/`, the summary to `<output>/gpu.{json,md}` and stdout. Exits
non-zero when a section failed or when none ran.

    python -m benchmarks.gpu --output $OUT --camvid-root $CAMVID       # on a GPU, <= 8 minutes
    python -m benchmarks.gpu --sections tests syncbn --budget 120       # a subset
    python -m benchmarks.gpu --dry-run --output /tmp/gpu                # CPU, tiny sizes (CI)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
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

from benchmarks._measure import (
    PROJECT_ROOT,
    RESULTS_DIR,
    machine_info,
    markdown_table,
    project_environment,
    write_results,
)
from difnet.training.records import LOG_NAME, read_log

DEFAULT_CAMVID = PROJECT_ROOT.parent / "shared" / "data" / "camvid"
DEFAULT_BUDGET_S = 480.0
SYNC_TOLERANCE = 1e-3  # relative gap below which two sets of running statistics agree
UNSYNCED_GAP = 1e-2  # relative gap above which they differ (the shards' means differ by 1)
SYNCBN_TIMEOUT_S = 90.0  # a process group that hangs must not eat the whole budget
PYTEST_TIMEOUT_S = 150.0
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
        """The children's environment: the project importable, no GPU in a dry run."""
        env = project_environment()
        if self.dry:
            env["CUDA_VISIBLE_DEVICES"] = ""
        return env

    def child(self, name: str, argv: list[str], cap_s: float | None = None) -> subprocess.CompletedProcess:
        """`python <argv>` from the project root within the time left (and `cap_s`), its output in
        `<name>.log`."""
        log = self.logs / f"{name}.log"
        timeout = max(1.0, min(self.left_s(), cap_s or float("inf")))
        try:
            done = subprocess.run([sys.executable, *argv], cwd=PROJECT_ROOT, env=self.env(), timeout=timeout,
                                  capture_output=True, text=True)  # fmt: skip
        except subprocess.TimeoutExpired as expired:
            log.write_text(_text(expired.stdout) + _text(expired.stderr))
            raise SectionFailed(f"timed out after {timeout:.0f} s; see {log.name}") from None
        log.write_text(f"$ python {' '.join(argv)}\n{done.stdout}\n{done.stderr}")
        return done

    def checked_child(self, name: str, argv: list[str]) -> subprocess.CompletedProcess:
        """`child`, failing the section with the end of stderr when the command fails."""
        done = self.child(name, argv)
        if done.returncode != 0:
            raise SectionFailed(f"exit status {done.returncode}: {_last_line(done.stderr)} (see {name}.log)")
        return done


class SectionFailed(Exception):
    """A section's check failed; the message says which and why."""


class SectionSkipped(Exception):
    """A section cannot run here; the message says why."""


def _text(output: str | bytes | None) -> str:
    """What a timed-out child wrote, as text."""
    return output.decode(errors="replace") if isinstance(output, bytes) else output or ""


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
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def syncbn_step(run: Run, backend: str, directory: Path) -> subprocess.CompletedProcess:
    """torchrun: 2 processes on one device, one DDP step each on its half of a batch."""
    size = 33 if run.dry else 129
    argv = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
            "--master_port", str(free_port()), "-m", "benchmarks._syncbn_step", backend, run.device,
            str(size), str(directory)]  # fmt: skip
    return run.child(f"syncbn-{backend}", argv, cap_s=SYNCBN_TIMEOUT_S)


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
    """NCCL + SyncBatchNorm on one GPU: both ranks' running statistics agree, match the whole batch's
    and differ from one shard's; over gloo on CUDA when NCCL refuses two ranks on one GPU. On the
    CPU (dry run) SyncBatchNorm cannot run: the step runs over gloo with per-process BatchNorm and
    rank 0 must match its own shard instead (the harness works)."""
    cuda_or_skip(run)
    directory = run.logs / "syncbn"
    backend, notes = ("gloo" if run.dry else "nccl"), []
    done = syncbn_step(run, backend, directory / backend)
    if done.returncode != 0 and "Duplicate GPU" in done.stderr + done.stdout:
        notes.append("NCCL refused two ranks on one GPU (Duplicate GPU detected); ran over gloo on CUDA")
        backend = "gloo"
        done = syncbn_step(run, backend, directory / backend)
    if done.returncode != 0:
        raise SectionFailed(f"torchrun ({backend}) exit status {done.returncode}: {_last_line(done.stderr)}")
    stats = {name: torch.load(directory / backend / f"{name}.pt", weights_only=True)
             for name in ("rank0", "rank1", "shard0", "whole")}  # fmt: skip
    gaps = {
        "rank0_vs_rank1": largest_gap(stats["rank0"], stats["rank1"]),
        "rank0_vs_whole_batch": largest_gap(stats["rank0"], stats["whole"]),
        "rank0_vs_shard0_alone": largest_gap(stats["rank0"], stats["shard0"]),
        "shard0_vs_whole_batch": largest_gap(stats["shard0"], stats["whole"]),
    }
    details = {"backend": backend, "device": run.device, "max_relative_gaps": gaps, "notes": notes}
    numbers = ", ".join(f"{k} {v:.2e}" for k, v in gaps.items())
    broken = [
        check for check, holds in statistics_checks(gaps, synchronised=not run.dry).items() if not holds
    ]
    if broken:
        raise SectionFailed(f"running statistics: {', '.join(broken)} do not hold ({numbers})")
    verdict = (
        "per-process BatchNorm over gloo (SyncBatchNorm needs CUDA): rank 0 matches its shard"
        if run.dry
        else f"SyncBatchNorm over {backend}: ranks agree and match the whole batch, not one shard"
    )
    return "; ".join([f"{verdict} ({numbers})", *notes]), details


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


def camvid(run: Run) -> tuple[str, dict[str, Any]]:
    """One epoch of DifNet-18 and Sim-DeepLab-18 on CamVid train at full resolution (480x360), then
    val mIoU; a dry run trains one step on 60x45 images and skips validation."""
    cuda_or_skip(run)
    if not (run.camvid_root / "train.txt").is_file():
        raise SectionSkipped(f"CamVid not found at {run.camvid_root} (pass --camvid-root)")
    options = ["--image-size", "45", "60", "--crop-size", "45", "60", "--max-steps-per-epoch", "1",
               "--batch-size", "2", "--workers", "0", "--val-split", "none"] if run.dry else \
        ["--crop-size", "360", "480", "--batch-size", "8", "--workers", "8"]  # fmt: skip
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


SECTIONS: dict[str, Callable[[Run], tuple[str, dict[str, Any]]]] = {
    "tests": cuda_tests,
    "syncbn": syncbn,
    "cupy": cupy_tests,
    "walk": walk,
    "model": model,
    "camvid": camvid,
}


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
                        help="which sections to run, in this order (default: all)")  # fmt: skip
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S,
                        help="seconds for all sections; what is left when one starts bounds it")  # fmt: skip
    parser.add_argument("--camvid-root", type=Path, default=DEFAULT_CAMVID, help="CamVid (SegNet layout)")
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
    print(
        f"GPU: {info.get('cuda_device', 'no CUDA device')}; sections: {' '.join(args.sections)}", flush=True
    )
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
