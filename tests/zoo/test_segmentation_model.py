"""The segmentation task model: a zoo encoder's stages feeding a MONAI U-Net decoder, in 2D
and 3D, at sizes its encoder was not built for; ViT position embeddings resized; ONNX
parity at two input sizes; cards that declare segmentation heads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from tests.utils import card
from zoo.architectures import (
    ArchitectureError,
    ViTEncoder,
    build_encoder,
    encoder_at_size,
    resize_position_embeddings,
)
from zoo.cards import EncoderCard
from zoo.export import export_onnx, parity, probe_input
from zoo.segmentation import (
    SegmentationError,
    Segmenter,
    build_segmenter,
    segmenter_from_encoder,
    vit_layers,
    vit_scales,
)

TINY_2D = {"widths": [8, 8, 16, 16]}
TINY_VIT = {"patch_size": 4, "hidden_size": 48, "mlp_dim": 96, "num_layers": 2,
            "num_heads": 3}


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)


def segmenter(name: str, dims: int, size: list[int], args: dict, channels: int = 1,
              classes: int = 3) -> Segmenter:
    encoder = build_encoder(name, dims, channels, [28] * dims, args)
    return segmenter_from_encoder(encoder, classes, size, [0.5], [0.5]).eval()


@pytest.mark.parametrize(("name", "dims", "args", "channels", "sizes"), [
    ("resnet18", 2, {}, 3, [[128, 128]]),  # full width, CIFAR stem: Kvasir-SEG
    ("resnet18", 2, {"stem": "imagenet", **TINY_2D}, 3, [[128, 128], [50, 70]]),
    ("resnet18", 2, TINY_2D, 1, [[37, 41]]),  # not a multiple of the stride: padded
    ("resnet10", 3, {"widths": [8, 16, 32, 64]}, 1, [[48, 64, 48], [20, 24, 28]]),
    ("resnet10", 3, {"stem": "imagenet", **TINY_2D}, 1, [[48, 64, 48]]),
])
def test_probabilities_at_the_input_resolution(name: str, dims: int, args: dict,
                                               channels: int, sizes: list[list[int]]) -> None:
    model = segmenter(name, dims, sizes[0], args, channels)
    assert model.size_agnostic
    for size in sizes:
        with torch.inference_mode():
            probs = model(torch.rand(2, channels, *size))
        assert probs.shape == (2, 3, *size)
        assert torch.allclose(probs.sum(1), torch.ones(2, *size), atol=1e-5)
        assert (probs >= 0).all()


def test_decoder_skips_every_scale_of_the_stem() -> None:
    cifar = segmenter("resnet18", 2, [64, 64], TINY_2D)
    imagenet = segmenter("resnet18", 2, [64, 64], {"stem": "imagenet", **TINY_2D})
    assert [lv.stride for lv in cifar.levels] == [1, 2, 4, 8]
    assert [lv.stride for lv in imagenet.levels] == [1, 2, 4, 8, 16, 32]
    assert "input" in imagenet.skips and "input" not in cifar.skips
    assert (cifar.divisor, imagenet.divisor) == (8, 32)


def test_encoder_weights_keep_their_names() -> None:
    """A segmenter's `encoder.*` weights are the encoder's own, so a fine-tuned encoder can
    be taken out, and a zoo encoder's weights loaded in."""
    encoder = build_encoder("resnet18", 2, 1, [28, 28], TINY_2D)
    model = segmenter_from_encoder(encoder, 2, [64, 64], [0.5], [0.5])
    inner = {k.removeprefix("encoder."): v for k, v in model.state_dict().items()
             if k.startswith("encoder.")}
    assert inner.keys() == encoder.state_dict().keys()
    assert "mean" not in model.state_dict()  # normalisation: the card's, not weights


def test_vit_decodes_the_token_grid_unetr_style() -> None:
    assert vit_scales(16) == [16, 8, 4, 2, 1] and vit_scales(7) == [7, 1]
    assert vit_layers(12, 3) == [2, 5, 8]  # UNETR's z3, z6, z9
    model = segmenter("vit", 2, [64, 64], TINY_VIT)
    assert model.encoder.img_size == [64, 64] and not model.size_agnostic
    with torch.inference_mode():
        probs = model(torch.rand(2, 1, 62, 64))  # smaller than built: padded
    assert probs.shape == (2, 3, 62, 64)
    assert torch.allclose(probs.sum(1), torch.ones(2, 62, 64), atol=1e-5)
    with pytest.raises(SegmentationError, match="larger than"):
        model(torch.rand(1, 1, 68, 64))
    volume = segmenter("vit", 3, [20, 24, 20], {**TINY_VIT, "patch_size": 7})
    assert volume.encoder.img_size == [21, 28, 21]  # rounded up to whole patches
    with torch.inference_mode():
        assert volume(torch.rand(1, 1, 20, 24, 20)).shape == (1, 3, 20, 24, 20)


