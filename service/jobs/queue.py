"""Queue operations on the jobs table, the same code on SQLite and PostgreSQL.

A claim selects queued jobs (FOR UPDATE SKIP LOCKED on PostgreSQL; SQLite ignores the
clause and serialises writers) and then flips one with a conditional UPDATE whose row
count proves the claim.

Every claim also takes a new lease number (a fencing token, never reused). An attempt
writes progress, events and its result only while the job is still running under its
lease, each write a conditional UPDATE; an attempt whose job was reaped, handed back or
retried elsewhere finds its writes refused (LeaseLost) and stops, so a paused worker that
comes back can neither finish a job twice nor report into its retry.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import JSON, String, cast, func, literal, select, update
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql.elements import ColumnElement

from ..db import fetch_page
from ..problems import Conflict, NotFound
from ..users import User
from .models import TERMINAL, JobEventRow, JobRow


class LeaseLost(RuntimeError):
    """This attempt no longer owns the job: it was reaped, handed back or finished."""

    def __init__(self, job_id: int, lease: int):
        super().__init__(f"job {job_id}: lease {lease} is no longer current; this attempt "
                         "stops without writing anything more")


def holds(job_id: int, lease: int) -> tuple[Any, ...]:
    """The condition under which attempt `lease` may still write to job `job_id`."""
    return JobRow.id == job_id, JobRow.lease == lease, JobRow.status == "running"


class JobConflict(Conflict):
    """An Idempotency-Key reused for another request, or a cancel of a finished job."""

    def __init__(self, message: str):
        super().__init__("job", message, "job_conflict")


def utcnow() -> datetime:
    return datetime.now(UTC)


def aware(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)  # SQLite hands timestamps back without a zone


def event(session: Session, job_id: int, kind: str, data: dict[str, Any]) -> None:
    session.add(JobEventRow(job_id=job_id, type=kind, data=data, created_at=utcnow()))


def submit(sessions: sessionmaker[Session], owner: str, kind: str, request: dict[str, Any],
           params: dict[str, Any], idempotency_key: str | None,
           normalise: Callable[[dict[str, Any]], dict[str, Any]] = dict
           ) -> tuple[JobRow, bool]:
    """Insert a queued job; with a known idempotency key return the existing one.

    `normalise` brings a stored request to today's shape (fields added since default), so
    that a retry across an upgrade is still recognised as the same request. Concurrent
    submissions with one key race to insert; the unique (owner, key) constraint lets one
    win, and the others answer with the winner's job."""
    try:
        return _insert(sessions, owner, kind, request, params, idempotency_key, normalise)
    except IntegrityError:
        if not idempotency_key:
            raise
        return _insert(sessions, owner, kind, request, params, idempotency_key, normalise)


def _insert(sessions: sessionmaker[Session], owner: str, kind: str, request: dict[str, Any],
            params: dict[str, Any], idempotency_key: str | None,
            normalise: Callable[[dict[str, Any]], dict[str, Any]]) -> tuple[JobRow, bool]:
    with sessions.begin() as session:
        if idempotency_key:
            existing = session.scalars(select(JobRow).where(
                JobRow.owner == owner, JobRow.idempotency_key == idempotency_key)).first()
            if existing is not None:
                if normalise(existing.request) != request:
                    raise JobConflict("this Idempotency-Key was used for a different request")
                return existing, False
        now = utcnow()
        job = JobRow(owner=owner, type=kind, status="queued", idempotency_key=idempotency_key,
                     request=request, params=params, attempts=0, max_attempts=2,
                     cancel_requested=False, progress={}, metrics={}, created_at=now,
                     updated_at=now)
        session.add(job)
        session.flush()
        event(session, job.id, "status", {"status": "queued"})
        return job, True


def claim(sessions: sessionmaker[Session], worker: str) -> JobRow | None:
    with sessions.begin() as session:
        ids = session.scalars(select(JobRow.id).where(JobRow.status == "queued")
                              .order_by(JobRow.id).limit(8)
                              .with_for_update(skip_locked=True)).all()
        for job_id in ids:
            now = utcnow()
            done = session.execute(
                update(JobRow).where(JobRow.id == job_id, JobRow.status == "queued")
                .values(status="running", worker=worker, heartbeat_at=now, started_at=now,
                        attempts=JobRow.attempts + 1, lease=JobRow.lease + 1,
                        updated_at=now))
            if done.rowcount == 1:
                job = session.get(JobRow, job_id)
                session.refresh(job)
                event(session, job_id, "status", {"status": "running", "worker": worker,
                                                  "attempt": job.attempts, "lease": job.lease})
                return job
    return None


