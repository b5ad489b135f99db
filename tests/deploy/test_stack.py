"""The three journeys and the faults, against the compose stack started for real:
PostgreSQL, the API, a Ray head and a CPU worker (tests/deploy/conftest.py).

Tests run in file order and share the stack: later ones count on what earlier ones made.
"""

from __future__ import annotations

import hashlib
import io
import time
from pathlib import Path

import numpy as np
import pytest

from tests.utils import DATA_DIR

from .conftest import Stack

ENCODER = "taskalign/resnet18-2d.simclr-pneumoniamnist"
STATE: dict[str, object] = {}  # ids made by one test and checked by a later one


def pneumonia_npz(train: int = 320) -> bytes:
    source = DATA_DIR / "medmnist" / "pneumoniamnist.npz"
    if not source.exists():
        pytest.skip(f"real data not found at {source}")
    buf = io.BytesIO()
    with np.load(source) as data:
        cut = {"train": train, "val": 96, "test": 96}
        np.savez(buf, **{f"{s}_{k}": data[f"{s}_{k}"][:n] for s, n in cut.items()
                         for k in ("images", "labels")})
    return buf.getvalue()


def submit(stack: Stack, epochs: int, dataset_id: int) -> dict:
    with stack.client() as c:
        r = c.post("/v1/jobs", json={"type": "finetune", "dataset_id": dataset_id,
                                     "encoder": ENCODER, "mode": "full", "epochs": epochs,
                                     "device": "cpu"})
    assert r.status_code == 202, r.text
    return r.json()


def wait_for(stack: Stack, job_id: int, done: set[str], timeout: float = 600,
             epoch_at_least: int | None = None) -> dict:
    deadline = time.monotonic() + timeout
    job: dict = {}
    while time.monotonic() < deadline:
        try:
            with stack.client() as c:
                job = c.get(f"/v1/jobs/{job_id}").json()
        except Exception:  # the API may be restarting
            time.sleep(1)
            continue
        if job["status"] in done and (epoch_at_least is None or
                                      job["progress"].get("epoch", 0) >= epoch_at_least):
            return job
        if job["status"] in {"failed", "cancelled"} - done:
            raise AssertionError(f"job {job_id} ended {job['status']}: {job.get('error')}")
        time.sleep(1)
    raise AssertionError(f"job {job_id} did not reach {done} in {timeout:.0f} s: {job}")


def test_recommendation(stack: Stack) -> None:
    with stack.client() as c:
        r = c.post("/v1/recommendations", json={"task": "classification", "modality": "cxr",
                                                "label_regime": "low"})
    assert r.status_code == 200
    body = r.json()
    assert body["recommendations"] and ENCODER in [e["name"] for e in body["encoders"]]


def test_encoder_download_with_huggingface_hub(stack: Stack, tmp_path: Path) -> None:
    from huggingface_hub import snapshot_download

    folder = Path(snapshot_download(ENCODER, endpoint=f"{stack.url}/hf", cache_dir=tmp_path))
    with stack.client() as c:
        files = c.get(f"/v1/encoders/{ENCODER}").json()["card"]["files"]
    for name, entry in files.items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == entry["sha256"]


def test_finetune_job_lands_in_the_zoo(stack: Stack) -> None:
    with stack.client() as c:
        r = c.post("/v1/datasets", data={"name": "pneumonia-small", "modality": "xray"},
                   files={"file": ("p.npz", pneumonia_npz(), "application/octet-stream")})
    assert r.status_code == 201, r.text
    STATE["dataset"] = r.json()["id"]
    start = time.monotonic()
    job = wait_for(stack, submit(stack, 3, r.json()["id"])["id"], {"succeeded"})
    stack.timings["finetune_3_epochs"] = time.monotonic() - start
    with stack.client() as c:
        model = c.get(f"/v1/encoders/{job['result']['encoder']}")
    assert model.status_code == 200 and model.json()["card"]["task"]["kind"] == "classification"
    STATE["model"] = job["result"]["encoder"]


