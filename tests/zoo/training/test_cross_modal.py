"""Cross-modal objectives: SSIM + L1 and CLIP's loss against their formulas, which channels
each encoder sees, and short runs on real images that lower the loss.

The data holds no co-registered pairs of modalities, so the real-data runs use the colour
channels of RetinaMNIST fundus photographs as stand-in modalities: red against green and
blue. They are not real modalities (one camera, one exposure); they only show that the
objectives learn what one channel group says about another on real anatomy."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tests.utils import medmnist
from zoo.architectures import build_encoder
from zoo.training.augment import Policy, augment
from zoo.training.pretext.base import ObjectiveError, standardise
from zoo.training.pretext.cross_modal import (
    ClipCrossModal,
    CrossModalSynthesis,
    MissingSequenceSynthesis,
    clip_loss,
    drop_one,
    pick,
    ssim_l1,
)

NONE = Policy(set())  # no augmentation: the view is the image (up to float rounding)
C1, C2 = 0.01**2, 0.03**2  # SSIM's stability constants at data range 1


def encoder(channels: int = 3, dims: int = 2):  # noqa: ANN201
    if dims == 3:  # 3D convolutions at 28^3 are costly on one core: the smallest ResNet
        return build_encoder("resnet10", 3, channels, [28] * 3, {"widths": [4, 4, 8, 8]})
    return build_encoder("resnet18", 2, channels, [28, 28], {"widths": [8, 8, 16, 16]})


def retina(n: int) -> torch.Tensor:
    """RetinaMNIST fundus photographs, (n, 3, 28, 28) in [0, 1]; RGB as stand-in modalities."""
    images, _ = medmnist("retinamnist", split="train", n=n)
    return torch.from_numpy(images).float().div(255).permute(0, 3, 1, 2).contiguous()


def run(obj: torch.nn.Module, x: torch.Tensor, policy: Policy, steps: int, batch: int,
        lr: float) -> list[float]:
    opt = torch.optim.Adam(obj.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(0)
    history = []
    for step in range(steps):
        loss = obj.loss(x[(torch.arange(batch) + step * batch) % len(x)], policy, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
    return history


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


# --- losses against their formulas -------------------------------------------------------

@pytest.mark.parametrize("dims", [2, 3])
def test_ssim_l1_on_flat_images(dims: int) -> None:
    """Flat images have no variance, so SSIM is its luminance term alone."""
    a, b = 0.3, 0.7
    pred, target = torch.full((2, 1, *[12] * dims), a), torch.full((2, 1, *[12] * dims), b)
    ssim = (2 * a * b + C1) / (a * a + b * b + C1)
    # fp32 variances of a flat image are rounding residues, not 0: a relative 1e-3 or less
    assert math.isclose(float(ssim_l1(pred, target)), 1 - ssim + abs(a - b), rel_tol=2e-3)
    assert float(ssim_l1(target, target)) == pytest.approx(0.0, abs=1e-6)


def test_ssim_l1_matches_windowed_formula_in_fp32() -> None:
    """SSIM as Wang et al. define it: Gaussian-weighted (sigma 1.5, 11 x 11) local means,
    variances and covariance at every position where the window fits, averaged."""
    torch.manual_seed(0)
    x, y = torch.rand(1, 1, 14, 14), torch.rand(1, 1, 14, 14)
    y = 0.5 * x + 0.5 * y  # partly correlated, so every SSIM term matters
    g = [math.exp(-((i - 5) ** 2) / (2 * 1.5**2)) for i in range(11)]
    w = [[gi * gj / sum(g) ** 2 for gj in g] for gi in g]
    xs, ys = x[0, 0].double().tolist(), y[0, 0].double().tolist()
    total, count = 0.0, 0
    for r in range(14 - 10):
        for c in range(14 - 10):
            cells = [(w[i][j], xs[r + i][c + j], ys[r + i][c + j])
                     for i in range(11) for j in range(11)]
            mx = sum(k * u for k, u, _ in cells)
            my = sum(k * v for k, _, v in cells)
            vx = sum(k * u * u for k, u, _ in cells) - mx * mx
            vy = sum(k * v * v for k, _, v in cells) - my * my
            cxy = sum(k * u * v for k, u, v in cells) - mx * my
            total += ((2 * mx * my + C1) * (2 * cxy + C2)
                      / ((mx * mx + my * my + C1) * (vx + vy + C2)))
            count += 1
    expected = 1 - total / count + float((x - y).abs().mean())
    assert math.isclose(float(ssim_l1(x, y)), expected, rel_tol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the loop's bf16 mix: still fp32
        under_bf16 = ssim_l1(x.bfloat16(), y.bfloat16())
    assert under_bf16.dtype == torch.float32
    assert math.isclose(float(under_bf16), float(ssim_l1(x.bfloat16().float(),
                                                        y.bfloat16().float())), rel_tol=1e-6)


def test_clip_loss_matches_symmetric_cross_entropy() -> None:
    torch.manual_seed(0)
    za, zb, t = torch.randn(5, 8), torch.randn(5, 8), 0.1
    sim = [[float(F.cosine_similarity(za[i], zb[j], dim=0)) / t for j in range(5)]
           for i in range(5)]
    rows = [-math.log(math.exp(sim[i][i]) / sum(math.exp(s) for s in sim[i])) for i in range(5)]
    cols = [-math.log(math.exp(sim[j][j]) / sum(math.exp(sim[i][j]) for i in range(5)))
            for j in range(5)]
    expected = (sum(rows) / 5 + sum(cols) / 5) / 2
    assert math.isclose(float(clip_loss(za, zb, t)), expected, rel_tol=1e-5)


def test_clip_loss_on_orthonormal_pairs() -> None:
    """Matched orthonormal pairs: logit 1/t on the diagonal, 0 elsewhere; pairing every
    sample with another's embedding instead moves the 1/t off the diagonal."""
    eye, t = torch.eye(4), 0.5
    right = -math.log(math.exp(1 / t) / (math.exp(1 / t) + 3))
    wrong = -math.log(1 / (math.exp(1 / t) + 3))
    assert math.isclose(float(clip_loss(eye, 3 * eye, t)), right, rel_tol=1e-6)
    assert math.isclose(float(clip_loss(eye, eye[[1, 2, 3, 0]], t)), wrong, rel_tol=1e-6)


