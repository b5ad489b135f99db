"""Jobs end to end: real HTTP, real worker processes, real MedMNIST data."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from tests.conftest import POSTGRES_URL, Server, postgres_available
from tests.utils import (
    DATA_DIR,
    card,
    fresh_postgres_database,
    repo,
    upload_files,
    user_dataset,
    weights,
)

ALICE, BOB, ADMIN = "alice-token-0123456789", "bob-token-0123456789", "admin-token-0123456789"
ENC_NAME = "resnet18-2d.jobs-breast"
ENC = repo(ENC_NAME)  # the admin uploads it: taskalign/...
TOKENS = {"TASKALIGN_API_TOKENS": f"alice={ALICE},bob={BOB}",
          "TASKALIGN_ADMIN_TOKENS": ADMIN, "TASKALIGN_DATA_DIR": str(DATA_DIR)}


def h(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def wait_for(fn: Callable[[], Any], timeout: float = 120, every: float = 0.3) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"condition not met in {timeout} s")


def seed_server(url: str, home: Path) -> int:
    """A public encoder (the admin's, so under taskalign/) and Alice's BreastMNIST dataset,
    registered as a path in her own folder TASKALIGN_HOME/datasets/alice/ (`home` is the
    server's TASKALIGN_HOME); returns the dataset id."""
    c = card(ENC_NAME, arch={"name": "resnet18", "args": {"widths": [8, 8, 16, 16]}})
    c["modality"] = "ultrasound"
    r = httpx.post(f"{url}/v1/encoders", files=upload_files(c, weights(c)), headers=h(ADMIN),
                   timeout=120)
    assert r.status_code == 201, r.text
    assert r.json()["repo_id"] == ENC
    path = user_dataset(home, "alice", DATA_DIR / "medmnist" / "breastmnist.npz")
    r = httpx.post(f"{url}/v1/datasets", headers=h(ALICE), json={
        "name": "breast", "path": str(path), "modality": "ultrasound"})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def job(url: str, job_id: int, token: str = ALICE) -> dict[str, Any]:
    return httpx.get(f"{url}/v1/jobs/{job_id}", headers=h(token)).json()


@pytest.fixture(params=["sqlite", "postgresql"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, int]]:
    env = dict(TOKENS, TASKALIGN_WORKER="true", TASKALIGN_JOB_STALE_SECONDS="3")
    if request.param == "postgresql":
        reason = postgres_available()
        if reason:
            pytest.skip(reason)
        with fresh_postgres_database(POSTGRES_URL) as url:
            s = Server(tmp_path, TASKALIGN_DATABASE_URL=url, **env)
            try:
                yield s.url, seed_server(s.url, s.home)
            finally:
                s.stop()
        return
    s = Server(tmp_path, **env)
    try:
        yield s.url, seed_server(s.url, s.home)
    finally:
        s.stop()


def test_finetune_runs_to_a_new_encoder(server: tuple[str, int]) -> None:
    url, ds = server
    r = httpx.post(f"{url}/v1/jobs", headers=h(ALICE), json={
        "type": "finetune", "encoder": ENC, "dataset_id": ds, "label_fraction": 0.5,
        "epochs": 2, "mode": "full"})
    assert r.status_code == 202, r.text
    submitted = r.json()
    assert submitted["status"] == "queued" and submitted["params"]["lr"] == 1e-3
    assert submitted["params"]["auto"]["label_regime"] in ("moderate", "full")
    done = wait_for(lambda: (j := job(url, submitted["id"]))["status"] in
                    ("succeeded", "failed") and j)
    assert done["status"] == "succeeded", done["error"]
    # "auto" must pick the GPU where there is one (this suite also runs on a GPU machine).
    expected_device = "cuda" if torch.cuda.is_available() else "cpu"
    assert done["progress"]["epoch"] == 2 and done["device"] == expected_device
    assert 0.5 <= done["result"]["evaluation"]["test_auc"] <= 1.0
    events = httpx.get(f"{url}/v1/jobs/{submitted['id']}/events", headers=h(ALICE)).json()
    kinds = [e["type"] for e in events["data"]]
    statuses = [e["data"]["status"] for e in events["data"] if e["type"] == "status"]
    assert statuses == ["queued", "running", "succeeded"] and "metrics" in kinds
    name = done["result"]["encoder"]
    # Alice's job on Alice's data: a private repository in her namespace.
    assert name.startswith("alice/resnet18-2d.ft-job") and done["result"]["private"] is True
    enc = httpx.get(f"{url}/v1/encoders/{name}", headers=h(ALICE)).json()
    assert enc["owner"] == "alice" and enc["private"] is True
    assert enc["revisions"][-1]["commit"] == done["result"]["commit"]
    assert enc["card"]["parent"] == ENC
    assert enc["card"]["lineage"]["job_id"] == submitted["id"]
    assert enc["card"]["lineage"]["dataset"] == "breast"
    f = httpx.get(f"{url}/v1/encoders/{name}/files/model.safetensors", headers=h(ALICE))
    assert f.status_code == 200 and len(f.content) > 1000
    logs = httpx.get(f"{url}/v1/jobs/{submitted['id']}/logs", headers=h(ALICE)).text
    assert "test AUC" in logs


def test_cancel_and_idempotency_and_scoping(tmp_path: Path) -> None:
    s = Server(tmp_path, TASKALIGN_WORKER="true", **TOKENS)
    try:
        ds = seed_server(s.url, s.home)
        body = {"type": "finetune", "encoder": ENC, "dataset_id": ds, "epochs": 400,
                "mode": "full"}
        first = httpx.post(f"{s.url}/v1/jobs", headers={**h(ALICE), "Idempotency-Key": "k1"},
                           json=body).json()
        again = httpx.post(f"{s.url}/v1/jobs", headers={**h(ALICE), "Idempotency-Key": "k1"},
                           json=body)
        assert again.status_code == 202 and again.json()["id"] == first["id"]
        clash = httpx.post(f"{s.url}/v1/jobs", headers={**h(ALICE), "Idempotency-Key": "k1"},
                           json={**body, "epochs": 3})
        assert clash.status_code == 409
        assert httpx.get(f"{s.url}/v1/jobs", headers=h(ALICE)).json()["count"] == 1
        assert httpx.get(f"{s.url}/v1/jobs/{first['id']}", headers=h(BOB)).status_code == 404
        assert httpx.post(f"{s.url}/v1/jobs/{first['id']}/cancel",
                          headers=h(BOB)).status_code == 404
        assert httpx.get(f"{s.url}/v1/jobs", headers=h(ADMIN)).json()["count"] == 1
        wait_for(lambda: job(s.url, first["id"])["progress"].get("epoch", 0) >= 1, 180)
        t0 = time.monotonic()
        r = httpx.post(f"{s.url}/v1/jobs/{first['id']}/cancel", headers=h(ALICE))
        assert r.status_code == 200
        wait_for(lambda: job(s.url, first["id"])["status"] == "cancelled", 10, 0.2)
        assert time.monotonic() - t0 < 10
        assert httpx.post(f"{s.url}/v1/jobs/{first['id']}/cancel",
                          headers=h(ALICE)).status_code == 409
    finally:
        s.stop()


@pytest.mark.parametrize(("patch", "field", "message"), [
    ({"encoder": "taskalign/resnet18-2d.nope"}, "encoder", "unknown encoder"),
    ({"encoder": ENC_NAME}, "encoder", "ids are owner/name"),  # a bare name is no repo id
    ({"epochs": 0}, "epochs", "between"),
    ({"lr": 5}, "lr", "between"),
    ({"dataset_id": 999}, "dataset_id", "no dataset"),
    ({"type": "pretrain", "method": "rubiks_cube"}, "method", "supports 3d"),
    ({"type": "pretrain", "method": "nope"}, "method", "implemented method"),
    ({"label_fraction": 0}, "label_fraction", "greater than 0"),
])
def test_invalid_submissions_create_nothing(tmp_path_factory: pytest.TempPathFactory,
                                            patch: dict, field: str, message: str) -> None:
    s = _shared_server(tmp_path_factory)
    base = {"type": "finetune", "encoder": ENC, "dataset_id": s["ds"], "epochs": 2}
    r = httpx.post(f"{s['url']}/v1/jobs", headers=h(ALICE), json={**base, **patch})
    assert r.status_code == 422, r.text
    assert message in r.text and field in r.text
    assert httpx.get(f"{s['url']}/v1/jobs", headers=h(ADMIN)).json()["count"] == 0


def test_mismatched_channels_refused(tmp_path_factory: pytest.TempPathFactory) -> None:
    s = _shared_server(tmp_path_factory)
    path = user_dataset(s["server"].home, "alice", DATA_DIR / "extra" / "bccd_28.npz")
    rgb = httpx.post(f"{s['url']}/v1/datasets", headers=h(ALICE), json={
        "name": "bccd", "path": str(path)}).json()
    r = httpx.post(f"{s['url']}/v1/jobs", headers=h(ALICE), json={
        "type": "finetune", "encoder": ENC, "dataset_id": rgb["id"]})
    assert r.status_code == 422 and "channel" in r.text
    assert httpx.get(f"{s['url']}/v1/jobs", headers=h(ADMIN)).json()["count"] == 0
    assert httpx.post(f"{s['url']}/v1/jobs", json={}).status_code == 401


_SHARED: dict[str, Any] = {}


def _shared_server(factory: pytest.TempPathFactory) -> dict[str, Any]:
    if not _SHARED:
        s = Server(factory.mktemp("jobs-shared"), TASKALIGN_WORKER="false", **TOKENS)
        _SHARED.update(server=s, url=s.url, ds=seed_server(s.url, s.home))
    return _SHARED


@pytest.fixture(scope="module", autouse=True)
def _stop_shared() -> Iterator[None]:
    yield
    if _SHARED:
        _SHARED["server"].stop()
        _SHARED.clear()


def start_worker(home: Path, stale: str = "2") -> subprocess.Popen:
    env = {**os.environ, "TASKALIGN_HOME": str(home), "TASKALIGN_JOB_STALE_SECONDS": stale,
           **TOKENS}
    return subprocess.Popen([sys.executable, "-m", "service.cli", "worker"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_worker_death_retries_once_then_fails(tmp_path: Path) -> None:
    s = Server(tmp_path, TASKALIGN_WORKER="false", TASKALIGN_JOB_STALE_SECONDS="2", **TOKENS)
    workers: list[subprocess.Popen] = []
    try:
        ds = seed_server(s.url, s.home)
        j = httpx.post(f"{s.url}/v1/jobs", headers=h(ALICE), json={
            "type": "finetune", "encoder": ENC, "dataset_id": ds, "epochs": 400,
            "mode": "full"}).json()
        for attempt in (1, 2):
            # each new worker first reaps the dead one's job, then claims it again
            workers.append(start_worker(tmp_path))
            wait_for(lambda a=attempt: (x := job(s.url, j["id"]))["status"] == "running"
                     and x["attempts"] == a and x["progress"].get("epoch", 0) >= 1, 180)
            workers[-1].send_signal(signal.SIGKILL)
            workers[-1].wait()
        workers.append(start_worker(tmp_path))  # its reaper sees the second death
        try:
            final = wait_for(lambda: (x := job(s.url, j["id"]))["status"] == "failed" and x, 60)
        except AssertionError:
            raise AssertionError(f"job never failed: {job(s.url, j['id'])}") from None
        assert "no attempts left" in final["error"] and final["attempts"] == 2
        events = httpx.get(f"{s.url}/v1/jobs/{j['id']}/events", headers=h(ALICE)).json()
        assert any(e["data"].get("retry") for e in events["data"])
    finally:
        for w in workers:
            if w.poll() is None:
                w.terminate()
                w.wait(timeout=10)
        s.stop()


def test_restart_keeps_queued_jobs_and_sse(tmp_path: Path) -> None:
    s = Server(tmp_path, TASKALIGN_WORKER="false", **TOKENS)
    ds = seed_server(s.url, s.home)
    ids = [httpx.post(f"{s.url}/v1/jobs", headers=h(ALICE), json={
        "type": "finetune", "encoder": ENC, "dataset_id": ds, "epochs": 1,
        "mode": "linear_probe", "seed": i}).json()["id"] for i in range(2)]
    s.stop()
    s2 = Server(tmp_path, TASKALIGN_WORKER="true", **TOKENS)
    try:
        with httpx.stream("GET", f"{s2.url}/v1/jobs/{ids[1]}/events",
                          headers={**h(ALICE), "Accept": "text/event-stream"},
                          timeout=180) as stream:
            lines = [ln for ln in stream.iter_lines() if ln.startswith("event:")]
        assert lines[-1] == "event: end" and "event: status" in lines
        for i in ids:
            assert job(s2.url, i)["status"] == "succeeded"
    finally:
        s2.stop()


def test_pretrain_job_makes_a_new_encoder(tmp_path: Path) -> None:
    s = Server(tmp_path, TASKALIGN_WORKER="true", **TOKENS)
    try:
        ds = seed_server(s.url, s.home)
        r = httpx.post(f"{s.url}/v1/jobs", headers=h(ALICE), json={
            "type": "pretrain", "dataset_id": ds, "method": "simclr", "epochs": 1})
        assert r.status_code == 202, r.text
        params = r.json()["params"]
        assert "rotation_90" not in params["auto"]["augmentations"]  # breast: orientation
        assert "speckle_noise" in params["auto"]["augmentations"]    # ultrasound noise
        done = wait_for(lambda: (x := job(s.url, r.json()["id"]))["status"] in
                        ("succeeded", "failed") and x, 300)
        assert done["status"] == "succeeded", done["error"]
        name = done["result"]["encoder"]
        assert name.startswith("alice/resnet18-2d.simclr-breast")
        assert done["result"]["private"] is True
        assert httpx.get(f"{s.url}/v1/encoders/{name}").status_code == 404  # private
        card = httpx.get(f"{s.url}/v1/encoders/{name}", headers=h(ALICE)).json()["card"]
        assert card["lineage"]["job_id"] == r.json()["id"]
        assert {e["protocol"] for e in card["evaluation"]} == {
            "linear_probe", "random_init_linear_probe"}
        # Watchable like a fine-tune: percent, loss and history, curves as an artifact.
        assert done["progress"]["percent"] == 100.0 and done["progress"]["loss"] > 0
        assert [r["epoch"] for r in done["metrics"]["history"]] == [1]
        assert done["progress"]["phase"] == "succeeded"
        png = httpx.get(s.url + card["lineage"]["curves_png"], headers=h(ALICE))
        assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
    finally:
        s.stop()


def test_sigterm_hands_the_running_job_back_without_spending_an_attempt(
        tmp_path: Path) -> None:
    """A deploy stops the API with SIGTERM: the job it was running goes back to the queue
    with its attempt given back, and the next server runs it to the end."""
    s = Server(tmp_path, TASKALIGN_WORKER="true", **TOKENS)
    try:
        ds = seed_server(s.url, s.home)
        job_id = httpx.post(f"{s.url}/v1/jobs", headers=h(ALICE), json={
            "type": "finetune", "encoder": ENC, "dataset_id": ds, "epochs": 200,
            "mode": "full"}).json()["id"]
        wait_for(lambda: job(s.url, job_id)["progress"].get("epoch", 0) >= 1, 180)
    finally:
        s.stop()  # SIGTERM, as a deploy would
    s2 = Server(tmp_path, TASKALIGN_WORKER="false", **TOKENS)
    try:
        handed_back = job(s2.url, job_id)
        assert handed_back["status"] == "queued" and handed_back["attempts"] == 0
        events = httpx.get(f"{s2.url}/v1/jobs/{job_id}/events", headers=h(ALICE)).json()
        assert any(e["data"].get("attempt_counted") is False for e in events["data"])
        assert httpx.post(f"{s2.url}/v1/jobs/{job_id}/cancel",
                          headers=h(ALICE)).json()["status"] == "cancelled"
    finally:
        s2.stop()
