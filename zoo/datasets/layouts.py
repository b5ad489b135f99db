"""Folder layouts of segmentation data, paired by file name, and how each is read.

`images/` + `masks/` (2D): PNG or JPEG images, each with a PNG mask of the same name
(`images/a/x.jpg` pairs with `masks/a/x.png`); a mask holds one class index per pixel
(0 = background; a mask of only 0 and 255 is read as 0/1).

`imagesTr/` [+ `labelsTr/`] (3D, Medical Segmentation Decathlon style): each case a NIfTI
file (`x.nii.gz`, or nnU-Net's `x_0000.nii.gz`) or a folder of one DICOM series (`x/`),
its label a NIfTI file or DICOM series of the same name in `labelsTr/`. Without
`labelsTr/` the volumes are an unlabelled set. Volumes are reoriented to RAS+ and, when
their sizes differ, zero-padded (centred) to the largest size on each axis; each case's
original shape and offset are kept, so nothing is cropped or resampled.

Both may carry `dataset.json` (its `labels` name the mask classes, MSD or nnU-Net style)
and `splits.csv` with columns `filename,split` and optionally `group` (patient id), as in
labels.csv; cases it does not list, or lists without a split, are drawn at random (seeded)
70/10/20 into train/val/test.
"""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from . import masks as mask_rules
from . import volumes
from .base import SPLITS, DataError, Dataset, Split
from .readers import (
    IMAGE_SUFFIXES,
    MAX_CSV_BYTES,
    MAX_IMAGE_SIDE,
    MAX_ROWS,
    _decode,
    _measure,
    _mib,
)

Layout = Literal["pairs", "volumes"]
PAIRS = ("images", "masks")
VOLUMES = ("imagesTr", "labelsTr")
MAX_JSON_BYTES = 1 << 20
# PIL modes a mask may have: one band of integers (a palette image's indices are its
# class values, so "P" is read as is, not converted to colours).
MASK_MODES = ("1", "L", "P", "I", "I;16", "I;16L", "I;16B")
GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "F")
# Bytes per voxel that decoding one volume may hold at once beyond the dataset's arrays
# (the stored values, a float32 copy, the reoriented array).
WORKING_BYTES_PER_VOXEL = 12


def _hidden(path: Path, root: Path) -> bool:
    return any(p.startswith(".") or p == "__MACOSX" for p in path.relative_to(root).parts)


def detect(folder: Path) -> Layout | None:
    """Which segmentation layout a folder holds, if any; a folder that holds one and a
    labels.csv too is refused as ambiguous."""
    layout: Layout | None = None
    if (folder / VOLUMES[0]).is_dir():
        layout = "volumes"
    elif (folder / PAIRS[0]).is_dir() and (folder / PAIRS[1]).is_dir():
        layout = "pairs"
    if layout and (folder / "labels.csv").exists():
        raise DataError(f"{folder.name} holds both labels.csv (classification) and a "
                        "segmentation layout; give one (a split column goes in splits.csv)")
    return layout


def find(root: Path) -> Path | None:
    """The one folder under `root` that holds a segmentation layout (an archive often
    wraps it in a top folder), or None."""
    found = {p.parent for name in (VOLUMES[0], PAIRS[1]) for p in root.rglob(name)
             if p.is_dir() and not _hidden(p, root) and detect(p.parent)}
    if len(found) > 1:
        shown = ", ".join(sorted(str(p.relative_to(root)) or "." for p in found)[:5])
        raise DataError(f"the archive holds more than one dataset layout ({shown}); upload "
                        "one")
    return found.pop() if found else None


def load(folder: Path, layout: Layout, channels: int | None, max_bytes: int, seed: int = 0,
         val_fraction: float = 0.1, test_fraction: float = 0.2) -> Dataset:
    """Read a detected layout into a checked Dataset (masks within the declared classes)."""
    classes = declared_classes(folder)
    given = read_splits(folder / "splits.csv") if (folder / "splits.csv").is_file() else {}
    fractions = (val_fraction, test_fraction)
    if layout == "pairs":
        return _load_pairs(folder, channels, max_bytes, classes, given, seed, fractions)
    if channels not in (None, 1):
        raise DataError("volumes are read with one channel; leave channels out or give 1")
    return _load_volumes(folder, max_bytes, classes, given, seed, fractions)


# -- shared by both layouts: case names, declared classes, splits --------------------------