def heartbeat(sessions: sessionmaker[Session], job_id: int, lease: int) -> bool:
    """Record liveness; returns whether cancellation was requested. Raises LeaseLost when
    the attempt no longer owns the job (its process must then be stopped)."""
    with sessions.begin() as session:
        done = session.execute(update(JobRow).where(*holds(job_id, lease))
                               .values(heartbeat_at=utcnow()))
        if done.rowcount != 1:
            raise LeaseLost(job_id, lease)
        return bool(session.scalar(select(JobRow.cancel_requested).where(JobRow.id == job_id)))


def with_phase(session: Session, phase: str) -> ColumnElement[Any]:
    """`progress` with its `phase` set, as one SQL expression, so the conditional UPDATE that
    ends a job also says so in its progress: a reader never sees a succeeded job whose
    progress still says "registering". (SQLite and PostgreSQL, the two supported.)"""
    key, value = literal("phase", String), literal(phase, String)
    if session.get_bind().dialect.name == "postgresql":
        merged = func.coalesce(cast(JobRow.progress, JSONB), func.jsonb_build_object()).op(
            "||")(func.jsonb_build_object(key, value))
        return cast(merged, JSON)
    return func.json_set(func.coalesce(JobRow.progress, literal("{}", String)),
                         literal("$.phase", String), value)


def ended(job: JobRow, status: str) -> None:
    """A job row, locked by the caller, reaches terminal `status`; its phase says the same."""
    job.status, job.finished_at = status, utcnow()
    job.progress = {**(job.progress or {}), "phase": status}


def finish(sessions: sessionmaker[Session], job_id: int, lease: int, status: str,
           error: str | None = None, result: dict[str, Any] | None = None) -> bool:
    """End the job, if attempt `lease` still owns it; returns whether it did."""
    with sessions.begin() as session:
        return finish_in(session, job_id, lease, status, error, result)


def finish_in(session: Session, job_id: int, lease: int, status: str,
              error: str | None = None, result: dict[str, Any] | None = None) -> bool:
    """`finish` inside the caller's transaction: the runner ends a job in the same
    transaction that registers its encoder, so the two happen together or not at all."""
    now = utcnow()
    values: dict[str, Any] = {"status": status, "error": error, "finished_at": now,
                              "updated_at": now, "progress": with_phase(session, status)}
    if result is not None:
        values["result"] = result
    done = session.execute(update(JobRow).where(*holds(job_id, lease)).values(**values))
    if done.rowcount != 1:
        return False
    event(session, job_id, "status", {"status": status, **({"error": error} if error
                                                            else {})})
    return True


def reap(sessions: sessionmaker[Session], stale_after: float) -> list[int]:
    """Jobs whose worker stopped heartbeating: retried once, then failed with the reason."""
    touched = []
    limit = utcnow() - timedelta(seconds=stale_after)
    with sessions.begin() as session:
        running = session.scalars(select(JobRow).where(JobRow.status == "running")
                                  .with_for_update(skip_locked=True)).all()
        for job in running:
            if aware(job.heartbeat_at) and aware(job.heartbeat_at) >= limit:
                continue
            now = utcnow()
            why = f"worker {job.worker} stopped heartbeating during attempt {job.attempts}"
            if job.cancel_requested:
                ended(job, "cancelled")
                event(session, job.id, "status", {"status": "cancelled", "reason": why})
            elif job.attempts < job.max_attempts:
                job.status, job.worker, job.heartbeat_at = "queued", None, None
                event(session, job.id, "status", {"status": "queued", "retry": True,
                                                  "reason": why})
            else:
                ended(job, "failed")
                job.error = f"{why}; no attempts left ({job.attempts} of {job.max_attempts})"
                event(session, job.id, "status", {"status": "failed", "error": job.error})
            job.updated_at = now
            touched.append(job.id)
    return touched


def hand_back(sessions: sessionmaker[Session], job_id: int, lease: int, why: str) -> bool:
    """A worker that is shutting down returns its running job to the queue and gives back
    the attempt it had taken, so deploys and restarts do not use up a job's retries.
    Only while its attempt still owns the job (a conditional update); returns whether it
    was handed back. The lease is not given back: the next claim takes a new one."""
    with sessions.begin() as session:
        done = session.execute(
            update(JobRow).where(*holds(job_id, lease))
            .values(status="queued", worker=None, heartbeat_at=None, started_at=None,
                    attempts=JobRow.attempts - 1, updated_at=utcnow()))
        if done.rowcount != 1:
            return False
        event(session, job_id, "status", {"status": "queued", "reason": why,
                                          "attempt_counted": False})
        return True


