"""`difnet.refinement.guided`: the guided walk's stride, steps and restart weight picked by mIoU, and
`DifNet.set_guided_walk`, which keeps the choice through saving and loading."""

from __future__ import annotations

import pytest
import torch

from difnet.evaluation import evaluate
from difnet.models import DifNet
from difnet.refinement import GuidedSetting, fit_guided_walk, guided_grid
from tests.test_refinement import TwoRegions


def guided_difnet(**options) -> DifNet:
    torch.manual_seed(0)
    return DifNet(depth=18, num_classes=2, shared_backbone=True, kernel="distance", kernel_radius=1,
                  guided_walk_stride=2, guided_walk_steps=3, **options).eval()  # fmt: skip


def test_each_setting_scores_what_the_model_set_to_it_scores() -> None:
    model, dataset = guided_difnet(), TwoRegions(count=2, size=(24, 24))
    settings = [GuidedSetting(1, 2, 0.9), GuidedSetting(2, 8, 0.99), GuidedSetting(1, 8, 0.9)]
    fit = fit_guided_walk(model, dataset, settings)
    scores = dict(fit.scores)
    assert list(scores) == [GuidedSetting.from_model(model), *settings]  # its own setting first
    assert scores[GuidedSetting.from_model(model)] == pytest.approx(fit.model_miou)
    assert fit.setting == max(fit.scores, key=lambda pair: pair[1])[0] and fit.best_miou == max(
        scores.values()
    )
    for setting in settings:
        model.set_guided_walk(stride=setting.stride, steps=setting.steps, mu=setting.mu)
        assert evaluate(model, dataset, progress=False).metrics.miou == pytest.approx(scores[setting])
    assert fit.to_dict()["setting"] == {
        "stride": fit.setting.stride,
        "steps": fit.setting.steps,
        "mu": fit.setting.mu,
    }


def test_a_guided_walk_with_a_guide_level_is_fitted_with_its_guide() -> None:
    model, dataset = guided_difnet(guided_walk_level=1), TwoRegions(count=1, size=(24, 24))
    fit = fit_guided_walk(model, dataset, [GuidedSetting(1, 4, 0.95)])
    model.set_guided_walk(stride=1, steps=4, mu=0.95)
    assert evaluate(model, dataset, progress=False).metrics.miou == pytest.approx(
        dict(fit.scores)[GuidedSetting(1, 4, 0.95)]
    )


def test_a_fit_leaves_the_models_weights_and_setting_as_they_were() -> None:
    model = guided_difnet()
    with torch.no_grad():
        model.head.guided_walk.raw_mu.fill_(20.0)  # a learned mu of 1 - 2e-9: its own setting is still tried
    before = {name: value.clone() for name, value in model.state_dict().items()}
    fit = fit_guided_walk(model, TwoRegions(count=1, size=(24, 24)), [GuidedSetting(1, 2, 0.9)])
    assert fit.scores[0][0].mu == pytest.approx(1.0) and len(fit.scores) == 2
    assert model.config["guided_walk_stride"] == 2 and model.config["guided_walk_steps"] == 3
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, before[name], rtol=0, atol=0, msg=name)


def test_the_default_grid_spans_strides_restart_weights_and_longer_walks() -> None:
    grid = guided_grid()
    assert {s.stride for s in grid} == {1, 2} and {s.mu for s in grid} == {0.97, 0.99}
    assert {s.steps for s in grid} == {15, 30, 60, 100} and len(grid) == 16


def test_set_guided_walk_survives_saving_and_loading(tmp_path) -> None:
    model = guided_difnet()
    images = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        before = model(images)
        model.set_guided_walk(stride=1, steps=7, mu=0.9)
        after = model(images)
    assert not torch.allclose(before, after)
    assert model.config["guided_walk_stride"] == 1 and model.config["guided_walk_steps"] == 7
    assert model.head.guided_walk.mu.item() == pytest.approx(0.9)
    model.save_pretrained(tmp_path / "fitted")
    loaded = DifNet.from_pretrained(tmp_path / "fitted").eval()
    own = GuidedSetting.from_model(loaded)
    assert (own.stride, own.steps) == (1, 7) and own.mu == pytest.approx(0.9)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), after)


def test_refuses_what_it_cannot_fit_or_set() -> None:
    plain = DifNet(depth=18, num_classes=2)
    with pytest.raises(ValueError, match="must be a DifNet with a guided walk"):
        fit_guided_walk(plain, TwoRegions(count=1))
    with pytest.raises(ValueError, match="has no guided walk"):
        plain.set_guided_walk(steps=3)
    with pytest.raises(TypeError, match="has no num_classes"):
        fit_guided_walk(guided_difnet(), [(torch.rand(3, 8, 8), torch.zeros(8, 8, dtype=torch.long))])
    with pytest.raises(ValueError, match="set_guided_walk mu must lie strictly between 0 and 1"):
        guided_difnet().set_guided_walk(mu=1.0)
    with pytest.raises(ValueError, match="GuidedSetting stride must be a positive integer"):
        GuidedSetting(0, 3, 0.9)
    walk = guided_difnet().head.guided_walk
    with pytest.raises(ValueError, match="GuidedWalk.copy_with stride must be a positive integer"):
        walk.copy_with(0, 0.9)
    with pytest.raises(ValueError, match="GuidedWalk mu must lie strictly between 0 and 1"):
        walk.copy_with(1, 1.0)
