"""Fine-tuning yields a task model people can use: a card with what it predicts and how
well, ONNX with the normalisation inside, and predictions for the files clinics have (PNG,
JPEG, NPY, DICOM, NIfTI) through the API. Real server, worker, data and files."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import httpx
import nibabel
import numpy as np
import pytest
import torch
from PIL import Image
from pydicom.data import get_testdata_file

from tests.service.test_jobs import ADMIN, ALICE, BOB, ENC, TOKENS, h, job, seed_server, wait_for
from tests.utils import medmnist, npy_bytes, png_bytes
from zoo.imaging import load

NIFTI = Path(nibabel.__file__).parent / "tests" / "data" / "anatomical.nii"
DICOM = Path(get_testdata_file("CT_small.dcm"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One server; a full fine-tune (2 epochs) and a linear probe of the same encoder on
    Alice's BreastMNIST, both run to the end by the built-in worker."""
    from tests.conftest import Server

    server = Server(tmp_path_factory.mktemp("task-models"), TASKALIGN_WORKER="true", **TOKENS)
    try:
        ds = seed_server(server.url, server.home)
        ids = {}
        for mode in ("full", "linear_probe"):
            r = httpx.post(f"{server.url}/v1/jobs", headers=h(ALICE), json={
                "type": "finetune", "encoder": ENC, "dataset_id": ds, "mode": mode,
                "label_fraction": 0.5, "epochs": 2, "batch_size": 64})
            assert r.status_code == 202, r.text
            ids[mode] = r.json()["id"]
        done = {mode: wait_for(lambda i=i: (j := job(server.url, i))["status"] in
                               ("succeeded", "failed") and j, 300)
                for mode, i in ids.items()}
        for d in done.values():
            assert d["status"] == "succeeded", d["error"]
        yield {"url": server.url, "jobs": done, "home": server.home}
    finally:
        server.stop()


def detail(url: str, repo: str, token: str = ALICE) -> dict[str, Any]:
    return httpx.get(f"{url}/v1/encoders/{repo}", headers=h(token)).json()


def test_the_result_is_a_classifier_with_an_honest_card(trained: dict[str, Any]) -> None:
    url, full = trained["url"], trained["jobs"]["full"]
    assert full["result"]["task"] == "classification"
    card = detail(url, full["result"]["encoder"])["card"]
    task = card["task"]
    assert task["classes"] == ["malignant", "normal or benign"]  # from the known file
    assert 0 <= task["threshold"] <= 1 and "validation" in task["threshold_rule"]
    matrix = np.array(task["confusion_matrix"])
    assert matrix.shape == (2, 2) and matrix.sum() == 156  # BreastMNIST's test split
    assert 0 <= task["calibration_ece"] <= 1 and 0 < task["majority_rate"] < 1
    assert task["labelled_images"] == 274 and task["few_labels"] is False
    assert [r["epoch"] for r in task["curves"]] == [1, 2]
    for row in card["evaluation"]:
        lo, hi = row["ci95"]
        assert lo <= row["value"] <= hi, row
    # The job's own record: history per epoch, progress at 100 %, phase agrees with status.
    assert [r["epoch"] for r in full["metrics"]["history"]] == [1, 2]
    assert full["progress"]["percent"] == 100.0 and full["progress"]["steps"] > 0
    png = httpx.get(url + task["curves_png"], headers=h(ALICE))
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
    assert httpx.get(url + task["curves_png"], headers=h(BOB)).status_code == 404
    readme = httpx.get(f"{url}/v1/encoders/{full['result']['encoder']}/files/README.md",
                       headers=h(ALICE)).text
    assert "## Task" in readme and f"{task['threshold']:.4f}" in readme
    assert "| malignant | " + " | ".join(map(str, task["confusion_matrix"][0])) in readme
    assert "pipeline_tag: image-classification" in readme
    missing = httpx.get(f"{url}/v1/jobs/{full['id']}/artifacts/model.bin", headers=h(ALICE))
    assert missing.status_code == 404 and "curves.png" in missing.text


