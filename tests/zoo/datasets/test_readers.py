from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from tests.utils import DATA_DIR, medmnist, png_bytes
from zoo.datasets.readers import DataError, fetch, load_dataset, load_folder, load_npz, registry


@pytest.fixture(autouse=True)
def _need_data() -> None:
    if not (DATA_DIR / "medmnist").exists():
        pytest.skip(f"real data not found at {DATA_DIR}")


@pytest.mark.parametrize(("name", "shape", "classes"), [
    ("pneumoniamnist", (1, 28, 28), 2),
    ("retinamnist", (3, 28, 28), 5),
    ("adrenalmnist3d", (1, 28, 28, 28), 2),
    ("bccd_28", (3, 28, 28), 3),
])
def test_real_files_load_with_official_splits(name: str, shape: tuple, classes: int) -> None:
    ds = load_dataset(name, DATA_DIR)
    info = registry()[name]
    assert tuple(ds.splits["train"].images.shape[1:]) == shape
    assert ds.num_classes == classes and ds.channels == info["channels"]
    if name == "pneumoniamnist":
        assert [len(ds.splits[s]) for s in ("train", "val", "test")] == [4708, 524, 624]


def test_md5_mismatch_is_refused(tmp_path: Path) -> None:
    src = DATA_DIR / "medmnist" / "breastmnist.npz"
    with pytest.raises(DataError, match="MD5"):
        load_npz(src, "breastmnist", verify_md5="0" * 32)


def test_missing_file_and_offline_download_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="TASKALIGN_DATA_DIR"):
        load_dataset("breastmnist", tmp_path)
    with pytest.raises(DataError, match="could not download breastmnist") as info:
        fetch("breastmnist", tmp_path, timeout=5)
    assert "copy medmnist/breastmnist.npz" in str(info.value)
    assert not list(tmp_path.rglob("*.part")) and not list(tmp_path.rglob("*.npz"))
    with pytest.raises(DataError, match="no official download"):
        fetch("bccd_28", tmp_path)


def test_bad_npz_is_explained(tmp_path: Path) -> None:
    bad = tmp_path / "bad.npz"
    np.savez(bad, val_images=np.zeros((2, 28, 28), np.uint8))  # images only, but no train
    with pytest.raises(DataError, match=r"lacks \['train_images'\]"):
        load_npz(bad)
    wrong = tmp_path / "wrong.npz"
    arrays = {f"{s}_{k}": (np.zeros((2, 28, 28), np.float32) if k == "images"
                           else np.zeros((2, 1), np.uint8))
              for s in ("train", "val", "test") for k in ("images", "labels")}
    np.savez(wrong, **arrays)
    with pytest.raises(DataError, match="dtype"):
        load_npz(wrong)


def test_folder_with_labels_csv(tmp_path: Path) -> None:
    images, labels = medmnist("pneumoniamnist", split="test", n=20)
    rows = []
    for i, (im, y) in enumerate(zip(images, labels[:, 0], strict=True)):
        (tmp_path / f"img{i}.png").write_bytes(png_bytes(im))
        rows.append({"filename": f"img{i}.png", "label": ["normal", "pneumonia"][int(y)],
                     "split": "test" if i < 5 else "train", "group": str(i // 2)})
    with open(tmp_path / "labels.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["filename", "label", "split", "group"])
        writer.writeheader()
        writer.writerows(rows)
    ds = load_folder(tmp_path)
    assert len(ds.splits["test"]) == 5 and len(ds.splits["train"]) == 15
    assert ds.splits["train"].images.shape[1:] == (1, 28, 28)
    assert np.array_equal(ds.splits["test"].images[0, 0].numpy(), images[0])
    with open(tmp_path / "labels.csv", "a", newline="") as fh:
        fh.write("../escape.png,normal,train,9\n")
    with pytest.raises(DataError, match="leaves the dataset folder"):
        load_folder(tmp_path)
