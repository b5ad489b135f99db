"""Turn uploaded data into a validated dataset, or refuse it with the reason.

Zip archives are read entry by entry: absolute paths, `..`, links, too many files, too
many uncompressed bytes and extreme compression ratios are refused before anything is
written; extraction goes into a private temporary folder. What the data will take in memory
once decoded (npz array headers, image headers) is checked against
MAX_UPLOAD_DECODED_BYTES before anything is decoded.
"""

from __future__ import annotations

import io
import stat
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch

from . import layouts
from .masks import check_segmentation, mask_summary
from .readers import (
    CASE_FACTS,
    MAX_IMAGE_SIDE,
    SPLITS,
    DataError,
    Dataset,
    load_folder,
    load_npz,
)

MAX_ENTRIES = 100_000
MAX_RATIO = 200
# Largest dataset an upload may decode to (uint8 images plus labels). Loading costs about
# this much memory once (arrays are streamed into one allocation), so a small upload cannot
# take more than ~300 MB of the server however it is crafted; it admits every 2D MedMNIST
# file at 28, 64 and 128 px and retinamnist at 224 px. Larger sets (3D at 64^3) are
# registered by path from the data directory instead (readers.MAX_DECODED_BYTES).
MAX_UPLOAD_DECODED_BYTES = 256 << 20


def summarise(ds: Dataset) -> dict[str, Any]:
    """Images per split and, for a labelled set, per class (the planner checks label counts
    against these); an unlabelled set says so and has no class counts. A segmentation set
    adds, per split, the fraction of pixels/voxels of each mask class and the number of
    empty masks, and its mask classes and spacing."""
    counts: dict[str, dict[str, Any]] = {}
    for s, split in ds.splits.items():
        counts[s] = {"images": len(split)}
        if split.labels is not None:
            values, n = torch.unique(split.labels, return_counts=True)
            counts[s]["per_class"] = {str(int(v)): int(c)
                                      for v, c in zip(values, n, strict=True)}
        if split.masks is not None:
            counts[s]["masks"] = mask_summary(split.masks, ds.info["mask_classes"])
    out = {"task": ds.task, "labelled": ds.labelled or ds.has_masks, "splits": counts,
           "spatial_dims": ds.spatial_dims, "channels": ds.channels,
           "image_size": ds.image_size, "num_classes": ds.num_classes,
           "labels": ds.info.get("labels")}
    if ds.has_masks:
        out.update({"mask_classes": ds.info["mask_classes"],
                    "empty_masks": sum(c["masks"]["empty"] for c in counts.values()),
                    "spacing": ds.info.get("spacing"),
                    "spacing_known": bool(ds.info.get("spacing_known"))})
    out.update({k: ds.info[k] for k in SUMMARISED_INFO if k in ds.info})
    return out


# Facts a reader records about how it read the data, repeated in the summary so that a
# user sees them: volumes' orientation, intensity scaling and spacing range, 0/255 masks.
SUMMARISED_INFO = ("orientation", "intensity", "spacing_range", "mask_values")


def _check_labels(ds: Dataset) -> None:
    k = ds.num_classes
    if k < 2:
        raise DataError("need at least two classes")
    train_classes = set(torch.unique(ds.splits["train"].labels).tolist())
    missing = sorted(set(range(k)) - train_classes)
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (f" and {len(missing) - 10} more"
                                                      if len(missing) > 10 else "")
        raise DataError(f"labels must be 0..{k - 1} with every class in train; train lacks "
                        f"classes {shown}")


def check(ds: Dataset) -> None:
    """Rules every accepted dataset meets, beyond what the loaders check."""
    if min(ds.image_size) < 8 or max(ds.image_size) > MAX_IMAGE_SIDE:
        raise DataError(f"image size {ds.image_size} outside 8..{MAX_IMAGE_SIDE}")
    if ds.channels not in (1, 3):
        raise DataError(f"{ds.channels} channels; 1 (gray) or 3 (RGB) are supported")
    if any(s.masks is not None for s in ds.splits.values()):
        check_segmentation(ds)
    if not ds.labelled and any(s.labels is not None for s in ds.splits.values()):
        raise DataError("some splits have labels and others not; label every split, "
                        "or none for an unlabelled set")
    if not ds.labelled and not ds.has_masks:
        if len(ds.splits["train"]) < 2:
            raise DataError("an unlabelled set needs at least 2 train images")
        return
    if ds.labelled:
        _check_labels(ds)
    for s in SPLITS:
        if len(ds.splits.get(s, ())) == 0 and s != "val":
            raise DataError(f"the {s} split is empty")


def from_npz_bytes(data: bytes, name: str,
                   max_decoded: int = MAX_UPLOAD_DECODED_BYTES) -> Dataset:
    if data[:2] != b"PK":
        raise DataError("not an npz file (an npz is a zip of .npy arrays)")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "upload.npz"
        path.write_bytes(data)
        try:
            with zipfile.ZipFile(path) as zf:
                members = zf.infolist()
                guard_zip(members, limit=len(data) * MAX_RATIO)
        except zipfile.BadZipFile:
            raise DataError("corrupt npz archive") from None
        ds = load_npz(path, name, max_bytes=max_decoded)
    _no_nan(ds)
    check(ds)
    return ds


