"""Segmentation datasets over HTTP on real images and masks: npz, image/mask zips, NIfTI
zips and DICOM folders registered by path; summaries with class fractions, the thumbnail
montage and its visibility; refusals that leave nothing behind."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from service.config import Settings
from service.main import create_app
from tests.utils import DATA_DIR
from tests.zoo.datasets.seg_builders import (
    HIPPOCAMPUS,
    crop,
    dicom_series,
    nifti_folder,
    npz_bytes,
    pairs_folder,
    real,
    zip_folder,
)

pytestmark = pytest.mark.anyio
ALICE, BOB, ADMIN = "alice-token-0123456789", "bob-token-0123456789", "admin-token-0123456789"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Settings]]:
    settings = Settings(home=tmp_path / "var", data_dir=DATA_DIR, seed_zoo=False,
                        api_tokens=f"alice={ALICE},bob={BOB}", admin_tokens=ADMIN,
                        max_upload_bytes=16 * 1024 * 1024, worker=False)
    app = create_app(settings)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://testserver") as client:
        yield client, settings


@pytest.fixture(scope="module")
def hippocampus() -> dict[str, np.ndarray]:
    return real(HIPPOCAMPUS, {"train": 3, "val": 1, "test": 1})


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def blobs(home: Path) -> set[str]:
    return {p.name for p in (home / "artifacts" / "blobs").glob("*/*")}


async def upload(client: httpx.AsyncClient, filename: str, data: bytes, name: str,
                 token: str = ALICE, **form: str) -> httpx.Response:
    return await client.post("/v1/datasets", headers=auth(token),
                             files={"file": (filename, data)}, data={"name": name, **form})


def kvasir_npz(data: dict[str, np.ndarray], **change: np.ndarray) -> bytes:
    arrays = {k: v for k, v in data.items() if k.endswith(("_images", "_masks", "_ids"))}
    return npz_bytes(**{**arrays, "mask_classes": np.array(["background", "polyp"]),
                        **change})


async def test_segmentation_npz_summary_and_thumbnails(api, kvasir) -> None:  # noqa: ANN001
    client, _ = api
    r = await upload(client, "kv.npz", kvasir_npz(kvasir), "kvasir", modality="colonoscopy")
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["task"] == "segmentation" and body["mask_classes"] == ["background", "polyp"]
    assert body["labelled"] is True and body["num_classes"] == 0
    assert body["modality"] == "endoscopy" and body["image_size"] == [128, 128]
    train = body["summary"]["splits"]["train"]
    assert train["images"] == 12 and train["masks"]["empty"] == 0
    assert train["masks"]["class_fraction"]["1"] == pytest.approx(
        kvasir["train_masks"].mean(), abs=1e-6)
    png = await client.get(f"/v1/datasets/{body['id']}/thumbnails.png", headers=auth(ALICE))
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(png.content)).format == "PNG"
    assert png.headers["etag"] == f'"{body["summary"]["thumbnails"]["sha256"]}"'
    # The owner's and an admin's; to anyone else it does not exist.
    assert (await client.get(f"/v1/datasets/{body['id']}/thumbnails.png",
                             headers=auth(ADMIN))).status_code == 200
    other = await client.get(f"/v1/datasets/{body['id']}/thumbnails.png", headers=auth(BOB))
    assert other.status_code == 404 and "no dataset" in other.text
    assert (await client.get(f"/v1/datasets/{body['id']}/thumbnails.png")).status_code == 401
    assert (await client.get("/v1/datasets/999/thumbnails.png",
                             headers=auth(ALICE))).status_code == 404


async def test_image_mask_zip_is_stored_for_jobs(api, kvasir, tmp_path) -> None:  # noqa: ANN001
    """A zip of images/ + masks/ (colour detected, 0/255 masks read as 0/1) is stored as
    one canonical npz that the job runner loads back with its masks."""
    from zoo.datasets.readers import load_npz

    client, settings = api
    data = zip_folder(pairs_folder(tmp_path / "kv", kvasir), "Kvasir-subset/")
    r = await upload(client, "kv.zip", data, "kv-zip")
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["kind"] == "folder" and body["channels"] == 3
    assert body["summary"]["mask_values"] == "0/255 read as 0/1"
    stored = load_npz(settings.home / "artifacts" / "blobs" / body["sha256"][:2]
                      / body["sha256"], body["name"])
    assert stored.task == "segmentation" and stored.info["mask_classes"] == ["background",
                                                                             "polyp"]
    ids = stored.info["cases"]["test"]["ids"]
    order = [list(kvasir["test_ids"]).index(c) for c in ids]
    assert np.array_equal(stored.splits["test"].masks.numpy(), kvasir["test_masks"][order])


async def test_nifti_zip_upload(api, hippocampus, tmp_path) -> None:  # noqa: ANN001
    client, _ = api
    nifti_folder(tmp_path / "Task04", hippocampus, {"train": 3, "val": 1, "test": 1},
                 spacing=(1.0, 1.0, 1.2))
    r = await upload(client, "Task04.zip", zip_folder(tmp_path / "Task04", "Task04/"), "hip",
                     modality="MR")
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["spatial_dims"] == 3 and body["task"] == "segmentation"
    assert body["mask_classes"] == ["background", "Anterior", "Posterior"]
    summary = body["summary"]
    assert summary["spacing"] == [1.0, 1.0, 1.2] and summary["orientation"] == "RAS+"
    assert set(summary["splits"]["train"]["masks"]["class_fraction"]) == {"0", "1", "2"}
    png = await client.get(f"/v1/datasets/{body['id']}/thumbnails.png", headers=auth(ALICE))
    assert png.status_code == 200


async def test_dicom_folder_registered_by_path_loads_for_jobs(
        api, hippocampus) -> None:  # noqa: ANN001
    """DICOM series with NIfTI labels under bob's own folder: registered by path, and read
    again from there the way the job runner reads path datasets."""
    from service.jobs.runner import load_job_dataset
    from zoo.catalog import DatasetRow
    from zoo.storage import BlobStore

    client, settings = api
    root = settings.home / "datasets" / "bob" / "hip-dicom"
    (root / "labelsTr").mkdir(parents=True)
    spacing = (0.9, 1.1, 2.0)
    for s in ("train", "val", "test"):
        case = str(hippocampus[f"{s}_ids"][0])
        dicom_series(root / "imagesTr" / case, crop(hippocampus, s, 0, "images"), spacing)
        affine = np.diag([*spacing, 1.0])
        affine[:3, 3] = (-20.0, 30.0, -15.0)
        nib.save(nib.Nifti1Image(crop(hippocampus, s, 0, "masks"), affine),
                 root / "labelsTr" / f"{case}.nii.gz")
    (root / "splits.csv").write_text("filename,split\n" + "".join(
        f"{hippocampus[f'{s}_ids'][0]},{s}\n" for s in ("train", "val", "test")))
    r = await client.post("/v1/datasets", headers=auth(BOB),
                          json={"name": "hip-dicom", "path": str(root), "modality": "mri"})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["kind"] == "path" and body["summary"]["spacing"] == [0.9, 1.1, 2.0]
    row = DatasetRow(kind="path", path=body["path"], name=body["name"])
    again = load_job_dataset(row, BlobStore(settings.home / "artifacts"))
    assert again.task == "segmentation" and again.info["spacing"] == [0.9, 1.1, 2.0]
    assert again.info["cases"]["val"]["ids"] == [str(hippocampus["val_ids"][0])]


def _mismatched_npz(kvasir: dict[str, np.ndarray]) -> bytes:
    return kvasir_npz(kvasir, val_masks=kvasir["val_masks"][:, :64, :64])


def _out_of_range_npz(kvasir: dict[str, np.ndarray]) -> bytes:
    masks = kvasir["train_masks"].copy()
    masks[3] *= 4
    return kvasir_npz(kvasir, train_masks=masks)


@pytest.mark.parametrize(("payload", "filename", "message"), [
    ("shape", "bad.npz", "val_masks has shape (4, 64, 64); expected one mask per image"),
    ("range", "bad.npz", "train masks hold the value(s) 4"),
    ("escape", "bad.zip", "points outside the archive"),
    ("unpaired", "bad.zip", "have no counterpart of the same name in masks/"),
])
async def test_refused_segmentation_uploads_leave_nothing(
        api, kvasir, tmp_path, payload: str, filename: str,  # noqa: ANN001
        message: str) -> None:
    client, settings = api
    folder = pairs_folder(tmp_path / "kv", kvasir)
    if payload == "unpaired":
        next((folder / "masks").iterdir()).unlink()
    data = (_mismatched_npz(kvasir) if payload == "shape" else
            _out_of_range_npz(kvasir) if payload == "range" else
            zip_folder(folder, extra={"../../escape.png": b"x"} if payload == "escape"
                       else None))
    before = blobs(settings.home)
    r = await upload(client, filename, data, f"bad-{payload}")
    assert r.status_code == 422, r.text
    assert message in json.dumps(r.json())
    if payload == "range":
        assert "the declared classes are 0 background, 1 polyp" in r.text
    assert blobs(settings.home) == before
    assert (await client.get("/v1/datasets", headers=auth(ADMIN))).json()["count"] == 0


async def test_thumbnails_route_is_in_openapi(api) -> None:  # noqa: ANN001
    client, _ = api
    spec = (await client.get("/openapi.json")).json()
    route = spec["paths"]["/v1/datasets/{dataset_id}/thumbnails.png"]["get"]
    assert "image/png" in route["responses"]["200"]["content"]
    assert {"401", "404"} <= set(route["responses"])
    public = spec["components"]["schemas"]["DatasetPublic"]["properties"]
    assert {"task", "mask_classes"} <= set(public)
