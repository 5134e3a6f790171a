"""Recipe files and the one declaration per setting: `difnet train --config FILE` repeats a run
from its config.json with one change, options override the file, the file overrides the
defaults, run-only settings come from the command line, and bad files are refused by name."""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import fields
from pathlib import Path

import pytest

from difnet.cli import main
from difnet.training import TrainConfig
from difnet.training.config import DIFNET_ONLY, RESUME_CHANGEABLE, RUN_ONLY
from difnet.training.settings import declared

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "voc_recipe.toml"
QUICK = ("--model", "simdeeplab", "--depth", "18", "--dataset", "synthetic", "--num-classes", "3",
         "--image-size", "32", "32", "--crop-size", "32", "--batch-size", "2", "--epochs", "1",
         "--max-steps-per-epoch", "1", "--val-split", "none", "--workers", "0")  # fmt: skip


def parse(*argv: str) -> TrainConfig:
    parser = argparse.ArgumentParser()
    TrainConfig.add_arguments(parser)
    return TrainConfig.from_args(parser.parse_args(list(argv)))


def write_json(path: Path, values: dict) -> Path:
    path.write_text(json.dumps(values))
    return path


def test_a_runs_config_json_repeats_it_with_one_change(tmp_path, capsys):
    first, second = tmp_path / "first", tmp_path / "second"
    assert main(["train", *QUICK, "--output-dir", str(first)]) == 0
    config = str(first / "config.json")
    assert main(["train", "--config", config, "--seed", "1", "--output-dir", str(second)]) == 0
    assert "config.json sets device, output_dir" in capsys.readouterr().err  # the note, not an error
    before = json.loads((first / "config.json").read_text())
    after = json.loads((second / "config.json").read_text())
    assert {name for name in before if before[name] != after[name]} == {"seed", "output_dir"}
    assert set(before) == set(after)


def test_options_override_the_file_which_overrides_the_defaults(tmp_path):
    recipe = write_json(tmp_path / "r.json", {"depth": 18, "lr": 0.01, "crop_size": [64, 96], "flip": False,
                                              "val_split": "none"})  # fmt: skip
    config = parse("--config", str(recipe), "--lr", "0.02")
    assert (config.depth, config.lr, config.crop_size) == (18, 0.02, (64, 96))
    assert not config.flip and config.val_split is None
    assert config.batch_size == TrainConfig.batch_size  # neither file nor option: the default


def test_every_setting_round_trips_through_a_file(tmp_path):
    changed = TrainConfig(model="difnet", depth=18, aspp=False, dataset="folder", num_classes=4,
                          in_channels=1, mean=(0.5,), std=(0.25,), image_size=(40, 60), crop_size=(32, 48),
                          scale_range=(0.75, 1.25), flip=False, lr=0.1, walk_weight_decay=0.0,
                          precision="bf16", seed=3, workers=0, max_steps_per_epoch=5, save_every=2,
                          pretrained_backbone="imagenet", device="cpu")  # fmt: skip
    recipe = write_json(tmp_path / "r.json", changed.to_dict())
    assert parse("--config", str(recipe), "--device", "cpu", "--output-dir", changed.output_dir) == changed


def test_run_only_settings_come_from_the_command_line(tmp_path, capsys):
    recipe = write_json(tmp_path / "r.json", {"output_dir": "elsewhere", "log_every": 1, "depth": 18})
    config = parse("--config", str(recipe), "--output-dir", "here")
    assert (config.output_dir, config.log_every, config.depth) == ("here", TrainConfig.log_every, 18)
    assert (
        "r.json sets output_dir, log_every, which come from the command line only" in capsys.readouterr().err
    )


def test_the_paper_voc_recipe_file_is_the_default_recipe_on_voc_train_aug():
    pytest.importorskip("tomllib", reason="TOML recipes need Python 3.11+")
    config = parse("--config", str(EXAMPLE), "--device", "cpu")
    expected = TrainConfig(
        dataset="voc", train_split="train_aug", pretrained_backbone="imagenet", device="cpu"
    )
    assert config == expected


