"""Saving trained models, and reading saved ones back, without the training package and without
knowing the model classes (`SegmentationModel.from_pretrained` builds its own class from what
`read_saved` returns; `difnet.models.loading.load_model` picks the class the config names).

Two forms, both read by `read_saved`:
* a `save_pretrained` folder, as HF transformers, timm and smp write them: `config.json` (the
  constructor arguments, class names, palette, preprocessing, difnet version) and
  `model.safetensors`; `from_pretrained` also takes a Hub repo id (`pip install difnet[hub]`);
* a `.pt` checkpoint written by `difnet train`, loaded with `weights_only=True`: plain data and
  tensors only, a file holding pickled code is refused.
Both hold the same metadata (`model_metadata`): class names, palette and the `Preprocessing`
(resize policy, mean/std) that every tool applies to the model's inputs.
Neither form makes loading fetch ImageNet backbone weights: the config holds the architecture,
not how it was initialised.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from difnet.encoders.registry import resnet_encoder
from difnet.models.finetune import FineTuneReport, load_for_fine_tuning
from difnet.models.preprocessing import Preprocessing
from difnet.models.pretrained import shape_mismatches
from difnet.version import __version__

FORMAT = "difnet-checkpoint"
FORMAT_VERSION = 1
REQUIRED_ENTRIES = ("model_spec", "model")
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
# config entries that change how a model is initialised, computes or what it predicts, not which
# weights it has
NOT_ARCHITECTURE = ("num_classes", "walk", "gradient_checkpointing", "head_init")
# state-dict prefixes that have moved, by model name: DifNet's diffusion stage became its `head`
MOVED_PREFIXES: dict[str, tuple[tuple[str, str], ...]] = {
    "difnet": (("importance.", "head.importance."), ("projections.", "head.projections."),
               ("cascade.", "head.cascade.")),
}  # fmt: skip
# config entries naming the encoders, by model name: a config written before them (with `depth`
# alone) built the ResNet of that depth at output stride 8 for each
ENCODER_ENTRIES: dict[str, tuple[str, ...]] = {
    "difnet": ("encoder", "similarity_encoder"),
    "simdeeplab": ("encoder",),
}


@dataclass(frozen=True)
class SavedModel:
    """A saved model before it is built: its architecture `config` (`{"name": ..., **arguments}`),
    its weights `state`, the `metadata` saved beside them (class names, palette, ...) and the file
    the weights came from (for error messages)."""

    config: dict[str, Any]
    state: Mapping[str, torch.Tensor]
    metadata: dict[str, Any]
    weights: Path


def save_pretrained(
    model: nn.Module,
    directory: str | Path,
    *,
    class_names: Sequence[str] | None = None,
    palette: Sequence[Sequence[int]] | None = None,
    preprocessing: Preprocessing | None = None,
) -> Path:
    """Write `model` to `directory` as `config.json` + `model.safetensors`; returns the folder.

    `class_names`, `palette` and `preprocessing` (how training resized and normalised images)
    default to the model's own attributes, so a loaded model saves again with its metadata.
    """
    from safetensors.torch import save_file

    model = unwrap(model)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = {"model": model.config, **model_metadata(model, class_names, palette, preprocessing),
              "difnet_version": __version__}  # fmt: skip
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    _replace_atomically(directory / WEIGHTS_NAME, lambda path: save_file(state, str(path)))
    _replace_atomically(
        directory / CONFIG_NAME, lambda path: path.write_text(json.dumps(config, indent=2) + "\n")
    )
    return directory


def model_metadata(
    model: nn.Module,
    class_names: Sequence[str] | None = None,
    palette: Sequence[Sequence[int]] | None = None,
    preprocessing: Preprocessing | None = None,
) -> dict[str, Any]:
    """The plain entries saved beside the weights in both forms: `class_names`, `palette` and
    `preprocessing`, each the given value or else the model's attribute."""
    class_names = class_names if class_names is not None else getattr(model, "class_names", None)
    palette = palette if palette is not None else getattr(model, "palette", None)
    preprocessing = preprocessing or getattr(model, "preprocessing", None) or Preprocessing()
    return {
        "class_names": list(class_names) if class_names is not None else None,
        "palette": [[int(v) for v in colour] for colour in palette] if palette is not None else None,
        "preprocessing": preprocessing.to_dict(),
    }


def read_saved(source: str | Path) -> SavedModel:
    """The saved model (on the CPU) in a `difnet train` checkpoint (`.pt`), a `save_pretrained`
    folder, or a Hub repo id such as `"user/difnet-voc"`."""
    path = Path(source)
    if path.is_dir():
        return _read_folder(path)
    if path.suffix == ".safetensors":
        raise ValueError(
            f"{path} holds bare weights; load the save_pretrained folder that holds it "
            f"({path.parent}, with its {CONFIG_NAME}) instead"
        )
    if path.exists() or path.suffix in (".pt", ".pth") or not _looks_like_repo_id(str(source)):
        return _read_checkpoint(path)
    return _read_folder(download_from_hub(str(source)))


