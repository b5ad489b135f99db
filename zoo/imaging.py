"""Medical image files in, model-ready arrays out: PNG, JPEG, NPY, DICOM and NIfTI.

Reading is split in two so that a request can be refused before any pixel is decoded:
`declared_values` reads only a file's header (a 200 KB PNG may declare 400 megapixels);
`load` then decodes to floats in [0, 1] with the model's channels and input size
(MONAI's Resize, anti-aliased when shrinking).

Intensities: 8/16-bit pictures are divided by their type's maximum. DICOM goes through
its modality LUT (rescale slope and intercept, to Hounsfield units for CT) and then the
model's own intensity window when its card has one, else the file's VOI LUT or window
(the DICOM linear window function), else the image's range. NIfTI and float NPY arrays
take the card's window, else their own range.
"""

from __future__ import annotations

import gzip
import io
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

SUFFIXES = (".png", ".jpg", ".jpeg", ".npy", ".dcm", ".dicom", ".nii", ".nii.gz")
NIFTI1_HEADER = 348
NIFTI2_HEADER = 540


class ImageError(ValueError):
    """A file that cannot be used, named, with what is wrong with it."""

    def __init__(self, image: str, problem: str):
        self.image, self.problem = image, problem
        super().__init__(f"{image}: {problem}")


def kind_of(name: str) -> str:
    lower = name.lower()
    for suffix, kind in ((".nii.gz", "nifti"), (".nii", "nifti"), (".png", "picture"),
                         (".jpg", "picture"), (".jpeg", "picture"), (".npy", "npy"),
                         (".dcm", "dicom"), (".dicom", "dicom")):
        if lower.endswith(suffix):
            return kind
    raise ImageError(name, f"unsupported file type; send one of {', '.join(SUFFIXES)}")


# ---------------------------------------------------------------- headers only

def _npy_header(data: bytes) -> tuple[tuple[int, ...], np.dtype]:
    buf = io.BytesIO(data)
    version = np.lib.format.read_magic(buf)
    read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
            else np.lib.format.read_array_header_2_0)
    shape, _, dtype = read(buf)
    return tuple(shape), dtype


def _nifti_bytes(name: str, data: bytes, max_values: int) -> bytes:
    """The uncompressed file, inflating a .nii.gz only as far as its header allows."""
    if not data.startswith(b"\x1f\x8b"):
        return data
    inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        head = inflate.decompress(data, NIFTI2_HEADER)
    except zlib.error:
        raise ImageError(name, "not a readable gzip file") from None
    shape, itemsize, offset = _nifti_geometry(name, head)
    budget = offset + math.prod(shape) * itemsize
    if math.prod(shape) > max_values:
        raise ImageError(name, f"declares {math.prod(shape):,} values, over the limit of "
                               f"{max_values:,}")
    try:
        rest = inflate.decompress(inflate.unconsumed_tail, budget - len(head) + 1)
    except zlib.error:
        raise ImageError(name, "corrupt gzip stream") from None
    whole = head + rest
    if len(whole) > budget:
        raise ImageError(name, "inflates to more than its header declares")
    return whole


def _nifti_geometry(name: str, head: bytes) -> tuple[tuple[int, ...], int, int]:
    """(shape, bytes per value, data offset) from a NIfTI-1 or NIfTI-2 header."""
    import nibabel as nib

    for header_class, size in ((nib.Nifti1Header, NIFTI1_HEADER),
                               (nib.Nifti2Header, NIFTI2_HEADER)):
        if len(head) < size:
            continue
        try:
            header = header_class.from_fileobj(io.BytesIO(head[:size]), check=False)
            shape = tuple(int(s) for s in header.get_data_shape())
            itemsize = header.get_data_dtype().itemsize
            offset = int(header.get_data_offset())
        except Exception:  # nibabel raises several types for a wrong header kind
            continue
        if shape and all(s > 0 for s in shape):
            return shape, itemsize, offset
    raise ImageError(name, "not a readable NIfTI-1 or NIfTI-2 file")