@pytest.mark.parametrize(
    ("name", "text", "error", "match"),
    [
        (
            "r.json",
            '{"lrate": 0.1, "epoch": 2}',
            ValueError,
            r"r\.json: unknown training settings: epoch, lrate",
        ),
        ("r.json", '{"flip": "no"}', TypeError, r"r\.json: flip must be a bool \(got 'no'\)"),
        ("r.json", '{"crop_size": [1, 2, 3]}', TypeError, r"crop_size must be a list of 2 int values"),
        ("r.json", '{"depth": 18,}', ValueError, r"cannot read recipe file .*r\.json"),
        ("r.json", "[1, 2]", ValueError, r"must hold a table of settings \(got list\)"),
        ("r.yaml", "depth: 18", ValueError, r"unknown format '\.yaml'; use \.json or \.toml"),
        ("r.toml", "depth = 18\ncolour = 'red'", ValueError, r"unknown training settings: colour"),
    ],
)
def test_bad_recipe_files_are_refused_by_name(tmp_path, name, text, error, match):
    if name.endswith(".toml"):
        pytest.importorskip("tomllib", reason="TOML recipes need Python 3.11+")
    (tmp_path / name).write_text(text)
    with pytest.raises(error, match=match):
        parse("--config", str(tmp_path / name))


def test_config_and_resume_do_not_go_together(tmp_path):
    recipe = write_json(tmp_path / "r.json", {"depth": 18})
    with pytest.raises(ValueError, match="--config .*r.json and --resume do not go together"):
        parse("--config", str(recipe), "--resume", str(tmp_path / "last.pt"))


def test_one_declaration_per_setting_drives_every_reader():
    names = [f.name for f in fields(TrainConfig)]
    assert [item.name for item in declared(TrainConfig)] == names  # every field is declared
    parser = argparse.ArgumentParser()
    TrainConfig.add_arguments(parser)
    assert {action.dest for action in parser._actions} >= set(names)  # every field is an option
    assert set(RUN_ONLY) == {"device", "output_dir", "overwrite", "resume", "log_every", "progress"}
    assert set(RESUME_CHANGEABLE) == {"epochs", "workers", "data_root", "eval_every", "on_nonfinite",
                                      "save_every", "gradient_checkpointing", *RUN_ONLY}  # fmt: skip


def test_difnet_options_are_refused_for_another_model_naming_each():
    with pytest.raises(ValueError, match=re.escape(
        "aspp=False, walk='materialized', diffusion_stride=4, psi_scale_init=1.0: options of DifNet, but the "
        "model is 'simdeeplab', which has no diffusion"
    )):  # fmt: skip
        TrainConfig(
            model="simdeeplab", aspp=False, diffusion_stride=4, walk="materialized", psi_scale_init=1.0
        )
    assert TrainConfig(model="simdeeplab", aspp=True, walk="fused", diffusion_stride=8).model == "simdeeplab"


NOT_DEFAULT = {"aspp": False, "walk": "materialized", "diffusion_stride": 4, "psi_scale_init": 1.0,
               "shared_backbone": True, "normalize_importance": True, "kernel": "distance", "kernel_radius": 2,
               "learn_temperature": True, "beta_init": 0.1, "aux_seed_weight": 0.4, "transition_loss_weight": 0.4,
               "walk_lr_mult": 10.0, "walk_weight_decay": 0.0, "seed_from": "stage-one/last.pt",
               "similarity_encoder": "resnet18", "guided_walk_stride": 2, "guided_walk_steps": 5, "guided_walk_level": 1}  # fmt: skip


@pytest.mark.parametrize("name", DIFNET_ONLY)
def test_every_difnet_only_option_is_refused_for_simdeeplab(name):
    assert TrainConfig(**{name: NOT_DEFAULT[name]}).model == "difnet"
    with pytest.raises(ValueError, match=f"^{name}=.*: options of DifNet"):
        TrainConfig(model="simdeeplab", **{name: NOT_DEFAULT[name]})