# --- what each encoder sees ----------------------------------------------------------------

def conv1_inputs(enc: torch.nn.Module) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    enc.net.conv1.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    return seen


class Oracle(torch.nn.Module):
    """A decoder that returns a fixed standardised image, whatever the features."""

    def __init__(self, image: torch.Tensor):
        super().__init__()
        self.image = image

    def forward(self, f: torch.Tensor, size: list[int]) -> torch.Tensor:
        return self.image + 0 * f.mean()


def test_cross_modal_synthesis_sees_the_source_and_scores_the_target() -> None:
    torch.manual_seed(0)
    obj = CrossModalSynthesis(encoder(3))
    assert (obj.source, obj.target) == ([0], [1, 2])  # first half, rounded down
    x = torch.rand(2, 3, 28, 28)
    seen = conv1_inputs(obj.encoder)
    obj.loss(x, NONE, torch.Generator().manual_seed(0))
    assert torch.equal(seen[0][:, 1:], torch.zeros_like(seen[0][:, 1:]))
    assert torch.allclose(seen[0][:, :1], standardise(x[:, :1]), atol=1e-5)
    obj.decoder = Oracle(standardise(x[:, 1:]))  # a perfect synthesiser: the minimum, 0
    assert obj.loss(x, NONE, torch.Generator().manual_seed(0)).item() < 1e-4
    obj.decoder = Oracle(standardise(x[:, :2]))  # the wrong channels score like any image
    assert math.isclose(obj.loss(x, NONE, torch.Generator().manual_seed(0)).item(),
                        float(ssim_l1(x[:, :2], x[:, 1:])), rel_tol=1e-4)
    assert CrossModalSynthesis(encoder(3), source_channels=2).target == [2]


