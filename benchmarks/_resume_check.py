"""Whether resuming a `difnet train` checkpoint restores exactly what it saved: builds the trainer that
`difnet train --resume CHECKPOINT --device DEVICE` builds (one process) and compares its weights,
optimiser state, epoch and step with the checkpoint's; prints the comparison as one JSON object.

    python -m benchmarks._resume_check CHECKPOINT DEVICE
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from difnet.models.serialization import read_checkpoint, unwrap
from difnet.training import distributed
from difnet.training.config import resume_config
from difnet.training.loop import Trainer


def mismatched(restored: Any, saved: Any, where: str = "") -> list[str]:
    """The paths in two nested state dicts whose tensors or values differ (on the CPU, exactly)."""
    if isinstance(saved, dict):
        if not isinstance(restored, dict) or restored.keys() != saved.keys():
            return [where or "(top)"]
        return [path for key in saved for path in mismatched(restored[key], saved[key], f"{where}/{key}")]
    if isinstance(saved, list | tuple):
        if not isinstance(restored, list | tuple) or len(restored) != len(saved):
            return [where]
        return [
            path for i, pair in enumerate(zip(restored, saved)) for path in mismatched(*pair, f"{where}/{i}")
        ]
    if isinstance(saved, torch.Tensor):
        same = isinstance(restored, torch.Tensor) and torch.equal(restored.detach().cpu(), saved.cpu())
        return [] if same else [where]
    return [] if restored == saved else [where]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("device")
    args = parser.parse_args()
    saved = read_checkpoint(args.checkpoint)
    config = resume_config(args.checkpoint, {"device": args.device, "workers": 0, "progress": False})
    trainer = Trainer(config, distributed.setup(config.device))
    weights = mismatched(unwrap(trainer.model).state_dict(), saved["model"])
    optimizer = mismatched(trainer.optimizer.state_dict(), saved["optimizer"])
    print(json.dumps({
        "epoch": trainer.epoch, "step": trainer.step, "saved_epoch": saved["epoch"], "saved_step": saved["step"],
        "weights_equal": not weights, "optimizer_equal": not optimizer, "mismatched": (weights + optimizer)[:10],
    }))  # fmt: skip


if __name__ == "__main__":
    main()
