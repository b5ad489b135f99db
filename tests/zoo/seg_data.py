"""Real segmentation sets from ../shared/data/segmentation, read straight from their npz
files into `Dataset` objects (small cuts for tests, whole splits for bench/segment.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.utils import DATA_DIR
from zoo.datasets.base import Dataset, Split

SEG_DIR = DATA_DIR / "segmentation"
KVASIR = "kvasirseg_128.npz"
HIPPOCAMPUS = "hippocampus3d_48x64x48.npz"
CLASSES = {KVASIR: ["background", "polyp"],
           HIPPOCAMPUS: ["background", "anterior", "posterior"]}


def seg_path(file: str) -> Path:
    path = SEG_DIR / file
    if not path.exists():
        pytest.skip(f"real data not found at {path} (see shared/data/README.md)")
    return path


def load_seg(file: str, cut: dict[str, int] | None = None, side: int | None = None
             ) -> Dataset:
    """The file's splits as (N, C, *spatial) uint8 images and (N, *spatial) masks; `cut`
    keeps the first images of each split, `side` shrinks 2D images (area) and masks
    (nearest) to side x side."""
    splits = {}
    with np.load(seg_path(file)) as data:
        for split in ("train", "val", "test"):
            count = (cut or {}).get(split)
            images = torch.from_numpy(data[f"{split}_images"][:count])
            masks = torch.from_numpy(data[f"{split}_masks"][:count])
            rgb = images.dim() == 4 and images.shape[-1] == 3  # (N, H, W, 3), else gray
            images = images.permute(0, 3, 1, 2) if rgb else images[:, None]
            if side is not None and images.shape[-1] != side:
                images = F.interpolate(images.float(), size=(side, side), mode="area")
                images = images.round().clamp(0, 255).to(torch.uint8)
                masks = F.interpolate(masks[:, None].float(), size=(side, side),
                                      mode="nearest")[:, 0].to(torch.uint8)
            splits[split] = Split(images.contiguous(), None, masks=masks.contiguous())
    return Dataset(Path(file).stem, splits, {"mask_classes": CLASSES[file]})
