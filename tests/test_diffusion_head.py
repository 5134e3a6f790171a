"""`DiffusionHead`: DifNet's diffusion stage on any model's scores and features, and the loading
of checkpoints written before the stage moved into it."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch_threads import single_thread

from difnet import DiffusionHead, DifNet, load_model
from difnet.models import dilated_resnet
from difnet.models.serialization import (
    FORMAT,
    FORMAT_VERSION,
    load_seed_branch,
    read_checkpoint,
    save_pretrained,
)

OLD_DIFNET = Path(__file__).parent / "fixtures" / "old_difnet.pt"


def old_checkpoint(tmp_path: Path) -> tuple[Path, dict]:
    """A checkpoint as the code of 8cf85fd wrote it (old keys), and the fixture it came from."""
    fixture = torch.load(OLD_DIFNET, weights_only=True)
    torch.manual_seed(0)  # the backbones as make_old_difnet.py drew them
    state = dict(fixture["state"])
    for prefix in ("seed_backbone.", "similarity_backbone."):
        state.update({prefix + key: value for key, value in dilated_resnet(18).state_dict().items()})
    path = tmp_path / "old.pt"
    torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, "model_spec": fixture["config"],
                "model": state}, path)  # fmt: skip
    return path, fixture


def test_checkpoint_of_the_parent_code_loads_and_computes_its_logits(tmp_path):
    path, fixture = old_checkpoint(tmp_path)
    assert any(key.startswith("cascade.") for key in fixture["state"])  # the old keys
    resumed = read_checkpoint(path)["model"]  # what resuming a run loads
    assert set(resumed) == set(
        DifNet(**{k: v for k, v in fixture["config"].items() if k != "name"}).state_dict()
    )
    model = load_model(path)
    # one thread, as the fixture was written: other thread counts sum in another order; other CPUs'
    # fused attention kernels sum in float32 in another order too (2e-4 apart on an AMD EPYC)
    with torch.no_grad(), single_thread():
        torch.testing.assert_close(model(fixture["images"]), fixture["logits"], rtol=0, atol=1e-3)


def test_folder_of_the_parent_code_loads_and_seed_branch_is_taken(tmp_path):
    path, fixture = old_checkpoint(tmp_path)
    payload = torch.load(path, weights_only=True)  # rewrite it as an old save_pretrained folder
    folder = save_pretrained(load_model(path), tmp_path / "folder")
    save_file({k: v.contiguous() for k, v in payload["model"].items()}, str(folder / "model.safetensors"))
    model = DifNet.from_pretrained(folder)
    # one thread, as the fixture was written: other thread counts sum in another order; other CPUs'
    # fused attention kernels sum in float32 in another order too (2e-4 apart on an AMD EPYC)
    with torch.no_grad(), single_thread():
        torch.testing.assert_close(model(fixture["images"]), fixture["logits"], rtol=0, atol=1e-3)
    fresh = DifNet(**{k: v for k, v in fixture["config"].items() if k != "name"})
    load_seed_branch(fresh, path)
    for key, value in fixture["state"].items():
        if key.startswith("importance."):
            torch.testing.assert_close(fresh.state_dict()["head." + key], value, rtol=0, atol=0)


class TinyCNN(torch.nn.Module):
    """A model the library does not define: scores at stride 4, features at strides 2 and 4."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.body = torch.nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.scores = torch.nn.Conv2d(16, classes, 1)

    def forward(self, images):
        stem = self.stem(images).relu()
        body = self.body(stem).relu()
        return self.scores(body), [images, stem, body]


def test_head_diffuses_any_models_scores_one_walk_per_level():
    cnn, head = TinyCNN(), DiffusionHead([3, 8, 16], num_classes=3)
    images = torch.randn(2, 3, 29, 35)
    scores, levels = cnn(images)
    out = head(scores, levels)
    assert out.logits.shape == (2, 3, 29, 35)
    assert len(out.walks) == 3 and out.mu.shape == (3,)
    assert all(walk.shape == scores.shape for walk in out.walks)  # the scores' grid
    out = DiffusionHead([16, 3], num_classes=3)(scores, [body := levels[2], images], output_size=(10, 12))
    assert len(out.walks) == 2 and out.logits.shape == (2, 3, 10, 12) and body.shape[1] == 16
    out.logits.sum().backward()


def test_grid_level_diffuses_on_that_levels_finer_grid():
    """An encoder at output stride 16: `grid_level` naming its stride-8 stage diffuses there."""
    scores = torch.randn(1, 3, 3, 4)  # stride 16 of 48x64
    levels = [torch.randn(1, 5, 6, 8), torch.randn(1, 7, 3, 4)]  # strides 8 and 16
    out = DiffusionHead([5, 7], num_classes=3, grid_level=0)(scores, levels)
    assert [tuple(walk.shape[-2:]) for walk in out.walks] == [(6, 8), (6, 8)]
    assert tuple(out.seed.shape[-2:]) == (3, 4)
    out = DiffusionHead([5, 7], num_classes=3, grid_level=1)(scores, levels)
    assert tuple(out.walks[-1].shape[-2:]) == (3, 4)


@pytest.mark.parametrize(
    ("arguments", "inputs", "message"),
    [
        ({"grid_level": 2}, None, r"grid_level must be None or a level index in \[0, 2\) \(got 2\)"),
        ({"level_channels": []}, None, r"level_channels must list at least one channel count"),
        ({"walk": "dense"}, None, r"walk must be one of"),
        ({}, ((1, 4, 3, 3), [(1, 5, 6, 6), (1, 7, 3, 3)]), r"scores must be \[B, 3, h, w\] \(got shape \(1, 4, 3, 3\)\)"),
        ({}, ((1, 3, 3, 3), [(1, 5, 6, 6)]), r"expected 2 levels, one per walk \(got 1\)"),
        ({}, ((1, 3, 3, 3), [(1, 5, 6, 6), (1, 8, 3, 3)]), r"levels\[1\] must be \[1, 7, H, W\] \(got shape \(1, 8, 3, 3\)\)"),
    ],
)  # fmt: skip
def test_head_refuses_bad_arguments_and_inputs(arguments, inputs, message):
    with pytest.raises(ValueError, match=message):
        head = DiffusionHead(**{"level_channels": [5, 7], "num_classes": 3, **arguments})
        scores, levels = inputs
        head(torch.randn(scores), [torch.randn(shape) for shape in levels])


def test_head_saves_and_loads_on_its_own_config(tmp_path):
    head = DiffusionHead([3, 8], num_classes=2, kernel="distance", kernel_radius=2, learn_temperature=True)
    with torch.no_grad():
        head.cascade.walks[1].raw_mu.fill_(0.7)
    head.eval()
    loaded = DiffusionHead.from_pretrained(head.save_pretrained(tmp_path / "head"))
    assert loaded.config == head.config
    scores, levels = torch.randn(1, 2, 5, 6), [torch.randn(1, 3, 20, 24), torch.randn(1, 8, 5, 6)]
    torch.testing.assert_close(loaded(scores, levels).logits, head(scores, levels).logits, rtol=0, atol=0)
    with pytest.raises(TypeError, match="not a diffusion_head"):
        DiffusionHead.from_pretrained(save_pretrained(DifNet(depth=18, num_classes=2), tmp_path / "difnet"))


def test_difnet_is_built_on_the_head():
    model = DifNet(depth=18, num_classes=3, diffusion_stride=4)
    assert model.projections is model.head.projections and model.cascade is model.head.cascade
    assert model.head.grid_level == 1
    assert not any(key.startswith(("cascade.", "projections.", "importance.")) for key in model.state_dict())
