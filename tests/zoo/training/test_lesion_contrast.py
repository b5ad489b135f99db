"""Lesion-level inter-slice contrast: the necrotic-core mask-out follows the centre
distance transform, the two slabs are neighbours of one volume (or of a group member), the
loss is NT-Xent on their embeddings, and a short run on real brain MRI lowers it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.utils import DATA_DIR
from zoo.architectures import build_encoder
from zoo.training.augment import Policy
from zoo.training.pretext import lesion_contrast
from zoo.training.pretext.base import ObjectiveError
from zoo.training.pretext.lesion_contrast import (
    LesionSliceContrast,
    centre_distance,
    core_mask,
    darken_core,
)
from zoo.training.pretext.slices import slice_at

NONE = Policy(set())
POLICY = Policy.build(["intensity_shift", "random_erasing"], [], 1)  # the catalog's list


def encoder(dims: int = 3) -> torch.nn.Module:
    return build_encoder("resnet18", dims, 1, [28] * dims, {"widths": [8, 8, 16, 16]})


def test_core_covers_the_centre_grows_with_the_radius_and_follows_the_distance() -> None:
    size = (9, 12, 10)
    radii = torch.tensor([0.0, 0.2, 0.4, 0.6, 1.0])
    masks = core_mask(size, radii)
    assert masks.shape == (5, 1, *size)
    assert masks[0].sum() == 0  # radius 0: no core
    assert (masks[1:, 0, 4, 5:7, 4:6] == 1).all()  # the central voxels, for any radius
    volumes = masks.sum((1, 2, 3, 4))
    assert (volumes[1:] > volumes[:-1]).all()  # grows strictly
    assert ((masks[1:] - masks[:-1]) >= 0).all()  # and nests: a larger core holds a smaller
    dist = centre_distance(size)
    assert torch.equal(masks[3, 0].bool(), dist < 0.6)
    # the distance is the normalised Euclidean one: axis ends at about 1, corners at sqrt(3)
    assert dist[4, 0, 5].item() == pytest.approx(math.sqrt(((0.5 / 12) * 2 - 1) ** 2
                                                           + (((4.5 / 9) * 2 - 1) ** 2)
                                                           + (((5.5 / 10) * 2 - 1) ** 2)))
    assert 1.5 < dist.max().item() < math.sqrt(3)
    # radius 1 is the ellipsoid inscribed in the crop: it keeps the corners
    assert masks[4, 0, 0, 0, 0] == 0 and masks[4].mean() < math.pi / 6 + 0.05
    x = torch.ones(5, 1, *size)
    assert torch.equal(darken_core(x, masks), 1 - masks)


def test_the_core_shrinks_in_slabs_away_from_the_centre() -> None:
    obj = LesionSliceContrast(encoder(), max_core_radius=1.0)
    gen = torch.Generator().manual_seed(0)
    x = torch.ones(64, 1, 15, 16, 16)
    centre = obj.necrotic(slice_at(x, torch.full((64,), 7)), [15, 16, 16],
                          torch.full((64,), 7), torch.Generator().manual_seed(0))
    edge = obj.necrotic(slice_at(x, torch.full((64,), 12)), [15, 16, 16],
                        torch.full((64,), 12), gen)  # same radii: same seed
    dark_centre, dark_edge = (1 - centre).sum((1, 2, 3, 4)), (1 - edge).sum((1, 2, 3, 4))
    assert (dark_edge <= dark_centre).all() and dark_centre.sum() > 2 * dark_edge.sum()
    assert dark_centre.max() > 0 and dark_centre.min() >= 0


def labelled_volumes(n: int, depth: int = 16) -> torch.Tensor:
    """Volumes whose voxel (0, 0) of slice d of volume v reads (v * depth + d + 1) / 1024, a
    corner no core reaches, so every slab says where it came from."""
    x = torch.full((n, 1, depth, 12, 12), 0.5)
    x[:, 0, :, 0, 0] = (torch.arange(n)[:, None] * depth + torch.arange(depth) + 1) / 1024
    return x


def decode(slabs: torch.Tensor, depth: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    code = (slabs[:, 0, 1, 0, 0] * 1024).round().long() - 1  # the slab's middle slice
    return code // depth, code % depth


def spy(monkeypatch: pytest.MonkeyPatch, obj: LesionSliceContrast) -> dict[str, list]:
    seen: dict[str, list] = {"slabs": [], "z": []}
    embed, nt_xent = obj.embed, lesion_contrast.losses.nt_xent

    def embed_spy(slab: torch.Tensor) -> torch.Tensor:
        seen["slabs"].append(slab.detach())
        return embed(slab)

    def nt_xent_spy(z1: torch.Tensor, z2: torch.Tensor, t: float) -> torch.Tensor:
        seen["z"].append((z1.detach(), z2.detach(), t))
        return nt_xent(z1, z2, t)

    monkeypatch.setattr(obj, "embed", embed_spy)
    monkeypatch.setattr(lesion_contrast.losses, "nt_xent", nt_xent_spy)
    return seen


def test_slabs_are_central_neighbours_of_one_volume(monkeypatch: pytest.MonkeyPatch) -> None:
    obj = LesionSliceContrast(encoder(), slice_distance=2)
    seen = spy(monkeypatch, obj)
    obj.loss(labelled_volumes(32), NONE, torch.Generator().manual_seed(0))
    (va, da), (vb, db) = (decode(s) for s in seen["slabs"])
    assert torch.equal(va, torch.arange(32)) and torch.equal(vb, torch.arange(32))
    gap = (da - db).abs()
    assert (gap >= 1).all() and (gap <= 2).all() and set(gap.tolist()) == {1, 2}
    assert ((da >= 4) & (da < 12)).all()  # anchors in the central half of 16 slices


def test_group_members_serve_as_longitudinal_positives(monkeypatch: pytest.MonkeyPatch) -> None:
    obj = LesionSliceContrast(encoder(), longitudinal_fraction=1.0)
    seen = spy(monkeypatch, obj)
    groups = torch.tensor([0, 0, 1, 1, 1, 2, 3, 3])
    obj.loss(labelled_volumes(8), NONE, torch.Generator().manual_seed(0), groups)
    (va, _), (vb, _) = (decode(s) for s in seen["slabs"])
    assert torch.equal(va, torch.arange(8))
    assert torch.equal(groups[vb], groups)
    assert vb[5] == 5 and (vb[[0, 1, 2, 3, 4, 6, 7]] != va[[0, 1, 2, 3, 4, 6, 7]]).all()
    # with fraction 0 the groups change nothing: each slab pairs with its own volume
    obj0 = LesionSliceContrast(encoder(), longitudinal_fraction=0.0)
    seen0 = spy(monkeypatch, obj0)
    obj0.loss(labelled_volumes(8), NONE, torch.Generator().manual_seed(0), groups)
    assert torch.equal(decode(seen0["slabs"][1])[0], torch.arange(8))


def naive_nt_xent(z1: torch.Tensor, z2: torch.Tensor, t: float) -> float:
    z = F.normalize(torch.cat([z1, z2]).double(), dim=1)
    n, total = len(z1), 0.0
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        den = sum(math.exp(float(z[i] @ z[k]) / t) for k in range(2 * n) if k != i)
        total -= math.log(math.exp(float(z[i] @ z[j]) / t) / den)
    return total / (2 * n)


def test_loss_is_nt_xent_at_the_temperature_on_the_slab_embeddings(
        monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    obj = LesionSliceContrast(encoder(), temperature=0.1)
    seen = spy(monkeypatch, obj)
    loss = obj.loss(torch.rand(6, 1, 12, 16, 16), POLICY, torch.Generator().manual_seed(1))
    (z1, z2, t), = seen["z"]
    assert t == 0.1 and z1.dtype == torch.float32 and z1.shape == (6, 128)
    assert loss.item() == pytest.approx(naive_nt_xent(z1, z2, 0.1), rel=1e-5)
    # identical embeddings of the two slabs give the minimum: a view finds its partner
    z = F.normalize(torch.eye(6, 128), dim=1)
    assert naive_nt_xent(z, z, 0.1) < 1e-3


def test_gradients_reach_the_encoder_and_runs_are_seeded() -> None:
    torch.manual_seed(0)
    obj = LesionSliceContrast(encoder())
    x = torch.rand(4, 1, 12, 16, 16)
    loss = obj.loss(x, POLICY, torch.Generator().manual_seed(0), torch.tensor([0, 0, 1, 1]))
    loss.backward()
    grads = [p.grad for p in obj.encoder.parameters()]
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0
    obj.eval()  # batch-norm statistics must not move between the two calls
    again = [obj.loss(x, POLICY, torch.Generator().manual_seed(3)).item() for _ in range(2)]
    assert again[0] == again[1]


def test_volumes_cnn_and_catalog_values_are_checked() -> None:
    with pytest.raises(ObjectiveError, match="volumes"):
        LesionSliceContrast(encoder(2)).loss(torch.rand(4, 1, 28, 28), POLICY)
    vit = build_encoder("vit", 3, 1, [28] * 3, {"patch_size": 7, "hidden_size": 24,
                                                 "mlp_dim": 48, "num_layers": 1, "num_heads": 2})
    with pytest.raises(ObjectiveError, match="resnet"):
        LesionSliceContrast(vit)
    with pytest.raises(ObjectiveError, match="recist_box"):
        LesionSliceContrast(encoder(), crop="whole_volume")
    with pytest.raises(ObjectiveError, match="distance_transform"):
        LesionSliceContrast(encoder(), mask_out="cutout")
    with pytest.raises(ObjectiveError, match="temperature"):
        LesionSliceContrast(encoder(), temperature=0.0)


def hippocampus_mri() -> torch.Tensor:
    """Real brain MRI crops (MSD Task04, centred on the hippocampus, which stands in for
    the lesion), 48x64x48 halved to 24x32x24."""
    path = DATA_DIR / "segmentation" / "hippocampus3d_48x64x48.npz"
    if not path.exists():
        pytest.skip(f"real data not found at {path} (see shared/data/README.md)")
    with np.load(path) as d:
        x = torch.from_numpy(d["train_images"][:96]).float().div(255)[:, None]
    return F.avg_pool3d(x, 2)


def test_lesion_slice_contrast_learns_on_real_mri() -> None:
    torch.manual_seed(0)
    obj = LesionSliceContrast(encoder())
    x = hippocampus_mri()
    opt = torch.optim.Adam(obj.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    history = []
    for step in range(20):
        loss = obj.loss(x[(torch.arange(16) + step * 16) % len(x)], POLICY, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
    first, last = sum(history[:5]) / 5, sum(history[-5:]) / 5
    # Measured (seed 0), means of 5 steps: 4.34, 3.74, 3.11, 2.56. Chance is
    # log(2 * 16 - 1) = 3.43 (the start is above it: temperature 0.1 sharpens random
    # similarities); ending well below chance needs the slabs of one volume to match.
    assert last < math.log(31) - 0.5
    assert last < 0.7 * first
