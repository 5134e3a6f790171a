"""Options beyond the paper: score-head init, shared backbone, normalised importance map, auxiliary
seed and transition losses. Each off is the authors' model; each on is what its docstring says."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from difnet.data import SyntheticShapes
from difnet.models import DifNet, SimDeepLab, build_model
from difnet.models.heads import ASPP, DEEPLAB_HEAD_STD, score_conv
from difnet.training import TrainConfig, train


def score_convs(model) -> list[torch.nn.Conv2d]:
    head = model.classifier
    return list(head.branches) if isinstance(head, ASPP) else [head]


@pytest.mark.parametrize("model_class", [DifNet, SimDeepLab])
def test_head_init_normal_draws_deeplab_weights_and_zero_bias(model_class):
    torch.manual_seed(0)
    model = model_class(depth=18, num_classes=21)  # the default
    for conv in score_convs(model):
        assert conv.weight.std().item() == pytest.approx(DEEPLAB_HEAD_STD, rel=0.02)
        assert abs(conv.weight.mean().item()) < 1e-3
        assert torch.count_nonzero(conv.bias) == 0
    assert model.config["head_init"] == "normal"


@pytest.mark.parametrize("model_class", [DifNet, SimDeepLab])
def test_head_init_he_is_the_authors_fan_out_init_with_torch_bias(model_class):
    torch.manual_seed(0)
    model = model_class(depth=18, num_classes=21, head_init="he")
    for conv in score_convs(model):
        expected = math.sqrt(2 / (9 * 21))  # fan-out He: 3x3 kernels, K output channels
        assert conv.weight.std().item() == pytest.approx(expected, rel=0.02)
        assert torch.count_nonzero(conv.bias) == 21
        assert conv.bias.abs().max() <= 1 / math.sqrt(512 * 9)  # torch's default bias bound
    assert model.config["head_init"] == "he"


def test_an_unknown_head_init_is_refused_by_name():
    with pytest.raises(ValueError, match="head_init must be one of"):
        score_conv(8, 3, init="xavier")
    with pytest.raises(ValueError, match="head_init must be one of"):
        SimDeepLab(depth=18, num_classes=3, head_init="zeros")


def test_a_shared_backbone_feeds_both_branches_from_one_resnet():
    torch.manual_seed(0)
    model = DifNet(depth=18, num_classes=3, shared_backbone=True).eval()
    assert model.similarity_backbone is None and list(model.backbones()) == ["seed"]
    two = DifNet(depth=18, num_classes=3)
    shared_count = sum(p.numel() for p in model.parameters())
    backbone_count = sum(p.numel() for p in two.similarity_backbone.parameters())
    assert shared_count == sum(p.numel() for p in two.parameters()) - backbone_count
    images = torch.randn(1, 3, 48, 48)
    out = model.forward_intermediates(images)
    manual = model.diffuse(model.seed_branch(images), model.similarity_branch(images))
    torch.testing.assert_close(out.logits, manual.logits)
    rebuilt = build_model(**model.config)
    assert rebuilt.similarity_backbone is None


def test_normalized_importance_has_unit_mean_and_keeps_the_argmax():
    torch.manual_seed(0)
    plain = DifNet(depth=18, num_classes=3).eval()
    normalized = DifNet(depth=18, num_classes=3, normalize_importance=True).eval()
    normalized.load_state_dict(plain.state_dict())
    images = torch.randn(2, 3, 48, 48)
    a, b = plain.forward_intermediates(images), normalized.forward_intermediates(images)
    torch.testing.assert_close(b.importance.mean(dim=(-2, -1)), torch.ones(2, 1))
    # y_5 is linear in s: a per-image scale of the seed scales the logits, never their argmax
    assert torch.equal(a.logits.argmax(1), b.logits.argmax(1))


def test_forward_with_intermediates_returns_the_whole_output():
    model = DifNet(depth=18, num_classes=3).eval()
    images = torch.randn(1, 3, 32, 32)
    out = model(images, intermediates=True)
    torch.testing.assert_close(out.logits, model(images))


def small_config(tmp_path, **overrides) -> TrainConfig:
    settings = dict(model="difnet", depth=18, dataset="synthetic", image_size=(32, 32), crop_size=(32, 32),
                    num_classes=3, batch_size=2, epochs=1, max_steps_per_epoch=1, workers=0, device="cpu",
                    output_dir=str(tmp_path / "run"), val_split=None, progress=False)  # fmt: skip
    return TrainConfig(**{**settings, **overrides})


def test_the_auxiliary_seed_loss_adds_the_seed_cross_entropy(tmp_path, monkeypatch):
    from difnet.training import loop

    seen = []
    original = loop.pixel_loss

    def recording(logits, labels):
        loss = original(logits, labels)
        seen.append(float(loss.detach()))
        return loss

    monkeypatch.setattr(loop, "pixel_loss", recording)
    result = train(small_config(tmp_path, aux_seed_weight=0.4))
    assert len(seen) == 2  # y_5 and the seed scores
    assert result.history[-1]["step"] == 1


def test_difnet_options_are_refused_for_the_baseline(tmp_path):
    config = small_config(tmp_path)
    for option in ({"aux_seed_weight": 0.4}, {"shared_backbone": True}, {"normalize_importance": True}):
        with pytest.raises(ValueError, match="DifNet options"):
            replace(config, model="simdeeplab", **option)
    with pytest.raises(ValueError, match="aux_seed_weight must be non-negative"):
        replace(config, aux_seed_weight=-1.0)


def test_the_options_train_and_resume(tmp_path):
    config = small_config(tmp_path, head_init="normal", shared_backbone=True, normalize_importance=True,
                          aux_seed_weight=0.4, epochs=2)  # fmt: skip
    first = train(replace(config, epochs=1))
    assert first.model.config["shared_backbone"]
    resumed = train(replace(config, resume=str(first.checkpoint_paths["last"]), overwrite=False))
    assert resumed.history[-1]["epoch"] == 2
    scenes = SyntheticShapes(1, size=32, num_classes=3)
    assert resumed.model(scenes[0][0][None]).shape == (1, 3, 32, 32)


def test_the_transition_loss_weight_trains_and_is_refused_for_the_baseline_or_below_zero(tmp_path):
    config = small_config(tmp_path, transition_loss_weight=0.4)
    assert train(config).history[-1]["step"] == 1
    with pytest.raises(ValueError, match="DifNet options"):
        replace(config, model="simdeeplab")
    with pytest.raises(ValueError, match="transition_loss_weight must be non-negative"):
        replace(config, transition_loss_weight=-0.1)
