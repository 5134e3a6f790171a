"""What every difnet model shares: input checks, its constructor arguments as a JSON `config`,
learning-rate groups, ImageNet backbone loading, and the fine-tuning controls (frozen backbones,
BN layers kept in eval mode)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from torch import Tensor, nn

from difnet.encoders.registry import IMAGENET_DEPTHS, build_encoder, check_encoder, shorthand_depth
from difnet.encoders.timm import is_timm_encoder
from difnet.models.finetune import FineTuneReport, load_for_fine_tuning
from difnet.models.parameters import split_backbone_head
from difnet.models.preprocessing import Preprocessing
from difnet.models.pretrained import IMAGENET, LoadReport, PretrainedSource, load_pretrained_backbones
from difnet.models.serialization import (
    SavedModel,
    load_state,
    push_to_hub,
    read_saved,
    save_pretrained,
    saved_preprocessing,
)
from difnet.models.validation import check_images, check_num_classes, check_positive_int


class SegmentationModel(nn.Module):
    """Base of `DifNet` and `SimDeepLab`: `model(images [B, C, H, W]) -> logits [B, K, H, W]`.

    A subclass passes its seed `encoder`'s name (`difnet.encoders.model_encoder` of its `depth`
    and `encoder` options) and its other architecture arguments to `__init__` (they become
    `config`, from which `build_model(**config)` rebuilds it), builds its encoders with
    `new_backbone`, names them in `backbones` (and their encoders in `backbone_encoders`), then
    calls `load_pretrained_backbone`. `depth` is the ResNet depth when the encoder is
    `"resnet{depth}"` (the shorthand), else None.

    What a trained model carries beside its weights (set by `difnet.load_model`, saved by
    `save_pretrained`): `class_names` and `palette` (None when unknown) and `preprocessing`, the
    resize policy and normalisation its training used (`Preprocessing`; ImageNet's mean and std,
    no resize, for a new model). `fine_tune_report` lists the layers re-initialised when it was
    loaded for another number of classes (`from_pretrained(..., num_classes=K)`).
    """

    name: ClassVar[str]  # the registry name: "difnet" or "simdeeplab"

    def __init__(
        self,
        *,
        encoder: str,
        num_classes: int,
        in_channels: int = 3,
        gradient_checkpointing: bool = False,
        **architecture: Any,
    ) -> None:
        super().__init__()
        self.encoder = check_encoder(encoder)
        self.depth = shorthand_depth(encoder)
        self.num_classes = check_num_classes(num_classes)
        self.in_channels = check_positive_int(in_channels, "in_channels")
        self.gradient_checkpointing = bool(gradient_checkpointing)
        self.norm_eval = False
        self._architecture = {"depth": self.depth, "encoder": encoder, "num_classes": num_classes,
                              "in_channels": in_channels, **architecture}  # fmt: skip
        self.backbone_load_reports: dict[str, LoadReport] = {}
        self.class_names: list[str] | None = None
        self.palette: list[tuple[int, int, int]] | None = None
        self.preprocessing = Preprocessing()
        self.fine_tune_report: FineTuneReport | None = None

    @property
    def config(self) -> dict[str, Any]:
        """The constructor arguments that rebuild this architecture (`build_model(**config)`),
        JSON-serialisable; how it was initialised (pretrained weights) is not part of it."""
        return {"name": self.name, **self._architecture}

    def new_backbone(self, encoder: str) -> nn.Module:
        """The registered `encoder` with this model's input channels and checkpointing."""
        return build_encoder(
            encoder, in_channels=self.in_channels, gradient_checkpointing=self.gradient_checkpointing
        )

    def backbones(self) -> dict[str, nn.Module]:
        """The model's encoders by role (the "backbone" learning-rate group)."""
        raise NotImplementedError

    def backbone_encoders(self) -> dict[str, str]:
        """The registered name of each of `backbones()`, by the same roles."""
        raise NotImplementedError

    def walk_module(self) -> nn.Module | None:
        """The module whose parameters form the "walk" learning-rate group, if any."""
        return None

    def load_pretrained_backbone(self, source: PretrainedSource | bool | None) -> None:
        """Initialise every backbone from ImageNet weights: a ResNet from a torchvision checkpoint
        (path, or "imagenet" / True: downloaded), its first convolution adapted to `in_channels`; a
        timm (`tu-`) encoder from timm's own ("imagenet" / True: fetched by timm). Reports go to
        `backbone_load_reports`. Refused for an encoder without such weights, or a file for timm's."""
        if source is None or source is False:
            return
        encoders = self.backbone_encoders()
        timm_roles = [role for role, name in encoders.items() if is_timm_encoder(name)]
        lacking = [f"{role} encoder {name!r}" for role, name in encoders.items()
                   if name not in IMAGENET_DEPTHS and role not in timm_roles]  # fmt: skip
        if lacking:
            raise ValueError(
                f"pretrained_backbone={str(source)!r} loads torchvision's ImageNet ResNet weights, which "
                f"the {' and the '.join(lacking)} cannot take (only the resnet* encoders do); build it "
                "without pretrained_backbone, or load its weights in its registered builder"
            )
        imagenet = source is True or (isinstance(source, str) and source.lower() == IMAGENET)
        if timm_roles and not imagenet:
            raise ValueError(
                f"pretrained_backbone={str(source)!r}: the {' and the '.join(timm_roles)} encoder "
                f"{encoders[timm_roles[0]]!r} takes timm's own weights, pretrained_backbone=True, not a file"
            )
        backbones, reports = self.backbones(), {}
        for role in timm_roles:
            reports[role] = LoadReport(backbones[role].load_timm_weights(), (), ())
        depths = {role: IMAGENET_DEPTHS[name] for role, name in encoders.items() if role not in timm_roles}
        for depth in dict.fromkeys(depths.values()):
            chosen = {role: backbones[role] for role, found in depths.items() if found == depth}
            file = IMAGENET if source is True else source
            reports |= load_pretrained_backbones(chosen, file, depth, self.in_channels)
        self.backbone_load_reports = reports

    def check_images(self, images: Tensor) -> None:
        """Raise a clear error unless `images` fit this model (shape, channels, dtype, device)."""
        check_images(images, self)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """`"backbone"`: the ResNets; `"head"`: everything else but the walks; `"walk"` (DifNet):
        mu_t, beta_t (and temperatures) and all the guided walk's weights. The recipe gives each group
        its learning-rate factor."""
        return split_backbone_head(self, self.backbones().values(), walk=self.walk_module())

    # --- saving and sharing (difnet.models.serialization) -----------------------------------

    def save_pretrained(self, directory: str | Path, **metadata: Any) -> Path:
        """Write `config.json` + `model.safetensors` to `directory`; `metadata`: `class_names`,
        `palette`, `preprocessing` (default: the model's own; see
        `difnet.models.serialization.save_pretrained`)."""
        return save_pretrained(self, directory, **metadata)

    @classmethod
    def from_pretrained(cls, source: str | Path, num_classes: int | None = None) -> SegmentationModel:
        """The model saved in a `save_pretrained` folder, a `.pt` checkpoint or a Hub repo id;
        refused if it is not a `cls` (use `difnet.load_model` for any kind). With `num_classes`
        other than the saved one (fine-tuning), every weight whose shape fits is loaded and the
        class-dependent layers are re-initialised (listed in `fine_tune_report`)."""
        saved = read_saved(source)
        found = SegmentationModel._class_named(saved.config.get("name"))
        if found is None or not issubclass(found, cls):
            held = found.__name__ if found else f"model named {saved.config.get('name')!r}"
            raise TypeError(f"{source} holds a {held}, not a {cls.__name__}")
        return found.from_saved(saved, num_classes)

    @classmethod
    def from_saved(cls, saved: SavedModel, num_classes: int | None = None) -> SegmentationModel:
        """This class built from a saved config, with the saved weights, class names, palette and
        preprocessing (in eval mode); for another `num_classes`, loaded for fine-tuning."""
        arguments = {key: value for key, value in saved.config.items() if key != "name"}
        saved_classes = arguments["num_classes"]
        if num_classes is None or num_classes == saved_classes:
            model = cls(**arguments)
            load_state(model, saved.state, saved.weights)
            model.class_names = saved.metadata.get("class_names")
            palette = saved.metadata.get("palette")
            model.palette = [tuple(colour) for colour in palette] if palette is not None else None
        else:
            model = cls(**{**arguments, "num_classes": num_classes})
            model.fine_tune_report = load_for_fine_tuning(
                model, saved.state, str(saved.weights), saved_classes
            )
        model.preprocessing = saved_preprocessing(saved.metadata)
        return model.eval()

    @staticmethod
    def _class_named(name: object) -> type[SegmentationModel] | None:
        """The model class whose own `name` attribute is `name`, among those defined, if any."""
        classes: list[type[SegmentationModel]] = [SegmentationModel]
        while classes:
            candidate = classes.pop()
            if candidate.__dict__.get("name") == name:
                return candidate
            classes.extend(candidate.__subclasses__())
        return None

    def push_to_hub(self, repo_id: str, *, private: bool = False, **metadata: Any) -> str:
        """Upload the model to Hub repo `repo_id` (needs `pip install difnet[hub]`)."""
        return push_to_hub(self, repo_id, private=private, **metadata)

    # --- fine-tuning -------------------------------------------------------------------------

    def freeze_backbones(self, frozen: bool = True) -> SegmentationModel:
        """Stop (or resume) training the ResNets' weights; returns the model."""
        for backbone in self.backbones().values():
            backbone.requires_grad_(not frozen)
        return self

    def set_norm_eval(self, norm_eval: bool = True) -> SegmentationModel:
        """Keep every BN layer in eval mode (running statistics used, never updated) even while
        the model trains, as mmseg's `norm_eval`: for small batches on pretrained weights."""
        self.norm_eval = norm_eval
        return self.train(self.training)

    def train(self, mode: bool = True) -> SegmentationModel:
        super().train(mode)
        if mode and self.norm_eval:
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self
