"""What a careless or hostile upload found in the segmentation readers (each case gave a
500 or an unusable model before): refused now with a DataError naming the problem."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from tests.zoo.datasets.seg_builders import pairs_folder
from tests.zoo.datasets.test_masks import CT_SERIES
from zoo.datasets import volumes
from zoo.datasets.readers import DataError, load_folder


@pytest.mark.parametrize(("labels", "message"), [
    ({"0": "background", "²": "polyp"}, "labels must map class indices"),  # int("²") fails
    ({"0": "background", "١": "polyp"}, "labels must map class indices"),  # not class 1
    ({"0": "bg", "1": "bg"}, "class names must differ"),
    ({"0": "background", **{str(i): "名" * 90 + str(i) for i in range(1, 40)}},
     "at most 4,096"),
])
def test_dataset_json_class_names(kvasir: dict[str, np.ndarray], tmp_path: Path,
                                  labels: dict[str, str], message: str) -> None:
    folder = pairs_folder(tmp_path / "kv", kvasir)
    (folder / "dataset.json").write_text(json.dumps({"labels": labels}))
    with pytest.raises(DataError, match=message):
        load_folder(folder)


def test_splits_csv_groups_are_ascii_integers(kvasir: dict[str, np.ndarray],
                                              tmp_path: Path) -> None:
    folder = pairs_folder(tmp_path / "kv", kvasir)
    rows = (folder / "splits.csv").read_text().splitlines()
    rows = ["filename,split,group"] + [f"{r},²" for r in rows[1:]]
    (folder / "splits.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match="is not an integer patient id"):
        load_folder(folder)


def _emptied(tmp_path: Path, tag: str) -> Path:
    folder = tmp_path / "case"
    shutil.copytree(CT_SERIES, folder)
    first = sorted(folder.iterdir())[0]
    ds = pydicom.dcmread(first)
    ds[tag].value = None
    ds.save_as(first)
    return folder


def test_dicom_slice_with_empty_rows_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="Rows must be positive whole numbers"):
        volumes.probe(_emptied(tmp_path, "Rows"))


def test_dicom_slice_with_empty_samples_per_pixel_reads_as_gray(tmp_path: Path) -> None:
    # An empty SamplesPerPixel means the default, one sample: the series still reads, or
    # is refused by name; it never escapes as another error.
    try:
        volume = volumes.read(volumes.probe(_emptied(tmp_path, "SamplesPerPixel")))
    except DataError as err:
        assert "Samples per Pixel" in str(err)
    else:
        assert volume.data.ndim == 3
