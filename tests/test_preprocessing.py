"""Preprocessing travels with the model: a model trained at a size other than its data's is
evaluated, predicted and exported at that size and normalisation, from `.pt` and folder alike."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from data_fixtures import random_image, save_image, write_camvid_fixture

import difnet
from difnet.cli import main
from difnet.data import CAMVID_CLASSES, CAMVID_PALETTE
from difnet.models import Preprocessing
from difnet.training import TrainConfig, train

DATA_SIZE, TRAINED_SIZE = (36, 48), (24, 40)
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A Sim-DeepLab-18 trained one step on a 36x48 CamVid fixture resized to 24x40, with its own
    mean and std: the run folder and the data root."""
    root = tmp_path_factory.mktemp("pre")
    data = write_camvid_fixture(root, n_train=2, n_val=2, n_test=0, size=DATA_SIZE)
    train(TrainConfig(model="simdeeplab", depth=18, dataset="camvid", data_root=str(data),
                      image_size=TRAINED_SIZE, mean=MEAN, std=STD, crop_size=24, batch_size=2, epochs=1,
                      workers=0, device="cpu", progress=False, output_dir=str(root / "run")))  # fmt: skip
    return root / "run", data


@pytest.mark.parametrize("form", ["best.pt", "best"])
def test_the_saved_model_carries_its_preprocessing_and_classes(run, form):
    folder, _ = run
    model = difnet.load_model(folder / form)
    assert model.preprocessing == Preprocessing(TRAINED_SIZE, MEAN, STD)
    assert model.class_names == list(CAMVID_CLASSES)
    assert model.palette == [tuple(c) for c in CAMVID_PALETTE]


def test_evaluate_gives_the_same_pixels_and_number_from_the_checkpoint_and_the_folder(run, tmp_path, capsys):
    folder, data = run
    results = {}
    for form in ("best.pt", "best"):
        output = tmp_path / f"{form}.json"
        assert main(["evaluate", "--checkpoint", str(folder / form), "--dataset", "camvid", "--data-root",
                     str(data), "--output", str(output)]) == 0  # fmt: skip
        out = capsys.readouterr().out
        assert "evaluate: images resized to 24x40 (HxW), normalised by mean (0.5, 0.4, 0.3) and std " in out
        assert "(saved with the model); labels resized likewise" in out
        results[form] = json.loads(output.read_text())["metrics"]
    assert results["best.pt"] == results["best"]
    labelled = results["best"]["num_pixels"]
    assert labelled <= 2 * TRAINED_SIZE[0] * TRAINED_SIZE[1] and labelled > 2 * 20 * 40 * 0.5
    logged = torch.load(folder / "best.pt", weights_only=True)["history"][-1]["miou"]
    assert results["best"]["miou"] == pytest.approx(logged, abs=1e-12)  # training's own val protocol


def test_evaluate_at_the_labels_native_size_and_with_another_image_size(run, tmp_path, capsys):
    folder, data = run
    common = ["--checkpoint", str(folder / "best"), "--dataset", "camvid", "--data-root", str(data)]
    assert main(["evaluate", *common, "--native-size", "--output", str(tmp_path / "n.json")]) == 0
    out = capsys.readouterr().out
    assert "scored at the labels' own size, predictions resized back (--native-size)" in out
    native = json.loads((tmp_path / "n.json").read_text())["metrics"]["num_pixels"]
    assert native > 2 * TRAINED_SIZE[0] * TRAINED_SIZE[1]  # 36x48 labels, less the unlabelled row
    assert main(["evaluate", *common, "--image-size", "32", "32", "--output", str(tmp_path / "o.json")]) == 0
    out = capsys.readouterr().out
    assert "images resized to 32x32 (HxW)" in out and "(size given on the command line" in out


def test_predict_uses_the_saved_size_and_normalisation(run, tmp_path, capsys, monkeypatch):
    folder, _ = run
    image = save_image(tmp_path / "street.png", random_image(np.random.default_rng(0), DATA_SIZE))
    seen = []
    model = difnet.load_model(folder / "best.pt")
    original = type(model).forward

    def spy(self, images):
        seen.append((tuple(images.shape[-2:]), float(images.mean())))
        return original(self, images)

    monkeypatch.setattr(type(model), "forward", spy)
    assert main(["predict", "--checkpoint", str(folder / "best.pt"), "--input", str(image), "--output",
                 str(tmp_path / "masks")]) == 0  # fmt: skip
    assert "predict: images resized to 24x40 (HxW)" in capsys.readouterr().out
    ((size, mean),) = seen
    assert size == TRAINED_SIZE
    pixels = random_image(np.random.default_rng(0), DATA_SIZE) / 255
    expected = float(((pixels - np.array(MEAN)) / np.array(STD)).mean())
    assert mean == pytest.approx(expected, abs=0.05)  # normalised by the saved statistics
    from PIL import Image

    assert Image.open(tmp_path / "masks" / "street.png").size == DATA_SIZE[::-1]
