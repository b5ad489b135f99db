"""Unlabelled data end to end on a live server with its worker: BreastMNIST's train images
without labels are pretrained on, evaluated on a labelled set when one is named and not at
all otherwise; fine-tuning refuses them, and too few labels per class; a reconnecting event
stream resumes after its Last-Event-ID."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from tests.conftest import Server
from tests.service.test_jobs import ALICE, ENC, TOKENS, h, job, seed_server, wait_for
from tests.utils import DATA_DIR

BREAST = DATA_DIR / "medmnist" / "breastmnist.npz"


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A server running jobs, with Alice's labelled BreastMNIST (by path), the admin's
    encoder, and her upload of the same train images with the labels taken out."""
    if not BREAST.exists():
        pytest.skip(f"real data not found at {BREAST}")
    s = Server(tmp_path_factory.mktemp("unlabelled"), TASKALIGN_WORKER="true", **TOKENS)
    try:
        labelled = seed_server(s.url, s.home)
        with np.load(BREAST) as data:
            buf = io.BytesIO()
            np.savez(buf, train_images=data["train_images"])
        r = httpx.post(f"{s.url}/v1/datasets", headers=h(ALICE),
                       files={"file": ("breast-images.npz", buf.getvalue())},
                       data={"name": "breast-images", "modality": "ultrasound"})
        assert r.status_code == 201, r.text
        assert r.json()["labelled"] is False
        yield {"url": s.url, "labelled": labelled, "unlabelled": r.json()["id"]}
    finally:
        s.stop()


def submit(url: str, **body: Any) -> httpx.Response:
    return httpx.post(f"{url}/v1/jobs", headers=h(ALICE), json=body, timeout=60)


def finished(url: str, job_id: int) -> dict[str, Any]:
    done = wait_for(lambda: (x := job(url, job_id))["status"] in
                    ("succeeded", "failed", "cancelled") and x, 300)
    assert done["status"] == "succeeded", done["error"]
    return done


def card_of(url: str, done: dict[str, Any]) -> dict[str, Any]:
    return httpx.get(f"{url}/v1/encoders/{done['result']['encoder']}",
                     headers=h(ALICE)).json()["card"]


def sse(url: str, job_id: int, headers: dict[str, str], most: int | None = None
        ) -> list[tuple[int | None, str]]:
    """(id, event) of each event in the job's stream, up to `most` (then disconnect)."""
    got: list[tuple[int | None, str]] = []
    with httpx.stream("GET", f"{url}/v1/jobs/{job_id}/events", timeout=300,
                      headers={**h(ALICE), "Accept": "text/event-stream", **headers}) as r:
        assert r.status_code == 200, r.read()
        event_id = None
        for line in r.iter_lines():
            if line.startswith("id: "):
                event_id = int(line[4:])
            elif line.startswith("event: "):
                got.append((event_id, line[7:]))
                event_id = None
                if most is not None and len(got) == most:
                    break
    return got


