"""Options beyond the paper: score-head init, shared backbone, normalised importance map, auxiliary
seed and transition losses. Each off is the authors' model; each on is what its docstring says."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from difnet.data import SyntheticShapes
from difnet.models import DifNet, SimDeepLab, build_model
from difnet.models.heads import ASPP, DEEPLAB_HEAD_STD, score_conv
from difnet.training import TrainConfig, train
from difnet.training.losses import training_loss


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


def test_the_auxiliary_seed_loss_is_the_weighted_cross_entropy_of_the_upsampled_scores():
    torch.manual_seed(0)
    model = DifNet(depth=18, num_classes=3).eval()
    images, labels = torch.randn(2, 3, 40, 48), torch.randint(0, 3, (2, 40, 48))
    labels[0, :5] = 255
    out = model(images, intermediates=True)
    scores = F.interpolate(out.scores, size=(40, 48), mode="bilinear", align_corners=False)
    by_hand = F.cross_entropy(out.logits, labels, ignore_index=255) + 0.4 * F.cross_entropy(
        scores, labels, ignore_index=255
    )
    torch.testing.assert_close(training_loss(model, images, labels, aux_seed_weight=0.4), by_hand)


def test_the_trainer_passes_the_recipes_loss_weights(tmp_path, monkeypatch):
    from difnet.training import loop

    seen = []

    def recording(model, images, labels, aux_seed_weight, transition_weight, **options):
        seen.append((aux_seed_weight, transition_weight))
        return training_loss(model, images, labels, aux_seed_weight, transition_weight, **options)

    monkeypatch.setattr(loop, "training_loss", recording)
    result = train(small_config(tmp_path, aux_seed_weight=0.4, transition_loss_weight=0.3))
    assert seen == [(0.4, 0.3)]
    assert result.history[-1]["step"] == 1


def test_difnet_options_are_refused_for_the_baseline(tmp_path):
    config = small_config(tmp_path)
    for option in ({"aux_seed_weight": 0.4}, {"shared_backbone": True}, {"normalize_importance": True}):
        with pytest.raises(ValueError, match="options of DifNet"):
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
    with pytest.raises(ValueError, match="options of DifNet"):
        replace(config, model="simdeeplab")
    with pytest.raises(ValueError, match="transition_loss_weight must be non-negative"):
        replace(config, transition_loss_weight=-0.1)


def test_staged_training_trains_only_the_diffusion_on_the_first_stages_frozen_seed(tmp_path):
    first = train(
        small_config(tmp_path / "one", kernel="identity", shared_backbone=True, aux_seed_weight=0.4)
    )
    out = first.model.eval()(torch.randn(1, 3, 32, 32), intermediates=True)
    torch.testing.assert_close(out.walks[-1], out.seed)  # P = I: every walk returns the seed
    stage_one = {k: v.clone() for k, v in first.model.state_dict().items()}
    second = train(small_config(tmp_path / "two", kernel="distance", kernel_radius=2, shared_backbone=True,
                                seed_from=str(first.checkpoint_paths["last"]), epochs=2))  # fmt: skip
    state = second.model.state_dict()
    seed_keys = [k for k in state if k.startswith(tuple(p + "." for p in second.model.seed_branch_modules()))]
    assert seed_keys and all(torch.equal(state[k], stage_one[k]) for k in seed_keys)  # BN statistics too
    moved = [
        k
        for k in state
        if k.startswith(("head.projections.", "head.cascade.")) and not torch.equal(state[k], stage_one[k])
    ]
    assert any(k.startswith("head.projections.") for k in moved) and any(
        k.startswith("head.cascade.") for k in moved
    )
    second.model.train()
    assert not second.model.seed_backbone.training and second.model.projections.training


def test_a_seed_branch_of_another_architecture_is_refused(tmp_path):
    first = train(small_config(tmp_path / "one", kernel="identity", aspp=False))
    with pytest.raises(ValueError, match="another seed branch .*aspp False there, True here"):
        train(small_config(tmp_path / "two", seed_from=str(first.checkpoint_paths["last"])))
    with pytest.raises(ValueError, match="seed_from and init_from"):
        small_config(tmp_path, seed_from="a.pt", init_from="b.pt")
    with pytest.raises(ValueError, match="identity kernel has no transitions"):
        small_config(tmp_path, kernel="identity", transition_loss_weight=0.4)


def test_a_separate_similarity_backbone_starts_from_a_shared_first_stages_backbone(tmp_path):
    first = train(small_config(tmp_path / "one", kernel="identity", shared_backbone=True))
    second = train(small_config(tmp_path / "two", seed_from=str(first.checkpoint_paths["last"]), epochs=1,
                                max_steps_per_epoch=1, lr=1e-12))  # fmt: skip
    stage_one = first.model.seed_backbone.state_dict()
    similarity = second.model.similarity_backbone.state_dict()
    assert all(torch.allclose(similarity[k].float(), stage_one[k].float(), atol=1e-6)
               for k in similarity if not k.endswith("num_batches_tracked") and "running" not in k)  # fmt: skip
    assert any(p.requires_grad for p in second.model.similarity_backbone.parameters())
