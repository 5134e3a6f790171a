"""The exported ONNX file is self-contained, carries its metadata and `difnet predict` runs it."""

from __future__ import annotations

import contextlib
import io
import json
import shutil

import numpy as np
import pytest
import torch
from data_fixtures import random_image, save_image
from PIL import Image

import difnet
from difnet.cli import main
from difnet.models import DifNet, Preprocessing, SimDeepLab

pytest.importorskip("onnxruntime", reason="the [onnx] extra is not installed")
pytest.importorskip("onnxscript", reason="the [onnx] extra is not installed")

SIZE = (32, 40)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A DifNet-18 saved with classes, palette and a trained size, exported by the CLI, then
    copied alone to another folder: (the copy, the saved model, the export's printed lines)."""
    root = tmp_path_factory.mktemp("onnx")
    torch.manual_seed(0)
    model = DifNet(depth=18, num_classes=3).eval()
    model.save_pretrained(root / "model", class_names=["sky", "road", "car"],
                          palette=[(0, 0, 0), (10, 20, 30), (200, 100, 50)],
                          preprocessing=Preprocessing(SIZE, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)))  # fmt: skip
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert (
            main(["export", "--checkpoint", str(root / "model"), "--output", str(root / "out" / "m.onnx")])
            == 0
        )
    assert sorted(p.name for p in (root / "out").iterdir()) == ["m.onnx"]  # no .onnx.data beside it
    (root / "deployed").mkdir()
    copy = shutil.copy(root / "out" / "m.onnx", root / "deployed" / "m.onnx")
    shutil.rmtree(root / "out")
    return copy, difnet.load_model(root / "model"), out.getvalue()


def test_the_file_is_self_contained_and_carries_the_metadata(exported):
    import onnx

    path, _, printed = exported
    assert "one self-contained file" in printed and "export: images resized to 32x40 (HxW)" in printed
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert props["difnet_version"] == difnet.__version__
    assert props["input_size"] == "32x40" and json.loads(props["image_size"]) == [32, 40]
    assert json.loads(props["mean"]) == [0.5] * 3 and json.loads(props["std"]) == [0.25] * 3
    assert json.loads(props["class_names"]) == ["sky", "road", "car"]
    assert json.loads(props["palette"]) == [[0, 0, 0], [10, 20, 30], [200, 100, 50]]
    assert json.loads(props["model"])["name"] == "difnet"


def test_predict_runs_the_onnx_file_like_the_model(exported, tmp_path, capsys):
    path, model, _ = exported
    pixels = random_image(np.random.default_rng(0), (45, 61))
    image = save_image(tmp_path / "street.png", pixels)
    assert (
        main(
            ["predict", "--checkpoint", str(path), "--input", str(image), "--output", str(tmp_path / "onnx")]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert out.count("resized to 32x40") == 1 and "the ONNX file's fixed input size" in out
    assert "masks resized back to each image's size" in out
    assert main(["predict", "--checkpoint", str(model_folder(path)), "--input", str(image), "--output",
                 str(tmp_path / "torch")]) == 0  # fmt: skip
    onnx_mask = np.asarray(Image.open(tmp_path / "onnx" / "street.png"))
    torch_mask = np.asarray(Image.open(tmp_path / "torch" / "street.png"))
    assert onnx_mask.shape == (45, 61)
    assert (onnx_mask == torch_mask).mean() > 0.99  # float32 rounding may flip a tie
    assert Image.open(tmp_path / "onnx" / "street.png").getpalette()[3:6] == [10, 20, 30]


def test_the_onnx_file_computes_the_models_logits(exported):
    """An untrained DifNet's argmax is nearly constant, so equal masks say little: compare logits."""
    from difnet.export import OnnxSegmenter

    path, model, _ = exported
    images = torch.randn(2, 3, *SIZE, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = model.eval()(images)
    difference = (OnnxSegmenter(path)(images) - expected).abs().max()
    assert expected.std() > 0.1 and difference <= 1e-4 * max(1.0, float(expected.abs().max()))


def test_exporting_another_size_than_the_trained_one_warns(tmp_path):
    from difnet.export import export_onnx

    model = SimDeepLab(depth=18, num_classes=3).eval()
    model.preprocessing = Preprocessing(SIZE)
    with pytest.warns(UserWarning, match="trained on images resized to 32x40"):
        result = export_onnx(model, tmp_path / "m.onnx", height=48, width=48, verify=False)
    assert (result.height, result.width) == (48, 48)


def test_an_export_that_differs_from_the_model_beyond_the_tolerance_fails(tmp_path, monkeypatch, capsys):
    import difnet.export

    SimDeepLab(depth=18, num_classes=3).save_pretrained(tmp_path / "model")
    monkeypatch.setattr(difnet.export, "_verify", lambda *_: (0.5, 3.0))  # as if a graph op were wrong
    output = tmp_path / "m.onnx"
    assert main(["export", "--checkpoint", str(tmp_path / "model"), "--output", str(output)]) == 1
    error = capsys.readouterr().err
    assert "difnet: export failed:" in error and "differ from PyTorch's by up to 0.5" in error
    assert "tolerance 0.001" in error


def test_example_inputs_are_built_on_the_models_device():
    from difnet.export import example_images

    model = SimDeepLab(depth=18, num_classes=3).to("meta")  # stands in for a CUDA model here
    images = example_images(model, 2, 33, 35, seed=0)
    assert images.device.type == "meta" and images.shape == (2, 3, 33, 35)


def model_folder(onnx_path):
    return onnx_path.parents[1] / "model"


def test_weights_over_the_protobuf_limit_go_beside_the_file(tmp_path, monkeypatch):
    from difnet.export import export_onnx

    monkeypatch.setattr("difnet.export.PROTOBUF_LIMIT", 1000)
    torch.manual_seed(0)
    model = SimDeepLab(depth=18, num_classes=3).eval()
    result = export_onnx(model, tmp_path / "m.onnx", height=32, width=32, verify=False)
    assert result.external_data == tmp_path / "m.onnx.data" and result.external_data.is_file()


def test_a_usage_error_prints_the_commands_usage(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["export", "--checkpoint", "x", "--output", "y.onnx", "--frobnicate"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: difnet export ") and "unrecognized arguments: --frobnicate" in err
