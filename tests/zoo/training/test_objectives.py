"""Objectives: gradients reach the encoder, momentum targets move, data transforms keep
their invariants, and a short run on real images lowers the loss."""

from __future__ import annotations

import math

import pytest
import torch

from tests.utils import medmnist
from zoo.architectures import build_encoder
from zoo.training.augment import Policy
from zoo.training.pretext.base import EMA
from zoo.training.pretext.contrastive import group_partners
from zoo.training.pretext.generative import hole_mask, swap_patches
from zoo.training.pretext.predictive import RubiksCube, _tiles, _untile
from zoo.training.pretext.registry import OBJECTIVES, ObjectiveError, build_objective

POLICY = Policy.build(["random_resized_crop", "horizontal_flip", "intensity_shift"], [], 1)
VIT = {2: {"patch_size": 4, "hidden_size": 48, "mlp_dim": 96, "num_layers": 2, "num_heads": 3},
       3: {"patch_size": 7, "hidden_size": 48, "mlp_dim": 96, "num_layers": 2, "num_heads": 3}}


# Objectives whose defining input has several channels (modalities, RGB stains).
CHANNELS: dict[str, int] = {"self_path": 3, "cross_modal_synthesis": 2,
                            "missing_sequence_synthesis": 2, "clip_cross_modal": 2,
                            "colorization": 3}


def encoder_for(kind: str, dims: int, channels: int = 1):  # noqa: ANN201
    if kind == "vit":
        return build_encoder("vit", dims, channels, [28] * dims, VIT[dims])
    return build_encoder("resnet18", dims, channels, [28] * dims, {"widths": [8, 8, 16, 16]})


def objective_for(method: str, dims: int):  # noqa: ANN201
    """The objective on a small encoder of the kind it needs (ViT or CNN)."""
    kind = OBJECTIVES[method][1]
    return build_objective(method, encoder_for("vit" if kind == "vit" else "cnn", dims,
                                               CHANNELS.get(method, 1)))


# The catalog's dims, for objectives that run in one only.
ONLY_DIMS = {"rubiks_cube": 3, "jigsaw": 2, "contrastive_clustering": 2, "slice_ordering": 3,
             "ssmtl": 3, "rotation_contrastive": 2, "parcl": 2, "pgl": 3, "rubiks_cube_plus": 3,
             "self_path": 2, "temporal_order": 3, "spatiotemporal_transform": 3,
             "colorization": 2, "lesion_slice_contrast": 3, "residual_cuboid_masking": 3,
             "spatial_awareness": 3}
CASES = [(m, d) for m in OBJECTIVES for d in (2, 3) if ONLY_DIMS.get(m, d) == d]


@pytest.mark.parametrize(("method", "dims"), CASES, ids=[f"{m}-{d}d" for m, d in CASES])
def test_loss_is_finite_and_trains_the_encoder(method: str, dims: int) -> None:
    torch.manual_seed(0)
    obj = objective_for(method, dims)
    x = torch.rand(6 if dims == 2 else 4, CHANNELS.get(method, 1), *[28] * dims)
    loss = obj.loss(x, POLICY, torch.Generator().manual_seed(0),
                    groups=torch.tensor([0, 0, 1, 1, 2, 2][: x.shape[0]]))
    assert torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in obj.encoder.parameters() if p.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads)


@pytest.mark.parametrize(("method", "dims"), CASES, ids=[f"{m}-{d}d" for m, d in CASES])
def test_loss_under_bf16_autocast(method: str, dims: int) -> None:
    """On CUDA the loop runs under bf16 autocast; CPU autocast reproduces its dtype mix
    (in-place writes of bf16 results into fp32 buffers once failed only on a GPU)."""
    torch.manual_seed(0)
    obj = objective_for(method, dims)
    x = torch.rand(4, CHANNELS.get(method, 1), *[28] * dims)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = obj.loss(x, POLICY, torch.Generator().manual_seed(0),
                        groups=torch.tensor([0, 0, 1, 1]))
    loss.backward()
    assert torch.isfinite(loss.float())


def test_wrong_encoder_kind_is_refused() -> None:
    with pytest.raises(ObjectiveError, match="vit"):
        build_objective("mae", encoder_for("cnn", 2))
    with pytest.raises(ObjectiveError, match="hyperparameters"):
        build_objective("simclr", encoder_for("cnn", 2), temprature=0.1)


