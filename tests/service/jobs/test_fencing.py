"""Exactly-once effects: every claim takes a lease (fencing token); an attempt that lost it
writes nothing, on SQLite and PostgreSQL, from queue calls up to real worker processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, func, select, update
from sqlalchemy.orm import sessionmaker

from service.jobs import queue
from service.jobs.models import JobEventRow, JobRow
from service.jobs.runner import complete
from service.migrate import upgrade
from tests.conftest import Server
from tests.service.test_jobs import wait_for
from tests.utils import DATA_DIR, card, upload_files, weights
from zoo.catalog import EncoderRow
from zoo.registry import Registry, prepare
from zoo.storage import BlobStore


@pytest.fixture
def sessions(database_url: str) -> Iterator[sessionmaker]:
    engine = create_engine(database_url)
    upgrade(engine)
    yield sessionmaker(engine, expire_on_commit=False)
    engine.dispose()


def submit(sessions: sessionmaker) -> int:
    job, _ = queue.submit(sessions, "alice", "finetune", {"x": 1}, {"x": 1}, None)
    return job.id


def make_stale(sessions: sessionmaker, job_id: int) -> None:
    with sessions.begin() as s:
        s.execute(update(JobRow).where(JobRow.id == job_id)
                  .values(heartbeat_at=queue.utcnow() - timedelta(seconds=60)))


def statuses(sessions: sessionmaker, job_id: int) -> list[str]:
    with sessions() as s:
        return [e.data.get("status") or e.type for e in s.scalars(
            select(JobEventRow).where(JobEventRow.job_id == job_id).order_by(JobEventRow.id))]


def test_a_reaped_attempt_can_write_nothing(sessions: sessionmaker) -> None:
    job_id = submit(sessions)
    first = queue.claim(sessions, "worker-a")
    assert first.lease == 1
    queue.progress(sessions, job_id, 1, {"epoch": 1}, {"loss": 1.0}, "epoch 1")
    make_stale(sessions, job_id)
    assert queue.reap(sessions, stale_after=5) == [job_id]
    # Reaped, not yet claimed again: the stale attempt's writes are refused.
    with pytest.raises(queue.LeaseLost):
        queue.progress(sessions, job_id, 1, {"epoch": 2})
    with pytest.raises(queue.LeaseLost):
        queue.heartbeat(sessions, job_id, 1)
    assert not queue.finish(sessions, job_id, 1, "succeeded", result={"stale": True})
    assert not queue.hand_back(sessions, job_id, 1, "stale shutdown")
    second = queue.claim(sessions, "worker-b")
    assert (second.id, second.lease, second.attempts) == (job_id, 2, 2)
    # Claimed again: still refused, while the new lease writes.
    with pytest.raises(queue.LeaseLost):
        queue.progress(sessions, job_id, 1, {"epoch": 3})
    assert not queue.finish(sessions, job_id, 1, "succeeded", result={"stale": True})
    assert queue.owns(sessions, job_id, 2) and not queue.owns(sessions, job_id, 1)
    queue.progress(sessions, job_id, 2, {"epoch": 1})
    assert queue.finish(sessions, job_id, 2, "succeeded", result={"fresh": True})
    # Finished: nobody writes after the end, not even the lease that finished it.
    with pytest.raises(queue.LeaseLost):
        queue.progress(sessions, job_id, 2, {"epoch": 9}, line="late")
    assert not queue.finish(sessions, job_id, 2, "failed", error="late")
    with sessions() as s:
        row = s.get(JobRow, job_id)
        assert (row.status, row.result, row.progress) == ("succeeded", {"fresh": True},
                                                          {"epoch": 1, "phase": "succeeded"})
    events = statuses(sessions, job_id)
    assert events.count("succeeded") == 1 and events[-1] == "succeeded"


def test_hand_back_keeps_the_lease_rising(sessions: sessionmaker) -> None:
    """A hand-back returns the attempt, not the lease: the next claim fences the old one."""
    job_id = submit(sessions)
    assert queue.claim(sessions, "a").lease == 1
    assert queue.hand_back(sessions, job_id, 1, "shutdown")
    again = queue.claim(sessions, "b")
    assert (again.attempts, again.lease) == (1, 2)
    with pytest.raises(queue.LeaseLost):
        queue.heartbeat(sessions, job_id, 1)


def test_a_stale_attempt_registers_no_encoder(sessions: sessionmaker, tmp_path: Path) -> None:
    """Registration and the job's end share one transaction: with the lease gone, the
    revision is rolled back and its blobs removed."""
    store = BlobStore(tmp_path / "art")
    registry = Registry(sessions, store)
    job_id = submit(sessions)
    queue.claim(sessions, "a")
    make_stale(sessions, job_id)
    queue.reap(sessions, stale_after=5)
    queue.claim(sessions, "b")
    c = card("resnet18-2d.fenced")
    prepared = prepare(c, weights(c))
    with pytest.raises(queue.LeaseLost):
        registry.register(prepared, owner="alice", within=complete(job_id, 1, lambda s: {}))
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(EncoderRow)) == 0
    assert not store.all()
    stored = registry.register(prepared, owner="alice",
                               within=complete(job_id, 2, lambda s: {"encoder": s.repo_id}))
    with sessions() as s:
        assert s.get(JobRow, job_id).result == {"encoder": stored.repo_id}


ADMIN = "admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {ADMIN}"}


def start_worker(home: Path) -> subprocess.Popen:
    env = {**os.environ, "TASKALIGN_HOME": str(home), "TASKALIGN_JOB_STALE_SECONDS": "2",
           "TASKALIGN_ADMIN_TOKENS": ADMIN}
    return subprocess.Popen([sys.executable, "-m", "service.cli", "worker"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def runner_alive(worker: subprocess.Popen, job_id: int, lease: int) -> bool:
    """Whether `worker` has a live (not yet exited) runner child for this attempt. Only
    this worker's children count: tests running beside this one have their own job 1,
    lease 1. An exited child its stopped parent cannot reap is a zombie, not alive."""
    listed = subprocess.run(["ps", "-o", "stat=,args=", "--ppid", str(worker.pid)],
                            capture_output=True, text=True).stdout.splitlines()
    wanted = f"service.jobs.runner {job_id} {lease}"
    return any(not line.lstrip().startswith("Z") and line.rstrip().endswith(wanted)
               for line in listed)


def test_a_paused_worker_that_comes_back_changes_nothing(tmp_path: Path) -> None:
    """The attacker's finding: a worker paused past its lease (SIGSTOP: a hung host) came
    back while the retry ran, and both attempts reported. Now the paused attempt's runner
    stops itself when its lease goes, the retry runs alone, and the job ends once with one
    encoder."""
    s = Server(tmp_path, TASKALIGN_WORKER="false", TASKALIGN_ADMIN_TOKENS=ADMIN,
               TASKALIGN_DATA_DIR=str(DATA_DIR))
    workers: list[subprocess.Popen] = []
    try:
        c = card("resnet18-2d.fence-breast", arch={"name": "resnet18",
                                                   "args": {"widths": [8, 8, 16, 16]}})
        assert httpx.post(f"{s.url}/v1/encoders", files=upload_files(c, weights(c)),
                          headers=AUTH, timeout=120).status_code == 201
        ds = httpx.post(f"{s.url}/v1/datasets", headers=AUTH, json={
            "name": "breast", "path": str(DATA_DIR / "medmnist" / "breastmnist.npz"),
            "modality": "ultrasound"}).json()["id"]
        job_id = httpx.post(f"{s.url}/v1/jobs", headers=AUTH, json={
            "type": "finetune", "encoder": f"taskalign/{c['name']}", "dataset_id": ds,
            "epochs": 12, "mode": "full"}).json()["id"]

        def job() -> dict:
            return httpx.get(f"{s.url}/v1/jobs/{job_id}", headers=AUTH).json()

        workers.append(start_worker(tmp_path))
        wait_for(lambda: job()["progress"].get("epoch", 0) >= 1, 180)
        workers[0].send_signal(signal.SIGSTOP)  # its runner child keeps going, unfenced
        assert runner_alive(workers[0], job_id, 1)
        workers.append(start_worker(tmp_path))
        wait_for(lambda: job()["attempts"] == 2 and job()["status"] == "running", 60)
        # The first attempt's runner notices within about a second and exits.
        wait_for(lambda: not runner_alive(workers[0], job_id, 1), 10)
        workers[0].send_signal(signal.SIGCONT)
        final = wait_for(lambda: (j := job())["status"] in ("succeeded", "failed") and j, 300)
        assert final["status"] == "succeeded", final
        time.sleep(2)  # the resumed worker ticks; anything it would write lands by now
        events: list[dict] = []
        while page := httpx.get(f"{s.url}/v1/jobs/{job_id}/events", headers=AUTH, params={
                "limit": 500, "after": events[-1]["id"] if events else 0}).json()["data"]:
            events += page
        kinds = [(e["type"], e["data"].get("status")) for e in events]
        assert kinds.count(("status", "succeeded")) == 1 and kinds[-1] == ("status",
                                                                           "succeeded")
        retry = next(i for i, e in enumerate(events) if e["data"].get("retry"))
        rerun = next(i for i, e in enumerate(events) if e["data"].get("lease") == 2)
        assert retry < rerun and all(e["type"] == "status" for e in events[retry:rerun + 1])
        encoders = httpx.get(f"{s.url}/v1/encoders", headers=AUTH,
                             params={"q": f"ft-job{job_id}-"}).json()
        assert encoders["count"] == 1 and encoders["data"][0]["latest_revision"] == 1
        assert final["result"]["encoder"] == encoders["data"][0]["name"]
    finally:
        for w in workers:
            w.send_signal(signal.SIGCONT)
            w.terminate()
            w.wait(timeout=30)
        s.stop()
