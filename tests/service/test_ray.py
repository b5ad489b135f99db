"""The Ray executor against a real Ray head started here (not Ray's local mode): the same
job gives the same result as under the local executor, its logs come through Ray, cancel
stops the Ray job, and a retry after a dispatcher died stops the earlier Ray job first."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Server, free_port
from tests.service.test_jobs import ALICE, ENC, TOKENS, h, job, seed_server, wait_for

pytest.importorskip("ray", reason="ray is not installed (pip install 'ray[default]')")


@pytest.fixture(scope="module")
def ray_head() -> Iterator[str]:
    ray = shutil.which("ray", path=os.path.dirname(sys.executable))
    port, dash = free_port(), free_port()
    temp = f"/tmp/rt{uuid.uuid4().hex[:6]}"
    proc = subprocess.Popen(
        [ray, "start", "--head", f"--port={port}", "--num-cpus=2", "--dashboard-host=127.0.0.1",
         "--node-ip-address=127.0.0.1", f"--dashboard-port={dash}", "--disable-usage-stats",
         "--block", f"--temp-dir={temp}",
         "--include-dashboard=true"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{dash}"
    try:
        wait_for(lambda: _up(url), timeout=120, every=0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # only the head this test started
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)


def _up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/api/version", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def ray_worker(home: Path, head: str, **env: str) -> subprocess.Popen:
    """`taskalign worker --executor ray` as its own process (a dispatcher); its output goes
    to a log file in `home`, kept with the test's temporary directory."""
    with open(home / f"dispatcher-{uuid.uuid4().hex[:6]}.log", "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "service.cli", "worker", "--executor",
                                 "ray", "--ray-address", head],
                                env={**os.environ, "TASKALIGN_HOME": str(home), **TOKENS,
                                     **env}, stdout=out, stderr=subprocess.STDOUT)


def ray_status(head: str, server: Server, job_id: int, attempt: int) -> str:
    from datetime import datetime

    from ray.job_submission import JobSubmissionClient

    from service.jobs.ray_executor import submission_id

    created = datetime.fromisoformat(job(server.url, job_id)["created_at"])
    try:
        status = JobSubmissionClient(head).get_job_status(
            submission_id(job_id, created, attempt))
    except RuntimeError:  # not submitted (yet)
        return "ABSENT"
    return str(status).split(".")[-1]


def start_long_job(server: Server, ds: int) -> int:
    """A fine-tune long enough to be cancelled mid-run; returns once it trains in Ray."""
    j = httpx.post(f"{server.url}/v1/jobs", headers=h(ALICE), json={
        "type": "finetune", "encoder": ENC, "dataset_id": ds, "mode": "full",
        "label_fraction": 1.0, "epochs": 500}).json()
    try:
        wait_for(lambda: job(server.url, j["id"])["progress"].get("epoch", 0) >= 1,
                 timeout=180)
    except AssertionError:
        raise AssertionError(f"job never trained: {job(server.url, j['id'])}") from None
    return j["id"]


def run_job(server: Server, ds: int) -> dict:
    j = httpx.post(f"{server.url}/v1/jobs", headers=h(ALICE), json={
        "type": "finetune", "encoder": ENC, "dataset_id": ds, "mode": "linear_probe",
        "label_fraction": 0.5, "seed": 3}).json()
    return wait_for(lambda: (x := job(server.url, j["id"]))["status"] in
                    ("succeeded", "failed") and x, timeout=300)


