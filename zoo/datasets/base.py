"""What every reader returns: a dataset of uint8 tensors per split, with class labels,
segmentation masks, both, or neither (images only, for pretraining). Kept apart from the
readers so that the mask, volume and folder-layout modules can share it without cycles."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

SPLITS = ("train", "val", "test")


class DataError(ValueError):
    """Data that cannot be used, with the reason and what is accepted."""


@dataclass
class Split:
    images: torch.Tensor  # uint8, (N, C, *spatial)
    labels: torch.Tensor | None  # int64, (N,); None in an unlabelled dataset
    groups: torch.Tensor | None = None  # int64 group/patient ids, (N,)
    # uint8 class index per pixel/voxel, (N, *spatial), 0 = background; None without masks.
    masks: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.images.shape[0])


@dataclass
class Dataset:
    name: str
    splits: dict[str, Split]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def spatial_dims(self) -> int:
        return self.splits["train"].images.dim() - 2

    @property
    def channels(self) -> int:
        return int(self.splits["train"].images.shape[1])

    @property
    def image_size(self) -> list[int]:
        return list(self.splits["train"].images.shape[2:])

    @property
    def labelled(self) -> bool:
        """Whether every split has labels; an unlabelled set has none in any split (and may
        lack val and test), which is all self-supervised pretraining needs."""
        return all(s.labels is not None for s in self.splits.values())

    @property
    def has_masks(self) -> bool:
        """Whether every split carries segmentation masks (a segmentation dataset)."""
        return all(s.masks is not None for s in self.splits.values())

    @property
    def num_classes(self) -> int:
        """Classes seen in any split; 0 for an unlabelled dataset."""
        seen = [int(s.labels.max()) for s in self.splits.values()
                if s.labels is not None and len(s)]
        return max(seen) + 1 if seen else 0

    @property
    def task(self) -> str | None:
        """"segmentation" with masks (whether or not it also has class labels, as PH2 has),
        "classification" with labels only, None for images only."""
        if self.has_masks:
            return "segmentation"
        return "classification" if self.labelled else None
