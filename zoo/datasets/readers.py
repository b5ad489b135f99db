"""Datasets as tensors held in memory: MedMNIST-style npz files (2D gray, 2D RGB, 3D) and
folders of images with a labels CSV; either may also be images only (unlabelled, for
self-supervised pretraining), then every split's `labels` is None. An npz with
`{split}_masks` is a segmentation dataset (with or without class labels); folders of images
and masks, NIfTI and DICOM are read by `layouts`, which `load_folder` hands them to.

Everything is loaded once into uint8 tensors shaped (N, C, *spatial) so that training is
bound by compute, not by Python-level per-sample loading.
"""

from __future__ import annotations

import csv
import hashlib
import math
import os
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from . import masks as mask_rules
from .base import SPLITS, DataError, Dataset, Split


@cache
def registry() -> dict[str, dict[str, Any]]:
    path = Path(__file__).with_name("datasets.yaml")
    return yaml.safe_load(path.read_text())["datasets"]


def default_data_dir() -> Path:
    env = os.environ.get("TASKALIGN_DATA_DIR")
    return Path(env) if env else Path("../shared/data")


def md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(name: str, data_dir: Path, timeout: float = 30.0) -> Path:
    """Download a known dataset from its official source and check its MD5."""
    info = registry().get(name)
    if info is None or not info.get("url"):
        raise DataError(f"'{name}' has no official download source; put the file at "
                        f"{data_dir / (info or {}).get('file', name + '.npz')}")
    target = data_dir / info["file"]
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".part")
    os.close(fd)
    try:
        try:
            with urllib.request.urlopen(info["url"], timeout=timeout) as r, open(tmp, "wb") as f:
                for chunk in iter(lambda: r.read(1 << 20), b""):
                    f.write(chunk)
        except (urllib.error.URLError, OSError) as err:
            raise DataError(f"could not download {name} from {info['url']}: {err}. Without "
                            f"internet, copy {info['file']} into {data_dir} instead") from None
        got = md5(Path(tmp))
        if got != info["md5"]:
            raise DataError(f"downloaded {name} has MD5 {got}, expected {info['md5']}; "
                            "discarded")
        os.replace(tmp, target)
        return target
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


MAX_CLASSES = 1000


def class_indices(labels: np.ndarray, what: str) -> np.ndarray:
    """Labels as int64 class indices in [0, MAX_CLASSES): integers, or floats that are
    finite whole numbers; anything else is refused with what was found."""
    if labels.dtype == np.bool_:
        return labels.astype(np.int64)
    if np.issubdtype(labels.dtype, np.floating):
        if not np.isfinite(labels).all():
            raise DataError(f"{what} contains NaN or infinite values")
        if (labels != np.round(labels)).any():
            raise DataError(f"{what} contains fractional values; labels are class indices")
    elif not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{what} has dtype {labels.dtype}; labels must be integer class "
                        "indices")
    if labels.size and labels.min() < 0:
        raise DataError(f"{what} has negative values; labels are class indices from 0")
    if labels.size and labels.max() >= MAX_CLASSES:
        raise DataError(f"{what} has the label {labels.max():.0f}; at most {MAX_CLASSES} "
                        "classes (0..999) are supported")
    return labels.astype(np.int64)


def _nchw_shape(shape: tuple[int, ...], dims: int) -> tuple[int, ...]:
    """The (N, C, *spatial) shape of an image array as stored: channels-first arrays get a
    channel axis, channels-last (1 or 3) ones have it moved forward."""
    if len(shape) == dims + 1:  # (N, *spatial): one channel
        return (shape[0], 1, *shape[1:])
    if len(shape) == dims + 2 and shape[-1] in (1, 3):  # channels last
        return (shape[0], shape[-1], *shape[1:-1])
    raise DataError(f"unexpected image array shape {shape}")


# Largest total of decompressed arrays that load_npz materialises (images, plus labels at
# the int64 they are converted to). Files under the data directory are trusted further than
# uploads (ingest.MAX_UPLOAD_DECODED_BYTES), but must not take the host's memory either;
# the largest shipped file, adrenalmnist3d_64 (396 MiB), fits.
MAX_DECODED_BYTES = 1 << 30
_CHUNK = 4 << 20  # bytes read at a time when streaming an image array