def test_same_job_same_result_under_both_executors(ray_head: str, tmp_path: Path) -> None:
    ray_home, local_home = tmp_path / "ray", tmp_path / "local"
    api = Server(ray_home, TASKALIGN_WORKER="false", TASKALIGN_RAY_ADDRESS=ray_head, **TOKENS)
    env = {**os.environ, "TASKALIGN_HOME": str(ray_home), **TOKENS}
    worker = subprocess.Popen([sys.executable, "-m", "service.cli", "worker", "--executor",
                               "ray", "--ray-address", ray_head], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        by_ray = run_job(api, seed_server(api.url, api.home))
        assert by_ray["status"] == "succeeded", by_ray["error"]
        assert by_ray["worker"].startswith("ray:")
        logs = httpx.get(f"{api.url}/v1/jobs/{by_ray['id']}/logs", headers=h(ALICE)).text
        assert "taskalign-job-" in logs and "test AUC" in logs
        # The runner ends the job, then exits; the dispatcher must not stop it on the way
        # out (it once read the ended job as taken from it and stopped the Ray job).
        wait_for(lambda: ray_status(ray_head, api, by_ray["id"], 1) in
                 ("SUCCEEDED", "STOPPED", "FAILED"), timeout=60)
        assert ray_status(ray_head, api, by_ray["id"], 1) == "SUCCEEDED"
    finally:
        worker.terminate()
        worker.wait(timeout=20)
        api.stop()
    local = Server(local_home, TASKALIGN_WORKER="true", **TOKENS)
    try:
        by_local = run_job(local, seed_server(local.url, local.home))
    finally:
        local.stop()
    assert by_local["status"] == "succeeded" and not by_local["worker"].startswith("ray:")
    ray_eval, local_eval = by_ray["result"]["evaluation"], by_local["result"]["evaluation"]
    assert ray_eval["test_auc"] == pytest.approx(local_eval["test_auc"], abs=1e-3)
    assert ray_eval["test_acc"] == pytest.approx(local_eval["test_acc"], abs=1e-3)


def test_cancel_stops_the_ray_job(ray_head: str, tmp_path: Path) -> None:
    api = Server(tmp_path, TASKALIGN_WORKER="false", TASKALIGN_RAY_ADDRESS=ray_head, **TOKENS)
    worker = ray_worker(tmp_path, ray_head)
    try:
        job_id = start_long_job(api, seed_server(api.url, api.home))
        assert ray_status(ray_head, api, job_id, 1) == "RUNNING"
        t0 = time.monotonic()
        r = httpx.post(f"{api.url}/v1/jobs/{job_id}/cancel", headers=h(ALICE))
        assert r.status_code == 200 and r.json()["cancel_requested"], r.text
        wait_for(lambda: job(api.url, job_id)["status"] == "cancelled", timeout=30)
        elapsed = time.monotonic() - t0
        assert ray_status(ray_head, api, job_id, 1) == "STOPPED"
        assert elapsed < 10, f"cancel took {elapsed:.1f} s"
    finally:
        worker.terminate()
        worker.wait(timeout=20)
        api.stop()


def test_retry_after_dispatcher_death_stops_the_earlier_ray_job(ray_head: str,
                                                               tmp_path: Path) -> None:
    stale = {"TASKALIGN_JOB_STALE_SECONDS": "3"}
    api = Server(tmp_path, TASKALIGN_WORKER="false", TASKALIGN_RAY_ADDRESS=ray_head, **TOKENS)
    first = ray_worker(tmp_path, ray_head, **stale)
    second = None
    try:
        job_id = start_long_job(api, seed_server(api.url, api.home))
        first.send_signal(signal.SIGKILL)  # the dispatcher dies; its Ray job does not
        first.wait(timeout=20)
        assert ray_status(ray_head, api, job_id, 1) == "RUNNING"
        second = ray_worker(tmp_path, ray_head, **stale)
        # The row says attempt 2 as soon as the job is claimed; the Ray job of attempt 2
        # exists only once the dispatcher has seen attempt 1 end.
        wait_for(lambda: ray_status(ray_head, api, job_id, 2) == "RUNNING", timeout=120)
        assert ray_status(ray_head, api, job_id, 1) == "STOPPED"
        assert job(api.url, job_id)["attempts"] == 2
        httpx.post(f"{api.url}/v1/jobs/{job_id}/cancel", headers=h(ALICE))
        wait_for(lambda: job(api.url, job_id)["status"] == "cancelled", timeout=30)
    finally:
        first.kill()
        if second is not None:
            second.terminate()
            second.wait(timeout=20)
        api.stop()
