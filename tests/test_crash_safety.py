"""Crash safety: a training run that writes last.pt every step, SIGKILLed at a random moment
(mid-epoch or between epochs) and resumed with `difnet train --resume last.pt` alone, ends with
the uninterrupted run's weights bit for bit; a save killed midway never leaves a
half-written checkpoint; and `difnet train` never replaces an existing run without --overwrite.

SIGKILL gives `atomic_save` no chance to delete its temporary file, so a kill mid-save can leave
a hidden `.<name>.<random>.tmp` beside the target; training removes those at start."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
from itertools import count
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path

import pytest
import torch
from torch.utils._pytree import tree_flatten
from torch_threads import single_thread

from difnet.cli import build_parser, main
from difnet.training import TrainConfig, train
from difnet.training.checkpoint import FORMAT, atomic_save, read_checkpoint, remove_partial_saves
from difnet.training.loop import LAST

EPOCHS, STEPS_PER_EPOCH = 3, 2
TRAIN_ARGS = (
    "train", "--model", "difnet", "--depth", "18", "--dataset", "synthetic",
    "--image-size", "32", "32", "--crop-size", "32", "--batch-size", "4",
    "--epochs", str(EPOCHS), "--max-steps-per-epoch", str(STEPS_PER_EPOCH), "--num-classes", "3",
    "--workers", "0", "--device", "cpu", "--no-progress", "--val-split", "none", "--save-every", "1",
)  # fmt: skip
KILL_SEEDS = (0, 1, 2)
SAVE_KILL_SEEDS = (0, 1, 2, 3, 4, 5)
PAYLOAD_VALUES = 8 * 2**20  # float32: 32 MiB per checkpoint
TIMEOUT_S = 120.0


def train_config(output_dir: Path, *extra: str) -> TrainConfig:
    """The config `difnet train` builds from `TRAIN_ARGS`, writing to `output_dir`."""
    args = build_parser().parse_args([*TRAIN_ARGS, "--output-dir", str(output_dir), *extra])
    return TrainConfig.from_args(args)


def assert_identical(actual: object, expected: object) -> None:
    """Same nested structure, equal plain values and bit-equal tensors."""
    actual_leaves, actual_spec = tree_flatten(actual)
    expected_leaves, expected_spec = tree_flatten(expected)
    assert actual_spec == expected_spec
    for a, e in zip(actual_leaves, expected_leaves, strict=True):
        assert torch.equal(a, e) if isinstance(e, torch.Tensor) else a == e


def temporaries(folder: Path) -> list[str]:
    """Names of the temporary files `atomic_save` left in `folder`."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp"))


# --- kill and resume ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    """last.pt of a run that was never killed."""
    output_dir = tmp_path_factory.mktemp("uninterrupted")
    with single_thread():
        train(train_config(output_dir))
    return read_checkpoint(output_dir / LAST)


def start_training(output_dir: Path) -> subprocess.Popen:
    """`python -m difnet.cli train` in a fresh single-threaded interpreter."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cli = (sys.executable, "-m", "difnet.cli")
    command = [*cli, *TRAIN_ARGS, "--output-dir", str(output_dir), "--overwrite"]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def file_version(path: Path) -> tuple[int, int] | None:
    """`path`'s inode and modification time, which every `atomic_save` to it changes."""
    try:
        status = path.stat()
    except FileNotFoundError:
        return None
    return status.st_ino, status.st_mtime_ns


def kill_after(process: subprocess.Popen, last: Path, saves: int, delay: float) -> None:
    """SIGKILL `process` `delay` seconds after it wrote `last` for the `saves`-th time."""
    deadline = time.monotonic() + TIMEOUT_S
    version, seen = None, 0
    while seen < saves:
        if process.poll() is not None:
            pytest.fail(f"training exited early ({process.returncode}): {process.stderr.read().decode()}")
        assert time.monotonic() < deadline, "training made no progress"
        current = file_version(last)
        seen += current not in (None, version)
        version = current or version
        time.sleep(0.005)
    time.sleep(delay)
    process.kill()  # SIGKILL to this pid only
    assert process.wait() == -signal.SIGKILL, "the run finished before the kill; lower the delay"


