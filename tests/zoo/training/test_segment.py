"""Segmentation fine-tuning on small real subsets (Kvasir-SEG polyps at 64 px, MSD
hippocampus volumes at 48x64x48): the loss learns, image and mask move together, metrics
equal hand-computed values, patches and sliding windows cover volumes, the validation
Dice chooses the checkpoint and the test split is scored once with the dataset's spacing."""

from __future__ import annotations

import math

import pytest
import torch

from tests.zoo.seg_data import HIPPOCAMPUS, KVASIR, load_seg
from zoo.architectures import build_encoder
from zoo.datasets.base import Dataset
from zoo.segmentation import Segmenter, segmenter_from_encoder
from zoo.training.augment_names import KNOWN
from zoo.training.seg_augment import (
    AugmentationError,
    SegmentationPolicy,
    augment_pair,
    random_crop,
)
from zoo.training.seg_augment_names import SEGMENTATION
from zoo.training.seg_metrics import mean_foreground_dice, segmentation_scores
from zoo.training.segment import (
    SegmentSettings,
    SegmentSettingsError,
    dice_ce_loss,
    finetune_segmenter,
    mask_subset,
    train_step,
)
from zoo.training.train import to_unit

TINY = {"widths": [8, 8, 16, 16]}


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)  # the other core is someone else's


@pytest.fixture(scope="module")
def kvasir() -> Dataset:
    return load_seg(KVASIR, {"train": 16, "val": 8, "test": 8}, side=64)


@pytest.fixture(scope="module")
def hippocampus() -> Dataset:
    data = load_seg(HIPPOCAMPUS, {"train": 6, "val": 2, "test": 2})
    data.info["spacing"] = [2.0, 1.0, 1.0]  # anisotropic, to see it reach the metrics
    return data


def model_for(data: Dataset, arch: str = "resnet18") -> Segmenter:
    torch.manual_seed(0)
    dims = data.spatial_dims
    encoder = build_encoder(arch, dims, data.channels, [28] * dims, TINY)
    return segmenter_from_encoder(encoder, len(data.info["mask_classes"]), data.image_size,
                                  [0.5], [0.5])


def settings(**changes: object) -> SegmentSettings:
    base = {"label_fraction": 1.0, "seed": 0, "epochs": 1, "lr": 1e-2, "batch_size": 8,
            "device": torch.device("cpu")}
    return SegmentSettings(**{**base, **changes})


def test_loss_decreases_on_a_fixed_batch(kvasir: Dataset) -> None:
    model = model_for(kvasir).train()
    train = kvasir.splits["train"]
    x, y = to_unit(train.images[:8]), train.masks[:8].long()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss_fn = dice_ce_loss()
    losses = [float(train_step(model, loss_fn, opt, x, y)) for _ in range(8)]
    assert losses[-1] < 0.8 * losses[0], losses


def thresholded(images: torch.Tensor) -> torch.Tensor:
    """A mask that is a pure function of the image: red channel above mid-grey. No uint8
    value lies within 1/510 of the cut, so resampling noise cannot flip a pixel."""
    return (images[:, 0] > 0.5).to(torch.uint8)


def test_exact_moves_keep_image_and_mask_together(kvasir: Dataset) -> None:
    images = to_unit(kvasir.splits["train"].images[:12])
    policy = SegmentationPolicy.build(["horizontal_flip", "vertical_flip", "rotation_90"], 3)
    moved, masks = augment_pair(images, thresholded(images), policy,
                                torch.Generator().manual_seed(0))
    assert not torch.equal(moved, images)  # something moved
    assert torch.equal(masks, thresholded(moved))


def test_rotations_and_zoom_keep_image_and_mask_together(kvasir: Dataset) -> None:
    """Bilinear image, nearest-neighbour mask on one grid: they disagree only where
    interpolation blurs an edge; labels stay labels; intensity changes leave masks be."""
    images = to_unit(kvasir.splits["train"].images[:12])
    truth = thresholded(images)
    policy = SegmentationPolicy.build(["small_rotation", "rotation_free",
                                       "random_resized_crop", "gamma", "gaussian_noise"], 3)
    gen = torch.Generator().manual_seed(1)
    moved, masks = augment_pair(images, truth, policy, gen)
    assert masks.dtype == torch.uint8 and set(masks.unique().tolist()) <= {0, 1}
    spatial = SegmentationPolicy(policy.spatial, None)
    plain, same = augment_pair(images, truth, spatial, torch.Generator().manual_seed(1))
    assert torch.equal(same, masks)  # the intensity models did not touch the masks
    agree = (thresholded(plain) == masks).float().mean()
    assert agree > 0.97, float(agree)
    assert not torch.equal(masks, truth)


