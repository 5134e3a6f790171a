"""Benchmark the models as the paper's Table 4: inference time of DifNet's seed branch, similarity
branch and diffusion stage next to Sim-DeepLab's, a training step and its peak memory, parameter
counts, and whether running DifNet's two branches concurrently pays.

Inference: batch 1, eval mode, torch.no_grad, float32, 321x321 and 505x505. DifNet-18/50 per stage
through its own methods, in forward's order: seed branch (`seed_branch`: seed backbone + ASPP),
similarity branch (`similarity_branch`: similarity backbone), diffusion (`diffuse`: importance map,
Psi_0..4, the 5 walks, upsampling to the input), and its whole forward; Sim-DeepLab-18/50/101 whole
forward. The diffusion head alone (`DiffusionHead` on precomputed scores and levels: random tensors
of the shapes DifNet-50's encoders give, `resnet50` at output stride 8 and `resnet50_os16` at 16,
`--head-strides`), walking on the scores' grid. Training: one step (forward, cross-entropy, backward, the paper's SGD) of DifNet-18 and
Sim-DeepLab-18, batch 2, 321x321 (`--train-size`), train mode; its peak extra memory (gradients,
momentum buffers, activations and temporaries over the model and batch already held): peak RSS in a
fresh subprocess on CPU, max_memory_allocated in this process on CUDA. Concurrency: the two branches
one after the other against concurrently: on CPU both as TorchScript traces (an eager torch.jit.fork
runs its function inline, a traced one on the inter-op thread pool), on CUDA eager on one stream
against two streams.
Every time is the median of `--repeats` calls after `--warmup` calls. Prints the tables and writes
model.{json,md} under benchmarks/results/.

    python -m benchmarks.model                                   # CPU, and CUDA when present
    python -m benchmarks.model --quick --output-dir /tmp/model   # smoke test: depth 18, 321 only
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from benchmarks._measure import (
    RESULTS_DIR,
    describe_machine,
    machine_info,
    markdown_table,
    measure_peak_extra_memory,
    run_in_subprocess,
    time_calls,
    write_results,
)
from difnet.encoders import build_encoder
from difnet.models import DiffusionHead, DifNet, build_model, format_parameter_counts, parameter_counts
from difnet.training.config import TrainConfig
from difnet.training.losses import pixel_loss
from difnet.training.optim import build_optimizer

CLASSES = 21  # Pascal VOC
SIZES = (321, 505)
DIFNET_DEPTHS = (18, 50)
SIMDEEPLAB_DEPTHS = (18, 50, 101)
HEAD_ENCODERS = {8: "resnet50", 16: "resnet50_os16"}  # DifNet-50's encoder by output stride
TRAIN_DEPTH, TRAIN_BATCH, TRAIN_SIZE = 18, 2, 321
MEMORY_WARMUP_SIZE = 65  # the memory worker's untimed first step sets the libraries up
PAYS_AT = 1.05  # concurrency "pays" when it is at least 5% faster than one branch after the other
LABELS = {"difnet": "DifNet", "simdeeplab": "Sim-DeepLab"}
PAPER_NOTE = (
    "The paper (GTX 1080, 505x505): DifNet-50 seed branch 18 ms, similarity branch 15 ms, "
    "diffusion 6 ms; Sim-DeepLab-101 36 ms."
)
CASE_COLUMNS = {"device": "device", "size": "input", "model": "model"}
INFERENCE_COLUMNS = {
    **CASE_COLUMNS,
    "seed_ms": "seed branch (ms)",
    "similarity_ms": "similarity branch (ms)",
    "diffusion_ms": "diffusion (ms)",
    "stages_ms": "sum of stages (ms)",
    "forward_ms": "whole forward (ms)",
    "diffusion_share": "diffusion / forward (%)",
}
HEAD_COLUMNS = {
    **CASE_COLUMNS,
    "output_stride": "output stride",
    "grid": "diffusion grid",
    "nodes": "nodes N",
    "head_ms": "diffusion head (ms)",
}
CONCURRENCY_COLUMNS = {
    **CASE_COLUMNS,
    "method": "how",
    "sequential_ms": "one after the other (ms)",
    "concurrent_ms": "concurrently (ms)",
    "speedup": "speed-up",
    "pays": f"pays (>= {PAYS_AT}x)",
}
TRAINING_COLUMNS = {
    **CASE_COLUMNS,
    "checkpointing": "gradient checkpointing",
    "step_ms": "training step (ms)",
    "peak_extra_mib": "peak extra memory (MiB)",
}


@dataclass(frozen=True)
class Plan:
    """How many untimed (`warmup`) and timed (`repeats`) calls every case gets."""

    warmup: int
    repeats: int

    def time(self, calls: dict[str, Callable[[], Any]], device: str) -> dict[str, dict[str, Any]]:
        """Median and every wall time (ms) of each named call; the calls are timed in turn."""
        timings = {}
        for name, fn in calls.items():
            timing = time_calls(
                fn,
                device=device,
                warmup=self.warmup,
                min_repeats=self.repeats,
                max_repeats=self.repeats,
                budget_s=0.0,
            )
            timings[name] = {
                "median_ms": timing["median_s"] * 1e3,
                "times_ms": [t * 1e3 for t in timing["times_s"]],
            }
        return timings


def label(name: str, depth: int) -> str:
    """The paper's name of a model, e.g. "Sim-DeepLab-101"."""
    return f"{LABELS[name]}-{depth}"


