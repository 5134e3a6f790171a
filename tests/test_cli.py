"""The `difnet` command line: help pages, argument errors (exit 2, no traceback), and
`evaluate`/`predict`/`visualize` end to end on a checkpoint of an untrained DifNet-18."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from difnet.cli import main
from difnet.data import generic_palette
from difnet.models import DifNet
from difnet.training import TrainConfig
from difnet.training.checkpoint import load_model, save_model

NUM_CLASSES = 3
COMMANDS = ("train", "evaluate", "predict", "visualize", "demo")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A checkpoint of an untrained DifNet-18 with 3 classes, labelled as a synthetic-data run."""
    torch.manual_seed(0)
    model = DifNet(depth=18, num_classes=NUM_CLASSES)
    config = TrainConfig(model="difnet", depth=18, dataset="synthetic")
    path = tmp_path_factory.mktemp("run") / "best.pt"
    save_model(
        path,
        model,
        config,
        class_names=["background", "disk", "square"],
        palette=generic_palette(NUM_CLASSES),
    )
    return path


@pytest.fixture
def image_file(tmp_path):
    path = tmp_path / "scene.png"
    pixels = np.random.default_rng(0).integers(0, 256, (45, 61, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def run(capsys, *argv: str) -> tuple[int, str, str]:
    """`main(argv)`'s exit status (also from a SystemExit), stdout and stderr."""
    try:
        status = main(list(argv))
    except SystemExit as exit_:
        status = exit_.code
    out, err = capsys.readouterr()
    return status, out, err


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_examples(capsys, command):
    status, out, _ = run(capsys, command, "--help")
    assert status == 0
    assert (
        f"usage: difnet {command}" in out
        and "examples:" in out
        and f"difnet {command}" in out.split("examples:")[1]
    )


def test_top_level_help_lists_the_commands(capsys):
    status, out, _ = run(capsys, "--help")
    assert status == 0 and all(command in out for command in COMMANDS)


@pytest.mark.parametrize(
    "argv, named",
    [
        ((), "COMMAND"),
        (("predict", "--input", "x.png", "--output", "out"), "--checkpoint"),
        (
            ("visualize", "--checkpoint", "c.pt", "--image", "x.png", "--output", "o", "--pixels", "3"),
            "--pixels",
        ),
        (("evaluate", "--checkpoint", "c.pt", "--scales", "0"), "--scales"),
        (("demo", "--steps", "many"), "--steps"),
        (("demo", "--steps", "0", "--quick"), "--steps"),
        (("demo", "--size", "8"), "--size"),
    ],
)
def test_bad_arguments_exit_2_naming_the_argument(capsys, argv, named):
    status, _, err = run(capsys, *argv)
    assert status == 2
    assert named in err and "Traceback" not in err


def test_library_errors_become_one_line_messages(capsys, tmp_path, image_file, checkpoint):
    status, _, err = run(
        capsys,
        "predict",
        "--checkpoint",
        str(tmp_path / "missing.pt"),
        "--input",
        str(image_file),
        "--output",
        str(tmp_path / "o"),
    )
    assert status == 2 and err.startswith("difnet: error:") and "missing.pt" in err
    status, _, err = run(
        capsys,
        "predict",
        "--checkpoint",
        str(checkpoint),
        "--input",
        str(tmp_path / "nothing-here"),
        "--output",
        str(tmp_path / "o"),
    )
    assert status == 2 and "nothing-here" in err and "Traceback" not in err


def test_the_console_entry_point_runs_as_a_process():
    done = subprocess.run([sys.executable, "-m", "difnet.cli", "predict"], capture_output=True, text=True)
    assert done.returncode == 2 and "--checkpoint" in done.stderr and "Traceback" not in done.stderr


def test_predict_writes_masks_and_refuses_to_overwrite(capsys, tmp_path, image_file, checkpoint):
    argv = (
        "predict",
        "--checkpoint",
        str(checkpoint),
        "--input",
        str(image_file),
        "--output",
        str(tmp_path / "masks"),
        "--overlay",
        "--device",
        "cpu",
    )
    status, out, _ = run(capsys, *argv)
    assert status == 0 and "wrote 2 file(s)" in out
    with Image.open(tmp_path / "masks" / "scene.png") as mask:
        assert mask.mode == "P" and mask.size == (61, 45) and np.asarray(mask).max() < NUM_CLASSES
        assert mask.getpalette()[:9] == [v for c in generic_palette(NUM_CLASSES) for v in c]
    status, _, err = run(capsys, *argv)
    assert status == 2 and "--overwrite" in err
    assert run(capsys, *argv, "--overwrite")[0] == 0


def test_visualize_writes_the_figures_and_prints_the_walk_weights(capsys, tmp_path, image_file, checkpoint):
    label = np.zeros((45, 61), dtype=np.uint8)
    label[10:30, 20:50] = 2
    label[0] = 255  # ignored
    Image.fromarray(label).save(tmp_path / "label.png")
    stray = label.copy()
    stray[1] = 11  # outside the 3 classes: refused, as the datasets refuse it
    Image.fromarray(stray).save(tmp_path / "stray.png")

    def visualize(label_name: str, output: str, *extra: str) -> tuple[int, str, str]:
        return run(capsys, "visualize", "--checkpoint", str(checkpoint), "--image", str(image_file),
                   "--label", str(tmp_path / label_name), "--output", str(tmp_path / output), *extra)  # fmt: skip

    status, _, err = visualize("stray.png", "stray")
    assert status == 2 and "holds values [11] outside [0, 3)" in err
    status, out, _ = visualize("label.png", "figs", "--pixels", "20,30", "5,5", "--device", "cpu")
    assert status == 0 and "| mu | 0.500 |" in out
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == [
        "fig2_maps.png",
        "fig3_transitions.png",
        "fig4_walks.png",
        "table3_walk_parameters.png",
    ]


def test_evaluate_prints_the_table_and_writes_json(capsys, tmp_path, checkpoint):
    output = tmp_path / "metrics.json"
    status, out, _ = run(
        capsys,
        "evaluate",
        "--checkpoint",
        str(checkpoint),
        "--split",
        "test",
        "--output",
        str(output),
        "--device",
        "cpu",
    )
    assert status == 0 and "mIoU" in out
    metrics = json.loads(output.read_text())
    assert 0 <= metrics["metrics"]["miou"] <= 1
    model, _ = load_model(checkpoint)
    assert model.num_classes == NUM_CLASSES


def test_evaluate_diagnose_prints_the_stages_and_stores_them(capsys, tmp_path, checkpoint):
    output = tmp_path / "metrics.json"
    status, out, _err = run(capsys, "evaluate", "--checkpoint", str(checkpoint), "--split", "test",
                         "--device", "cpu", "--diagnose", "orange disk", "--output", str(output))  # fmt: skip
    assert status == 0, _err
    assert "oracle" in out and "In-class transition mass" in out
    written = json.loads(output.read_text())
    assert written["diagnostics"]["small_classes"] == ["orange disk"]
    assert written["diagnostics"]["per_class_iou"]["walk 5"] == written["metrics"]["per_class_iou"]