def guard_zip(members: list[zipfile.ZipInfo], limit: int) -> None:
    if len(members) > MAX_ENTRIES:
        raise DataError(f"archive has {len(members)} entries; at most {MAX_ENTRIES}")
    total = 0
    for m in members:
        p = PurePosixPath(m.filename)
        if p.is_absolute() or ".." in p.parts or m.filename.startswith(("/", "\\")) \
                or "\\" in m.filename or ":" in p.parts[0]:
            raise DataError(f"archive entry '{m.filename}' points outside the archive")
        mode = m.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise DataError(f"archive entry '{m.filename}' is a link")
        if m.compress_size and m.file_size / max(m.compress_size, 1) > MAX_RATIO:
            raise DataError(f"archive entry '{m.filename}' expands {m.file_size} bytes from "
                            f"{m.compress_size}: refused as a possible zip bomb")
        total += m.file_size
        if total > limit:
            raise DataError(f"archive expands to more than {limit} bytes")


def from_zip_bytes(data: bytes, name: str, max_bytes: int, channels: int | None = None,
                   max_decoded: int = MAX_UPLOAD_DECODED_BYTES) -> Dataset:
    """A zip of images with labels.csv (filename,label[,split,group]), of images only
    (unlabelled: all go to the train split), or of a segmentation layout (`images/` +
    `masks/`, or `imagesTr/` [+ `labelsTr/`] of NIfTI files or DICOM series; see layouts);
    `max_bytes` bounds the extracted files, `max_decoded` the decoded images and masks.
    `channels`: 1 for classification unless given; segmentation layouts detect it."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise DataError("not a readable zip archive") from None
    with zf, tempfile.TemporaryDirectory() as tmp:
        members = zf.infolist()
        guard_zip(members, limit=max_bytes)
        root = Path(tmp).resolve()
        for m in members:
            if m.is_dir():
                continue
            target = (root / m.filename).resolve()
            if root not in target.parents:
                raise DataError(f"archive entry '{m.filename}' points outside the archive")
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(m) as src, open(target, "wb") as dst:
                remaining = m.file_size + 1
                while chunk := src.read(1 << 20):
                    remaining -= len(chunk)
                    if remaining < 0:  # the header lied about the size
                        raise DataError(f"archive entry '{m.filename}' is larger than declared")
                    dst.write(chunk)
        layout_root = layouts.find(root)
        csvs = [p for p in root.rglob("labels.csv")]
        if layout_root is not None:
            ds = load_folder(layout_root, channels=channels, max_bytes=max_decoded)
        elif len(csvs) > 1:
            raise DataError("the archive contains more than one labels.csv; give one (or "
                            "none for an unlabelled set)")
        elif csvs:
            ds = load_folder(csvs[0].parent, csvs[0], channels=channels,
                             max_bytes=max_decoded)
        else:
            ds = load_folder(root, channels=channels, max_bytes=max_decoded)
    ds.name = name
    check(ds)
    return ds


def _no_nan(ds: Dataset) -> None:
    for s, split in ds.splits.items():
        if split.images.dtype.is_floating_point and not torch.isfinite(split.images).all():
            raise DataError(f"{s}_images contains NaN or infinite values")


def to_npz_bytes(ds: Dataset) -> bytes:
    """The canonical stored form: MedMNIST keys (images only for an unlabelled set),
    uint8 images; labels as uint8, or uint16 past 256 classes so that none wraps. A
    segmentation set adds `{split}_masks`, `mask_classes` and `spacing`; each split's case
    ids, original shapes and pad offsets are kept where the reader recorded them, so that
    load_npz gives back the same dataset."""
    arrays: dict[str, np.ndarray] = {}
    label_type = np.uint8 if ds.num_classes <= 256 else np.uint16
    for s, split in ds.splits.items():
        images = split.images.numpy()
        arrays[f"{s}_images"] = images[:, 0] if ds.channels == 1 else np.moveaxis(images, 1, -1)
        if split.labels is not None:
            arrays[f"{s}_labels"] = split.labels.numpy().astype(label_type)[:, None]
        if split.masks is not None:
            arrays[f"{s}_masks"] = split.masks.numpy()
        for fact, values in ds.info.get("cases", {}).get(s, {}).items():
            if fact in CASE_FACTS and len(values) == len(split):
                arrays[f"{s}_{fact}"] = (np.array(values, dtype=str) if fact == "ids" else
                                         np.array(values, dtype=np.int64).reshape(
                                             len(values), ds.spatial_dims))
    if ds.has_masks:
        arrays["mask_classes"] = np.array(ds.info["mask_classes"], dtype=str)
    if ds.info.get("spacing_known"):
        arrays["spacing"] = np.array(ds.info["spacing"], dtype=np.float64)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()
