"""The guided walk: the reference's walk on its kernel, its gradients, what it learns, and DifNet's
cascade ending with it (staged training, diagnostics, saving)."""

from __future__ import annotations

import numpy
import pytest
import torch

import reference
from difnet.diagnostics import GUIDED_SEED_STAGE, GUIDED_STAGE, diagnose
from difnet.diffusion import GuidedWalk, TransitionKernel, local_transition, restart_walk
from difnet.models import DifNet, load_model
from difnet.training import TrainConfig
from difnet.training.optim import build_optimizer
from reference import VariantMismatch, check_variant
from tests.test_diffusion_walk import LargestTensor
from tests.test_refinement import TwoRegions


def nodes(maps: torch.Tensor) -> numpy.ndarray:
    return maps.flatten(2).transpose(1, 2).detach().numpy()


def test_matches_the_reference_walk_on_its_learned_kernel() -> None:
    walk = GuidedWalk(3, stride=1, radius=2, steps=4, colour_sigma=0.3, position_sigma=1.5, mu=0.8).double()
    with torch.no_grad():  # a learned colour map: channels mixed, not the identity it starts at
        walk.colour.weight.add_(torch.randn(3, 3, 1, 1, generator=torch.Generator().manual_seed(0)))
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(2, 3, 5, 6, generator=generator, dtype=torch.float64)
    probabilities = torch.rand(2, 4, 5, 6, generator=generator, dtype=torch.float64).softmax(1)
    P = reference.transition_matrix(walk.features(images).detach().numpy(), "distance", radius=2, grid=(5, 6))
    expected = reference.random_walk(P, nodes(probabilities), float(walk.mu.detach()), 4)
    numpy.testing.assert_allclose(nodes(walk(probabilities, images)), expected, rtol=1e-12, atol=1e-12)


def test_coarse_probabilities_are_upsampled_to_the_walk_grid_and_stay_probabilities() -> None:
    walk = GuidedWalk(3, stride=2)
    out = walk(torch.rand(2, 5, 3, 4).softmax(1), torch.rand(2, 3, 13, 17))
    assert out.shape == (2, 5, 7, 9)
    torch.testing.assert_close(out.sum(1), torch.ones(2, 7, 9))


def restarted(radius: int, grid: tuple[int, int], steps: int = 2000):
    """difnet's local transition and restart walk run to convergence, as a closed-form variant."""

    def run(features, s, mu):
        features, s = (
            torch.from_numpy(numpy.asarray(features))[None],
            torch.from_numpy(numpy.asarray(s))[None],
        )
        transition = local_transition(features, TransitionKernel("distance", radius), grid)
        return next(restart_walk(transition, s, mu, [steps]))[1][0]

    return run


def test_check_variant_passes_the_production_walk_on_its_reference_kernel_and_fails_on_another() -> None:
    grid = (4, 6)
    report = check_variant(restarted(2, grid), pass_features=True, kernel="distance", radius=2, grid=grid,
                           trials=2, rtol=1e-9)  # fmt: skip
    assert report.passed and report.kernel.startswith("distance")
    with pytest.raises(VariantMismatch):
        check_variant(restarted(1, grid), pass_features=True, kernel="distance", radius=2, grid=grid, trials=2,
                      rtol=1e-9)  # fmt: skip


@pytest.mark.parametrize("requires", [(True, True), (True, False), (False, True)])
def test_local_transition_gradients_match_finite_differences(requires) -> None:
    generator = torch.Generator().manual_seed(2)
    features = torch.randn(2, 20, 3, generator=generator, dtype=torch.float64, requires_grad=requires[0])
    values = torch.randn(2, 20, 4, generator=generator, dtype=torch.float64, requires_grad=requires[1])
    kernel = TransitionKernel("distance", 2)
    inputs = tuple(t for t in (features, values) if t.requires_grad)

    def apply(*changed):
        given = dict(
            zip([n for n, t in (("f", features), ("v", values)) if t.requires_grad], changed, strict=True)
        )
        return local_transition(given.get("f", features), kernel, (4, 5))(given.get("v", values))

    assert torch.autograd.gradcheck(apply, inputs)


def test_never_holds_an_n_by_n_tensor_at_4096_nodes() -> None:
    walk = GuidedWalk(3, stride=2, steps=3)
    images, probabilities = torch.rand(1, 3, 128, 128), torch.rand(1, 21, 16, 16, requires_grad=True)
    with LargestTensor() as largest:
        out = walk(probabilities, images)
        torch.autograd.grad(out, (probabilities, *walk.parameters()), torch.ones_like(out))
    assert out.shape[-2:] == (64, 64) and largest.numel < 4096 * 4096 // 16, largest.numel


