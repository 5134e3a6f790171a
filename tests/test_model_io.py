"""Models as self-contained artifacts: save_pretrained / from_pretrained / load_model (offline,
never fetching ImageNet weights), the Hub path, in_channels, fine-tuning controls, ONNX export."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import difnet
from difnet.models import DifNet, Preprocessing, SimDeepLab
from difnet.models.diffusion_head import adaptive_max_pool_by_gather
from difnet.models.pretrained import adapt_first_conv
from difnet.models.serialization import CONFIG_NAME, WEIGHTS_NAME

onnx_missing = [
    m for m in ("onnx", "onnxscript", "onnxruntime") if not __import__("importlib").util.find_spec(m)
]
needs_onnx = pytest.mark.skipif(
    bool(onnx_missing), reason=f"the [onnx] extra is not installed ({onnx_missing})"
)


def tiny(cls=DifNet, **options):
    torch.manual_seed(0)
    return cls(depth=18, num_classes=3, **options).eval()


def images(batch=1, channels=3, height=40, width=48):
    return torch.randn(batch, channels, height, width, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("cls", [DifNet, SimDeepLab])
def test_save_pretrained_round_trip_offline_gives_the_same_logits(tmp_path, monkeypatch, cls):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = tiny(cls)
    folder = model.save_pretrained(tmp_path / "saved", class_names=["sky", "road", "car"],
                                   palette=[(0, 0, 0), (1, 2, 3), (4, 5, 6)])  # fmt: skip
    assert sorted(p.name for p in folder.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
    saved = json.loads((folder / CONFIG_NAME).read_text())
    assert saved["model"] == model.config and saved["model"]["name"] == cls.name
    assert saved["class_names"] == ["sky", "road", "car"] and saved["difnet_version"] == difnet.__version__
    assert saved["preprocessing"] == {"image_size": None, "mean": [0.485, 0.456, 0.406],
                                      "std": [0.229, 0.224, 0.225]}  # fmt: skip
    for loaded in (cls.from_pretrained(folder), difnet.load_model(folder)):
        assert type(loaded) is cls and not loaded.training
        assert loaded.class_names == ["sky", "road", "car"]
        assert loaded.palette == [(0, 0, 0), (1, 2, 3), (4, 5, 6)]
        assert loaded.preprocessing == Preprocessing()
        with torch.no_grad():
            torch.testing.assert_close(loaded(images()), model(images()), rtol=0, atol=0)


def test_saved_config_never_refetches_backbone_weights(tmp_path, monkeypatch):
    resnet = {k: v for k, v in DifNet(depth=18, num_classes=3).seed_backbone.state_dict().items()}
    torch.save(resnet, tmp_path / "resnet18.pth")
    model = DifNet(depth=18, num_classes=3, pretrained_backbone=tmp_path / "resnet18.pth")
    assert "pretrained_backbone" not in model.config
    model.save_pretrained(tmp_path / "saved")
    (tmp_path / "resnet18.pth").unlink()  # loading must not need it, nor the network

    def no_download(*args, **kwargs):
        raise AssertionError("loading a saved model fetched backbone weights")

    monkeypatch.setattr("difnet.models.pretrained.read_resnet_state_dict", no_download)
    assert isinstance(difnet.load_model(tmp_path / "saved"), DifNet)


def test_load_model_reads_training_checkpoints_and_refuses_other_classes(tmp_path):
    from difnet.training import TrainConfig, train

    config = TrainConfig(model="simdeeplab", depth=18, dataset="synthetic", num_classes=3,
                         image_size=(32, 32), crop_size=32, batch_size=2, epochs=1, max_steps_per_epoch=1,
                         workers=0, device="cpu", progress=False, val_split=None,
                         output_dir=str(tmp_path / "run"))  # fmt: skip
    train(config)
    assert type(difnet.load_model(tmp_path / "run" / "best.pt")) is SimDeepLab
    assert type(difnet.load_model(tmp_path / "run" / "best")) is SimDeepLab  # the exported folder
    with pytest.raises(TypeError, match="holds a SimDeepLab, not a DifNet"):
        DifNet.from_pretrained(tmp_path / "run" / "best")
    (tmp_path / "broken").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json is missing"):
        difnet.load_model(tmp_path / "broken")


def test_a_hub_repo_id_loads_through_the_hub_cache(tmp_path, monkeypatch):
    pytest.importorskip("huggingface_hub", reason="the [hub] extra is not installed")
    folder = tiny().save_pretrained(tmp_path / "cache")
    asked = []

    def snapshot_download(repo_id, revision=None, allow_patterns=None):
        asked.append((repo_id, allow_patterns))
        return str(folder)

    monkeypatch.setattr("huggingface_hub.snapshot_download", snapshot_download)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert isinstance(DifNet.from_pretrained("someone/difnet-18"), DifNet)
    assert asked == [("someone/difnet-18", [CONFIG_NAME, WEIGHTS_NAME])]


def test_first_convolution_adapts_to_other_channel_counts():
    weight = torch.randn(64, 3, 7, 7)
    torch.testing.assert_close(adapt_first_conv(weight, 1), weight.mean(1, keepdim=True))
    four = adapt_first_conv(weight, 4)
    assert four.shape == (64, 4, 7, 7)
    torch.testing.assert_close(four[:, 3], weight[:, 0] * 0.75)
    rgb = torch.randn(1, 3, 20, 20)  # an RGB image given twice: the RGB response
    torch.testing.assert_close(F.conv2d(rgb.repeat(1, 2, 1, 1), adapt_first_conv(weight, 6)),
                               F.conv2d(rgb, weight), rtol=1e-4, atol=1e-4)  # fmt: skip


@pytest.mark.parametrize("cls", [DifNet, SimDeepLab])
def test_in_channels_reach_the_model_and_its_input_check(cls):
    model = tiny(cls, in_channels=4)
    with torch.no_grad():
        assert model(images(channels=4)).shape == (1, 3, 40, 48)
    with pytest.raises(
        ValueError, match=r"images must have 4 channels in dim 1 \(got shape \(1, 3, 40, 48\)\)"
    ):
        model(images(channels=3))


def test_frozen_backbones_do_not_change_and_norm_eval_keeps_bn_statistics():
    model = tiny(DifNet).train().freeze_backbones().set_norm_eval()
    assert all(not p.requires_grad for b in model.backbones().values() for p in b.parameters())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(images(2)).square().mean().backward()
    optimizer.step()
    after = model.state_dict()
    for name in before:
        changed = not torch.equal(before[name], after[name])
        if name.startswith(("seed_backbone.", "similarity_backbone.")) or "running_" in name:
            assert not changed, name
    assert any(not torch.equal(before[n], after[n]) for n in before if n.startswith("classifier."))
    assert model.training and not any(
        m.training for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)
    )


def test_inference_modules_import_no_training_code():
    probe = ("import sys, difnet, difnet.predict, difnet.evaluation, difnet.visualize, difnet.export; "
             "print([m for m in sys.modules if m.startswith('difnet.training')])")  # fmt: skip
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True).stdout.strip() == "[]"  # fmt: skip


@pytest.mark.parametrize(("size", "grid"), [((97, 81), (13, 11)), ((49, 41), (13, 11)), ((17, 18), (9, 9)),
                                            ((64, 64), (8, 8)), ((5, 7), (7, 2))])  # fmt: skip
def test_exportable_pooling_equals_adaptive_max_pooling(size, grid):
    x = torch.randn(2, 5, *size)
    assert torch.equal(adaptive_max_pool_by_gather(x, grid), F.adaptive_max_pool2d(x, grid))


@needs_onnx
@pytest.mark.parametrize("size", [(97, 81), (321, 321)])
def test_difnet_exports_to_onnx_and_runs_to_eager_logits(tmp_path, size, capsys):
    import numpy as np
    import onnxruntime

    tiny().save_pretrained(tmp_path / "model")
    from difnet.cli import main

    height, width = size
    assert main(["export", "--checkpoint", str(tmp_path / "model"), "--output", str(tmp_path / "m.onnx"),
                 "--height", str(height), "--width", str(width)]) == 0  # fmt: skip
    report = capsys.readouterr().out
    difference = float(report.split("max |logit difference| ")[1].split()[0])
    largest = float(report.split("logits up to ")[1].split()[0])
    # float32 rounding: 1e-4 for logits of order 1; a fresh model on noise gives logits ~100
    assert difference <= 1e-4 * max(1.0, largest), report
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    with pytest.raises(Exception, match="Expected: " + str(height)):  # other sizes are refused
        session.run(None, {"images": np.zeros((1, 3, height + 3, width), np.float32)})


@needs_onnx
def test_difnet_refuses_a_dynamic_size_and_simdeeplab_accepts_one(tmp_path):
    from difnet.export import export_onnx

    with pytest.raises(ValueError, match="DifNet cannot be exported with a dynamic height and width"):
        export_onnx(tiny(), tmp_path / "d.onnx", dynamic_size=True)
    result = export_onnx(tiny(SimDeepLab), tmp_path / "s.onnx", height=64, width=48, dynamic_size=True)
    assert result.height is None
    assert result.max_abs_difference <= 1e-4 * max(1.0, result.max_abs_logit)
