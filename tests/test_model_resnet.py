"""The dilated ResNet backbones and the heads: geometry, names, and every depth constructing."""

from __future__ import annotations

import pytest
import torch

from difnet.models import RESNET_DEPTHS, DifNet, SimDeepLab, dilated_resnet
from difnet.models.diffusion_head import ImportanceHead, Projection
from difnet.models.heads import ASPP

STAGE_CHANNELS = {18: (64, 128, 256, 512), 50: (256, 512, 1024, 2048)}


@pytest.mark.parametrize("depth", [18, 50])
def test_stages_have_strides_4_8_8_8_and_torchvision_channels(depth):
    backbone = dilated_resnet(depth)
    features = backbone(torch.randn(1, 3, 65, 70))
    assert [tuple(f.shape[1:]) for f in features] == [
        (c, h, w) for c, (h, w) in zip(STAGE_CHANNELS[depth], [(17, 18), (9, 9), (9, 9), (9, 9)], strict=True)
    ]
    assert backbone.out_channels == STAGE_CHANNELS[depth]
    assert backbone.output_stride == 8


def test_stride_can_be_kept_instead_of_dilated():
    backbone = dilated_resnet(18, replace_stride_with_dilation=(False, False, False))
    assert backbone.output_stride == 32
    assert backbone(torch.randn(1, 3, 64, 64))[-1].shape[-2:] == (3, 3)  # ceil-mode max-pool


def test_dilation_replaces_stride_in_layer3_and_layer4():
    backbone = dilated_resnet(50)
    conv = {name: m for name, m in backbone.named_modules() if isinstance(m, torch.nn.Conv2d)}
    assert conv["layer2.0.conv2"].stride == (2, 2) and conv["layer2.0.conv2"].dilation == (1, 1)
    assert conv["layer3.0.conv2"].stride == (1, 1) and conv["layer3.5.conv2"].dilation == (2, 2)
    assert conv["layer4.0.conv2"].stride == (1, 1) and conv["layer4.2.conv2"].dilation == (4, 4)


def test_parameter_names_follow_torchvision():
    names = set(dilated_resnet(50).state_dict())
    expected = {
        "conv1.weight",
        "bn1.running_var",
        "layer1.0.downsample.0.weight",
        "layer1.0.downsample.1.bias",
        "layer3.5.conv3.weight",
        "layer4.2.bn3.num_batches_tracked",
    }
    assert expected <= names
    assert not any(name.startswith(("fc.", "avgpool")) for name in names)


@pytest.mark.parametrize("depth", RESNET_DEPTHS)
def test_every_depth_constructs(depth):
    with torch.device("meta"):
        difnet, simdeeplab = DifNet(depth=depth), SimDeepLab(depth=depth)
    assert difnet.seed_backbone.out_channels[-1] == simdeeplab.backbone.out_channels[-1]
    assert sum(1 for _ in difnet.similarity_backbone.layer3) == {18: 2, 34: 6, 50: 6, 101: 23, 152: 36}[depth]


@pytest.mark.parametrize("depth", [0, 20, 100, "50", True])
def test_unknown_depths_are_refused_with_the_valid_ones(depth):
    with pytest.raises(ValueError, match=r"depth must be one of \(18, 34, 50, 101, 152\)"):
        dilated_resnet(depth)


def test_aspp_sums_four_dilated_branches():
    torch.manual_seed(0)
    head = ASPP(32, 5)
    assert [b.dilation for b in head.branches] == [(6, 6), (12, 12), (18, 18), (24, 24)]
    assert all(b.bias is not None for b in head.branches)
    x = torch.randn(2, 32, 30, 30)
    torch.testing.assert_close(head(x), sum(branch(x) for branch in head.branches))


def test_importance_head_layout_and_range():
    head = ImportanceHead(6)
    convs = [m for m in head if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(6, 8), (8, 4), (4, 1)]
    assert all(c.kernel_size == (5, 5) and c.padding == (2, 2) and c.bias is None for c in convs)
    m = head(torch.randn(2, 6, 9, 11) * 10)
    assert m.shape == (2, 1, 9, 11) and ((m > 0) & (m < 1)).all()


@pytest.mark.parametrize("training", [True, False])
def test_projection_max_pools_bn_of_conv_to_the_grid(training):
    torch.manual_seed(0)
    projection = Projection(3)
    with torch.no_grad():  # statistics and affine parameters far from their defaults
        projection.bn.running_mean.uniform_(-2, 2)
        projection.bn.running_var.uniform_(0.1, 3)
        projection.bn.weight.uniform_(-2, 2)
        projection.bn.bias.uniform_(-1, 1)
    projection.train(training)
    x = torch.randn(2, 3, 17, 17)
    out = projection(x, (9, 9))
    assert out.shape == (2, 64, 9, 9) and projection.conv.bias is not None
    full = torch.nn.functional.batch_norm(
        projection.conv(x),
        None if training else projection.bn.running_mean,
        None if training else projection.bn.running_var,
        projection.bn.weight,
        projection.bn.bias,
        training=training,
    )
    torch.testing.assert_close(out[..., 0, 0], full[..., :2, :2].amax(dim=(-2, -1)))
    torch.testing.assert_close(out, torch.nn.functional.adaptive_max_pool2d(full, (9, 9)))
