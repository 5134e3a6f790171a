"""Benchmark one diffusion walk `P y`: fused (scaled_dot_product_attention) against materialized
`softmax(f f^T) @ y`, forward and forward+backward, and the cascade's share of a DifNet forward.

Walk cases: batch 1, features f [N, 64] (scaled by 64^-1/4, so logits have unit variance),
values y [N, 21] (VOC's classes), N = 41^2, 64^2, 96^2, 128^2, float32. Per case: median wall
time (in this process), peak extra memory of one call (peak RSS in a fresh subprocess on CPU,
max_memory_allocated in this process on CUDA), and useful GFLOP/s (2N^2(d+K) forward, 6N^2(d+K) forward+backward)
against a float32 sgemm measured in the same run. The cascade share times Psi_0..4, the
importance head and the 5 walks inside an eval forward of DifNet-18 at 505x505 (forward hooks).
Prints the tables and writes walk.{json,md} under benchmarks/results/.

With `--kernels`, instead: the fused walk of every transition kernel (the paper's dot product,
the negative squared distance, both global and within 3 grid cells) at N = 64^2, the grid of a
505x505 image at stride 8, against today's walk; written to walk_kernels.{json,md}.

    python -m benchmarks.walk                         # everything, CPU (and CUDA when present)
    python -m benchmarks.walk --sizes 4096 --skip-cascade
    python -m benchmarks.walk --kernels               # the kernels at 505x505 (N = 4096)
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks._measure import (
    RESULTS_DIR,
    machine_info,
    markdown_table,
    measure_peak_extra_memory,
    run_in_subprocess,
    sgemm_gflops,
    synchronize,
    time_calls,
    write_results,
)
from difnet.diffusion import PAPER_KERNEL, WALK_METHODS, TransitionKernel, propagate
from difnet.models import DifNet

FEATURE_DIM = 64
CLASSES = 21
SIZES = (41**2, 64**2, 96**2, 128**2)
MODES = ("forward", "forward+backward")
WARMUP_NODES = 256
NXN_BYTES_PER_ELEMENT = 4
WALK_COLUMNS = {
    "device": "device",
    "n": "N",
    "mode": "pass",
    "walk": "walk",
    "median_ms": "median (ms)",
    "speedup": "fused speed-up",
    "peak_extra_mib": "peak extra (MiB)",
    "peak_vs_nxn": "peak / one NxN fp32",
    "gflops": "useful GFLOP/s",
    "vs_sgemm": "% of sgemm",
}
CASCADE_COLUMNS = {
    "walk": "walk",
    "diffusion_stride": "diffusion stride",
    "grid": "grid",
    "forward_ms": "DifNet-18 forward (ms)",
    "projections_ms": "Psi_0..4 (ms)",
    "importance_ms": "importance map (ms)",
    "walks_ms": "5 walks (ms)",
    "cascade_ms": "cascade total (ms)",
    "cascade_share": "cascade share of forward",
}


KERNELS = {
    "dot (paper)": PAPER_KERNEL,
    "distance": TransitionKernel("distance"),
    "dot, radius 3": TransitionKernel("dot", 3),
    "distance, radius 3": TransitionKernel("distance", 3),
}
KERNEL_COLUMNS = {
    "device": "device",
    "n": "N",
    "mode": "pass",
    "kernel": "kernel",
    "median_ms": "median (ms)",
    "vs_paper": "time / paper kernel's",
    "peak_extra_mib": "peak extra (MiB)",
    "peak_vs_nxn": "peak / one NxN fp32",
}


def walk_case(
    n: int, walk: str, mode: str, device: str, kernel: TransitionKernel = PAPER_KERNEL
) -> Callable[[], Any]:
    """A call running one walk of `n` nodes (a square grid for a local kernel): forward (no grad)
    or forward+backward."""
    side = round(n**0.5)
    grid = (side, n // side) if side * (n // side) == n else None
    generator = torch.Generator(device=device).manual_seed(n)
    features = torch.randn(1, n, FEATURE_DIM, device=device, generator=generator) * FEATURE_DIM**-0.25
    values = torch.randn(1, n, CLASSES, device=device, generator=generator)
    upstream = torch.randn(1, n, CLASSES, device=device, generator=generator)
    if mode == "forward":

        def forward() -> Any:
            with torch.no_grad():
                return propagate(features, values, walk=walk, kernel=kernel, grid=grid)

        return forward
    features.requires_grad_(True)
    values.requires_grad_(True)

    def forward_backward() -> Any:
        out = propagate(features, values, walk=walk, kernel=kernel, grid=grid)
        return torch.autograd.grad(out, (features, values), upstream)

    return forward_backward


def useful_flops(n: int, mode: str) -> float:
    """Multiply-adds a dense implementation must do: f f^T and P y, times 3 with the backward."""
    forward = 2.0 * n * n * (FEATURE_DIM + CLASSES)
    return forward if mode == "forward" else 3 * forward


def memory_worker(n: int, walk: str, mode: str, device: str, kernel: str = "dot (paper)") -> dict[str, int]:
    """Run in a fresh process: warm the kernels up on a tiny case, then measure one call."""
    walk_case(WARMUP_NODES, walk, mode, device, KERNELS[kernel])()
    case = walk_case(n, walk, mode, device, KERNELS[kernel])
    return {"peak_extra_bytes": measure_peak_extra_memory(case, device)}


def peak_extra_bytes(n: int, walk: str, mode: str, device: str, kernel: str = "dot (paper)") -> int:
    """Peak extra memory of one call: in this process on CUDA, where max_memory_allocated counts only
    live tensors, and in a fresh process on CPU, where peak RSS would include earlier cases."""
    if torch.device(device).type == "cuda":
        return memory_worker(n, walk, mode, device, kernel)["peak_extra_bytes"]
    argv = ["-m", "benchmarks.walk", "--memory-worker", str(n), walk, mode, device, kernel]
    return run_in_subprocess(argv)["peak_extra_bytes"]


def measure_kernels(n: int, device: str, budget_s: float) -> list[dict[str, Any]]:
    """One row per (pass, kernel): the fused walk's median time and peak extra memory."""
    rows = []
    for mode in MODES:
        for name, kernel in KERNELS.items():
            timing = time_calls(walk_case(n, "fused", mode, device, kernel), device=device, budget_s=budget_s)
            memory = peak_extra_bytes(n, "fused", mode, device, name)
            rows.append({"device": device, "n": n, "mode": mode, "kernel": name,
                         "median_ms": timing["median_s"] * 1e3, "times_ms": [t * 1e3 for t in timing["times_s"]],
                         "peak_extra_mib": memory / 2**20,
                         "peak_vs_nxn": memory / (n * n * NXN_BYTES_PER_ELEMENT)})  # fmt: skip
            rows[-1]["vs_paper"] = rows[-1]["median_ms"] / next(
                row["median_ms"] for row in rows if row["mode"] == mode and row["kernel"] == "dot (paper)"
            )
            print(markdown_table(rows[-1:], KERNEL_COLUMNS).splitlines()[-1], flush=True)
    return rows


