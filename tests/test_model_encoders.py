"""DifNet and Sim-DeepLab on named encoders: `depth` as the shorthand of a ResNet at output stride
8, different encoders per branch, encoders at output stride 16 and 32 (the diffusion grid, the
meaning of `diffusion_stride`, the walk's memory), and the encoder names in saved models."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from difnet import DifNet, SimDeepLab, load_model
from difnet.encoders import ENCODERS, SmallCNN, register_encoder
from difnet.models.serialization import read_checkpoint
from difnet.training import TrainConfig, save_model


def images(height: int, width: int, batch: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


def on_meta(model_class=DifNet, **options):
    """The model built on the meta device: its architecture and config, no weights to initialise."""
    with torch.device("meta"):
        return model_class(num_classes=3, **options)


class NodeByNode(TorchDispatchMode):
    """Records whether any op produces a tensor with two dimensions of `nodes` (an N x N matrix)."""

    def __init__(self, nodes: int) -> None:
        super().__init__()
        self.nodes, self.seen = nodes, False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for leaf in tree_flatten(out)[0]:
            if isinstance(leaf, torch.Tensor) and list(leaf.shape).count(self.nodes) >= 2:
                self.seen = True
        return out


# --- depth and encoder --------------------------------------------------------------------------


def test_depth_is_shorthand_for_the_resnet_at_output_stride_8():
    by_depth, by_name = on_meta(depth=50), on_meta(encoder="resnet50")
    assert by_depth.config == by_name.config
    entries = ("depth", "encoder", "similarity_encoder", "diffusion_stride")
    assert [by_depth.config[key] for key in entries] == [50, "resnet50", "resnet50", 8]
    assert on_meta().config == by_depth.config and on_meta(SimDeepLab).config["encoder"] == "resnet101"
    assert list(by_depth.state_dict()) == list(by_name.state_dict())
    assert on_meta(depth=50, encoder="resnet50").encoder == "resnet50"  # both, agreeing
    other = on_meta(encoder="resnet50_os16")
    assert other.depth is None and other.config["depth"] is None and other.diffusion_stride == 16


def test_depth_and_its_encoder_build_the_same_weights():
    models = []
    for options in ({"depth": 18}, {"encoder": "resnet18"}):
        torch.manual_seed(0)
        models.append(SimDeepLab(num_classes=3, **options))
    for (key, a), (other, b) in zip(*(m.state_dict().items() for m in models), strict=True):
        assert key == other and torch.equal(a, b), key


def test_simdeeplab_takes_an_encoder_at_any_output_stride():
    for name in ("resnet18_os32", "small_cnn"):
        model = SimDeepLab(encoder=name, num_classes=3).eval()
        with torch.no_grad():
            assert model(images(37, 45)).shape == (1, 3, 37, 45)
        assert model.config["encoder"] == name and model.depth is None


# --- different encoders per branch --------------------------------------------------------------


def test_the_branches_take_different_encoders():
    torch.manual_seed(0)
    model = DifNet(encoder="small_cnn", similarity_encoder="resnet18_os16", num_classes=3).eval()
    assert model.backbone_encoders() == {"seed": "small_cnn", "similarity": "resnet18_os16"}
    assert [p.conv.in_channels for p in model.projections] == [3, 64, 128, 256, 512]
    x = images(37, 45)
    with torch.no_grad():
        out = model.forward_intermediates(x)
        rows = model.transition_maps(x, [[0, 0], [4, 5]])
    assert out.logits.shape == (1, 3, 37, 45) and out.scores.shape[-2:] == (5, 6)  # small_cnn's stride 8
    assert len(out.walks) == 5 and all(y.shape == out.scores.shape for y in out.walks)
    assert rows.shape == (1, 5, 2, 5, 6)
    # the similarity encoder at 8 and 16 has no stride-2 stage: small_cnn's stride 2 is refused
    with pytest.raises(ValueError, match=r"diffusion_stride must be one of \(4, 8\) \(got 2\)"):
        on_meta(encoder="small_cnn", similarity_encoder="resnet18_os16", diffusion_stride=2)


def test_a_coarse_seed_diffuses_on_a_finer_similarity_encoders_stage():
    model = on_meta(encoder="resnet18_os32", similarity_encoder="small_cnn", diffusion_stride=8)
    assert model.head.grid_level == 3  # small_cnn's first stride-8 stage is level 3 (the image is 0)
    assert on_meta(encoder="resnet18_os32", similarity_encoder="small_cnn").diffusion_stride == 32


# --- output stride 16 and 32 --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("encoder", "diffusion_stride", "grid_level", "allowed"),
    [
        ("resnet18_os16", None, None, (4, 8, 16)),
        ("resnet18_os16", 16, None, (4, 8, 16)),
        ("resnet18_os16", 8, 2, (4, 8, 16)),  # layer2, the first stride-8 stage
        ("resnet18_os16", 4, 1, (4, 8, 16)),
        ("resnet18_os32", 16, 3, (4, 8, 16, 32)),
        ("resnet18", 4, 1, (4, 8)),
    ],
)
def test_diffusion_stride_names_the_similarity_stage_whose_grid_the_walks_run_on(
    encoder, diffusion_stride, grid_level, allowed
):
    model = on_meta(encoder=encoder, diffusion_stride=diffusion_stride)
    assert model.head.grid_level == grid_level
    assert model.config["diffusion_stride"] == (diffusion_stride or model.seed_backbone.strides[-1])
    for refused in (2, 64):
        with pytest.raises(ValueError, match=rf"diffusion_stride must be one of \({', '.join(map(str, allowed))}\) \(got {refused}\)"):  # fmt: skip
            on_meta(encoder=encoder, diffusion_stride=refused)


@pytest.mark.parametrize(("diffusion_stride", "grid"), [(None, (9, 11)), (8, (17, 21))])
def test_output_stride_16_walks_on_its_grid_without_an_n_by_n_tensor(diffusion_stride, grid):
    torch.manual_seed(0)
    model = DifNet(
        encoder="resnet18_os16", num_classes=3, shared_backbone=True, diffusion_stride=diffusion_stride
    )
    with torch.device("meta"):
        twin = DifNet(encoder="resnet18_os16", num_classes=3, shared_backbone=True,
                      diffusion_stride=diffusion_stride, walk="materialized")  # fmt: skip
    twin.load_state_dict(model.state_dict(), assign=True)
    x, nodes = images(129, 161), grid[0] * grid[1]
    for walker, holds_matrix in ((model, False), (twin, True)):
        with NodeByNode(nodes) as watch:
            out = walker.forward_intermediates(x)
            out.logits.sum().backward()
        assert watch.seen == holds_matrix, walker.head.cascade.walks[0].walk
        assert out.scores.shape[-2:] == (9, 11)  # ceil(129 / 16), ceil(161 / 16)
        assert all(tuple(y.shape[-2:]) == grid for y in out.walks) and out.logits.shape == (1, 3, 129, 161)


# --- saved models -------------------------------------------------------------------------------


def test_saved_folders_and_checkpoints_record_and_rebuild_the_encoders(tmp_path):
    torch.manual_seed(0)
    model = DifNet(encoder="small_cnn", similarity_encoder="resnet18_os32", num_classes=3).eval()
    folder = model.save_pretrained(tmp_path / "folder")
    saved = json.loads((folder / "config.json").read_text())["model"]
    assert (saved["encoder"], saved["similarity_encoder"], saved["depth"]) == (
        "small_cnn",
        "resnet18_os32",
        None,
    )
    checkpoint = save_model(tmp_path / "best.pt", model, TrainConfig(device="cpu"))
    assert read_checkpoint(checkpoint)["model_spec"] == model.config
    x = images(37, 45)
    with torch.no_grad():
        expected = model(x)
        for source in (folder, checkpoint):
            loaded = load_model(source)
            assert loaded.config == model.config
            torch.testing.assert_close(loaded(x), expected, rtol=0, atol=0)


def test_a_config_saved_before_the_encoders_were_named_loads_as_its_depths_resnet(tmp_path):
    model = SimDeepLab(depth=18, num_classes=3).eval()
    folder = model.save_pretrained(tmp_path / "old")
    config_file = folder / "config.json"
    saved = json.loads(config_file.read_text())
    del saved["model"]["encoder"]
    config_file.write_text(json.dumps(saved))
    loaded = SimDeepLab.from_pretrained(folder)
    assert loaded.config == model.config  # what resuming a run compares
    with torch.no_grad():
        torch.testing.assert_close(loaded(images(33, 33)), model(images(33, 33)), rtol=0, atol=0)


def test_a_model_on_a_users_encoder_loads_once_it_is_registered_again(tmp_path):
    register_encoder("my_cnn", SmallCNN)
    try:
        model = SimDeepLab(encoder="my_cnn", num_classes=3).eval()
        folder = model.save_pretrained(tmp_path / "mine")
    finally:
        del ENCODERS["my_cnn"]
    with pytest.raises(ValueError, match=r"encoder must be one of \[.*'small_cnn'.*\] \(got 'my_cnn'\)"):
        load_model(folder)
    register_encoder("my_cnn", SmallCNN)
    try:
        loaded = load_model(folder)
    finally:
        del ENCODERS["my_cnn"]
    with torch.no_grad():
        torch.testing.assert_close(loaded(images(37, 45)), model(images(37, 45)), rtol=0, atol=0)