@dataclass(frozen=True)
class NpyHeader:
    """What an .npy member of an npz declares, read from its header without its data."""

    member: str
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    def describe(self) -> str:
        return f"{self.member} {self.shape} {self.dtype}"


def _read_header(fh: Any) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(fh)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(fh)
    raise ValueError(f".npy format version {version[0]}.{version[1]} is not supported")


def npz_headers(zf: zipfile.ZipFile, keys: list[str]) -> dict[str, NpyHeader]:
    """Headers of the members named by `keys` (with or without .npy, as np.load finds them);
    absent keys are left out. Only the first bytes of each member are decompressed."""
    names = set(zf.namelist())
    out = {}
    for key in keys:
        member = f"{key}.npy" if f"{key}.npy" in names else key if key in names else None
        if member is None:
            continue
        try:
            with zf.open(member) as fh:
                shape, fortran_order, dtype = _read_header(fh)
        except (ValueError, EOFError, OSError, zipfile.BadZipFile, zlib.error) as err:
            raise DataError(f"{key}: not a readable .npy array ({str(err)[:200]})") from None
        if any(d < 0 for d in shape):
            raise DataError(f"{key} declares the impossible shape {shape}")
        out[key] = NpyHeader(member, tuple(shape), dtype, fortran_order)
    return out


def _read_exact(fh: Any, size: int, key: str) -> bytes:
    data = fh.read(size)
    if len(data) != size:
        raise DataError(f"{key} holds fewer values than its header declares (truncated)")
    return data


def _read_small(zf: zipfile.ZipFile, h: NpyHeader, key: str) -> np.ndarray:
    """A labels or groups array, whose size the budget already allowed."""
    try:
        with zf.open(h.member) as fh:
            return np.lib.format.read_array(fh, allow_pickle=False)
    except (ValueError, EOFError, OSError, zipfile.BadZipFile, zlib.error) as err:
        raise DataError(f"{key}: not a readable .npy array ({str(err)[:200]})") from None