def test_a_killed_worker_is_retried_and_the_job_finishes_once(stack: Stack) -> None:
    job = submit(stack, 40, int(STATE["dataset"]))
    wait_for(stack, job["id"], {"running"}, epoch_at_least=2)
    worker = stack.container("worker-cpu")
    stack.docker("kill", worker)
    time.sleep(3)
    stack.docker("start", worker)  # what an orchestrator's restart does
    done = wait_for(stack, job["id"], {"succeeded"}, timeout=900)
    assert done["attempts"] == 2
    with stack.client() as c:
        models = c.get("/v1/encoders", params={"q": f"ft-job{job['id']}-"}).json()
    assert [m["name"] for m in models["data"]] == [done["result"]["encoder"]]  # once


def test_restarting_the_api_loses_no_job(stack: Stack) -> None:
    job = submit(stack, 6, int(STATE["dataset"]))
    stack.docker("restart", stack.container("api"))
    stack.wait_healthy()
    done = wait_for(stack, job["id"], {"succeeded"})
    assert done["attempts"] == 1
    STATE["jobs"] = done["id"]


def test_down_and_up_keeps_zoo_datasets_and_jobs(stack: Stack) -> None:
    with stack.client() as c:
        before = {k: c.get(f"/v1/{k}", params={"limit": 500}).json()["count"]
                  for k in ("encoders", "datasets", "jobs")}
    stack.compose("down")
    stack.compose("up", "-d", "--no-build")
    stack.wait_healthy(seeds=before["encoders"])
    with stack.client() as c:
        after = {k: c.get(f"/v1/{k}", params={"limit": 500}).json()["count"]
                 for k in ("encoders", "datasets", "jobs")}
        assert c.get(f"/v1/encoders/{STATE['model']}").status_code == 200
    assert after == before and before["jobs"] >= 1


def test_the_ray_executor_runs_and_cancels_jobs(stack: Stack) -> None:
    # The same stack with TASKALIGN_EXECUTOR=ray: the worker joins the head as a Ray node.
    stack.env["TASKALIGN_EXECUTOR"] = "ray"
    stack.compose("up", "-d", "--no-build")
    stack.wait_healthy()
    dashboard = f"http://127.0.0.1:{stack.env['TASKALIGN_RAY_DASHBOARD_PORT']}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        nodes = stack.compose("exec", "-T", "ray-head", "ray", "list", "nodes", "--format",
                              "yaml", check=False).stdout
        if nodes.count("state: ALIVE") >= 2:
            break
        time.sleep(3)
    else:
        raise AssertionError(f"the worker did not join the Ray head:\n{nodes}")
    job = wait_for(stack, submit(stack, 3, int(STATE["dataset"]))["id"], {"succeeded"})
    # The job is marked succeeded by the runner, which then exits: Ray follows shortly.
    assert ray_status(dashboard, job["id"], {"SUCCEEDED"}) == "SUCCEEDED"

    long = submit(stack, 200, int(STATE["dataset"]))
    wait_for(stack, long["id"], {"running"}, epoch_at_least=1)
    with stack.client() as c:
        assert c.post(f"/v1/jobs/{long['id']}/cancel").status_code == 200
    wait_for(stack, long["id"], {"cancelled"}, timeout=120)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # the process itself is gone from the Ray node
        procs = stack.compose("exec", "-T", "worker-cpu", "sh", "-c",
                              "cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' '",
                              check=False).stdout
        if f"service.jobs.runner {long['id']} " not in procs:
            break
        time.sleep(2)
    else:
        raise AssertionError("the cancelled job's process still runs on the Ray worker")
    assert ray_status(dashboard, long["id"], {"STOPPED", "FAILED"}) in ("STOPPED", "FAILED")


def ray_status(dashboard: str, job_id: int, wanted: set[str], timeout: float = 60) -> str:
    """The Ray job status of our job `job_id` once it is one of `wanted` (or the last seen)."""
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(dashboard)
    status = "none"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ours = [j for j in client.list_jobs()
                if (j.metadata or {}).get("taskalign_job") == str(job_id)]
        status = str(ours[-1].status) if ours else "none"
        if status in wanted:
            break
        time.sleep(2)
    return status