def declared_values(name: str, data: bytes) -> int:
    """How many values the file says it holds, read from its header alone."""
    kind = kind_of(name)
    from PIL import Image

    try:
        if kind == "picture":
            with Image.open(io.BytesIO(data)) as img:
                return img.size[0] * img.size[1] * len(img.getbands())
        if kind == "npy":
            shape, dtype = _npy_header(data)
            if dtype.hasobject:
                raise ImageError(name, "an object array: pickled arrays are refused; send a "
                                       "plain numeric .npy")
            return math.prod(shape)
        if kind == "dicom":
            import pydicom

            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
            return (int(ds.Rows) * int(ds.Columns) * int(getattr(ds, "NumberOfFrames", 1) or 1)
                    * int(getattr(ds, "SamplesPerPixel", 1) or 1))
        if kind == "nifti":
            head = (gzip.GzipFile(fileobj=io.BytesIO(data)).read(NIFTI2_HEADER)
                    if data.startswith(b"\x1f\x8b") else data[:NIFTI2_HEADER])
            shape, _, _ = _nifti_geometry(name, head)
            return math.prod(shape)
    except ImageError:
        raise
    except Image.DecompressionBombError:
        raise ImageError(name, "declares an image far too large (over "
                               f"{2 * (Image.MAX_IMAGE_PIXELS or 0):,} pixels)") from None
    except Exception:  # each reader has its own errors for a broken header
        raise ImageError(name, f"not a readable {kind} file") from None
    raise AssertionError(kind)


# ---------------------------------------------------------------- decoding

def _window(values: np.ndarray, window: Sequence[float]) -> np.ndarray:
    lo, hi = float(window[0]), float(window[1])
    return np.clip((values - lo) / (hi - lo), 0.0, 1.0)


def _own_range(values: np.ndarray) -> np.ndarray:
    lo, hi = float(values.min(initial=0.0)), float(values.max(initial=0.0))
    return (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)