# The objectives written after the rule that every catalog hyperparameter is honoured.
READS_CATALOG = ["contrastive_clustering", "inpainting", "simsiam", "nnclr", "patient_siamese",
                 "slice_ordering", "ssmtl", "dira", "rotation_contrastive", "lvm_med", "parcl",
                 "pgl", "unimiss_plus", "rubiks_cube_plus", "multimodal_puzzle", "self_path",
                 "spark", "cross_modal_synthesis", "missing_sequence_synthesis",
                 "clip_cross_modal", "temporal_order", "spatiotemporal_transform", "cl_mri",
                 "colorization", "msn", "latent_token_masking", "lesion_slice_contrast",
                 "residual_cuboid_masking", "mmode_temporal_contrast", "alice",
                 "spatial_awareness"]


@pytest.mark.parametrize("method", READS_CATALOG)
def test_catalog_hyperparameters_are_all_read(method: str) -> None:
    """The build keeps only the catalog keys a constructor names and drops the rest
    silently; these objectives name every one but the loop's batch size and the crop
    scale, which the build reads into the augmentation policy instead."""
    import inspect

    from rules import default_engine

    hp = dict(default_engine().kb.methods[method].hyperparameters)
    hp.pop("batch_size", None)
    hp.pop("crop_scale", None)
    cls, _ = OBJECTIVES[method]
    assert set(hp) <= set(inspect.signature(cls.__init__).parameters)
    dims = ONLY_DIMS.get(method, 2)
    kind = "vit" if OBJECTIVES[method][1] == "vit" else "cnn"
    build_objective(method, encoder_for(kind, dims, CHANNELS.get(method, 1)), **hp)


def test_ema_moves_towards_online() -> None:
    online = torch.nn.Linear(3, 3)
    ema = EMA(online, momentum=0.5)
    with torch.no_grad():
        online.weight.add_(1.0)
    before = ema.module.weight.clone()
    ema.update(online)
    assert torch.allclose(ema.module.weight, 0.5 * before + 0.5 * online.weight)


def test_group_partners_share_group() -> None:
    groups = torch.tensor([0, 0, 1, 2, 2, 2, 3])
    partner = group_partners(groups, torch.Generator().manual_seed(0))
    for i, j in enumerate(partner.tolist()):
        assert groups[i] == groups[j]
        assert (i != j) == (int((groups == groups[i]).sum()) > 1)


def test_tiles_round_trip() -> None:
    x = torch.rand(2, 1, 27, 27)
    tiles, tile = _tiles(x, [3, 3])
    assert tiles.shape == (2, 9, 1, 9, 9)
    assert torch.equal(_untile(tiles, [3, 3]), x)
    assert torch.equal(tiles[0, 1, 0], x[0, 0, 0:9, 9:18])  # row-major tile order
    v = torch.rand(1, 1, 8, 8, 8)
    assert torch.equal(_untile(_tiles(v, [2, 2, 2])[0], [2, 2, 2]), v)


def test_rubiks_flip_is_a_rotation() -> None:
    cube = torch.rand(1, 1, 4, 4, 4)
    about_v = torch.flip(cube, dims=(2, 4))  # D and W: 180 degrees about H
    assert torch.equal(torch.rot90(cube, 2, dims=(2, 4)), about_v)
    obj = RubiksCube(encoder_for("cnn", 3))
    assert obj.perms.shape == (24, 8) and torch.equal(obj.perms[0], torch.arange(8))


def test_swap_patches_keeps_intensities() -> None:
    x = torch.rand(2, 1, 28, 28)
    y = swap_patches(x, torch.Generator().manual_seed(0))
    assert not torch.equal(x, y)
    assert torch.equal(x.flatten(1).sort(1).values, y.flatten(1).sort(1).values)


def test_hole_mask_draws_boxes_of_the_given_side() -> None:
    gen = torch.Generator().manual_seed(0)
    one = hole_mask(torch.Size([3, 1, 20, 20]), 1, 0.25, gen, torch.device("cpu"))
    for m in one[:, 0]:
        rows, cols = m.nonzero().unbind(1)
        assert int(m.sum()) == 25 and int(rows.max() - rows.min()) == 4
        assert int(cols.max() - cols.min()) == 4
    cubes = hole_mask(torch.Size([2, 1, 8, 8, 8]), 3, 0.25, gen, torch.device("cpu"))
    assert cubes.shape == (2, 1, 8, 8, 8)
    assert all(8 <= int(m.sum()) <= 24 for m in cubes)