def build(name: str, depth: int, device: str, **options: Any) -> nn.Module:
    """A freshly initialised model (seed 0) with VOC's classes on `device`."""
    torch.manual_seed(0)
    return build_model(name, depth, CLASSES, **options).to(device)


def eval_case(name: str, depth: int, size: int, device: str) -> tuple[nn.Module, Tensor]:
    """An eval model and one `size` x `size` image: where every inference case starts."""
    return build(name, depth, device).eval(), random_images(1, size, device)


def random_images(batch: int, size: int, device: str) -> Tensor:
    """A reproducible batch of `size` x `size` standard-normal images."""
    generator = torch.Generator(device=device).manual_seed(size)
    return torch.randn(batch, 3, size, size, device=device, generator=generator)


def case_row(device: str, size: int, model: str, timings: dict[str, dict[str, Any]]) -> dict:
    """A result row: the case, then `<name>_ms` (median) and `<name>_times_ms` per timing."""
    row: dict[str, Any] = {"device": device, "size": f"{size}x{size}", "model": model}
    for name, timing in timings.items():
        row[f"{name}_ms"] = timing["median_ms"]
        row[f"{name}_times_ms"] = timing["times_ms"]
    return row


def difnet_inference(depth: int, size: int, device: str, plan: Plan) -> dict[str, Any]:
    """Seed branch, similarity branch, diffusion and whole forward of an eval DifNet-`depth`."""
    model, images = eval_case("difnet", depth, size, device)
    with torch.no_grad():
        scores, levels = model.seed_branch(images), model.similarity_branch(images)
        calls = {
            "seed": lambda: model.seed_branch(images),
            "similarity": lambda: model.similarity_branch(images),
            "diffusion": lambda: model.diffuse(scores, levels),
            "forward": lambda: model(images),
        }
        timings = plan.time(calls, device)
    row = case_row(device, size, label("difnet", depth), timings)
    row["stages_ms"] = row["seed_ms"] + row["similarity_ms"] + row["diffusion_ms"]
    row["diffusion_share"] = 100 * row["diffusion_ms"] / row["forward_ms"]
    return row


def simdeeplab_inference(depth: int, size: int, device: str, plan: Plan) -> dict[str, Any]:
    """Whole forward of an eval Sim-DeepLab-`depth`."""
    model, images = eval_case("simdeeplab", depth, size, device)
    with torch.no_grad():
        timings = plan.time({"forward": lambda: model(images)}, device)
    return case_row(device, size, label("simdeeplab", depth), timings)


def head_case(stride: int, size: int, device: str) -> tuple[DiffusionHead, Tensor, list[Tensor]]:
    """An eval `DiffusionHead` for DifNet-50's levels at output `stride`, and random scores and
    levels (the image and the encoder's stages) of the shapes its encoder gives a `size` x `size`
    image (read from the encoder on the meta device: no weights, no compute)."""
    with torch.device("meta"):
        encoder = build_encoder(HEAD_ENCODERS[stride])
        shapes = [stage.shape for stage in encoder(torch.empty(1, 3, size, size))]
    generator = torch.Generator(device=device).manual_seed(size)
    stages = [torch.randn(shape, device=device, generator=generator) for shape in shapes]
    scores = torch.randn(1, CLASSES, *shapes[-1][-2:], device=device, generator=generator)
    torch.manual_seed(0)
    head = DiffusionHead([3, *encoder.out_channels], CLASSES).to(device).eval()
    return head, scores, [random_images(1, size, device), *stages]