def _picture(name: str, data: bytes, channels: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit gray
                arr = np.asarray(img, dtype=np.float32) / 65535.0
                return arr[None]
            # Gray stays one band here, even for a colour model: it is widened after
            # resizing (with_channels), not at its full size.
            gray = channels == 1 or img.mode in ("1", "L", "LA")
            mode = "L" if gray else "RGB"
            arr = np.asarray(img if img.mode == mode else img.convert(mode), np.float32)
            arr /= 255.0
    except Image.DecompressionBombError:
        raise ImageError(name, "declares an image far too large") from None
    except (UnidentifiedImageError, OSError):
        raise ImageError(name, "not a readable PNG or JPEG image") from None
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _npy(name: str, data: bytes, window: Sequence[float] | None) -> np.ndarray:
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as err:
        raise ImageError(name, f"not a plain .npy array ({err}); pickled arrays are "
                               "refused") from None
    except Exception:  # numpy raises several types on corrupt files
        raise ImageError(name, "not a readable .npy file") from None
    if arr.dtype.kind not in "uif":
        raise ImageError(name, f"unsupported dtype {arr.dtype}")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise ImageError(name, "contains NaN or infinite values")
    if window is not None:
        return _window(arr, window)
    top = float(arr.max(initial=0.0))
    if top <= 1.0:
        return arr
    return arr / 255.0 if top <= 255 else arr / top


def _dicom(name: str, data: bytes, window: Sequence[float] | None
           ) -> tuple[np.ndarray, bool]:
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(io.BytesIO(data))
        pixels = ds.pixel_array
    except Exception as err:  # unreadable file, or a compressed syntax with no decoder
        raise ImageError(name, f"cannot decode the DICOM pixel data ({err})") from None
    samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    if samples == 3:  # colour (ultrasound, photographs): channels last in pydicom
        if pixels.ndim != 3:
            raise ImageError(name, "multi-frame colour DICOM is not supported; send one "
                                   "frame")
        return np.moveaxis(np.asarray(pixels, np.float32) / 255.0, -1, 0), True
    values = apply_modality_lut(pixels, ds).astype(np.float32)
    if window is not None:
        unit = _window(values, window)
    elif "VOILUTSequence" in ds:
        out = apply_voi_lut(pixels, ds, prefer_lut=True).astype(np.float32)
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        unit = np.clip(out / float(2**bits - 1), 0.0, 1.0)
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        center = float(np.ravel([ds.WindowCenter])[0])
        width = max(float(np.ravel([ds.WindowWidth])[0]), 1.0)
        # PS3.3 C.11.2.1.2.1, the linear window function, mapped onto [0, 1].
        unit = np.clip((values - (center - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0)
    else:
        unit = _own_range(values)
    if getattr(ds, "PhotometricInterpretation", "") == "MONOCHROME1":
        unit = 1.0 - unit  # stored inverted: high values are dark
    return unit.astype(np.float32), False


def _nifti(name: str, data: bytes, window: Sequence[float] | None,
           max_values: int) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

    raw = _nifti_bytes(name, data, max_values)
    image = None
    for image_class in (nib.Nifti1Image, nib.Nifti2Image):
        try:
            image = image_class.from_bytes(raw)
            break
        except Exception:  # wrong NIfTI version: try the next
            continue
    if image is None:
        raise ImageError(name, "not a readable NIfTI file")
    try:
        image = nib.as_closest_canonical(image)  # one orientation for every file: RAS+
        values = np.asarray(image.dataobj, dtype=np.float32)
    except (OSError, ValueError, EOFError) as err:  # e.g. less voxel data than declared
        raise ImageError(name, f"unreadable NIfTI data: {err}"[:200]) from None
    while values.ndim > 3 and values.shape[-1] == 1:
        values = values[..., 0]
    if values.ndim > 3:
        raise ImageError(name, f"has shape {values.shape}; send one 2D or 3D volume")
    if not np.isfinite(values).all():
        raise ImageError(name, "contains NaN or infinite values")
    unit = _window(values, window) if window is not None else _own_range(values)
    return unit.astype(np.float32), image.affine


def _decode(name: str, data: bytes, spatial_dims: int, channels: int,
            window: Sequence[float] | None, max_values: int
            ) -> tuple[np.ndarray, bool, np.ndarray | None]:
    """Values in [0, 1], whether the first axis is channels, and a NIfTI file's RAS+
    affine. Volumes keep their slice axis last (NIfTI after reorientation to RAS+; DICOM
    frames are moved there)."""
    kind = kind_of(name)
    declared = declared_values(name, data)
    if declared > max_values:
        raise ImageError(name, f"declares {declared:,} values, over the limit of "
                               f"{max_values:,}")
    if kind == "picture":
        return _picture(name, data, channels), True, None
    if kind == "npy":
        arr = _npy(name, data, window)
        return arr, arr.ndim == spatial_dims + 1, None
    if kind == "nifti":
        values, affine = _nifti(name, data, window, max_values)
        return values, False, affine
    arr, colour = _dicom(name, data, window)
    if not colour and arr.ndim == 3:  # multi-frame: (frames, rows, columns)
        arr = np.moveaxis(arr, 0, -1)
    return arr, colour, None


def load(name: str, data: bytes, *, spatial_dims: int, channels: int,
         input_size: Sequence[int], window: Sequence[float] | None = None,
         max_values: int = 64 * 2**20, slice_index: int | None = None) -> np.ndarray:
    """One file as the model's input: float32 (channels, *input_size) in [0, 1].

    A 2D model given a volume sees one slice of it: `slice_index` along the slice axis
    (axial for NIfTI), the middle one by default. Other sizes are resized."""
    arr = load_native(name, data, spatial_dims=spatial_dims, channels=channels,
                      window=window, max_values=max_values, slice_index=slice_index).array
    return with_channels(resize(name, arr, input_size), channels)


@dataclass(frozen=True)
class Native:
    """A decoded file at its own size: (1 or the model's channels, *spatial) values in
    [0, 1] (gray is widened to colour only after resizing, by `with_channels`, so a large
    image is never held three times), and for NIfTI the affine of the RAS+ grid they lie
    on (what a mask predicted on them should carry)."""

    array: np.ndarray
    affine: np.ndarray | None = None


def resize(name: str, arr: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """(channels, *spatial) resized to `size`, anti-aliased when shrinking."""
    from monai.transforms import Resize

    size = tuple(int(s) for s in size)
    if tuple(arr.shape[1:]) != size:
        if min(arr.shape[1:]) < 2:
            raise ImageError(name, f"is {'x'.join(map(str, arr.shape[1:]))}: too small")
        arr = block_mean(arr, size)
        shrink = any(a > b for a, b in zip(arr.shape[1:], size, strict=True))
        mode = "bilinear" if len(size) == 2 else "trilinear"
        arr = np.asarray(Resize(size, mode=mode, anti_aliasing=shrink, dtype=np.float32)(arr),
                         dtype=np.float32)
    return np.ascontiguousarray(arr, dtype=np.float32)


def block_mean(arr: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Shrink by whole factors first, averaging blocks, until each axis is at most twice
    its target: the anti-aliased resize that follows then works on a small array (its
    Gaussian filter on an 8192-px image took gigabytes and minutes)."""
    factors = [max(1, a // (2 * b)) for a, b in zip(arr.shape[1:], size, strict=True)]
    if all(f == 1 for f in factors):
        return arr
    cut = tuple(slice(0, (a // f) * f) for a, f in zip(arr.shape[1:], factors, strict=True))
    arr = arr[(slice(None), *cut)]
    shape = [arr.shape[0]]
    for a, f in zip(arr.shape[1:], factors, strict=True):
        shape += [a // f, f]
    return arr.reshape(shape).mean(axis=tuple(range(2, 2 * len(factors) + 1, 2)),
                                   dtype=np.float32)


def with_channels(arr: np.ndarray, channels: int) -> np.ndarray:
    """Gray widened to the model's colour channels (after resizing: cheap there)."""
    if arr.shape[0] == 1 and channels > 1:
        return np.ascontiguousarray(np.repeat(arr, channels, axis=0))
    return arr


def load_native(name: str, data: bytes, *, spatial_dims: int, channels: int,
                window: Sequence[float] | None = None, max_values: int = 64 * 2**20,
                slice_index: int | None = None) -> Native:
    """One file as (channels, *its own size) in [0, 1]: `load` before resizing."""
    arr, channels_first, affine = _decode(name, data, spatial_dims, channels, window,
                                          max_values)
    if not channels_first:
        if arr.ndim == spatial_dims + 1 and spatial_dims == 2:
            depth = arr.shape[-1]
            index = depth // 2 if slice_index is None else slice_index
            if not 0 <= index < depth:
                raise ImageError(name, f"slice {index} is outside the volume's {depth} "
                                       "slices")
            arr = arr[..., index]
        if arr.ndim != spatial_dims:
            raise ImageError(name, f"has shape {arr.shape}; a {spatial_dims}D model takes "
                                   f"{spatial_dims}D images")
        arr = arr[None]
    elif arr.ndim != spatial_dims + 1:
        raise ImageError(name, f"has shape {arr.shape}; a {spatial_dims}D model with "
                               f"{channels} channel(s) takes ({channels}, "
                               f"{', '.join(['size'] * spatial_dims)}) arrays")
    if arr.shape[0] == 3 and channels == 1:
        arr = arr.mean(axis=0, keepdims=True)
    if arr.shape[0] not in (1, channels):
        raise ImageError(name, f"has {arr.shape[0]} channels; the model takes {channels}")
    sliced = affine is not None and spatial_dims == 2
    return Native(np.ascontiguousarray(arr, dtype=np.float32), None if sliced else affine)


def normalise(arr: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    dims = arr.ndim - 1
    m = np.asarray(mean, np.float32).reshape(-1, *([1] * dims))
    s = np.asarray(std, np.float32).reshape(-1, *([1] * dims))
    return (arr - m) / s