def kernels_main(args: argparse.Namespace, devices: list[str]) -> None:
    """The `--kernels` comparison: print it and write walk_kernels.{json,md}."""
    info = machine_info()
    print(f"machine: {info}")
    print(markdown_table([], KERNEL_COLUMNS))
    rows = [row for device in devices for n in args.sizes for row in measure_kernels(n, device, args.budget)]
    info["load_average_after"] = list(os.getloadavg())
    markdown = "\n\n".join([
        "# One fused walk P y per transition kernel",
        f"Measured {info['date']} on {info['cpu']} ({info['torch_threads']} torch threads), torch "
        f"{info['torch']}; load average before {info['load_average_1m_5m_15m']}, after "
        f"{info['load_average_after']} (the CPU is shared). Features [N, 64], values [N, 21], float32; a "
        "local kernel's N nodes form a square grid (64 x 64 for N = 4096, a 505x505 image at stride 8).",
        markdown_table(rows, KERNEL_COLUMNS),
    ])  # fmt: skip
    paths = write_results("walk_kernels", {"machine": info, "kernels": rows}, markdown, args.output_dir)
    print("\n" + markdown + f"\n\nwrote {paths[0]} and {paths[1]}")


def measure_walks(sizes: tuple[int, ...], device: str, sgemm: float, budget_s: float) -> list[dict[str, Any]]:
    """One row per (N, pass, walk) on `device`."""
    rows = []
    for n in sizes:
        for mode in MODES:
            medians = {}
            for walk in WALK_METHODS:
                timing = time_calls(walk_case(n, walk, mode, device), device=device, budget_s=budget_s)
                memory = peak_extra_bytes(n, walk, mode, device)
                medians[walk] = timing["median_s"]
                gflops = useful_flops(n, mode) / timing["median_s"] / 1e9
                rows.append(
                    {
                        "device": device,
                        "n": n,
                        "mode": mode,
                        "walk": walk,
                        "median_ms": timing["median_s"] * 1e3,
                        "times_ms": [t * 1e3 for t in timing["times_s"]],
                        "peak_extra_mib": memory / 2**20,
                        "peak_vs_nxn": memory / (n * n * NXN_BYTES_PER_ELEMENT),
                        "gflops": gflops,
                        "vs_sgemm": 100 * gflops / sgemm,
                    }
                )
                print(markdown_table(rows[-1:], WALK_COLUMNS).splitlines()[-1], flush=True)
            fused_row = next(row for row in rows[-2:] if row["walk"] == "fused")
            fused_row["speedup"] = medians["materialized"] / medians["fused"]
    return rows