def test_it_learns_to_stop_at_a_colour_edge() -> None:
    """Trained on images whose classes follow the colour, a walk started blind to colour learns to
    weigh it, and its loss falls."""
    dataset = TwoRegions()
    images = torch.stack([image for image, _ in dataset])
    labels = torch.stack([label for _, label in dataset])
    blurred = torch.nn.functional.avg_pool2d(torch.nn.functional.one_hot(labels, 2).permute(0, 3, 1, 2).float(),
                                             7, stride=1, padding=3, count_include_pad=False)  # fmt: skip
    walk = GuidedWalk(3, stride=1, radius=2, steps=5, colour_sigma=100.0, position_sigma=2.0, mu=0.9)
    optimizer = torch.optim.Adam(walk.parameters(), lr=0.1)

    def loss() -> torch.Tensor:
        return torch.nn.functional.nll_loss(walk(blurred, images).clamp_min(1e-9).log(), labels)

    first = loss().item()
    for _ in range(60):
        optimizer.zero_grad()
        loss().backward()
        optimizer.step()
    assert loss().item() < 0.6 * first
    assert walk.colour.weight.abs().max() > 1.0  # it started at 1 / 100


def test_matches_the_reference_walk_with_a_guide_in_its_kernel() -> None:
    walk = GuidedWalk(3, stride=1, radius=1, steps=3, guide_channels=5, guide_dims=2).double()
    generator = torch.Generator().manual_seed(2)
    images = torch.rand(1, 3, 4, 6, generator=generator, dtype=torch.float64)
    guide = torch.rand(1, 5, 2, 3, generator=generator, dtype=torch.float64)  # a coarser map, resized
    probabilities = torch.rand(1, 3, 4, 6, generator=generator, dtype=torch.float64).softmax(1)
    features = walk.features(images, guide).detach().numpy()
    assert features.shape == (1, 24, 3 + 2 + 2)
    P = reference.transition_matrix(features, "distance", radius=1, grid=(4, 6))
    expected = reference.random_walk(P, nodes(probabilities), float(walk.mu.detach()), 3)
    numpy.testing.assert_allclose(nodes(walk(probabilities, images, guide)), expected, rtol=1e-12, atol=1e-12)
    unguided = GuidedWalk(3, stride=1, radius=1, steps=3).double()
    assert not numpy.allclose(nodes(unguided(probabilities, images)), expected)  # the guide counts


def test_it_learns_an_edge_the_colours_do_not_show_from_its_guide() -> None:
    """On images of one colour, whose classes only a guide map tells apart, the guide's projection
    grows from its small start and the loss falls."""
    dataset = TwoRegions()
    labels = torch.stack([label for _, label in dataset])
    images = torch.full((len(labels), 3, *labels.shape[-2:]), 0.5)
    one_hot = torch.nn.functional.one_hot(labels, 2).permute(0, 3, 1, 2).float()
    guide = torch.cat([one_hot, torch.rand(len(labels), 6, *labels.shape[-2:])], dim=1)
    blurred = torch.nn.functional.avg_pool2d(one_hot, 7, stride=1, padding=3, count_include_pad=False)
    walk = GuidedWalk(3, stride=1, radius=2, steps=5, mu=0.9, guide_channels=8, guide_dims=4, guide_scale=0.1)
    optimizer = torch.optim.Adam(walk.parameters(), lr=0.1)

    def loss() -> torch.Tensor:
        return torch.nn.functional.nll_loss(walk(blurred, images, guide).clamp_min(1e-9).log(), labels)

    first, start = loss().item(), walk.guide.weight.detach()[:, :2].abs().max().item()
    for _ in range(60):
        optimizer.zero_grad()
        loss().backward()
        optimizer.step()
    assert loss().item() < 0.6 * first
    assert walk.guide.weight.detach()[:, :2].abs().max() > 5 * start


def test_a_guide_is_refused_where_it_does_not_fit() -> None:
    probabilities, images = torch.rand(2, 3, 4, 4).softmax(1), torch.rand(2, 3, 8, 8)
    with pytest.raises(ValueError, match="has no guide_channels"):
        GuidedWalk(3)(probabilities, images, torch.rand(2, 5, 4, 4))
    guided = GuidedWalk(3, guide_channels=5)
    with pytest.raises(
        ValueError, match=r"guide must be \[B, 5, h, w\] with the images' B=2 \(got no guide\)"
    ):
        guided(probabilities, images)
    with pytest.raises(ValueError, match=r"\(got shape \(2, 4, 4, 4\)\)"):
        guided(probabilities, images, torch.rand(2, 4, 4, 4))
    with pytest.raises(ValueError, match="GuidedWalk guide_dims must be a positive integer"):
        GuidedWalk(3, guide_channels=5, guide_dims=0)
    with pytest.raises(ValueError, match="GuidedWalk guide_channels must be a positive integer"):
        GuidedWalk(3, guide_channels=0)
    with pytest.raises(ValueError, match="got no guide"):
        guided.features(images)
    with pytest.raises(ValueError, match=r"guided_walk_level must be None or a level index in \[1, 5\)"):
        DifNet(depth=18, num_classes=2, guided_walk_stride=2, guided_walk_level=0)
    with pytest.raises(ValueError, match="give guided_walk_stride too"):
        DifNet(depth=18, num_classes=2, guided_walk_level=1)