def test_patches_cut_image_and_mask_at_one_place(hippocampus: Dataset) -> None:
    train = hippocampus.splits["train"]
    images = train.images
    masks = (images[:, 0] > 100).to(torch.uint8)
    crops, crop_masks = random_crop(images, masks, [32, 32, 32], torch.Generator())
    assert crops.shape == (6, 1, 32, 32, 32) and crop_masks.shape == (6, 32, 32, 32)
    assert torch.equal(crop_masks, (crops[:, 0] > 100).to(torch.uint8))
    whole, _ = random_crop(images, masks, [64, 64, 64], torch.Generator())
    assert whole is images  # a patch as large as the image is the image


def test_augmentations_segmentation_cannot_use_are_refused() -> None:
    assert SEGMENTATION <= KNOWN
    with pytest.raises(AugmentationError, match="random_erasing .hides"):
        SegmentationPolicy.build(["horizontal_flip", "random_erasing"], 1)
    with pytest.raises(AugmentationError, match="elastic_warp .not a known"):
        SegmentationPolicy.build(["elastic_warp"], 1)
    gray = SegmentationPolicy.build(["color_jitter", "gamma"], 1)
    assert "color_jitter" in gray.skipped and gray.intensity.ops == {"gamma"}


def known_case() -> tuple[torch.Tensor, torch.Tensor]:
    """Three 20x20 cases, classes 1 (squares) and 2 (lines):
    0: class 1 half predicted (Dice 2*50/150); class 2 a line predicted 3 columns away.
    1: class 1 exact; class 2 absent from the reference but predicted (a false positive).
    2: class 1 missed entirely; class 2 absent from both."""
    truth = torch.zeros(3, 20, 20, dtype=torch.uint8)
    pred = torch.zeros_like(truth)
    truth[:, 2:12, 2:12] = 1
    pred[0, 2:12, 2:7] = 1
    truth[0, 5:15, 14] = 2
    pred[0, 5:15, 17] = 2
    pred[1, 2:12, 2:12] = 1
    pred[1, 15:18, 15:18] = 2
    return pred, truth


def test_metrics_equal_hand_computed_values() -> None:
    pred, truth = known_case()
    names = ["background", "square", "line"]
    # Columns 0.5 mm apart, rows 1 mm: every line pixel is 3 x 0.5 = 1.5 mm from the other.
    scores = segmentation_scores(pred, truth, names, spacing=[1.0, 0.5], tolerance=1.0)
    square, line = scores["classes"]["square"], scores["classes"]["line"]
    assert square["dice"] == pytest.approx((2 * 50 / 150 + 1 + 0) / 3, abs=1e-4)
    assert (square["cases"], square["hd95_cases"], square["missed"]) == (3, 2, 1)
    assert scores["per_case"][1]["hd95_mm"]["square"] == 0.0
    assert scores["per_case"][1]["surface_dice"]["square"] == 1.0
    assert scores["per_case"][2]["surface_dice"]["square"] == 0.0  # missed: scored 0
    assert scores["per_case"][2]["hd95_mm"]["square"] is None  # infinite: left out
    assert line["dice"] == 0.0 and line["hd95_mm"] == pytest.approx(1.5)
    assert line["surface_dice"] == 0.0  # 1.5 mm apart, tolerance 1 mm
    assert (line["cases"], line["reference_empty"], line["false_positive_on_empty"]) == (1, 2, 1)
    assert scores["mean"]["dice"] == pytest.approx((square["dice"] + 0) / 2, abs=1e-4)
    looser = segmentation_scores(pred, truth, names, spacing=[1.0, 0.5], tolerance=2.0)
    assert looser["classes"]["line"]["surface_dice"] == 1.0
    assert mean_foreground_dice(pred, truth, 3) == pytest.approx(square["dice"] / 2, abs=1e-4)


