"""Images in, features or class probabilities out, with onnxruntime (sessions cached per
ONNX file). File formats and resizing are zoo.imaging's."""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from .cards import StoredCard
from .imaging import ImageError, declared_values, load, normalise

__all__ = ["ImageError", "SessionCache", "declared_sizes", "decode", "embed"]


def decode(name: str, data: bytes, card: StoredCard, max_values: int = 64 * 2**20,
           slice_index: int | None = None) -> np.ndarray:
    """One file as the ONNX graph's input (C, *input_size), float32, resized if needed.

    Encoders take normalised input (the card's mean and std); task models take [0, 1]
    values and normalise inside their graph. Sizes are read from the file's header before
    any pixel is decoded, so a small file that claims a huge image costs nothing."""
    unit = load(name, data, spatial_dims=card.spatial_dims, channels=card.in_channels,
                input_size=card.input_size, window=card.normalization.window,
                max_values=max_values, slice_index=slice_index)
    if card.task is not None:
        return unit
    return normalise(unit, card.normalization.mean, card.normalization.std)


def declared_sizes(files: list[tuple[str, bytes]]) -> list[tuple[str, int, str | None]]:
    """(name, values its header declares, problem) per file, from headers alone: a file
    whose header cannot be read, or declares an absurd image, has a problem instead."""
    sizes: list[tuple[str, int, str | None]] = []
    for name, data in files:
        try:
            sizes.append((name, declared_values(name, data), None))
        except ImageError as err:
            sizes.append((name, 0, err.problem))
    return sizes


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
