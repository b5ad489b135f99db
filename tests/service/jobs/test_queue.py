"""The job queue on real SQLite and PostgreSQL: concurrent submissions that share an
Idempotency-Key make one job and every caller gets it back, none an error."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from threading import Barrier

import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import sessionmaker

from service.jobs import queue
from service.jobs.models import JobRow
from service.migrate import upgrade


def test_concurrent_submits_with_one_key_give_one_job(database_url: str) -> None:
    pool = {"pool_size": 20} if database_url.startswith("postgresql") else {}
    engine = create_engine(database_url, **pool)
    upgrade(engine)
    sessions = sessionmaker(engine, expire_on_commit=False)
    request = {"type": "finetune", "dataset_id": 1}
    start = Barrier(20)

    def submit(_: int) -> int:
        start.wait()
        job, _created = queue.submit(sessions, "alice", "finetune", request, {}, "same-key")
        return job.id

    with ThreadPoolExecutor(20) as pool:
        ids = list(pool.map(submit, range(20)))
    assert len(set(ids)) == 1
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(JobRow)) == 1
    with pytest.raises(queue.JobConflict):
        queue.submit(sessions, "alice", "finetune", {**request, "dataset_id": 2}, {}, "same-key")
    engine.dispose()