def test_mae_encodes_only_visible_tokens() -> None:
    obj = build_objective("mae", encoder_for("vit", 2), mask_ratio=0.75)
    seen = {}

    def record(_module, args, _out):  # noqa: ANN001, ANN202
        seen["tokens"] = args[0].shape[1]

    obj.encoder.net.blocks[0].register_forward_hook(record)
    obj.loss(torch.rand(2, 1, 28, 28), Policy(set()), torch.Generator().manual_seed(0))
    assert seen["tokens"] == round(49 * 0.25)


def test_simclr_learns_on_real_images() -> None:
    images, _ = medmnist("pneumoniamnist", split="train", n=256)
    x = torch.from_numpy(images).float().div(255)[:, None]
    torch.manual_seed(0)
    obj = build_objective("simclr", encoder_for("cnn", 2), temperature=0.2)
    opt = torch.optim.Adam(obj.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    history = []
    for step in range(40):
        batch = x[(torch.arange(64) + step * 64) % len(x)]
        loss = obj.loss(batch, POLICY, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
    assert sum(history[-8:]) / 8 < sum(history[:8]) / 8 - 0.2


def losses_on_real_images(method: str, steps: int, batch: int, **hp: float) -> list[float]:
    """Per-step losses of a short run on PneumoniaMNIST with a small ResNet."""
    images, _ = medmnist("pneumoniamnist", split="train", n=256)
    x = torch.from_numpy(images).float().div(255)[:, None]
    torch.manual_seed(0)
    obj = build_objective(method, encoder_for("cnn", 2), **hp)
    opt = torch.optim.Adam(obj.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    history = []
    for step in range(steps):
        loss = obj.loss(x[(torch.arange(batch) + step * batch) % len(x)], POLICY, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
    return history


def test_contrastive_clustering_learns_on_real_images() -> None:
    history = losses_on_real_images("contrastive_clustering", 40, 64)  # catalog defaults
    assert sum(history[-8:]) / 8 < sum(history[:8]) / 8 - 0.15


def test_inpainting_learns_on_real_images() -> None:
    history = losses_on_real_images("inpainting", 30, 32)
    assert sum(history[-6:]) / 6 < 0.5 * sum(history[:6]) / 6


def test_simsiam_learns_on_real_images() -> None:
    history = losses_on_real_images("simsiam", 30, 32)  # catalog defaults
    assert sum(history[-6:]) / 6 < sum(history[:6]) / 6 - 0.12  # measured: -0.08, then -0.29


def test_nnclr_learns_on_real_images() -> None:
    # A support set a few batches long, so that the neighbours come from it within the run.
    history = losses_on_real_images("nnclr", 40, 32, support_set_size=128)
    assert sum(history[-8:]) / 8 < sum(history[:8]) / 8 - 0.2
    # and below chance, log(batch): each prediction picks out its own neighbour.
    assert sum(history[-8:]) / 8 < math.log(32)


def test_nnclr_support_set_is_a_fifo_of_first_view_projections() -> None:
    torch.manual_seed(0)
    obj = build_objective("nnclr", encoder_for("cnn", 2), support_set_size=10)
    gen = torch.Generator().manual_seed(0)
    for step, n in enumerate((4, 4, 4)):
        obj.loss(torch.rand(n, 1, 28, 28), POLICY, gen)
        assert int(obj.filled) == min(4 * (step + 1), 10)
    assert int(obj.pointer) == 2
    assert torch.allclose(obj.support.norm(dim=1), torch.ones(10))
    obj.loss(torch.rand(12, 1, 28, 28), POLICY, gen)  # more than it holds: the last 10 stay
    assert int(obj.pointer) == 2 and int(obj.filled) == 10


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device on this machine"))]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("method", "dims"), CASES, ids=[f"{m}-{d}d" for m, d in CASES])
def test_pretrain_steps_with_every_augmentation(method: str, dims: int, device: str) -> None:
    """The training loop as jobs run it: on CUDA it hands objectives a CUDA generator, and
    every draw in the augmentations and objectives must work with it (it once did not)."""
    from zoo.training.augment import KNOWN
    from zoo.training.train import TrainConfig, pretrain

    obj = objective_for(method, dims)
    policy = Policy.build(sorted(KNOWN), [], 1)
    images = torch.randint(0, 256, (8, CHANNELS.get(method, 1), *[28] * dims), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    history = pretrain(obj, images, policy,
                       TrainConfig(epochs=1, batch_size=4, max_steps=2, device=device),
                       groups=torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]))
    assert history and history[-1]["device"] == device
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in history)
