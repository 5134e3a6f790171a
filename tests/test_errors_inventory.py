"""The bad-input inventory of docs/errors.md: every row is one case here, which must raise the
documented exception with a message naming the offending value; the doc and the cases share ids.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from data_fixtures import (
    random_image,
    save_image,
    save_mask,
    write_ade20k_fixture,
    write_camvid_fixture,
    write_cityscapes_fixture,
)
from PIL import Image

from difnet.cli import main
from difnet.data import (
    ADE20K,
    CamVid,
    Cityscapes,
    EvalTransform,
    FolderDataset,
    SyntheticShapes,
    TrainTransform,
    VOCSegmentation,
    build_dataset,
    colorize,
)
from difnet.diffusion import Cascade, propagate
from difnet.evaluation import evaluate, predict_probabilities
from difnet.export import OnnxSegmenter
from difnet.metrics import ConfusionMatrix
from difnet.models import DifNet, Preprocessing, SimDeepLab, build_model, dilated_resnet
from difnet.models.serialization import save_pretrained
from difnet.predict import predict_labels
from difnet.refinement import BilateralWalk
from difnet.training import TrainConfig, train
from difnet.training.checkpoint import FORMAT, load_model, save_model
from reference import cascade, check_variant, closed_form, random_walk, transition_matrix

DOC = Path(__file__).resolve().parents[1] / "docs" / "errors.md"
RNG = np.random.default_rng(0)
P = transition_matrix(RNG.standard_normal((4, 3)))
S = RNG.standard_normal((4, 2))
IMAGE = random_image(RNG, (20, 24))
MASK = np.zeros((20, 24), dtype=np.uint8)
NEEDS_ONNX = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("onnx", "onnxruntime")), reason="no [onnx] extra"
)
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
QUICK_RUN = {"model": "simdeeplab", "depth": 18, "dataset": "synthetic", "num_classes": 3,
             "device": "cpu", "val_split": None, "progress": False, "workers": 0, "crop_size": 64}  # fmt: skip


class PickledCode:
    """Pickles as a call of `os.system`: loading it with plain pickle would run the command."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[str]]:
        return os.system, (f"touch {self.sentinel}",)


