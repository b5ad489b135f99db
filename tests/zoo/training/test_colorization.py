"""Colourisation: sRGB -> CIE Lab against known values, the L input and ab target, refusals
of grey images and 3D encoders, and a short run on real fundus photographs that learns
more than the mean colour."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.utils import DATA_DIR
from zoo.architectures import build_encoder
from zoo.training.augment import Policy
from zoo.training.pretext.base import ObjectiveError
from zoo.training.pretext.colorization import AB_SCALE, Colorization, rgb_to_lab

SMALL = {"widths": [8, 8, 16, 16]}
POLICY = Policy.build(["random_resized_crop", "horizontal_flip"], [], 3)  # the catalog's


def encoder(channels: int = 3, dims: int = 2):  # noqa: ANN201
    return build_encoder("resnet18", dims, channels, [28] * dims, SMALL)


def pixels(*rgb: tuple[float, float, float]) -> torch.Tensor:
    """(1, 3, n, 1) image of the given sRGB colours."""
    return torch.tensor(rgb, dtype=torch.float32).T.reshape(1, 3, len(rgb), 1)


def test_lab_of_known_colours() -> None:
    # CIE 1976 L*a*b* (D65) of sRGB white, black, red, green and blue, as colour-science
    # tables give them.
    lab = rgb_to_lab(pixels((1, 1, 1), (0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1)))[0, :, :, 0].T
    known = torch.tensor([[100.0, 0.0, 0.0], [0.0, 0.0, 0.0], [53.24, 80.09, 67.20],
                          [87.73, -86.18, 83.18], [32.30, 79.19, -107.86]])
    assert torch.allclose(lab, known, atol=0.02)
    assert lab.dtype == torch.float32


def test_grey_has_no_chroma_and_l_follows_the_cie_formula() -> None:
    g = torch.linspace(0, 1, 11)
    lab = rgb_to_lab(g.view(1, 1, 11, 1).expand(1, 3, 11, 1))[0, :, :, 0]
    assert torch.allclose(lab[1:], torch.zeros(2, 11), atol=1e-3)
    # L* = 116 Y^(1/3) - 16 above (6/29)^3, 903.3 Y below; Y is the decoded sRGB value.
    y = torch.where(g <= 0.04045, g / 12.92, ((g + 0.055) / 1.055) ** 2.4).double()
    expected = torch.where(y > (6 / 29) ** 3, 116 * y ** (1 / 3) - 16, (29 / 3) ** 3 * y)
    assert torch.allclose(lab[0].double(), expected, atol=1e-3)


def test_input_is_replicated_luminance_and_target_scaled_ab() -> None:
    x = torch.rand(2, 3, 28, 28)
    luminance, target = Colorization.split(x)
    lab = rgb_to_lab(x)
    assert luminance.shape == (2, 3, 28, 28) and target.shape == (2, 2, 28, 28)
    assert torch.equal(luminance[:, 0], luminance[:, 2])
    assert torch.allclose(luminance[:, :1] * 100, lab[:, :1], atol=1e-4)
    assert torch.allclose(target * AB_SCALE, lab[:, 1:], atol=1e-4)
    assert float(target.abs().max()) <= 1.0
    _, grey = Colorization.split(torch.rand(2, 1, 28, 28).expand(2, 3, 28, 28))
    assert float(grey.abs().max()) < 1e-5


def test_grey_images_volumes_and_wrong_settings_are_refused() -> None:
    obj = Colorization(encoder())
    with pytest.raises(ObjectiveError, match="colorization needs colour"):
        obj.loss(torch.rand(4, 1, 28, 28), POLICY)
    with pytest.raises(ObjectiveError, match="2D only"):
        Colorization(encoder(dims=3))
    with pytest.raises(ObjectiveError, match="3-channel"):
        Colorization(encoder(channels=1))
    with pytest.raises(ObjectiveError, match="input_space"):
        Colorization(encoder(), input_space="RGB")
    with pytest.raises(ObjectiveError, match="target_space"):
        Colorization(encoder(), target_space="hsv")


def test_loss_is_smooth_l1_on_ab_and_reaches_the_encoder() -> None:
    torch.manual_seed(0)
    obj = Colorization(encoder(), input_space="L", target_space="ab")
    x = torch.rand(4, 3, 28, 28)
    loss = obj.loss(x, Policy(set()), torch.Generator().manual_seed(0))
    # without augmentation but the always-drawn noise level, the view is x itself
    luminance, target = Colorization.split(x)
    assert torch.allclose(loss, F.smooth_l1_loss(obj.predict(luminance), target, beta=0.1),
                          atol=1e-6)
    loss.backward()
    assert any(float(p.grad.abs().sum()) > 0 for p in obj.encoder.parameters()
               if p.grad is not None)


def test_colorization_learns_on_real_fundus_images() -> None:
    path = DATA_DIR / "medmnist" / "retinamnist.npz"
    if not path.exists():
        pytest.skip(f"real data not found at {path} (see shared/data/README.md)")
    with np.load(path) as data:
        x = torch.from_numpy(data["train_images"][:256]).permute(0, 3, 1, 2).float().div(255)
    torch.manual_seed(0)
    obj = Colorization(encoder())
    opt = torch.optim.Adam(obj.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    history = []
    for step in range(20):
        loss = obj.loss(x[(torch.arange(16) + step * 16) % len(x)], POLICY, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
    assert sum(history[-5:]) / 5 < 0.5 * sum(history[:5]) / 5  # measured: 0.184 -> 0.055
    # and it uses the luminance: better than predicting the mean colour everywhere
    luminance, target = Colorization.split(x)
    mean = F.smooth_l1_loss(target.mean((0, 2, 3), keepdim=True).expand_as(target), target,
                            beta=0.1)
    obj.eval()
    with torch.no_grad():
        fitted = F.smooth_l1_loss(obj.predict(luminance), target, beta=0.1)
    assert float(fitted) < 0.9 * float(mean)  # measured: 0.050 against 0.064