def test_position_embeddings_round_trip_exactly() -> None:
    """7 -> 13 patches per side puts an old row on every other new one; back is exact."""
    encoder = build_encoder("vit", 2, 1, [28, 28], TINY_VIT)
    with torch.no_grad():
        encoder.net.patch_embedding.position_embeddings.normal_()
    state = encoder.state_dict()
    big = resize_position_embeddings(state, [7, 7], [13, 13])
    key = "net.patch_embedding.position_embeddings"
    assert big[key].shape == (1, 169, 48)
    assert torch.equal(big[key].reshape(13, 13, 48)[::2, ::2], state[key].reshape(7, 7, 48))
    back = resize_position_embeddings(big, [13, 13], [7, 7])
    assert torch.allclose(back[key], state[key], atol=1e-6)
    assert all(back[k] is state[k] for k in state if k != key)  # other weights untouched
    with pytest.raises(ArchitectureError, match="patch grid"):
        resize_position_embeddings(state, [6, 6], [13, 13])


def test_position_embeddings_3d_keep_every_old_row() -> None:
    table = torch.randn(1, 3 * 4 * 3, 8)
    out = resize_position_embeddings({"position_embeddings": table}, [3, 4, 3], [5, 7, 5])
    grid = out["position_embeddings"].reshape(5, 7, 5, 8)
    assert torch.allclose(grid[::2, ::2, ::2], table.reshape(3, 4, 3, 8), atol=1e-6)


def test_a_28_pixel_vit_runs_at_another_size_with_its_weights() -> None:
    small = build_encoder("vit", 2, 1, [28, 28], TINY_VIT).eval()
    large = encoder_at_size(small, [56, 56]).eval()
    assert isinstance(large, ViTEncoder) and large.grid == [14, 14]
    shared = [k for k in small.state_dict() if not k.endswith("position_embeddings")]
    assert all(torch.equal(small.state_dict()[k], large.state_dict()[k]) for k in shared)
    with torch.inference_mode():
        assert large(torch.rand(2, 1, 56, 56)).shape == (2, 48)
    cnn = build_encoder("resnet18", 2, 1, [28, 28], TINY_2D)
    assert encoder_at_size(cnn, [128, 128]) is cnn


def test_segmentation_cards() -> None:
    base = card(arch={"name": "resnet18", "args": TINY_2D}, channels=3)
    seg = EncoderCard.model_validate({
        **base, "input_size": [64, 64],
        "task": {"kind": "segmentation", "classes": ["background", "polyp"]}})
    model = build_segmenter(seg)
    assert model.classes == 2 and model.mean.shape == (1, 3, 1, 1)
    classification = EncoderCard.model_validate({**base, "task": {"classes": ["a", "b"]}})
    assert classification.task.kind == "classification"  # older cards read as before
    with pytest.raises(SegmentationError, match="not a segmentation"):
        build_segmenter(classification)
    with pytest.raises(ValidationError, match="threshold"):
        EncoderCard.model_validate({**base, "task": {
            "kind": "segmentation", "classes": ["background", "polyp"], "threshold": 0.5}})


@pytest.mark.parametrize(("name", "dims", "args"), [
    ("resnet18", 2, {"stem": "imagenet", **TINY_2D}),
    ("resnet10", 3, TINY_2D),
])
def test_onnx_matches_pytorch_at_two_sizes(tmp_path: Path, name: str, dims: int,
                                           args: dict) -> None:
    """Dynamic spatial axes: exported at one size, checked at that size and at one that is
    not a multiple of the stride (padded inside the graph)."""
    model = segmenter(name, dims, [32] * dims, args)
    path = tmp_path / "segmenter.onnx"
    export_onnx(model, probe_input(1, [32] * dims), path, "probabilities")
    for size in ([32] * dims, [36, 20, 28][:dims]):
        assert parity(model, path, probe_input(1, size, batch=3, seed=1)) < 1e-4