class SectionTimer:
    """Accumulates the wall time spent inside chosen submodules during forward passes."""

    def __init__(self, sections: dict[str, list[torch.nn.Module]], device: str) -> None:
        self.device = device
        self.totals = dict.fromkeys(sections, 0.0)
        self._starts: dict[int, float] = {}
        for name, modules in sections.items():
            for module in modules:
                module.register_forward_pre_hook(self._start)
                module.register_forward_hook(lambda m, args, out, name=name: self._stop(m, name))

    def _start(self, module: torch.nn.Module, args: Any) -> None:
        synchronize(self.device)
        self._starts[id(module)] = time.perf_counter()

    def _stop(self, module: torch.nn.Module, name: str) -> None:
        synchronize(self.device)
        self.totals[name] += time.perf_counter() - self._starts.pop(id(module))

    def reset(self) -> None:
        self.totals = dict.fromkeys(self.totals, 0.0)


def measure_cascade_share(
    walk: str, diffusion_stride: int, device: str, size: int, budget_s: float
) -> dict[str, Any]:
    """Time of Psi_0..4 + importance map + 5 walks inside an eval DifNet-18 forward at `size`."""
    torch.manual_seed(0)
    model = DifNet(depth=18, num_classes=CLASSES, walk=walk, diffusion_stride=diffusion_stride)
    model = model.eval().to(device)
    images = torch.randn(1, 3, size, size, device=device)
    timer = SectionTimer(
        {
            "projections": list(model.projections),
            "importance": [model.importance],
            "walks": [model.cascade],
        },
        device,
    )
    with torch.no_grad():
        grid = tuple(model.forward_intermediates(images).walks[0].shape[-2:])  # also the warm-up
        timer.reset()
        timing = time_calls(lambda: model(images), device=device, warmup=0, budget_s=budget_s)
    calls = len(timing["times_s"])
    sections = {name: total / calls * 1e3 for name, total in timer.totals.items()}
    forward_ms = sum(timing["times_s"]) / calls * 1e3
    cascade_ms = sum(sections.values())
    return {
        "device": device,
        "walk": walk,
        "diffusion_stride": diffusion_stride,
        "grid": f"{grid[0]}x{grid[1]}",
        "forward_ms": forward_ms,
        "forward_median_ms": timing["median_s"] * 1e3,
        "projections_ms": sections["projections"],
        "importance_ms": sections["importance"],
        "walks_ms": sections["walks"],
        "cascade_ms": cascade_ms,
        "cascade_share": f"{100 * cascade_ms / forward_ms:.1f}%",
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="node counts N")
    parser.add_argument("--devices", nargs="+", default=None, help="default: cpu, and cuda when present")
    parser.add_argument("--budget", type=float, default=10.0, help="seconds of repeats per case (min 3)")
    parser.add_argument("--image-size", type=int, default=505, help="image side for the cascade share")
    parser.add_argument("--sgemm-size", type=int, default=4096, help="side of the reference sgemm")
    parser.add_argument("--skip-cascade", action="store_true", help="only the walk cases")
    parser.add_argument("--kernels", action="store_true", help="compare the transition kernels instead")
    parser.add_argument("--output-dir", type=Path, default=RESULTS_DIR, help="where walk.{json,md} go")
    parser.add_argument(
        "--memory-worker", nargs=5, metavar=("N", "WALK", "MODE", "DEVICE", "KERNEL"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.memory_worker:
        n, walk, mode, device, kernel = args.memory_worker
        print(json.dumps(memory_worker(int(n), walk, mode, device, kernel)))
        return

    devices = args.devices or ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if args.kernels:
        if args.sizes == list(SIZES):
            args.sizes = [64**2]
        kernels_main(args, devices)
        return
    info = machine_info()
    print(f"machine: {info}")
    sgemm = {device: sgemm_gflops(args.sgemm_size, device) for device in devices}
    print(f"sgemm float32 {args.sgemm_size}^3 (best of >= 5): {sgemm}")
    print(markdown_table([], WALK_COLUMNS))
    walk_rows = [
        row
        for device in devices
        for row in measure_walks(tuple(args.sizes), device, sgemm[device], args.budget)
    ]

    cascade_rows = []
    if not args.skip_cascade:
        print(markdown_table([], {"device": "device", **CASCADE_COLUMNS}))
        for device in devices:
            for walk, stride in (("fused", 8), ("materialized", 8), ("fused", 4)):
                cascade_rows.append(measure_cascade_share(walk, stride, device, args.image_size, args.budget))
                print(
                    markdown_table(cascade_rows[-1:], {"device": "device", **CASCADE_COLUMNS}).splitlines()[
                        -1
                    ],
                    flush=True,
                )

    info["load_average_after"] = list(os.getloadavg())
    markdown = "\n\n".join(
        [
            "# One walk P y: fused vs materialized",
            f"Measured {info['date']} on {info['cpu']} ({info['torch_threads']} torch threads), "
            f"torch {info['torch']}; load average before {info['load_average_1m_5m_15m']}, after "
            f"{info['load_average_after']} (the CPU is shared). float32 sgemm {args.sgemm_size}^3, best of 5+: "
            + ", ".join(f"{d} {g:.1f} GFLOP/s" for d, g in sgemm.items()),
            markdown_table(walk_rows, WALK_COLUMNS),
            *(
                [
                    f"# Cascade share of an eval DifNet-18 forward at "
                    f"{args.image_size}x{args.image_size} (batch 1)",
                    markdown_table(cascade_rows, {"device": "device", **CASCADE_COLUMNS}),
                ]
                if cascade_rows
                else []
            ),
        ]
    )
    payload = {"machine": info, "sgemm_gflops": sgemm, "walks": walk_rows, "cascade": cascade_rows}
    paths = write_results("walk", payload, markdown, args.output_dir)
    print("\n" + markdown)
    print(f"\nwrote {paths[0]} and {paths[1]}")


if __name__ == "__main__":
    main()
