"""Slice ordering and SSMTL: the slice draws keep their invariants, and a short run on real
3D MedMNIST volumes lowers the loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.utils import DATA_DIR
from zoo.architectures import build_encoder
from zoo.training.augment import Policy
from zoo.training.pretext.base import ObjectiveError
from zoo.training.pretext.slices import SSMTL, SliceOrdering, partner_slices, slice_at

POLICY = Policy.build(["intensity_shift"], [], 1)


def encoder(dims: int = 3) -> torch.nn.Module:
    return build_encoder("resnet18", dims, 1, [28] * dims, {"widths": [8, 8, 16, 16]})


def test_partner_slices_stay_in_range_differ_and_reach_both_sides() -> None:
    index = torch.tensor([0, 27, 13, 5] * 500)
    other = partner_slices(index, 28, 4, torch.Generator().manual_seed(0))
    assert ((other - index).abs() <= 4).all() and (other != index).all()
    assert ((other >= 0) & (other < 28)).all()
    middle = other[index == 13] - 13
    assert set(middle.tolist()) == {-4, -3, -2, -1, 1, 2, 3, 4}  # uniform over both sides
    assert (other[index == 0] > 0).all() and (other[index == 27] < 27).all()


def test_slice_at_picks_each_volume_its_own_slice() -> None:
    x = torch.arange(2 * 5).float().reshape(2, 1, 5, 1, 1).expand(2, 1, 5, 3, 3)
    s = slice_at(x, torch.tensor([1, 4]))
    assert s.shape == (2, 1, 3, 3, 3)
    assert s[0, 0, :, 0, 0].tolist() == [0, 1, 2]  # centred on slice 1
    assert s[1, 0, :, 0, 0].tolist() == [8, 9, 9]  # slice 4 of volume 1, clamped at the end


def test_volumes_only_and_hyperparameters_checked() -> None:
    with pytest.raises(ObjectiveError, match="volumes"):
        SliceOrdering(encoder(2)).loss(torch.rand(2, 1, 28, 28), POLICY)
    with pytest.raises(ObjectiveError, match="random_pairs"):
        SliceOrdering(encoder(), pair_sampling="adjacent")
    with pytest.raises(ObjectiveError, match="cosine"):
        SSMTL(encoder(), similarity="l2")


def hippocampus_mri() -> torch.Tensor:
    """Real brain MRI crops (MSD Task04), 48x64x48 halved to 24x32x24: intensities, not
    the binary shapes of the 3D MedMNIST sets, so slices differ in anatomy."""
    with np.load(DATA_DIR / "segmentation" / "hippocampus3d_48x64x48.npz") as d:
        x = torch.from_numpy(d["train_images"][:96]).float().div(255)[:, None]
    return F.avg_pool3d(x, 2)


def run(obj: torch.nn.Module, steps: int, lr: float = 1e-3) -> list[float]:
    x = hippocampus_mri()
    opt = torch.optim.Adam(obj.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(0)
    history = []
    for step in range(steps):
        loss = obj.loss(x[(torch.arange(16) + step * 16) % len(x)], POLICY, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
    return history


def test_slice_ordering_learns_the_depth_axis_of_real_mri() -> None:
    torch.manual_seed(0)
    history = run(SliceOrdering(encoder(), max_slice_distance=16), 80, lr=3e-3)
    # Measured (seed 0): 0.695 over the first 10 steps, 0.611 over the last 20; chance is
    # log 2 = 0.693. Many slices of these zero-padded crops are empty, which caps it early.
    assert sum(history[-20:]) / 20 < 0.65
    assert sum(history[-20:]) / 20 < sum(history[:10]) / 10 - 0.04


def test_ssmtl_learns_on_real_mri() -> None:
    torch.manual_seed(0)
    history = run(SSMTL(encoder()), 40, lr=3e-3)
    # Measured (seed 0), means of 10 steps: 3.55, 2.89, 2.63, 2.33. The match term starts
    # at chance, log(2 * 16 - 1) = 3.43; the restoration term is the small rest.
    assert sum(history[-10:]) / 10 < 0.8 * sum(history[:10]) / 10