def case_key(name: str) -> str:
    """A file's case name: its path without the image suffix and without nnU-Net's
    channel suffix `_0000`, so `x_0000.nii.gz`, `x.nii.gz` and `x.png` all name case x."""
    lower = name.lower()
    for suffix in (*volumes.NIFTI_SUFFIXES, *IMAGE_SUFFIXES):
        if lower.endswith(suffix):
            name = name[:-len(suffix)]
            break
    return name[:-5] if name.endswith("_0000") else name


def declared_classes(folder: Path) -> list[str] | None:
    """Mask class names from dataset.json's `labels`, when the folder has one."""
    path = folder / "dataset.json"
    if not path.is_file():
        return None
    if path.stat().st_size > MAX_JSON_BYTES:
        raise DataError(f"dataset.json is {_mib(path.stat().st_size)}; at most "
                        f"{_mib(MAX_JSON_BYTES)}")
    try:
        meta = json.loads(path.read_text(encoding="utf-8-sig"))
    except (ValueError, UnicodeDecodeError) as err:
        raise DataError(f"dataset.json is not readable JSON ({str(err)[:200]})") from None
    if not isinstance(meta, dict) or "labels" not in meta:
        return None
    return mask_rules.parse_class_names(meta["labels"], "dataset.json labels")


def read_splits(path: Path) -> dict[str, tuple[str, int]]:
    """case -> (split or "", group or -1) from a splits.csv, bounded like labels.csv."""
    size = path.stat().st_size
    if size > MAX_CSV_BYTES:
        raise DataError(f"{path.name} is {_mib(size)}; at most {_mib(MAX_CSV_BYTES)}")
    out: dict[str, tuple[str, int]] = {}
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            if not {"filename", "split"} <= set(reader.fieldnames or ()):
                raise DataError(f"{path.name} needs the columns filename,split")
            for line, row in enumerate(reader, start=2):
                if len(out) == MAX_ROWS:
                    raise DataError(f"{path.name} has more than {MAX_ROWS:,} rows")
                out.update([_split_row(row, line, path.name, out)])
    except (csv.Error, UnicodeDecodeError) as err:
        raise DataError(f"{path.name} is not a readable UTF-8 CSV ({str(err)[:200]})") from None
    return out


def _split_row(row: dict[str, Any], line: int, where: str, seen: dict[str, Any]
               ) -> tuple[str, tuple[str, int]]:
    filename = (row.get("filename") or "").strip()
    split, group = (row.get("split") or "").strip(), (row.get("group") or "").strip()
    if not filename:
        raise DataError(f"{where} line {line}: empty filename")
    if split and split not in SPLITS:
        raise DataError(f"{where} line {line}: split '{split[:100]}' is not one of "
                        f"{', '.join(SPLITS)}")
    if group and not (group.isascii() and group.lstrip("-").isdigit() and len(group) <= 18):
        raise DataError(f"{where} line {line}: group '{group[:100]}' is not an integer "
                        "patient id")
    key = case_key(filename.split("/", 1)[1] if filename.startswith(
        (f"{PAIRS[0]}/", f"{VOLUMES[0]}/")) else filename)
    if key in seen:
        raise DataError(f"{where} line {line}: '{filename[:100]}' is listed twice")
    return key, (split, int(group) if group else -1)


def assign_splits(cases: list[str], given: dict[str, tuple[str, int]], seed: int,
                  fractions: tuple[float, float]) -> list[str]:
    """Each case's split: as splits.csv gives it, else drawn (seeded) so that about
    `fractions` (val, test) of the undrawn cases go to val and test, at least one to test
    when nothing else is there."""
    unknown = sorted(set(given) - set(cases))
    if unknown:
        raise DataError(f"splits.csv lists {len(unknown)} case(s) with no image, e.g. "
                        f"'{unknown[0][:100]}'")
    out = [given.get(c, ("", -1))[0] for c in cases]
    free = [i for i, s in enumerate(out) if not s]
    order = np.random.default_rng(seed).permutation(len(free))
    n_test = round(len(free) * fractions[1])
    if not n_test and "test" not in out and len(free) >= 2 and fractions[1] > 0:
        n_test = 1
    n_val = round(len(free) * fractions[0])
    for rank, j in enumerate(order):
        out[free[j]] = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
    return out