def request_cancel(sessions: sessionmaker[Session], job_id: int) -> JobRow:
    with sessions.begin() as session:
        job = session.get(JobRow, job_id, with_for_update=True)
        if job.status in TERMINAL:
            raise JobConflict(f"job {job_id} already {job.status}")
        now = utcnow()
        if job.status == "queued":
            ended(job, "cancelled")
            event(session, job_id, "status", {"status": "cancelled"})
        else:
            job.cancel_requested = True
            event(session, job_id, "log", {"line": "cancellation requested"})
        job.updated_at = now
        return job


def progress(sessions: sessionmaker[Session], job_id: int, lease: int, values: dict[str, Any],
             metrics: dict[str, Any] | None = None, line: str | None = None) -> None:
    """Merge progress and add events, while attempt `lease` owns the job (else LeaseLost).
    Metrics that carry an `epoch` are one epoch's record and are appended to the job's
    `metrics.history` too."""
    with sessions.begin() as session:
        # The conditional update comes first: it proves the lease and takes the row's
        # write lock, so the read-modify-write below cannot interleave with a reap.
        done = session.execute(update(JobRow).where(*holds(job_id, lease))
                               .values(updated_at=utcnow()))
        if done.rowcount != 1:
            raise LeaseLost(job_id, lease)
        job = session.get(JobRow, job_id)
        job.progress = {**(job.progress or {}), **values}
        if metrics:
            merged = {**(job.metrics or {}), **metrics}
            if "epoch" in metrics:  # one epoch's record: also kept, in order, as history
                merged["history"] = [*(job.metrics or {}).get("history", []), metrics]
            job.metrics = merged
            event(session, job_id, "metrics", {**values, **metrics})
        if line:
            event(session, job_id, "log", {"line": line})


def counts(sessions: sessionmaker[Session]) -> dict[str, int]:
    with sessions() as session:
        return dict(session.execute(select(JobRow.status, func.count())
                                    .group_by(JobRow.status)).all())


def ended_under(sessions: sessionmaker[Session], job_id: int, lease: int) -> bool:
    """Whether attempt `lease` itself ended the job (its runner wrote the final status),
    as opposed to the job being taken from it (reaped, handed back, retried)."""
    with sessions() as session:
        job = session.get(JobRow, job_id)
        return job is not None and job.lease == lease and job.status in TERMINAL


def owns(sessions: sessionmaker[Session], job_id: int, lease: int) -> bool:
    """Whether attempt `lease` still owns the job (a read; the runner's watchdog)."""
    with sessions() as session:
        return session.scalar(select(func.count()).select_from(JobRow)
                              .where(*holds(job_id, lease))) == 1


def owned(sessions: sessionmaker[Session], job_id: int, user: User) -> JobRow:
    """The job, if the user may see it; raises NotFound otherwise (no hint that it exists)."""
    with sessions() as session:
        job = session.get(JobRow, job_id)
    if job is None or not user.may_access(job.owner):
        raise NotFound("job_id", f"no job {job_id} of yours")
    return job


def list_jobs(sessions: sessionmaker[Session], user: User, status: str | None, limit: int,
              offset: int) -> tuple[list[JobRow], int]:
    """The user's jobs (everyone's for an admin), newest first, and the total count."""
    query = select(JobRow)
    if not user.admin:
        query = query.where(JobRow.owner == user.name)
    if status:
        query = query.where(JobRow.status == status)
    with sessions() as session:
        return fetch_page(session, query, JobRow.id.desc(), limit, offset)


def events_after(sessions: sessionmaker[Session], job_id: int, after: int,
                 limit: int) -> list[JobEventRow]:
    with sessions() as session:
        return list(session.scalars(
            select(JobEventRow).where(JobEventRow.job_id == job_id, JobEventRow.id > after)
            .order_by(JobEventRow.id).limit(limit)).all())


def logs(job: JobRow, home: Path) -> str:
    """The runner's output, every attempt in order; Ray keeps the logs of Ray-run jobs."""
    if job.worker and job.worker.startswith("ray:"):
        from .ray_executor import ray_logs  # ray is imported only where Ray runs jobs

        return ray_logs(job.worker[4:], job)
    folder = home / "jobs" / str(job.id)
    parts = sorted(folder.glob("attempt-*.log")) if folder.exists() else []
    return "".join(f"--- {p.stem} ---\n{p.read_text(errors='replace')}" for p in parts)
