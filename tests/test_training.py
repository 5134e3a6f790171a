"""The training loop: it learns, it resumes exactly, its schedule and accumulation are the
recipe's, its config survives the command line and checkpoints, and it runs under torchrun."""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Subset

from difnet.data import SyntheticShapes, TrainTransform
from difnet.models import DifNet
from difnet.training import TrainConfig, distributed, load_model, read_checkpoint, train
from difnet.training.loop import EpochSampler, NonFiniteLossError, Trainer
from difnet.training.optim import build_optimizer, poly_lr, set_learning_rate
from difnet.training.records import read_log

TINY = dict(
    model="difnet", depth=18, dataset="synthetic", num_classes=3, image_size=(32, 32),
    crop_size=32, batch_size=4, epochs=3, max_steps_per_epoch=2, workers=0, device="cpu",
    progress=False, val_split=None, overwrite=True,
)  # fmt: skip
PROJECT_ROOT = Path(__file__).resolve().parents[1]


def tiny_config(tmp_path, name: str = "run", **overrides) -> TrainConfig:
    return TrainConfig(**{**TINY, "output_dir": str(tmp_path / name), **overrides})


def states_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_training_lowers_the_loss_on_a_fixed_batch(tmp_path):
    scenes = SyntheticShapes(4, size=32, num_classes=3, seed=0)  # no augmentation: one fixed batch
    config = tiny_config(tmp_path, epochs=12, max_steps_per_epoch=1, log_every=1, lr=0.005)
    train(config, dataset_overrides={"train": scenes, "val": None})
    losses = [r["loss"] for r in read_log(config.output_dir) if r["event"] == "train"]
    assert len(losses) == 12
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses


def test_stop_and_resume_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    config = tiny_config(tmp_path, "whole", val_split="val")
    whole = train(config)

    original = Trainer._train_epoch

    def crash_in_epoch_three(trainer: Trainer) -> None:
        if trainer.epoch == 2:
            raise KeyboardInterrupt
        original(trainer)

    monkeypatch.setattr(Trainer, "_train_epoch", crash_in_epoch_three)
    stopped = replace(config, output_dir=str(tmp_path / "stopped"))
    with pytest.raises(KeyboardInterrupt):
        train(stopped)
    monkeypatch.setattr(Trainer, "_train_epoch", original)
    assert read_checkpoint(tmp_path / "stopped" / "last.pt")["epoch"] == 2

    with (tmp_path / "stopped" / "log.jsonl").open("a") as log:  # as if epoch 3 had logged
        log.write('{"event": "train", "step": 5, "epoch": 3, "loss": 1.0}\n')
    resumed = train(replace(stopped, resume=str(tmp_path / "stopped" / "last.pt"), overwrite=False))
    assert states_equal(whole.model, resumed.model)
    events = [
        [(r["event"], r["epoch"], r["step"]) for r in read_log(result)]
        for result in (tmp_path / "whole", tmp_path / "stopped")
    ]
    assert events[0] == events[1]
    assert resumed.history == whole.history and resumed.best_miou == whole.best_miou
    saved = read_checkpoint(tmp_path / "stopped" / "last.pt")
    assert (saved["epoch"], saved["step"]) == (3, 6)


def test_a_mid_epoch_checkpoint_resumes_from_the_same_sample(tmp_path, monkeypatch):
    config = tiny_config(tmp_path, "whole", max_steps_per_epoch=3, save_every=2, log_every=1)
    whole = train(config)
    original = Trainer._step

    def crash_at_step_five(trainer: Trainer, batches, index: int) -> float:
        if trainer.step == 4:  # epoch 2's second step; last.pt holds step 4 = 1 step into epoch 2
            raise KeyboardInterrupt
        return original(trainer, batches, index)

    monkeypatch.setattr(Trainer, "_step", crash_at_step_five)
    stopped = replace(config, output_dir=str(tmp_path / "stopped"))
    with pytest.raises(KeyboardInterrupt):
        train(stopped)
    monkeypatch.setattr(Trainer, "_step", original)
    saved = read_checkpoint(tmp_path / "stopped" / "last.pt")
    assert (saved["epoch"], saved["step"], saved["steps_into_epoch"]) == (1, 4, 1)
    resumed = train(replace(stopped, resume=str(tmp_path / "stopped" / "last.pt")))
    assert states_equal(whole.model, resumed.model)
    events = [
        [(r["event"], r["epoch"], r["step"]) for r in read_log(result)]
        for result in (tmp_path / "whole", tmp_path / "stopped")
    ]
    assert events[0] == events[1]


