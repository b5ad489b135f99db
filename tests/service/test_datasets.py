"""Dataset uploads over the ASGI app with real files; refusals leave nothing behind."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.config import Settings
from service.main import create_app
from tests.utils import DATA_DIR, medmnist, png_bytes, user_dataset

pytestmark = pytest.mark.anyio
ALICE, BOB, ADMIN = "alice-token-0123456789", "bob-token-0123456789", "admin-token-0123456789"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Path]]:
    settings = Settings(home=tmp_path / "var", data_dir=DATA_DIR, seed_zoo=False,
                        api_tokens=f"alice={ALICE},bob={BOB}", admin_tokens=ADMIN,
                        max_upload_bytes=8 * 1024 * 1024, worker=False)
    app = create_app(settings)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://testserver") as client:
        yield client, settings.home


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def state(home: Path) -> set[str]:
    return {p.name for p in (home / "artifacts" / "blobs").glob("*/*")}


async def rows(client: httpx.AsyncClient) -> int:
    return (await client.get("/v1/datasets", headers=auth(ADMIN))).json()["count"]


def zip_of_images(n: int = 24, extra: dict[str, bytes] | None = None) -> bytes:
    images, labels = medmnist("pneumoniamnist", split="test", n=n)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["filename", "label", "split"])
        for i, (im, y) in enumerate(zip(images, labels[:, 0], strict=True)):
            zf.writestr(f"imgs/{i}.png", png_bytes(im))
            writer.writerow([f"imgs/{i}.png", ["normal", "pneumonia"][int(y)],
                             "test" if i % 4 == 0 else "train"])
        zf.writestr("labels.csv", out.getvalue())
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return buf.getvalue()


async def test_upload_real_npz_and_summary(api) -> None:  # noqa: ANN001
    client, _ = api
    data = (DATA_DIR / "medmnist" / "breastmnist.npz").read_bytes()
    r = await client.post("/v1/datasets", headers=auth(ALICE),
                          files={"file": ("breastmnist.npz", data)},
                          data={"name": "breast", "modality": "US"})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["modality"] == "ultrasound" and body["kind"] == "npz"
    splits = body["summary"]["splits"]
    assert [splits[s]["images"] for s in ("train", "val", "test")] == [546, 78, 156]
    assert splits["train"]["per_class"] == {"0": 147, "1": 399}
    got = await client.get(f"/v1/datasets/{body['id']}", headers=auth(ALICE))
    assert got.json()["image_size"] == [28, 28] and got.json()["channels"] == 1
    # RFC 3339 with a zone, on SQLite too (it stores none)
    assert got.json()["created_at"].endswith(("Z", "+00:00"))


async def test_upload_zip_of_images(api) -> None:  # noqa: ANN001
    client, _ = api
    r = await client.post("/v1/datasets", headers=auth(ALICE),
                          files={"file": ("xr.zip", zip_of_images())}, data={"name": "xr"})
    assert r.status_code == 201, r.text
    s = r.json()["summary"]
    assert s["splits"]["train"]["images"] == 18 and s["splits"]["test"]["images"] == 6
    assert s["labels"] == ["normal", "pneumonia"]


@pytest.mark.parametrize(("filename", "payload", "message"), [
    ("evil.zip", "traversal", "outside the archive"),
    ("bomb.zip", "bomb", "zip bomb"),
    ("float.npz", "float", "dtype"),
    ("keys.npz", "keys", "lacks"),
    ("oneclass.npz", "oneclass", "train lacks classes"),
    ("data.csv", "csv", "upload a .npz"),
    ("fake.npz", "fake", "not an npz"),
])
async def test_refused_uploads_leave_nothing(api, filename: str, payload: str,  # noqa: ANN001
                                             message: str) -> None:
    client, home = api
    if payload == "traversal":
        data = zip_of_images(extra={"../../escape.txt": b"x"})
    elif payload == "bomb":
        data = zip_of_images(extra={"zeros.bin": b"\0" * (6 * 1024 * 1024)})
    elif payload in ("float", "keys", "oneclass"):
        arrays = {f"{s}_{k}": (np.zeros((4, 28, 28), np.uint8) if k == "images"
                               else np.array([[0], [1], [0], [1]], np.uint8))
                  for s in ("train", "val", "test") for k in ("images", "labels")}
        if payload == "float":
            arrays["train_images"] = arrays["train_images"].astype(np.float32)
        if payload == "keys":
            del arrays["val_labels"]
        if payload == "oneclass":
            arrays["train_labels"] = np.array([[0], [0], [0], [0]], np.uint8)
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        data = buf.getvalue()
    else:
        data = b"not,a,dataset\n"
    before_blobs, before_rows = state(home), await rows(client)
    r = await client.post("/v1/datasets", headers=auth(ALICE),
                          files={"file": (filename, data)}, data={"name": f"bad-{payload}"})
    assert r.status_code == 422, r.text
    assert message in json.dumps(r.json())
    assert state(home) == before_blobs and await rows(client) == before_rows


async def test_oversize_and_token(api) -> None:  # noqa: ANN001
    client, home = api
    big = b"PK" + b"\0" * (9 * 1024 * 1024)
    r = await client.post("/v1/datasets", headers=auth(ALICE),
                          files={"file": ("big.npz", big)}, data={"name": "big"})
    assert r.status_code == 413
    r = await client.post("/v1/datasets", files={"file": ("x.npz", b"PK")}, data={"name": "x"})
    assert r.status_code == 401
    assert (await client.get("/v1/datasets")).status_code == 401
    assert state(home) == set()


async def test_register_path_inside_data_dir_only(api, tmp_path: Path) -> None:  # noqa: ANN001
    """An admin registers paths under the data dir; any other user only under their own
    TASKALIGN_HOME/datasets/<name>/, never under the data dir or another user's folder."""
    client, home = api
    source = DATA_DIR / "medmnist" / "pneumoniamnist.npz"
    ok = await client.post("/v1/datasets", headers=auth(ADMIN), json={
        "name": "pneumonia", "path": str(source), "modality": "cxr"})
    assert ok.status_code == 201, ok.text
    assert ok.json()["kind"] == "path" and ok.json()["modality"] == "xray"
    mine = user_dataset(home, "bob", source)
    ok = await client.post("/v1/datasets", headers=auth(BOB), json={
        "name": "pneumonia", "path": str(mine), "modality": "cxr"})
    assert ok.status_code == 201, ok.text
    assert ok.json()["kind"] == "path" and ok.json()["modality"] == "xray"
    outside = tmp_path / "x.npz"
    outside.write_bytes((DATA_DIR / "medmnist" / "breastmnist.npz").read_bytes())
    theirs = user_dataset(home, "alice", DATA_DIR / "medmnist" / "breastmnist.npz")
    before = await rows(client)
    for path in (outside, source, theirs, home / "datasets" / "bob" / ".." / "alice"):
        bad = await client.post("/v1/datasets", headers=auth(BOB),
                                json={"name": "sneaky", "path": str(path)})
        assert bad.status_code == 422, (path, bad.text)
        assert "must lie under" in json.dumps(bad.json())
        assert str(home / "datasets" / "bob") in json.dumps(bad.json())  # where they may
    assert await rows(client) == before


