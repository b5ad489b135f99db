from __future__ import annotations

import torch

from zoo.training.augment import Policy, augment, geometric, photometric


def test_policy_honours_avoid_and_channels() -> None:
    p = Policy.build(["rotation_90", "color_jitter", "rician_noise", "frame_sampling"],
                     avoid=["rotation_90"], channels=1)
    assert p.ops == {"rician_noise"}
    assert "advised against" in p.skipped["rotation_90"]
    assert "single-channel" in p.skipped["color_jitter"]
    assert "not implemented" in p.skipped["frame_sampling"]


def test_geometric_without_ops_is_identity() -> None:
    x = torch.rand(4, 1, 28, 28)
    assert torch.allclose(geometric(x, Policy(set())), x, atol=1e-5)
    v = torch.rand(2, 1, 8, 8, 8)
    assert torch.allclose(geometric(v, Policy(set())), v, atol=1e-5)


def test_flip_only_mirrors() -> None:
    x = torch.rand(64, 1, 12, 12)
    y = geometric(x, Policy({"horizontal_flip"}), torch.Generator().manual_seed(1))
    for a, b in zip(x, y, strict=True):
        assert torch.allclose(a, b, atol=1e-5) or torch.allclose(a.flip(-1), b, atol=1e-5)


def test_outputs_stay_in_unit_range_and_noise_models() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(16, 1, 28, 28)
    all_ops = Policy.build(["random_resized_crop", "horizontal_flip", "small_rotation",
                            "gaussian_blur", "gaussian_noise", "rician_noise", "speckle_noise",
                            "poisson_noise", "intensity_shift", "gamma", "random_erasing"],
                           [], 1)
    y = augment(x, all_ops, gen)
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    zero = torch.zeros(8, 1, 16, 16)
    rician = photometric(zero, Policy({"rician_noise"}), gen)
    assert (rician > 0).float().mean() > 0.5  # magnitude noise: positive bias on black
    speckle = photometric(zero, Policy({"speckle_noise"}), gen)
    assert torch.equal(speckle, zero)  # multiplicative: black stays black


def test_rgb_stain_and_colour_change_colour() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(8, 3, 16, 16) * 0.8 + 0.1
    y = photometric(x, Policy({"stain_jitter"}), gen)
    assert not torch.allclose(x, y) and y.shape == x.shape


def test_3d_views() -> None:
    v = torch.rand(2, 1, 16, 16, 16)
    p = Policy.build(["random_resized_crop", "horizontal_flip", "speckle_noise",
                      "gaussian_blur"], [], 1)
    assert augment(v, p, torch.Generator().manual_seed(0)).shape == v.shape
