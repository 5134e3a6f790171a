"""`difnet demo`: which DifNet it trains, and a smoke run of the whole pipeline (two training
processes, evaluation, figure, JSON) on a few tiny scenes."""

from __future__ import annotations

import json

import pytest

from difnet.demo import SELECTED_DIFNET, DemoConfig, run_demo
from difnet.models import load_model


def test_demo_trains_the_selected_difnet_unless_asked_for_the_papers():
    selected, paper = (
        DemoConfig().train_config("difnet"),
        DemoConfig(paper_difnet=True).train_config("difnet"),
    )
    assert (selected.shared_backbone, selected.aux_seed_weight) == (True, SELECTED_DIFNET["aux_seed_weight"])
    assert (paper.shared_backbone, paper.aux_seed_weight) == (False, 0.0)
    baseline = DemoConfig().train_config("simdeeplab")
    assert (baseline.shared_backbone, baseline.aux_seed_weight) == (False, 0.0)


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
    difnet = load_model(tmp_path / "difnet" / "last.pt")
    assert difnet.similarity_backbone is None  # the selected DifNet's shared backbone
    with pytest.raises(FileExistsError):
        run_demo(config)  # the earlier results are kept unless `overwrite`


def test_the_demos_difnet_is_the_one_the_camvid_records_selected():
    from benchmarks.camvid import RUNS, VARIANTS

    selected = json.loads((RUNS / "selection.json").read_text())["best"]["difnet"]
    model, options = VARIANTS[selected]
    assert model == "difnet"
    assert {k: v for k, v in options.items() if k != "head_init"} == SELECTED_DIFNET
    assert options["head_init"] == DemoConfig().train_config("difnet").head_init