class Env:
    """The inputs the cases share, each built on first use: tiny models, files and folders."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.sentinel = root / "pickled-code-ran"

    @cached_property
    def simdeeplab(self) -> SimDeepLab:
        torch.manual_seed(0)
        return SimDeepLab(depth=18, num_classes=3).eval()

    @cached_property
    def difnet(self) -> DifNet:
        torch.manual_seed(0)
        return DifNet(depth=18, num_classes=3).eval()

    @cached_property
    def checkpoint(self) -> Path:
        """An inference checkpoint (no optimiser state) of the Sim-DeepLab-18 above."""
        config = TrainConfig(**{**QUICK_RUN, "output_dir": str(self.root / "run")})
        return save_model(self.root / "best.pt", self.simdeeplab, config)

    def variant(self, name: str, **changes: Any) -> Path:
        """The checkpoint with some entries replaced (`None`: removed), written as `name`."""
        payload = torch.load(self.checkpoint, weights_only=True)
        payload.update(changes)
        torch.save({k: v for k, v in payload.items() if v is not None}, self.root / name)
        return self.root / name

    @cached_property
    def resnet18_weights(self) -> Path:
        """A torchvision-style ResNet-18 state dict (backbone names plus the `fc` classifier)."""
        state = dilated_resnet(18).state_dict()
        state.update({"fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)})
        torch.save(state, self.root / "resnet18.pth")
        return self.root / "resnet18.pth"

    def onnx_file(self, name: str, **metadata: str) -> Path:
        """An ONNX file of one Identity node `images [N, 3, 32, 40] -> logits`, with `metadata`."""
        import onnx
        from onnx import TensorProto, helper

        shape = ["N", 3, 32, 40]
        graph = helper.make_graph([helper.make_node("Identity", ["images"], ["logits"])], "g",
                                  [helper.make_tensor_value_info("images", TensorProto.FLOAT, shape)],
                                  [helper.make_tensor_value_info("logits", TensorProto.FLOAT, shape)])  # fmt: skip
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        helper.set_model_props(model, metadata)
        onnx.save(model, self.root / name)
        return self.root / name

    @cached_property
    def difnet_onnx(self) -> Path:
        """`onnx_file` with the metadata `difnet export` writes, for a DifNet fixed at 32x40."""
        return self.onnx_file("fixed.onnx", difnet_version="0", input_size="32x40", image_size="null",
                              mean="[0.5, 0.5, 0.5]", std="[0.2, 0.2, 0.2]", class_names="null",
                              palette="null", model='{"name": "difnet", "num_classes": 3}')  # fmt: skip

    @cached_property
    def pretrained_folder(self) -> Path:
        """The Sim-DeepLab-18 above as a save_pretrained folder."""
        return save_pretrained(self.simdeeplab, self.root / "pretrained")

    @cached_property
    def photos(self) -> Path:
        """A folder of one image and one text file named `.png`."""
        save_image(self.root / "photos" / "good.png", IMAGE)
        (self.root / "photos" / "notes.png").write_text("not an image")
        return self.root / "photos"

    @cached_property
    def pickled_code(self) -> Path:
        torch.save({"format": FORMAT, "model": PickledCode(self.sentinel)}, self.root / "code.pt")
        return self.root / "code.pt"

    def file(self, name: str, data: bytes) -> Path:
        """A file of raw bytes."""
        (self.root / name).write_bytes(data)
        return self.root / name

    def run_dir(self, name: str) -> Path:
        """An output folder that already holds a file."""
        (self.root / name).mkdir(exist_ok=True)
        (self.root / name / "log.jsonl").write_text("{}\n")
        return self.root / name


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Env:
    return Env(tmp_path_factory.mktemp("errors"))


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def one_pair(env: Env, name: str, image: np.ndarray | bytes = IMAGE, mask: np.ndarray = MASK):
    """Item 0 of a 3-class `FolderDataset` holding one image (pixels, or raw bytes) and mask."""
    images, masks = env.root / name / "images", env.root / name / "masks"
    images.mkdir(parents=True)
    if isinstance(image, bytes):
        (images / "a.png").write_bytes(image)
    else:
        save_image(images / "a.png", image)
    save_mask(masks / "a.png", mask)
    return FolderDataset(images, masks, num_classes=3)[0]


def camvid_without_val(env: Env) -> CamVid:
    root = write_camvid_fixture(env.root / "camvid", n_train=1, n_val=0, n_test=0)
    return CamVid(root, "val")


def cityscapes_with_label_id_40(env: Env) -> tuple[torch.Tensor, torch.Tensor]:
    dataset = Cityscapes(write_cityscapes_fixture(env.root, n_train=0, n_val=1), "val")
    save_mask(dataset.samples[0].mask, np.full((32, 64), 40, dtype=np.uint8))
    return dataset[0]


def ade20k_with_value_151(env: Env) -> tuple[torch.Tensor, torch.Tensor]:
    dataset = ADE20K(write_ade20k_fixture(env.root, n_train=0, n_val=1), "val")
    save_mask(dataset.samples[0].mask, np.full((36, 48), 151, dtype=np.uint8))
    return dataset[0]


def with_value(value: int) -> np.ndarray:
    mask = MASK.copy()
    mask[3, 4] = value
    return mask


def images(*shape: int, dtype: torch.dtype = torch.float32, **kwargs: Any) -> torch.Tensor:
    return torch.zeros(shape, dtype=dtype, **kwargs)


def nan_images() -> torch.Tensor:
    batch = images(1, 3, 32, 32)
    batch[0, 1, 5, 7] = float("nan")
    return batch


def load_pickled_code(env: Env) -> None:
    """`load_model` on a file holding pickled code, checking afterwards that nothing ran."""
    try:
        load_model(env.pickled_code)
    finally:
        assert not env.sentinel.exists(), "loading the checkpoint executed its pickled code"


def quick_train(env: Env, **settings: Any) -> None:
    train(TrainConfig(**{**QUICK_RUN, "output_dir": str(env.root / "quick"), **settings}))


def cli(*argv: str) -> None:
    """Run `difnet argv` as the console script does (`sys.exit(main())`); a failure raises the
    `SystemExit`, its message holding the exit status and the last line printed to stderr."""
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            status = main(list(argv))
        except SystemExit as exit_:
            status = exit_.code
    if status:
        raise SystemExit(f"exit status {status}: {stderr.getvalue().splitlines()[-1]}")


def cli_train(env: Env, *argv: str) -> None:
    quick = (
        "--model",
        "simdeeplab",
        "--depth",
        "18",
        "--dataset",
        "synthetic",
        "--num-classes",
        "3",
        "--device",
        "cpu",
        "--no-progress",
        "--workers",
        "0",
    )
    cli("train", *quick, *argv)


@dataclass(frozen=True)
class Case:
    """One row of docs/errors.md: `call(env)` must raise `exception` matching `match`."""

    id: str
    call: Callable[[Env], object]
    exception: type[BaseException]
    match: str
    marks: tuple[pytest.MarkDecorator, ...] = ()


CASES = [
    # reference ---------------------------------------------------------------------------------
    Case("ref-mu-one", lambda e: closed_form(P, S, 1.0), ValueError,
         r"mu must lie in \[0, 1\) \(got 1\.0\).*singular"),
    Case("ref-mu-negative", lambda e: random_walk(P, S, -0.1, 3), ValueError,
         r"mu must lie in \[0, 1\) \(got -0\.1\)"),
    Case("ref-nan", lambda e: closed_form(np.where(P > P.max() - 1e-9, np.nan, P), S, 0.5),
         ValueError, r"^P contains a non-finite value \(nan\) at index"),
    Case("ref-not-stochastic", lambda e: closed_form(P * 2, S, 0.5), ValueError,
         r"row 0 of P sums to [0-9.]+ \(\+1\.00e\+00 off one\)"),
    Case("ref-seed-rows", lambda e: closed_form(P, S[:3], 0.5), ValueError,
         r"s has shape \(3, 2\) but P has shape \(4, 4\)"),
    Case("ref-complex", lambda e: transition_matrix(S.astype(complex)), TypeError,
         r"features must be a real-valued array \(got dtype complex128\)"),
    Case("ref-cascade-lengths", lambda e: cascade([P, P], S, [0.5], [0.5, 0.5]), ValueError,
         r"one entry per walk \(got 2, 1 and 2\)"),
    Case("ref-steps", lambda e: random_walk(P, S, 0.5, -1), ValueError,
         r"steps must be a non-negative integer \(got -1\)"),
    Case("ref-variant-kind", lambda e: check_variant(closed_form, kind="walk"), ValueError,
         r"kind must be one of \('closed_form', 'cascade'\) \(got 'walk'\)"),
    # diffusion layer ---------------------------------------------------------------------------
    Case("walk-shapes", lambda e: propagate(torch.zeros(1, 4, 8), torch.zeros(1, 5, 2)),
         ValueError, r"must share B and N \(got \(1, 4, 8\) and \(1, 5, 2\)\)"),
    Case("walk-method", lambda e: propagate(torch.zeros(1, 4, 8), torch.zeros(1, 4, 2),
                                            walk="dense"),
         ValueError, r"walk must be one of \('fused', 'materialized'\) \(got 'dense'\)"),
    Case("walk-feature-count", lambda e: Cascade(5)([torch.zeros(1, 4, 8)] * 3,
                                                   torch.zeros(1, 4, 2)),
         ValueError, r"expected 5 feature tensors, one per walk \(got 3\)"),
    # model construction ------------------------------------------------------------------------
    Case("model-depth", lambda e: DifNet(depth=19, num_classes=3), ValueError,
         r"depth must be one of \(18, 34, 50, 101, 152\) \(got 19\)"),
    Case("model-depth-string", lambda e: SimDeepLab(depth="50", num_classes=3), ValueError,
         r"depth must be one of .* \(got '50'\)"),
    Case("model-num-classes", lambda e: DifNet(depth=18, num_classes=0), ValueError,
         r"num_classes must be a positive integer \(got 0\)"),
    Case("model-name", lambda e: build_model("unet", 18, 3), ValueError,
         r"model name must be one of \('difnet', 'simdeeplab'[^)]*\) \(got 'unet'\)"),  # and any registered since
    Case("model-aspp-not-bool", lambda e: DifNet(depth=18, num_classes=3, aspp="no"), TypeError,
         r"aspp must be True or False \(got 'no'\)"),
    Case("model-diffusion-stride", lambda e: DifNet(depth=18, num_classes=3, diffusion_stride=16),
         ValueError, r"diffusion_stride must be one of \(4, 8\) \(got 16\)"),
    Case("model-encoder-unknown", lambda e: DifNet(encoder="vgg16"), ValueError,
         r"encoder must be one of \[.*'resnet50_os16'.*'small_cnn'.*\] \(got 'vgg16'\); .*register_encoder"),
    Case("model-depth-encoder", lambda e: DifNet(depth=50, encoder="resnet50_os16"), ValueError,
         r"depth=50 is shorthand for encoder='resnet50' \(output stride 8\) and contradicts "
         r"encoder='resnet50_os16'; give only one of them"),
    Case("model-shared-backbone-encoder",
         lambda e: DifNet(encoder="small_cnn", similarity_encoder="resnet18", shared_backbone=True),
         ValueError, r"shared_backbone=True .* seed encoder 'small_cnn', which contradicts "
                     r"similarity_encoder='resnet18'"),
    Case("model-diffusion-stride-encoder", lambda e: DifNet(encoder="small_cnn", diffusion_stride=16),
         ValueError, r"diffusion_stride must be one of \(2, 4, 8\) \(got 16\)"),
    Case("model-pretrained-encoder",
         lambda e: DifNet(encoder="small_cnn", similarity_encoder="resnet18", pretrained_backbone="imagenet"),
         ValueError, r"pretrained_backbone='imagenet' loads torchvision's ImageNet ResNet weights, which the "
                     r"seed encoder 'small_cnn' cannot take"),
    Case("checkpoint-encoder-unregistered",
         lambda e: load_model(e.variant("mine.pt", model_spec={
             "name": "simdeeplab", "depth": None, "encoder": "my_cnn", "num_classes": 3})),
         ValueError, r"encoder must be one of \[.*\] \(got 'my_cnn'\); an encoder of your own must be "
                     r"registered \(difnet.encoders.register_encoder\) before a model is built or loaded"),
    Case("model-pretrained-missing",
         lambda e: SimDeepLab(depth=18, num_classes=3, pretrained_backbone=e.root / "no.pth"),
         FileNotFoundError, r"pretrained backbone checkpoint not found: .*no\.pth"),
    Case("model-pretrained-depth",
         lambda e: SimDeepLab(depth=34, num_classes=3, pretrained_backbone=e.resnet18_weights),
         ValueError, r"resnet18\.pth holds a ResNet-18 checkpoint but the model's backbone is "
                     r"ResNet-34"),
    Case("model-pretrained-code",
         lambda e: SimDeepLab(depth=18, num_classes=3, pretrained_backbone=e.pickled_code),
         ValueError, r"code\.pt is not a loadable weights-only checkpoint \(UnpicklingError"),
    Case("model-pretrained-difnet-checkpoint",
         lambda e: SimDeepLab(depth=18, num_classes=3, pretrained_backbone=e.checkpoint),
         ValueError, r"best\.pt does not hold a state dict"),
    # model forward -----------------------------------------------------------------------------
    Case("forward-no-batch", lambda e: e.difnet(images(3, 32, 32)), ValueError,
         r"3-D tensor of shape \(3, 32, 32\).*unsqueeze\(0\)"),
    Case("forward-channels", lambda e: e.simdeeplab(images(1, 4, 32, 32)), ValueError,
         r"3 \(RGB\) channels in dim 1 \(got shape \(1, 4, 32, 32\)\)"),
    Case("forward-uint8", lambda e: e.simdeeplab(images(1, 3, 32, 32, dtype=torch.uint8)),
         ValueError, r"floating-point tensor \(got dtype torch\.uint8\)"),
    Case("forward-float64", lambda e: e.difnet(images(1, 3, 32, 32, dtype=torch.float64)),
         ValueError, r"dtype torch\.float64 but the model's weights are torch\.float32"),
    Case("forward-device", lambda e: e.simdeeplab(images(1, 3, 32, 32, device="meta")),
         ValueError, r"images are on device meta but the model is on cpu"),
    Case("forward-empty-batch", lambda e: e.difnet(images(0, 3, 32, 32)), ValueError,
         r"at least one image \(got an empty batch, shape \(0, 3, 32, 32\)\)"),
    Case("forward-too-small", lambda e: e.difnet(images(1, 3, 15, 32)), ValueError,
         r"at least 16x16 pixels \(got shape \(1, 3, 15, 32\)\)"),
    Case("forward-nan", lambda e: predict_probabilities(e.difnet, nan_images()), ValueError,
         r"images contain NaN or infinite values"),
    Case("forward-numpy", lambda e: e.simdeeplab(np.zeros((1, 3, 32, 32), np.float32)),
         TypeError, r"images must be a torch\.Tensor \(got ndarray\)"),
    Case("forward-nodes-off-grid",
         lambda e: e.difnet.transition_maps(images(1, 3, 32, 32), [[9, 0]]), ValueError,
         r"nodes must lie on the 5x5 diffusion grid \(got \[\[9, 0\]\]\)"),
    Case("predict-float-image",
         lambda e: predict_labels(e.simdeeplab, IMAGE.astype(np.float32) / 255), TypeError,
         r"uint8 \[H, W, 3\] array \(got float32 \(20, 24, 3\)\)"),
    # transforms --------------------------------------------------------------------------------
    Case("transform-size-mismatch", lambda e: EvalTransform()(IMAGE, MASK[:, :20]), ValueError,
         r"image is 20x24 \(HxW\) but its label is 20x20"),
    Case("transform-float-label", lambda e: EvalTransform()(IMAGE, MASK.astype(np.float32)),
         TypeError, r"label must be an integer \[H, W\] array .*\(got float32 \(20, 24\)\)"),
    Case("transform-crop", lambda e: TrainTransform(crop_size=0), ValueError,
         r"crop_size must be a positive int .* \(got 0\)"),
    Case("transform-scale-range", lambda e: TrainTransform(scale_range=(1.5, 0.5)), ValueError,
         r"0 < low <= high \(got \(1\.5, 0\.5\)\)"),
    Case("transform-std", lambda e: EvalTransform(std=(0, 1, 1)), ValueError,
         r"std must be positive \(got \(0\.0, 1\.0, 1\.0\)\)"),
    # datasets ----------------------------------------------------------------------------------
    Case("data-missing-root", lambda e: VOCSegmentation(e.root / "no-voc", "train"),
         FileNotFoundError, r"dataset root .*no-voc does not exist; expected the VOC2012 folder"),
    Case("data-missing-list", camvid_without_val, FileNotFoundError,
         r"split file .*camvid/val\.txt not found"),
    Case("data-missing-masks-folder",
         lambda e: FolderDataset(e.root, e.root / "no-masks", num_classes=3), FileNotFoundError,
         r"folder .*no-masks not found; expected a folder of mask PNGs"),
    Case("data-label-out-of-range", lambda e: one_pair(e, "labels", mask=with_value(7)),
         ValueError, r"mask .*labels/masks/a\.png holds values \[7\] outside \[0, 3\) and 255"),
    Case("data-size-mismatch", lambda e: one_pair(e, "sizes", mask=MASK[:18]), ValueError,
         r"image .*sizes/images/a\.png is 20x24 \(HxW\) but its mask .*a\.png is 18x24"),
    Case("data-truncated-image", lambda e: one_pair(e, "cut", png_bytes(IMAGE)[:60]), ValueError,
         r"cannot read image .*cut/images/a\.png: "),
    Case("data-not-an-image", lambda e: one_pair(e, "text", b"not an image"), ValueError,
         r"cannot read image .*text/images/a\.png: cannot identify image file"),
    Case("data-unknown-split", lambda e: build_dataset("synthetic", None, "dev"), ValueError,
         r"unknown synthetic split 'dev'; choose one of train, val, test"),
    Case("data-index", lambda e: SyntheticShapes(2, 32)[5], IndexError,
         r"index 5 is out of range for a dataset of 2 items"),
    Case("data-palette", lambda e: colorize(with_value(7), [(0, 0, 0)] * 3), ValueError,
         r"labels hold values \[7\] outside the palette's 3 classes"),
    # evaluation and metrics --------------------------------------------------------------------
    Case("metrics-float-predictions",
         lambda e: ConfusionMatrix(3).update(torch.zeros(1, 3, 4, 4), torch.zeros(1, 4, 4)),
         TypeError, r"pred must hold integer class ids \(got dtype torch\.float32\).*argmax"),
    Case("evaluate-class-count",
         lambda e: evaluate(e.simdeeplab, SyntheticShapes(1, 32, num_classes=4), progress=False),
         ValueError, r"the model predicts 3 classes but the dataset has 4"),
    Case("evaluate-device-name",
         lambda e: evaluate(e.simdeeplab, SyntheticShapes(1, 32, num_classes=3), device="gpu"),
         ValueError, r"device 'gpu' is not a torch device"),
    Case("evaluate-cuda-on-cpu",
         lambda e: evaluate(e.simdeeplab, SyntheticShapes(1, 32, num_classes=3), device="cuda"),
         ValueError, r"device 'cuda' was asked for but CUDA is not available", (NO_CUDA,)),
    # checkpoints -------------------------------------------------------------------------------
    Case("checkpoint-missing", lambda e: load_model(e.root / "missing.pt"), FileNotFoundError,
         r"checkpoint .*missing\.pt does not exist"),
    Case("checkpoint-directory", lambda e: load_model(e.root), FileNotFoundError,
         r"errors\d* is not a save_pretrained folder: config\.json is missing"),
    Case("checkpoint-not-torch", lambda e: load_model(e.file("notes.pt", b"hello")), ValueError,
         r"checkpoint .*notes\.pt is not a readable torch file"),
    Case("checkpoint-truncated",
         lambda e: load_model(e.file("cut.pt", e.checkpoint.read_bytes()[:5000])), ValueError,
         r"checkpoint .*cut\.pt is not a readable torch file \(truncated"),
    Case("checkpoint-torchvision", lambda e: load_model(e.resnet18_weights), ValueError,
         r"resnet18\.pth is not a difnet checkpoint .*--pretrained-backbone"),
    Case("checkpoint-pickled-code", load_pickled_code, ValueError,
         r"checkpoint .*code\.pt holds pickled objects other than tensors.*refused"),
    Case("checkpoint-class-count",
         lambda e: load_model(e.variant("classes.pt", model_spec={
             "name": "simdeeplab", "depth": 18, "num_classes": 5})),
         ValueError, r"classes\.pt does not fit the model: classifier\.branches\.0\.weight: "
                     r"checkpoint \(3, 512, 3, 3\) vs model \(5, 512, 3, 3\)"),
    Case("checkpoint-no-spec", lambda e: load_model(e.variant("nospec.pt", model_spec=None)),
         ValueError, r"nospec\.pt lacks the entries \['model_spec'\]"),
    Case("checkpoint-fine-tune-keys",
         lambda e: load_model(e.variant("partial.pt", model={
             k: v for k, v in e.simdeeplab.state_dict().items() if k != "backbone.conv1.weight"}),
             num_classes=5),
         ValueError, r"partial\.pt does not hold this architecture: missing \['backbone\.conv1\.weight'\]"),
    Case("preprocessing-image-size", lambda e: Preprocessing(image_size=(0, 5)), ValueError,
         r"image_size must be \(height, width\) of positive ints \(got \(0, 5\)\)"),
    Case("preprocessing-mean-std", lambda e: Preprocessing(mean=(0.5,), std=(0.2, 0.2)), ValueError,
         r"mean and std need one value per channel each \(got \(0\.5,\) and \(0\.2, 0\.2\)\)"),
    Case("preprocessing-unknown-entry", lambda e: Preprocessing.from_dict({"size": 3}), ValueError,
         r"unknown preprocessing entries: size"),
    Case("onnx-missing", lambda e: OnnxSegmenter(e.root / "no.onnx"), FileNotFoundError,
         r"ONNX file .*no\.onnx does not exist", (NEEDS_ONNX,)),
    Case("onnx-not-difnet", lambda e: OnnxSegmenter(e.onnx_file("plain.onnx")), ValueError,
         r"plain\.onnx is not an ONNX file written by difnet export \(no difnet metadata\)",
         (NEEDS_ONNX,)),
    Case("checkpoint-newer-format", lambda e: load_model(e.variant("v9.pt", format_version=9)),
         ValueError, r"v9\.pt has format version 9, newer than this difnet reads \(1\)"),
    # training configuration and runs ------------------------------------------------------------
    Case("config-depth-encoder", lambda e: TrainConfig(depth=34, encoder="resnet18"), ValueError,
         r"depth 34 is shorthand for encoder 'resnet34', which contradicts encoder 'resnet18'; give one of them"),
    Case("config-lr-zero", lambda e: TrainConfig(lr=0), ValueError,
         r"lr must be positive \(got 0\)"),
    Case("config-lr-string", lambda e: TrainConfig(lr="0.1"), TypeError,
         r"lr must be a real number \(got '0\.1'\)"),
    Case("config-lr-inf", lambda e: TrainConfig(lr=float("inf")), ValueError,
         r"lr must be finite \(got inf\)"),
    Case("config-scale-range", lambda e: TrainConfig(scale_range=(2, 1)), ValueError,
         r"scale_range must be \(low, high\) with 0 < low <= high \(got \(2\.0, 1\.0\)\)"),
    Case("config-batch-size", lambda e: TrainConfig(batch_size=0), ValueError,
         r"batch_size must be a positive integer \(got 0\)"),
    Case("config-seed", lambda e: TrainConfig(seed=-1), ValueError,
         r"seed must be a non-negative integer \(got -1\)"),
    Case("config-device-name", lambda e: TrainConfig(device="gpu"), ValueError,
         r"device 'gpu' is not a torch device"),
    Case("config-folder-classes", lambda e: TrainConfig(dataset="folder", data_root="x"),
         ValueError, r"dataset 'folder' needs num_classes"),
    Case("config-unknown-setting", lambda e: TrainConfig.from_dict({"lrate": 0.1}), ValueError,
         r"unknown training settings: lrate"),
    Case("train-cuda-on-cpu", lambda e: quick_train(e, device="cuda"), ValueError,
         r"device 'cuda' was asked for but CUDA is not available", (NO_CUDA,)),
    Case("train-resume-other-depth",
         lambda e: quick_train(e, resume=str(e.variant("deeper.pt", model_spec={
             "name": "simdeeplab", "depth": 34, "num_classes": 3}))),
         ValueError, r"deeper\.pt holds a model .*'depth': 34.* but this run builds .*'depth': 18"),
    Case("train-init-from-other-architecture",
         lambda e: quick_train(e, model="difnet", init_from=str(e.checkpoint)), ValueError,
         r"cannot initialise from .*best\.pt: it holds another architecture \(name 'simdeeplab' "
         r"there, 'difnet' here"),
    Case("train-resume-other-classes",
         lambda e: quick_train(e, num_classes=4, resume=str(e.checkpoint)), ValueError,
         r"cannot resume .*best\.pt with a different recipe: num_classes=4 \(the run used 3\)"),
    # command line ------------------------------------------------------------------------------
    Case("cli-depth-choice", lambda e: cli("train", "--depth", "19"), SystemExit,
         r"exit status 2: difnet train: error: argument --depth: invalid choice: '?19'?"),
    Case("cli-unknown-option",
         lambda e: cli("export", "--checkpoint", "x", "--output", "y.onnx", "--frobnicate"), SystemExit,
         r"exit status 2: difnet export: error: unrecognized arguments: --frobnicate"),
    Case("cli-onnx-image-size",
         lambda e: cli("predict", "--checkpoint", str(e.difnet_onnx), "--input",
                       str(save_image(e.root / "photo.png", IMAGE)), "--output", str(e.root / "masks"),
                       "--image-size", "16", "16"),
         SystemExit, r"exit status 2: difnet: error: --image-size 16 16: the ONNX file takes only "
                     r"32x40 inputs", (NEEDS_ONNX,)),
    Case("cli-crop-size", lambda e: cli_train(e, "--crop-size", "1", "2", "3"), SystemExit,
         r"exit status 2: difnet: error: --crop-size takes one or two values \(got 3\)"),
    Case("cli-resume-inference-checkpoint",
         lambda e: cli_train(e, "--output-dir", str(e.root / "resumed"), "--resume",
                             str(e.checkpoint)),
         SystemExit, r"exit status 2: difnet: error: checkpoint .*best\.pt has no optimiser "
                     r"state .*resume from the run's last\.pt"),
    Case("cli-output-exists", lambda e: cli_train(e, "--output-dir", str(e.run_dir("taken"))),
         SystemExit, r"exit status 2: difnet: error: output directory .*taken already holds "
                     r"log\.jsonl; pass --overwrite"),
    Case("cli-checkpoint-not-torch",
         lambda e: cli("evaluate", "--checkpoint", str(e.file("junk.pt", b"junk"))), SystemExit,
         r"exit status 2: difnet: error: checkpoint .*junk\.pt is not a readable torch file"),
    Case("cli-predict-missing-input",
         lambda e: cli("predict", "--checkpoint", str(e.checkpoint), "--input",
                       str(e.root / "no-photos"), "--output", str(e.root / "masks")),
         SystemExit, r"exit status 2: difnet: error: input .*no-photos does not exist"),
    Case("cli-predict-cuda-on-cpu",
         lambda e: cli("predict", "--checkpoint", str(e.checkpoint), "--input",
                       str(save_image(e.root / "photo.png", IMAGE)), "--output",
                       str(e.root / "masks"), "--device", "cuda"),
         SystemExit, r"exit status 2: difnet: error: device 'cuda' was asked for", (NO_CUDA,)),
    Case("cli-evaluate-output-exists",
         lambda e: cli("evaluate", "--checkpoint", str(e.checkpoint), "--output",
                       str(e.file("metrics.json", b"{}"))),
         SystemExit, r"exit status 2: difnet: error: refusing to overwrite .*metrics\.json"),
    Case("cli-slide-stride-over-window",
         lambda e: cli("evaluate", "--checkpoint", str(e.checkpoint), "--mode", "slide", "--window", "50",
                       "50", "--stride", "80", "80"),
         SystemExit, r"exit status 2: difnet: error: stride \(80, 80\) is longer than the window "
                     r"\(50, 50\).*pixels no window covers"),
    # recipe files and the datasets of issue 18 ---------------------------------------------------
    Case("recipe-unknown-key", lambda e: cli_train(e, "--config", str(e.file("k.json", b'{"lrate": 1}'))),
         SystemExit, r"exit status 2: difnet: error: recipe file .*k\.json: unknown training settings: lrate"),
    Case("recipe-wrong-type", lambda e: TrainConfig.read_recipe(e.file("t.json", b'{"flip": "no"}')),
         TypeError, r"recipe file .*t\.json: flip must be a bool \(got 'no'\)"),
    Case("recipe-format", lambda e: TrainConfig.read_recipe(e.file("r.yaml", b"depth: 18")), ValueError,
         r"recipe file .*r\.yaml: unknown format '\.yaml'; use \.json or \.toml"),
    Case("recipe-not-a-table", lambda e: TrainConfig.read_recipe(e.file("l.json", b"[18]")), ValueError,
         r"recipe file .*l\.json must hold a table of settings \(got list\)"),
    Case("recipe-unreadable", lambda e: TrainConfig.read_recipe(e.file("u.json", b'{"depth": }')), ValueError,
         r"cannot read recipe file .*u\.json: Expecting value: line 1"),
    Case("recipe-missing", lambda e: TrainConfig.read_recipe(e.root / "none.json"), FileNotFoundError,
         r"recipe file .*none\.json not found"),
    Case("cli-config-with-resume",
         lambda e: cli_train(e, "--config", str(e.file("c.json", b"{}")), "--resume", str(e.checkpoint)),
         SystemExit, r"exit status 2: difnet: error: --config .*c\.json and --resume do not go together"),
    Case("data-cityscapes-label-id", cityscapes_with_label_id_40, ValueError,
         r"mask .*_gtFine_labelIds\.png holds values \[40\] that are no Cityscapes label ids \(0-33"),
    Case("data-ade20k-label-value", ade20k_with_value_151, ValueError,
         r"mask .*ADE_val_00000001\.png holds values \[151\] above 150"),
    # issue 17: the CLI's rough edges -----------------------------------------------------------
    Case("checkpoint-not-a-pickle",
         lambda e: load_model(e.file("head.pt", (e.pretrained_folder / "model.safetensors")
                                     .read_bytes()[:1024])),
         ValueError, r"checkpoint .*head\.pt is not a readable torch file \(truncated or not a "
                     r"checkpoint\): its bytes are not what torch\.save writes$"),
    Case("checkpoint-weights-file", lambda e: load_model(e.pretrained_folder / "model.safetensors"),
         ValueError, r"model\.safetensors holds bare weights; load the save_pretrained folder that "
                     r"holds it \(.*pretrained, with its config\.json\) instead"),
    Case("evaluate-limit",
         lambda e: evaluate(e.simdeeplab, SyntheticShapes(1, 32, num_classes=3), limit=0), ValueError,
         r"limit must be a positive number of images \(got 0\)"),
    Case("config-crop-too-small", lambda e: TrainConfig(crop_size=8), ValueError,
         r"crop_size \(8, 8\) is smaller than the 16x16 pixels the models take"),
    Case("train-crop-beyond-images", lambda e: quick_train(e, crop_size=1000, epochs=1, max_steps_per_epoch=1,
                                                          batch_size=1), ValueError,
         r"the crop 1000x1000 is 10\.4 times the first training image \(64x64 pixels\) at the "
         r"largest random scale 1\.5: most of every crop would be padding .*--crop-size 96x96"),
    Case("cli-evaluate-limit", lambda e: cli("evaluate", "--checkpoint", str(e.checkpoint),
                                             "--limit", "0"),
         SystemExit, r"exit status 2: difnet evaluate: error: argument --limit: must be at least 1, "
                     r"got '0'"),
    Case("cli-predict-unreadable-image",
         lambda e: cli("predict", "--checkpoint", str(e.checkpoint), "--input", str(e.photos),
                       "--output", str(e.root / "photo-masks"), "--no-progress"),
         SystemExit, r"exit status 1: difnet: error: 1 of 2 image\(s\) could not be predicted"),
    # the walk on the image ---------------------------------------------------------------------
    Case("walk-nan-probabilities",
         lambda e: BilateralWalk()(torch.full((1, 3, 6, 7), float("nan")), torch.zeros(1, 3, 6, 7)), ValueError,
         r"probabilities must be finite: probabilities of shape \(1, 3, 6, 7\) holds NaN or inf"),
    Case("walk-solver", lambda e: BilateralWalk(solver="multigrid"), ValueError,
         r"BilateralWalk solver must be one of \('chebyshev', 'steps'\) \(got 'multigrid'\)"),
]  # fmt: skip


@pytest.mark.parametrize("case", [pytest.param(case, id=case.id, marks=case.marks) for case in CASES])
def test_bad_input_raises_the_documented_error(env: Env, case: Case) -> None:
    with pytest.raises(case.exception, match=case.match):
        case.call(env)


def documented_rows() -> list[list[str]]:
    """The cells of each body row of the table in docs/errors.md."""
    lines = [line for line in DOC.read_text().splitlines() if re.match(r"\|\s*\d+\s*\|", line)]
    return [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in lines]


def test_the_doc_and_the_cases_list_the_same_bad_inputs() -> None:
    rows = documented_rows()
    assert [int(row[0]) for row in rows] == list(range(1, len(rows) + 1)), "rows are numbered 1..N"
    documented = {row[1].strip("`"): row[4] for row in rows}
    cases = {case.id: case.exception.__name__ for case in CASES}
    assert len(documented) == len(rows) and len(cases) == len(CASES), "ids are unique"
    assert set(documented) == set(cases)
    wrong = {id_: name for id_, name in cases.items() if name not in documented[id_]}
    assert not wrong, f"the doc names another exception for {wrong}"
