"""3D volumes from NIfTI files and DICOM series, in one canonical orientation.

Every volume is reoriented to RAS+ (nibabel's `as_closest_canonical`: array axis 0 runs
towards the patient's right, axis 1 anterior, axis 2 superior), so that volumes scanned in
different orientations line up voxel for voxel and a model never has to learn that a flip
of the array is the same anatomy. The spacing (mm per canonical axis) comes from the
header: NIfTI zooms, or DICOM PixelSpacing and the distance between slice positions.

`probe` reads headers only, so that a folder of volumes can be sized and refused before any
voxel is decoded; `read` then decodes one volume at a time.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from nibabel.filebasedimages import ImageFileError
from pydicom.errors import InvalidDicomError

from .base import DataError

NIFTI_SUFFIXES = (".nii.gz", ".nii")
MAX_SLICES = 512  # as many DICOM files as one series may hold (readers.MAX_IMAGE_SIDE)
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])  # DICOM patient axes point left, posterior
_NIFTI_ERRORS = (ImageFileError, OSError, ValueError, EOFError, zlib.error)
# What pydicom raises for damaged files or pixel data it has no decoder for.
_DICOM_ERRORS = (InvalidDicomError, OSError, ValueError, EOFError, NotImplementedError,
                 RuntimeError, AttributeError, KeyError, TypeError)


@dataclass(frozen=True)
class VolumeSource:
    """A volume on disk as its headers describe it: enough to size it before decoding."""

    path: Path
    shape: tuple[int, int, int]  # in canonical (RAS+) axis order
    files: tuple[Path, ...] = ()  # DICOM: the slices, sorted along the slice normal
    affine: np.ndarray | None = field(default=None, compare=False)  # DICOM: voxel -> RAS mm

    @property
    def voxels(self) -> int:
        return int(np.prod(self.shape))


@dataclass
class Volume:
    data: np.ndarray  # canonical (RAS+) array; DICOM values rescaled (slope, intercept)
    affine: np.ndarray  # canonical voxel -> RAS mm
    spacing: tuple[float, float, float]  # mm per canonical axis


def is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def canonical_shape(shape: tuple[int, ...], affine: np.ndarray, what: str
                    ) -> tuple[int, int, int]:
    """The shape the array will have once reoriented to RAS+, from the affine alone."""
    ornt = nib.orientations.io_orientation(affine)
    if np.isnan(ornt).any():
        raise DataError(f"{what}: its affine does not define an orientation (a zero or "
                        "repeated axis); the header is damaged")
    out = [0, 0, 0]
    for axis, (target, _) in enumerate(ornt):
        out[int(target)] = int(shape[axis])
    return out[0], out[1], out[2]


def probe(path: Path) -> VolumeSource:
    """A NIfTI file (.nii, .nii.gz) or a folder holding one DICOM series, from headers."""
    if path.is_dir():
        return _probe_dicom(path)
    if is_nifti(path):
        return _probe_nifti(path)
    raise DataError(f"{path.name}: expected a NIfTI file (.nii, .nii.gz) or a folder of "
                    "DICOM slices")


def read(source: VolumeSource) -> Volume:
    """Decode one probed volume and reorient it to RAS+."""
    image = _read_dicom(source) if source.files else _load_nifti(source.path)
    try:
        canonical = nib.as_closest_canonical(image)
        data = np.asanyarray(canonical.dataobj)
    except _NIFTI_ERRORS as err:
        raise DataError(f"{source.path.name}: its voxel data could not be read "
                        f"({str(err)[:200]})") from None
    if data.shape != source.shape:  # the file changed since it was probed
        raise DataError(f"{source.path.name}: holds {data.shape}, its header said "
                        f"{source.shape}")
    zooms = [round(float(z), 6) for z in canonical.header.get_zooms()[:3]]  # float32 noise
    return Volume(data, canonical.affine, (zooms[0], zooms[1], zooms[2]))


def to_uint8(data: np.ndarray) -> tuple[np.ndarray, bool]:
    """Intensities as uint8. Whole numbers already in 0..255 are kept as they are; anything
    else (CT in HU, MR in scanner units) is windowed to its own 0.5..99.5 percentiles and
    scaled to 0..255, the percentiles estimated from at most ~1M voxels. Returns the array
    and whether it was rescaled."""
    values = data.astype(np.float32, copy=False)
    if not np.isfinite(values).all():
        values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    if values.size and values.min() >= 0 and values.max() <= 255 and (
            np.issubdtype(data.dtype, np.integer) or (values == np.round(values)).all()):
        return values.astype(np.uint8), False
    sample = values.ravel()[::max(1, values.size // 1_000_000)]
    low, high = np.percentile(sample, [0.5, 99.5]) if sample.size else (0.0, 1.0)
    high = high if high > low else low + 1.0
    scaled = np.clip((values - low) * (255.0 / (high - low)), 0, 255)
    return np.round(scaled).astype(np.uint8), True


def _load_nifti(path: Path) -> nib.Nifti1Image:
    try:
        image = nib.load(path)
    except _NIFTI_ERRORS as err:
        raise DataError(f"{path.name}: not a readable NIfTI file ({str(err)[:200]})") from None
    if not isinstance(image, nib.Nifti1Image | nib.Nifti2Image):
        raise DataError(f"{path.name}: not a NIfTI image")
    if len(image.shape) == 4 and image.shape[3] == 1:  # a 3D volume saved with a time axis
        image = image.slicer[..., 0]
    if len(image.shape) != 3:
        raise DataError(f"{path.name} has shape {image.shape}; one 3D volume per file is "
                        "supported (no 4D series, no multi-channel volumes)")
    return image


def _probe_nifti(path: Path) -> VolumeSource:
    image = _load_nifti(path)  # header only: nibabel reads voxels on first access
    return VolumeSource(path, canonical_shape(image.shape, image.affine, path.name))


def _dicom_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                   and p.name.upper() != "DICOMDIR")
    if not files:
        raise DataError(f"{folder.name}: no files; a case folder holds one DICOM series")
    if len(files) > MAX_SLICES:
        raise DataError(f"{folder.name} holds {len(files)} files; a series may have at most "
                        f"{MAX_SLICES} slices")
    return files


def _dicom_header(path: Path) -> pydicom.Dataset:
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True)
    except _DICOM_ERRORS as err:
        raise DataError(f"{path.parent.name}/{path.name}: not a readable DICOM file "
                        f"({str(err)[:200]})") from None
    missing = [k for k in ("Rows", "Columns", "ImagePositionPatient",
                           "ImageOrientationPatient", "PixelSpacing") if k not in header]
    if missing:
        raise DataError(f"{path.parent.name}/{path.name} lacks {', '.join(missing)}: its "
                        "slice cannot be placed in a volume")
    sizes = {k: header.get(k) for k in ("Rows", "Columns")}
    bad = [k for k, v in sizes.items() if not isinstance(v, int) or v < 1]
    if bad:
        raise DataError(f"{path.parent.name}/{path.name}: {', '.join(bad)} must be positive "
                        "whole numbers")
    if (header.get("SamplesPerPixel") or 1) != 1 or (header.get("NumberOfFrames") or 1) != 1:
        raise DataError(f"{path.parent.name}/{path.name}: colour or multi-frame DICOM is not "
                        "read; give one grayscale slice per file")
    return header


def _floats(header: pydicom.Dataset, key: str, n: int, where: str) -> np.ndarray:
    try:
        values = np.array([float(v) for v in header[key].value], dtype=np.float64)
    except (TypeError, ValueError):
        values = np.zeros(0)
    if values.shape != (n,) or not np.isfinite(values).all():
        raise DataError(f"{where}: {key} is not {n} numbers")
    return values


def _slice_geometry(headers: list[pydicom.Dataset], folder: Path
                    ) -> tuple[np.ndarray, np.ndarray, float, np.ndarray]:
    """(row cosine, column cosine, slice distance, order) shared by the series' slices.

    Slices are ordered by their position along the normal of the image plane; they must
    share the plane, size and pixel spacing, and lie evenly spaced without duplicates (a
    gap or a repeat means a missing slice or two series mixed, which would warp anatomy)."""
    where = folder.name
    orient = _floats(headers[0], "ImageOrientationPatient", 6, where)
    spacing = _floats(headers[0], "PixelSpacing", 2, where)
    for h in headers[1:]:
        same = (np.allclose(_floats(h, "ImageOrientationPatient", 6, where), orient, atol=1e-4)
                and np.allclose(_floats(h, "PixelSpacing", 2, where), spacing, rtol=1e-4)
                and (h.Rows, h.Columns) == (headers[0].Rows, headers[0].Columns))
        if not same:
            raise DataError(f"{where}: slices differ in orientation, size or pixel spacing; "
                            "a case folder holds one series")
    row_dir, col_dir = orient[:3], orient[3:]
    normal = np.cross(row_dir, col_dir)
    positions = np.array([_floats(h, "ImagePositionPatient", 3, where) @ normal
                          for h in headers])
    order = np.argsort(positions, kind="stable")
    gaps = np.diff(positions[order])
    if len(gaps) and gaps.min() < 1e-3:
        raise DataError(f"{where}: two slices share one position; a case folder holds one "
                        "series, each slice once")
    if len(gaps) and gaps.max() - gaps.min() > 0.1 * np.median(gaps):
        raise DataError(f"{where}: slices are unevenly spaced ({gaps.min():.3g} to "
                        f"{gaps.max():.3g} mm apart): a slice is missing or series are mixed")
    distance = float(np.median(gaps)) if len(gaps) else float(
        headers[0].get("SliceThickness", 1.0) or 1.0)
    return row_dir, col_dir, distance, order


def _probe_dicom(folder: Path) -> VolumeSource:
    """One series per folder, from the headers only (pixels are not read)."""
    files = _dicom_files(folder)
    headers = [_dicom_header(p) for p in files]
    series = {str(h.get("SeriesInstanceUID", "")) for h in headers}
    if len(series) > 1:
        raise DataError(f"{folder.name} holds {len(series)} DICOM series; put one series "
                        "per case folder")
    row_dir, col_dir, distance, order = _slice_geometry(headers, folder)
    spacing = _floats(headers[0], "PixelSpacing", 2, folder.name)
    first = headers[int(order[0])]
    # Array axes (row, column, slice): moving down a row follows the column cosine by the
    # row spacing PixelSpacing[0]; along a row, the row cosine by PixelSpacing[1] (PS3.3
    # C.7.6.2.1.1).
    affine = np.eye(4)
    affine[:3, 0] = col_dir * spacing[0]
    affine[:3, 1] = row_dir * spacing[1]
    affine[:3, 2] = np.cross(row_dir, col_dir) * distance
    affine[:3, 3] = _floats(first, "ImagePositionPatient", 3, folder.name)
    affine = _LPS_TO_RAS @ affine
    shape = (int(first.Rows), int(first.Columns), len(files))
    return VolumeSource(folder, canonical_shape(shape, affine, folder.name),
                        tuple(files[int(i)] for i in order), affine)


def _read_dicom(source: VolumeSource) -> nib.Nifti1Image:
    """The series' slices stacked in order, each rescaled by its own slope and intercept
    (they may differ between slices), as a NIfTI image in RAS+ world coordinates."""
    volume: np.ndarray | None = None
    for k, path in enumerate(source.files):
        try:
            ds = pydicom.dcmread(path)
        except _DICOM_ERRORS as err:
            raise DataError(f"{path.parent.name}/{path.name}: not a readable DICOM file "
                            f"({str(err)[:200]})") from None
        try:
            pixels = ds.pixel_array
        except _DICOM_ERRORS as err:
            syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
            raise DataError(f"{path.parent.name}/{path.name}: pixel data could not be decoded "
                            f"(transfer syntax {getattr(syntax, 'name', 'unknown')}: "
                            f"{str(err)[:200]})") from None
        if volume is None:
            volume = np.empty((*pixels.shape, len(source.files)), np.float32)
        if pixels.shape != volume.shape[:2]:
            raise DataError(f"{path.parent.name}/{path.name} is {pixels.shape}, not "
                            f"{volume.shape[:2]} like the series' first slice")
        slope = float(ds.get("RescaleSlope", 1) or 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
        volume[:, :, k] = pixels.astype(np.float32) * slope + intercept
    assert volume is not None and source.affine is not None
    return nib.Nifti1Image(volume, source.affine)
