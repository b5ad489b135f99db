"""Every loss against its defining formula, written out naively on small tensors."""

from __future__ import annotations

import math

import torch

from zoo.training.pretext import losses

torch.manual_seed(0)


def cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


def test_nt_xent_matches_formula() -> None:
    z1, z2, t = torch.randn(4, 8), torch.randn(4, 8), 0.5
    views = list(z1) + list(z2)
    n2 = len(views)
    total = 0.0
    for i in range(n2):
        j = (i + 4) % n2
        num = math.exp(cos(views[i], views[j]) / t)
        den = sum(math.exp(cos(views[i], views[k]) / t) for k in range(n2) if k != i)
        total += -math.log(num / den)
    assert math.isclose(float(losses.nt_xent(z1, z2, t)), total / n2, rel_tol=1e-5)


def test_info_nce_queue_matches_formula() -> None:
    q, k = torch.randn(3, 6), torch.randn(3, 6)
    queue = torch.nn.functional.normalize(torch.randn(5, 6), dim=1)
    t = 0.2
    total = 0.0
    for i in range(3):
        pos = math.exp(cos(q[i], k[i]) / t)
        neg = sum(math.exp(cos(q[i], queue[j]) / t) for j in range(5))
        total += -math.log(pos / (pos + neg))
    assert math.isclose(float(losses.info_nce_queue(q, k, queue, t)), total / 3, rel_tol=1e-5)


def test_byol_matches_formula() -> None:
    p, z = torch.randn(5, 7), torch.randn(5, 7)
    expected = sum(
        float(((p[i] / p[i].norm() - z[i] / z[i].norm()) ** 2).sum()) for i in range(5)) / 5
    assert math.isclose(float(losses.byol_loss(p, z)), expected, rel_tol=1e-5)


def test_barlow_twins_matches_formula() -> None:
    z1, z2, lam = torch.randn(16, 4), torch.randn(16, 4), 0.1
    n, d = z1.shape

    def standard(z: torch.Tensor, j: int) -> list[float]:
        col = [float(z[b, j]) for b in range(n)]
        mu = sum(col) / n
        sd = math.sqrt(sum((v - mu) ** 2 for v in col) / n)
        return [(v - mu) / (sd + 1e-5) for v in col]

    a = [standard(z1, j) for j in range(d)]
    b = [standard(z2, j) for j in range(d)]
    total = 0.0
    for i in range(d):
        for j in range(d):
            c = sum(a[i][k] * b[j][k] for k in range(n)) / n
            total += (1 - c) ** 2 if i == j else lam * c**2
    assert math.isclose(float(losses.barlow_twins_loss(z1, z2, lam)), total, rel_tol=1e-4)


def test_dino_matches_formula() -> None:
    s, t, c = torch.randn(3, 5), torch.randn(3, 5), torch.randn(5) * 0.1
    ts, tt = 0.1, 0.04
    total = 0.0
    for i in range(3):
        te = [math.exp((float(t[i, k]) - float(c[k])) / tt) for k in range(5)]
        pt = [v / sum(te) for v in te]
        se = [math.exp(float(s[i, k]) / ts) for k in range(5)]
        ls = [math.log(v / sum(se)) for v in se]
        total += -sum(p * q for p, q in zip(pt, ls, strict=True))
    assert math.isclose(float(losses.dino_loss(s, t, c, ts, tt)), total / 3, rel_tol=1e-4)


def test_dense_nt_xent_is_nt_xent_over_locations() -> None:
    f1, f2 = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    a = torch.stack([f1[b, :, i, j] for b in range(2) for i in range(3) for j in range(3)])
    b = torch.stack([f2[b, :, i, j] for b in range(2) for i in range(3) for j in range(3)])
    assert torch.isclose(losses.dense_nt_xent(f1, f2, 0.3), losses.nt_xent(a, b, 0.3))


def test_masked_mse_only_counts_masked_patches() -> None:
    pred, target = torch.randn(2, 4, 3), torch.randn(2, 4, 3)
    mask = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 1]], dtype=torch.float32)
    picked = [(b, p) for b in range(2) for p in range(4) if mask[b, p]]
    expected = sum(float(((pred[b, p] - target[b, p]) ** 2).mean()) for b, p in picked)
    assert math.isclose(float(losses.masked_mse(pred, target, mask)), expected / len(picked),
                        rel_tol=1e-5)
    changed = pred.clone()
    changed[0, 1] += 100  # an unmasked patch: no effect
    assert torch.isclose(losses.masked_mse(changed, target, mask),
                         losses.masked_mse(pred, target, mask))


