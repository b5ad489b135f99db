"""The zoo end to end over real HTTP: upload, list, download with Range/ETag, ONNX parity
on real MedMNIST images, embed, refused uploads, and matching in recommendations."""

from __future__ import annotations

import hashlib
import io
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from safetensors.torch import load as load_safetensors

from tests.conftest import Server
from tests.utils import card, medmnist, npy_bytes, png_bytes, repo, upload_files, weights
from zoo.architectures import build_encoder
from zoo.export import onnx_session

TOKEN = "test-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
NAME_2D = "resnet18-2d.test-pneumoniamnist"
NAME_3D = "resnet10-3d.test-adrenalmnist3d"
REPO_2D, REPO_3D = repo(NAME_2D), repo(NAME_3D)  # admin uploads land under taskalign/


@pytest.fixture(scope="module")
def zoo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    home = tmp_path_factory.mktemp("zoo")
    server = Server(home, TASKALIGN_ADMIN_TOKENS=TOKEN, TASKALIGN_API_TOKENS="",
                    TASKALIGN_MAX_UPLOAD_BYTES=str(2 * 1024 * 1024))
    cards = {NAME_2D: card(NAME_2D, dims=2), NAME_3D: card(NAME_3D, dims=3)}
    blobs = {name: weights(c, seed=3) for name, c in cards.items()}
    for name, c in cards.items():
        r = httpx.post(f"{server.url}/v1/encoders", files=upload_files(c, blobs[name]),
                       headers=AUTH, timeout=120)
        assert r.status_code == 201, r.text
    yield {"url": server.url, "home": home, "cards": cards, "weights": blobs}
    server.stop()


def blob_files(home: Path) -> set[str]:
    return {p.name for p in (home / "artifacts" / "blobs").glob("*/*")}


def test_list_filters_and_detail(zoo_server: dict[str, Any]) -> None:
    url = zoo_server["url"]
    body = httpx.get(f"{url}/v1/encoders").json()
    assert body["count"] == 2 and {e["name"] for e in body["data"]} == {REPO_2D, REPO_3D}
    assert {(e["owner"], e["private"]) for e in body["data"]} == {("taskalign", False)}
    only = httpx.get(f"{url}/v1/encoders", params={"dims": 3}).json()
    assert [e["name"] for e in only["data"]] == [REPO_3D]
    assert httpx.get(f"{url}/v1/encoders", params={"method": "simclr"}).json()["count"] == 1
    assert httpx.get(f"{url}/v1/encoders", params={"modality": "mri"}).json()["count"] == 0
    assert httpx.get(f"{url}/v1/encoders", params={"q": "ADRENAL"}).json()["count"] == 1
    assert httpx.get(f"{url}/v1/encoders", params={"owner": "taskalign"}).json()["count"] == 2
    assert httpx.get(f"{url}/v1/encoders", params={"owner": "alice"}).json()["count"] == 0
    detail = httpx.get(f"{url}/v1/encoders/{REPO_2D}").json()
    assert detail["name"] == detail["card"]["repo_id"] == REPO_2D
    assert detail["card"]["name"] == NAME_2D
    assert detail["card"]["pretext"]["family"] == "contrastive_global"
    assert detail["card"]["feature_dim"] == 64
    files = detail["revisions"][0]["files"]
    assert set(files) == {"config.json", "README.md", "model.safetensors", "model.onnx"}
    missing = httpx.get(f"{url}/v1/encoders/taskalign/resnet18-2d.test-pneumoniamnst")
    assert missing.status_code == 404 and f"did you mean '{REPO_2D}'" in missing.json()["detail"]
    bare = httpx.get(f"{url}/v1/encoders/{NAME_2D}")  # a link from before owners existed
    assert bare.status_code == 404 and f"did you mean '{REPO_2D}'" in bare.json()["detail"]


def test_download_range_etag_304(zoo_server: dict[str, Any]) -> None:
    url = f"{zoo_server['url']}/v1/encoders/{REPO_2D}/files/model.safetensors"
    full = httpx.get(url)
    assert full.status_code == 200
    sha = hashlib.sha256(full.content).hexdigest()
    assert full.headers["etag"] == f'"{sha}"'
    assert full.headers["accept-ranges"] == "bytes"
    assert int(full.headers["content-length"]) == len(full.content)
    assert full.content == zoo_server["weights"][NAME_2D]
    part = httpx.get(url, headers={"Range": "bytes=100-1123"})
    assert part.status_code == 206 and part.content == full.content[100:1124]
    assert part.headers["content-range"] == f"bytes 100-1123/{len(full.content)}"
    resume = httpx.get(url, headers={"Range": f"bytes={len(full.content) - 10}-"})
    assert resume.content == full.content[-10:]
    assert httpx.get(url, headers={"If-None-Match": f'"{sha}"'}).status_code == 304
    head = httpx.head(url)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(len(full.content))
    bad = httpx.get(url, headers={"Range": f"bytes={len(full.content) + 5}-"})
    assert bad.status_code == 416


