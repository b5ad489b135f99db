"""A job that has ended says so in its progress too: status and `progress.phase` agree after
every way a job reaches a terminal status, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import create_engine, update
from sqlalchemy.orm import sessionmaker

from service.jobs import queue
from service.jobs.models import JobRow
from service.migrate import upgrade


@pytest.fixture
def sessions(database_url: str) -> Iterator[sessionmaker]:
    engine = create_engine(database_url)
    upgrade(engine)
    yield sessionmaker(engine, expire_on_commit=False)
    engine.dispose()


def running(sessions: sessionmaker) -> tuple[int, int]:
    """A claimed job whose runner has reported progress up to its registering phase."""
    job, _ = queue.submit(sessions, "alice", "finetune", {"x": 1}, {"x": 1}, None)
    claimed = queue.claim(sessions, "worker-a")
    assert claimed is not None and claimed.id == job.id
    queue.progress(sessions, job.id, claimed.lease, {"phase": "training", "epoch": 2})
    queue.progress(sessions, job.id, claimed.lease, {"phase": "registering"}, {"auc": 0.9})
    return job.id, claimed.lease


def stored(sessions: sessionmaker, job_id: int) -> JobRow:
    with sessions() as session:
        return session.get(JobRow, job_id)


@pytest.mark.parametrize("status", ["succeeded", "failed", "cancelled"])
def test_finish_sets_the_phase_to_the_status(sessions: sessionmaker, status: str) -> None:
    job_id, lease = running(sessions)
    assert stored(sessions, job_id).progress["phase"] == "registering"
    assert queue.finish(sessions, job_id, lease, status, result={"ok": True})
    job = stored(sessions, job_id)
    assert job.status == status
    # The phase follows the status; the rest of the progress is kept.
    assert job.progress == {"phase": status, "epoch": 2}
    assert job.result == {"ok": True}


def test_a_refused_finish_leaves_the_progress_alone(sessions: sessionmaker) -> None:
    job_id, lease = running(sessions)
    assert not queue.finish(sessions, job_id, lease + 1, "succeeded")
    job = stored(sessions, job_id)
    assert (job.status, job.progress["phase"]) == ("running", "registering")


def test_reaped_and_cancelled_jobs_say_so_in_their_phase(sessions: sessionmaker) -> None:
    # A worker that died with no attempts left: failed by the reaper.
    job_id, _ = running(sessions)
    with sessions.begin() as s:
        s.execute(update(JobRow).where(JobRow.id == job_id).values(
            attempts=2, heartbeat_at=queue.utcnow() - timedelta(seconds=60)))
    assert job_id in queue.reap(sessions, stale_after=5)
    job = stored(sessions, job_id)
    assert (job.status, job.progress["phase"]) == ("failed", "failed")
    # A queued job cancelled before it ran.
    queued, _ = queue.submit(sessions, "alice", "finetune", {"x": 2}, {"x": 2}, None)
    queue.request_cancel(sessions, queued.id)
    job = stored(sessions, queued.id)
    assert (job.status, job.progress) == ("cancelled", {"phase": "cancelled"})
