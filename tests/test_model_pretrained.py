"""Loading torchvision ResNet checkpoints into the backbones, and refusing the wrong ones."""

from __future__ import annotations

import logging
import urllib.error
from pathlib import Path

import pytest
import torch

from difnet.models import DifNet, SimDeepLab
from difnet.models.pretrained import resnet_depth

WEIGHTS_DIR = Path(__file__).resolve().parents[2] / "shared" / "weights"
LAYOUTS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
}


def torchvision_state_dict(depth: int, *, batches_tracked: bool = True) -> dict[str, torch.Tensor]:
    """Random tensors under the key names and shapes of torchvision's `resnet{depth}`, with fc."""
    kind, blocks = LAYOUTS[depth]
    expansion = 4 if kind == "bottleneck" else 1
    generator = torch.Generator().manual_seed(depth)
    state: dict[str, torch.Tensor] = {}

    def conv(name, out_c, in_c, k):
        state[f"{name}.weight"] = torch.randn(out_c, in_c, k, k, generator=generator)

    def bn(name, c):
        state[f"{name}.weight"] = torch.rand(c, generator=generator)
        state[f"{name}.bias"] = torch.randn(c, generator=generator)
        state[f"{name}.running_mean"] = torch.randn(c, generator=generator)
        state[f"{name}.running_var"] = torch.rand(c, generator=generator) + 0.5
        if batches_tracked:
            state[f"{name}.num_batches_tracked"] = torch.tensor(0)

    conv("conv1", 64, 3, 7)
    bn("bn1", 64)
    in_c = 64
    for stage, count in enumerate(blocks, start=1):
        width = 64 * 2 ** (stage - 1)
        for index in range(count):
            prefix = f"layer{stage}.{index}"
            if kind == "basic":
                conv(f"{prefix}.conv1", width, in_c, 3), bn(f"{prefix}.bn1", width)
                conv(f"{prefix}.conv2", width, width, 3), bn(f"{prefix}.bn2", width)
            else:
                conv(f"{prefix}.conv1", width, in_c, 1), bn(f"{prefix}.bn1", width)
                conv(f"{prefix}.conv2", width, width, 3), bn(f"{prefix}.bn2", width)
                conv(f"{prefix}.conv3", width * 4, width, 1), bn(f"{prefix}.bn3", width * 4)
            if index == 0 and (stage > 1 or in_c != width * expansion):
                conv(f"{prefix}.downsample.0", width * expansion, in_c, 1)
                bn(f"{prefix}.downsample.1", width * expansion)
            in_c = width * expansion
    state["fc.weight"] = torch.randn(1000, in_c, generator=generator)
    state["fc.bias"] = torch.randn(1000, generator=generator)
    return state


@pytest.fixture
def resnet18_file(tmp_path) -> Path:
    path = tmp_path / "resnet18-f37072fd.pth"
    torch.save(torchvision_state_dict(18), path)
    return path


def test_depth_is_read_from_the_key_layout():
    assert [resnet_depth(torchvision_state_dict(d)) for d in (18, 34, 50)] == [18, 34, 50]
    assert resnet_depth({"conv1.weight": torch.zeros(1)}) is None


@pytest.mark.parametrize("batches_tracked", [True, False])
def test_torchvision_checkpoint_fills_both_backbones_leaving_only_fc(tmp_path, caplog, batches_tracked):
    state = torchvision_state_dict(18, batches_tracked=batches_tracked)
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    with caplog.at_level(logging.INFO, logger="difnet.models.pretrained"):
        model = DifNet(depth=18, num_classes=3, pretrained_backbone=path)
    assert set(model.backbone_load_reports) == {"seed", "similarity"}
    for report in model.backbone_load_reports.values():
        assert report.missing_keys == ()
        assert report.unexpected_keys == ("fc.weight", "fc.bias")
    for backbone in (model.seed_backbone, model.similarity_backbone):
        torch.testing.assert_close(backbone.layer3[1].conv2.weight, state["layer3.1.conv2.weight"])
        torch.testing.assert_close(backbone.bn1.running_var, state["bn1.running_var"])
    assert "fc.weight" in caplog.text and str(path) in caplog.text


def test_simdeeplab_loads_the_same_checkpoint(resnet18_file):
    model = SimDeepLab(depth=18, num_classes=3, pretrained_backbone=str(resnet18_file))
    assert model.backbone_load_reports["backbone"].unexpected_keys == ("fc.weight", "fc.bias")
    state = torch.load(resnet18_file, weights_only=True)
    torch.testing.assert_close(model.backbone.layer4[1].bn2.weight, state["layer4.1.bn2.weight"])


