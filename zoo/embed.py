"""Images in, feature vectors out, with onnxruntime. Sessions are cached per ONNX file."""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from .cards import StoredCard


class ImageError(ValueError):
    def __init__(self, image: str, problem: str):
        self.image, self.problem = image, problem
        super().__init__(f"{image}: {problem}")


def _npy_shape(data: bytes) -> tuple[int, ...] | None:
    """The array shape an .npy header declares, read without loading the array."""
    buf = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(buf)
        read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                else np.lib.format.read_array_header_2_0)
        shape, _, _ = read(buf)
    except Exception:  # anything unreadable is reported by np.load below
        return None
    return tuple(shape)


def decode(name: str, data: bytes, card: StoredCard) -> np.ndarray:
    """Return a float32 array (C, *input_size) normalised as the card says.

    The size an image declares is checked before its pixels are decoded, so a small file
    that claims a huge image (a decompression bomb) costs nothing."""
    lower = name.lower()
    expected = card.in_channels * int(np.prod(card.input_size))
    if lower.endswith(".npy"):
        shape = _npy_shape(data)
        if shape is not None and int(np.prod(shape, dtype=np.int64)) > expected:
            raise ImageError(name, f"declares shape {shape}; {card.name} expects "
                                   f"{'x'.join(map(str, card.input_size))} with "
                                   f"{card.in_channels} channel(s)")
        try:
            arr = np.load(io.BytesIO(data), allow_pickle=False)
        except ValueError as err:
            raise ImageError(
                name, f"not a plain .npy array ({err}); pickled arrays are refused") from None
        except Exception:  # numpy raises several types on corrupt files
            raise ImageError(name, "not a readable .npy file") from None
    elif lower.endswith(".png"):
        from PIL import Image, UnidentifiedImageError

        size = tuple(card.input_size)
        try:
            with Image.open(io.BytesIO(data)) as img:
                if card.spatial_dims != 2:
                    raise ImageError(name, f"{card.name} is a {card.spatial_dims}D encoder; "
                                           "send volumes as .npy")
                if img.size[::-1] != size:
                    raise ImageError(name, f"is {img.size[0]}x{img.size[1]} pixels; "
                                           f"{card.name} expects "
                                           f"{'x'.join(map(str, size[::-1]))} "
                                           "(resize before sending)")
                img.load()
                mode = "L" if card.in_channels == 1 else "RGB"
                arr = np.asarray(img.convert(mode))
        except Image.DecompressionBombError:
            raise ImageError(name, f"declares an image far too large; {card.name} expects "
                                   f"{'x'.join(map(str, size[::-1]))}") from None
        except (UnidentifiedImageError, OSError):
            raise ImageError(name, "not a readable PNG image") from None
        if arr.ndim == 3:
            arr = arr.transpose(2, 0, 1)
    else:
        raise ImageError(name, "unsupported file type; send .png or .npy")
    if arr.dtype.kind not in "uif" or arr.dtype.kind == "c":
        raise ImageError(name, f"unsupported dtype {arr.dtype}")
    arr = arr.astype(np.float32)
    dims, size = card.spatial_dims, tuple(card.input_size)
    if arr.ndim == dims:
        arr = arr[None]
    if arr.ndim != dims + 1:
        raise ImageError(name, f"has shape {arr.shape}; {card.name} expects "
                               f"({card.in_channels}, {', '.join(map(str, size))}) or "
                               f"({', '.join(map(str, size))})")
    if arr.shape[0] == 1 and card.in_channels > 1:
        arr = np.repeat(arr, card.in_channels, axis=0)
    if arr.shape[0] != card.in_channels:
        raise ImageError(name, f"has {arr.shape[0]} channels; {card.name} expects "
                               f"{card.in_channels}")
    if tuple(arr.shape[1:]) != size:
        raise ImageError(name, f"is {'x'.join(map(str, arr.shape[1:]))}; {card.name} expects "
                               f"{'x'.join(map(str, size))} (resize before sending)")
    if not np.isfinite(arr).all():
        raise ImageError(name, "contains NaN or infinite values")
    norm = card.normalization
    if norm.window is not None:
        lo, hi = norm.window
        arr = (np.clip(arr, lo, hi) - lo) / (hi - lo)
    elif arr.max(initial=0) > 1.0:
        arr = arr / 255.0 if arr.max() <= 255 else arr / arr.max()
    mean = np.asarray(norm.mean, np.float32).reshape(-1, *([1] * dims))
    std = np.asarray(norm.std, np.float32).reshape(-1, *([1] * dims))
    return (arr - mean) / std


class SessionCache:
    """Keeps the last few onnxruntime sessions; building one costs tens of milliseconds."""

    def __init__(self, size: int = 8):
        self.size = size
        self._items: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, sha256: str, path: Path) -> Any:
        from .export import onnx_session

        with self._lock:
            session = self._items.get(sha256)
            if session is not None:
                self._items.move_to_end(sha256)
                return session
        session = onnx_session(path)
        with self._lock:
            self._items[sha256] = session
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return session


def embed(session: Any, batch: np.ndarray) -> np.ndarray:
    return session.run(None, {session.get_inputs()[0].name: batch})[0]