async def test_owners_see_their_own(api) -> None:  # noqa: ANN001
    client, _ = api
    data = (DATA_DIR / "medmnist" / "breastmnist.npz").read_bytes()
    a = await client.post("/v1/datasets", headers=auth(ALICE),
                          files={"file": ("b.npz", data)}, data={"name": "mine"})
    dup = await client.post("/v1/datasets", headers=auth(ALICE),
                            files={"file": ("b.npz", data)}, data={"name": "mine"})
    assert dup.status_code == 409
    assert dup.json()["detail"] == [{"loc": ["body", "name"], "type": "invalid_dataset",
                                     "msg": "you already have a dataset named 'mine'"}]
    other = await client.post("/v1/datasets", headers=auth(BOB),
                              files={"file": ("b.npz", data)}, data={"name": "mine"})
    assert other.status_code == 201
    assert (await client.get("/v1/datasets", headers=auth(ALICE))).json()["count"] == 1
    assert (await client.get(f"/v1/datasets/{other.json()['id']}",
                             headers=auth(ALICE))).status_code == 404
    assert (await client.get(f"/v1/datasets/{a.json()['id']}",
                             headers=auth(ADMIN))).status_code == 200
    assert (await client.get("/v1/datasets", headers=auth(ADMIN))).json()["count"] == 2


def npz_with_labels(train_labels: np.ndarray, allow_pickle: bool = False) -> bytes:
    arrays = {f"{s}_images": np.zeros((4, 28, 28), np.uint8) for s in ("train", "val", "test")}
    arrays.update({f"{s}_labels": np.array([[0], [1], [0], [1]], np.uint8)
                   for s in ("val", "test")})
    arrays["train_labels"] = train_labels
    buf = io.BytesIO()
    np.savez(buf, **arrays, allow_pickle=allow_pickle)
    return buf.getvalue()


@pytest.mark.parametrize(("labels", "message"), [
    (np.array([[0], [1], [np.nan], [1]], np.float32), "NaN or infinite"),
    (np.array([[0], [1], [np.inf], [1]], np.float64), "NaN or infinite"),
    (np.array([[0], [1], [0.5], [1]], np.float32), "fractional"),
    (np.array([[0], [1], [-1], [1]], np.int64), "negative"),
    (np.array([[0], [1], [np.iinfo(np.int64).min], [1]], np.int64), "negative"),
    (np.array([[0], [1], [5_000_000], [1]], np.int64), "at most 1000 classes"),
    (np.array([[0], [1], [2**63 + 5], [1]], np.uint64), "at most 1000 classes"),
    (np.array([["a"], ["b"], ["a"], ["b"]]), "labels must be integer class indices"),
    (np.array([[0], [1], [0], [1]], dtype=object), "object and string arrays are refused"),
])
async def test_impossible_labels_are_refused_briefly(api, labels: np.ndarray,  # noqa: ANN001
                                                     message: str) -> None:
    client, home = api
    data = npz_with_labels(labels, allow_pickle=labels.dtype == object)
    r = await client.post("/v1/datasets", headers=auth(ALICE),
                          files={"file": ("l.npz", data)}, data={"name": "labels"})
    assert r.status_code == 422, r.text
    assert message in r.text and len(r.content) < 2000
    assert await rows(client) == 0 and state(home) == set()


