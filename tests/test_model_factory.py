"""Building models by name, counting parameters, and the `python -m difnet.models` table."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from difnet.encoders import BUILT_IN_ENCODERS
from difnet.models import DifNet, SimDeepLab, build_model, count_parameters, parameter_counts


def test_build_model_picks_the_class_and_passes_options():
    model = build_model("DifNet", 18, 7, aspp=False, walk="materialized")
    assert isinstance(model, DifNet) and model.num_classes == 7 and model.depth == 18
    assert isinstance(model.classifier, torch.nn.Conv2d)
    assert all(walk.walk == "materialized" for walk in model.cascade.walks)
    assert isinstance(build_model("simdeeplab", 18, 3), SimDeepLab)


def test_build_model_refuses_unknown_names():
    with pytest.raises(
        ValueError, match=r"model name must be one of \('difnet', 'simdeeplab'[^)]*\) \(got 'unet'\)"
    ):
        build_model("unet", 18, 3)


def test_count_parameters_counts_scalars():
    layer = torch.nn.Linear(3, 4)
    layer.bias.requires_grad_(False)
    assert count_parameters(layer) == 16
    assert count_parameters(layer, trainable_only=True) == 12


def test_difnet_has_two_backbones_and_small_heads():
    counts = parameter_counts(depths=(18, 50, 101))
    torchvision_resnet18 = 11_689_512 - (512 * 1000 + 1000)  # without fc
    aspp18 = 4 * (512 * 9 * 21 + 21)
    assert counts["simdeeplab"][18] == torchvision_resnet18 + aspp18
    assert 2 * torchvision_resnet18 < counts["difnet"][18] < 2 * torchvision_resnet18 + 2 * aspp18
    # Sec. 5: DifNet-50 has about the parameters of Sim-DeepLab-101
    assert abs(counts["difnet"][50] / counts["simdeeplab"][101] - 1) < 0.15


def test_module_entry_point_prints_the_table():
    result = subprocess.run(
        [sys.executable, "-m", "difnet.models", "--num-classes", "21"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    models, encoders = (table.splitlines() for table in result.stdout.strip().split("\n\n"))
    assert models[0] == "| depth | difnet | simdeeplab |"
    assert [line.split("|")[1].strip() for line in models[2:]] == ["18", "34", "50", "101", "152"]
    assert encoders[0] == "| encoder | params (M) | out_channels | strides | ImageNet weights |"
    rows = {line.split("|")[1].strip(): line for line in encoders[2:]}
    assert set(rows) == set(BUILT_IN_ENCODERS)
    assert rows["resnet18_os32"] == (
        "| resnet18_os32 | 11.18 | [64, 128, 256, 512] | [4, 8, 16, 32] | ResNet-18 |"
    )
    assert rows["small_cnn"] == "| small_cnn | 0.02 | [8, 16, 32, 32] | [2, 4, 8, 8] | none |"