def test_the_first_loss_logged_after_a_mid_epoch_resume_is_the_mean_of_its_steps(tmp_path, monkeypatch):
    config = tiny_config(tmp_path, epochs=1, max_steps_per_epoch=4, batch_size=2, save_every=2, log_every=4)
    original = Trainer._step

    def crash_at_step_three(trainer: Trainer, batches, index: int) -> float:
        if trainer.step == 2:  # last.pt holds the first 2 steps of the 4-step logging window
            raise KeyboardInterrupt
        return original(trainer, batches, index)

    monkeypatch.setattr(Trainer, "_step", crash_at_step_three)
    with pytest.raises(KeyboardInterrupt):
        train(config)
    losses = []

    def recording(trainer: Trainer, batches, index: int) -> float:
        losses.append(original(trainer, batches, index))
        return losses[-1]

    monkeypatch.setattr(Trainer, "_step", recording)
    train(replace(config, resume=str(tmp_path / "run" / "last.pt")))
    logged = [(r["step"], r["loss"]) for r in read_log(config.output_dir) if r["event"] == "train"]
    assert len(losses) == 2 and logged == [(4, pytest.approx(sum(losses) / 2, rel=1e-6))]


def first_batches(tmp_path, monkeypatch, name: str, **overrides) -> list[torch.Tensor]:
    """The images of the first batch of each epoch of a tiny run."""
    seen, original = [], Trainer._step

    def recording(trainer: Trainer, batches, index: int) -> float:
        images, labels = next(batches)
        seen.append(images)
        return original(trainer, iter([(images, labels)]), index)

    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "_step", recording)
        train(tiny_config(tmp_path, name, epochs=2, max_steps_per_epoch=1, batch_size=2, **overrides))
    return seen


def test_the_augmentations_do_not_depend_on_the_number_of_workers(tmp_path, monkeypatch):
    """`--workers` may change on resume, so a sample's augmentation must not depend on it."""
    in_process = first_batches(tmp_path, monkeypatch, "in-process", workers=0)
    in_a_worker = first_batches(tmp_path, monkeypatch, "in-a-worker", workers=1)
    assert len(in_process) == len(in_a_worker) == 2
    for epoch, (expected, actual) in enumerate(zip(in_process, in_a_worker, strict=True)):
        assert torch.equal(actual, expected), f"epoch {epoch + 1}"


def test_a_sample_seed_draws_the_same_augmentation_and_leaves_the_callers_random_streams_alone():
    from difnet.training.sample_seeds import SampleSeeded

    scenes = SampleSeeded(SyntheticShapes(3, size=32, num_classes=3, transform=TrainTransform(24)), seed=7)
    torch.manual_seed(0)
    first, expected_next = scenes[1][0], torch.rand(())
    torch.manual_seed(0)
    scenes[2]
    assert torch.equal(scenes[1][0], first) and torch.equal(torch.rand(()), expected_next)
    scenes.epoch = 1
    assert not torch.equal(scenes[1][0], first)  # a new epoch, a new augmentation


def run_cli(*args: str) -> int:
    from difnet.cli import main

    return main(["train", *map(str, args)])


def test_resume_takes_the_recipe_from_the_checkpoint_alone(tmp_path, capsys):
    output = tmp_path / "run"
    assert run_cli("--model", "simdeeplab", "--depth", "18", "--dataset", "synthetic",
                   "--num-classes", "3", "--image-size", "32", "32", "--crop-size", "32",
                   "--batch-size", "4", "--epochs", "1", "--max-steps-per-epoch", "1", "--lr", "0.02",
                   "--workers", "0", "--device", "cpu", "--no-progress", "--val-split", "none",
                   "--output-dir", output) == 0  # fmt: skip
    last = output / "last.pt"
    assert run_cli("--resume", last, "--epochs", "2") == 0  # extend: allowed
    saved = read_checkpoint(last)
    assert (saved["epoch"], saved["step"]) == (2, 2)
    assert saved["config"]["lr"] == 0.02 and saved["config"]["model"] == "simdeeplab"
    capsys.readouterr()
    assert run_cli("--resume", last, "--lr", "0.0025", "--epochs", "3") == 2
    error = capsys.readouterr().err
    assert "--lr 0.0025 (the run used 0.02)" in error and "--epochs" in error
    assert read_checkpoint(last)["step"] == 2  # nothing ran


@pytest.mark.parametrize(
    "change, message",
    [
        ({"lr": 0.5}, "lr=0.5 (the run used 0.0025)"),
        ({"seed": 3}, "seed=3 (the run used 0)"),
        ({"aux_seed_weight": 0.4}, "aux_seed_weight=0.4 (the run used 0.0)"),
    ],
)
def test_the_library_resume_refuses_another_recipe_naming_the_setting(tmp_path, change, message):
    config = tiny_config(tmp_path, epochs=1, max_steps_per_epoch=1)
    train(config)
    last = tmp_path / "run" / "last.pt"
    with pytest.raises(ValueError, match=re.escape(message)):
        train(replace(config, resume=str(last), overwrite=False, epochs=2, **change))
    assert read_checkpoint(last)["step"] == 1  # nothing ran
    # what --resume may change (as benchmarks/camvid.py resumes a freshly built recipe) still resumes
    resumed = train(replace(config, resume=str(last), overwrite=False, epochs=2, workers=0, log_every=3))
    assert resumed.history[-1]["step"] == 2


