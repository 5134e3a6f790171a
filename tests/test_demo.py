"""`difnet demo`: which DifNet it trains, and a smoke run of the whole pipeline (two training
processes, evaluation, figure, JSON) on a few tiny scenes."""

from __future__ import annotations

import json

import pytest
import torch

from difnet.demo import SEED_STAGE, WALK_STAGE, DemoConfig, run_demo
from difnet.models import load_model


def test_demo_trains_the_staged_difnet_unless_asked_for_the_papers(tmp_path):
    config = DemoConfig(output_dir=tmp_path)
    first, second = config.train_config("difnet"), config.walk_config(tmp_path / "seed.pt")
    assert (first.kernel, first.aux_seed_weight, first.shared_backbone) == ("identity", 0.4, True)
    assert first.max_steps_per_epoch * first.epochs >= config.steps
    assert (second.kernel, second.kernel_radius, second.seed_from) == (
        "distance",
        1,
        str(tmp_path / "seed.pt"),
    )
    assert second.max_steps_per_epoch == config.walk_steps and second.epochs == 1
    assert first.output_dir != second.output_dir == str(tmp_path / "difnet")
    paper = DemoConfig(paper_difnet=True).train_config("difnet")
    assert (paper.shared_backbone, paper.aux_seed_weight, paper.kernel) == (False, 0.0, "dot")
    baseline = config.train_config("simdeeplab")
    assert (baseline.shared_backbone, baseline.aux_seed_weight) == (False, 0.0)
    with pytest.raises(ValueError, match="--walk-steps must be at least 1"):
        DemoConfig(walk_steps=0).check()


def test_both_difnets_get_the_baselines_recipe_otherwise():
    recipes = [DemoConfig(paper_difnet=flag).train_config(model) for flag in (False, True)
               for model in ("difnet", "simdeeplab")]  # fmt: skip
    shared = {"lr", "batch_size", "epochs", "max_steps_per_epoch", "crop_size", "seed", "head_init"}
    for field in shared:
        assert len({getattr(recipe, field) for recipe in recipes}) == 1, field


def test_quick_demo_writes_table_figure_and_results(tmp_path):
    config = DemoConfig.quick(output_dir=tmp_path, steps=2, val_images=2)
    result = run_demo(config)
    assert result.figure_path.stat().st_size > 0
    saved = json.loads(result.results_path.read_text())
    assert set(saved["models"]) == {"Sim-DeepLab-18", "DifNet-18"}
    assert saved["config"]["paper_difnet"] is False
    table = result.format_table()
    assert "**mIoU**" in table and config.difnet_description in table
    difnet = saved["models"]["DifNet-18"]
    gain = 100 * (difnet["metrics"]["miou"] - difnet["seed_miou"])
    assert "DifNet-18 walk gain (its output minus its own seed): " in table and f"{gain:+.1f} mIoU" in table
    difnet = load_model(tmp_path / "difnet" / "last.pt")
    assert difnet.similarity_backbone is None and difnet.kernel.similarity == "distance"  # the second stage's
    seed = load_model(tmp_path / "difnet-seed" / "last.pt")
    for name, weight in seed.seed_backbone.state_dict().items():  # the second stage kept the seed frozen
        assert torch.equal(weight, difnet.seed_backbone.state_dict()[name]), name
    with pytest.raises(FileExistsError):
        run_demo(config)  # the earlier results are kept unless `overwrite`


def test_the_demos_difnet_is_the_staged_one_of_the_camvid_verdict():
    from benchmarks.camvid import VARIANTS
    from benchmarks.camvid_variants import STAGE_ONE

    for variant, options in ((STAGE_ONE, SEED_STAGE), ("walk-dist-r1-guided", WALK_STAGE)):
        model, recipe = VARIANTS[variant]
        assert model == "difnet"
        assert {k: v for k, v in recipe.items() if k != "head_init"} == options, variant
        assert recipe["head_init"] == DemoConfig().train_config("difnet").head_init
