"""Segmentation datasets from real images and masks: npz with `{split}_masks`, folders and
zips of images + masks, NIfTI image/label pairs in any orientation, DICOM series (real ones
from the pydicom wheel, and real MRI written slice by slice); what each refuses and why."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image

from tests.zoo.datasets.seg_builders import (
    HIPPOCAMPUS,
    SEG_DIR,
    crop,
    dicom_series,
    nifti_folder,
    npz_bytes,
    pairs_folder,
    real,
    zip_folder,
)
from tests.zoo.datasets.test_upload_memory import npz_streamed
from zoo.datasets import volumes
from zoo.datasets.ingest import (
    MAX_UPLOAD_DECODED_BYTES,
    check,
    from_npz_bytes,
    from_zip_bytes,
    summarise,
    to_npz_bytes,
)
from zoo.datasets.readers import DataError, load_dataset, load_folder
from zoo.datasets.thumbnails import montage

DICOM_DIRS = Path(pydicom.__file__).parent / "data" / "test_files" / "dicomdirtests"
CT_SERIES = DICOM_DIRS / "98892001" / "CT5N"  # 5 axial CT slices, 2.5 mm apart
CT_GAPPED = DICOM_DIRS / "77654033" / "CT2"  # 4 slices, one 200 mm away from the rest


@pytest.fixture(scope="module")
def hippocampus() -> dict[str, np.ndarray]:
    return real(HIPPOCAMPUS, {"train": 4, "val": 1, "test": 2})


def seg_npz(data: dict[str, np.ndarray], **change: np.ndarray | None) -> bytes:
    arrays = {k: v for k, v in data.items() if k.endswith(("_images", "_masks", "_ids"))}
    arrays.update(change)
    return npz_bytes(**{k: v for k, v in arrays.items() if v is not None})


# -- npz ------------------------------------------------------------------------------------

def test_shipped_segmentation_files_load_with_their_classes() -> None:
    if not SEG_DIR.exists():
        pytest.skip(f"real data not found at {SEG_DIR}")
    kv = load_dataset("kvasirseg_128", SEG_DIR.parent)
    assert kv.task == "segmentation" and kv.has_masks and not kv.labelled
    assert [len(kv.splits[s]) for s in ("train", "val", "test")] == [790, 88, 120]
    assert kv.info["mask_classes"] == ["background", "polyp"] and kv.channels == 3
    assert kv.info["spacing"] == [1.0, 1.0] and not kv.info["spacing_known"]
    hip = load_dataset("hippocampus3d_48x64x48", SEG_DIR.parent)
    assert hip.spatial_dims == 3 and hip.image_size == [48, 64, 48]
    assert hip.info["mask_classes"][0] == "background" and len(hip.info["mask_classes"]) == 3
    assert hip.info["spacing"] == [1.0, 1.0, 1.0] and hip.info["spacing_known"]
    assert hip.info["cases"]["train"]["orig_shape"][0] == [34, 52, 35]
    ph2 = load_dataset("ph2_128", SEG_DIR.parent)  # masks and class labels both
    assert ph2.task == "segmentation" and ph2.labelled and ph2.num_classes == 3
    for ds in (kv, hip, ph2):
        check(ds)


def test_npz_with_masks_is_a_segmentation_set(kvasir: dict[str, np.ndarray]) -> None:
    ds = from_npz_bytes(seg_npz(kvasir), "kv")
    assert ds.task == "segmentation" and not ds.labelled and ds.num_classes == 0
    assert ds.info["mask_classes"] == ["background", "class 1"]  # undeclared: numbered
    assert np.array_equal(ds.splits["train"].masks.numpy(), kvasir["train_masks"])
    assert ds.info["cases"]["val"]["ids"] == list(kvasir["val_ids"])
    summary = summarise(ds)
    assert summary["task"] == "segmentation" and summary["labelled"] is True
    fraction = summary["splits"]["train"]["masks"]["class_fraction"]
    assert fraction["1"] == pytest.approx(kvasir["train_masks"].mean(), abs=1e-6)
    assert summary["empty_masks"] == 0 and summary["spacing_known"] is False
    # The stored canonical form reads back the same, masks and class names included.
    named = from_npz_bytes(seg_npz(kvasir, mask_classes=np.array(["background", "polyp"])),
                           "kv")
    again = from_npz_bytes(to_npz_bytes(named), "again")
    assert again.info["mask_classes"] == ["background", "polyp"]
    assert summarise(again) == summarise(named)
    assert np.array_equal(again.splits["test"].masks.numpy(), kvasir["test_masks"])


def test_empty_masks_are_counted_not_refused(kvasir: dict[str, np.ndarray]) -> None:
    masks = kvasir["train_masks"].copy()
    masks[[1, 4, 7]] = 0
    summary = summarise(from_npz_bytes(seg_npz(kvasir, train_masks=masks), "kv"))
    assert summary["splits"]["train"]["masks"]["empty"] == 3 and summary["empty_masks"] == 3
    with pytest.raises(DataError, match="every train mask is empty"):
        from_npz_bytes(seg_npz(kvasir, train_masks=np.zeros_like(masks)), "kv")


def _first_doubled(masks: np.ndarray) -> np.ndarray:
    out = masks.copy()
    out[0] *= 2
    return out


BAD_MASKS = {  # what to change in the Kvasir subset, and the refusal it must get
    "shape": ({"train_masks": lambda m: m[:, ::2, ::2]},
              "expected one mask per image of the image's spatial shape, (12, 128, 128)"),
    "float": ({"val_masks": lambda m: m.astype(np.float32)},
              "val_masks has dtype float32; masks must be integer"),
    "missing": ({"test_masks": lambda m: None}, "lacks ['test_masks']"),
    "class": ({"train_masks": _first_doubled,
               "mask_classes": lambda m: np.array(["background", "polyp"])},
              "train masks hold the value(s) 2 (first in mask 'cju0qkwl35piu0993l0dewei2'); "
              "the declared classes are 0 background, 1 polyp"),
    "uint8 range": ({"train_masks": lambda m: m.astype(np.uint16) * 300},
                    "has the value 300; mask values are class indices 0..255"),
    "one class": ({"mask_classes": lambda m: np.array(["background"])},
                  "expected 2 to 256 class names"),
}


@pytest.mark.parametrize("case", list(BAD_MASKS))
def test_bad_masks_are_refused_with_the_reason(kvasir: dict[str, np.ndarray],
                                               case: str) -> None:
    changes, message = BAD_MASKS[case]
    arrays = {key: change(kvasir.get(key)) for key, change in changes.items()}
    with pytest.raises(DataError) as info:
        from_npz_bytes(seg_npz(kvasir, **arrays), "bad")
    assert message in str(info.value)


def test_mask_layout_is_refused_from_headers_unread() -> None:
    """Masks declaring a shape other than the images' are refused from the .npy header:
    the member holds 1 KB of its declared 16 GB, so reading it would have said
    'truncated'."""
    lying = npz_streamed({
        **{f"{s}_images": ((4, 32, 32), "uint8", None) for s in ("train", "val", "test")},
        **{f"{s}_masks": ((4, 32, 32), "uint8", None) for s in ("val", "test")},
        "train_masks": ((1_000_000, 128, 128), "uint8", 1024)})
    with pytest.raises(DataError, match=r"train_masks has shape \(1000000, 128, 128\)"):
        from_npz_bytes(lying, "x")


def test_images_only_npz_is_still_unlabelled(kvasir: dict[str, np.ndarray]) -> None:
    ds = from_npz_bytes(npz_bytes(train_images=kvasir["train_images"]), "u")
    assert ds.task is None and not ds.has_masks and summarise(ds)["labelled"] is False


# -- images/ + masks/ folders and zips ---------------------------------------------------------

def test_image_mask_folder_pairs_by_name(kvasir: dict[str, np.ndarray], tmp_path: Path) -> None:
    folder = pairs_folder(tmp_path / "kv", kvasir)
    ds = load_folder(folder)
    assert ds.task == "segmentation" and ds.channels == 3  # detected: the JPEGs are colour
    assert ds.info["mask_classes"] == ["background", "polyp"]  # from dataset.json
    assert ds.info["mask_values"] == "0/255 read as 0/1"
    for s in ("train", "val", "test"):  # the official split, from splits.csv
        order = [list(kvasir[f"{s}_ids"]).index(c) for c in ds.info["cases"][s]["ids"]]
        assert sorted(order) == list(range(len(kvasir[f"{s}_ids"])))
        assert np.array_equal(ds.splits[s].masks.numpy(), kvasir[f"{s}_masks"][order])
    check(ds)
    # The same folder inside a zip, wrapped in a top folder, with a macOS fork beside it.
    zipped = from_zip_bytes(zip_folder(folder, "upload/", {"__MACOSX/._x": b"junk"}), "kv",
                            max_bytes=1 << 26)
    assert summarise(zipped) == summarise(ds)


def test_folder_without_splits_draws_them(kvasir: dict[str, np.ndarray],
                                          tmp_path: Path) -> None:
    ds = load_folder(pairs_folder(tmp_path / "kv", kvasir, splits_csv=False))
    sizes = {s: len(v) for s, v in ds.splits.items()}
    assert sizes == {"train": 14, "val": 2, "test": 4}  # 70/10/20 of 20, seeded
    assert load_folder(tmp_path / "kv").info["cases"] == ds.info["cases"]  # reproducible


def _break(folder: Path, how: str) -> None:
    masks = sorted((folder / "masks").glob("*.png"))
    if how == "missing":
        masks[0].unlink()
    elif how == "size":
        Image.open(masks[0]).resize((64, 64)).save(masks[0])
    elif how == "jpeg":
        Image.open(masks[0]).save(masks[0].with_suffix(".jpg"))
        masks[0].unlink()
    elif how == "rgb":
        Image.open(masks[0]).convert("RGB").save(masks[0])
    elif how == "value":
        values = np.asarray(Image.open(masks[0])) // 255
        Image.fromarray((values * 2).astype(np.uint8)).save(masks[0])
        for m in masks[1:]:
            Image.fromarray((np.asarray(Image.open(m)) // 255).astype(np.uint8)).save(m)


@pytest.mark.parametrize(("how", "message"), [
    ("missing", "1 file(s) in images/ have no counterpart of the same name in masks/"),
    ("size", "is 64x64 pixels but its image is 128x128"),
    ("jpeg", "masks must be PNG"),
    ("rgb", "is a RGB image; a mask is one band of class indices"),
    ("value", "hold the value(s) 2"),
])
def test_bad_folders_are_refused(kvasir: dict[str, np.ndarray], tmp_path: Path, how: str,
                                 message: str) -> None:
    folder = pairs_folder(tmp_path / "kv", kvasir)
    _break(folder, how)
    with pytest.raises(DataError) as info:
        load_folder(folder)
    assert message in str(info.value)
    if how == "value":
        assert "the declared classes are 0 background, 1 polyp" in str(info.value)


def test_zip_entries_may_not_escape(kvasir: dict[str, np.ndarray], tmp_path: Path) -> None:
    folder = pairs_folder(tmp_path / "kv", kvasir)
    for name in ("../masks/evil.png", "/etc/evil.png", "images\\..\\..\\evil.png"):
        with pytest.raises(DataError, match="points outside the archive"):
            from_zip_bytes(zip_folder(folder, extra={name: b"x"}), "kv", max_bytes=1 << 26)


# -- NIfTI ------------------------------------------------------------------------------------

def test_nifti_pairs_are_made_canonical_and_padded(hippocampus: dict[str, np.ndarray],
                                                   tmp_path: Path) -> None:
    """Cases stored RAS, LAS and PIR (axes permuted and flipped) all come back in RAS+
    voxel for voxel, zero-padded (centred) to the largest size, with their original shape
    and offset kept and the spacing from the header."""
    splits = {"train": 4, "val": 1, "test": 2}
    cases = nifti_folder(tmp_path / "hip", hippocampus, splits, spacing=(1.0, 1.0, 1.5))
    ds = load_folder(tmp_path / "hip")
    assert ds.task == "segmentation" and ds.spatial_dims == 3 and ds.channels == 1
    assert ds.info["mask_classes"] == ["background", "Anterior", "Posterior"]
    assert ds.info["spacing"] == [1.0, 1.0, 1.5] and ds.info["orientation"] == "RAS+"
    assert ds.image_size == [42, 52, 40]  # the largest extent on each axis
    for s in splits:
        facts = ds.info["cases"][s]
        for j, case in enumerate(facts["ids"]):
            assert cases[case] == s
            i = list(hippocampus[f"{s}_ids"]).index(case)
            region = tuple(slice(o, o + n) for o, n in zip(facts["pad_offset"][j],
                                                          facts["orig_shape"][j], strict=True))
            assert np.array_equal(ds.splits[s].masks[j].numpy()[region],
                                  crop(hippocampus, s, i, "masks"))
            image = ds.splits[s].images[j, 0].numpy()
            assert image[region].std() > 0 and not image.sum() - image[region].sum()
    check(ds)
    again = from_npz_bytes(to_npz_bytes(ds), "again")  # what a job loads from the store
    assert again.info["cases"] == ds.info["cases"] and again.info["spacing"] == [1.0, 1.0, 1.5]


def _relabel(path: Path, change: str) -> None:
    image = nib.load(path)
    data = np.asanyarray(image.dataobj)
    if change == "shape":
        nib.save(nib.Nifti1Image(data[:-2], image.affine), path)
    elif change == "grid":
        shifted = image.affine.copy()
        shifted[0, 3] += 5.0
        nib.save(nib.Nifti1Image(data, shifted), path)
    elif change == "value":
        nib.save(nib.Nifti1Image((data * 3).astype(np.uint8), image.affine), path)
    elif change == "fraction":
        nib.save(nib.Nifti1Image(data.astype(np.float32) / 2, image.affine), path)


@pytest.mark.parametrize(("change", "messages"), [
    ("shape", ["the label of case 'hippocampus_001' is", "but its image is"]),
    ("grid", ["does not lie on its image's voxel grid"]),
    ("value", ["test masks hold the value(s) 3, 6",
               "the declared classes are 0 background, 1 Anterior, 2 Posterior"]),
    ("fraction", ["fractional values"]),
    ("unpaired", ["have no counterpart of the same name in labelsTr/"]),
    ("4d", ["one 3D volume per file is supported"]),
])
def test_bad_nifti_pairs_are_refused(hippocampus: dict[str, np.ndarray], tmp_path: Path,
                                     change: str, messages: list[str]) -> None:
    root = tmp_path / "hip"
    nifti_folder(root, hippocampus, {"train": 2, "test": 1})
    label = sorted((root / "labelsTr").iterdir())[0]  # hippocampus_001, a test case
    if change == "unpaired":
        label.unlink()
    elif change == "4d":
        image = sorted((root / "imagesTr").iterdir())[0]
        data = np.asanyarray(nib.load(image).dataobj)
        nib.save(nib.Nifti1Image(np.stack([data, data], -1), np.eye(4)), image)
    else:
        _relabel(label, change)
    with pytest.raises(DataError) as info:
        load_folder(root)
    for message in messages:
        assert message in str(info.value)


def test_volumes_without_labels_are_an_unlabelled_set(hippocampus: dict[str, np.ndarray],
                                                       tmp_path: Path) -> None:
    root = tmp_path / "hip"
    nifti_folder(root, hippocampus, {"train": 3})
    shutil.rmtree(root / "labelsTr")
    ds = load_folder(root)
    assert ds.task is None and not ds.has_masks and len(ds.splits["train"]) == 3
    assert ds.image_size == [36, 52, 38]  # padded to the largest of the three
    assert summarise(ds)["labelled"] is False
    stored = from_npz_bytes(to_npz_bytes(ds), "u")  # empty val and test splits survive
    assert stored.info["cases"] == ds.info["cases"] and stored.info["spacing"] == [1, 1, 1]


def _nifti_declaring(path: Path, shape: tuple[int, int, int]) -> None:
    """A .nii.gz whose header declares `shape` float32 voxels but holds 1 KB of them."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.float32)
    header.set_sform(np.eye(4), code=1)
    header["vox_offset"] = 352
    with gzip.open(path, "wb") as fh:
        fh.write(header.binaryblock + bytes(4) + bytes(1024))