def test_train_voc_example_resumes_from_the_checkpoint_alone(tmp_path):
    spec = importlib.util.spec_from_file_location("train_voc", PROJECT_ROOT / "examples" / "train_voc.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    parse_config = example.parse_config
    output = tmp_path / "syn"
    train(parse_config(["--synthetic", "--epochs", "1", "--max-steps-per-epoch", "1", "--no-progress",
                        "--workers", "0", "--device", "cpu", "--output-dir", str(output)]))  # fmt: skip
    config = parse_config(["--resume", str(output / "last.pt"), "--epochs", "2"])
    assert config.dataset == "synthetic" and config.epochs == 2 and config.output_dir == str(output)
    with pytest.raises(ValueError, match=r"--dataset 'voc' \(the run used 'synthetic'\)"):
        parse_config(["--resume", str(output / "last.pt"), "--dataset", "voc"])


def test_best_checkpoint_is_an_inference_checkpoint_of_the_best_epoch(tmp_path):
    result = train(tiny_config(tmp_path, val_split="val", epochs=2))
    best = read_checkpoint(result.checkpoint_paths["best"])
    assert "optimizer" not in best and "optimizer" in read_checkpoint(result.checkpoint_paths["last"])
    assert best["best_miou"] == result.best_miou == max(h["miou"] for h in result.history)
    model, metadata = load_model(result.checkpoint_paths["best"])
    assert model.num_classes == 3 and metadata["class_names"][0] == "background"


def test_poly_schedule_and_optional_group_rates():
    assert poly_lr(0.01, 0, 100, 0.9) == 0.01
    assert poly_lr(0.01, 50, 100, 0.9) == pytest.approx(0.01 * 0.5**0.9)
    assert poly_lr(0.01, 100, 100, 0.9) == 0.0
    config = TrainConfig(**{**TINY, "lr": 0.02, "head_lr_mult": 10.0, "walk_lr_mult": 30.0,
                            "walk_weight_decay": 0.0})  # fmt: skip
    optimizer = build_optimizer(DifNet(depth=18, num_classes=3), config)
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert groups["backbone"]["lr"] == 0.02 and groups["head"]["lr"] == pytest.approx(0.2)
    assert groups["walk"]["lr"] == pytest.approx(0.6) and groups["walk"]["weight_decay"] == 0.0
    assert groups["head"]["weight_decay"] == 5e-4 and groups["head"]["momentum"] == 0.9
    set_learning_rate(optimizer, config, 50, 100)
    assert groups["walk"]["lr"] == pytest.approx(0.6 * 0.5**0.9)


def test_accumulation_steps_once_per_group_of_batches(tmp_path):
    result = train(tiny_config(tmp_path, batch_size=2, accumulate=2, epochs=1, max_steps_per_epoch=3))
    saved = read_checkpoint(result.checkpoint_paths["last"])
    assert saved["step"] == 3  # 6 batches of 2 images, 3 optimiser steps


def test_epoch_sampler_shards_one_permutation_per_epoch():
    shards = [list(EpochSampler(10, seed=1, rank=r, world_size=3)) for r in range(3)]
    assert all(len(s) == 3 for s in shards)
    assert len(set(sum(shards, []))) == 9  # disjoint shares of one permutation
    sampler = EpochSampler(10, seed=1)
    first = list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != first and sorted(sampler) == list(range(10))


def test_config_survives_the_command_line_and_a_checkpoint():
    parser = argparse.ArgumentParser()
    TrainConfig.add_arguments(parser)
    args = parser.parse_args(
        [
            "--depth",
            "18",
            "--crop-size",
            "200",
            "240",
            "--val-split",
            "none",
            "--dataset",
            "camvid",
            "--image-size",
            "180",
            "240",
            "--no-aspp",
        ]
    )
    config = TrainConfig.from_args(args)
    assert config.crop_size == (200, 240) and config.val_split is None and not config.aspp
    assert config.image_size == (180, 240)
    assert TrainConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown training settings: colour"):
        TrainConfig.from_dict({**config.to_dict(), "colour": "red"})


def test_too_small_a_training_split_is_refused(tmp_path):
    scenes = SyntheticShapes(3, size=32, num_classes=3)
    with pytest.raises(ValueError, match="3 images, fewer than one step needs.*batch_size 4"):
        train(tiny_config(tmp_path), dataset_overrides={"train": scenes, "val": None})


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("role", ["train", "val"])
def test_an_empty_override_dataset_is_refused_not_replaced_by_the_configs(tmp_path, role):
    empty = Subset(SyntheticShapes(4, size=32, num_classes=3), [])
    scenes = SyntheticShapes(8, size=32, num_classes=3)
    config = tiny_config(tmp_path, dataset="voc", data_root=str(tmp_path / "no-voc"), image_size=None)
    overrides = {"train": scenes, "val": scenes, role: empty}
    with pytest.raises(ValueError, match=f"the {'training' if role == 'train' else 'validation'} dataset "
                                         r"\(Subset\) holds no images"):  # fmt: skip
        train(config, dataset_overrides=overrides)


class SkippingScaler:
    """A gradient scaler whose every step overflows: it skips the step and halves its scale."""

    def __init__(self, *args, **kwargs) -> None:
        self.value = 2.0**16

    def is_enabled(self) -> bool:
        return True

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        return loss

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        pass  # skipped: the weights stay

    def update(self) -> None:
        self.value /= 2

    def get_scale(self) -> float:
        return self.value

    def state_dict(self) -> dict:
        return {"scale": self.value}


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_fp16_steps_the_scaler_skips_are_logged_and_most_skipped_stops_or_warns(
    tmp_path, monkeypatch, capsys, policy
):
    monkeypatch.setattr(torch.amp, "GradScaler", SkippingScaler)
    monkeypatch.setattr("difnet.training.loop.SKIP_WINDOW", 4)
    config = tiny_config(tmp_path, model="simdeeplab", epochs=1, max_steps_per_epoch=4, on_nonfinite=policy)
    if policy == "stop":
        with pytest.raises(NonFiniteLossError, match="skipped 4 of the last 4 steps"):
            train(config)
    else:
        result = train(config)
        assert result.history[-1]["fp16_skipped_steps"] == 4
        assert "warning: the fp16 gradient scaler skipped 4 of the last 4 steps" in capsys.readouterr().out
    skipped = [r for r in read_log(config.output_dir) if r["event"] == "fp16_skipped"]
    assert [(r["step"], r["scale"]) for r in skipped] == [
        (1, 2.0**16),
        (2, 2.0**15),
        (3, 2.0**14),
        (4, 2.0**13),
    ]


def test_two_process_ddp_on_cpu_with_gloo(tmp_path):
    output = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
        "-m", "difnet.cli", "train", "--model", "difnet", "--depth", "18", "--dataset", "synthetic",
        "--num-classes", "3", "--image-size", "32", "32", "--crop-size", "32", "--batch-size", "2",
        "--epochs", "1", "--max-steps-per-epoch", "2", "--workers", "0", "--device", "cpu",
        "--val-split", "val", "--no-progress", "--output-dir", str(output),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    records = read_log(output)
    assert [r["step"] for r in records if r["event"] == "train"] == [2]  # one writer, 2 steps
    assert len([r for r in records if r["event"] == "val"]) == 1
    saved = read_checkpoint(output / "last.pt")
    assert saved["step"] == 2 and all(torch.isfinite(v).all() for v in saved["model"].values())


def test_one_process_under_torchrun_takes_the_ddp_path(tmp_path, monkeypatch):
    """torchrun with one process (one GPU) joins a process group of one and wraps the model in DDP,
    so a one-GPU machine runs the multi-GPU code path (NCCL there, gloo here)."""
    rendezvous = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "RANK": "0",
                  "WORLD_SIZE": "1", "LOCAL_RANK": "0"}  # fmt: skip
    for name, value in rendezvous.items():
        monkeypatch.setenv(name, value)
    context = distributed.setup("cpu")
    try:
        assert context.distributed and context.owns_group and context.world_size == 1
        assert torch.distributed.get_backend() == "gloo"
        trainer = Trainer(tiny_config(tmp_path, epochs=1, max_steps_per_epoch=1), context)
        assert isinstance(trainer.model, DistributedDataParallel)
    finally:
        distributed.teardown(context)
    assert not torch.distributed.is_initialized()


def test_train_voc_example_explains_missing_data_and_runs_synthetic(tmp_path):
    script = str(PROJECT_ROOT / "examples" / "train_voc.py")
    missing = subprocess.run(
        [sys.executable, script, "--data-root", str(tmp_path / "nowhere")], capture_output=True, text=True
    )
    assert missing.returncode == 2
    assert "SegmentationClassAug" in missing.stderr and "train_aug.txt" in missing.stderr
    synthetic = subprocess.run(
        [sys.executable, script, "--synthetic", "--epochs", "1", "--max-steps-per-epoch", "2",
         "--no-progress", "--output-dir", str(tmp_path / "syn")],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert synthetic.returncode == 0, synthetic.stderr[-3000:]
    assert "mIoU" in synthetic.stdout and (tmp_path / "syn" / "best.pt").is_file()
