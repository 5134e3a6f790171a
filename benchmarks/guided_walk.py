"""Benchmark the guided walk (`difnet.diffusion.guided.GuidedWalk`) against the cascade it follows:
DifNet's 5 walks on the stride-8 grid (the local distance kernel of radius 1 that CamVid's staged
DifNet uses), and the guided walk's 15 steps on the image at stride 2 (radius 3) and at stride 4.
Two sizes: VOC's 505x505 crop, batch 1, 21 classes (253 x 253 nodes at stride 2), and the CamVid
verdict's training batch, 8 crops of 160x160, 11 classes. Float32; forward (no grad) and
forward+backward; the guided walk at stride 2 also with its products summed offset by offset, as
before the CPU's sparse-matrix route ("offset sums"). Per case: median wall time in this process,
and the peak extra memory of one call (peak RSS in a fresh process on CPU, max_memory_allocated on
CUDA) against one N x N float32 matrix of the case's grid. Writes guided_walk.{json,md} under
benchmarks/results/.

    python -m benchmarks.guided_walk                  # CPU, and CUDA when present
    python -m benchmarks.guided_walk --sizes 505x505  # VOC's crop only
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks._measure import (
    RESULTS_DIR,
    describe_machine,
    machine_info,
    markdown_table,
    measure_peak_extra_memory,
    offset_sums,
    run_in_subprocess,
    time_calls,
    write_results,
)
from difnet.diffusion import Cascade, TransitionKernel
from difnet.diffusion.guided import GuidedWalk, walk_grid

FEATURE_DIM, SEED_STRIDE = 64, 8
# name -> (image side, classes, batch): VOC's crop, and the CamVid verdict's training batch
SIZES = {"505x505": (505, 21, 1), "8x160x160": (160, 11, 8)}
# "offset sums": the walk's products summed offset by offset, as before the CPU's sparse-matrix route
CASES = (
    "cascade, stride 8",
    "guided walk, stride 2",
    "guided walk, stride 2, offset sums",
    "guided walk, stride 4",
)
MODES = ("forward", "forward+backward")
COLUMNS = {
    "device": "device",
    "size": "size",
    "case": "case",
    "nodes": "N",
    "mode": "pass",
    "median_ms": "median (ms)",
    "peak_extra_mib": "peak extra (MiB)",
    "peak_vs_nxn": "peak / one NxN fp32",
}


def case_call(case: str, mode: str, device: str, size: str) -> tuple[Callable[[], Any], int]:
    """A call running `case` once in `mode` at `size` (a key of `SIZES`), and its node count."""
    image, classes, batch = SIZES[size]
    generator = torch.Generator(device=device).manual_seed(0)
    grid = (-(-image // SEED_STRIDE),) * 2
    nodes = grid[0] * grid[1]
    seed = torch.randn(batch, nodes, classes, device=device, generator=generator)
    if case.startswith("cascade"):
        module = Cascade(5, kernel=TransitionKernel("distance", 1)).to(device)
        features = [
            torch.randn(batch, nodes, FEATURE_DIM, device=device, generator=generator) for _ in range(5)
        ]
        inputs, run = [seed, *features], lambda: module(features, seed, grid)[-1]
    else:
        module = GuidedWalk(3, stride=int(case.split(", ")[1].split()[-1])).to(device)
        images = torch.randn(batch, 3, image, image, device=device, generator=generator)
        probabilities = seed.transpose(1, 2).reshape(batch, classes, *grid).softmax(1)
        nodes = walk_grid((image, image), module.stride)[0] ** 2
        inputs, run = [probabilities], lambda: module(probabilities, images)
    route = offset_sums() if case.endswith("offset sums") else contextlib.nullcontext()
    if mode == "forward":

        def forward() -> Any:
            with torch.no_grad(), route:
                return run()

        return forward, nodes
    for tensor in inputs:
        tensor.requires_grad_(True)

    def forward_backward() -> Any:
        with route:
            out = run()
            return torch.autograd.grad(out, [*inputs, *module.parameters()], torch.ones_like(out))

    return forward_backward, nodes


def memory_worker(case: str, mode: str, device: str, size: str) -> dict[str, int]:
    """Run in a fresh process: warm up on the same case, then measure one call."""
    call, _ = case_call(case, mode, device, size)
    call()
    return {"peak_extra_bytes": measure_peak_extra_memory(case_call(case, mode, device, size)[0], device)}


def measure(case: str, mode: str, device: str, size: str, budget_s: float) -> dict[str, Any]:
    call, nodes = case_call(case, mode, device, size)
    timing = time_calls(call, device=device, budget_s=budget_s)
    if torch.device(device).type == "cuda":
        memory = memory_worker(case, mode, device, size)["peak_extra_bytes"]
    else:
        worker = ["-m", "benchmarks.guided_walk", "--memory-worker", case, mode, device, size]
        memory = run_in_subprocess(worker)["peak_extra_bytes"]
    return {"device": device, "size": size, "case": case, "nodes": nodes, "mode": mode,
            "median_ms": timing["median_s"] * 1e3, "times_ms": [t * 1e3 for t in timing["times_s"]],
            "peak_extra_mib": memory / 2**20, "peak_vs_nxn": memory / (nodes * nodes * 4)}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", nargs="+", default=None, help="default: cpu, and cuda when present")
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--budget", type=float, default=10.0, help="seconds of repeats per case (min 3)")
    parser.add_argument("--output-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument(
        "--memory-worker", nargs=4, metavar=("CASE", "MODE", "DEVICE", "SIZE"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.memory_worker:
        print(json.dumps(memory_worker(*args.memory_worker)))
        return
    devices = args.devices or ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    info = machine_info()
    print(markdown_table([], COLUMNS))
    rows = []
    for device in devices:
        for size in args.sizes:
            for mode in MODES:
                for case in CASES:
                    rows.append(measure(case, mode, device, size, args.budget))
                    print(markdown_table(rows[-1:], COLUMNS).splitlines()[-1], flush=True)
    info["load_average_after"] = list(os.getloadavg())
    sizes = "; ".join(
        f"{name}: batch {batch}, {classes} classes" for name, (_, classes, batch) in SIZES.items()
    )
    markdown = "\n\n".join([
        "# The guided walk against the cascade it follows",
        f"{describe_machine(info)} The CPU is shared. {sizes}; float32. The cascade: 5 walks on the stride-8 "
        "grid, distance kernel within 1 cell, features [N, 64]. The guided walk: 15 steps on the image "
        "pooled by its stride, within 3 cells.",
        markdown_table(rows, COLUMNS),
    ])  # fmt: skip
    paths = write_results("guided_walk", {"machine": info, "cases": rows}, markdown, args.output_dir)
    print("\n" + markdown + f"\n\nwrote {paths[0]} and {paths[1]}")


if __name__ == "__main__":
    main()
