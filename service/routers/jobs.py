"""Jobs over HTTP: parse, authorise, call the planner or the queue, answer."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, field_serializer

from ..auth import UserDep
from ..deps import EngineDep, SettingsDep, ZooDep
from ..jobs import queue, submission
from ..jobs.models import TERMINAL, JobEventRow, JobRow
from ..jobs.plan import JobCreate
from ..pagination import MAX_ROW_ID, After, Limit, Offset, Page, RowId
from ..problems import NotFound
from ..responses import NOT_FOUND, TOKEN, error

router = APIRouter(prefix="/jobs", tags=["jobs"], responses=TOKEN)

Status = Literal["queued", "running", "succeeded", "failed", "cancelled"]
# An EventSource that reconnects sends the id of the last event it received.
LastEventId = Annotated[int | None, Header(
    ge=0, le=MAX_ROW_ID, description="Event stream: resume after this event id (sent by an "
    "EventSource when it reconnects); takes the place of `after`.")]


class JobPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    owner: str
    type: str
    status: Status
    request: dict[str, Any]
    params: dict[str, Any]
    attempts: int
    max_attempts: int
    worker: str | None
    device: str | None
    progress: dict[str, Any]
    metrics: dict[str, Any]
    error: str | None
    result: dict[str, Any] | None
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def from_row(cls, job: JobRow) -> JobPublic:
        return cls.model_validate(job)


class JobEventPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    type: str
    data: dict[str, Any]
    created_at: datetime

    @field_serializer("created_at")
    def _iso(self, value: datetime) -> str:
        # Python's isoformat (+00:00), as events have always been written.
        return value.isoformat()


@router.post("", status_code=202, response_model=JobPublic,
             responses=error((409, "The Idempotency-Key was used for another request")))
async def submit_job(spec: JobCreate, user: UserDep, zoo: ZooDep, engine: EngineDep,
                     idempotency_key: str | None = Header(None, max_length=128)) -> JobPublic:
    """Queue a job; repeat the same Idempotency-Key to get the same job back."""
    job = await run_in_threadpool(submission.submit, spec, user, zoo, engine, idempotency_key)
    return JobPublic.from_row(job)


@router.get("", response_model=Page[JobPublic])
async def list_jobs(user: UserDep, zoo: ZooDep, status: Status | None = None,
                    limit: Limit = 100, offset: Offset = 0) -> Page[JobPublic]:
    """Your jobs, newest first (an admin token sees all)."""
    rows, count = await run_in_threadpool(queue.list_jobs, zoo.registry.sessions, user, status,
                                          limit, offset)
    return Page[JobPublic](data=[JobPublic.from_row(r) for r in rows], count=count)


@router.get("/{job_id}", response_model=JobPublic, responses=NOT_FOUND)
async def get_job(job_id: RowId, user: UserDep, zoo: ZooDep) -> JobPublic:
    """Status, progress (epoch, totals, ETA), latest metrics, error, result."""
    job = await run_in_threadpool(queue.owned, zoo.registry.sessions, job_id, user)
    return JobPublic.from_row(job)


def _sse(event: JobEventRow) -> str:
    data = JobEventPublic.model_validate(event).model_dump(mode="json")
    return f"id: {event.id}\nevent: {event.type}\ndata: {json.dumps(data)}\n\n"


@router.get("/{job_id}/events", response_model=Page[JobEventPublic],
            responses={200: {"content": {"text/event-stream": {}}}, **NOT_FOUND})
async def job_events(job_id: RowId, request: Request, user: UserDep, zoo: ZooDep,
                     after: After = 0, limit: Limit = 100,
                     last_event_id: LastEventId = None
                     ) -> Page[JobEventPublic] | StreamingResponse:
    """Typed events (status, metrics, log): JSON pages, or a server-sent event stream when
    the client accepts text/event-stream. Each streamed event carries its `id:`, and a
    stream resumes after the request's `Last-Event-ID`, so a reconnecting client gets only
    the events it missed."""
    sessions = zoo.registry.sessions
    await run_in_threadpool(queue.owned, sessions, job_id, user)
    if "text/event-stream" not in request.headers.get("accept", ""):
        rows = await run_in_threadpool(queue.events_after, sessions, job_id, after, limit)
        return Page[JobEventPublic](data=[JobEventPublic.model_validate(r) for r in rows],
                                    count=len(rows))

    async def stream() -> AsyncIterator[str]:
        last = after if last_event_id is None else last_event_id
        while True:
            batch = await run_in_threadpool(queue.events_after, sessions, job_id, last, 500)
            for row in batch:
                last = row.id
                yield _sse(row)
            job = await run_in_threadpool(queue.owned, sessions, job_id, user)
            if job.status in TERMINAL and not batch:
                yield "event: end\ndata: {}\n\n"
                return
            if await request.is_disconnected():
                return
            await asyncio.sleep(0.5)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"cache-control": "no-cache"})


@router.post("/{job_id}/cancel", response_model=JobPublic,
             responses={**NOT_FOUND, **error((409, "The job has already ended"))})
async def cancel_job(job_id: RowId, user: UserDep, zoo: ZooDep) -> JobPublic:
    """Cancel: a queued job ends at once; a running one is stopped within seconds."""
    await run_in_threadpool(queue.owned, zoo.registry.sessions, job_id, user)
    job = await run_in_threadpool(queue.request_cancel, zoo.registry.sessions, job_id)
    return JobPublic.from_row(job)


@router.get("/{job_id}/logs", response_class=PlainTextResponse, responses=NOT_FOUND)
async def job_logs(job_id: RowId, user: UserDep, zoo: ZooDep, settings: SettingsDep) -> str:
    """The runner's output, every attempt in order (from Ray for Ray-run jobs)."""
    job = await run_in_threadpool(queue.owned, zoo.registry.sessions, job_id, user)
    return await run_in_threadpool(queue.logs, job, settings.home)


ARTIFACTS = {"curves.png": "image/png"}  # what a job may leave for its owner to fetch


@router.get("/{job_id}/artifacts/{filename}", response_class=Response,
            responses={**NOT_FOUND, 200: {"content": {"image/png": {}},
                                          "description": "The artifact's bytes"}},
            response_model=None)
async def job_artifact(job_id: RowId, filename: str, user: UserDep, zoo: ZooDep,
                       settings: SettingsDep) -> Response:
    """A file the job wrote, e.g. `curves.png` (loss and validation metric per epoch)."""
    job = await run_in_threadpool(queue.owned, zoo.registry.sessions, job_id, user)
    path = settings.home / "jobs" / str(job.id) / filename
    if filename not in ARTIFACTS or not path.is_file():
        raise NotFound("artifact", f"job {job.id} has no artifact {filename!r}; it may "
                       f"have: {', '.join(ARTIFACTS)} (written when training ends)")
    return Response(await run_in_threadpool(path.read_bytes), media_type=ARTIFACTS[filename])
