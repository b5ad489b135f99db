"""Segmentation end to end over real HTTP with a real worker, on real images and masks:
upload a NIfTI image/label zip (MSD hippocampus) and an image/mask zip (Kvasir-SEG), ask
for a segmentation recommendation, fine-tune a seed encoder, follow Dice per epoch,
download the task model with huggingface_hub and get masks back for a new NIfTI volume
(on its own grid, with its affine) and a JPEG (at its own size)."""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import nibabel as nib
import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from tests.conftest import Server
from tests.service.test_jobs import wait_for
from tests.utils import DATA_DIR, upload_files
from tests.zoo.datasets.seg_builders import (
    HIPPOCAMPUS,
    KVASIR,
    crop,
    nifti_folder,
    oriented,
    pairs_folder,
    real,
    zip_folder,
)

ALICE, ADMIN = "alice-seg-token-0123456789", "admin-seg-token-0123456789"
SEED = Path(__file__).resolve().parents[2] / "zoo" / "seed"
ENC_3D, ENC_2D = "resnet10-3d.genesis-vesselmnist3d", "resnet18-2d.genesis-retinamnist"


def h(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = Server(tmp_path_factory.mktemp("seg"), TASKALIGN_WORKER="true",
                    TASKALIGN_API_TOKENS=f"alice={ALICE}", TASKALIGN_ADMIN_TOKENS=ADMIN,
                    TASKALIGN_DATA_DIR=str(DATA_DIR))
    try:
        for name in (ENC_3D, ENC_2D):  # two of the seed zoo's encoders, as shipped
            card = json.loads((SEED / name / "card.json").read_text())
            weights = (SEED / name / "model.safetensors").read_bytes()
            r = httpx.post(f"{server.url}/v1/encoders", files=upload_files(card, weights),
                           headers=h(ADMIN), timeout=300)
            assert r.status_code == 201, r.text
        yield server.url
    finally:
        server.stop()


def upload(url: str, filename: str, data: bytes, name: str, modality: str) -> dict[str, Any]:
    r = httpx.post(f"{url}/v1/datasets", headers=h(ALICE), timeout=120,
                   files={"file": (filename, data, "application/zip")},
                   data={"name": name, "modality": modality})
    assert r.status_code == 201, r.text
    return r.json()


def finetune(url: str, **request: Any) -> dict[str, Any]:
    r = httpx.post(f"{url}/v1/jobs", headers=h(ALICE), json={"type": "finetune", **request})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    done = wait_for(lambda: (j := httpx.get(f"{url}/v1/jobs/{job_id}", headers=h(ALICE))
                             .json())["status"] in ("succeeded", "failed", "cancelled") and j,
                    timeout=400)
    assert done["status"] == "succeeded", done["error"]
    return done


def epoch_metrics(url: str, job_id: int) -> list[dict[str, Any]]:
    events = httpx.get(f"{url}/v1/jobs/{job_id}/events", headers=h(ALICE),
                       params={"limit": 500}).json()["data"]
    return [e["data"] for e in events if e["type"] == "metrics" and "val_dice" in e["data"]]


def test_nifti_volumes_to_a_3d_mask_with_the_inputs_affine(url: str, tmp_path: Path) -> None:
    data = real(HIPPOCAMPUS, {"train": 8, "val": 2, "test": 2})
    nifti_folder(tmp_path / "Task04", data, {"train": 8, "val": 2, "test": 2})
    ds = upload(url, "Task04.zip", zip_folder(tmp_path / "Task04", "Task04/"), "hippocampus",
                "mri")
    assert ds["task"] == "segmentation" and ds["mask_classes"] == ["background", "Anterior",
                                                                   "Posterior"]
    # The recommender's answer for this dataset's profile, and a 3D seed encoder to act on it.
    rec = httpx.post(f"{url}/v1/recommendations", json={
        "task": "segmentation", "modality": "mri", "dimensionality": "3d",
        "anatomy": "brain", "labeled": 8}).json()
    assert rec["recommendations"][0]["alignment"], rec
    [encoder] = [e["name"] for e in rec["encoders"] if ENC_3D in e["name"]]
    done = finetune(url, encoder=encoder, dataset_id=ds["id"], epochs=2, batch_size=4,
                    lr=3e-3)
    params = done["params"]
    # Eight masked volumes are few labels: the rules keep the encoder frozen and train
    # the decoder (ft.scarce.frozen_encoder).
    assert params["task"] == "segmentation" and params["mode"] == "linear_probe"
    assert params["auto"]["settings"]["mode"]["rule"] == "ft.scarce.frozen_encoder"
    # Brain MRI is orientation-sensitive: the rules' avoid list still applies to masks.
    assert all(not a.startswith(("vertical_flip", "rotation_90"))
               for a in params["augmentations"])
    history = epoch_metrics(url, done["id"])
    assert [m["epoch"] for m in history] == [1, 2]
    assert all(0 <= m["val_dice"] <= 1 for m in history)
    evaluation = done["result"]["evaluation"]
    assert 0 <= evaluation["test_dice"] <= 1
    model = done["result"]["encoder"]

    from huggingface_hub import hf_hub_download

    folder = tmp_path / "hf"
    config = json.loads(Path(hf_hub_download(model, "config.json", endpoint=f"{url}/hf",
                                             cache_dir=folder, token=ALICE)).read_text())
    assert config["task"]["kind"] == "segmentation"
    assert config["input_size"] == ds["image_size"]  # cases padded to the largest
    metrics = {e["metric"] for e in config["evaluation"]}
    assert {"DICE", "DICE/Anterior", "DICE/Posterior"} <= metrics
    onnx_path = hf_hub_download(model, "model.onnx", endpoint=f"{url}/hf", cache_dir=folder,
                                token=ALICE)
    session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    probs = session.run(None, {"x": np.zeros((1, 1, 40, 48, 40), np.float32)})[0]
    assert probs.shape == (1, 3, 40, 48, 40)  # any size: dynamic spatial axes
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)

    # A new volume, stored in another orientation at its own (unpadded) size.
    volume = crop(data, "test", 1, "images").astype(np.float32)
    stored, affine = oriented(volume, "PIR", (1.0, 1.0, 1.0))
    buf = io.BytesIO()
    image = nib.Nifti1Image(stored, affine)
    buf.write(gzip.compress(image.to_bytes()))
    r = httpx.post(f"{url}/v1/encoders/{model}/predict", headers=h(ALICE), timeout=60,
                   files={"images": ("case.nii.gz", buf.getvalue(), "application/gzip")})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/gzip"
    assert json.loads(r.headers["x-mask-classes"]) == ["background", "Anterior", "Posterior"]
    mask = nib.Nifti1Image.from_bytes(gzip.decompress(r.content))
    canonical = nib.as_closest_canonical(image)
    assert mask.shape == canonical.shape == volume.shape
    np.testing.assert_allclose(mask.affine, canonical.affine)
    labels = np.asarray(mask.dataobj)
    assert labels.dtype == np.uint8 and set(np.unique(labels)) <= {0, 1, 2}
    fractions = json.loads(r.headers["x-mask-fractions"])
    assert len(fractions) == 3 and abs(sum(fractions) - 1) < 1e-3

    # The CLI writes the same mask next to where it is asked, and says the class shares.
    (tmp_path / "case.nii.gz").write_bytes(buf.getvalue())
    env = {**os.environ, "TASKALIGN_URL": url, "TASKALIGN_TOKEN": ALICE}
    out = subprocess.run([sys.executable, "-m", "service.cli", "predict", model,
                          str(tmp_path / "case.nii.gz"), "--out", str(tmp_path / "masks"),
                          "--json"], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    [row] = json.loads(out.stdout)["data"]
    assert Path(row["mask"]) == tmp_path / "masks" / "case.mask.nii.gz"
    assert Path(row["mask"]).read_bytes() == r.content
    assert list(row["fractions"]) == ["background", "Anterior", "Posterior"]

    # Two files, or an encoder's route, are refused with what to do instead.
    two = [("images", ("a.nii.gz", buf.getvalue(), "application/gzip"))] * 2
    r = httpx.post(f"{url}/v1/encoders/{model}/predict", headers=h(ALICE), files=two)
    assert r.status_code == 422 and "one image per request" in r.text


def test_image_mask_zip_to_a_png_mask_at_the_images_size(url: str, tmp_path: Path) -> None:
    data = real(KVASIR)
    zipped = zip_folder(pairs_folder(tmp_path / "kv", data), "Kvasir-subset/")
    ds = upload(url, "kvasir.zip", zipped, "kvasir", "endoscopy")
    assert ds["task"] == "segmentation" and ds["channels"] == 3
    thumbs = httpx.get(f"{url}/v1/datasets/{ds['id']}/thumbnails.png", headers=h(ALICE))
    assert thumbs.status_code == 200 and thumbs.content.startswith(b"\x89PNG")
    # A classification fine-tune of a dataset with masks only is refused before queueing.
    r = httpx.post(f"{url}/v1/jobs", headers=h(ALICE), json={
        "type": "finetune", "task": "classification", "encoder": f"taskalign/{ENC_2D}",
        "dataset_id": ds["id"]})
    assert r.status_code == 422 and "no image labels" in r.text
    r = httpx.post(f"{url}/v1/jobs", headers=h(ALICE), json={
        "type": "finetune", "encoder": f"taskalign/{ENC_2D}", "dataset_id": ds["id"],
        "label_fraction": 0.05})
    assert r.status_code == 422 and "smallest label_fraction" in r.text
    done = finetune(url, encoder=f"taskalign/{ENC_2D}", dataset_id=ds["id"], epochs=1,
                    batch_size=4, mode="full")
    assert done["params"]["mode"] == "full" and done["params"]["augmentations"]
    assert len(epoch_metrics(url, done["id"])) == 1
    model = done["result"]["encoder"]
    card = httpx.get(f"{url}/v1/encoders/{model}", headers=h(ALICE)).json()
    readme = httpx.get(f"{url}/v1/encoders/{model}/files/README.md", headers=h(ALICE)).text
    assert "pipeline_tag: image-segmentation" in readme and "polyp" in readme
    assert card["name"] == model and card["card"]["task"]["kind"] == "segmentation"

    # A JPEG of another size than the model's 128 px: the mask comes back at its size.
    picture = Image.fromarray(data["test_images"][0]).resize((150, 110))
    out = io.BytesIO()
    picture.save(out, "JPEG", quality=92)
    r = httpx.post(f"{url}/v1/encoders/{model}/predict", headers=h(ALICE), timeout=60,
                   files={"images": ("frame 1.jpg", out.getvalue(), "image/jpeg")})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    assert 'filename="frame_1.mask.png"' in r.headers["content-disposition"]
    mask = np.asarray(Image.open(io.BytesIO(r.content)))
    assert mask.shape == (110, 150) and set(np.unique(mask)) <= {0, 1}