def test_refuses_bad_settings_and_inputs() -> None:
    with pytest.raises(ValueError, match="GuidedWalk steps must be a positive integer"):
        GuidedWalk(3, steps=0)
    with pytest.raises(ValueError, match="GuidedWalk in_channels must be a positive integer"):
        GuidedWalk(0)
    with pytest.raises(ValueError, match=r"images must have 3 channels \(got shape \(1, 4, 8, 8\)\)"):
        GuidedWalk(3)(torch.rand(1, 2, 4, 4), torch.rand(1, 4, 8, 8))
    with pytest.raises(ValueError, match="with the same B"):
        GuidedWalk(3)(torch.rand(2, 2, 4, 4), torch.rand(1, 3, 8, 8))


def guided_difnet() -> DifNet:
    torch.manual_seed(0)
    return DifNet(depth=18, num_classes=2, shared_backbone=True, kernel="distance", kernel_radius=1,
                  guided_walk_stride=2, guided_walk_steps=3)  # fmt: skip


def test_difnet_ends_its_cascade_with_the_guided_walk() -> None:
    model = guided_difnet().eval()
    images = torch.rand(2, 3, 32, 40)
    with torch.no_grad():
        out = model(images, intermediates=True)
        expected = model.head.guided_walk(out.walks[-1].softmax(1), images)
    assert out.guided_probabilities.shape == (2, 2, 16, 20) and out.logits.shape == (2, 2, 32, 40)
    torch.testing.assert_close(out.guided_probabilities, expected)
    torch.testing.assert_close(out.logits.exp().sum(1), torch.ones(2, 32, 40))
    assert DifNet(depth=18, num_classes=2).head.guided_walk is None  # the paper's cascade by default


def test_the_guided_walk_trains_with_the_seed_frozen_and_saves(tmp_path) -> None:
    model = guided_difnet().freeze_seed_branch().train()
    model(torch.rand(2, 3, 32, 32)).logsumexp(1).mean().backward()
    walk = model.head.guided_walk
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in walk.parameters())
    assert all(p.grad is None for module in model.seed_branch_modules().values() for p in module.parameters())
    model.eval().save_pretrained(tmp_path / "saved")
    loaded = DifNet.from_pretrained(tmp_path / "saved")
    assert loaded.config["guided_walk_stride"] == 2 and loaded.config["guided_walk_steps"] == 3
    images = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), model(images))


def test_difnet_guides_its_walk_with_a_similarity_level(tmp_path) -> None:
    torch.manual_seed(0)
    model = DifNet(depth=18, num_classes=2, shared_backbone=True, guided_walk_stride=2, guided_walk_steps=3,
                   guided_walk_level=1).eval()  # fmt: skip
    images = torch.rand(1, 3, 32, 40)
    with torch.no_grad():
        out = model(images, intermediates=True)
        levels = model.similarity_branch(images)
        expected = model.head.guided_walk(out.walks[-1].softmax(1), images, levels[1])
    torch.testing.assert_close(out.guide, levels[1])
    torch.testing.assert_close(out.guided_probabilities, expected)
    assert {id(p) for p in model.head.guided_walk.guide.parameters()} <= {
        id(p) for p in model.param_groups()["walk"]
    }
    model.save_pretrained(tmp_path / "saved")
    loaded = DifNet.from_pretrained(tmp_path / "saved")
    assert loaded.config["guided_walk_level"] == 1
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), model(images))


def test_the_guided_walk_learns_at_the_walks_rate() -> None:
    model = guided_difnet()
    walk_group = {id(p) for p in model.param_groups()["walk"]}
    assert {id(p) for p in model.head.guided_walk.parameters()} <= walk_group
    assert {id(p) for p in model.cascade.parameters()} <= walk_group
    config = TrainConfig(lr=0.01, walk_lr_mult=30.0, walk_weight_decay=0.0)
    (walk,) = [g for g in build_optimizer(model, config).param_groups if g["name"] == "walk"]
    assert walk["lr"] == pytest.approx(0.3) and walk["weight_decay"] == 0.0
    assert {id(p) for p in walk["params"]} == walk_group


def test_diagnose_scores_the_guided_walk_as_the_output(tmp_path) -> None:
    model = guided_difnet()
    model.save_pretrained(tmp_path / "m")
    model = load_model(tmp_path / "m")
    dataset = TwoRegions(count=2, size=(16, 16))
    result = diagnose(model, dataset)
    assert list(result.miou)[-3:] == [GUIDED_STAGE, "oracle", GUIDED_SEED_STAGE]
    assert result.walk_gain == pytest.approx(result.miou[GUIDED_STAGE] - result.miou["seed"])