@pytest.mark.parametrize("seed", KILL_SEEDS)
def test_a_run_killed_anywhere_resumes_to_the_same_weights(tmp_path, uninterrupted, seed):
    rng = random.Random(seed)
    saves, delay = rng.randint(1, EPOCHS * STEPS_PER_EPOCH - 1), rng.uniform(0.0, 0.3)
    output_dir = tmp_path / "run"
    last = output_dir / LAST
    process = start_training(output_dir)
    try:
        kill_after(process, last, saves, delay)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stderr.close()
    (output_dir / f".{LAST}.planted.tmp").write_bytes(b"half a checkpoint")  # as a kill mid-save leaves
    stopped = read_checkpoint(last)
    assert stopped["step"] >= saves
    with single_thread():
        assert main(["train", "--resume", str(last)]) == 0  # the recipe comes from the checkpoint
    resumed = read_checkpoint(last)
    print(
        f"seed {seed}: killed {delay:.2f}s after save {saves}, resumed from step {stopped['step']} "
        f"({stopped['steps_into_epoch']} into epoch {stopped['epoch'] + 1})"
    )
    assert resumed["epoch"] == uninterrupted["epoch"] == EPOCHS
    assert resumed["step"] == uninterrupted["step"]
    assert_identical(resumed["model"], uninterrupted["model"])
    assert_identical(resumed["optimizer"], uninterrupted["optimizer"])
    assert temporaries(output_dir) == []


# --- kill during a save ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def payloads() -> list[dict]:
    """Three distinct checkpoints of 32 MiB each, told apart by their `index`."""
    generator = torch.Generator().manual_seed(0)
    return [
        {"format": FORMAT, "index": index, "model_spec": {},
         "model": {"weights": torch.randn(PAYLOAD_VALUES, generator=generator)}}
        for index in range(3)
    ]  # fmt: skip


def save_forever(payloads: list[dict], path: Path, saved: Synchronized) -> None:
    """Cycle `atomic_save` through `payloads`, counting the completed saves in `saved`."""
    for index in count():
        atomic_save(payloads[index % len(payloads)], path)
        saved.value = index + 1


def partial_size(folder: Path) -> int:
    """Bytes written so far to the temporary file of a save in progress (-1 between saves)."""
    for entry in os.scandir(folder):
        if entry.name.endswith(".tmp"):
            try:
                return entry.stat().st_size
            except FileNotFoundError:  # renamed between the listing and the stat
                return -1
    return -1


def kill_mid_save(
    process: multiprocessing.Process, folder: Path, saved: Synchronized, completed: int, fraction: float
) -> None:
    """SIGKILL `process` once `completed` saves finished and the next wrote `fraction` of its bytes."""
    deadline = time.monotonic() + TIMEOUT_S
    while saved.value < completed or partial_size(folder) < fraction * PAYLOAD_VALUES * 4:
        assert process.is_alive() and time.monotonic() < deadline, "the saving process stalled"
        time.sleep(0.0005)
    process.kill()  # SIGKILL to this pid only
    process.join()


@pytest.mark.parametrize("seed", SAVE_KILL_SEEDS)
def test_a_save_killed_midway_leaves_the_previous_checkpoint_or_none(tmp_path, payloads, seed):
    rng = random.Random(seed)
    completed, fraction = rng.randrange(3), rng.random()
    target = tmp_path / LAST
    context = multiprocessing.get_context("fork")  # no re-import; the child only serialises
    saved = context.Value("i", 0)
    process = context.Process(target=save_forever, args=(payloads, target, saved), daemon=True)
    process.start()
    try:
        kill_mid_save(process, tmp_path, saved, completed, fraction)
    finally:
        process.kill()
        process.join()
    assert process.exitcode == -signal.SIGKILL
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == (
        [LAST] if target.exists() else []
    )
    assert target.exists() or saved.value == 0, "a completed save was lost"
    if target.exists():
        payload = read_checkpoint(target)
        assert_identical(payload, payloads[payload["index"]])
    stale = remove_partial_saves(target)
    print(f"seed {seed}: killed after {saved.value} saves, {len(stale)} temporary file(s) left")
    assert temporaries(tmp_path) == []


# --- existing runs -----------------------------------------------------------------------------


def test_train_never_replaces_an_existing_run_without_overwrite(tmp_path, capsys):
    output_dir = tmp_path / "run"
    output_dir.mkdir()
    contents = {LAST: b"a previous run's weights", "log.jsonl": b'{"event": "train"}\n', "config.json": b"{}"}
    for name, data in contents.items():
        (output_dir / name).write_bytes(data)
    before = {p.name: p.stat().st_mtime_ns for p in output_dir.iterdir()}
    status = main([*TRAIN_ARGS, "--output-dir", str(output_dir)])
    error = capsys.readouterr().err
    assert status == 2
    assert "--overwrite" in error and str(output_dir) in error
    assert {p.name: p.stat().st_mtime_ns for p in output_dir.iterdir()} == before
    assert {name: (output_dir / name).read_bytes() for name in contents} == contents
