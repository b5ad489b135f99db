"""Small segmentation datasets in every accepted layout, built from the real files in
shared/data/segmentation (Kvasir-SEG polyps, MSD hippocampus MRI): npz subsets, folders of
images + masks, NIfTI image/label folders and DICOM series written slice by slice."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.utils import DATA_DIR

SEG_DIR = DATA_DIR / "segmentation"
KVASIR = SEG_DIR / "kvasirseg_128.npz"
HIPPOCAMPUS = SEG_DIR / "hippocampus3d_48x64x48.npz"
SPLIT_SIZES = {"train": 12, "val": 4, "test": 4}


def real(path: Path, sizes: dict[str, int] = SPLIT_SIZES) -> dict[str, np.ndarray]:
    """The first few cases of each split of a shipped segmentation file."""
    if not path.exists():
        pytest.skip(f"real data not found at {path} (see shared/data/README.md)")
    with np.load(path) as data:
        return {k: data[k][:sizes[k.split("_", 1)[0]]] for k in data.files
                if k.split("_", 1)[0] in sizes}


def npz_bytes(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def zip_folder(folder: Path, prefix: str = "", extra: dict[str, bytes] | None = None) -> bytes:
    """A zip of everything under `folder`, each entry under `prefix` (an archive often
    wraps its dataset in one top folder), plus `extra` entries as given."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, prefix + path.relative_to(folder).as_posix())
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return buf.getvalue()


def pairs_folder(root: Path, data: dict[str, np.ndarray], splits_csv: bool = True) -> Path:
    """images/<id>.jpg + masks/<id>.png (masks saved 0/255, as most tools save binary
    masks), a splits.csv giving the official split of every case and a dataset.json naming
    the class."""
    from PIL import Image

    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rows = ["filename,split"]
    for s in SPLIT_SIZES:
        for image, mask, case in zip(data[f"{s}_images"], data[f"{s}_masks"], data[f"{s}_ids"],
                                     strict=True):
            Image.fromarray(image).save(root / "images" / f"{case}.jpg", quality=95)
            Image.fromarray(mask * 255).save(root / "masks" / f"{case}.png")
            rows.append(f"{case}.jpg,{s}")
    if splits_csv:
        (root / "splits.csv").write_text("\n".join(rows) + "\n")
    (root / "dataset.json").write_text('{"labels": {"0": "background", "1": "polyp"}}')
    return root


def crop(data: dict[str, np.ndarray], split: str, i: int, key: str) -> np.ndarray:
    """A hippocampus volume (or mask) cut back to its original size (the shipped file
    pads each to 48x64x48)."""
    shape, offset = data[f"{split}_orig_shape"][i], data[f"{split}_pad_offset"][i]
    region = tuple(slice(o, o + n) for o, n in zip(offset, shape, strict=True))
    return data[f"{split}_{key}"][i][region]


# Ways a scanner may store the same RAS+ volume: (array transform, axis order, flips).
# Each writes `transform(volume)` with the affine that maps it back onto RAS+.
ORIENTATIONS = {
    "RAS": ((0, 1, 2), (False, False, False)),
    "LAS": ((0, 1, 2), (True, False, False)),  # x stored right-to-left
    "PIR": ((1, 2, 0), (True, True, False)),  # axes permuted and two flipped
}


def oriented(volume: np.ndarray, name: str, spacing: tuple[float, float, float]
             ) -> tuple[np.ndarray, np.ndarray]:
    """`volume` (RAS+ axis order) stored in orientation `name`, and its affine."""
    order, flips = ORIENTATIONS[name]
    stored = np.transpose(volume, order)
    affine = np.zeros((4, 4))
    affine[3, 3] = 1.0
    for axis, (src, flip) in enumerate(zip(order, flips, strict=True)):
        if flip:
            stored = np.flip(stored, axis)
        # stored axis `axis` runs along RAS axis `src`, backwards when flipped
        affine[src, axis] = -spacing[src] if flip else spacing[src]
        affine[src, 3] = spacing[src] * (volume.shape[src] - 1) if flip else 0.0
    return np.ascontiguousarray(stored), affine


def nifti_folder(root: Path, data: dict[str, np.ndarray], splits: dict[str, int],
                 spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> dict[str, str]:
    """imagesTr/<id>.nii.gz (float intensities, as MRI is stored) + labelsTr/<id>.nii.gz,
    cycling through ORIENTATIONS; a dataset.json with MSD's label names and a splits.csv.
    Returns case id -> split."""
    import nibabel as nib

    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    names = list(ORIENTATIONS)
    cases, rows = {}, ["filename,split"]
    for s, n in splits.items():
        for i in range(n):
            case = str(data[f"{s}_ids"][i])
            how = names[len(cases) % len(names)]
            image, affine = oriented(crop(data, s, i, "images").astype(np.float32) * 3.0 + 7.0,
                                     how, spacing)
            label, _ = oriented(crop(data, s, i, "masks"), how, spacing)
            nib.save(nib.Nifti1Image(image, affine), root / "imagesTr" / f"{case}.nii.gz")
            nib.save(nib.Nifti1Image(label, affine), root / "labelsTr" / f"{case}.nii.gz")
            cases[case] = s
            rows.append(f"imagesTr/{case}.nii.gz,{s}")
    (root / "dataset.json").write_text(
        '{"name": "Hippocampus", "labels": {"0": "background", "1": "Anterior", '
        '"2": "Posterior"}}')
    (root / "splits.csv").write_text("\n".join(rows) + "\n")
    return cases


def dicom_series(folder: Path, volume: np.ndarray, spacing: tuple[float, float, float],
                 origin: tuple[float, float, float] = (-20.0, 30.0, -15.0),
                 series_uid: str | None = None) -> None:
    """`volume` (RAS+ axis order, values 0..255) written as an axial DICOM series, one
    file per slice under shuffled names, each with its own rescale slope and intercept so
    that only a reader that applies them per slice gets `volume` back.

    Geometry follows PS3.3 C.7.6.2.1.1: pixel (row j, column i) of a slice lies at
    ImagePositionPatient + i * PixelSpacing[1] * row cosine + j * PixelSpacing[0] * column
    cosine, in LPS. With the row cosine (1,0,0) (towards the patient's left) and column
    cosine (0,1,0) (posterior), column i is RAS x index X-1-i and row j is y index Y-1-j."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    folder.mkdir(parents=True)
    nx, ny, nz = volume.shape
    series_uid = series_uid or generate_uid()
    rng = np.random.default_rng(0)
    names = rng.permutation(nz)
    for k in range(nz):
        plane = volume[::-1, ::-1, k].T.astype(np.int32)  # (rows = y reversed, cols = x reversed)
        slope, intercept = (0.5, -3.0) if k % 2 else (1.0, -10.0 - k)
        stored = ((plane - intercept) / slope).astype(np.uint16)
        assert np.array_equal(stored * slope + intercept, plane)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.SeriesInstanceUID, ds.InstanceNumber = "MR", series_uid, k + 1
        ds.Rows, ds.Columns = ny, nx
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelSpacing = [spacing[1], spacing[0]]  # row spacing (y), column spacing (x)
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        # RAS of voxel (X-1, Y-1, k), the slice's first pixel, given in LPS
        x, y = origin[0] + spacing[0] * (nx - 1), origin[1] + spacing[1] * (ny - 1)
        ds.ImagePositionPatient = [-x, -y, origin[2] + spacing[2] * k]
        ds.SliceThickness = spacing[2]
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.PixelData = stored.tobytes()
        ds.save_as(folder / f"IM{names[k]:04d}", enforce_file_format=True)