def test_drop_one_zeroes_exactly_one_channel_per_sample() -> None:
    x = torch.rand(64, 3, 6, 6) + 0.1  # no zeros of its own
    dropped, k = drop_one(x, torch.Generator().manual_seed(0))
    for i in range(64):
        for c in range(3):
            assert torch.equal(dropped[i, c], torch.zeros(6, 6) if c == k[i] else x[i, c])
    assert set(k.tolist()) == {0, 1, 2}
    assert torch.equal(pick(x, k)[:, 0], torch.stack([x[i, k[i]] for i in range(64)]))


def test_missing_sequence_terms_follow_their_definitions() -> None:
    torch.manual_seed(0)
    obj = MissingSequenceSynthesis(encoder(3), self_reconstruction_weight=0.5)
    x = torch.rand(4, 3, 28, 28)
    seen = conv1_inputs(obj.encoder)
    obj.terms(x, torch.Generator().manual_seed(1))
    _, k = drop_one(x, torch.Generator().manual_seed(1))  # the same draw
    synthesis_input, self_input = seen
    assert torch.allclose(synthesis_input + self_input, standardise(x))  # a split of the image
    assert torch.equal(pick(self_input, k), pick(standardise(x), k))  # the dropped one ...
    assert torch.count_nonzero(self_input) == torch.count_nonzero(pick(self_input, k))  # only
    seen.clear()
    obj.decoder = Oracle(torch.zeros(4, 3, 28, 28))  # mid-grey everywhere
    terms = obj.terms(x, torch.Generator().manual_seed(1))
    by_hand = mean([float((x[i, k[i]] - 0.5).abs().mean()) for i in range(4)])
    assert math.isclose(terms["synthesis"].item(), by_hand, rel_tol=1e-5)
    assert math.isclose(terms["self_reconstruction"].item(), by_hand, rel_tol=1e-5)
    gen = torch.Generator().manual_seed(2)
    terms = obj.terms(augment(x, NONE, gen), gen)  # the draws the loss makes, in its order
    loss = obj.loss(x, NONE, torch.Generator().manual_seed(2))
    by_terms = terms["synthesis"] + 0.5 * (terms["self_reconstruction"] + terms["feature"])
    assert math.isclose(loss.item(), by_terms.item(), rel_tol=1e-6)


def test_clip_has_one_encoder_per_modality() -> None:
    torch.manual_seed(0)
    first = encoder(3)
    obj = ClipCrossModal(first, projection_dim=16)
    assert obj.encoder is first and obj.partner is not first  # the zoo stores `encoder`
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(),
                                                 obj.partner.state_dict().values(),
                                                 strict=True))
    seen_a, seen_b = conv1_inputs(obj.encoder), conv1_inputs(obj.partner)
    x = torch.rand(4, 3, 28, 28)
    obj.loss(x, NONE, torch.Generator().manual_seed(0)).backward()
    assert torch.equal(seen_a[0][:, 1:], torch.zeros_like(seen_a[0][:, 1:]))
    assert torch.equal(seen_b[0][:, :1], torch.zeros_like(seen_b[0][:, :1]))
    assert torch.allclose(seen_b[0][:, 1:], standardise(x[:, 1:]), atol=1e-5)
    for enc in (obj.encoder, obj.partner):
        assert any(float(p.grad.abs().sum()) > 0 for p in enc.parameters() if p.grad is not None)