def initialize_from(model: nn.Module, source: str | Path) -> FineTuneReport:
    """Load the weights of trained model `source` (checkpoint, folder or Hub repo id) into
    `model`, a new model of the same architecture for any number of classes: the start of a
    fine-tuning run (`difnet train --init-from`). Its class-dependent layers are re-initialised
    when the class counts differ; the report is also kept in `model.fine_tune_report`."""
    saved = read_saved(source)
    config, own = saved.config, unwrap(model).config
    differing = sorted(
        (
            key
            for key in set(config) | set(own)  # an entry older files lack had today's default
            if key not in NOT_ARCHITECTURE and config.get(key, own.get(key)) != own.get(key)
        ),
        key=lambda key: (key not in ("name", "depth", "encoder", "similarity_encoder"), key),
    )
    if differing:
        changes = "; ".join(f"{key} {config.get(key)!r} there, {own.get(key)!r} here" for key in differing)
        raise ValueError(
            f"cannot initialise from {source}: it holds another architecture ({changes}); "
            "build the same model (only the number of classes may differ)"
        )
    report = load_for_fine_tuning(unwrap(model), saved.state, str(saved.weights), config["num_classes"])
    unwrap(model).fine_tune_report = report
    return report


def load_seed_branch(model: nn.Module, source: str | Path) -> None:
    """Copy the seed branch (`model.seed_branch_modules()`, by state-dict prefix; in DifNet the seed
    backbone, score head and importance map) of the trained model `source` (checkpoint, folder or
    Hub repo id) into `model`, refused unless the source's config agrees with
    `model.seed_source_config()`: staged training's second stage starts from the first stage's
    seed. A separate similarity backbone starts from the source's similarity backbone, or from its
    seed backbone when the source shares one; the rest of `model` keeps its fresh initialisation."""
    saved, own = read_saved(source), unwrap(model)
    expected = own.seed_source_config()
    differing = [key for key, value in expected.items() if saved.config.get(key) != value]
    if differing:
        changes = "; ".join(f"{key} {saved.config.get(key)!r} there, {expected[key]!r} here"
                            for key in differing)  # fmt: skip
        raise ValueError(f"cannot take the seed branch of {source}: it holds another seed branch ({changes})")

    def part(prefix: str) -> dict[str, torch.Tensor]:
        return {
            key[len(prefix) + 1 :]: value
            for key, value in saved.state.items()
            if key.startswith(prefix + ".")
        }

    for prefix, module in own.seed_branch_modules().items():
        load_state(module, part(prefix), saved.weights)
    if getattr(own, "similarity_backbone", None) is not None:
        load_state(
            own.similarity_backbone, part("similarity_backbone") or part("seed_backbone"), saved.weights
        )


def saved_preprocessing(metadata: Mapping[str, Any]) -> Preprocessing:
    """The `Preprocessing` saved beside a model; for files written before it was, the
    normalisation of a folder or the recipe of a checkpoint (CamVid's `image_size` resized)."""
    if metadata.get("preprocessing") is not None:
        return Preprocessing.from_dict(metadata["preprocessing"])
    if metadata.get("normalization") is not None:
        return Preprocessing(**metadata["normalization"])
    recipe = metadata.get("config") or {}
    size = recipe.get("image_size") if recipe.get("dataset") == "camvid" else None
    if recipe.get("mean"):
        return Preprocessing(size and tuple(size), recipe["mean"], recipe["std"])
    return Preprocessing(size and tuple(size))


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A difnet checkpoint's contents, loaded with `weights_only=True` and checked for its format."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"checkpoint {path} is a directory; pass the .pt file inside it")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        refused = refused_global(error)
        if refused is not None:
            raise ValueError(
                f"checkpoint {path} holds pickled objects other than tensors and plain data, which "
                f"are refused (weights_only=True): {refused}"
            ) from error
        raise ValueError(
            f"checkpoint {path} is not a readable torch file (truncated or not a checkpoint): "
            "its bytes are not what torch.save writes"
        ) from error
    except Exception as error:  # RuntimeError, EOFError, KeyError, ... on non-torch bytes
        raise ValueError(
            f"checkpoint {path} is not a readable torch file (truncated or not a checkpoint): "
            f"{type(error).__name__}: {error}"
        ) from error
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(
            f"{path} is not a difnet checkpoint (no format={FORMAT!r} entry); "
            "for torchvision backbone weights use --pretrained-backbone"
        )
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(
            f"checkpoint {path} has format version {payload['format_version']}, newer than this "
            f"difnet reads ({FORMAT_VERSION}); upgrade difnet"
        )
    missing = [key for key in REQUIRED_ENTRIES if key not in payload]
    if missing:
        raise ValueError(f"checkpoint {path} lacks the entries {missing}; it is damaged")
    payload["model_spec"] = current_config(payload["model_spec"])
    payload["model"] = current_keys(payload["model"], payload["model_spec"].get("name"))
    return payload