def test_pretrain_on_unlabelled_images_with_and_without_an_evaluation_set(
        live: dict[str, Any]) -> None:
    url = live["url"]
    alone = submit(url, type="pretrain", dataset_id=live["unlabelled"], method="simclr",
                   epochs=1)
    scored = submit(url, type="pretrain", dataset_id=live["unlabelled"], method="simclr",
                    epochs=1, seed=1, eval_dataset_id=live["labelled"])
    assert alone.status_code == 202 and scored.status_code == 202, (alone.text, scored.text)
    assert "no eval_dataset_id" in alone.json()["params"]["evaluation_skipped"]
    assert scored.json()["params"]["eval_dataset_id"] == live["labelled"]

    # A stream read in part, then resumed after the last id it saw, misses nothing and
    # repeats nothing.
    first = sse(url, scored.json()["id"], {}, most=2)
    assert all(event_id is not None for event_id, _ in first)
    rest = sse(url, scored.json()["id"], {"Last-Event-ID": str(first[-1][0])})
    assert rest[-1] == (None, "end")
    ids = [event_id for event_id, _ in first + rest[:-1]]
    assert ids == sorted(set(ids)) and min(i for i, _ in rest[:-1]) > first[-1][0]
    listed = httpx.get(f"{url}/v1/jobs/{scored.json()['id']}/events",
                       headers=h(ALICE), params={"limit": 500}).json()["data"]
    assert ids == [e["id"] for e in listed]
    assert "status" in {kind for _, kind in rest}

    done = finished(url, alone.json()["id"])
    assert done["progress"]["phase"] == "succeeded"  # status and phase agree
    assert done["result"]["evaluation"] == {}
    assert "not evaluated" in done["result"]["evaluation_skipped"]
    card = card_of(url, done)
    assert card["evaluation"] == [] and card["pretraining_data"]["images"] == 546
    assert "not evaluated" in card["lineage"]["evaluation_skipped"]

    done = finished(url, scored.json()["id"])
    assert "evaluation_skipped" not in done["result"]
    assert {k.split("@")[0] for k in done["result"]["evaluation"]} == {
        "linear_probe", "random_init_linear_probe"}
    card = card_of(url, done)
    assert {e["protocol"] for e in card["evaluation"]} == {"linear_probe",
                                                          "random_init_linear_probe"}
    assert {e["dataset"] for e in card["evaluation"]} == {"breast"}
    assert card["lineage"]["eval_dataset"] == "breast"
    assert card["lineage"]["dataset"] == "breast-images"


def test_jobs_that_cannot_use_the_labels_are_refused(live: dict[str, Any]) -> None:
    url = live["url"]
    before = httpx.get(f"{url}/v1/jobs", headers=h(ALICE)).json()["count"]
    cases = [
        (dict(type="finetune", encoder=ENC, dataset_id=live["unlabelled"]),
         "dataset_id", "is unlabelled (images only) and fine-tuning needs labels"),
        (dict(type="finetune", encoder=ENC, dataset_id=live["labelled"],
              label_fraction=0.0001),
         "label_fraction", "the smallest label_fraction that gives that is 0.0103"),
        (dict(type="finetune", encoder=ENC, dataset_id=live["labelled"],
              eval_dataset_id=live["labelled"]),
         "eval_dataset_id", "only applies to pretrain jobs"),
        (dict(type="pretrain", method="simclr", dataset_id=live["labelled"],
              eval_dataset_id=live["unlabelled"]),
         "eval_dataset_id", "is unlabelled; evaluating an encoder needs a labelled dataset"),
    ]
    for body, field, message in cases:
        r = submit(url, **body)
        assert r.status_code == 422, r.text
        detail = r.json()["detail"][0]
        assert detail["loc"][-1] == field and message in detail["msg"], detail
    assert "1 labelled training image(s) per class at the fewest" in json.dumps(
        submit(url, **cases[1][0]).json())
    ok = submit(url, type="finetune", encoder=ENC, dataset_id=live["labelled"],
                label_fraction=0.02, mode="linear_probe", epochs=1)
    assert ok.status_code == 202, ok.text
    assert ok.json()["params"]["few_labels"] is True
    assert ok.json()["params"]["labelled_per_class_min"] == 3
    httpx.post(f"{url}/v1/jobs/{ok.json()['id']}/cancel", headers=h(ALICE))
    bad = httpx.get(f"{url}/v1/jobs/{ok.json()['id']}/events", headers={
        **h(ALICE), "Accept": "text/event-stream", "Last-Event-ID": "not-a-number"})
    assert bad.status_code == 422
    assert httpx.get(f"{url}/v1/jobs", headers=h(ALICE)).json()["count"] == before + 1


def test_the_unlabelled_summary(live: dict[str, Any]) -> None:
    got = httpx.get(f"{live['url']}/v1/datasets/{live['unlabelled']}", headers=h(ALICE))
    body = got.json()
    assert (body["labelled"], body["num_classes"]) == (False, 0)
    assert body["summary"]["splits"] == {"train": {"images": 546}}
