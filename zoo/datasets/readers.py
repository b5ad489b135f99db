"""Datasets as tensors held in memory: MedMNIST-style npz files (2D gray, 2D RGB, 3D) and
folders of images with a labels CSV.

Everything is loaded once into uint8 tensors shaped (N, C, *spatial) so that training is
bound by compute, not by Python-level per-sample loading.
"""

from __future__ import annotations

import csv
import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

SPLITS = ("train", "val", "test")


class DataError(ValueError):
    pass


@dataclass
class Split:
    images: torch.Tensor  # uint8, (N, C, *spatial)
    labels: torch.Tensor  # int64, (N,)
    groups: torch.Tensor | None = None  # int64 group/patient ids, (N,)

    def __len__(self) -> int:
        return int(self.labels.shape[0])


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
    def num_classes(self) -> int:
        return int(max(int(s.labels.max()) for s in self.splits.values() if len(s)) + 1)


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


def _array(data: Any, key: str) -> np.ndarray:
    try:
        return data[key]
    except ValueError as err:  # object arrays need pickle, which is never allowed
        raise DataError(f"{key}: {err} (object and string arrays are refused)") from None


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


def _to_nchw(images: np.ndarray, dims: int) -> np.ndarray:
    if images.ndim == dims + 1:  # (N, *spatial): one channel
        return images[:, None]
    if images.ndim == dims + 2 and images.shape[-1] in (1, 3):  # channels last
        return np.moveaxis(images, -1, 1)
    raise DataError(f"unexpected image array shape {images.shape}")


def load_npz(path: Path, name: str | None = None, spatial_dims: int | None = None,
             verify_md5: str | None = None) -> Dataset:
    """Load `train_images` ... `test_labels`; validate keys, dtypes, shapes, labels."""
    path = Path(path)
    if verify_md5 and md5(path) != verify_md5:
        raise DataError(f"{path} does not match its expected MD5 {verify_md5}")
    try:
        data = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise DataError(f"{path}: not a readable npz without pickles ({err})") from None
    with data:
        missing = [f"{s}_{k}" for s in SPLITS for k in ("images", "labels")
                   if f"{s}_{k}" not in data.files]
        if missing:
            raise DataError(f"{path.name} lacks {missing}; expected train/val/test images and "
                            "labels")
        first = data["train_images"]
        dims = spatial_dims or (3 if first.ndim == 4 and first.shape[-1] not in (1, 3) else
                                first.ndim - 1 if first.ndim == 3 else 2)
        splits = {}
        for s in SPLITS:
            images, labels = _array(data, f"{s}_images"), _array(data, f"{s}_labels")
            if images.dtype != np.uint8:
                raise DataError(f"{s}_images has dtype {images.dtype}; expected uint8")
            labels = labels.reshape(len(labels), -1)
            if labels.shape[1] != 1:
                raise DataError(f"{s}_labels has shape {labels.shape}; multi-label sets are "
                                "not supported yet")
            if len(labels) != len(images):
                raise DataError(f"{s}: {len(images)} images but {len(labels)} labels")
            splits[s] = Split(torch.from_numpy(np.ascontiguousarray(_to_nchw(images, dims))),
                              torch.from_numpy(class_indices(labels[:, 0], f"{s}_labels")))
        groups_key = "train_groups"
        if groups_key in data.files:
            groups = _array(data, groups_key)
            if not np.issubdtype(groups.dtype, np.integer):
                raise DataError(f"{groups_key} has dtype {groups.dtype}; expected integers")
            splits["train"].groups = torch.from_numpy(groups.astype(np.int64))
    shapes = {tuple(s.images.shape[1:]) for s in splits.values()}
    if len(shapes) != 1:
        raise DataError(f"splits disagree on image shape: {sorted(shapes)}")
    return Dataset(name or path.stem, splits, registry().get(name or path.stem, {}))


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


def load_folder(folder: Path, labels_csv: Path | None = None, val_fraction: float = 0.1,
                test_fraction: float = 0.2, seed: int = 0, channels: int = 1) -> Dataset:
    """Images (PNG/JPEG) in a folder, labels in a CSV with columns `filename,label` and
    optionally `split` (train/val/test) and `group` (patient id)."""
    from PIL import Image

    folder = Path(folder)
    labels_csv = Path(labels_csv or folder / "labels.csv")
    if not labels_csv.exists():
        raise DataError(f"no labels CSV at {labels_csv}")
    with open(labels_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or not {"filename", "label"} <= set(rows[0]):
        raise DataError(f"{labels_csv.name} needs the columns filename,label")
    for line, r in enumerate(rows, start=2):  # line 1 is the header
        for column in ("filename", "label"):
            if not (r.get(column) or "").strip():
                raise DataError(f"{labels_csv.name} line {line}: empty {column}")
        if r.get("split") and r["split"] not in SPLITS:
            raise DataError(f"{labels_csv.name} line {line}: split '{r['split']}' is not "
                            f"one of {', '.join(SPLITS)}")
        if r.get("group") and not r["group"].lstrip("-").isdigit():
            raise DataError(f"{labels_csv.name} line {line}: group '{r['group']}' is not an "
                            "integer patient id")
    if len({r["label"] for r in rows}) > MAX_CLASSES:
        raise DataError(f"{labels_csv.name} has more than {MAX_CLASSES} distinct labels")
    classes = sorted({r["label"] for r in rows})
    index = {c: i for i, c in enumerate(classes)}
    rng = np.random.default_rng(seed)
    arrays, labels, splits, groups = [], [], [], []
    size = None
    for r in rows:
        path = (folder / r["filename"]).resolve()
        if folder.resolve() not in path.parents:
            raise DataError(f"{r['filename']}: path leaves the dataset folder")
        try:
            with Image.open(path) as img:
                arr = np.asarray(img.convert("L" if channels == 1 else "RGB"))
        except (OSError, ValueError):
            raise DataError(f"{r['filename']}: not a readable image") from None
        if size is None:
            size = arr.shape[:2]
        if arr.shape[:2] != size:
            raise DataError(f"{r['filename']} is {arr.shape[:2]}, others are {size}; resize "
                            "all images to one size")
        arrays.append(arr if channels == 1 else arr.transpose(2, 0, 1))
        labels.append(index[r["label"]])
        draw = rng.random()
        splits.append(r.get("split") or ("test" if draw < test_fraction else
                                         "val" if draw < test_fraction + val_fraction else
                                         "train"))
        groups.append(int(r["group"]) if r.get("group") else -1)
    images = np.stack(arrays)
    if channels == 1:
        images = images[:, None]
    out = {}
    for s in SPLITS:
        mask = np.array([x == s for x in splits])
        out[s] = Split(torch.from_numpy(images[mask].copy()),
                       torch.tensor(np.array(labels)[mask], dtype=torch.int64),
                       torch.tensor(np.array(groups)[mask], dtype=torch.int64))
    return Dataset(folder.name, out, {"labels": classes, "channels": channels})
