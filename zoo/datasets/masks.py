"""Segmentation masks: one uint8 class index per pixel or voxel, 0 = background.

Every reader turns its mask files into such arrays through `mask_indices`, names the classes
with `class_names` (declared by the data where it can say so, else numbered), and refuses
values outside them with `check_mask_values`. Summaries count the per-class pixel/voxel
fractions and the empty masks here, so that a user sees an imbalanced or half-empty set at
upload time rather than as a poor Dice after training.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from .base import DataError, Dataset, Split

MAX_MASK_CLASSES = 256  # masks are stored as uint8
_CHUNK_SAMPLES = 64  # masks counted a few at a time, so counting never copies a whole split


def mask_indices(values: np.ndarray, what: str) -> np.ndarray:
    """`values` as uint8 class indices. Integers, booleans and whole-number floats (label
    maps are often saved as float NIfTI) in 0..255 are accepted; anything else is refused
    with what was found, before it could wrap around in the uint8 cast."""
    if values.dtype == np.bool_:
        return values.astype(np.uint8)
    if np.issubdtype(values.dtype, np.floating):
        if not np.isfinite(values).all():
            raise DataError(f"{what} contains NaN or infinite values; masks hold class "
                            "indices")
        if (values != np.round(values)).any():
            raise DataError(f"{what} contains fractional values; masks hold whole class "
                            "indices (0 = background), not probabilities")
    elif not np.issubdtype(values.dtype, np.integer):
        raise DataError(f"{what} has dtype {values.dtype}; masks must be integer class indices")
    if values.size and values.min() < 0:
        raise DataError(f"{what} has negative values; masks hold class indices from 0")
    if values.size and values.max() >= MAX_MASK_CLASSES:
        raise DataError(f"{what} has the value {values.max():.0f}; mask values are class "
                        f"indices 0..{MAX_MASK_CLASSES - 1}")
    return values.astype(np.uint8, copy=False)


MAX_NAMES_CHARS = 4096


def parse_class_names(raw: Any, where: str) -> list[str]:
    """Class names as declared: a list in index order, or a mapping either way round, MSD
    style {"0": "background", "1": "polyp"} or nnU-Net v2 style {"background": 0,
    "polyp": 1}. Unnamed indices below the largest get "class k"."""
    if isinstance(raw, list | tuple | np.ndarray):
        pairs = list(enumerate(raw))
    elif isinstance(raw, Mapping):
        if all(isinstance(v, int) and not isinstance(v, bool) for v in raw.values()):
            pairs = [(v, k) for k, v in raw.items()]
        elif all(str(k).isascii() and str(k).isdigit() for k in raw):  # not "²" or "١"
            pairs = [(int(k), v) for k, v in raw.items()]
        else:
            raise DataError(f"{where}: labels must map class indices to names ({{\"0\": "
                            "\"background\", \"1\": \"polyp\"}) or names to indices; region "
                            "labels (lists of values) are not supported")
    else:
        raise DataError(f"{where}: class names must be a list or a mapping, not "
                        f"{type(raw).__name__}")
    if not pairs:
        raise DataError(f"{where} declares no classes")
    names: dict[int, str] = {}
    for index, name in pairs:
        if not isinstance(name, str) or not name.strip() or len(name) > 100:
            raise DataError(f"{where}: class {index} needs a name of 1 to 100 characters")
        if not 0 <= int(index) < MAX_MASK_CLASSES:
            raise DataError(f"{where}: class index {index} is outside 0..{MAX_MASK_CLASSES - 1}")
        names[int(index)] = name.strip()
    if 0 not in names:
        raise DataError(f"{where}: class 0 (background) is not declared")
    out = [names.get(i, f"class {i}") for i in range(max(names) + 1)]
    twice = sorted({n for n in out if out.count(n) > 1})
    if twice:
        raise DataError(f"{where}: class names must differ; {twice[:5]} name more than one "
                        "class")
    # Names travel with every mask /predict returns (a response header), so their total
    # is bounded: at most MAX_NAMES_CHARS characters as ASCII-escaped JSON.
    size = len(json.dumps(out))
    if size > MAX_NAMES_CHARS:
        raise DataError(f"{where}: the class names take {size:,} characters as JSON; at most "
                        f"{MAX_NAMES_CHARS:,} (use shorter names)")
    return out


def value_counts(masks: torch.Tensor) -> torch.Tensor:
    """Pixels/voxels per mask value 0..255 (int64), counted a few masks at a time."""
    counts = torch.zeros(MAX_MASK_CLASSES, dtype=torch.int64)
    for i in range(0, len(masks), _CHUNK_SAMPLES):
        counts += torch.bincount(masks[i:i + _CHUNK_SAMPLES].flatten(),
                                 minlength=MAX_MASK_CLASSES)
    return counts


def class_names(declared: list[str] | None, splits: Mapping[str, Split]) -> list[str]:
    """The declared names, or, when the data declares none, "background" and "class k" up
    to the largest value any mask holds (a binary mask gives ["background", "class 1"])."""
    if declared:
        return list(declared)
    top = 1
    for split in splits.values():
        if split.masks is not None and split.masks.numel():
            top = max(top, int(split.masks.max()))
    return ["background"] + [f"class {i}" for i in range(1, top + 1)]


def _case_name(ds: Dataset, split: str, index: int) -> str:
    ids = ds.info.get("cases", {}).get(split, {}).get("ids")
    return f"'{ids[index]}'" if ids and index < len(ids) else f"#{index}"


def check_mask_values(ds: Dataset) -> None:
    """Refuse mask values beyond the declared classes, naming the values, a mask that holds
    them and the classes that are allowed."""
    classes = ds.info["mask_classes"]
    allowed = ", ".join(f"{i} {name}" for i, name in enumerate(classes))
    for s, split in ds.splits.items():
        if split.masks is None:
            continue
        counts = value_counts(split.masks)
        bad = [int(v) for v in torch.nonzero(counts[len(classes):]).flatten() + len(classes)]
        if not bad:
            continue
        first = int(torch.nonzero((split.masks.flatten(1) >= len(classes)).any(1))[0])
        shown = ", ".join(map(str, bad[:10])) + (" ..." if len(bad) > 10 else "")
        raise DataError(f"{s} masks hold the value(s) {shown} (first in mask "
                        f"{_case_name(ds, s, first)}); the declared classes are {allowed}")


def empty_masks(masks: torch.Tensor) -> int:
    """Masks with no foreground at all: counted and reported, not refused (a slice or
    image without the structure is real data)."""
    if not len(masks):
        return 0
    return int((masks.flatten(1).amax(dim=1) == 0).sum())


def mask_summary(masks: torch.Tensor, classes: list[str]) -> dict[str, Any]:
    """Fraction of pixels/voxels per class index and the number of empty masks."""
    counts = value_counts(masks)[:len(classes)].tolist()
    total = max(sum(counts), 1)
    return {"class_fraction": {str(i): round(c / total, 6) for i, c in enumerate(counts)},
            "empty": empty_masks(masks)}


def check_segmentation(ds: Dataset) -> None:
    """Rules a segmentation dataset meets: masks in every split, each the shape of its
    image, values within the declared classes, and some foreground to learn from in train."""
    missing = [s for s, split in ds.splits.items() if split.masks is None]
    if missing:
        raise DataError(f"the {', '.join(missing)} split(s) have no masks while others do; "
                        "give masks for every split, or none")
    for s, split in ds.splits.items():
        assert split.masks is not None
        expected = (len(split), *split.images.shape[2:])
        if tuple(split.masks.shape) != expected:
            raise DataError(f"{s} masks have shape {tuple(split.masks.shape)}; each mask must "
                            f"match its image, {expected}")
        if split.masks.dtype != torch.uint8:
            raise DataError(f"{s} masks have dtype {split.masks.dtype}; expected uint8")
    classes = ds.info.get("mask_classes") or []
    if not 2 <= len(classes) <= MAX_MASK_CLASSES:
        raise DataError(f"a segmentation dataset needs 2..{MAX_MASK_CLASSES} mask classes "
                        f"(background first); it declares {len(classes)}")
    check_mask_values(ds)
    train = ds.splits["train"].masks
    if train is not None and len(train) and empty_masks(train) == len(train):
        raise DataError("every train mask is empty (background only): there is nothing to "
                        "learn to segment")


def finish(ds: Dataset, declared: list[str] | None, spacing: list[float] | None) -> Dataset:
    """Record the mask classes (declared or numbered) and the spacing (1.0 per axis when
    the data does not state it) in `ds.info`, then check the mask values against them."""
    ds.info["mask_classes"] = class_names(declared, ds.splits)
    ds.info["spacing_known"] = spacing is not None
    ds.info["spacing"] = [float(x) for x in spacing] if spacing else [1.0] * ds.spatial_dims
    check_mask_values(ds)
    return ds