def test_weights_hold_encoder_and_head_and_onnx_matches_torch(trained: dict[str, Any],
                                                              tmp_path: Path) -> None:
    """Downloaded with the real huggingface_hub client; the ONNX graph takes [0, 1] images
    (normalising inside) at any size and returns the probabilities PyTorch gives."""
    from huggingface_hub import snapshot_download
    from safetensors.torch import load_file

    from zoo.export import onnx_session
    from zoo.loader import build_from_card

    url = trained["url"]
    for mode, result in ((m, j["result"]) for m, j in trained["jobs"].items()):
        folder = Path(snapshot_download(result["encoder"], endpoint=f"{url}/hf",
                                        cache_dir=tmp_path / mode, token=ALICE))
        state = load_file(str(folder / "model.safetensors"))
        assert {k.split(".")[0] for k in state} == {"encoder", "head"}
        config = json.loads((folder / "config.json").read_text())
        model = build_from_card(config, folder / "model.safetensors")
        session = onnx_session(folder / "model.onnx", ["CPUExecutionProvider"])
        images, _ = medmnist("breastmnist", n=6)
        for side in (28, 44):
            x = torch.nn.functional.interpolate(torch.from_numpy(images).float()[:, None] / 255,
                                                size=(side, side), mode="bilinear")
            with torch.inference_mode():
                expected = model(x).numpy()
            got = session.run(None, {"x": x.numpy()})[0]
            assert np.allclose(got, expected, atol=1e-4) and np.allclose(got.sum(1), 1, 1e-5)


def test_a_linear_probe_keeps_its_parent_encoder_and_size(trained: dict[str, Any]) -> None:
    url = trained["url"]
    probe = trained["jobs"]["linear_probe"]["result"]["encoder"]
    files = detail(url, probe)["card"]["files"]
    parent = detail(url, ENC)["card"]["files"]
    head_bytes = files["model.safetensors"]["size"] - parent["model.safetensors"]["size"]
    assert 0 < head_bytes < 4096  # the encoder as stored by its parent, plus a small head


def predict(url: str, repo: str, files: list[tuple[str, bytes]], token: str = ALICE,
            **form: Any) -> httpx.Response:
    return httpx.post(f"{url}/v1/encoders/{repo}/predict", headers=h(token), data=form,
                      files=[("images", f) for f in files], timeout=60)


def jpeg_bytes(image: np.ndarray, side: int) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).resize((side, side)).convert("RGB").save(out, "JPEG", quality=95)
    return out.getvalue()


def test_predict_takes_png_jpeg_npy_dicom_and_nifti(trained: dict[str, Any]) -> None:
    url = trained["url"]
    repo = trained["jobs"]["full"]["result"]["encoder"]
    images, _ = medmnist("breastmnist", n=2)
    files = [("a.png", png_bytes(images[0])), ("b.jpg", jpeg_bytes(images[1], 150)),
             ("c.npy", npy_bytes(images[0])), ("ct.dcm", DICOM.read_bytes()),
             ("brain.nii", NIFTI.read_bytes())]
    r = predict(url, repo, files)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["count"] == 5 and body["classes"] == ["malignant", "normal or benign"]
    for item in body["data"]:
        assert abs(sum(item["probabilities"].values()) - 1) < 1e-4
        p1 = item["probabilities"]["normal or benign"]
        assert item["top_class"] == body["classes"][int(p1 >= body["threshold"])]
    # The same image as PNG and NPY gives the same answer; the JPEG differs a little.
    png, _, npy = (body["data"][i]["probabilities"] for i in range(3))
    assert all(abs(png[c] - npy[c]) < 1e-5 for c in png)
    # A 2D model given a volume predicts one slice; another slice answers differently.
    depth = nibabel.load(NIFTI).shape[-1]
    other = predict(url, repo, [("brain.nii", NIFTI.read_bytes())], slice_index=2).json()
    assert other["data"][0]["probabilities"] != body["data"][4]["probabilities"]
    too_far = predict(url, repo, [("brain.nii", NIFTI.read_bytes())], slice_index=depth)
    assert too_far.status_code == 422 and "outside the volume" in too_far.text
    # Private result: a stranger gets the unknown-name 404.
    assert predict(url, repo, files[:1], token=BOB).status_code == 404