def test_single_channel_inputs_and_wrong_catalog_values_are_refused() -> None:
    for cls in (CrossModalSynthesis, MissingSequenceSynthesis, ClipCrossModal):
        with pytest.raises(ObjectiveError, match="at least 2 channels"):
            cls(encoder(1))
    with pytest.raises(ObjectiveError, match="at least 2 channels"):
        CrossModalSynthesis(encoder(2)).loss(torch.rand(2, 1, 28, 28), NONE)
    with pytest.raises(ObjectiveError, match="ssim_l1"):
        CrossModalSynthesis(encoder(2), loss="l2")
    with pytest.raises(ObjectiveError, match="required"):
        CrossModalSynthesis(encoder(2), registration="none")
    with pytest.raises(ObjectiveError, match="source_channels"):
        CrossModalSynthesis(encoder(2), source_channels=2)
    with pytest.raises(ObjectiveError, match="collaborative"):
        MissingSequenceSynthesis(encoder(2), generator="single")
    with pytest.raises(ObjectiveError, match="one_per_modality"):
        ClipCrossModal(encoder(2), encoders="shared")
    vit = build_encoder("vit", 2, 2, [28, 28], {"patch_size": 7, "hidden_size": 24,
                                                "mlp_dim": 48, "num_layers": 1, "num_heads": 2})
    for cls in (CrossModalSynthesis, MissingSequenceSynthesis):  # they decode a conv map
        with pytest.raises(ObjectiveError, match="resnet"):
            cls(vit)
    assert torch.isfinite(ClipCrossModal(vit).loss(torch.rand(2, 2, 28, 28), NONE))  # any


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("cls", [CrossModalSynthesis, MissingSequenceSynthesis, ClipCrossModal])
def test_gradients_reach_the_encoder(cls: type, dims: int) -> None:
    """Two channels (the fewest allowed), batch 2, in 2D and 3D."""
    torch.manual_seed(0)
    obj = cls(encoder(2, dims))
    loss = obj.loss(torch.rand(2, 2, *[28] * dims), Policy({"intensity_shift"}),
                    torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)
    loss.backward()
    assert any(float(p.grad.abs().sum()) > 0 for p in obj.encoder.parameters()
               if p.grad is not None)


# --- short runs on real images (colour channels stand in for modalities) -----------------

def test_cross_modal_synthesis_learns_on_real_images() -> None:
    """Red channel -> green and blue of fundus photographs, with the catalog's augmentations.
    Measured: loss 1.22 (first 4 steps) -> 0.59 (last 4); held out, the synthesis from the
    image's own red channel scores 0.61 against 0.69 from another image's (seeds 1 and 2 of
    the same run: 0.58 / 0.70 and 0.54 / 0.71)."""
    x = retina(232)
    torch.manual_seed(0)
    obj = CrossModalSynthesis(encoder(3))
    history = run(obj, x[:200], Policy({"intensity_shift", "small_rotation"}), 20, 8, 3e-3)
    assert mean(history[-4:]) < 0.7 * mean(history[:4])
    held = x[200:]
    other = held.clone()
    other[:, :1] = held.roll(1, 0)[:, :1]  # the red channel of another eye
    with torch.no_grad():
        own = ssim_l1(obj.synthesise(held), held[:, 1:])
        mismatched = ssim_l1(obj.synthesise(other), held[:, 1:])
    assert float(own) < float(mismatched) - 0.04  # it uses the source modality


def test_missing_sequence_synthesis_learns_on_real_images() -> None:
    """One colour channel dropped per image and filled in from the other two. Measured:
    loss 2.20 (first 3 steps) -> 1.10 (last 3); seeds 1 and 2 fall by a similar half."""
    torch.manual_seed(0)
    obj = MissingSequenceSynthesis(encoder(3))
    history = run(obj, retina(200), Policy({"intensity_shift"}), 12, 8, 3e-3)
    assert mean(history[-3:]) < 0.7 * mean(history[:3])


def test_clip_cross_modal_learns_on_real_images() -> None:
    """Red against green and blue of the same fundus photograph, each its own view, 16 to a
    batch, the catalog's temperature. The random resized crop is left out: on 28-pixel
    fundus images two crops share too little for 25 steps to show. Measured: loss 2.79
    (first 5 steps, chance is log 16 = 2.77) -> 2.29 (last 5); seeds 1 and 2: 2.27, 2.40."""
    torch.manual_seed(0)
    obj = ClipCrossModal(encoder(3))
    history = run(obj, retina(400), Policy({"intensity_shift"}), 25, 16, 3e-3)
    assert mean(history[-5:]) < mean(history[:5]) - 0.25
    assert mean(history[-5:]) < math.log(16) - 0.25  # pairs are found, better than chance