def test_resnets_at_output_stride_16_and_32_take_the_same_checkpoint(resnet18_file):
    state = torch.load(resnet18_file, weights_only=True)
    model = DifNet(encoder="resnet18_os16", similarity_encoder="resnet18_os32", num_classes=3,
                   pretrained_backbone=resnet18_file)  # fmt: skip
    assert set(model.backbone_load_reports) == {"seed", "similarity"}
    for backbone in (model.seed_backbone, model.similarity_backbone):
        torch.testing.assert_close(backbone.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])


def test_an_encoder_without_imagenet_weights_is_refused(resnet18_file):
    message = (r"pretrained_backbone='.*resnet18-f37072fd\.pth' loads torchvision's ImageNet ResNet "
               r"weights, which the similarity encoder 'small_cnn' cannot take \(only the resnet\* "
               r"encoders do\); build it without pretrained_backbone")  # fmt: skip
    with pytest.raises(ValueError, match=message):
        DifNet(encoder="resnet18", similarity_encoder="small_cnn", pretrained_backbone=resnet18_file)


def test_missing_backbone_keys_are_reported(tmp_path, caplog):
    state = torchvision_state_dict(18)
    del state["layer2.0.conv1.weight"]
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    with caplog.at_level(logging.WARNING, logger="difnet.models.pretrained"):
        model = SimDeepLab(depth=18, pretrained_backbone=path)
    assert model.backbone_load_reports["backbone"].missing_keys == ("layer2.0.conv1.weight",)
    assert "layer2.0.conv1.weight" in caplog.text


@pytest.mark.parametrize("file_depth, model_depth", [(34, 18), (50, 34), (18, 50)])
def test_a_checkpoint_of_another_depth_is_refused(tmp_path, file_depth, model_depth):
    path = tmp_path / f"resnet{file_depth}.pth"
    torch.save(torchvision_state_dict(file_depth), path)
    message = rf"holds a ResNet-{file_depth} checkpoint but the model's backbone is ResNet-{model_depth}"
    with pytest.raises(ValueError, match=message):
        SimDeepLab(depth=model_depth, pretrained_backbone=path)


def test_wrong_shapes_are_refused(tmp_path):
    state = torchvision_state_dict(18)
    state["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    path = tmp_path / "odd.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"layer1\.0\.conv1\.weight: checkpoint \(64, 64, 1, 1\)"):
        SimDeepLab(depth=18, pretrained_backbone=path)


def test_missing_file_is_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        DifNet(depth=18, pretrained_backbone=tmp_path / "nope.pth")


class Pickled:
    """Any class: a checkpoint holding it is pickled code that weights_only refuses."""


@pytest.mark.parametrize(
    "payload, problem",
    [
        ([torch.zeros(3)], "does not hold a state dict"),
        ({"conv1.weight": torch.zeros(3)}, "not a torchvision ResNet state dict"),
        ({"model": Pickled()}, "not a loadable weights-only checkpoint"),
    ],
)
def test_files_that_are_not_resnet_state_dicts_are_refused(tmp_path, payload, problem):
    path = tmp_path / "bad.pth"
    torch.save(payload, path)
    with pytest.raises(ValueError, match=problem):
        SimDeepLab(depth=18, pretrained_backbone=path)


def test_imagenet_offline_explains_how_to_pass_a_local_file(monkeypatch):
    def offline(url, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(RuntimeError, match=r"resnet18-f37072fd\.pth.*pretrained_backbone='/path/to/"):
        DifNet(depth=18, pretrained_backbone="imagenet")


def test_imagenet_downloads_torchvisions_checkpoint_for_the_depth(monkeypatch):
    requested = []

    def fake_download(url, **kwargs):
        requested.append((url, kwargs.get("weights_only"), kwargs.get("check_hash")))
        return torchvision_state_dict(34)

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_download)
    model = SimDeepLab(depth=34, num_classes=3, pretrained_backbone="imagenet")
    assert requested == [("https://download.pytorch.org/models/resnet34-b627a593.pth", True, True)]
    assert model.backbone_load_reports["backbone"].missing_keys == ()


@pytest.mark.parametrize("depth", [18, 34, 50, 101, 152])
def test_real_torchvision_checkpoint_loads_when_present(depth):
    files = sorted(WEIGHTS_DIR.glob(f"resnet{depth}-*.pth"))
    if not files:
        pytest.skip(f"no torchvision resnet{depth} checkpoint in {WEIGHTS_DIR}")
    model = SimDeepLab(depth=depth, num_classes=3, pretrained_backbone=files[0])
    report = model.backbone_load_reports["backbone"]
    assert report.missing_keys == () and set(report.unexpected_keys) == {"fc.weight", "fc.bias"}
