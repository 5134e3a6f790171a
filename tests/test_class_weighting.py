"""Class-balanced training: median-frequency and ENet weights are their formulas on labels counted
by hand, the weighted loss is torch's weighted cross-entropy mean (ignore pixels out, 0 for a batch
without labels), the option is refused by name when bad, and a run trains with it and records it."""

from __future__ import annotations

import argparse
import math
import re
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from data_fixtures import random_image, save_image, save_mask, write_camvid_fixture
from test_training import tiny_config

from difnet.data import CamVid, FolderDataset
from difnet.models import DifNet
from difnet.training import TrainConfig, read_checkpoint, train
from difnet.training.class_weights import ENET_C, class_weights, count_labels
from difnet.training.losses import pixel_loss, training_loss
from difnet.training.records import read_log

# two 2x3 masks of 4 classes, 255 = ignore; class 3 appears in neither
MASKS = (
    [[0, 0, 1], [1, 255, 0]],  # class 0: 3 pixels, class 1: 2; 5 labelled
    [[2, 2, 2], [0, 255, 255]],  # class 0: 1 pixel, class 2: 3; 4 labelled
)


@pytest.fixture
def hand_made(tmp_path) -> FolderDataset:
    rng = np.random.default_rng(0)
    for index, mask in enumerate(MASKS):
        save_image(tmp_path / "images" / f"{index}.png", random_image(rng, (2, 3)))
        save_mask(tmp_path / "masks" / f"{index}.png", np.array(mask))
    return FolderDataset(tmp_path / "images", tmp_path / "masks", num_classes=4)


def test_the_counts_are_per_class_pixels_and_the_labelled_pixels_of_the_images_holding_each(hand_made):
    counts = count_labels(hand_made, 4)
    assert counts.pixels.tolist() == [4, 2, 3, 0]
    assert counts.image_pixels.tolist() == [5 + 4, 5, 4, 0]


def test_median_frequency_weights_are_the_formula_by_hand_and_an_absent_class_weighs_0(hand_made):
    frequency = [Fraction(4, 9), Fraction(2, 5), Fraction(3, 4)]  # pixels / labelled pixels of its images
    median = Fraction(4, 9)
    with pytest.warns(UserWarning, match="no training label holds class\\(es\\) class 3; their weight is 0"):
        weights = class_weights(hand_made, 4, "median-frequency")
    expected = [float(median / f) for f in frequency] + [0.0]
    assert expected[:3] == pytest.approx([1.0, 10 / 9, 16 / 27])
    torch.testing.assert_close(weights, torch.tensor(expected))


def test_enet_weights_are_one_over_log_of_c_plus_the_class_share(hand_made):
    with pytest.warns(UserWarning, match="class 3"):
        weights = class_weights(hand_made, 4, "enet")
    expected = [1 / math.log(ENET_C + share) for share in (4 / 9, 2 / 9, 3 / 9)] + [0.0]
    torch.testing.assert_close(weights, torch.tensor(expected))


def test_labels_without_a_labelled_pixel_are_refused(tmp_path):
    save_image(tmp_path / "images" / "a.png", random_image(np.random.default_rng(0), (4, 4)))
    save_mask(tmp_path / "masks" / "a.png", np.full((4, 4), 255))
    with pytest.raises(ValueError, match="hold no labelled pixel"):
        class_weights(FolderDataset(tmp_path / "images", tmp_path / "masks", num_classes=2), 2, "enet")


def test_counting_reads_the_labels_as_loaded_and_resized_without_decoding_the_images(tmp_path):
    root = write_camvid_fixture(tmp_path, n_train=3, size=(36, 48))
    dataset = CamVid(root, "train", resize=(18, 24))
    for index in range(len(dataset)):
        assert np.array_equal(dataset.untransformed_label(index), dataset.untransformed(index)[1])
    labels = np.stack([dataset.untransformed(index)[1] for index in range(len(dataset))])
    expected = np.bincount(labels[labels != 255], minlength=11)
    for sample in dataset.samples:  # only the masks are read
        sample.image.write_bytes(b"not a png")
    assert count_labels(dataset, 11).pixels.tolist() == expected.tolist()  # CamVid's void 11 ignored


def test_a_dataset_that_is_no_segmentation_dataset_is_refused():
    with pytest.raises(TypeError, match="counts the labels of a SegmentationDataset .* got list"):
        class_weights([(torch.zeros(3, 4, 4), torch.zeros(4, 4))], 2, "enet")


