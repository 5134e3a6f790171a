"""Benchmark the walk on the image (`difnet.refinement.BilateralWalk`) at the setting the fits on
CamVid's training frames chose (stride 1, mu 0.99, 100 steps, radius 3), and at the cheapest they
put within 0.2 mIoU of it (stride 2, 15 steps), against a dense CRF (pydensecrf2: 5 and 10
mean-field iterations, Gaussian and bilateral kernels at the library's usual settings) on the same
real CamVid val frames and the same probabilities.

Two sizes: the CamVid runs' 240x180 with its 11 classes, and VOC's 505x505 crop with 21 classes
(the same frames resized; the 10 classes CamVid lacks get the probabilities' floor). The
probabilities are a stride-8 model's stand-in: each frame's labels one-hot, averaged over 8x8
cells, upsampled and sharpened (softmax of 4x the cell shares), so that every method starts from
blurred borders as a model's output has them. Per case and torch thread count (1 and 2): the
median milliseconds per image over the frames and repeats, the peak extra memory of one call
(peak RSS in a fresh process), and for the walk's default solver the largest difference in
probability from the walk taken step by step. The dense CRF runs on one thread whatever the
setting (pydensecrf2 has no threads). Writes image_walk.{json,md} under benchmarks/results/.

    python -m benchmarks.image_walk --data-root /work/camvid240     # pip install 'difnet[crf]' first
    python -m benchmarks.image_walk --frames 2 --threads 1          # a quick look
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks._measure import (
    RESULTS_DIR,
    describe_machine,
    machine_info,
    markdown_table,
    measure_peak_extra_memory,
    offset_sums,
    run_in_subprocess,
    time_calls,
)
from benchmarks._measure import write_results as write_result_files
from difnet.data import CamVid, EvalTransform
from difnet.data.palettes import IGNORE_INDEX
from difnet.refinement import BilateralWalk, DenseCRF

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "camvid"
SIZES = {"240x180": ((180, 240), 11), "505x505": ((505, 505), 21)}
FITTED = {"stride": 1, "radius": 3, "steps": 100, "mu": 0.99, "colour_sigma": 0.1, "position_sigma": 2.0}
# the cheapest walk the fits put within 0.2 mIoU of their best (refine --tolerance 0.002, CamVid remedy runs)
CHEAPEST = {"stride": 2, "radius": 3, "steps": 15, "mu": 0.97, "colour_sigma": 0.1, "position_sigma": 4.0}
# "offset sums": the walk's products summed offset by offset, as before the sparse-matrix route
CASES = ("walk, step by step", "walk, Chebyshev", "walk, Chebyshev, offset sums", "walk, cheapest within 0.2", "DenseCRF, 5 iterations",
         "DenseCRF, 10 iterations")  # fmt: skip
CELL, SHARPNESS = 8, 4.0
COLUMNS = {
    "size": "size",
    "classes": "classes",
    "case": "case",
    "threads": "threads",
    "median_ms": "median (ms / image)",
    "vs_crf5": "/ DenseCRF 5",
    "peak_extra_mib": "peak extra (MiB)",
    "max_difference": "max |p - p_steps|",
}


def frames(data_root: Path, size: str, count: int) -> list[dict[str, Any]]:
    """The first `count` val frames at `size`: the normalised image and stand-in
    probabilities (`[1, K, H, W]`, see the module's docstring)."""
    (height, width), classes = SIZES[size]
    dataset = CamVid(data_root, "val", EvalTransform())
    chosen = []
    for index in range(count):
        image, label = dataset[index][:2]
        image = F.interpolate(image[None].float(), size=(height, width), mode="bilinear", align_corners=False)
        label = F.interpolate(label[None, None].float(), size=(height, width), mode="nearest")[0, 0].long()
        one_hot = F.one_hot(label.clamp_max(classes - 1), classes).permute(2, 0, 1)[None].float()
        one_hot[:, :, label == IGNORE_INDEX] = 1 / classes
        shares = F.interpolate(F.avg_pool2d(one_hot, CELL, ceil_mode=True), size=(height, width),
                               mode="bilinear", align_corners=False)  # fmt: skip
        chosen.append({"image": image, "probabilities": (SHARPNESS * shares).softmax(1)})
    return chosen


def case_call(case: str, frame: dict[str, Any]) -> Callable[[], Any]:
    """One refinement of `frame` by `case`."""
    if case.startswith("DenseCRF"):
        iterations = int(case.split(", ")[1].split()[0])
        return lambda: DenseCRF(iterations)(frame["probabilities"], frame["image"])
    setting = CHEAPEST if case.endswith("within 0.2") else FITTED
    walk = BilateralWalk(**setting, solver="steps" if case.endswith("step by step") else "chebyshev")
    route = offset_sums() if case.endswith("offset sums") else contextlib.nullcontext()

    def call() -> torch.Tensor:
        with torch.no_grad(), route:
            return walk(frame["probabilities"], frame["image"])

    return call


def memory_worker(data_root: str, size: str, case: str, threads: str) -> dict[str, int]:
    """In a fresh process: warm up on the first frame, then measure one call on it."""
    torch.set_num_threads(int(threads))
    frame = frames(Path(data_root), size, 1)[0]
    case_call(case, frame)()
    return {"peak_extra_bytes": measure_peak_extra_memory(case_call(case, frame))}


def measure(data_root: Path, size: str, chosen: list[dict[str, Any]], case: str, threads: int,
            budget_s: float) -> dict[str, Any]:  # fmt: skip
    """Median milliseconds per image of `case` over `chosen` at `threads`, and its peak memory."""
    torch.set_num_threads(threads)
    times = []
    for frame in chosen:
        times += time_calls(case_call(case, frame), budget_s=budget_s / len(chosen), min_repeats=2)["times_s"]
    memory = run_in_subprocess(["-m", "benchmarks.image_walk", "--memory-worker", str(data_root), size,
                                case, str(threads)])["peak_extra_bytes"]  # fmt: skip
    row = {"size": size, "classes": SIZES[size][1], "case": case, "threads": threads,
           "median_ms": statistics.median(times) * 1e3, "times_ms": [t * 1e3 for t in times],
           "peak_extra_mib": memory / 2**20}  # fmt: skip
    if case.startswith("walk, Chebyshev"):
        row["max_difference"] = max(
            float((case_call(case, frame)() - case_call("walk, step by step", frame)()).abs().max())
            for frame in chosen
        )
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA, help="CamVid (any resolution)")
    parser.add_argument("--frames", type=int, default=4, help="val frames per size")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument(
        "--budget", type=float, default=8.0, help="seconds of repeats per case (min 2 a frame)"
    )
    parser.add_argument("--output-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--memory-worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_worker:
        print(json.dumps(memory_worker(*args.memory_worker)))
        return
    info = machine_info()
    print(markdown_table([], COLUMNS))
    rows = []
    for size in args.sizes:
        chosen = frames(args.data_root, size, args.frames)
        for threads in args.threads:
            block = [measure(args.data_root, size, chosen, case, threads, args.budget) for case in CASES]
            crf5 = next(row["median_ms"] for row in block if row["case"] == "DenseCRF, 5 iterations")
            for row in block:
                row["vs_crf5"] = row["median_ms"] / crf5
                print(markdown_table([row], COLUMNS).splitlines()[-1], flush=True)
            rows += block
    info["load_average_after"] = list(os.getloadavg())
    markdown = "\n\n".join([
        "# The walk on the image against a dense CRF",
        f"{describe_machine(info)} Frames: the first {args.frames} of CamVid val. The walk: "
        f"`BilateralWalk({', '.join(f'{k}={v}' for k, v in FITTED.items())})`, the setting the fits chose; "
        f"'cheapest within 0.2': `BilateralWalk({', '.join(f'{k}={v}' for k, v in CHEAPEST.items())})`, the "
        "cheapest the fits put within 0.2 mIoU of their best (`refine --tolerance 0.002`); "
        "its default solver is the Chebyshev expansion of the same 100 steps, each product `P y` one "
        "sparse-matrix product on the CPU ('offset sums': summed offset by offset, as before). DenseCRF: pydensecrf2, "
        f"its default kernels ({DenseCRF()}), one thread whatever the torch setting. "
        "'/ DenseCRF 5' is the ratio to DenseCRF with 5 iterations in the same run, size and thread count.",
        markdown_table(rows, COLUMNS),
    ])  # fmt: skip
    paths = write_result_files("image_walk", {"machine": info, "cases": rows}, markdown, args.output_dir)
    print("\n" + markdown + f"\n\nwrote {paths[0]} and {paths[1]}")


if __name__ == "__main__":
    main()