def head_inference(stride: int, size: int, device: str, plan: Plan) -> dict[str, Any]:
    """The diffusion head alone on precomputed scores and levels: importance map, Psi_0..4, the 5
    walks on the scores' grid and the upsampling to the input."""
    head, scores, levels = head_case(stride, size, device)
    with torch.no_grad():
        timings = plan.time({"head": lambda: head(scores, levels)}, device)
    row = case_row(device, size, f"DiffusionHead ({HEAD_ENCODERS[stride]} levels)", timings)
    grid = tuple(scores.shape[-2:])
    row.update(output_stride=stride, grid=f"{grid[0]}x{grid[1]}", nodes=grid[0] * grid[1])
    return row


class Branches(nn.Module):
    """DifNet's two branches on the same images: one after the other, or the seed branch forked."""

    def __init__(self, model: DifNet, concurrent: bool) -> None:
        super().__init__()
        self.model, self.concurrent = model, concurrent

    def forward(self, images: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Scores of the seed branch and levels of the similarity branch."""
        if not self.concurrent:
            return self.model.seed_branch(images), self.model.similarity_branch(images)
        future = torch.jit.fork(self.model.seed_branch, images)
        levels = self.model.similarity_branch(images)
        return torch.jit.wait(future), levels


def cpu_branch_calls(model: DifNet, images: Tensor) -> dict[str, Callable[[], Any]]:
    """Both orders as traces, so the fork becomes a prim::fork run on the inter-op pool (eager
    torch.jit.fork runs its function inline) and both pay the same interpreter's overhead."""
    calls = {}
    for name in ("sequential", "concurrent"):
        branches = Branches(model, concurrent=name == "concurrent")
        trace = torch.jit.trace(branches, images, check_trace=False, strict=False)
        calls[name] = lambda trace=trace: trace(images)
    return calls


def cuda_branch_calls(model: DifNet, images: Tensor) -> dict[str, Callable[[], Any]]:
    """Both branches on the current stream, or each on a stream of its own."""
    streams = (torch.cuda.Stream(), torch.cuda.Stream())

    def sequential() -> tuple[Tensor, list[Tensor]]:
        return model.seed_branch(images), model.similarity_branch(images)

    def concurrent() -> tuple[Tensor, list[Tensor]]:
        current = torch.cuda.current_stream()
        for stream in streams:
            stream.wait_stream(current)
        with torch.cuda.stream(streams[0]):
            scores = model.seed_branch(images)
        with torch.cuda.stream(streams[1]):
            levels = model.similarity_branch(images)
        for stream in streams:
            current.wait_stream(stream)
        return scores, levels

    return {"sequential": sequential, "concurrent": concurrent}


def branch_concurrency(depth: int, size: int, device: str, plan: Plan) -> dict[str, Any]:
    """The two branches of an eval DifNet-`depth` one after the other against concurrently."""
    model, images = eval_case("difnet", depth, size, device)
    on_cuda = torch.device(device).type == "cuda"
    # the plain interpreter: no profiling runs or graph compilation inside the timed calls
    with torch.no_grad(), torch.jit.optimized_execution(False):
        calls = (cuda_branch_calls if on_cuda else cpu_branch_calls)(model, images)
        timings = plan.time(calls, device)
    row = case_row(device, size, label("difnet", depth), timings)
    row["method"] = "2 CUDA streams" if on_cuda else "traced torch.jit.fork"
    row["speedup"] = row["sequential_ms"] / row["concurrent_ms"]
    row["pays"] = "yes" if row["speedup"] >= PAYS_AT else "no"
    return row


def training_step(name: str, device: str, size: int, checkpointing: bool) -> Callable[[], None]:
    """One step of the paper's SGD on `name`-18 in train mode, batch 2 of random `size` images."""
    model = build(name, TRAIN_DEPTH, device, gradient_checkpointing=checkpointing).train()
    optimizer = build_optimizer(model, TrainConfig(model=name, depth=TRAIN_DEPTH))
    images = random_images(TRAIN_BATCH, size, device)
    generator = torch.Generator(device=device).manual_seed(size)
    labels = torch.randint(CLASSES, (TRAIN_BATCH, size, size), device=device, generator=generator)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        pixel_loss(model(images), labels).backward()
        optimizer.step()

    return step


def memory_worker(name: str, device: str, checkpointing: str, size: str) -> dict[str, int]:
    """Run in a fresh process: a tiny untimed step, then the peak extra bytes of a real one."""
    checkpointing = checkpointing == "checkpointing"
    training_step(name, device, MEMORY_WARMUP_SIZE, checkpointing)()
    step = training_step(name, device, int(size), checkpointing)
    return {"peak_extra_bytes": measure_peak_extra_memory(step, device)}


def training(name: str, device: str, checkpointing: bool, plan: Plan, size: int) -> dict[str, Any]:
    """Median time of a training step of `name`-18, and its peak memory from a fresh process."""
    timings = plan.time({"step": training_step(name, device, size, checkpointing)}, device)
    row = case_row(device, size, label(name, TRAIN_DEPTH), timings)
    row["checkpointing"] = "yes" if checkpointing else "no"
    row["peak_extra_mib"] = peak_extra_bytes(name, device, checkpointing, size) / 2**20
    return row


def peak_extra_bytes(name: str, device: str, checkpointing: bool, size: int) -> int:
    """Peak extra memory of a step: in this process on CUDA, where max_memory_allocated counts only
    live tensors, and in a fresh process on CPU, where peak RSS would include earlier cases."""
    mode = "checkpointing" if checkpointing else "plain"
    if torch.device(device).type == "cuda":
        return memory_worker(name, device, mode, str(size))["peak_extra_bytes"]
    argv = ["-m", "benchmarks.model", "--memory-worker", name, device, mode, str(size)]
    return run_in_subprocess(argv)["peak_extra_bytes"]


def checkpointing_verdicts(rows: list[dict[str, Any]]) -> str:
    """Each model's checkpointed step against its plain one: memory and time ratios."""
    lines = []
    for row in (r for r in rows if r["checkpointing"] == "yes"):
        plain = next(r for r in rows if r["checkpointing"] == "no"
                     and (r["model"], r["device"]) == (row["model"], row["device"]))  # fmt: skip
        memory = row["peak_extra_mib"] / plain["peak_extra_mib"]
        slower = row["step_ms"] / plain["step_ms"]
        target = " (DifNet's target: <= 0.6x)" if row["model"].startswith("DifNet") else ""
        lines.append(
            f"- {row['model']} on {row['device']}: gradient checkpointing needs {memory:.2f}x "
            f"the peak extra memory{target} and takes {slower:.2f}x the time."
        )
    return "\n".join(lines)


def parameters_section() -> tuple[dict[str, dict[int, int]], str]:
    """Parameter counts of every model and depth, and their markdown with the paper's claim."""
    counts = parameter_counts(num_classes=CLASSES)
    ratio = counts["difnet"][50] / counts["simdeeplab"][101]
    markdown = (
        f"{format_parameter_counts(counts)}\n\nDifNet-50 has {ratio:.3f}x the parameters of "
        "Sim-DeepLab-101 (the paper: about the same)."
    )
    return counts, markdown


def measure_section(
    title: str, columns: dict[str, str], cases: list[Callable[[], dict[str, Any]]]
) -> list[dict[str, Any]]:
    """Run `cases` in order, printing the table `title` a row at a time as they finish."""
    print(f"\n## {title}\n\n{markdown_table([], columns)}", flush=True)
    rows = []
    for case in cases:
        rows.append(case())
        print(markdown_table(rows[-1:], columns).splitlines()[-1], flush=True)
    return rows


def concurrency_verdicts(rows: list[dict[str, Any]]) -> str:
    """One line per device: whether running the branches concurrently paid in every case."""
    lines = []
    for device in dict.fromkeys(row["device"] for row in rows):
        speedups = [row["speedup"] for row in rows if row["device"] == device]
        verdict = "pays" if min(speedups) >= PAYS_AT else "does not pay in every case"
        listed = ", ".join(f"{s:.2f}x" for s in speedups)
        lines.append(f"- {device}: concurrency {verdict} (speed-ups {listed})")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; `--quick` replaces the sizes, depths, warm-up and repeats."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="image sides")
    parser.add_argument("--difnet-depths", type=int, nargs="+", default=list(DIFNET_DEPTHS))
    parser.add_argument("--simdeeplab-depths", type=int, nargs="+", default=list(SIMDEEPLAB_DEPTHS))
    parser.add_argument(
        "--head-strides", type=int, nargs="+", choices=sorted(HEAD_ENCODERS), default=sorted(HEAD_ENCODERS),
        help="output strides at which the diffusion head alone is timed",
    )  # fmt: skip
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per case")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per case (median)")
    parser.add_argument(
        "--quick", action="store_true", help="smoke test: depth 18, 321x321, 1 warm-up, 2 repeats"
    )
    parser.add_argument("--train-size", type=int, default=TRAIN_SIZE, help="image side of the training step")
    parser.add_argument("--devices", nargs="+", default=None, help="default: cpu, and cuda when present")
    parser.add_argument("--output-dir", type=Path, default=RESULTS_DIR, help="where model.{json,md} go")
    parser.add_argument(
        "--memory-worker", nargs=4, metavar=("MODEL", "DEVICE", "MODE", "SIZE"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.difnet_depths, args.simdeeplab_depths = [321], [18], [18]
        args.warmup, args.repeats = 1, 2
    if args.repeats < 1 or args.warmup < 0:
        parser.error(f"need --repeats >= 1 and --warmup >= 0 (got {args.repeats}, {args.warmup})")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.memory_worker:
        print(json.dumps(memory_worker(*args.memory_worker)))
        return

    started = time.perf_counter()
    devices = args.devices or ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    plan = Plan(args.warmup, args.repeats)
    info = machine_info()
    print(describe_machine(info))
    counts, parameters_markdown = parameters_section()
    print(f"\n## Parameters\n\n{parameters_markdown}")

    inference_cases = [
        partial(measure, depth, size, device, plan)
        for device in devices
        for size in args.sizes
        for measure, depths in (
            (difnet_inference, args.difnet_depths),
            (simdeeplab_inference, args.simdeeplab_depths),
        )
        for depth in depths
    ]
    inference_title = "Inference: batch 1, eval, no_grad, float32 (medians)"
    inference = measure_section(inference_title, INFERENCE_COLUMNS, inference_cases)
    head_cases = [
        partial(head_inference, stride, size, device, plan)
        for device in devices
        for size in args.sizes
        for stride in args.head_strides
    ]
    head_title = (
        "The diffusion head alone: on precomputed scores and levels, batch 1, eval, no_grad (medians)"
    )
    heads = measure_section(head_title, HEAD_COLUMNS, head_cases)
    concurrency_cases = [
        partial(branch_concurrency, depth, size, device, plan)
        for device in devices
        for size in args.sizes
        for depth in args.difnet_depths
    ]
    concurrency_title = "DifNet's two branches: one after the other vs concurrently (medians)"
    concurrency = measure_section(concurrency_title, CONCURRENCY_COLUMNS, concurrency_cases)
    training_cases = [
        partial(training, name, device, checkpointing, plan, args.train_size)
        for device in devices
        for name in LABELS
        for checkpointing in (False, True)
    ]
    training_title = f"Training step: batch {TRAIN_BATCH}, train mode, SGD (medians)"
    trained = measure_section(training_title, TRAINING_COLUMNS, training_cases)

    info["load_average_after"] = list(os.getloadavg())
    wall_s = time.perf_counter() - started
    settings = {**vars(args), "output_dir": str(args.output_dir), "devices": devices}
    markdown = "\n\n".join(
        [
            "# Models: inference stages, training step, parameters (the paper's Table 4)",
            describe_machine(info),
            f"{plan.warmup} warm-up and {plan.repeats} timed calls per case; the whole run took "
            f"{wall_s:.0f} s. {PAPER_NOTE}",
            f"## {inference_title}",
            markdown_table(inference, INFERENCE_COLUMNS),
            f"## {head_title}",
            markdown_table(heads, HEAD_COLUMNS),
            f"## {concurrency_title}",
            markdown_table(concurrency, CONCURRENCY_COLUMNS),
            concurrency_verdicts(concurrency),
            f"## {training_title}",
            "Peak extra memory: gradients, momentum buffers, activations and temporaries of one "
            "step over the model and batch already held (CPU: peak RSS in a fresh process; "
            "CUDA: max_memory_allocated).",
            markdown_table(trained, TRAINING_COLUMNS),
            checkpointing_verdicts(trained),
            "## Parameters",
            parameters_markdown,
        ]
    )
    payload = {
        "machine": info,
        "settings": settings,
        "wall_s": wall_s,
        "parameters": counts,
        "inference": inference,
        "head": heads,
        "concurrency": concurrency,
        "training": trained,
    }
    paths = write_results("model", payload, markdown, args.output_dir)
    print(f"\n{markdown}\n\nwrote {paths[0]} and {paths[1]}")


if __name__ == "__main__":
    main()