def random_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 4, 5, 6, generator=generator)
    labels = torch.randint(0, 4, (2, 5, 6), generator=generator)
    labels[0, :2] = 255
    return logits, labels


def test_the_weighted_loss_is_torchs_weighted_cross_entropy_mean():
    logits, labels = random_batch()
    weights = torch.tensor([0.3, 2.0, 1.1, 0.0])
    expected = F.cross_entropy(logits, labels, weight=weights, ignore_index=255)
    torch.testing.assert_close(pixel_loss(logits, labels, weights), expected)


def test_uniform_weights_give_the_unweighted_loss():
    logits, labels = random_batch(1)
    torch.testing.assert_close(pixel_loss(logits, labels, torch.full((4,), 3.7)), pixel_loss(logits, labels))


def test_ignore_pixels_count_nowhere_and_a_batch_without_weighted_labels_is_0():
    logits, labels = random_batch(2)
    weights = torch.tensor([0.5, 1.5, 1.0, 4.0])
    changed = logits.clone()
    changed[0, :, :2] = 100.0  # the ignored rows
    torch.testing.assert_close(pixel_loss(changed, labels, weights), pixel_loss(logits, labels, weights))
    for unlabelled in (torch.full_like(labels, 255), torch.where(labels == 255, 255, 3)):
        logits.requires_grad_(True)
        loss = pixel_loss(logits, unlabelled, torch.tensor([1.0, 1.0, 1.0, 0.0]))
        loss.backward()
        assert loss.item() == 0 and torch.count_nonzero(logits.grad) == 0
        logits.grad = None


def test_training_loss_weights_the_main_and_the_auxiliary_seed_term():
    torch.manual_seed(0)
    model = DifNet(encoder="small_cnn", num_classes=3).eval()
    images, labels = torch.randn(2, 3, 32, 32), torch.randint(0, 3, (2, 32, 32))
    labels[0, :5] = 255
    weights = torch.tensor([0.2, 1.0, 3.0])
    out = model(images, intermediates=True)
    scores = F.interpolate(out.scores, size=(32, 32), mode="bilinear", align_corners=False)
    by_hand = F.cross_entropy(out.logits, labels, weight=weights, ignore_index=255) + 0.4 * F.cross_entropy(
        scores, labels, weight=weights, ignore_index=255
    )
    loss = training_loss(model, images, labels, aux_seed_weight=0.4, class_weights=weights)
    torch.testing.assert_close(loss, by_hand)
    torch.testing.assert_close(
        training_loss(model, images, labels, class_weights=weights),
        F.cross_entropy(out.logits, labels, weight=weights, ignore_index=255),
    )


def test_a_bad_class_weighting_is_refused_naming_the_option_and_the_choices(capsys):
    refused = re.escape("class_weighting must be one of median-frequency, enet, None (got 'inverse')")
    with pytest.raises(ValueError, match=refused):
        TrainConfig(class_weighting="inverse", device="cpu")
    parser = argparse.ArgumentParser()
    TrainConfig.add_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["--class-weighting", "inverse"])
    assert "--class-weighting: invalid choice: 'inverse'" in capsys.readouterr().err
    config = TrainConfig.from_args(
        parser.parse_args(["--class-weighting", "median-frequency", "--device", "cpu"])
    )
    assert config.class_weighting == "median-frequency"
    assert TrainConfig.from_dict(config.to_dict()) == config


def test_a_run_trains_with_the_weights_and_records_them(tmp_path, monkeypatch):
    from difnet.training import loop

    seen = []

    def recording(*arguments, class_weights=None, **options):
        seen.append(class_weights)
        return training_loss(*arguments, class_weights=class_weights, **options)

    monkeypatch.setattr(loop, "training_loss", recording)
    config = tiny_config(tmp_path, class_weighting="median-frequency", epochs=1, aux_seed_weight=0.4)
    result = train(config)
    expected = class_weights(config.build_dataset("train"), 3, "median-frequency")
    assert len(seen) == 2 and all(torch.equal(weights, expected) for weights in seen)
    assert result.class_weights == expected.tolist() and result.history[-1]["step"] == 2
    names = result.model.class_names
    by_name = dict(zip(names, expected.tolist(), strict=True))
    record = next(r for r in read_log(config.output_dir) if r["event"] == "class_weights")
    assert (record["method"], record["weights"]) == ("median-frequency", by_name)
    assert read_checkpoint(tmp_path / "run" / "last.pt")["class_weights"] == by_name
    losses = [r["loss"] for r in read_log(config.output_dir) if r["event"] == "train"]
    assert losses and all(math.isfinite(loss) for loss in losses)
