"""Each point where difnet follows the authors' DifNet code (docs/fidelity.md), pinned."""

from __future__ import annotations

import math

import pytest
import torch

from difnet.data import EvalTransform, SyntheticShapes
from difnet.diffusion.label_statistics import row_statistics
from difnet.models import DifNet, SimDeepLab, dilated_resnet
from difnet.models.diffusion_head import UNSATURATED_PSI_SCALE
from difnet.models.heads import ASPP
from difnet.training import TrainConfig
from difnet.training.optim import build_optimizer


@pytest.mark.parametrize(("side", "grid"), [(64, 9), (65, 9), (320, 41), (321, 41), (504, 64), (505, 64)])
def test_ceil_mode_max_pool_gives_the_authors_grid_at_even_and_odd_sizes(side, grid):
    backbone = dilated_resnet(18)
    assert backbone.maxpool.ceil_mode
    with torch.no_grad():
        assert backbone.eval()(torch.zeros(1, 3, side, side))[-1].shape[-2:] == (grid, grid)


@pytest.mark.parametrize("depth", [18, 34])
def test_basic_blocks_dilate_only_their_second_convolution(depth):
    backbone = dilated_resnet(depth)
    for stage, dilation in (("layer3", 2), ("layer4", 4)):
        for block in getattr(backbone, stage):
            assert block.conv1.dilation == (1, 1) and block.conv1.padding == (1, 1)
            assert block.conv2.dilation == (dilation, dilation)
            assert block.conv2.padding == (dilation, dilation)


def test_bottlenecks_keep_torchvisions_stride_on_the_3x3_convolution():
    first = dilated_resnet(50).layer2[0]
    assert first.conv1.stride == (1, 1) and first.conv2.stride == (2, 2)


def test_aspp_weights_follow_the_authors_effective_init():
    torch.manual_seed(0)
    channels, classes = 512, 21
    head = ASPP(channels, classes, init="he")
    weights = torch.cat([b.weight.flatten() for b in head.branches])
    assert weights.mean().abs() < 1e-3
    assert weights.std().item() == pytest.approx(math.sqrt(2 / (9 * classes)), rel=0.02)
    biases = torch.cat([b.bias for b in head.branches])  # torch's default: U(+-1/sqrt(fan_in))
    bound = 1 / math.sqrt(9 * channels)
    assert biases.abs().max() <= bound and biases.abs().max() > bound / 2


def test_psi_bn_scale_starts_unsaturated_by_default_and_at_one_as_the_authors():
    assert UNSATURATED_PSI_SCALE == pytest.approx(64**-0.25)
    for psi_scale_init, expected in ((None, UNSATURATED_PSI_SCALE), (1.0, 1.0), (0.5, 0.5)):
        options = {} if psi_scale_init is None else {"psi_scale_init": psi_scale_init}
        model = DifNet(depth=18, num_classes=3, **options)
        for projection in model.projections:
            torch.testing.assert_close(projection.bn.weight, torch.full((64,), expected))


@pytest.mark.parametrize("bad", [0, -1.0, float("inf"), float("nan"), True, "1"])
def test_psi_scale_init_must_be_a_positive_number(bad):
    with pytest.raises(ValueError, match="psi_scale_init must be a positive number"):
        DifNet(depth=18, num_classes=3, psi_scale_init=bad)


def test_unscaled_psi_saturates_the_deep_transitions_and_the_default_does_not():
    """From scratch, train-mode BN makes each deep node's 64-d feature have squared norm 64 on
    average, against cross terms of order 8, so softmax(f f^T) is nearly the identity there;
    the default 64^-1/4 BN scale divides every logit by 8."""
    dataset = SyntheticShapes(2, size=96, transform=EvalTransform())
    images = torch.stack([dataset[i][0] for i in range(2)])
    norms, diagonal = {}, {}
    for scale in (1.0, UNSATURATED_PSI_SCALE):
        torch.manual_seed(0)
        model = DifNet(depth=18, num_classes=3, psi_scale_init=scale).train()
        with torch.no_grad():
            levels = model.similarity_branch(images)
            features = model.head.features(levels, tuple(levels[-1].shape[-2:]))
        norms[scale] = [f.pow(2).sum(-1).mean().item() for f in features[3:]]  # not max-pooled
        diagonal[scale] = [row_statistics(f, torch.zeros(f.shape[:2], dtype=torch.long)).self_weight.mean().item()
                           for f in features[2:]]  # fmt: skip
    assert norms[1.0] == pytest.approx([64.0, 64.0], rel=1e-3)
    assert norms[UNSATURATED_PSI_SCALE] == pytest.approx([8.0, 8.0], rel=1e-3)
    assert min(diagonal[1.0]) > 0.95
    assert max(diagonal[UNSATURATED_PSI_SCALE]) < 0.8


def test_default_recipe_is_one_rate_and_one_decay_for_every_parameter():
    config = TrainConfig(device="cpu")
    assert (config.lr, config.head_lr_mult, config.walk_lr_mult) == (2.5e-3, 1.0, 1.0)
    assert (config.batch_size, config.crop_size, config.epochs) == (16, (321, 321), 200)
    assert (config.momentum, config.weight_decay, config.poly_power) == (0.9, 5e-4, 0.9)
    for model in (DifNet(depth=18, num_classes=3), SimDeepLab(depth=18, num_classes=3)):
        groups = build_optimizer(model, config).param_groups
        assert {g["lr"] for g in groups} == {2.5e-3}
        assert {g["weight_decay"] for g in groups} == {5e-4}
        assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