def current_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A saved model config with the encoder entries (`ENCODER_ENTRIES`) that a config written
    before them lacks filled in from its `depth`, so that it compares equal to the config of the
    model it builds (resuming checks that); a current config stays as it is."""
    name = config.get("name")
    missing = (
        [key for key in ENCODER_ENTRIES.get(name, ()) if key not in config] if isinstance(name, str) else []
    )
    if not missing or config.get("depth") is None:
        return dict(config)
    return {**config, **dict.fromkeys(missing, resnet_encoder(config["depth"]))}


def current_keys(state: Mapping[str, torch.Tensor], name: object) -> dict[str, torch.Tensor]:
    """`state` of a model named `name` with the keys of files written before a module moved
    (`MOVED_PREFIXES`) renamed to where this code keeps them; current keys stay as they are."""
    moved = MOVED_PREFIXES.get(name, ()) if isinstance(name, str) else ()
    return {_moved(key, moved): value for key, value in state.items()}


def _moved(key: str, moved: Sequence[tuple[str, str]]) -> str:
    return next((new + key[len(old) :] for old, new in moved if key.startswith(old)), key)


def refused_global(error: pickle.UnpicklingError) -> str | None:
    """The line of a weights-only load error naming the Python object (code) it refused to
    import, or None when the bytes were simply not a pickle torch writes."""
    return next((line.strip() for line in str(error).splitlines() if "GLOBAL" in line), None)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel (or torch.compile) wrapper."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model


def load_state(model: nn.Module, state: Mapping[str, torch.Tensor], path: str | Path) -> None:
    """`model.load_state_dict(state)`, with a message naming the file and the keys that differ."""
    wrong = shape_mismatches(unwrap(model), state)
    if wrong:
        raise ValueError(f"checkpoint {path} does not fit the model: " + "; ".join(wrong[:5]))
    result = unwrap(model).load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"checkpoint {path} does not fit the model: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )


# --- the Hub (optional: pip install difnet[hub]) ------------------------------------------------


def download_from_hub(repo_id: str, revision: str | None = None) -> Path:
    """The local folder of Hub repo `repo_id` (from the cache when `HF_HUB_OFFLINE=1`)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError as error:
        raise ImportError(
            f"{repo_id!r} is neither a local path nor loadable without huggingface_hub; "
            "install it with `pip install difnet[hub]`"
        ) from error
    return Path(snapshot_download(repo_id, revision=revision, allow_patterns=[CONFIG_NAME, WEIGHTS_NAME]))


def push_to_hub(model: nn.Module, repo_id: str, *, private: bool = False, **metadata: Any) -> str:
    """Upload `model` (`save_pretrained` with `metadata`) to Hub repo `repo_id`; returns its URL."""
    import tempfile

    try:
        from huggingface_hub import HfApi
    except ImportError as error:
        raise ImportError("push_to_hub needs huggingface_hub: pip install difnet[hub]") from error
    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        save_pretrained(model, folder, **metadata)
        return str(api.upload_folder(repo_id=repo_id, folder_path=folder))


# --- helpers ------------------------------------------------------------------------------------


def _read_folder(directory: Path) -> SavedModel:
    """A save_pretrained folder's model config, weights and other entries."""
    from safetensors.torch import load_file

    config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    for required in (config_path, weights_path):
        if not required.is_file():
            raise FileNotFoundError(
                f"{directory} is not a save_pretrained folder: {required.name} is missing "
                f"(expected {CONFIG_NAME} and {WEIGHTS_NAME})"
            )
    try:
        saved = json.loads(config_path.read_text())
        config = saved["model"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"{config_path} is not a difnet config (no 'model' entry): {error}") from error
    metadata = {key: value for key, value in saved.items() if key != "model"}
    state = current_keys(load_file(str(weights_path)), config.get("name"))
    return SavedModel(current_config(config), state, metadata, weights_path)


def _read_checkpoint(path: Path) -> SavedModel:
    """A `.pt` checkpoint's model config, weights and other entries."""
    payload = read_checkpoint(path)
    metadata = {key: value for key, value in payload.items() if key != "model"}
    return SavedModel(dict(payload["model_spec"]), payload["model"], metadata, path)


def _looks_like_repo_id(text: str) -> bool:
    """`owner/name` with no other path parts: what the Hub calls a repo id."""
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not text.startswith((".", "~"))


def _replace_atomically(path: Path, write: Any) -> None:
    """Call `write(temporary)` beside `path`, then rename it over `path`."""
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
