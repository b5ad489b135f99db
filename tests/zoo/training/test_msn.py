"""MSN: the loss equals its formula, masking keeps the right tokens, gradients and the EMA
target behave, and a short run on real chest X-rays lowers the loss while me-max keeps the
prototypes in use."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tests.utils import medmnist
from zoo.architectures import build_encoder
from zoo.training.augment import Policy
from zoo.training.pretext.base import ObjectiveError, standardise
from zoo.training.pretext.msn import MSN, msn_loss, visible_tokens

POLICY = Policy.build(["random_resized_crop", "horizontal_flip", "intensity_shift"], [], 1)
VIT = {2: {"patch_size": 4, "hidden_size": 48, "mlp_dim": 96, "num_layers": 2, "num_heads": 3},
       3: {"patch_size": 7, "hidden_size": 48, "mlp_dim": 96, "num_layers": 2, "num_heads": 3}}


def vit(dims: int = 2) -> torch.nn.Module:
    return build_encoder("vit", dims, 1, [28] * dims, VIT[dims])


def me_max_term(anchor: torch.Tensor, prototypes: torch.Tensor) -> float:
    """The regulariser alone: the loss with weight 1 minus the loss with weight 0."""
    t = torch.zeros_like(anchor)
    return float(msn_loss(anchor, t, prototypes) - msn_loss(anchor, t, prototypes,
                                                               me_max_weight=0.0))


def test_loss_equals_a_per_sample_loop() -> None:
    torch.manual_seed(0)
    a, t, q = torch.randn(5, 8), torch.randn(5, 8), torch.randn(6, 8)
    got = msn_loss(a, t, q, anchor_temperature=0.1, target_temperature=0.025,
                   me_max_weight=0.7)
    k, ce, mean_p = q.shape[0], 0.0, [0.0] * q.shape[0]
    for i in range(a.shape[0]):
        cos_a = [float(a[i] @ q[j] / (a[i].norm() * q[j].norm())) for j in range(k)]
        cos_t = [float(t[i] @ q[j] / (t[i].norm() * q[j].norm())) for j in range(k)]
        za = sum(math.exp(c / 0.1) for c in cos_a)
        zt = sum(math.exp(c / 0.025) for c in cos_t)
        p = [math.exp(c / 0.1) / za for c in cos_a]
        p_plus = [math.exp(c / 0.025) / zt for c in cos_t]
        ce -= sum(p_plus[j] * math.log(p[j]) for j in range(k)) / a.shape[0]
        mean_p = [m + p[j] / a.shape[0] for j, m in enumerate(mean_p)]
    me_max = math.log(k) + sum(m * math.log(m) for m in mean_p)
    assert float(got) == pytest.approx(ce + 0.7 * me_max, rel=1e-5)


def test_me_max_is_log_k_minus_entropy_of_the_mean() -> None:
    q = torch.eye(4)
    # Each anchor sits on its own prototype: by symmetry the mean assignment is uniform.
    assert me_max_term(torch.eye(4), q) == pytest.approx(0.0, abs=1e-6)
    # All anchors on prototype 0: the mean is that one assignment, whose entropy is low.
    p = F.softmax(torch.tensor([1.0, 0.0, 0.0, 0.0]) / 0.1, dim=0)
    entropy = float(-(p * p.log()).sum())
    collapsed = torch.tensor([[1.0, 0.0, 0.0, 0.0]]).expand(3, -1)
    assert me_max_term(collapsed, q) == pytest.approx(math.log(4) - entropy, rel=1e-5)
    assert me_max_term(collapsed, q) > 1.0


def test_loss_stays_fp32_under_bf16_autocast() -> None:
    """Target cosines are divided by 0.025: bf16 cosines would shift logits by whole units."""
    torch.manual_seed(0)
    a, t, q = torch.randn(8, 16), torch.randn(8, 16), torch.randn(32, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = msn_loss(a.bfloat16(), t.bfloat16(), q)
    assert low.dtype == torch.float32
    assert float(low) == pytest.approx(float(msn_loss(a.bfloat16().float(),
                                                      t.bfloat16().float(), q)), rel=1e-5)


def test_target_side_carries_no_gradient() -> None:
    torch.manual_seed(0)
    a, t, q = (torch.randn(4, 8, requires_grad=True) for _ in range(3))
    msn_loss(a, t, q).backward()
    assert t.grad is None or float(t.grad.abs().sum()) == 0
    assert float(a.grad.abs().sum()) > 0 and float(q.grad.abs().sum()) > 0


def test_visible_tokens_keep_a_random_distinct_subset() -> None:
    idx = visible_tokens(3, 49, 0.3, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert idx.shape == (3, round(49 * 0.7))
    for row in idx:
        assert row.unique().numel() == row.numel() and 0 <= int(row.min()) <= int(row.max()) < 49
    assert len({tuple(sorted(r.tolist())) for r in idx}) == 3  # each sample its own mask
    again = visible_tokens(3, 49, 0.3, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert torch.equal(idx, again)
    whole = visible_tokens(2, 49, 0.0, None, torch.device("cpu"))
    assert sorted(whole[0].tolist()) == list(range(49))


@pytest.mark.parametrize("dims", [2, 3])
def test_gradients_reach_encoder_and_prototypes_and_the_target_follows(dims: int) -> None:
    torch.manual_seed(0)
    obj = MSN(vit(dims), prototypes=32, projection_dim=32, ema_momentum=0.9)
    assert not any(p is q for p in obj.parameters() for q in obj.target.module.parameters())
    obj.loss(torch.rand(4, 1, *[28] * dims), POLICY, torch.Generator().manual_seed(0),
             groups=None).backward()
    assert any(float(p.grad.abs().sum()) > 0 for p in obj.encoder.parameters()
               if p.grad is not None)
    assert float(obj.prototypes.grad.abs().sum()) > 0
    before = [p.clone() for p in obj.target.module.parameters()]
    torch.optim.SGD(obj.parameters(), lr=1.0).step()
    obj.after_step()
    online = list(obj.encoder.parameters()) + list(obj.projector.parameters())
    for b, t, o in zip(before, obj.target.module.parameters(), online, strict=True):
        assert torch.allclose(t, 0.9 * b + 0.1 * o, atol=1e-6)


def test_hyperparameters_are_checked() -> None:
    obj = MSN(vit(), mask_ratio=0.3, prototypes=1024, ema_momentum=0.996, patch_size=16)
    assert obj.prototypes.shape[0] == 1024 and obj.target.momentum == 0.996
    # The encoder card fixes the patch size; the catalog's 16 is accepted, the encoder's rules.
    assert obj.patch_size == 4 and obj.requested_patch_size == 16
    for bad in ({"patch_size": 0}, {"patch_size": "16"}, {"mask_ratio": 1.0},
                {"prototypes": 1}, {"ema_momentum": 1.5}):
        with pytest.raises(ObjectiveError):
            MSN(vit(), **bad)
    cnn = build_encoder("resnet18", 2, 1, [28, 28], {"widths": [8, 8, 16, 16]})
    with pytest.raises(ObjectiveError, match="vit"):
        MSN(cnn)


def _train(me_max_weight: float, x: torch.Tensor, steps: int) -> tuple[float, float, float]:
    """(loss on a fixed pair of views before, after, me-max term after) of `steps` Adam
    steps on batches of 32."""
    torch.manual_seed(0)
    obj = MSN(vit(), prototypes=64, projection_dim=64, me_max_weight=me_max_weight)

    def held_out() -> tuple[float, float]:
        with torch.no_grad():
            gen = torch.Generator().manual_seed(123)
            va, vt = (standardise(v) for v in obj.views(x, POLICY, gen))
            za, zt = obj.anchor(va, gen), obj.target.at(va.device)(vt)
            full = float(msn_loss(za, zt, obj.prototypes))
            return full, full - float(msn_loss(za, zt, obj.prototypes, me_max_weight=0.0))

    before, _ = held_out()
    opt = torch.optim.Adam(obj.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    for step in range(steps):
        batch = x[(step % 2) * 32:(step % 2 + 1) * 32]
        loss = obj.loss(batch, POLICY, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        obj.after_step()
    after, me_max = held_out()
    return before, after, me_max


def test_real_xrays_lower_the_loss_and_me_max_keeps_prototypes_used() -> None:
    imgs, _ = medmnist("pneumoniamnist", split="train", n=64)
    x = torch.from_numpy(imgs).float().div(255)[:, None]
    # Measured (64 prototypes, 40 steps): held-out MSN loss 3.50 -> 3.07 and the me-max
    # term 0.38 -> 0.38 (about 44 of 64 prototypes' worth of mean-assignment entropy);
    # seeds 1-3 gave drops of 12-18 %.
    before, after, me_max = _train(1.0, x, 40)
    assert after < 0.93 * before
    assert me_max < 0.7
    # Without me-max the assignments collapse onto a few prototypes (measured: the term
    # climbs to 2.20 after 20 steps, about 7 prototypes' worth); that is what it prevents.
    _, _, collapsed = _train(0.0, x, 20)
    assert collapsed > 1.4
