"""Fine-tuning a trained model on other classes: `from_pretrained(..., num_classes=K)`,
`difnet.load_model(..., num_classes=K)` and `difnet train --init-from`."""

from __future__ import annotations

import pytest
import torch

import difnet
from difnet.cli import main
from difnet.models import DifNet, SimDeepLab
from difnet.training import TrainConfig, train

ASPP = [f"classifier.branches.{i}" for i in range(4)]
CLASS_DEPENDENT = {"difnet": [*ASPP, "head.importance.0", "head.importance.2"], "simdeeplab": ASPP}
QUICK = {"depth": 18, "dataset": "synthetic", "image_size": (32, 32), "crop_size": 32, "batch_size": 2,
         "epochs": 1, "max_steps_per_epoch": 1, "workers": 0, "device": "cpu", "progress": False,
         "val_split": None}  # fmt: skip


@pytest.fixture(scope="module", params=["difnet", "simdeeplab"])
def trained(request, tmp_path_factory):
    """A model trained one step on 3 synthetic classes: its run folder and its model name."""
    folder = tmp_path_factory.mktemp(request.param)
    train(TrainConfig(model=request.param, num_classes=3, output_dir=str(folder), **QUICK))
    return folder, request.param


def loaders(name):
    cls = {"difnet": DifNet, "simdeeplab": SimDeepLab}[name]
    return [cls.from_pretrained, difnet.load_model]


@pytest.mark.parametrize("form", ["best.pt", "best"])
def test_from_pretrained_for_other_classes_reinitialises_exactly_the_class_layers(trained, form):
    folder, name = trained
    source = difnet.load_model(folder / form)
    for load in loaders(name):
        torch.manual_seed(0)
        model = load(folder / form, num_classes=5)
        assert model.num_classes == 5 and model.config["num_classes"] == 5
        assert list(model.fine_tune_report.reinitialized) == CLASS_DEPENDENT[name]
        assert model.fine_tune_report.source_classes == 3
        kept = source.state_dict()
        for key, value in model.state_dict().items():
            if key.rpartition(".")[0] in CLASS_DEPENDENT[name]:
                assert key not in kept or value.shape != kept[key].shape or not torch.equal(value, kept[key])
            else:
                assert torch.equal(value, kept[key]), key  # bit-identical
        with torch.no_grad():
            assert model(torch.randn(1, 3, 32, 32)).shape == (1, 5, 32, 32)
        assert model.class_names is None  # the source's names are for its 3 classes


def test_the_same_class_count_loads_everything(trained):
    folder, name = trained
    model = difnet.load_model(folder / "best.pt", num_classes=3)
    assert model.fine_tune_report is None and model.class_names is not None


def test_from_pretrained_logs_the_reinitialised_layers(trained, caplog):
    folder, name = trained
    with caplog.at_level("INFO", logger="difnet.models.finetune"):
        difnet.load_model(folder / "best", num_classes=4)
    assert "re-initialised " + ", ".join(CLASS_DEPENDENT[name]) in caplog.text


def test_train_init_from_starts_a_new_run_on_other_classes(trained, tmp_path, capsys):
    folder, name = trained
    argv = ["train", "--model", name, "--depth", "18", "--dataset", "synthetic", "--num-classes", "5",
            "--image-size", "32", "32", "--crop-size", "32", "--batch-size", "2", "--epochs", "1",
            "--max-steps-per-epoch", "1", "--workers", "0", "--device", "cpu", "--no-progress",
            "--val-split", "none", "--lr", "1e-12", "--momentum", "0", "--weight-decay", "0",
            "--init-from", str(folder / "best"), "--output-dir", str(tmp_path / "tuned")]  # fmt: skip
    assert main(argv) == 0
    tuned, source = difnet.load_model(tmp_path / "tuned" / "best.pt"), difnet.load_model(folder / "best")
    assert tuned.num_classes == 5 and len(tuned.class_names) == 5
    backbone = "backbone.conv1.weight" if name == "simdeeplab" else "similarity_backbone.conv1.weight"
    # one step at lr 1e-12 moves the weights by rounding at most: they came from the source
    torch.testing.assert_close(tuned.state_dict()[backbone], source.state_dict()[backbone])


def test_init_from_refuses_another_architecture(trained, tmp_path):
    folder, name = trained
    other = "simdeeplab" if name == "difnet" else "difnet"
    with pytest.raises(
        ValueError, match=r"cannot initialise from .*best: it holds another architecture \(name"
    ):
        train(TrainConfig(model=other, num_classes=5, init_from=str(folder / "best"),
                          output_dir=str(tmp_path / "x"), **QUICK))  # fmt: skip
