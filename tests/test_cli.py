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
        (("demo", "--walk-steps", "0"), "--walk-steps"),
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
                         "--device", "cpu", "--limit", "4", "--diagnose", "orange disk", "--output", str(output))  # fmt: skip
    assert status == 0, _err
    assert "oracle" in out and "In-class share" in out and "Walk gain" in out
    written = json.loads(output.read_text())
    assert written["diagnostics"]["small_classes"] == ["orange disk"]
    assert written["diagnostics"]["per_class_iou"]["walk 5"] == written["metrics"]["per_class_iou"]


@pytest.mark.parametrize(
    "options",
    [["--native-size"], ["--flip"], ["--scales", "0.75", "1"], ["--mode", "slide"], ["--bilateral-walk"]],
)
def test_evaluate_diagnose_refuses_a_protocol_the_diagnostics_do_not_follow(capsys, checkpoint, options):
    status, _out, err = run(capsys, "evaluate", "--checkpoint", str(checkpoint), "--split", "test",
                            "--device", "cpu", "--diagnose", *options)  # fmt: skip
    assert status != 0 and f"--diagnose does not go with {options[0]}" in err


# --- the rough edges of issue 17 -----------------------------------------------------------------


def help_entry(help_text: str, option: str) -> str:
    """The help entry of `option`: its line and the indented continuation lines after it."""
    lines = help_text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.lstrip().startswith(option))
    entry = [lines[start]]
    for line in lines[start + 1 :]:
        if not line.startswith(" " * 10) or line.lstrip().startswith("-"):
            break
        entry.append(line)
    return " ".join(line.strip() for line in entry)


def test_help_shows_each_default_once_and_none_for_flags(capsys):
    _, train_help, _ = run(capsys, "train", "--help")
    for flag in ("--no-aspp", "--no-flip", "--no-progress"):
        assert "default" not in help_entry(train_help, flag), help_entry(train_help, flag)
    assert help_entry(train_help, "--mean").count("default") == 1
    assert "(default: 50)" in help_entry(train_help, "--depth")
    _, evaluate_help, _ = run(capsys, "evaluate", "--help")
    assert "--no-progress" in evaluate_help and "--limit N" in evaluate_help
    assert help_entry(evaluate_help, "--split").count("default") == 1


def test_progress_bars_are_thinned_when_stderr_is_not_a_terminal(capsys):
    from difnet.progress import LOG_INTERVAL_S, progress_bar

    bar = progress_bar(range(3), enabled=True)  # capsys: stderr is not a terminal
    assert bar.mininterval == LOG_INTERVAL_S >= 30
    bar.close()


@pytest.fixture(scope="module")
def camvid_checkpoint(tmp_path_factory):
    """An untrained DifNet-18 for CamVid's 11 classes, its recipe naming the camvid dataset."""
    from difnet.data import CAMVID_CLASSES, CAMVID_PALETTE

    torch.manual_seed(0)
    model = DifNet(depth=18, num_classes=len(CAMVID_CLASSES))
    config = TrainConfig(model="difnet", depth=18, dataset="camvid", data_root="camvid")
    path = tmp_path_factory.mktemp("camvid-run") / "best.pt"
    return save_model(path, model, config, class_names=list(CAMVID_CLASSES), palette=list(CAMVID_PALETTE))


def test_visualize_reads_a_camvid_label_as_camvid_does(capsys, tmp_path, image_file, camvid_checkpoint):
    label = np.full((45, 61), 3, dtype=np.uint8)
    label[:5] = 11  # CamVid's void value: ignored, as the dataset reads it
    Image.fromarray(label).save(tmp_path / "annot.png")
    status, _, err = run(capsys, "visualize", "--checkpoint", str(camvid_checkpoint), "--image",
                         str(image_file), "--label", str(tmp_path / "annot.png"), "--output",
                         str(tmp_path / "figs"), "--pixels", "20,30", "--device", "cpu")  # fmt: skip
    assert status == 0, err
    assert (tmp_path / "figs" / "fig2_maps.png").is_file()


