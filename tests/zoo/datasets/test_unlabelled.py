"""Unlabelled datasets (images only, for pretraining) from real MedMNIST images: npz files
with `*_images` keys only, folders and zips without labels.csv; the header-first memory
bounds hold for these forms too."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.utils import DATA_DIR, png_bytes
from tests.zoo.datasets.test_upload_memory import npz_streamed, png_declaring
from zoo.datasets import readers
from zoo.datasets.ingest import from_npz_bytes, from_zip_bytes, summarise, to_npz_bytes
from zoo.datasets.readers import DataError, load_folder, load_npz

BREAST = DATA_DIR / "medmnist" / "breastmnist.npz"


@pytest.fixture(scope="module")
def breast() -> dict[str, np.ndarray]:
    if not BREAST.exists():
        pytest.skip(f"real data not found at {BREAST}")
    with np.load(BREAST) as data:
        return {k: data[k] for k in data.files}


def npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def test_npz_of_train_images_only(breast: dict[str, np.ndarray]) -> None:
    ds = from_npz_bytes(npz(train_images=breast["train_images"]), "breast-u")
    assert not ds.labelled and ds.num_classes == 0 and list(ds.splits) == ["train"]
    assert ds.splits["train"].labels is None and len(ds.splits["train"]) == 546
    assert np.array_equal(ds.splits["train"].images[:, 0].numpy(), breast["train_images"])
    summary = summarise(ds)
    assert summary["labelled"] is False and summary["num_classes"] == 0
    assert summary["splits"] == {"train": {"images": 546}}  # no class counts
    # The stored canonical form reads back the same, still without labels.
    again = from_npz_bytes(to_npz_bytes(ds), "again")
    assert summarise(again) == summary
    assert np.array_equal(again.splits["train"].images.numpy(),
                          ds.splits["train"].images.numpy())


def test_npz_with_val_and_test_images_and_groups(breast: dict[str, np.ndarray],
                                                 tmp_path: Path) -> None:
    path = tmp_path / "u.npz"
    groups = np.arange(546) // 3
    path.write_bytes(npz(train_images=breast["train_images"], val_images=breast["val_images"],
                         test_images=breast["test_images"], train_groups=groups))
    ds = load_npz(path)
    assert not ds.labelled
    assert {s: len(v) for s, v in ds.splits.items()} == {"train": 546, "val": 78, "test": 156}
    assert ds.splits["train"].groups.tolist() == groups.tolist()


@pytest.mark.parametrize(("keys", "message"), [
    # Some labels given: a labelled file, which needs all of them.
    ({"train_images", "train_labels"}, "lacks ['val_images', 'val_labels', 'test_images'"),
    ({"train_images", "val_images", "val_labels"}, "lacks ['train_labels'"),
    ({"val_images", "test_images"}, "lacks ['train_images']"),
])
def test_incomplete_npz_is_refused(breast: dict[str, np.ndarray], keys: set[str],
                                   message: str) -> None:
    with pytest.raises(DataError, match="or images only") as info:
        from_npz_bytes(npz(**{k: breast[k] for k in keys}), "x")
    assert message in str(info.value)


def test_unlabelled_npz_is_refused_from_its_headers() -> None:
    """train_images alone declaring 262 GB (holding 1 KB) is refused by its declared size,
    before any data is read; a wrong dtype or shape likewise."""
    lying = npz_streamed({"train_images": ((1_000_000, 512, 512), "uint8", 1024)})
    with pytest.raises(DataError, match="decompressed"):
        from_npz_bytes(lying, "x")
    rng = np.random.default_rng(0)
    with pytest.raises(DataError, match="expected uint8"):
        from_npz_bytes(npz(train_images=rng.random((4, 28, 28))), "x")
    with pytest.raises(DataError, match="disagree on image shape"):
        from_npz_bytes(npz(train_images=np.zeros((4, 28, 28), np.uint8),
                           val_images=np.zeros((4, 32, 32), np.uint8)), "x")
    with pytest.raises(DataError, match="one group id per train image"):
        from_npz_bytes(npz(train_images=np.zeros((4, 28, 28), np.uint8),
                           train_groups=np.zeros(3, np.int64)), "x")
    with pytest.raises(DataError, match="at least 2 train images"):
        from_npz_bytes(npz(train_images=np.zeros((1, 28, 28), np.uint8)), "x")


def test_folder_without_labels_csv(breast: dict[str, np.ndarray], tmp_path: Path) -> None:
    images = breast["test_images"][:12]
    for i, im in enumerate(images):
        sub = tmp_path / ("a" if i % 2 else "b")
        sub.mkdir(exist_ok=True)
        (sub / f"{i:02d}.png").write_bytes(png_bytes(im))
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden.png").write_bytes(b"not an image either")
    ds = load_folder(tmp_path)
    assert not ds.labelled and list(ds.splits) == ["train"] and len(ds.splits["train"]) == 12
    # Sorted relative paths: a/01.png, a/03.png, ..., b/00.png, ...
    order = sorted(range(12), key=lambda i: f"{'a' if i % 2 else 'b'}/{i:02d}.png")
    assert np.array_equal(ds.splits["train"].images[:, 0].numpy(), images[order])
    # An explicit labels CSV that does not exist is still an error, not an unlabelled set.
    with pytest.raises(DataError, match="no labels CSV"):
        load_folder(tmp_path, tmp_path / "labels.csv")
    (tmp_path / "b" / "00.png").write_bytes(b"broken")
    with pytest.raises(DataError, match="b/00.png: not a readable image"):
        load_folder(tmp_path)


def test_folder_without_images_or_too_many(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DataError, match="no labels.csv and no PNG or JPEG images"):
        load_folder(tmp_path)
    for i in range(4):
        (tmp_path / f"{i}.png").write_bytes(png_declaring(8, 8))
    monkeypatch.setattr(readers, "MAX_ROWS", 3)  # listing stops at the row limit
    with pytest.raises(DataError, match="more than 3 images"):
        load_folder(tmp_path)


def zip_of(pngs: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in pngs.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_zip_without_labels_csv(breast: dict[str, np.ndarray]) -> None:
    images = breast["val_images"][:10]
    data = zip_of({f"imgs/{i}.png": png_bytes(im) for i, im in enumerate(images)}
                  | {"__MACOSX/imgs/._0.png": b"resource fork"})
    ds = from_zip_bytes(data, "xr-u", max_bytes=1 << 24)
    assert ds.name == "xr-u" and not ds.labelled and len(ds.splits["train"]) == 10
    assert summarise(ds)["splits"] == {"train": {"images": 10}}
    stored = from_npz_bytes(to_npz_bytes(ds), "stored")
    assert not stored.labelled and len(stored.splits["train"]) == 10


def test_zip_without_labels_csv_is_refused_from_image_headers() -> None:
    """Image sizes come from headers before any pixel is decoded, as with labels.csv."""
    with pytest.raises(DataError, match="10000x10000 pixels; images may be at most"):
        from_zip_bytes(zip_of({"a.png": png_declaring(8, 8),
                               "b.png": png_declaring(10000, 10000)}), "x", 1 << 26)
    with pytest.raises(DataError, match="decode to"):
        from_zip_bytes(zip_of({f"{i}.png": png_declaring(64, 64) for i in range(20)}), "x",
                       1 << 26, max_decoded=20 * 64 * 64 - 1)
