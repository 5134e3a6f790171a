"""Measurement helpers shared by the benchmarks: timing, peak memory in a fresh process, the
machine's sgemm rate, and writing results as JSON + markdown under benchmarks/results/."""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import unittest.mock
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"
PROJECT_ROOT = Path(__file__).resolve().parents[1]


def synchronize(device: torch.device | str) -> None:
    """Wait for queued kernels on `device` so wall time covers them (no-op on CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(
    fn: Callable[[], Any],
    *,
    device: torch.device | str = "cpu",
    warmup: int = 1,
    min_repeats: int = 3,
    max_repeats: int = 15,
    budget_s: float = 10.0,
) -> dict[str, Any]:
    """Wall times of `fn` after `warmup` calls: at least `min_repeats`, then more while the
    total stays under `budget_s`, up to `max_repeats`. Returns median, min and all times (s)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times: list[float] = []
    while len(times) < max_repeats and (len(times) < min_repeats or sum(times) < budget_s):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "times_s": times}


def measure_peak_extra_memory(fn: Callable[[], Any], device: torch.device | str = "cpu") -> int:
    """Bytes by which one call of `fn` raises the peak memory above what is held before it.

    CPU: peak RSS minus RSS before, resetting Linux's peak (VmHWM) first; call it in a fresh
    process (`run_in_subprocess`) so allocator caches of earlier cases do not hide memory.
    Without /proc, only growth beyond the process's earlier peak (ru_maxrss) is seen.
    CUDA: `torch.cuda.max_memory_allocated` minus the allocated bytes before.
    """
    if torch.device(device).type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    if _reset_peak_rss():
        before = _proc_status_bytes("VmRSS")
        fn()
        return _proc_status_bytes("VmHWM") - before
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fn()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024


def _reset_peak_rss() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux >= 4.0); False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _proc_status_bytes(field: str) -> int:
    """A memory field of /proc/self/status (reported in kB) in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise KeyError(f"{field} not in /proc/self/status")


def project_environment() -> dict[str, str]:
    """This process's environment with the project first on PYTHONPATH, for child interpreters."""
    path = os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path}


def run_in_subprocess(argv: Sequence[str], timeout_s: float = 600.0) -> dict[str, Any]:
    """Run `python <argv>` in a fresh interpreter from the project root; parse the JSON object
    it prints on its last stdout line. Raises with the child's stderr if it fails."""
    result = subprocess.run(
        [sys.executable, *argv],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=PROJECT_ROOT,
        env=project_environment(),
    )
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def sgemm_gflops(size: int = 4096, device: torch.device | str = "cpu") -> float:
    """The machine's attainable float32 matrix-multiply rate (GFLOP/s): the fastest of at least
    five square `size` products, the ceiling other rates are compared with on a shared machine."""
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, generator=generator)
    b = torch.randn(size, size, device=device, generator=generator)
    timing = time_calls(lambda: a @ b, device=device, min_repeats=5, budget_s=5.0)
    return 2 * size**3 / timing["min_s"] / 1e9


def offset_sums() -> AbstractContextManager:
    """While active, local transitions sum `P y` offset by offset on the CPU too (their route
    before the sparse-matrix products; still the GPU's and half precision's): the before rows."""
    return unittest.mock.patch("difnet.diffusion.kernels.has_csr_product", return_value=False)


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on: CPU, threads, torch, load average, date."""
    info: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": _cpu_name(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_1m_5m_15m": list(os.getloadavg()),
    }
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name()
    return info


def describe_machine(info: dict[str, Any]) -> str:
    """One line for a results page: the machine, torch and its threads, the load around the run."""
    cuda = f", CUDA device {info['cuda_device']}" if "cuda_device" in info else ""
    after = f", after {info['load_average_after']}" if "load_average_after" in info else ""
    return (
        f"Measured {info['date']} on {info['cpu']} ({info['cpu_count']} logical CPUs{cuda}), "
        f"torch {info['torch']} with {info['torch_threads']} intra-op and "
        f"{info['torch_interop_threads']} inter-op threads; load average (1, 5, 15 min) before "
        f"{info['load_average_1m_5m_15m']}{after}."
    )


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def markdown_table(rows: Sequence[dict[str, Any]], columns: dict[str, str]) -> str:
    """A markdown table of `rows` with `columns` mapping row keys to headers; floats get 4
    significant digits (no exponent from 10^4 on), missing values a dash."""

    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.0f}" if abs(value) >= 1e4 else f"{value:.4g}"
        return str(value)

    lines = ["| " + " | ".join(columns.values()) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(key)) for key in columns) + " |" for row in rows]
    return "\n".join(lines)


def write_results(
    name: str, payload: dict[str, Any], markdown: str, directory: Path = RESULTS_DIR
) -> tuple[Path, Path]:
    """Write `<name>.json` (the payload) and `<name>.md` (the markdown) under `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    json_path, md_path = directory / f"{name}.json", directory / f"{name}.md"
    json_path.write_text(json.dumps(payload, indent=2) + "\n")
    md_path.write_text(markdown.rstrip() + "\n")
    return json_path, md_path
