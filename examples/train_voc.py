"""Train DifNet on Pascal VOC 2012 + SBD with the paper's recipe, then evaluate on VOC val.

    python examples/train_voc.py --data-root /data/VOCdevkit/VOC2012 --depth 50 \\
        --pretrained-backbone imagenet --output-dir runs/voc-difnet50
    torchrun --nproc_per_node 4 examples/train_voc.py --data-root ... --batch-size 4   # 4 GPUs x 4
    python examples/train_voc.py --synthetic    # the same script on generated scenes, CPU, ~1 min

The recipe (the authors' code; docs/fidelity.md): SBD-augmented VOC train (10,582 images),
random scale 0.5-1.5, 321x321 crops and flips, SGD momentum 0.9 at 2.5e-3 for every parameter,
weight decay 5e-4, poly decay (power 0.9), batch 16, 200 epochs. Every option of `difnet train`
is accepted here, so any part of the recipe can be overridden; `--resume runs/.../last.pt`
alone continues a stopped run with the recipe stored in that checkpoint. The same recipe as a
file for `difnet train --config` is examples/voc_recipe.toml.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from difnet.data import EvalTransform
from difnet.evaluation import evaluate
from difnet.models import load_model
from difnet.training import TrainConfig, train
from difnet.training.settings import Default

VOC_RECIPE = {
    "dataset": "voc",
    "train_split": "train_aug",
    "val_split": "val",
    "output_dir": "runs/voc-difnet",
}

HOW_TO_GET_VOC = """\
Pascal VOC 2012 + SBD was not found at {root}.

Lay it out like this (one folder, passed as --data-root):

  VOCdevkit/VOC2012/
    JPEGImages/<id>.jpg                       from VOCtrainval_11-May-2012.tar (the VOC 2012 site)
    SegmentationClass/<id>.png                palette PNGs, same archive
    ImageSets/Segmentation/train.txt, val.txt same archive
    SegmentationClassAug/<id>.png             SBD's masks as grayscale class-id PNGs
                                              (DeepLab's SegmentationClassAug.zip, or convert
                                              SBD's cls/*.mat files: the GTcls.Segmentation array)
    ImageSets/Segmentation/train_aug.txt      the 10,582 training ids (VOC train + SBD train and
                                              val, minus the VOC val images), one per line

1. Download VOCtrainval_11-May-2012.tar and unpack it: it creates VOCdevkit/VOC2012/.
2. Put SBD's augmented masks in VOC2012/SegmentationClassAug/ and the id list in
   VOC2012/ImageSets/Segmentation/train_aug.txt.
3. Run: python examples/train_voc.py --data-root /path/to/VOCdevkit/VOC2012

Without the data, `python examples/train_voc.py --synthetic` runs this script on generated scenes.
"""


SYNTHETIC_RECIPE = {
    "dataset": "synthetic",
    "data_root": None,
    "train_split": "train",
    "val_split": "val",
    "depth": 18,
    "num_classes": 5,
    "image_size": [64, 64],
    "crop_size": [64],
    "batch_size": 8,
    "epochs": 2,
    "max_steps_per_epoch": 10,
    "output_dir": "runs/voc-synthetic",
}  # fmt: skip  (the recipe shrunk to generated 64x64 scenes: DifNet-18, a minute on a CPU)


def parse_config(argv: list[str] | None) -> TrainConfig:
    """`difnet train`'s options with VOC's defaults, or with `--synthetic` the shrunk recipe's;
    options given explicitly win either way, and `--resume` takes the checkpoint's recipe."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    TrainConfig.add_arguments(parser)
    parser.add_argument("--synthetic", action="store_true", help="train on generated scenes (no data needed)")
    synthetic = parser.parse_known_args(argv)[0].synthetic
    recipe = SYNTHETIC_RECIPE if synthetic else VOC_RECIPE
    parser.set_defaults(**{name: Default(value) for name, value in recipe.items()})
    return TrainConfig.from_args(parser.parse_args(argv))


def voc_missing(config: TrainConfig) -> bool:
    """Whether the VOC folder the config names lacks its images or the SBD id list."""
    if config.dataset != "voc":
        return False
    root = Path(config.data_root or "VOCdevkit/VOC2012").expanduser()
    roots = (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012")
    split_file = Path("ImageSets", "Segmentation", f"{config.train_split}.txt")
    return not any((r / "JPEGImages").is_dir() and (r / split_file).is_file() for r in roots)


def main(argv: list[str] | None = None) -> int:
    config = parse_config(argv)
    if voc_missing(config):
        print(HOW_TO_GET_VOC.format(root=config.data_root or "(no --data-root given)"), file=sys.stderr)
        return 2
    result = train(config)
    if result.best_miou is None or int(os.environ.get("RANK", "0")) != 0:
        return 0  # under torchrun, the process group is gone: rank 0 alone evaluates
    model = load_model(result.checkpoint_paths["best"])
    val = config.build_dataset(config.val_split, EvalTransform())
    evaluation = evaluate(model, val, device=config.device, progress=config.progress)
    print(f"best checkpoint {result.checkpoint_paths['best']} on {config.dataset} {config.val_split}:")
    print(evaluation.format_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
