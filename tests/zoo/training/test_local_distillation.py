"""PGL and UniMiSS+: crops and resampling put each voxel where it belongs, the losses match
their formulas, gradients reach the encoder, and short runs on real images learn."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from tests.utils import medmnist
from zoo.architectures import build_encoder
from zoo.training.augment import Policy
from zoo.training.pretext.base import standardise
from zoo.training.pretext.local_distillation import (
    PGL,
    CropPair,
    UniMiSSPlus,
    draw_crops,
    local_consistency,
    overlap_grid,
    patch_mask,
    render,
    sample,
    tile_slice,
)

POLICY = Policy.build(["random_resized_crop", "horizontal_flip", "intensity_shift"], [], 1)
NONE = Policy(set())


def encoder(dims: int, depth: str = "resnet18", widths: tuple[int, ...] = (8, 8, 16, 16)
            ) -> nn.Module:
    return build_encoder(depth, dims, 1, [28] * dims, {"widths": list(widths)})


def grads_reach(obj: nn.Module) -> bool:
    return any(p.grad is not None and float(p.grad.abs().sum()) > 0
               for p in obj.encoder.parameters())


def test_local_consistency_matches_formula() -> None:
    p1, z1, p2, z2 = (torch.randn(6, 5) for _ in range(4))
    expected = 0.0
    for p, z in ((p1, z2), (p2, z1)):
        expected -= sum(float(p[i] @ z[i] / (p[i].norm() * z[i].norm())) for i in range(6)) / 12
    assert math.isclose(float(local_consistency(p1, z1, p2, z2)), expected, rel_tol=1e-5)
    # identical features: the minimum, -1
    assert math.isclose(float(local_consistency(p1, p1, p1, p1)), -1.0, rel_tol=1e-6)


def one(pair: CropPair, b: int) -> CropPair:
    return CropPair(pair.start[b:b + 1], pair.size, pair.image, pair.turn[b:b + 1])


def test_views_and_overlap_read_the_right_voxels() -> None:
    """Each voxel value is its own index, so a value read is a position. An unturned view
    is its crop; whatever the flips and quarter turns, reading both views on the overlap
    grid at voxel resolution gives back exactly the image's shared box, in image order."""
    x = torch.arange(4 * 10 * 12 * 12, dtype=torch.float32).view(4, 1, 10, 12, 12)
    ops = {"horizontal_flip", "vertical_flip", "rotation_90"}
    pair = draw_crops(list(x.shape), [6, 8, 8], 0.3, ops, torch.Generator().manual_seed(3),
                      x.device)
    turned = 0
    for b in range(4):
        single = one(pair, b)
        for i in (0, 1):
            view = render(x[b:b + 1], single, i)
            s = pair.start[b, i].tolist()
            crop = x[b, 0, s[0]:s[0] + 6, s[1]:s[1] + 8, s[2]:s[2] + 8]
            if torch.equal(single.turn[0, i], torch.eye(3)):
                assert torch.allclose(view[0, 0], crop, atol=1e-3)
            else:
                turned += 1
                assert torch.allclose(view.flatten().sort().values, crop.flatten().sort().values,
                                      atol=1e-3)
        lo = pair.start[b].max(0).values
        hi = (pair.start[b] + torch.tensor([6, 8, 8])).min(0).values
        shared = x[b, 0, lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        for i in (0, 1):
            grid = overlap_grid(single, i, list(shared.shape))
            read = sample(render(x[b:b + 1], single, i), grid)[0, 0]
            assert torch.allclose(read, shared, atol=1e-3)
    assert turned > 0  # the flips and turns were exercised


def test_crops_keep_overlap_min_and_scale_to_small_images() -> None:
    obj = PGL(encoder(2), crop_size=[96, 96, 96], overlap_min=0.3)
    assert obj.crop_for([28, 28, 28]) == [22, 22, 22]  # ceil(28 / (2 - 0.3 ** (1/3)))
    assert obj.crop_for([28, 28]) == [20, 20]  # ceil(28 / (2 - 0.3 ** (1/2)))
    assert obj.crop_for([200, 200, 200]) == [96, 96, 96]  # large volumes: as the paper
    gen = torch.Generator().manual_seed(0)
    for size, crop in (([200, 200, 200], [96, 96, 96]), ([28, 28, 28], [22, 22, 22])):
        pair = draw_crops([512, 1, *size], crop, 0.3, set(), gen, torch.device("cpu"))
        side = torch.tensor(crop)
        shared = (side - (pair.start[:, 0] - pair.start[:, 1]).abs()).clamp(min=0)
        fraction = shared.prod(1).float() / side.prod()
        assert float(fraction.min()) >= 0.3 - 1e-6
        assert float(fraction.min()) < 0.45  # and the constraint binds: crops do move
        assert int((pair.start + side).max()) <= size[0] and int(pair.start.min()) >= 0


def test_pgl_identical_aligned_features_give_the_minimum() -> None:
    """With overlap_min 1 both crops are the whole image; without a predictor (identity)
    and before any step (target = online) the aligned features are identical: -1."""
    torch.manual_seed(0)
    obj = PGL(encoder(2), crop_size=[28, 28], overlap_min=1.0)
    obj.predictor = nn.Identity()
    loss = obj.loss(torch.rand(4, 1, 28, 28), NONE, torch.Generator().manual_seed(0))
    assert math.isclose(loss.item(), -1.0, abs_tol=1e-5)
    obj = PGL(encoder(2), crop_size=[28, 28], overlap_min=0.3)  # crops differ: above -1
    obj.predictor = nn.Identity()
    loss = obj.loss(torch.rand(4, 1, 28, 28), NONE, torch.Generator().manual_seed(0))
    assert loss.item() > -0.999


def test_pgl_learns_on_real_volumes() -> None:
    images, _ = medmnist("adrenalmnist3d", split="train", n=64)
    x = torch.from_numpy(images).float().div(255)[:, None]
    torch.manual_seed(0)
    obj = PGL(encoder(3, "resnet10", (4, 4, 8, 8)), ema_momentum=0.99,
              crop_size=[96, 96, 96], overlap_min=0.3)  # the catalog's values
    opt = torch.optim.Adam(obj.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    history = []
    for step in range(8):
        loss = obj.loss(x[(torch.arange(4) + step * 4) % len(x)], POLICY, gen)
        opt.zero_grad()
        loss.backward()
        if step == 0:
            assert grads_reach(obj)
        opt.step()
        obj.after_step()
        history.append(loss.item())
    # measured: -0.22 on average over the first three steps, -0.60 over the last three
    assert sum(history[-3:]) / 3 < sum(history[:3]) / 3 - 0.25


def test_patch_mask_and_tile_slice() -> None:
    gen = torch.Generator().manual_seed(0)
    mask = patch_mask(torch.Size([3, 1, 10, 10]), 4, 0.5, gen, torch.device("cpu"))
    assert mask.shape == (3, 1, 10, 10)
    blocks = mask[:, 0, :8, :8].reshape(3, 2, 4, 2, 4)
    assert torch.equal(blocks.amax((2, 4)), blocks.amin((2, 4)))  # constant per patch
    assert not patch_mask(torch.Size([2, 1, 8, 8, 8]), 4, 0.0, gen, torch.device("cpu")).any()
    v = torch.rand(2, 1, 5, 6, 6)
    pseudo = tile_slice(v, torch.tensor([1, 4]))
    for d in range(5):
        assert torch.equal(pseudo[0, :, d], v[0, :, 1]) and torch.equal(pseudo[1, :, d],
                                                                         v[1, :, 4])


def test_unimiss_loss_matches_dino_formula_on_a_slice_constant_volume() -> None:
    """A volume constant along D is its own pseudo-volume; with no augmentation and no
    masking both views are the volume, the teacher is still the student, and the loss is
    DINO's cross entropy of a student output against itself (centre 0), written out, for
    all three pairs (two cross-view, one slice-volume); the restoration term is empty."""
    torch.manual_seed(0)
    obj = UniMiSSPlus(encoder(3), mask_ratio=0.0, output_dim=32)
    x = torch.rand(2, 1, 1, 12, 12).expand(2, 1, 12, 12, 12).contiguous()
    s = obj.head(obj.encoder(standardise(x))).detach()
    expected = 0.0
    for b in range(2):
        t = [math.exp(v / 0.04) for v in s[b].tolist()]
        z = sum(math.exp(v / 0.1) for v in s[b].tolist())
        expected -= sum(ti / sum(t) * math.log(math.exp(v / 0.1) / z)
                        for ti, v in zip(t, s[b].tolist(), strict=True)) / 2
    loss = obj.loss(x, NONE, torch.Generator().manual_seed(0))
    assert math.isclose(loss.item(), expected, rel_tol=1e-4)
    assert float(obj.last_terms["reconstruction"]) == 0.0
    loss.backward()
    assert grads_reach(obj)
    assert float(s.abs().max()) <= 1.0 + 1e-6  # cosine logits of DINO's normalised head
    assert torch.allclose(s, F.normalize(obj.head.mlp(obj.encoder(standardise(x))), dim=1)
                          @ F.normalize(obj.head.prototypes, dim=1).t(), atol=1e-5)


def test_slice_volume_term_follows_its_switch() -> None:
    """The online encoder runs once per masked view, plus once on the pseudo-volume when
    slice-volume consistency is on and the input is a volume."""
    for dims, switch, runs in ((3, True, 3), (3, False, 2), (2, True, 2)):
        torch.manual_seed(0)
        obj = UniMiSSPlus(encoder(dims), slice_volume_consistency=switch, output_dim=32)
        calls: list[int] = []
        obj.encoder.net.layer4.register_forward_hook(lambda *_, seen=calls: seen.append(1))
        obj.loss(torch.rand(2, 1, *[12] * dims), POLICY, torch.Generator().manual_seed(0))
        assert len(calls) == runs


def test_unimiss_learns_on_real_images() -> None:
    images, _ = medmnist("pneumoniamnist", split="train", n=256)
    x = torch.from_numpy(images).float().div(255)[:, None]
    torch.manual_seed(0)
    obj = UniMiSSPlus(encoder(2, "resnet10"), ema_momentum=0.996, slice_volume_consistency=True)
    opt = torch.optim.Adam(obj.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    kl, restore = [], []
    for step in range(30):
        loss = obj.loss(x[(torch.arange(16) + step * 16) % len(x)], POLICY, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        obj.after_step()
        terms = {k: float(v) for k, v in obj.last_terms.items()}
        # The student can only lower KL(teacher || student); the rest of the cross entropy,
        # the teacher's own entropy, rises as centring spreads the teacher out (DINO's
        # loss falls over epochs, not over 30 steps), so the total stays near 7.0 here.
        kl.append(terms["distillation"] - terms["teacher_entropy"])
        restore.append(terms["reconstruction"])
    first, last = slice(0, 8), slice(-8, None)

    def mean(v: list[float], part: slice) -> float:
        return sum(v[part]) / len(v[part])

    # measured: restoration error 0.229 -> 0.094, KL 0.815 -> 0.664
    assert mean(restore, last) < 0.6 * mean(restore, first)
    assert mean(kl, last) < mean(kl, first) - 0.08
