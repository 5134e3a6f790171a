"""timm's models as encoders by name (`"tu-<timm model name>"`, difnet.encoders.timm): the contract
over three families in DifNet and Sim-DeepLab at an odd size (logits, finite, backward, the saved
model's round trip), output strides, checkpointing, timm's weights (never fetched on loading), and
the refusals: without timm (which needs no timm), an unknown model, one that cannot dilate."""

from __future__ import annotations

import sys

import pytest
import torch

from difnet import DifNet, SimDeepLab
from difnet.encoders import build_encoder, register_encoder
from difnet.training import TrainConfig

NO_TIMM = 'timm is not installed (pip install "difnet[timm]"): the tu- encoders\' tests need it'
ENCODERS = ("tu-resnet18", "tu-convnext_atto", "tu-mobilenetv3_small_100")  # three families
SIZE = (67, 93)
CLASSES = 3


@pytest.fixture
def timm():
    return pytest.importorskip("timm", reason=NO_TIMM)


def images(batch: int = 2, size: tuple[int, int] = SIZE) -> torch.Tensor:
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("model_class", [DifNet, SimDeepLab])
@pytest.mark.parametrize("encoder", ENCODERS)
def test_a_timm_encoder_trains_and_round_trips_in_both_models(timm, tmp_path, encoder, model_class):
    torch.manual_seed(0)
    model = model_class(encoder=encoder, num_classes=CLASSES).train()
    logits = model(images())
    assert logits.shape == (2, CLASSES, *SIZE) and torch.isfinite(logits).all()
    logits.square().mean().backward()
    grads = [p.grad for p in next(iter(model.backbones().values())).parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads) and any(
        g.abs().sum() > 0 for g in grads
    )
    model.eval()
    with torch.no_grad():
        expected = model(images())
    loaded = model_class.from_pretrained(model.save_pretrained(tmp_path / "saved"))
    assert loaded.config["encoder"] == encoder
    with torch.no_grad():
        torch.testing.assert_close(loaded(images()), expected, rtol=0, atol=0)


@pytest.mark.parametrize("encoder", ENCODERS)
def test_the_declared_stages_fit_the_maps_at_output_stride_8(timm, encoder):
    built = build_encoder(encoder).eval()
    with torch.no_grad():
        maps = built(images(1))
    assert [m.shape[1] for m in maps] == list(built.out_channels) and built.strides[-1] == 8
    for stage, stride in zip(maps, built.strides, strict=True):
        assert all(abs(found - size / stride) < 1 for found, size in zip(stage.shape[-2:], SIZE, strict=True))


def test_a_tail_asks_for_output_stride_16_or_32(timm):
    assert [build_encoder(f"tu-resnet18{tail}").strides[-1] for tail in ("", "_os16", "_os32")] == [8, 16, 32]


def test_gradient_checkpointing_goes_to_timm_and_keeps_the_gradients(timm):
    x = images(1, (33, 41))
    gradients = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        built = build_encoder("tu-resnet18", gradient_checkpointing=checkpointing).train()
        assert built.model.grad_checkpointing is checkpointing
        sum(stage.sum() for stage in built(x)).backward()
        gradients.append(built.model.conv1.weight.grad)
    torch.testing.assert_close(*gradients)


def test_timm_names_need_no_registration_in_the_training_recipe(timm):
    config = TrainConfig(model="difnet", encoder="tu-resnet18", similarity_encoder="tu-mobilenetv3_small_100")
    assert (config.encoder, config.depth) == ("tu-resnet18", None)


def test_timms_weights_load_with_pretrained_backbone_and_never_on_loading(timm, tmp_path, monkeypatch):
    weights = tmp_path / "resnet18.pth"
    torch.save(timm.create_model("resnet18").state_dict(), weights)
    create = timm.create_model
    monkeypatch.setattr(
        timm,
        "create_model",
        lambda *args, **kwargs: create(
            *args,
            **kwargs,
            **({"pretrained_cfg_overlay": {"file": str(weights)}} if kwargs["pretrained"] else {}),
        ),
    )
    model = SimDeepLab(encoder="tu-resnet18", num_classes=CLASSES, pretrained_backbone=True)
    assert model.backbone_load_reports["backbone"].source == "timm timm/resnet18.a1_in1k"
    torch.testing.assert_close(model.backbone.model.conv1.weight, torch.load(weights)["conv1.weight"])

    def offline(*args, **kwargs):
        if kwargs["pretrained"]:
            raise OSError("no network")
        return create(*args, **kwargs)

    monkeypatch.setattr(timm, "create_model", offline)
    message = r"could not fetch timm's pretrained weights of 'resnet18' for encoder 'tu-resnet18' \(OSError"
    with pytest.raises(RuntimeError, match=message):
        SimDeepLab(encoder="tu-resnet18", num_classes=CLASSES, pretrained_backbone=True)
    loaded = SimDeepLab.from_pretrained(model.save_pretrained(tmp_path / "saved"))  # rebuilt, not fetched
    torch.testing.assert_close(loaded.backbone.model.conv1.weight, model.backbone.model.conv1.weight)
    with pytest.raises(
        ValueError, match=r"encoder 'tu-resnet18' takes timm's own weights, pretrained_backbone=True"
    ):
        SimDeepLab(encoder="tu-resnet18", num_classes=CLASSES, pretrained_backbone=weights)


def test_an_unknown_timm_model_is_refused_with_timms_closest_names(timm):
    with pytest.raises(
        ValueError, match=r"encoder='tu-resnet_nope': timm .* has no model 'resnet_nope' \(closest"
    ):
        DifNet(encoder="tu-resnet_nope", num_classes=CLASSES)
    with pytest.raises(ValueError, match=r"similarity_encoder='tu-nothing_at_all': timm .* has no model"):
        DifNet(encoder="small_cnn", similarity_encoder="tu-nothing_at_all", num_classes=CLASSES)


def test_a_timm_model_that_cannot_dilate_is_refused(timm):
    message = (
        r"timm model 'vit_tiny_patch16_224' cannot be built at output stride 8 .*trade stride for dilation"
    )
    with pytest.raises(ValueError, match=message):
        build_encoder("tu-vit_tiny_patch16_224")


def test_without_timm_a_timm_name_is_refused_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` raises ImportError
    extra = r"is a timm model \('tu-' names\), which needs timm: pip install \"difnet\[timm\]\""
    with pytest.raises(ValueError, match=r"encoder='tu-resnet18' " + extra):
        DifNet(encoder="tu-resnet18", num_classes=CLASSES)
    with pytest.raises(ValueError, match=r"similarity_encoder='tu-resnet18' " + extra):
        DifNet(encoder="small_cnn", similarity_encoder="tu-resnet18", num_classes=CLASSES)
    with pytest.raises(ValueError, match=extra):
        TrainConfig(model="simdeeplab", encoder="tu-resnet18")


def test_the_timm_prefix_cannot_be_registered():
    with pytest.raises(
        ValueError, match=r"encoder names starting with 'tu-' are timm's models \(got 'tu-mine'\)"
    ):
        register_encoder("tu-mine", lambda **kwargs: None)