@pytest.mark.parametrize(("name", "dataset"), [(NAME_2D, "pneumoniamnist"),
                                               (NAME_3D, "adrenalmnist3d")])
def test_onnx_parity_on_real_images(zoo_server: dict[str, Any], name: str,
                                    dataset: str, tmp_path: Path) -> None:
    base = f"{zoo_server['url']}/v1/encoders/{repo(name)}/files"
    c = zoo_server["cards"][name]
    model = build_encoder(c["architecture"]["name"], c["spatial_dims"], c["in_channels"],
                          c["input_size"], c["architecture"]["args"])
    state = load_safetensors(httpx.get(f"{base}/model.safetensors").content)
    model.load_state_dict(state, strict=True)
    model.eval()
    onnx_path = tmp_path / "model.onnx"
    onnx_path.write_bytes(httpx.get(f"{base}/model.onnx").content)
    images, _ = medmnist(dataset, n=16)
    x = ((images.astype(np.float32) / 255.0 - 0.5) / 0.5)[:, None]
    with torch.inference_mode():
        expected = model(torch.from_numpy(x)).numpy()
    session = onnx_session(onnx_path, ["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    assert got.shape == (16, 64 if name == NAME_2D else 32)
    assert np.abs(got - expected).max() < 1e-4
    assert np.abs(expected).max() > 0  # features are not trivially zero


def test_embed_png_and_npy(zoo_server: dict[str, Any]) -> None:
    images, _ = medmnist("pneumoniamnist", n=4)
    files = [("images", (f"img{i}.png", png_bytes(im), "image/png"))
             for i, im in enumerate(images[:2])]
    files += [("images", (f"img{i}.npy", npy_bytes(im), "application/octet-stream"))
              for i, im in enumerate(images[2:], start=2)]
    r = httpx.post(f"{zoo_server['url']}/v1/encoders/{REPO_2D}/embed", files=files, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["count"] == 4 and body["feature_dim"] == 64 and body["name"] == REPO_2D
    assert [d["image"] for d in body["data"]] == ["img0.png", "img1.png", "img2.npy", "img3.npy"]
    # PNG and NPY of the same pixels give the same features.
    same = httpx.post(f"{zoo_server['url']}/v1/encoders/{REPO_2D}/embed", files=[
        ("images", ("a.png", png_bytes(images[0]), "image/png")),
        ("images", ("a.npy", npy_bytes(images[0]), "application/octet-stream"))]).json()
    assert np.allclose(same["data"][0]["features"], same["data"][1]["features"], atol=1e-6)
    assert np.allclose(same["data"][0]["features"], body["data"][0]["features"], atol=1e-6)


def test_embed_bad_images_named(zoo_server: dict[str, Any]) -> None:
    images, _ = medmnist("pneumoniamnist", n=1)
    obj = io.BytesIO()
    np.save(obj, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    files = [("images", ("good.png", png_bytes(images[0]), "image/png")),
             ("images", ("big.npy", npy_bytes(np.zeros((64, 64), np.uint8)), "x")),
             ("images", ("broken.png", b"\x89PNG not really", "image/png")),
             ("images", ("pickled.npy", obj.getvalue(), "x")),
             ("images", ("scan.dcm", b"DICM", "x"))]
    r = httpx.post(f"{zoo_server['url']}/v1/encoders/{REPO_2D}/embed", files=files)
    assert r.status_code == 422
    problems = {p["image"]: p["msg"] for p in r.json()["detail"]}
    # big.npy (64x64) is no problem: inputs are resized to the encoder's 28x28.
    assert set(problems) == {"broken.png", "pickled.npy", "scan.dcm"}
    assert "pickled" in problems["pickled.npy"]
    assert "dicom" in problems["scan.dcm"]


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares a huge image (a decompression bomb's shape)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (len(body).to_bytes(4, "big") + kind + body
                + zlib.crc32(kind + body).to_bytes(4, "big"))

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    pixels = zlib.compress(b"\0" * 1024)  # far fewer than declared: never decoded
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels)
            + chunk(b"IEND", b""))


def test_embed_refuses_huge_images_before_decoding(zoo_server: dict[str, Any]) -> None:
    files = [("images", ("bomb.png", png_claiming(20_000, 20_000), "image/png")),
             ("images", ("big.png", png_claiming(9_000, 9_000), "image/png")),
             ("images", ("huge.npy", npy_bytes(np.zeros((3000, 3000), np.uint8)), "x"))]
    r = httpx.post(f"{zoo_server['url']}/v1/encoders/{REPO_2D}/embed", files=files)
    assert r.status_code == 422, r.text
    problems = {p["image"]: p["msg"] for p in r.json()["detail"]}
    assert "declares an image far too large" in problems["bomb.png"]
    assert "declares 81,000,000 values, over the limit" in problems["big.png"]
    assert "huge.npy" not in problems  # 9 M values fit the budget: it would be resized
    assert httpx.get(f"{zoo_server['url']}/healthz").status_code == 200


def test_recommendation_lists_matching_encoders(zoo_server: dict[str, Any]) -> None:
    r = httpx.post(f"{zoo_server['url']}/v1/recommendations",
                   json={"task": "classification", "modality": "xray", "label_regime": "low"})
    encoders = r.json()["encoders"]
    assert [e["name"] for e in encoders] == [REPO_2D]  # the 3D encoder does not fit 2D
    assert any("pretrained with simclr" in reason for reason in encoders[0]["reasons"])
    assert any("pretrained on xray" in reason for reason in encoders[0]["reasons"])
    # each recommended method names the encoders pretrained with it that fit the data
    answer = r.json()
    assert answer["encoders_by_method"] == {"simclr": [REPO_2D]}
    assert "simclr" in {m["id"] for m in answer["recommendations"]}
    r3 = httpx.post(f"{zoo_server['url']}/v1/recommendations",
                    json={"task": "segmentation", "modality": "ct", "label_regime": "low"})
    assert [e["name"] for e in r3.json()["encoders"]] == [REPO_3D]
    assert REPO_2D not in str(r3.json()["encoders_by_method"])  # 2D encoder, 3D data


def _refused(zoo_server: dict[str, Any], files: dict, headers: dict | None = None
             ) -> httpx.Response:
    url = zoo_server["url"]
    before_blobs = blob_files(zoo_server["home"])
    before = httpx.get(f"{url}/v1/encoders").json()
    r = httpx.post(f"{url}/v1/encoders", files=files, headers=AUTH if headers is None
                   else headers, timeout=120)
    assert blob_files(zoo_server["home"]) == before_blobs
    assert not list((zoo_server["home"] / "artifacts" / "tmp").iterdir())
    assert httpx.get(f"{url}/v1/encoders").json() == before
    return r


def test_refused_uploads_leave_nothing(zoo_server: dict[str, Any]) -> None:
    c = card("resnet18-2d.refused")
    good = weights(c)
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(3)}, buf)
    r = _refused(zoo_server, upload_files(c, buf.getvalue(), "model.pt"))
    assert r.status_code == 422 and "pickle" in r.json()["detail"][0]["msg"]
    r = _refused(zoo_server, upload_files(c, buf.getvalue()))  # pickle renamed .safetensors
    assert r.status_code == 422 and "pickle" in r.json()["detail"][0]["msg"]
    wrong_shape = card("resnet18-2d.refused", arch={"name": "resnet18",
                                                    "args": {"widths": [8, 16, 32, 128]}})
    r = _refused(zoo_server, upload_files(wrong_shape, good))
    assert r.status_code == 422 and "shape mismatch" in r.json()["detail"][0]["msg"]
    wrong_arch = card("resnet18-2d.refused", arch={"name": "vit", "args": {}})
    r = _refused(zoo_server, upload_files(wrong_arch, good))
    assert r.status_code == 422 and "do not fit" in r.json()["detail"][0]["msg"]
    r = _refused(zoo_server, upload_files({**c, "pretext": {"method_id": "simclrr"}}, good))
    assert r.status_code == 422 and "unknown pretext method" in r.json()["detail"][0]["msg"]
    big = upload_files(c, good + b"\0" * (3 * 1024 * 1024))
    assert _refused(zoo_server, big).status_code == 413
    assert _refused(zoo_server, upload_files(c, good), headers={}).status_code == 401
    assert _refused(zoo_server, upload_files(c, good),
                    headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_new_revision_keeps_old_downloadable(zoo_server: dict[str, Any]) -> None:
    url, c = zoo_server["url"], zoo_server["cards"][NAME_2D]
    same = httpx.post(f"{url}/v1/encoders", files=upload_files(c, zoo_server["weights"][NAME_2D]),
                      headers=AUTH, timeout=120)
    assert same.status_code == 409
    new = weights(c, seed=11)
    r = httpx.post(f"{url}/v1/encoders", files=upload_files(c, new), headers=AUTH, timeout=120)
    assert r.status_code == 201 and r.json()["revision"] == 2
    assert r.json()["repo_id"] == REPO_2D
    base = f"{url}/v1/encoders/{REPO_2D}/files/model.safetensors"
    assert httpx.get(base).content == new
    assert httpx.get(base, params={"revision": 1}).content == zoo_server["weights"][NAME_2D]
    assert httpx.get(base, params={"revision": 7}).status_code == 404


def test_live_server_on_postgresql(tmp_path: Path) -> None:
    from tests.conftest import POSTGRES_URL, postgres_available
    from tests.utils import fresh_postgres_database

    reason = postgres_available()
    if reason:
        pytest.skip(reason)
    with fresh_postgres_database(POSTGRES_URL) as url:
        server = Server(tmp_path, TASKALIGN_DATABASE_URL=url, TASKALIGN_ADMIN_TOKENS=TOKEN)
        try:
            c = card("resnet18-2d.on-postgres")
            data = weights(c, seed=2)
            r = httpx.post(f"{server.url}/v1/encoders", files=upload_files(c, data),
                           headers=AUTH, timeout=120)
            assert r.status_code == 201, r.text
            listed = httpx.get(f"{server.url}/v1/encoders").json()
            assert [e["name"] for e in listed["data"]] == [repo(c["name"])]
            got = httpx.get(f"{server.url}/v1/encoders/{repo(c['name'])}/files/"
                            "model.safetensors")
            assert got.content == data
        finally:
            server.stop()


def test_downloaded_card_uploads_again_as_new_revision(zoo_server: dict[str, Any]) -> None:
    """config.json as served carries revision, files, feature_dim, parity: an upload
    ignores them and measures them anew."""
    url = zoo_server["url"]
    files = f"{url}/v1/encoders/{REPO_3D}/files"
    served = httpx.get(f"{files}/config.json").json()
    blob = httpx.get(f"{files}/model.safetensors").content
    assert {"repo_id", "revision", "created_at", "feature_dim", "files"} <= set(served)
    unchanged = httpx.post(f"{url}/v1/encoders", files=upload_files(served, blob), headers=AUTH,
                           timeout=120)
    assert unchanged.status_code == 409, unchanged.text  # identical, not "extra inputs"
    edited = {**served, "description": "re-uploaded from a downloaded card",
              "feature_dim": 9999, "onnx_parity_max_abs_diff": 0.0,
              "files": {"model.safetensors": {"sha256": "0" * 64, "size": 1}}}
    r = httpx.post(f"{url}/v1/encoders", files=upload_files(edited, blob), headers=AUTH,
                   timeout=120)
    assert r.status_code == 201, r.text
    stored = r.json()
    assert stored["revision"] == served["revision"] + 1
    assert stored["feature_dim"] == served["feature_dim"] != 9999
    assert stored["files"]["model.safetensors"]["sha256"] == hashlib.sha256(blob).hexdigest()
    assert stored["description"] == "re-uploaded from a downloaded card"


@pytest.mark.anyio
async def test_embed_request_holds_a_bounded_number_of_values(tmp_path: Path) -> None:
    from service.config import Settings
    from service.main import create_app

    settings = Settings(home=tmp_path, data_dir=None, seed_zoo=False, worker=False,
                        admin_tokens=TOKEN, max_embed_values=4096)  # 5 images of 28x28
    c = card("resnet18-2d.budget")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(settings)),
                                 base_url="http://testserver") as client:
        r = await client.post("/v1/encoders", files=upload_files(c, weights(c)),
                              headers=AUTH)
        assert r.status_code == 201, r.text
        images, _ = medmnist("pneumoniamnist", n=6)
        files = [("images", (f"{i}.png", png_bytes(im), "image/png"))
                 for i, im in enumerate(images)]
        over = await client.post(f"/v1/encoders/{repo(c['name'])}/embed", files=files)
        assert over.status_code == 422
        assert "send at most 5 images of this size" in over.json()["detail"]
        ok = await client.post(f"/v1/encoders/{repo(c['name'])}/embed", files=files[:5])
        assert ok.status_code == 200 and ok.json()["count"] == 5


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
