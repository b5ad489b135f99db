"""Rubik's cube+ and the multi-modal Sinkhorn puzzle: losses against their formulas, the
scrambles invert, gradients reach the encoder, and short runs on real images learn."""

from __future__ import annotations

import math

import pytest
import torch

from tests.utils import medmnist
from zoo.architectures import build_encoder
from zoo.training.augment import Policy
from zoo.training.pretext.base import ObjectiveError
from zoo.training.pretext.predictive import _tiles, _untile
from zoo.training.pretext.puzzles import (
    MultimodalPuzzle,
    RubiksCubePlus,
    permutation_nll,
    sinkhorn,
)

NONE = Policy(set())
INTENSITY = Policy({"intensity_shift"})  # what the catalog lists for both methods


def cnn(dims: int, channels: int = 1, widths: list[int] | None = None):  # noqa: ANN201
    torch.manual_seed(0)
    return build_encoder("resnet10" if dims == 3 else "resnet18", dims, channels, [28] * dims,
                         {"widths": widths or [8, 8, 16, 16]})


def real(name: str, n: int) -> torch.Tensor:
    images, _ = medmnist(name, split="train", n=n)
    x = torch.from_numpy(images).float().div(255)
    return x.movedim(-1, 1) if x.dim() == 4 and x.shape[-1] == 3 else x[:, None]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def grads_reach(encoder: torch.nn.Module) -> bool:
    return any(p.grad is not None and float(p.grad.abs().sum()) > 0
               for p in encoder.parameters())


# --- Rubik's cube+ --------------------------------------------------------------------


def test_rubiks_plus_with_silent_heads_gives_chance_losses() -> None:
    """All-zero logits: order CE = log P, rotation and mask BCE = log 2 each."""
    obj = RubiksCubePlus(cnn(3), permutations=6)
    for head in (obj.head, obj.rot_head, obj.mask_head):
        torch.nn.init.zeros_(head.weight)
        torch.nn.init.zeros_(head.bias)
    terms = obj.terms(torch.rand(2, 1, 28, 28, 28), NONE, gen())
    assert math.isclose(terms["order"].item(), math.log(6), rel_tol=1e-6)
    assert math.isclose(terms["rotation"].item(), math.log(2), rel_tol=1e-6)
    assert math.isclose(terms["mask"].item(), math.log(2), rel_tol=1e-6)
    loss = obj.loss(torch.rand(2, 1, 28, 28, 28), NONE, gen())
    assert math.isclose(loss.item(), math.log(6) + 2 * math.log(2), rel_tol=1e-6)


def test_rubiks_plus_scramble_inverts_and_masks_at_the_rate() -> None:
    obj = RubiksCubePlus(cnn(3), permutations=6, mask_probability=0.3)
    x = torch.rand(300, 1, 4, 6, 8)  # non-cubic cubes: 180-degree turns keep their shape
    volume, label, flips, masked = obj.scramble(x, gen())
    original, _ = _tiles(x, obj.grid)
    scrambled, _ = _tiles(volume, obj.grid)
    for b in range(12):
        for i, src in enumerate(obj.perms[label[b]].tolist()):
            cube = scrambled[b, i]
            if masked[b, i]:
                assert not torch.equal(cube, original[b, src])
                assert float(cube.min()) >= 0 and float(cube.max()) <= 1
                continue
            if flips[b, i, 1]:  # undo in reverse order (flips commute anyway)
                cube = cube.flip((1, 2))
            if flips[b, i, 0]:
                cube = cube.flip((1, 3))
            assert torch.equal(cube, original[b, src])
    assert abs(float(masked.float().mean()) - 0.3) < 0.04  # 2400 cubes
    assert abs(float(flips.float().mean()) - 0.5) < 0.04