@pytest.mark.parametrize(("shapes", "message"), [
    ([(600, 600, 600)], "volumes may be at most 512 voxels along any axis"),
    ([(400, 400, 400)] * 3, "decode to 916 MiB; at most 256 MiB are accepted"),
])
def test_oversized_volumes_are_refused_from_headers_unread(
        tmp_path: Path, shapes: list[tuple[int, int, int]], message: str) -> None:
    """Refused by what the headers declare: decoding these truncated files would have
    failed with 'could not be read' instead."""
    (tmp_path / "imagesTr").mkdir()
    for i, shape in enumerate(shapes):
        _nifti_declaring(tmp_path / "imagesTr" / f"case{i}.nii.gz", shape)
    with pytest.raises(DataError, match=message):
        load_folder(tmp_path, max_bytes=MAX_UPLOAD_DECODED_BYTES)


# -- DICOM ------------------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:The DICOM readers are highly experimental")
def test_real_dicom_series_is_placed_as_its_headers_say() -> None:
    """The pydicom wheel's 5-slice CT series: slices in file order run downwards, HU come
    from the rescale intercept, and every voxel lands where nibabel's own DICOM geometry
    (an independent implementation of PS3.3 C.7.6.2.1.1) puts its pixel."""
    from nibabel.nicom import dicomwrappers

    volume = volumes.read(volumes.probe(CT_SERIES))
    assert volume.data.shape == (16, 16, 5)
    assert volume.spacing == pytest.approx((0.488281, 0.488281, 2.5))
    to_voxel = np.linalg.inv(volume.affine)
    for path in sorted(CT_SERIES.iterdir()):
        ds = pydicom.dcmread(path)
        lps = dicomwrappers.wrapper_from_data(ds).affine  # (row, column) -> LPS mm
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        for r, c in ((0, 0), (3, 11), (15, 15)):
            ras = np.diag([-1, -1, 1, 1]) @ lps @ [r, c, 0, 1]
            i, j, k = np.round(to_voxel @ ras)[:3].astype(int)
            assert np.allclose(to_voxel @ ras, [i, j, k, 1], atol=1e-3)
            assert volume.data[i, j, k] == hu[r, c]
    assert volume.data.min() < -500  # air in HU: the intercept was applied