def _listing(folder: Path, accept: tuple[str, ...], recursive: bool = False,
             dirs: bool = False) -> dict[str, Path]:
    """case -> path of the files with an `accept`ed suffix under `folder` (or of its
    sub-folders, with `dirs`: DICOM series); hidden entries (`.x`, macOS `._x` forks,
    `__MACOSX`) are skipped."""
    found: dict[str, Path] = {}
    entries = folder.rglob("*") if recursive else folder.iterdir()
    for path in sorted(entries):
        if _hidden(path, folder):
            continue
        if not (path.is_dir() if dirs else
                path.is_file() and path.name.lower().endswith(accept)):
            continue
        key = case_key(path.relative_to(folder).as_posix())
        if key in found:
            raise DataError(f"{folder.name} holds two files for case '{key[:100]}' "
                            f"({found[key].name}, {path.name})")
        if len(found) == MAX_ROWS:
            raise DataError(f"{folder.name} holds more than {MAX_ROWS:,} cases")
        found[key] = path
    return found


def _pair(images: dict[str, Path], masks: dict[str, Path], what: tuple[str, str]) -> list[str]:
    """The cases, sorted, once every image has its mask and every mask its image."""
    for have, lack, a, b in ((images, masks, *what), (masks, images, *what[::-1])):
        missing = sorted(set(have) - set(lack))
        if missing:
            shown = ", ".join(f"'{m[:80]}'" for m in missing[:5])
            raise DataError(f"{len(missing)} file(s) in {a}/ have no counterpart of the same "
                            f"name in {b}/: {shown}")
    if not images:
        raise DataError(f"{what[0]}/ holds no images")
    return sorted(images)


def _split_arrays(splits: list[str], shape: tuple[int, ...], masked: bool
                  ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray | None]]:
    images = {s: np.zeros((splits.count(s), *shape), np.uint8) for s in SPLITS}
    masks = {s: np.zeros((splits.count(s), *shape[1:]), np.uint8) if masked else None
             for s in SPLITS}
    return images, masks


def _dataset(folder: Path, cases: list[str], splits: list[str], images: dict[str, Any],
             masks: dict[str, Any], given: dict[str, tuple[str, int]],
             info: dict[str, Any]) -> Dataset:
    """Splits from the filled arrays, with each case's id (and group, if any was given)."""
    ids: dict[str, list[str]] = {s: [] for s in SPLITS}
    groups: dict[str, list[int]] = {s: [] for s in SPLITS}
    for case, s in zip(cases, splits, strict=True):
        ids[s].append(case)
        groups[s].append(given.get(case, ("", -1))[1])
    has_groups = any(g != -1 for g in sum(groups.values(), []))
    out = {s: Split(torch.from_numpy(images[s]), None,
                    torch.tensor(groups[s], dtype=torch.int64) if has_groups else None,
                    None if masks[s] is None else torch.from_numpy(masks[s]))
           for s in SPLITS}
    cases_info = info.setdefault("cases", {})
    for s in SPLITS:
        cases_info.setdefault(s, {})["ids"] = ids[s]
    return Dataset(folder.name, out, info)


# -- 2D: images/ + masks/ ------------------------------------------------------------------

def _image_channels(paths: list[Path]) -> int:
    """3 if any image is in colour, else 1 (from the headers)."""
    from PIL import Image

    for path in paths:
        try:
            with Image.open(path) as img:
                if img.mode not in GRAY_MODES:
                    return 3
        except (OSError, ValueError):
            raise DataError(f"{path.name[:200]}: not a readable image") from None
    return 1


def _check_mask_header(path: Path, name: str, size: tuple[int, int]) -> None:
    from PIL import Image

    try:
        with Image.open(path) as img:
            mode, (w, h) = img.mode, img.size
            fmt = img.format
    except (OSError, ValueError, Image.DecompressionBombError):
        raise DataError(f"{name[:200]}: not a readable image") from None
    if fmt != "PNG":
        raise DataError(f"{name[:200]} is {fmt}; masks must be PNG (lossless: JPEG changes "
                        "class values at every edge)")
    if mode not in MASK_MODES:
        raise DataError(f"{name[:200]} is a {mode} image; a mask is one band of class "
                        "indices (0 = background), e.g. an 8-bit grayscale PNG")
    if (h, w) != size:
        raise DataError(f"{name[:200]} is {w}x{h} pixels but its image is {size[1]}x"
                        f"{size[0]}; a mask must have its image's size")