def test_mask_subset_is_seeded() -> None:
    a, b = mask_subset(100, 0.1, seed=0), mask_subset(100, 0.1, seed=0)
    assert torch.equal(a, b) and len(a) == 10
    assert not torch.equal(a, mask_subset(100, 0.1, seed=1))
    assert len(mask_subset(5, 0.01, seed=0)) == 1
    with pytest.raises(SegmentSettingsError):
        mask_subset(10, 0.0, seed=0)


def test_finetune_2d_keeps_the_best_validation_epoch(kvasir: Dataset) -> None:
    events: list[tuple[dict, dict | None, str | None]] = []
    start = model_for(kvasir)
    before = {k: v.clone() for k, v in start.state_dict().items()}
    out = finetune_segmenter(start, kvasir, settings(epochs=2, label_fraction=0.5),
                             lambda p, m, line: events.append((p, m, line)))
    assert out.labelled == 8
    assert [h["epoch"] for h in out.history] == [1, 2]
    assert all(0 <= h["val_dice"] <= 1 and h["train_loss"] > 0 for h in out.history)
    assert out.report["val_dice"] == max(h["val_dice"] for h in out.history)
    assert set(out.metrics) == {"dice", "hd95_mm", "surface_dice", "dice/polyp",
                                "hd95_mm/polyp", "surface_dice/polyp"}
    assert 0 <= out.metrics["dice"] <= 1 and out.report["cases"] == 8
    assert out.report["spacing_mm"] == [1.0, 1.0] and not out.report["spacing_declared"]
    assert any(m and "val_dice" in m for _, m, _ in events)
    assert any(p.get("percent") == 100.0 for p, _, _ in events)
    assert all(torch.equal(before[k], v) for k, v in start.state_dict().items())  # a copy
    assert next(out.model.parameters()).device.type == "cpu"


def test_finetune_3d_trains_on_patches_and_predicts_in_windows(
        hippocampus: Dataset, monkeypatch: pytest.MonkeyPatch) -> None:
    import monai.inferers

    calls: list[tuple[int, ...]] = []
    real = monai.inferers.sliding_window_inference

    def spy(inputs: torch.Tensor, roi_size: list[int], *args: object, **kwargs: object
            ) -> torch.Tensor:
        calls.append(tuple(roi_size))
        return real(inputs, roi_size, *args, **kwargs)

    monkeypatch.setattr(monai.inferers, "sliding_window_inference", spy)
    out = finetune_segmenter(model_for(hippocampus, "resnet10"), hippocampus,
                             settings(batch_size=2, patch_size=[32, 32, 32]))
    assert calls and set(calls) == {(32, 32, 32)}  # validation and test volumes
    assert out.report["spacing_mm"] == [2.0, 1.0, 1.0] and out.report["spacing_declared"]
    assert out.report["surface_tolerance_mm"] == 2.0  # one voxel along the coarsest axis
    assert set(out.report["classes"]) == {"anterior", "posterior"}
    for name in ("anterior", "posterior"):
        dice = out.metrics[f"dice/{name}"]
        assert dice is not None and 0 <= dice <= 1 and not math.isnan(dice)


def test_masks_must_fit_the_model(kvasir: Dataset) -> None:
    three = segmenter_from_encoder(build_encoder("resnet18", 2, 3, [28, 28], TINY), 3,
                                   [64, 64], [0.5], [0.5])
    with pytest.raises(SegmentSettingsError, match="declares 2"):
        finetune_segmenter(three, kvasir, settings())


def test_a_frozen_encoder_stays_as_given(kvasir: Dataset) -> None:
    """Decoder-only training: encoder weights and batch-norm statistics unchanged."""
    start = model_for(kvasir)
    out = finetune_segmenter(start, kvasir, settings(freeze_encoder=True))
    before, after = start.state_dict(), out.model.state_dict()
    encoder = [k for k in before if k.startswith("encoder.")]
    assert any("running_mean" in k for k in encoder)
    assert all(torch.equal(before[k], after[k]) for k in encoder)
    assert not all(torch.equal(before[k], after[k]) for k in before if k.startswith("head."))