async def test_float_labels_that_are_whole_numbers_are_accepted(api) -> None:  # noqa: ANN001
    client, _ = api
    labels = np.array([[0.0], [1.0], [0.0], [1.0]], np.float32)
    r = await client.post("/v1/datasets", headers=auth(ALICE),
                          files={"file": ("l.npz", npz_with_labels(labels))},
                          data={"name": "whole"})
    assert r.status_code == 201, r.text
    assert r.json()["summary"]["splits"]["train"]["per_class"] == {"0": 2, "1": 2}


@pytest.mark.parametrize(("row", "message"), [
    (["imgs/0.png", "", "train"], "line 2: empty label"),
    (["", "normal", "train"], "line 2: empty filename"),
    (["imgs/0.png", "normal", "training"], "line 2: split 'training'"),
])
async def test_bad_labels_csv_rows_are_named(api, row: list[str],  # noqa: ANN001
                                             message: str) -> None:
    client, _ = api
    images, _ = medmnist("pneumoniamnist", split="test", n=4)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i, im in enumerate(images):
            zf.writestr(f"imgs/{i}.png", png_bytes(im))
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["filename", "label", "split"])
        writer.writerow(row)
        for i in range(1, 4):
            writer.writerow([f"imgs/{i}.png", ["normal", "pneumonia"][i % 2], "train"])
        zf.writestr("labels.csv", out.getvalue())
    r = await client.post("/v1/datasets", headers=auth(ALICE),
                          files={"file": ("x.zip", buf.getvalue())}, data={"name": "csv"})
    assert r.status_code == 422 and message in r.text, r.text


def unlabelled_npz(**extra: np.ndarray) -> bytes:
    """BreastMNIST's train images with every labels array taken out."""
    with np.load(DATA_DIR / "medmnist" / "breastmnist.npz") as data:
        arrays = {"train_images": data["train_images"], **extra}
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


async def test_unlabelled_npz_and_zip_uploads(api) -> None:  # noqa: ANN001
    client, _ = api
    r = await client.post("/v1/datasets", headers=auth(ALICE),
                          files={"file": ("u.npz", unlabelled_npz())},
                          data={"name": "breast-u", "modality": "ultrasound"})
    assert r.status_code == 201, r.text
    got = (await client.get(f"/v1/datasets/{r.json()['id']}", headers=auth(ALICE))).json()
    assert got["labelled"] is False and got["num_classes"] == 0
    assert got["summary"]["labelled"] is False
    assert got["summary"]["splits"] == {"train": {"images": 546}}  # no class counts
    images, _ = medmnist("pneumoniamnist", split="test", n=9)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i, im in enumerate(images):
            zf.writestr(f"scans/{i}.png", png_bytes(im))
    r = await client.post("/v1/datasets", headers=auth(ALICE),
                          files={"file": ("u.zip", buf.getvalue())}, data={"name": "xr-u"})
    assert r.status_code == 201, r.text
    assert r.json()["labelled"] is False
    assert r.json()["summary"]["splits"] == {"train": {"images": 9}}
    # A labelled upload says it is labelled.
    data = (DATA_DIR / "medmnist" / "breastmnist.npz").read_bytes()
    r = await client.post("/v1/datasets", headers=auth(ALICE),
                          files={"file": ("b.npz", data)}, data={"name": "breast"})
    assert r.json()["labelled"] is True and r.json()["summary"]["labelled"] is True


async def test_unlabelled_folder_by_path(api) -> None:  # noqa: ANN001
    client, home = api
    folder = home / "datasets" / "bob" / "scans"
    folder.mkdir(parents=True)
    images, _ = medmnist("breastmnist", split="val", n=6)
    for i, im in enumerate(images):
        (folder / f"{i}.png").write_bytes(png_bytes(im))
    r = await client.post("/v1/datasets", headers=auth(BOB),
                          json={"name": "scans", "path": str(folder)})
    assert r.status_code == 201, r.text
    assert r.json()["labelled"] is False and r.json()["kind"] == "path"
    assert r.json()["summary"]["splits"] == {"train": {"images": 6}}


async def test_half_labelled_npz_is_refused(api) -> None:  # noqa: ANN001
    client, home = api
    labels = np.zeros((546, 1), np.uint8)
    r = await client.post("/v1/datasets", headers=auth(ALICE),
                          files={"file": ("h.npz", unlabelled_npz(train_labels=labels))},
                          data={"name": "half"})
    assert r.status_code == 422 and "lacks ['val_images', 'val_labels'" in r.text, r.text
    assert await rows(client) == 0 and state(home) == set()