def _decode_mask(path: Path, name: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as img:
            values = np.asarray(img)
    except (OSError, ValueError, Image.DecompressionBombError):
        raise DataError(f"{name[:200]}: not a readable image") from None
    return mask_rules.mask_indices(values, name)


def _binary_255(masks: dict[str, np.ndarray | None]) -> bool:
    """Whether every mask holds only 0 and 255 (the common way binary masks are saved):
    then 255 is read as class 1."""
    counts = sum(np.bincount(m.ravel(), minlength=256) for m in masks.values()
                 if m is not None and m.size)
    return bool(isinstance(counts, np.ndarray) and counts[255] and not counts[1:255].any())


def _load_pairs(folder: Path, channels: int | None, max_bytes: int,
                classes: list[str] | None, given: dict[str, tuple[str, int]], seed: int,
                fractions: tuple[float, float]) -> Dataset:
    images = _listing(folder / PAIRS[0], IMAGE_SUFFIXES, recursive=True)
    masks = _listing(folder / PAIRS[1], IMAGE_SUFFIXES, recursive=True)
    cases = _pair(images, masks, PAIRS)
    names = [f"{PAIRS[0]}/{images[c].relative_to(folder / PAIRS[0]).as_posix()}"
             for c in cases]
    channels = channels or _image_channels([images[c] for c in cases])
    paths, size = _measure(folder, names, channels, max_bytes)
    total = len(cases) * (channels + 1) * size[0] * size[1]
    if total > max_bytes:
        raise DataError(f"the {len(cases):,} images and masks of {size[1]}x{size[0]} pixels "
                        f"decode to {_mib(total)}; at most {_mib(max_bytes)} are accepted")
    for c in cases:
        _check_mask_header(masks[c], f"{PAIRS[1]}/{masks[c].name}", size)
    splits = assign_splits(cases, given, seed, fractions)
    out_images, out_masks = _split_arrays(splits, (channels, *size), True)
    filled = dict.fromkeys(SPLITS, 0)
    for case, name, path, s in zip(cases, names, paths, splits, strict=True):
        split_masks = out_masks[s]
        assert split_masks is not None
        out_images[s][filled[s]] = _decode(path, name, size, channels)
        split_masks[filled[s]] = _decode_mask(masks[case], f"{PAIRS[1]}/{masks[case].name}")
        filled[s] += 1
    info: dict[str, Any] = {"channels": channels}
    if _binary_255(out_masks) and not (classes and len(classes) > 255):
        for m in out_masks.values():
            np.floor_divide(m, 255, out=m)
        info["mask_values"] = "0/255 read as 0/1"
    ds = _dataset(folder, cases, splits, out_images, out_masks, given, info)
    return mask_rules.finish(ds, classes, None)


# -- 3D: imagesTr/ [+ labelsTr/] -----------------------------------------------------------

def _volume_listing(folder: Path) -> dict[str, Path]:
    """case -> NIfTI file or DICOM series folder, directly under `folder`."""
    files = _listing(folder, volumes.NIFTI_SUFFIXES)
    series = _listing(folder, (), dirs=True)
    for key in sorted(set(files) & set(series)):
        raise DataError(f"case '{key[:100]}' is both a NIfTI file and a DICOM folder in "
                        f"{folder.name}/")
    extra = [k for k in files if re.fullmatch(r".+_\d{4}", k) and k[:-5] in files]
    if extra:
        raise DataError(f"{folder.name}/ holds more than one channel for case "
                        f"'{extra[0][:-5][:80]}' ({extra[0][-4:]}); one channel per case is "
                        "supported")
    return {**files, **series}


def _common_shape(sources: dict[str, volumes.VolumeSource], max_bytes: int, masked: bool
                  ) -> tuple[int, int, int]:
    """The largest size on each axis, refused when over MAX_IMAGE_SIDE or when all volumes
    (and masks) at that size, plus one volume's decoding, exceed `max_bytes`."""
    shape = tuple(max(src.shape[i] for src in sources.values()) for i in range(3))
    if max(shape) > MAX_IMAGE_SIDE:
        big = max(sources, key=lambda c: max(sources[c].shape))
        raise DataError(f"case '{big[:100]}' is {sources[big].shape} voxels; volumes may be "
                        f"at most {MAX_IMAGE_SIDE} voxels along any axis")
    total = len(sources) * math.prod(shape) * (2 if masked else 1) + (
        WORKING_BYTES_PER_VOXEL * max(src.voxels for src in sources.values()))
    if total > max_bytes:
        raise DataError(f"the {len(sources):,} volumes, padded to {shape}, decode to "
                        f"{_mib(total)}; at most {_mib(max_bytes)} are accepted")
    return shape[0], shape[1], shape[2]


def _offset(shape: tuple[int, ...], common: tuple[int, ...]) -> tuple[int, ...]:
    return tuple((c - s) // 2 for s, c in zip(shape, common, strict=True))


def _place(out: np.ndarray, data: np.ndarray, offset: tuple[int, ...]) -> None:
    out[tuple(slice(o, o + n) for o, n in zip(offset, data.shape, strict=True))] = data


def _read_label(source: volumes.VolumeSource, image: volumes.Volume, case: str) -> np.ndarray:
    label = volumes.read(source)
    if not np.allclose(label.affine, image.affine, rtol=1e-3, atol=1e-2):
        raise DataError(f"the label of case '{case[:100]}' does not lie on its image's voxel "
                        "grid (their affines differ); resample it onto the image")
    return mask_rules.mask_indices(label.data, f"{VOLUMES[1]}/{source.path.name}")


def _load_volumes(folder: Path, max_bytes: int, classes: list[str] | None,
                  given: dict[str, tuple[str, int]], seed: int,
                  fractions: tuple[float, float]) -> Dataset:
    images = _volume_listing(folder / VOLUMES[0])
    labels = _volume_listing(folder / VOLUMES[1]) if (folder / VOLUMES[1]).is_dir() else None
    cases = _pair(images, labels, VOLUMES) if labels is not None else sorted(images)
    if not cases:
        raise DataError(f"{VOLUMES[0]}/ holds no NIfTI files or DICOM series folders")
    sources = {c: volumes.probe(images[c]) for c in cases}
    label_sources = {c: volumes.probe(labels[c]) for c in cases} if labels else {}
    for c, src in label_sources.items():
        if src.shape != sources[c].shape:
            raise DataError(f"the label of case '{c[:100]}' is {src.shape} voxels but its "
                            f"image is {sources[c].shape}; a mask must match its image")
    common = _common_shape(sources, max_bytes, bool(labels))
    splits = assign_splits(cases, given, seed, fractions)
    out_images, out_masks = _split_arrays(splits, (1, *common), bool(labels))
    facts: dict[str, dict[str, list[Any]]] = {s: {"orig_shape": [], "pad_offset": []}
                                               for s in SPLITS}
    spacings, rescaled = [], False
    for case, s in zip(cases, splits, strict=True):
        volume = volumes.read(sources[case])
        data, scaled = volumes.to_uint8(volume.data)
        rescaled |= scaled
        i, offset = len(facts[s]["orig_shape"]), _offset(data.shape, common)
        _place(out_images[s][i, 0], data, offset)
        if labels:
            _place(out_masks[s][i], _read_label(label_sources[case], volume, case), offset)
        facts[s]["orig_shape"].append(list(data.shape))
        facts[s]["pad_offset"].append(list(offset))
        spacings.append(volume.spacing)
    info = _volume_info(facts, spacings, rescaled)
    ds = _dataset(folder, cases, splits, out_images, out_masks, given, info)
    return mask_rules.finish(ds, classes, info["spacing"]) if labels else ds


def _volume_info(facts: dict[str, dict[str, list[Any]]], spacings: list[tuple[float, ...]],
                 rescaled: bool) -> dict[str, Any]:
    """What a volume set records beyond its arrays: orientation, intensity handling, the
    median spacing (and its range when volumes differ: they are not resampled)."""
    values = np.array(spacings, dtype=np.float64)
    median = [round(float(v), 6) for v in np.median(values, axis=0)]
    info: dict[str, Any] = {
        "channels": 1, "orientation": "RAS+", "cases": facts, "spacing": median,
        "spacing_known": True,
        "intensity": ("scaled per volume: 0.5..99.5 percentile window to 0..255" if rescaled
                      else "as stored (whole numbers within 0..255)")}
    low, high = values.min(axis=0), values.max(axis=0)
    if ((high - low) > 0.01 * high).any():
        info["spacing_range"] = [[round(float(v), 6) for v in low],
                                 [round(float(v), 6) for v in high]]
    return info
