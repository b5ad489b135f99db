"""Patient-level Siamese contrast on real grouped frames: CVC-ClinicDB's video sequence ids
stand in for patient ids (frames of one sequence are one patient's polyp)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.utils import DATA_DIR
from zoo.architectures import build_encoder
from zoo.training.augment import Policy
from zoo.training.pretext.registry import ObjectiveError
from zoo.training.pretext.siamese import PatientSiamese, siamese_pairs

POLICY = Policy.build(["random_resized_crop", "intensity_shift"], [], 1)


def encoder(channels: int = 1) -> torch.nn.Module:
    return build_encoder("resnet18", 2, channels, [32, 32], {"widths": [8, 8, 16, 16]})


def cvc_frames() -> tuple[torch.Tensor, torch.Tensor]:
    with np.load(DATA_DIR / "segmentation" / "cvcclinicdb_128.npz") as d:
        images, groups = d["train_images"], d["train_sequence"]
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255)
    return F.interpolate(x, size=(32, 32), mode="area"), torch.from_numpy(groups)


def test_pairs_come_from_the_group_and_negatives_from_other_groups() -> None:
    groups = torch.tensor([3, 3, 5, 7, 7, 7])
    partner, same = siamese_pairs(6, groups, torch.Generator().manual_seed(0), groups.device)
    assert (groups[partner] == groups).all()
    assert partner[2] == 2 and (partner[[0, 1, 3, 4, 5]] != torch.tensor([0, 1, 3, 4, 5])).all()
    # Row i is sample i, column j the partner of j, which shares j's group.
    assert same.tolist() == (groups[:, None] == groups[None, :]).tolist()
    partner, same = siamese_pairs(4, None, None, groups.device)
    assert partner.tolist() == [0, 1, 2, 3] and same.tolist() == torch.eye(4).bool().tolist()


def test_bad_hyperparameters_are_refused() -> None:
    with pytest.raises(ObjectiveError, match="same_patient_longitudinal"):
        PatientSiamese(encoder(), pair_sampling="left_right_eye")
    with pytest.raises(ObjectiveError, match="margin"):
        PatientSiamese(encoder(), margin=0)


def test_learns_on_real_sequences() -> None:
    x, groups = cvc_frames()
    torch.manual_seed(0)
    obj = PatientSiamese(encoder(3))
    opt = torch.optim.Adam(obj.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    history = []
    for _ in range(30):
        idx = torch.randperm(len(x), generator=gen)[:32]
        loss = obj.loss(x[idx], POLICY, gen, groups[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
    # Measured (seed 0): 0.90 over the first 6 steps, 0.47 over the last 6.
    assert sum(history[-6:]) / 6 < 0.7 * sum(history[:6]) / 6
