"""Task models: a zoo encoder with the head it was trained with, usable on its own.

The normalisation lives inside the module (and so inside its ONNX graph): callers send
images scaled to [0, 1], as `zoo.imaging.load` makes them, and get probabilities back.
"""

from __future__ import annotations

import torch
from torch import nn

from .architectures import build_encoder
from .cards import EncoderCard


class Classifier(nn.Module):
    """encoder -> linear head -> softmax, on normalised input."""

    def __init__(self, encoder: nn.Module, classes: int, mean: list[float],
                 std: list[float], spatial_dims: int):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.feature_dim, classes)
        shape = (1, -1, *([1] * spatial_dims))
        # Not in the state dict: they are the card's normalisation, stated there once.
        self.register_buffer("mean", torch.tensor(mean).reshape(shape), persistent=False)
        self.register_buffer("std", torch.tensor(std).reshape(shape), persistent=False)
        self.size_agnostic = bool(getattr(encoder, "size_agnostic", False))
        self.feature_dim = encoder.feature_dim

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder((x - self.mean) / self.std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(x), dim=1)


def build_task_model(card: EncoderCard, encoder: nn.Module | None = None) -> nn.Module:
    """The task model a card describes (fresh weights unless an encoder is given): a
    `Classifier`, or a `zoo.segmentation.Segmenter` for a segmentation card."""
    if card.task is None:
        raise ValueError(f"{card.name} is an encoder, not a task model")
    if card.task.kind == "segmentation":
        from .segmentation import build_segmenter

        return build_segmenter(card, encoder)
    if encoder is None:
        encoder = build_encoder(card.architecture.name, card.spatial_dims, card.in_channels,
                                card.input_size, card.architecture.args)
    norm = card.normalization
    channels = card.in_channels
    mean = norm.mean * channels if len(norm.mean) == 1 else norm.mean
    std = norm.std * channels if len(norm.std) == 1 else norm.std
    return Classifier(encoder, len(card.task.classes), mean, std, card.spatial_dims)