def test_predict_writes_every_readable_image_and_lists_the_failures(capsys, tmp_path, checkpoint):
    inputs = tmp_path / "photos"
    inputs.mkdir()
    for name, seed in (("a.png", 1), ("c.jpg", 2)):
        pixels = np.random.default_rng(seed).integers(0, 256, (24, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(inputs / name)
    (inputs / "b.png").write_text("a text file named .png")
    status, out, err = run(capsys, "predict", "--checkpoint", str(checkpoint), "--input", str(inputs),
                           "--output", str(tmp_path / "masks"), "--device", "cpu", "--no-progress")  # fmt: skip
    assert status == 1 and "wrote 2 file(s)" in out
    assert sorted(p.name for p in (tmp_path / "masks").iterdir()) == ["a.png", "c.png"]
    assert "b.png: cannot read image" in err and "1 of 3 image(s) could not be predicted" in err
    status, out, _ = run(capsys, "predict", "--checkpoint", str(checkpoint), "--input",
                         str(inputs / "a.png"), str(inputs / "c.jpg"), "--output", str(tmp_path / "two"),
                         "--device", "cpu", "--no-progress")  # fmt: skip
    assert status == 0 and sorted(p.name for p in (tmp_path / "two").iterdir()) == ["a.png", "c.png"]


def test_model_file_errors_say_what_the_file_is(capsys, tmp_path):
    from difnet.models import SimDeepLab
    from difnet.models.serialization import save_pretrained

    folder = save_pretrained(SimDeepLab(depth=18, num_classes=NUM_CLASSES), tmp_path / "best")
    head = tmp_path / "x.pt"
    head.write_bytes((folder / "model.safetensors").read_bytes()[:1024])
    status, _, err = run(capsys, "evaluate", "--checkpoint", str(head))
    assert status == 2 and len(err.splitlines()) == 1
    assert "x.pt is not a readable torch file" in err and "pickled" not in err and "PyTorch 2.6" not in err
    status, _, err = run(capsys, "evaluate", "--checkpoint", str(folder / "model.safetensors"))
    assert status == 2 and f"load the save_pretrained folder that holds it ({folder}" in err
    assert "--pretrained-backbone" not in err


def rgba_folder(root):
    """A folder-dataset split `root/val` of three 24x24 images: two RGBA and one grey+alpha."""
    rng = np.random.default_rng(0)
    for name, mode in (("a", "RGBA"), ("b", "RGBA"), ("c", "LA")):
        pixels = rng.integers(0, 256, (24, 24, len(mode)), dtype=np.uint8)
        (root / "val" / "images").mkdir(parents=True, exist_ok=True)
        (root / "val" / "masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels, mode).save(root / "val" / "images" / f"{name}.png")
        Image.fromarray(np.zeros((24, 24), np.uint8)).save(root / "val" / "masks" / f"{name}.png")
    return root


def test_images_with_alpha_are_converted_with_one_warning_per_dataset(capsys, tmp_path, checkpoint):
    root = rgba_folder(tmp_path / "data")
    status, out, err = run(capsys, "evaluate", "--checkpoint", str(checkpoint), "--dataset", "folder",
                           "--data-root", str(root), "--split", "val", "--device", "cpu",
                           "--no-progress")  # fmt: skip
    assert status == 0 and "mIoU" in out
    warnings = [line for line in err.splitlines() if line.startswith("difnet: warning:")]
    assert len(warnings) == 1, err
    assert "a.png is a mode-'RGBA' image, read as RGB, its alpha band dropped" in warnings[0]
    assert "--in-channels 4" in warnings[0]


def test_evaluate_limit_on_a_root_holding_only_the_evaluated_split(capsys, tmp_path, camvid_checkpoint):
    from data_fixtures import write_camvid_fixture

    root = write_camvid_fixture(tmp_path, n_train=0, n_val=0, n_test=3, size=(24, 32))
    output = tmp_path / "metrics.json"
    status, _, err = run(capsys, "evaluate", "--checkpoint", str(camvid_checkpoint), "--data-root",
                         str(root), "--split", "test", "--limit", "2", "--output", str(output),
                         "--device", "cpu", "--no-progress")  # fmt: skip
    assert status == 0, err
    labelled = sum(
        int((np.asarray(Image.open(p)) != 11).sum()) for p in sorted((root / "testannot").iterdir())[:2]
    )
    assert json.loads(output.read_text())["metrics"]["num_pixels"] == labelled
    assert err == ""  # no progress bar with --no-progress


def train_args(tmp_path, *extra: str) -> list[str]:
    return ["train", "--model", "simdeeplab", "--depth", "18", "--dataset", "synthetic", "--num-classes",
            "3", "--image-size", "32", "32", "--scale-range", "1", "1", "--batch-size", "1",
            "--epochs", "1", "--max-steps-per-epoch", "1", "--val-split", "none", "--device", "cpu",
            "--workers", "0", "--no-progress", "--output-dir", str(tmp_path / "run"), *extra]  # fmt: skip


def test_a_crop_larger_than_the_images_is_warned_about_and_refused_beyond_4x(capsys, tmp_path):
    status, _, err = run(capsys, *train_args(tmp_path, "--crop-size", "200"))
    assert status == 2 and "the crop 200x200 is 6.2 times the first training image (32x32" in err
    assert "--crop-size 32x32 or smaller" in err and not (tmp_path / "run").exists()
    status, _, err = run(capsys, *train_args(tmp_path, "--crop-size", "48"))
    assert status == 0 and "difnet: warning: the crop 48x48 is 1.5 times" in err


@pytest.mark.parametrize("bad", ["crop", "unreadable"])
def test_bad_input_is_found_before_anything_is_written(capsys, tmp_path, bad):
    if bad == "crop":
        argv = train_args(tmp_path, "--crop-size", "8")
    else:
        images, masks = tmp_path / "data" / "train" / "images", tmp_path / "data" / "train" / "masks"
        images.mkdir(parents=True), masks.mkdir(parents=True)
        (images / "a.png").write_text("a text file named .png")
        Image.fromarray(np.zeros((20, 20), np.uint8)).save(masks / "a.png")
        argv = train_args(tmp_path, "--crop-size", "16")
        argv[argv.index("synthetic")] = "folder"
        argv += ["--data-root", str(tmp_path / "data")]
    status, _, err = run(capsys, *argv)
    assert status == 2 and ("crop_size (8, 8)" in err if bad == "crop" else "cannot read image" in err)
    assert not (tmp_path / "run").exists()


def test_evaluate_with_a_bilateral_walk_scores_the_walked_probabilities(capsys, tmp_path, checkpoint):
    from difnet.evaluation import evaluate
    from difnet.refinement import BilateralWalk, RefinedModel

    output = tmp_path / "metrics.json"
    status, out, err = run(capsys, "evaluate", "--checkpoint", str(checkpoint), "--split", "test", "--device",
                           "cpu", "--limit", "3", "--bilateral-walk", "steps=2,mu=0.5", "--output", str(output))  # fmt: skip
    assert status == 0, err
    model, metadata = load_model(checkpoint)
    config = TrainConfig.from_dict({**metadata["config"], "num_classes": model.num_classes})
    dataset = config.build_dataset("test", config.eval_transform())
    walked = evaluate(RefinedModel(model, BilateralWalk(steps=2, mu=0.5)), dataset, limit=3, progress=False)
    assert json.loads(output.read_text())["metrics"]["miou"] == pytest.approx(walked.metrics.miou)


@pytest.mark.parametrize(
    ("value", "message"),
    [("steps=two", "steps takes a int, got 'two'"), ("sharpness=2", "KEY one of"), ("mu=1", "mu must lie")],
)
def test_bilateral_walk_option_names_a_bad_field(capsys, checkpoint, value, message):
    status, _out, err = run(capsys, "evaluate", "--checkpoint", str(checkpoint), "--bilateral-walk", value)
    assert status == 2 and message in err


def test_evaluate_with_a_dense_crf_scores_its_marginals(capsys, tmp_path, checkpoint):
    pytest.importorskip("pydensecrf", reason='the dense CRF needs pydensecrf2 (pip install "difnet[crf]")')
    from difnet.evaluation import evaluate
    from difnet.refinement import DenseCRF, RefinedModel

    output = tmp_path / "metrics.json"
    status, out, err = run(capsys, "evaluate", "--checkpoint", str(checkpoint), "--split", "test", "--device",
                           "cpu", "--limit", "2", "--dense-crf", "iterations=2,colour_sigma=5", "--output", str(output))  # fmt: skip
    assert status == 0, err
    model, metadata = load_model(checkpoint)
    config = TrainConfig.from_dict({**metadata["config"], "num_classes": model.num_classes})
    dataset = config.build_dataset("test", config.eval_transform())
    refined = evaluate(
        RefinedModel(model, DenseCRF(iterations=2, colour_sigma=5.0)), dataset, limit=2, progress=False
    )
    assert json.loads(output.read_text())["metrics"]["miou"] == pytest.approx(refined.metrics.miou)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--dense-crf", "iterations=0"], "iterations must be a positive integer"),
        (["--dense-crf", "mean=0.5"], "KEY one of"),
        (["--dense-crf", "--bilateral-walk"], "not allowed with argument"),
    ],
)
def test_the_dense_crf_option_names_a_bad_field_and_excludes_the_walk(capsys, checkpoint, argv, message):
    status, _out, err = run(capsys, "evaluate", "--checkpoint", str(checkpoint), *argv)
    assert status == 2 and message in err


@pytest.mark.parametrize("flag", ["--encoder", "--similarity-encoder"])
def test_train_refuses_an_unknown_encoder_naming_the_registered_ones(capsys, tmp_path, flag):
    status, _, err = run(capsys, *train_args(tmp_path, "--model", "difnet", flag, "vgg16"))
    option = flag.removeprefix("--").replace("-", "_")
    assert status == 2 and f"difnet: error: {option} must be one of ['resnet101', " in err
    assert "'small_cnn'" in err and "(got 'vgg16')" in err and "'tu-<timm model name>'" in err
    assert not (tmp_path / "run").exists()


def test_train_takes_a_timm_encoder_by_name(capsys, tmp_path):
    pytest.importorskip("timm", reason='timm is not installed (pip install "difnet[timm]")')
    from difnet.models import load_model

    no_depth = [arg for arg in train_args(tmp_path) if arg not in ("--depth", "18")]
    status, _, err = run(capsys, *no_depth, "--crop-size", "32", "--encoder", "tu-mobilenetv3_small_100")
    assert status == 0, err
    assert load_model(tmp_path / "run" / "last.pt").backbone_encoders() == {
        "backbone": "tu-mobilenetv3_small_100"
    }


def test_train_takes_encoders_by_name_and_refuses_a_depth_that_contradicts_them(capsys, tmp_path):
    from difnet.models import load_model

    no_depth = [arg for arg in train_args(tmp_path) if arg not in ("--depth", "18")]
    args = [*no_depth, "--crop-size", "32", "--model", "difnet", "--encoder", "small_cnn",
            "--similarity-encoder", "resnet18_os16"]  # fmt: skip
    status, _, err = run(capsys, *args)
    assert status == 0, err
    model = load_model(tmp_path / "run" / "last.pt")
    assert model.backbone_encoders() == {"seed": "small_cnn", "similarity": "resnet18_os16"}
    stored = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["config"]
    assert (stored["encoder"], stored["depth"]) == ("small_cnn", None)
    status, _, err = run(
        capsys, *train_args(tmp_path, "--crop-size", "32", "--encoder", "resnet34", "--overwrite")
    )
    assert (
        status == 2
        and "depth 18 is shorthand for encoder 'resnet18', which contradicts encoder 'resnet34'" in err
    )
    status, _, err = run(
        capsys, *train_args(tmp_path, "--crop-size", "32", "--similarity-encoder", "resnet18", "--overwrite")
    )
    assert status == 2 and "similarity_encoder='resnet18': options of DifNet" in err
