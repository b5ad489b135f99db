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
from .imaging import load_native, resize, with_channels

# Class maps resized back to the input's size when they hold at most this many values
# (smoother edges); larger outputs take the labels' nearest neighbour instead.
SMOOTH_VALUES = 16 * 2**20


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
    x = with_channels(resize(name, native.array, card.input_size), card.in_channels)[None]
    probs = session.run(None, {session.get_inputs()[0].name: x})[0][0]  # (K, *input_size)
    shape = tuple(native.array.shape[1:])
    if tuple(probs.shape[1:]) == shape:
        labels = probs.argmax(axis=0).astype(np.uint8)
    elif probs.shape[0] * math.prod(shape) <= SMOOTH_VALUES:  # smooth edges where it is cheap
        labels = resize(name, probs, shape).argmax(axis=0).astype(np.uint8)
    else:  # else the labels themselves, nearest neighbour: never K maps at full size
        small = probs.argmax(axis=0).astype(np.uint8)
        idx = [np.minimum((np.arange(n) * p // n), p - 1)
               for n, p in zip(shape, small.shape, strict=True)]
        labels = small[np.ix_(*idx)]
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