def _read_images(zf: zipfile.ZipFile, h: NpyHeader, key: str, dims: int) -> np.ndarray:
    """The image array as contiguous (N, C, *spatial) uint8, streamed a few MiB at a time
    into the one full-size allocation (channels-last data is transposed chunk by chunk), so
    loading costs the dataset's size, not twice or three times it."""
    shape = _nchw_shape(h.shape, dims)
    out = np.empty(shape, np.uint8)
    try:
        with zf.open(h.member) as fh:
            if h.fortran_order:  # rare; numpy's reader, then one copy (budgeted twice)
                out[...] = _to_nchw(np.lib.format.read_array(fh, allow_pickle=False), dims)
                return out
            _read_header(fh)
            per_sample = math.prod(h.shape[1:])
            step = max(1, _CHUNK // max(per_sample, 1))
            for i in range(0, shape[0], step):
                k = min(step, shape[0] - i)
                chunk = np.frombuffer(_read_exact(fh, k * per_sample, key), np.uint8)
                chunk = chunk.reshape(k, *h.shape[1:])
                out[i:i + k] = (np.moveaxis(chunk, -1, 1) if len(h.shape) == dims + 2
                                else chunk.reshape(k, *shape[1:]))
    except (ValueError, EOFError, OSError, zipfile.BadZipFile, zlib.error) as err:
        raise DataError(f"{key}: not a readable .npy array ({str(err)[:200]})") from None
    return out


def _to_nchw(images: np.ndarray, dims: int) -> np.ndarray:
    _nchw_shape(images.shape, dims)
    if images.ndim == dims + 1:
        return images[:, None]
    return np.moveaxis(images, -1, 1)


def _mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB" if n >= 2**20 else f"{n / 2**10:,.1f} KiB"


def _check_keys(headers: dict[str, NpyHeader], labelled: bool, masked: bool,
                what: str) -> None:
    """A labelled or masked file has images and labels and/or masks for all three splits;
    an images-only file needs train_images at least."""
    expected = ("expected train/val/test images with labels (classification) and/or masks "
                "(segmentation), or images only (at least train_images, no labels) for an "
                "unlabelled set")
    kinds = ("images",) + (("labels",) if labelled else ()) + (("masks",) if masked else ())
    if labelled or masked:
        missing = [f"{s}_{k}" for s in SPLITS for k in kinds if f"{s}_{k}" not in headers]
    else:
        missing = [] if "train_images" in headers else ["train_images"]
    if missing:
        raise DataError(f"{what} lacks {missing}; {expected}")


def _guess_dims(headers: dict[str, NpyHeader]) -> int:
    """Spatial dims from the arrays: a mask has exactly the image's spatial axes; without
    masks, (N, a, b, c) is a 3D volume unless c is 1 or 3 (channels last)."""
    if "train_masks" in headers:
        return max(len(headers["train_masks"].shape) - 1, 1)
    first = headers["train_images"].shape
    return 3 if len(first) == 4 and first[-1] not in (1, 3) else (
        len(first) - 1 if len(first) == 3 else 2)


def _check_labels(labels: NpyHeader, images: NpyHeader, s: str) -> int:
    """Refuse labels that load_npz could not use; returns the bytes loading them costs."""
    if labels.dtype.kind not in "biuf":
        raise DataError(f"{s}_labels has dtype {labels.dtype}; labels must be integer "
                        "class indices (object and string arrays are refused)")
    if not labels.shape:
        raise DataError(f"{s}_labels is a single value; expected one label per image")
    if math.prod(labels.shape[1:]) != 1:
        raise DataError(f"{s}_labels has shape {labels.shape}; multi-label sets are not "
                        "supported yet")
    if labels.shape[0] != images.shape[0]:
        raise DataError(f"{s}: {images.shape[0]} images but {labels.shape[0]} labels")
    # Labels are checked and converted to int64 (temporaries included).
    return labels.nbytes + 16 * labels.shape[0]


def _check_masks(masks: NpyHeader, images: NpyHeader, dims: int, s: str) -> int:
    """A mask per image, of the image's spatial shape, holding integers; returns the bytes
    loading it costs (the uint8 result, plus the stored array when it is wider)."""
    spatial = _nchw_shape(images.shape, dims)[2:]
    if masks.dtype.kind not in "biu":
        raise DataError(f"{s}_masks has dtype {masks.dtype}; masks must be integer class "
                        "indices (uint8, 0 = background)")
    expected = (images.shape[0], *spatial)
    if masks.shape != expected:
        raise DataError(f"{s}_masks has shape {masks.shape}; expected one mask per image of "
                        f"the image's spatial shape, {expected}")
    out = math.prod(masks.shape)
    copies = 2 if masks.fortran_order else 1
    return out + (0 if masks.dtype == np.uint8 and not masks.fortran_order
                  else masks.nbytes * copies)


# Per-image facts an npz may carry next to its images (as the shipped segmentation files
# do): the source id, and for volumes padded to one size the original shape and offset.
CASE_FACTS = ("ids", "orig_shape", "pad_offset")


def _check_case_facts(headers: dict[str, NpyHeader], s: str, n: int, dims: int) -> int:
    total = 0
    for fact in CASE_FACTS:
        h = headers.get(f"{s}_{fact}")
        if h is None:
            continue
        kinds, shape = ("Uiu", (n,)) if fact == "ids" else ("iu", (n, dims))
        if h.dtype.kind not in kinds or h.shape != shape or h.dtype.itemsize > 1024:
            raise DataError(f"{s}_{fact} is {h.shape} {h.dtype}; expected {shape} "
                            + ("strings or integers" if fact == "ids" else "integers"))
        total += 2 * h.nbytes + 64 * n  # the array and its list form
    return total


def _check_dataset_facts(headers: dict[str, NpyHeader], dims: int) -> int:
    """`mask_classes` (names, background first) and `spacing` (mm per spatial axis)."""
    total = 0
    names = headers.get("mask_classes")
    if names is not None:
        if names.dtype.kind != "U" or len(names.shape) != 1 or not (
                2 <= names.shape[0] <= mask_rules.MAX_MASK_CLASSES) or names.dtype.itemsize > 400:
            raise DataError(f"mask_classes is {names.shape} {names.dtype}; expected 2 to "
                            f"{mask_rules.MAX_MASK_CLASSES} class names (strings of at most "
                            "100 characters), background first")
        total += 2 * names.nbytes
    spacing = headers.get("spacing")
    if spacing is not None:
        if spacing.dtype.kind not in "fiu" or spacing.shape != (dims,):
            raise DataError(f"spacing is {spacing.shape} {spacing.dtype}; expected {dims} "
                            "numbers (mm per spatial axis)")
        total += spacing.nbytes
    return total


def check_npz_layout(headers: dict[str, NpyHeader], spatial_dims: int | None,
                     max_bytes: int, what: str) -> int:
    """Refuse, from the declared headers alone, what load_npz would refuse after loading
    (dtypes, shapes, counts) and anything that would decompress to more than `max_bytes`.

    A labelled file has all six `{train,val,test}_{images,labels}` arrays, a segmentation
    file all six `{train,val,test}_{images,masks}` (both kinds: all nine); an unlabelled
    one has neither labels nor masks and at least `train_images`. Returns the number of
    spatial dims."""
    labelled = any(f"{s}_labels" in headers for s in SPLITS)
    masked = any(f"{s}_masks" in headers for s in SPLITS)
    _check_keys(headers, labelled, masked, what)
    dims = spatial_dims or _guess_dims(headers)
    total = 0
    shapes = set()
    for s in SPLITS:
        images = headers.get(f"{s}_images")
        if images is None:  # only in an unlabelled file (checked above)
            continue
        if images.dtype != np.uint8:
            raise DataError(f"{s}_images has dtype {images.dtype}; expected uint8")
        shapes.add(_nchw_shape(images.shape, dims)[1:])
        total += images.nbytes * (2 if images.fortran_order else 1)
        if labelled:
            total += _check_labels(headers[f"{s}_labels"], images, s)
        if masked:
            total += _check_masks(headers[f"{s}_masks"], images, dims, s)
        total += _check_case_facts(headers, s, images.shape[0], dims)
    if len(shapes) != 1:
        raise DataError(f"splits disagree on image shape: {sorted(shapes)}")
    total += _check_dataset_facts(headers, dims)
    first = headers["train_images"].shape
    groups = headers.get("train_groups")
    if groups is not None:
        if groups.dtype.kind not in "iu":
            raise DataError(f"train_groups has dtype {groups.dtype}; expected integers")
        if groups.shape != first[:1]:
            raise DataError(f"train_groups has shape {groups.shape}; expected one group id "
                            f"per train image ({first[0]},)")
        total += groups.nbytes + 8 * groups.shape[0]
    if total > max_bytes:
        largest = max(headers.values(), key=lambda h: h.nbytes)
        raise DataError(f"{what} declares {_mib(total)} of arrays once decompressed (the "
                        f"largest: {largest.describe()}); at most {_mib(max_bytes)} are "
                        "accepted")
    return dims


def _read_masks(zf: zipfile.ZipFile, h: NpyHeader, key: str) -> np.ndarray:
    """A masks array as uint8 class indices, streamed a few MiB at a time into one
    allocation; every chunk's values are checked before the cast, so none wraps around."""
    out = np.empty(h.shape, np.uint8)
    try:
        with zf.open(h.member) as fh:
            if h.fortran_order:  # rare; numpy's reader, then one copy (budgeted)
                out[...] = mask_rules.mask_indices(
                    np.lib.format.read_array(fh, allow_pickle=False), key)
                return out
            _read_header(fh)
            per_sample = math.prod(h.shape[1:]) * h.dtype.itemsize
            step = max(1, _CHUNK // max(per_sample, 1))
            for i in range(0, h.shape[0], step):
                k = min(step, h.shape[0] - i)
                chunk = np.frombuffer(_read_exact(fh, k * per_sample, key), h.dtype)
                out[i:i + k] = mask_rules.mask_indices(chunk.reshape(k, *h.shape[1:]), key)
    except DataError:
        raise
    except (ValueError, EOFError, OSError, zipfile.BadZipFile, zlib.error) as err:
        raise DataError(f"{key}: not a readable .npy array ({str(err)[:200]})") from None
    return out


def _read_case_facts(zf: zipfile.ZipFile, headers: dict[str, NpyHeader]
                     ) -> dict[str, dict[str, list[Any]]]:
    """{split: {"ids": [...], "orig_shape": [[...]], "pad_offset": [[...]]}}, as present."""
    cases: dict[str, dict[str, list[Any]]] = {}
    for s in SPLITS:
        for fact in CASE_FACTS:
            key = f"{s}_{fact}"
            if key in headers:
                values = _read_small(zf, headers[key], key)
                cases.setdefault(s, {})[fact] = ([str(v) for v in values] if fact == "ids"
                                                 else values.astype(np.int64).tolist())
    return cases


def _read_dataset_facts(zf: zipfile.ZipFile, headers: dict[str, NpyHeader]
                        ) -> tuple[list[str] | None, list[float] | None]:
    """The declared mask class names and spacing, when the file carries them."""
    names = spacing = None
    if "mask_classes" in headers:
        raw = _read_small(zf, headers["mask_classes"], "mask_classes")
        names = mask_rules.parse_class_names([str(v) for v in raw], "mask_classes")
    if "spacing" in headers:
        values = _read_small(zf, headers["spacing"], "spacing").astype(np.float64)
        if not (np.isfinite(values).all() and (values > 0).all()):
            raise DataError(f"spacing {values.tolist()} must be positive numbers (mm)")
        spacing = values.tolist()
    return names, spacing


NPZ_KEYS = ([f"{s}_{k}" for s in SPLITS for k in ("images", "labels", "masks", *CASE_FACTS)]
            + ["train_groups", "mask_classes", "spacing"])


def load_npz(path: Path, name: str | None = None, spatial_dims: int | None = None,
             verify_md5: str | None = None, max_bytes: int = MAX_DECODED_BYTES) -> Dataset:
    """Load `train_images` ... `test_labels` and/or `{split}_masks`; validate keys, dtypes,
    shapes, labels, mask values. A file without labels or masks is an unlabelled dataset of
    the image splits it has; one with masks is a segmentation dataset whose classes are
    named by a `mask_classes` array (or datasets.yaml), else numbered.

    Every .npy header is read and checked first, and the declared sizes summed against
    `max_bytes`, so a small file that declares huge arrays, or arrays of the wrong kind, is
    refused before any of its data is decompressed."""
    path = Path(path)
    if verify_md5 and md5(path) != verify_md5:
        raise DataError(f"{path} does not match its expected MD5 {verify_md5}")
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise DataError(f"{path.name}: not a readable npz archive ({err})") from None
    with zf:
        headers = npz_headers(zf, NPZ_KEYS)
        dims = check_npz_layout(headers, spatial_dims, max_bytes, path.name)
        splits = {}
        for s in SPLITS:
            if f"{s}_images" not in headers:
                continue
            images = _read_images(zf, headers[f"{s}_images"], f"{s}_images", dims)
            labels = None
            if f"{s}_labels" in headers:
                raw = _read_small(zf, headers[f"{s}_labels"], f"{s}_labels")
                labels = torch.from_numpy(class_indices(raw.reshape(len(raw)), f"{s}_labels"))
            masks = (torch.from_numpy(_read_masks(zf, headers[f"{s}_masks"], f"{s}_masks"))
                     if f"{s}_masks" in headers else None)
            splits[s] = Split(torch.from_numpy(images), labels, masks=masks)
        if "train_groups" in headers:
            groups = _read_small(zf, headers["train_groups"], "train_groups")
            splits["train"].groups = torch.from_numpy(groups.astype(np.int64))
        cases = _read_case_facts(zf, headers)
        declared, spacing = _read_dataset_facts(zf, headers)
    info = dict(registry().get(name or path.stem, {}))  # a copy: the catalogue is cached
    if cases:
        info["cases"] = cases
    if spacing:
        info.update(spacing=spacing, spacing_known=True)
    ds = Dataset(name or path.stem, splits, info)
    if any(split.masks is not None for split in splits.values()):
        mask_rules.finish(ds, declared or info.get("mask_classes"),
                          spacing or info.get("spacing"))
    return ds


def load_dataset(name: str, data_dir: Path | None = None, download: bool = False) -> Dataset:
    """A dataset from datasets.yaml, read from the data directory (fetched if allowed)."""
    data_dir = Path(data_dir or default_data_dir())
    info = registry().get(name)
    if info is None:
        raise DataError(f"unknown dataset '{name}'; known: {', '.join(sorted(registry()))}")
    path = data_dir / info["file"]
    if not path.exists():
        if not download:
            raise DataError(f"{path} not found; set TASKALIGN_DATA_DIR to the folder holding "
                            f"{info['file']}, or allow downloading")
        path = fetch(name, data_dir)
    return load_npz(path, name, info["spatial_dims"], verify_md5=info["md5"])


MAX_IMAGE_SIDE = 512  # ingest.check refuses larger images; load_folder refuses them unread
MAX_ROWS = 100_000  # as many images as an uploaded archive may hold (ingest.MAX_ENTRIES)
MAX_CSV_BYTES = 16 << 20  # 100,000 rows of 160 characters


def _read_rows(labels_csv: Path) -> list[tuple[str, str, str, str]]:
    """(filename, label, split, group) per row, validated as they stream in: a CSV with more
    rows or bytes than any dataset needs is refused before it fills memory."""
    size = labels_csv.stat().st_size
    if size > MAX_CSV_BYTES:
        raise DataError(f"{labels_csv.name} is {_mib(size)}; at most {_mib(MAX_CSV_BYTES)} "
                        f"({MAX_ROWS:,} rows) are accepted")
    rows = []
    try:
        with open(labels_csv, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            if not {"filename", "label"} <= set(reader.fieldnames or ()):
                raise DataError(f"{labels_csv.name} needs the columns filename,label")
            for line, r in enumerate(reader, start=2):  # line 1 is the header
                if len(rows) == MAX_ROWS:
                    raise DataError(f"{labels_csv.name} has more than {MAX_ROWS:,} rows")
                for column in ("filename", "label"):
                    if not (r.get(column) or "").strip():
                        raise DataError(f"{labels_csv.name} line {line}: empty {column}")
                split, group = r.get("split") or "", r.get("group") or ""
                if split and split not in SPLITS:
                    raise DataError(f"{labels_csv.name} line {line}: split '{split[:100]}' is "
                                    f"not one of {', '.join(SPLITS)}")
                if group and not (group.isascii() and group.lstrip("-").isdigit()
                                  and len(group) <= 18):
                    raise DataError(f"{labels_csv.name} line {line}: group '{group[:100]}' is "
                                    "not an integer patient id")
                rows.append((r["filename"], r["label"], split, group))
    except (csv.Error, UnicodeDecodeError) as err:
        raise DataError(f"{labels_csv.name} is not a readable UTF-8 CSV "
                        f"({str(err)[:200]})") from None
    if not rows:
        raise DataError(f"{labels_csv.name} lists no images; it needs the columns "
                        "filename,label and one row per image")
    return rows


def _image_error(name: str) -> DataError:
    return DataError(f"{name[:200]}: not a readable image")


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _list_images(folder: Path) -> list[str]:
    """The PNG/JPEG files under a folder that has no labels.csv (an unlabelled set), as
    sorted relative paths; hidden files and macOS `__MACOSX` forks are not images. Listing
    stops, refused, past MAX_ROWS images, as a labels.csv would."""
    names = []
    for path in folder.rglob("*"):
        rel = path.relative_to(folder)
        if any(p.startswith(".") or p == "__MACOSX" for p in rel.parts):
            continue
        if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            continue
        if len(names) == MAX_ROWS:
            raise DataError(f"{folder.name} holds more than {MAX_ROWS:,} images")
        names.append(rel.as_posix())
    if not names:
        raise DataError(f"{folder.name} has no labels.csv and no PNG or JPEG images")
    return sorted(names)


def _measure(folder: Path, filenames: list[str], channels: int,
             max_bytes: int) -> tuple[list[Path], tuple[int, int]]:
    """Each image's path and the one (height, width) they share, from the headers alone
    (PIL opens lazily); refused if an image is too large, leaves the folder, or all of them
    would decode to more than `max_bytes`."""
    from PIL import Image

    root = folder.resolve()
    paths, size = [], None
    for filename in filenames:
        path = (folder / filename).resolve()
        if root not in path.parents:
            raise DataError(f"{filename[:200]}: path leaves the dataset folder")
        try:
            with Image.open(path) as img:
                w, h = img.size
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise DataError(f"{filename[:200]} declares an image far too large; at most "
                            f"{MAX_IMAGE_SIDE}x{MAX_IMAGE_SIDE} pixels") from None
        except (OSError, ValueError):
            raise _image_error(filename) from None
        if max(w, h) > MAX_IMAGE_SIDE:
            raise DataError(f"{filename[:200]} is {w}x{h} pixels; images may be at most "
                            f"{MAX_IMAGE_SIDE}x{MAX_IMAGE_SIDE}")
        if size is None:
            size = (h, w)
        if (h, w) != size:
            raise DataError(f"{filename[:200]} is {(h, w)}, others are {size}; resize all "
                            "images to one size")
        paths.append(path)
    assert size is not None
    total = len(filenames) * channels * size[0] * size[1]
    if total > max_bytes:
        raise DataError(f"the {len(filenames):,} images of {size[1]}x{size[0]} pixels decode "
                        f"to {_mib(total)} ({channels} channel(s) of 8 bits); at most "
                        f"{_mib(max_bytes)} are accepted")
    return paths, size


def _decode(path: Path, filename: str, size: tuple[int, int], channels: int) -> np.ndarray:
    """One measured image as (C, H, W) uint8."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            if img.size != (size[1], size[0]):  # changed since it was measured
                raise _image_error(filename)
            arr = np.asarray(img.convert("L" if channels == 1 else "RGB"))
    except (OSError, ValueError, Image.DecompressionBombError):
        raise _image_error(filename) from None
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)


def load_folder(folder: Path, labels_csv: Path | None = None, val_fraction: float = 0.1,
                test_fraction: float = 0.2, seed: int = 0, channels: int | None = None,
                max_bytes: int = MAX_DECODED_BYTES) -> Dataset:
    """Images (PNG/JPEG) in a folder, labels in a CSV with columns `filename,label` and
    optionally `split` (train/val/test) and `group` (patient id). A folder without a
    labels.csv (and no `labels_csv` given) is an unlabelled set: every image under it goes
    to the train split. A segmentation layout (`images/` + `masks/`, or `imagesTr/` with
    NIfTI files or DICOM series) is read by `layouts.load`.

    Every image's size is read from its header first (PIL opens lazily): one too large, or
    all of them together decoding to more than `max_bytes`, is refused before any pixel is
    decoded; then images are decoded one at a time into arrays allocated once. `channels`
    is 1 for classification folders unless given; segmentation layouts detect it."""
    folder = Path(folder)
    if labels_csv is None:
        # Imported here, not at the top: the layout readers build on this module.
        from . import layouts

        layout = layouts.detect(folder)
        if layout is not None:
            return layouts.load(folder, layout, channels=channels, max_bytes=max_bytes,
                                seed=seed, val_fraction=val_fraction,
                                test_fraction=test_fraction)
    channels = channels or 1
    if labels_csv is None and not (folder / "labels.csv").exists():
        names = _list_images(folder)
        paths, size = _measure(folder, names, channels, max_bytes)
        images = np.empty((len(names), channels, *size), np.uint8)
        for i, (filename, path) in enumerate(zip(names, paths, strict=True)):
            images[i] = _decode(path, filename, size, channels)
        return Dataset(folder.name, {"train": Split(torch.from_numpy(images), None)},
                       {"channels": channels})
    labels_csv = Path(labels_csv or folder / "labels.csv")
    if not labels_csv.exists():
        raise DataError(f"no labels CSV at {labels_csv}")
    rows = _read_rows(labels_csv)
    if len({r[1] for r in rows}) > MAX_CLASSES:
        raise DataError(f"{labels_csv.name} has more than {MAX_CLASSES} distinct labels")
    classes = sorted({r[1] for r in rows})
    index = {c: i for i, c in enumerate(classes)}
    paths, size = _measure(folder, [r[0] for r in rows], channels, max_bytes)
    rng = np.random.default_rng(seed)
    splits = []
    for _, _, split, _ in rows:
        draw = rng.random()
        splits.append(split or ("test" if draw < test_fraction else
                                "val" if draw < test_fraction + val_fraction else "train"))
    images = {s: np.empty((splits.count(s), channels, *size), np.uint8) for s in SPLITS}
    labels: dict[str, list[int]] = {s: [] for s in SPLITS}
    groups: dict[str, list[int]] = {s: [] for s in SPLITS}
    for (filename, label, _, group), path, s in zip(rows, paths, splits, strict=True):
        images[s][len(labels[s])] = _decode(path, filename, size, channels)
        labels[s].append(index[label])
        groups[s].append(int(group) if group else -1)
    out = {s: Split(torch.from_numpy(images[s]), torch.tensor(labels[s], dtype=torch.int64),
                    torch.tensor(groups[s], dtype=torch.int64)) for s in SPLITS}
    return Dataset(folder.name, out, {"labels": classes, "channels": channels})