@pytest.mark.parametrize(("build", "message"), [
    ("gapped", "slices are unevenly spaced"),
    ("mixed", "holds 2 DICOM series"),
    ("junk", "not a readable DICOM file"),
])
def test_bad_dicom_series_are_refused(tmp_path: Path, build: str, message: str) -> None:
    folder = tmp_path / "case"
    shutil.copytree(CT_GAPPED if build == "gapped" else CT_SERIES, folder)
    if build == "mixed":
        shutil.copy(next((DICOM_DIRS / "98892003" / "MR700").iterdir()), folder / "other")
    if build == "junk":
        (folder / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match=message):
        volumes.probe(folder)


def test_dicom_series_dataset_from_real_mri(hippocampus: dict[str, np.ndarray],
                                            tmp_path: Path) -> None:
    """Real MRI written as DICOM series (shuffled file names, per-slice slope and
    intercept, anisotropic spacing) with NIfTI labels: read back voxel for voxel."""
    root, spacing = tmp_path / "dcm", (0.9, 1.1, 2.0)
    (root / "labelsTr").mkdir(parents=True)
    truth = {}
    for s, n in (("train", 3), ("test", 1)):
        for i in range(n):
            case = str(hippocampus[f"{s}_ids"][i])
            volume = crop(hippocampus, s, i, "images")
            dicom_series(root / "imagesTr" / case, volume, spacing)
            affine = np.diag([*spacing, 1.0])
            affine[:3, 3] = (-20.0, 30.0, -15.0)
            nib.save(nib.Nifti1Image(crop(hippocampus, s, i, "masks"), affine),
                     root / "labelsTr" / f"{case}.nii.gz")
            truth[case] = (volume, crop(hippocampus, s, i, "masks"))
    (root / "splits.csv").write_text("filename,split\n" + "".join(
        f"{c},{'test' if c == list(truth)[-1] else 'train'}\n" for c in truth))
    ds = load_folder(root)
    assert ds.info["spacing"] == [0.9, 1.1, 2.0]
    assert ds.info["intensity"] == "as stored (whole numbers within 0..255)"
    for s in ("train", "test"):
        facts = ds.info["cases"][s]
        for j, case in enumerate(facts["ids"]):
            region = tuple(slice(o, o + n) for o, n in zip(facts["pad_offset"][j],
                                                          facts["orig_shape"][j], strict=True))
            assert np.array_equal(ds.splits[s].images[j, 0].numpy()[region], truth[case][0])
            assert np.array_equal(ds.splits[s].masks[j].numpy()[region], truth[case][1])
    check(ds)


# -- thumbnails -------------------------------------------------------------------------------

def test_thumbnails_overlay_the_masks(kvasir: dict[str, np.ndarray],
                                      hippocampus: dict[str, np.ndarray],
                                      tmp_path: Path) -> None:
    import io

    ds = from_npz_bytes(seg_npz(kvasir, mask_classes=np.array(["background", "polyp"])), "kv")
    sheet = Image.open(io.BytesIO(montage(ds)))
    assert sheet.format == "PNG" and sheet.size[0] == 4 * 128
    first = np.asarray(sheet.convert("RGB"))[:128, :128].astype(int)
    mask = kvasir["train_masks"][0] > 0
    image = kvasir["train_images"][0].astype(int)
    assert np.abs(first[mask] - image[mask]).mean() > 20  # tinted where the polyp is
    assert np.abs(first[~mask] - image[~mask]).mean() < 1  # untouched elsewhere
    nifti_folder(tmp_path / "hip", hippocampus, {"train": 2, "test": 1})
    volume_sheet = Image.open(io.BytesIO(montage(load_folder(tmp_path / "hip"))))
    assert volume_sheet.format == "PNG" and volume_sheet.size[1] > 128  # tiles + legend
