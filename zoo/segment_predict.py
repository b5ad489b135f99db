"""A segmentation task model's answer for one file: the mask on the file's own grid.

The image is resized to the size the model was trained at (as for classification), the
class probabilities are resized back to the file's size and the most probable class is
taken there, so the mask lies on the pixels (or voxels) that were sent. Volumes from NIfTI
keep the affine of their RAS+ grid, so the mask overlays the image in any viewer.
"""

from __future__ import annotations

import gzip
import io
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .cards import StoredCard
from .imaging import load_native, resize


@dataclass(frozen=True)
class Mask:
    labels: np.ndarray  # uint8 class index per pixel/voxel, the input's spatial shape
    affine: np.ndarray | None  # RAS+ voxel-to-world of a NIfTI input

    def fractions(self, classes: int) -> list[float]:
        """Share of the pixels (voxels) given to each class."""
        counts = np.bincount(self.labels.ravel(), minlength=classes)[:classes]
        return [round(float(c) / self.labels.size, 6) for c in counts]


def predict_mask(session: Any, name: str, data: bytes, card: StoredCard, max_values: int,
                 slice_index: int | None = None) -> Mask:
    """Raises zoo.imaging.ImageError for a file that cannot be read as the model's input."""
    native = load_native(name, data, spatial_dims=card.spatial_dims,
                         channels=card.in_channels, window=card.normalization.window,
                         max_values=max_values, slice_index=slice_index)
    x = resize(name, native.array, card.input_size)[None]
    probs = session.run(None, {session.get_inputs()[0].name: x})[0][0]  # (K, *input_size)
    shape = native.array.shape[1:]
    if tuple(probs.shape[1:]) != tuple(shape):
        if probs.shape[0] * math.prod(shape) <= max_values:  # smooth edges where it fits
            probs = resize(name, probs, shape)
        else:  # else the labels themselves, nearest neighbour
            idx = [np.minimum((np.arange(n) * p / n).astype(int), p - 1)
                   for n, p in zip(shape, probs.shape[1:], strict=True)]
            probs = probs[(slice(None), *np.ix_(*idx))]
    labels = probs.argmax(axis=0).astype(np.uint8)
    return Mask(labels, native.affine if card.spatial_dims == 3 else None)


def encode_mask(mask: Mask) -> tuple[bytes, str, str]:
    """(bytes, media type, file suffix): PNG for 2D, gzipped NIfTI for 3D."""
    if mask.labels.ndim == 2:
        from PIL import Image

        out = io.BytesIO()
        Image.fromarray(mask.labels).save(out, "PNG")  # uint8 2D: 8-bit gray
        return out.getvalue(), "image/png", ".png"
    import nibabel as nib

    image = nib.Nifti1Image(mask.labels, mask.affine if mask.affine is not None
                            else np.eye(4))
    image.header.set_data_dtype(np.uint8)
    # mtime 0: the same mask gives the same bytes (and ETag-friendly answers).
    return (gzip.compress(image.to_bytes(), compresslevel=6, mtime=0), "application/gzip",
            ".nii.gz")