def test_rubiks_plus_validates_and_refuses_2d() -> None:
    with pytest.raises(ObjectiveError, match="3D"):
        RubiksCubePlus(cnn(2))
    with pytest.raises(ObjectiveError, match=r"\[0, 180\]"):
        RubiksCubePlus(cnn(3), rotations=[0, 90])
    with pytest.raises(ObjectiveError, match="mask_probability"):
        RubiksCubePlus(cnn(3), mask_probability=1.0)
    with pytest.raises(ObjectiveError, match="volumes"):
        RubiksCubePlus(cnn(3), permutations=4).loss(torch.rand(2, 1, 28, 28), NONE, gen())
    obj = RubiksCubePlus(cnn(3), grid=[2, 2, 2], permutations=4, rotations=[180, 0])
    assert obj.perms.shape == (4, 8) and obj.mask_head.out_features == 1


def test_rubiks_plus_gradients_reach_the_encoder() -> None:
    obj = RubiksCubePlus(cnn(3), permutations=4)
    obj.loss(torch.rand(2, 1, 28, 28, 28), INTENSITY, gen()).backward()
    assert grads_reach(obj.encoder)


def test_rubiks_plus_learns_to_find_masked_cubes_on_real_volumes() -> None:
    """AdrenalMNIST3D, 15 Adam steps of 8 volumes. Measured (sum; order, rotation, mask,
    means of the first and last 4 steps): 3.93 (2.61, 0.70, 0.62) -> 3.52 (2.55, 0.70,
    0.27). The mask term carries the drop: it goes well below 0.611, the entropy of the
    mask labels at p = 0.3, where a head that learnt only the rate (or wrong labels) would
    stop; order and rotation need longer runs than a test can afford."""
    x = real("adrenalmnist3d", 120)
    obj = RubiksCubePlus(cnn(3, widths=[4, 8, 8, 16]), permutations=10)
    opt = torch.optim.Adam(obj.parameters(), lr=1e-2)
    g = gen()
    history = []
    for step in range(15):
        terms = obj.terms(x[(torch.arange(8) + step * 8) % len(x)], INTENSITY, g)
        loss = sum(terms.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append([v.item() for v in terms.values()])
    h = torch.tensor(history)
    first, last = h[:4].mean(0), h[-4:].mean(0)
    assert float(last[2]) < 0.45 < float(first[2])
    assert float(last.sum()) < float(first.sum()) - 0.2


# --- multi-modal puzzle ---------------------------------------------------------------


def test_sinkhorn_is_doubly_stochastic_and_matches_the_plain_iteration() -> None:
    scores = torch.randn(3, 5, 5, generator=gen()) * 2
    log_p = sinkhorn(scores, 30)
    p = log_p.exp()
    assert torch.allclose(p.sum(-1), torch.ones(3, 5), atol=1e-4)
    assert torch.allclose(p.sum(-2), torch.ones(3, 5), atol=1e-6)
    naive = scores.double().exp()
    for _ in range(30):
        naive = naive / naive.sum(-1, keepdim=True)
        naive = naive / naive.sum(-2, keepdim=True)
    assert torch.allclose(p.double(), naive, atol=1e-6)
    # log space: scores that would overflow exp() in fp32 stay finite
    assert torch.isfinite(sinkhorn(scores * 100, 5)).all()


def test_permutation_nll_known_values() -> None:
    """exp(a I) is already doubly stochastic up to scale: diagonal e^a / (e^a + T - 1),
    so the loss for the identity is log(1 + (T - 1) e^-a)."""
    t, a = 4, 2.0
    identity = torch.arange(t)[None]
    loss = permutation_nll(sinkhorn(a * torch.eye(t)[None], 10), identity)
    assert math.isclose(float(loss), math.log(1 + (t - 1) * math.exp(-a)), rel_tol=1e-5)
    true = torch.tensor([[2, 0, 3, 1]])
    other = torch.tensor([[0, 1, 2, 3]])
    one_hot = torch.nn.functional.one_hot
    favour_true = sinkhorn(3 * one_hot(true, t).float(), 20)
    favour_other = sinkhorn(3 * one_hot(other, t).float(), 20)
    assert float(permutation_nll(favour_true, true)) < float(
        permutation_nll(favour_other, true)) - 2


@pytest.mark.parametrize("shape", [(3, 1, 28, 28), (2, 1, 28, 28, 28)])
def test_puzzle_shuffle_round_trips(shape: tuple[int, ...]) -> None:
    obj = MultimodalPuzzle(cnn(len(shape) - 2))
    x = torch.rand(shape)
    tiles, order = obj.shuffle(x, gen())
    assert all(sorted(o) == list(range(order.shape[1])) for o in order.tolist())
    back = tiles.gather(1, order.argsort(1).view(*order.shape, *[1] * (tiles.dim() - 2))
                        .expand_as(tiles))
    size = [s // g * g for s, g in zip(shape[2:], obj.grid, strict=True)]
    assert torch.equal(_untile(back, obj.grid), x[(..., *[slice(0, s) for s in size])])


def test_puzzle_tiles_come_each_from_one_channel() -> None:
    obj = MultimodalPuzzle(cnn(2, channels=3))
    x = torch.rand(8, 3, 28, 28)
    tiles, order = obj.shuffle(x, gen())
    original, _ = _tiles(x, obj.grid)
    used = set()
    for b in range(8):
        for i, src in enumerate(order[b].tolist()):
            tile = tiles[b, i]
            assert torch.equal(tile[0], tile[1]) and torch.equal(tile[0], tile[2])
            chans = [c for c in range(3) if torch.equal(tile[0], original[b, src, c])]
            assert len(chans) == 1
            used.add(chans[0])
    assert used == {0, 1, 2}


def test_puzzle_grid_checks_and_gradients() -> None:
    # The catalog's 2D grid, on a volume, is the in-plane grid with 2 tiles along depth.
    assert MultimodalPuzzle(cnn(3), grid=[3, 3]).grid == [2, 3, 3]
    with pytest.raises(ObjectiveError, match="3D"):
        MultimodalPuzzle(cnn(3), grid=[2, 2, 2, 2])
    with pytest.raises(ObjectiveError, match="sinkhorn_iterations"):
        MultimodalPuzzle(cnn(2), sinkhorn_iterations=0)
    assert MultimodalPuzzle(cnn(3)).grid == [2, 2, 2]
    obj = MultimodalPuzzle(cnn(2), grid=[2, 2], sinkhorn_iterations=5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = obj.loss(torch.rand(4, 1, 28, 28), INTENSITY, gen())
    assert loss.dtype == torch.float32
    loss.backward()
    assert grads_reach(obj.encoder)
    vit = build_encoder("vit", 2, 1, [28, 28], {"patch_size": 4, "hidden_size": 24,
                                               "mlp_dim": 48, "num_layers": 1,
                                               "num_heads": 2})
    MultimodalPuzzle(vit).loss(torch.rand(2, 1, 28, 28), NONE, gen()).backward()
    assert grads_reach(vit)


@pytest.mark.parametrize(("name", "margin"), [("pneumoniamnist", 0.4), ("retinamnist", 0.6)])
def test_puzzle_learns_on_real_images(name: str, margin: float) -> None:
    """20 Adam steps of 16 images, 3x3 tiles (chance: log 9 = 2.20). Measured (means of the
    first and last 4 steps): PneumoniaMNIST (one channel: a plain Sinkhorn jigsaw)
    2.10 -> 1.37; RetinaMNIST (each tile from a random RGB channel) 1.97 -> 0.81."""
    x = real(name, 320)
    obj = MultimodalPuzzle(cnn(2, channels=x.shape[1]))
    opt = torch.optim.Adam(obj.parameters(), lr=3e-3)
    g = gen()
    history = []
    for step in range(20):
        loss = obj.loss(x[(torch.arange(16) + step * 16) % len(x)], INTENSITY, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
    first, last = sum(history[:4]) / 4, sum(history[-4:]) / 4
    assert last < first - margin and last < math.log(9) - margin