def test_masked_pixel_mse_only_counts_removed_pixels() -> None:
    pred, target = torch.randn(2, 2, 3, 4), torch.randn(2, 2, 3, 4)
    mask = (torch.rand(2, 1, 3, 4) < 0.4).float()
    mask[0, 0, 0, 0] = 1
    total, count = 0.0, 0
    for b in range(2):
        for i in range(3):
            for j in range(4):
                if mask[b, 0, i, j]:
                    for c in range(2):
                        total += float(pred[b, c, i, j] - target[b, c, i, j]) ** 2
                        count += 1
    assert math.isclose(float(losses.masked_pixel_mse(pred, target, mask)), total / count,
                        rel_tol=1e-5)
    changed = pred + 100 * (1 - mask)  # only pixels that were not removed
    assert torch.isclose(losses.masked_pixel_mse(changed, target, mask),
                         losses.masked_pixel_mse(pred, target, mask))


def test_cluster_contrast_matches_formula() -> None:
    n, k, t = 6, 4, 0.7
    p1, p2 = torch.randn(n, k).softmax(1), torch.randn(n, k).softmax(1)
    columns = [p1[:, j] for j in range(k)] + [p2[:, j] for j in range(k)]
    pair = 0.0
    for i in range(2 * k):
        num = math.exp(cos(columns[i], columns[(i + k) % (2 * k)]) / t)
        den = sum(math.exp(cos(columns[i], columns[j]) / t) for j in range(2 * k) if j != i)
        pair += -math.log(num / den)
    entropy = 0.0
    for p in (p1, p2):
        for j in range(k):
            share = sum(float(p[r, j]) for r in range(n)) / n
            entropy -= share * math.log(share)
    expected = pair / (2 * k) - entropy
    assert math.isclose(float(losses.cluster_contrast(p1, p2, t)), expected, rel_tol=1e-5)


def test_negative_cosine_matches_formula_and_stops_the_target_gradient() -> None:
    p, z = torch.randn(5, 7, requires_grad=True), torch.randn(5, 7, requires_grad=True)
    expected = -sum(cos(p[i].detach(), z[i].detach()) for i in range(5)) / 5
    loss = losses.negative_cosine(p, z)
    assert math.isclose(float(loss.detach()), expected, rel_tol=1e-5)
    loss.backward()
    assert z.grad is None and p.grad is not None


def test_nnclr_loss_matches_formula() -> None:
    n, m, t = 4, 7, 0.3
    z, p, support = torch.randn(n, 5), torch.randn(n, 5), torch.randn(m, 5)
    stored = torch.tensor([True, True, False, True, True, False, True])

    def expected(allowed: list[int]) -> float:
        total = 0.0
        for i in range(n):
            j = max(allowed, key=lambda r: cos(z[i], support[r]))
            num = math.exp(cos(support[j], p[i]) / t)
            den = sum(math.exp(cos(support[j], p[k]) / t) for k in range(n))
            total += -math.log(num / den)
        return total / n

    assert math.isclose(float(losses.nnclr_loss(z, p, support, t)), expected(list(range(m))),
                        rel_tol=1e-5)
    kept = [r for r in range(m) if stored[r]]
    assert math.isclose(float(losses.nnclr_loss(z, p, support, t, stored)), expected(kept),
                        rel_tol=1e-5)


def test_nearest_neighbours_of_an_empty_support_set_are_the_samples() -> None:
    z = torch.randn(3, 4, requires_grad=True)
    picked = losses.nearest_neighbours(z, torch.randn(5, 4), torch.zeros(5, dtype=torch.bool))
    assert torch.equal(picked, z.detach()) and not picked.requires_grad


def test_perfect_agreement_gives_minimum() -> None:
    z = torch.randn(8, 16)
    assert float(losses.byol_loss(z, z)) < 1e-6
    assert float(losses.barlow_twins_loss(z, z, 0.0)) < 1e-3
    assert float(losses.latent_regression(
        torch.nn.functional.layer_norm(z, (16,)), z)) < 1e-6


def test_margin_contrastive_matches_formula() -> None:
    from zoo.training.pretext.losses import margin_contrastive

    torch.manual_seed(0)
    za, zb = torch.randn(5, 3), torch.randn(5, 3)
    groups = torch.tensor([0, 0, 1, 2, 2])
    same = groups[:, None] == groups[None, :]
    pos, neg = [], []
    for i in range(5):
        for j in range(5):
            d = float(((za[i] - zb[j]) ** 2).sum().sqrt())
            (pos if same[i, j] else neg).append(d ** 2 if same[i, j] else max(0.0, 1.5 - d) ** 2)
    expected = sum(pos) / len(pos) + sum(neg) / len(neg)
    assert abs(float(margin_contrastive(za, zb, same, 1.5)) - expected) < 1e-5
    # Far-apart negatives and coinciding positives cost nothing.
    z = torch.eye(3) * 10
    assert float(margin_contrastive(z, z, torch.eye(3, dtype=torch.bool), 1.0)) == 0.0
