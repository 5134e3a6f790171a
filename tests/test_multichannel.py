"""Images other than RGB end to end: a folder of 4-channel (RGB-NIR) PNGs read, normalised with
the user's statistics, trained on with in_channels=4, saved, and predicted."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch_threads import single_thread

import difnet
from difnet.data import FolderDataset
from difnet.data.base import read_image
from difnet.data.transforms import EvalTransform, TrainTransform
from difnet.training import TrainConfig, train

MEAN, STD = (0.5, 0.5, 0.5, 0.3), (0.25, 0.25, 0.25, 0.2)


@pytest.fixture
def rgbn_folder(tmp_path):
    """`data/train/{images,masks}`: the folder dataset's layout; returns `data/train`."""
    rng = np.random.default_rng(0)
    split = tmp_path / "data" / "train"
    (split / "images").mkdir(parents=True)
    (split / "masks").mkdir()
    for index in range(4):
        pixels = rng.integers(0, 256, (40, 48, 4), dtype=np.uint8)
        Image.fromarray(pixels, mode="RGBA").save(split / "images" / f"{index}.png")
        mask = (pixels[..., 3] > 127).astype(np.uint8)  # the class lives in the 4th band only
        Image.fromarray(mask, mode="L").save(split / "masks" / f"{index}.png")
    return split


def test_four_band_images_are_read_and_normalised_per_channel(rgbn_folder):
    pixels = read_image(rgbn_folder / "images" / "0.png", channels=4)
    assert pixels.shape == (40, 48, 4) and pixels.dtype == np.uint8
    with pytest.raises(ValueError, match=r"has 4 band\(s\) RGBA of uint8; expected 5 8-bit channels"):
        read_image(rgbn_folder / "images" / "0.png", channels=5)
    assert read_image(rgbn_folder / "images" / "0.png", channels=1).shape == (40, 48, 1)
    dataset = FolderDataset(
        rgbn_folder / "images", rgbn_folder / "masks", 2, EvalTransform(MEAN, STD), channels=4
    )
    image, label = dataset[0]
    expected = (
        torch.from_numpy(pixels.copy()).permute(2, 0, 1) / 255 - torch.tensor(MEAN)[:, None, None]
    ) / torch.tensor(STD)[:, None, None]
    torch.testing.assert_close(image, expected)
    augmented, _ = FolderDataset(rgbn_folder / "images", rgbn_folder / "masks", 2,
                                 TrainTransform(32, (0.5, 1.5), True, MEAN, STD), channels=4)[1]  # fmt: skip
    assert augmented.shape == (4, 32, 32)


def test_in_channels_4_trains_on_a_folder_of_rgbn_images_and_predicts(rgbn_folder, tmp_path):
    config = TrainConfig(model="difnet", depth=18, dataset="folder", data_root=str(rgbn_folder.parent),
                         num_classes=2, in_channels=4, mean=MEAN, std=STD, crop_size=32, batch_size=2,
                         epochs=1, max_steps_per_epoch=2, workers=0, device="cpu", progress=False,
                         val_split=None, output_dir=str(tmp_path / "run"))  # fmt: skip
    with single_thread():
        result = train(config)
    assert result.model.in_channels == 4 and result.model.similarity_backbone.conv1.in_channels == 4
    saved = difnet.load_model(tmp_path / "run" / "best")
    assert saved.in_channels == 4
    from difnet.cli import main

    assert main(["predict", "--checkpoint", str(tmp_path / "run" / "best"), "--input",
                 str(rgbn_folder / "images" / "0.png"), "--output", str(tmp_path / "masks"),
                 "--overlay", "--device", "cpu"]) == 0  # fmt: skip
    with Image.open(tmp_path / "masks" / "0.png") as mask:
        assert mask.size == (48, 40)


def test_other_channel_counts_need_their_normalisation_and_a_folder_dataset():
    with pytest.raises(ValueError, match="in_channels 4 needs the data's normalisation: --mean and --std"):
        TrainConfig(dataset="folder", num_classes=2, in_channels=4, device="cpu")
    with pytest.raises(ValueError, match="only the 'folder' dataset reads images other than RGB"):
        TrainConfig(dataset="camvid", in_channels=4, mean=MEAN, std=STD, device="cpu")
    with pytest.raises(ValueError, match="mean and std go together"):
        TrainConfig(dataset="folder", num_classes=2, mean=MEAN, device="cpu")
