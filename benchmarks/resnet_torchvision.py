"""Whether the hand-written dilated ResNet should give way to torchvision's: the two side by side
with the same weights, their outputs compared and their forward and forward+backward timed.

Cases: ResNet-18 and ResNet-50 undilated (output stride 32, which both build) and dilated to output
stride 8 (DifNet's and DeepLab's layout). Both networks get the same state dict (the names are
torchvision's); where torchvision refuses the layout, the case records its error. Outputs are
layer4's on one batch in eval mode, at 161x161 (where the authors' ceil-mode max pool and
torchvision's floor give the same grid) and at 160x160 (where they do not). Times at 161x161:
median of `--repeats` rounds, each timing every call once in turn (so a change of load falls on
both networks alike), one thread by default, batch 2, train mode for forward+backward. Writes
resnet_torchvision.{json,md} under benchmarks/results/. Needs torchvision (torch 2.14.1 with
torchvision 0.29.1 here).

    python -m benchmarks.resnet_torchvision
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from benchmarks._measure import RESULTS_DIR, describe_machine, machine_info, markdown_table, write_results
from difnet.models.resnet import dilated_resnet

DILATIONS = {32: (False, False, False), 8: (False, True, True)}
SIZES = (161, 160)


def torchvision_resnet(depth: int, dilation: tuple[bool, bool, bool]) -> nn.Module:
    """torchvision's ResNet-`depth` with `replace_stride_with_dilation=dilation`, untrained."""
    from torchvision import models

    return getattr(models, f"resnet{depth}")(weights=None, replace_stride_with_dilation=list(dilation))


def torchvision_layer4(network: nn.Module, images: Tensor) -> Tensor:
    """The output of torchvision's layer4 (its forward ends in the classifier)."""
    x = network.maxpool(network.relu(network.bn1(network.conv1(images))))
    return network.layer4(network.layer3(network.layer2(network.layer1(x))))


def training_step(forward: Any, images: Tensor, network: nn.Module) -> None:
    """One forward and backward in train mode, its gradients dropped."""
    network.train()
    forward(images).float().square().mean().backward()
    network.zero_grad(set_to_none=True)


def compare(depth: int, output_stride: int, repeats: int) -> dict[str, Any]:
    """One case: outputs with shared weights at `SIZES`, and both networks' times at 161x161."""
    row: dict[str, Any] = {"depth": depth, "output_stride": output_stride}
    torch.manual_seed(0)
    ours = dilated_resnet(depth, DILATIONS[output_stride])
    try:
        theirs = torchvision_resnet(depth, DILATIONS[output_stride])
    except (NotImplementedError, ValueError) as error:
        return {**row, "torchvision": f"refused: {error}"}
    missing, unexpected = theirs.load_state_dict(ours.state_dict(), strict=False)
    if set(missing) - {"fc.weight", "fc.bias"} or unexpected:
        raise RuntimeError(f"state dicts differ: missing {missing}, unexpected {unexpected}")
    row["torchvision"] = "built"
    ours_forward = lambda images: ours(images)[-1]  # noqa: E731
    theirs_forward = lambda images: torchvision_layer4(theirs, images)  # noqa: E731
    ours.eval(), theirs.eval()
    with torch.no_grad():
        for size in SIZES:
            images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(size))
            mine, other = ours_forward(images), theirs_forward(images)
            row[f"grid_{size}"] = f"{tuple(mine.shape[-2:])} vs {tuple(other.shape[-2:])}"
            same_grid = mine.shape == other.shape
            row[f"max_abs_difference_{size}"] = (mine - other).abs().max().item() if same_grid else None
    images = torch.randn(2, 3, 161, 161, generator=torch.Generator().manual_seed(1))
    cases = {"ours": (ours, ours_forward), "torchvision": (theirs, theirs_forward)}
    for name, seconds in paired_medians(cases, images, repeats).items():
        row[f"{name}_ms"] = 1000 * seconds
    return row


def paired_medians(cases: dict[str, tuple[nn.Module, Any]], images: Tensor, repeats: int) -> dict[str, float]:
    """Median seconds of each case's eval forward (`<case>_forward`) and train step
    (`<case>_train_step`), the cases timed in turn within each repeat so that a change of load
    falls on both alike."""
    calls = {}
    for name, (network, forward) in cases.items():
        calls[f"{name}_forward"] = lambda network=network, forward=forward: evaluated(
            forward, images, network
        )
        calls[f"{name}_train_step"] = lambda network=network, forward=forward: training_step(
            forward, images, network
        )
    times: dict[str, list[float]] = {name: [] for name in calls}
    for repeat in range(repeats + 1):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            if repeat:  # the first round warms up
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(seconds) for name, seconds in times.items()}


@torch.no_grad()
def evaluated(forward: Any, images: Tensor, network: nn.Module) -> None:
    """One forward in eval mode."""
    network.eval()
    forward(images)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    info = machine_info()
    rows = [compare(depth, stride, args.repeats) for depth in (18, 50) for stride in (32, 8)]
    info["load_average_after"] = machine_info()["load_average_1m_5m_15m"]
    columns = {
        "depth": "ResNet", "output_stride": "output stride", "torchvision": "torchvision",
        "grid_161": "layer4 grid at 161 (ours vs tv)", "max_abs_difference_161": "max abs diff at 161",
        "grid_160": "layer4 grid at 160", "max_abs_difference_160": "max abs diff at 160",
        "ours_forward_ms": "ours fwd ms", "torchvision_forward_ms": "tv fwd ms",
        "ours_train_step_ms": "ours fwd+bwd ms", "torchvision_train_step_ms": "tv fwd+bwd ms",
    }  # fmt: skip
    table = markdown_table(rows, columns)
    print(table)
    markdown = (
        "# The hand-written ResNet against torchvision's\n\n"
        f"{describe_machine(info)} Batch 2; times at 161x161, median of {args.repeats} paired rounds.\n\n"
        f"{table}\n\n`python -m benchmarks.resnet_torchvision`\n"
    )
    write_results("resnet_torchvision", {"machine": info, "rows": rows}, markdown, args.output_dir)


if __name__ == "__main__":
    main()