def test_predict_agrees_with_the_model_run_in_torch(trained: dict[str, Any]) -> None:
    """The API's answer for a DICOM file equals the downloaded model's on the same decoded
    input: decoding, resizing and the graph are one path."""
    from zoo.cards import StoredCard
    from zoo.loader import build_from_card

    url = trained["url"]
    repo = trained["jobs"]["full"]["result"]["encoder"]
    enc = detail(url, repo)
    weights = httpx.get(f"{url}/v1/encoders/{repo}/files/model.safetensors", headers=h(ALICE))
    path = trained["home"] / "check.safetensors"
    path.write_bytes(weights.content)
    model = build_from_card(enc["card"], path)
    card = StoredCard.model_validate(enc["card"])
    x = load("ct.dcm", DICOM.read_bytes(), spatial_dims=2, channels=1,
             input_size=card.input_size)
    with torch.inference_mode():
        expected = model(torch.from_numpy(x)[None])[0].numpy()
    got = predict(url, repo, [("ct.dcm", DICOM.read_bytes())]).json()["data"][0]
    assert np.allclose([got["probabilities"][c] for c in card.task.classes], expected,
                       atol=1e-4)


def test_embed_and_predict_refuse_each_others_models(trained: dict[str, Any]) -> None:
    url = trained["url"]
    repo = trained["jobs"]["full"]["result"]["encoder"]
    images, _ = medmnist("breastmnist", n=1)
    one = [("a.png", png_bytes(images[0]))]
    r = httpx.post(f"{url}/v1/encoders/{repo}/embed", headers=h(ALICE),
                   files=[("images", one[0])])
    assert r.status_code == 422 and "/predict" in r.text
    r = predict(url, ENC, one)
    assert r.status_code == 422 and "not a task model" in r.text
    # /embed resizes too: a 64-pixel PNG for a 28-pixel encoder.
    big = np.asarray(Image.fromarray(images[0]).resize((64, 64)))
    r = httpx.post(f"{url}/v1/encoders/{ENC}/embed", files=[("images", ("b.png",
                                                                       png_bytes(big)))])
    assert r.status_code == 200 and r.json()["count"] == 1


def test_predict_limits_follow_the_hardening_rules(trained: dict[str, Any]) -> None:
    """Sizes are read from headers before decoding: a small PNG declaring a huge image, or
    a DICOM whose header is cut off, is refused with the file named."""
    url = trained["url"]
    repo = trained["jobs"]["full"]["result"]["encoder"]
    out = io.BytesIO()
    Image.new("L", (9000, 9000)).save(out, "PNG")  # ~100 KB, 81 M values declared
    r = predict(url, repo, [("bomb.png", out.getvalue())])
    assert r.status_code == 422 and "values" in r.text and len(r.content) < 2048
    r = predict(url, repo, [("cut.dcm", DICOM.read_bytes()[:400])])
    assert r.status_code == 422 and "cut.dcm" in r.text
    r = predict(url, repo, [("notes.txt", b"hello")])
    assert r.status_code == 422 and ".dcm" in r.text
    assert httpx.get(f"{url}/v1/jobs", headers=h(ADMIN)).status_code == 200


def test_the_cli_predicts_for_dicom_nifti_and_jpeg(trained: dict[str, Any],
                                                  tmp_path: Path) -> None:
    """`taskalign predict` against the live server gives the API's answer, and a table."""
    import os
    import subprocess
    import sys

    url = trained["url"]
    repo = trained["jobs"]["full"]["result"]["encoder"]
    images, _ = medmnist("breastmnist", n=1)
    (tmp_path / "photo.jpg").write_bytes(jpeg_bytes(images[0], 120))
    paths = [str(DICOM), str(NIFTI), str(tmp_path / "photo.jpg")]
    env = {**os.environ, "TASKALIGN_URL": url, "TASKALIGN_TOKEN": ALICE, "COLUMNS": "100"}
    cli = [sys.executable, "-m", "service.cli", "predict", repo, *paths]
    out = subprocess.run([*cli, "--json"], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    body = json.loads(out.stdout)
    api = predict(url, repo, [(Path(p).name, Path(p).read_bytes()) for p in paths]).json()
    assert body["data"] == api["data"]
    table = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=120)
    assert table.returncode == 0 and "CT_small.dcm" in table.stdout
    assert "normal or benign" in table.stdout
    refused = subprocess.run([sys.executable, "-m", "service.cli", "predict", ENC,
                              str(tmp_path / "photo.jpg")], env=env, capture_output=True,
                             text=True, timeout=120)
    assert refused.returncode == 1 and "not a task model" in refused.stderr
