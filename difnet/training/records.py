"""A run's metrics on disk: one JSON object per line in `log.jsonl`, mirrored to TensorBoard when
it is installed. Only the main process holds a `RunLog`."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

LOG_NAME = "log.jsonl"


class RunLog:
    """Appends `{"event": ..., "time": ..., **values}` records; numbers also go to TensorBoard."""

    def __init__(self, output_dir: Path) -> None:
        self.path = output_dir / LOG_NAME
        self.tensorboard = _summary_writer(output_dir / "tensorboard")

    def write(self, event: str, step: int, **values: Any) -> None:
        record = {"event": event, "time": round(time.time(), 3), "step": step, **values}
        with self.path.open("a") as file:
            file.write(json.dumps(record) + "\n")
        if self.tensorboard is not None:
            for name, value in values.items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    self.tensorboard.add_scalar(f"{event}/{name}", value, step)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


def read_log(output_dir: str | Path) -> list[dict[str, Any]]:
    """The records of a run's `log.jsonl`, in order."""
    path = Path(output_dir) / LOG_NAME
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def keep_steps(output_dir: str | Path, steps: int) -> None:
    """Drop the records of steps after `steps` (those a resumed run repeats), atomically."""
    path = Path(output_dir) / LOG_NAME
    if not path.is_file():
        return
    kept = [r for r in read_log(output_dir) if r["step"] <= steps]
    temporary = path.with_name(f".{LOG_NAME}.tmp")
    temporary.write_text("".join(json.dumps(r) + "\n" for r in kept))
    temporary.replace(path)


def _summary_writer(folder: Path):  # noqa: ANN202 - SummaryWriter only exists with tensorboard
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(folder))
