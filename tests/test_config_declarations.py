"""The training recipe's jobs declared where they belong: each model declares the options it takes
(difnet.models.options) and each dataset the settings it is built with (difnet.data.recipe); the
recipe builds and refuses from those declarations, and each field's description reads as its value
does, the command line's help derived from it."""

from __future__ import annotations

import inspect
from dataclasses import fields, replace

import pytest
import torch

from difnet.data import DATASETS, FILE_DATASETS, FolderDataset, SyntheticShapes
from difnet.data.recipe import DATASET_OPTIONS, dataset_options
from difnet.models import MODELS, build_model
from difnet.models.options import MODEL_OPTIONS, SHARED_ARGUMENTS, ModelOptions, foreign_options
from difnet.training import TrainConfig
from difnet.training.config import DIFNET_ONLY
from difnet.training.settings import declared, option_help

SETTINGS = {f.name for f in fields(TrainConfig)}


@pytest.mark.parametrize("name", list(MODELS))
def test_each_model_declares_every_setting_its_constructor_takes(name):
    declaration = MODEL_OPTIONS[name]
    parameters = set(inspect.signature(MODELS[name]).parameters) - {"num_classes"}
    assert set(declaration.arguments) <= parameters  # each declared argument exists
    assert parameters & SETTINGS <= set(declaration.arguments)  # no setting it takes goes unpassed
    assert set(declaration.options) <= SETTINGS


def test_every_model_and_dataset_has_a_declaration():
    assert set(MODEL_OPTIONS) == set(MODELS) and set(DATASET_OPTIONS) == set(DATASETS)


def test_the_model_arguments_are_the_declared_ones():
    config = TrainConfig(model="simdeeplab", depth=18, device="cpu")
    arguments = config.model_arguments(4)
    assert set(arguments) == {"name", "num_classes", *SHARED_ARGUMENTS}
    with torch.device("meta"):
        assert build_model(**arguments).config["depth"] == 18
    assert set(TrainConfig(device="cpu").model_arguments(4)) == {"name", "num_classes",
                                                                 *MODEL_OPTIONS["difnet"].arguments}  # fmt: skip


def test_refusing_an_option_follows_the_models_declaration(monkeypatch):
    assert DIFNET_ONLY == foreign_options("simdeeplab") and "depth" not in DIFNET_ONLY
    with pytest.raises(ValueError, match="aux_seed_weight=0.4: options of DifNet"):
        TrainConfig(model="simdeeplab", aux_seed_weight=0.4, device="cpu")
    # a model that declares an option takes it: no list elsewhere to keep in step
    taking = replace(MODEL_OPTIONS["simdeeplab"], training=("aux_seed_weight",))
    monkeypatch.setitem(MODEL_OPTIONS, "simdeeplab", taking)
    assert TrainConfig(model="simdeeplab", aux_seed_weight=0.4, device="cpu").aux_seed_weight == 0.4
    with pytest.raises(
        ValueError, match="^shared_backbone=True: options of DifNet, but the model is 'simdeeplab'"
    ):
        TrainConfig(model="simdeeplab", shared_backbone=True, device="cpu")


def test_an_option_two_models_take_is_refused_naming_both(monkeypatch):
    for registered in set(MODEL_OPTIONS) - {"difnet", "simdeeplab"}:  # smp's, where a test registered them
        monkeypatch.delitem(MODEL_OPTIONS, registered)
    monkeypatch.setitem(MODEL_OPTIONS, "other", ModelOptions("Other", arguments=("kernel",)))
    with pytest.raises(ValueError, match="^kernel='distance': options of DifNet and Other, but the model"):
        TrainConfig(model="simdeeplab", kernel="distance", device="cpu")


@pytest.mark.parametrize("dataset", DATASETS)
def test_each_dataset_is_built_with_its_declared_keywords(dataset):
    builder = {"synthetic": SyntheticShapes, "folder": FolderDataset}.get(dataset) or FILE_DATASETS[dataset]
    keywords = set(DATASET_OPTIONS[dataset].keywords.values())
    assert keywords <= set(inspect.signature(builder).parameters)
    plain = TrainConfig(dataset=dataset, num_classes=3, device="cpu")
    sized = TrainConfig(dataset=dataset, num_classes=3, image_size=(40, 48), device="cpu")
    expected = {
        "synthetic": (
            {"num_classes": 3, "size": 64, "seed": 0},
            {"num_classes": 3, "size": (40, 48), "seed": 0},
        ),
        "folder": ({"num_classes": 3, "channels": 3}, {"num_classes": 3, "channels": 3, "resize": (40, 48)}),
    }.get(dataset, ({}, {"resize": (40, 48)}))
    assert (dataset_options(plain), dataset_options(sized)) == expected
    assert dataset_options(TrainConfig(dataset="synthetic", device="cpu"))["num_classes"] == 5


def test_descriptions_read_as_the_value_and_a_default_on_flag_says_it_turns_it_off():
    by_name = {item.name: item for item in declared(TrainConfig)}
    defaults = TrainConfig(device="cpu")
    assert by_name["aspp"].setting.description.startswith("DifNet: an ASPP seed head")
    assert by_name["flip"].setting.description == "random horizontal flips of the training crops"
    for name in ("aspp", "flip", "progress"):
        item = by_name[name]
        assert getattr(defaults, name) is True and not item.setting.description.startswith("no ")
        assert option_help(item, True).startswith(f"turn off: {item.setting.description}")
    assert option_help(by_name["shared_backbone"], False) == by_name["shared_backbone"].setting.description
    assert option_help(by_name["epochs"], 200) == "passes over the training split [may change on --resume]"
