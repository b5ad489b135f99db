"""The Ray executor: the worker still claims from the jobs table, but runs each job as a
Ray job on a cluster, asking for the GPUs the job needs. Status, cancellation and logs go
through Ray's job submission API; the runner reports progress into the database as it
does under the local executor, so both executors give the same job the same result.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from . import queue

log = logging.getLogger("taskalign.ray")

RAY_TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def submission_id(job_id: int, attempt: int) -> str:
    return f"taskalign-job-{job_id}-attempt-{attempt}"


class RayWorker:
    def __init__(self, sessions: sessionmaker[Session], address: str, slots: int = 1,
                 poll: float = 0.5, stale_after: float = 15.0,
                 env: dict[str, str] | None = None):
        from ray.job_submission import JobSubmissionClient

        self.sessions, self.address, self.slots = sessions, address, slots
        self.poll, self.stale_after = poll, stale_after
        self.client = JobSubmissionClient(address)
        self.id = f"ray:{address}"
        keep = ("TASKALIGN_HOME", "TASKALIGN_DATABASE_URL", "TASKALIGN_DATA_DIR")
        self.env = {k: os.environ[k] for k in keep if k in os.environ} | (env or {})
        self.running: dict[int, str] = {}
        self.cancelling: set[int] = set()

    def submit(self, job: Any) -> str:
        sub = submission_id(job.id, job.attempts)
        gpus = 1 if job.params.get("device") == "cuda" else 0
        try:
            self.client.submit_job(
                entrypoint=f"{sys.executable} -m service.jobs.runner {job.id}",
                submission_id=sub, runtime_env={"env_vars": self.env},
                entrypoint_num_gpus=gpus, entrypoint_num_cpus=1,
                metadata={"taskalign_job": str(job.id)})
        except RuntimeError as err:  # already submitted (idempotent resubmission) is fine
            if "already exists" not in str(err):
                raise
        return sub

    def tick(self) -> None:
        queue.reap(self.sessions, self.stale_after)
        for job_id, sub in list(self.running.items()):
            status = str(self.client.get_job_status(sub)).split(".")[-1]
            if status in RAY_TERMINAL:
                del self.running[job_id]
                if status != "SUCCEEDED":
                    cancelled = job_id in self.cancelling
                    queue.finish(self.sessions, job_id, "cancelled" if cancelled else "failed",
                                 None if cancelled else f"Ray job {sub} ended {status}")
                self.cancelling.discard(job_id)
                continue
            if queue.heartbeat(self.sessions, job_id, self.id) and job_id not in self.cancelling:
                self.cancelling.add(job_id)
                self.client.stop_job(sub)
        while len(self.running) < self.slots:
            job = queue.claim(self.sessions, self.id)
            if job is None:
                break
            self.running[job.id] = self.submit(job)
            log.info("job %s submitted to Ray as %s", job.id, self.running[job.id])

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.tick()
            except Exception:
                log.exception("ray worker tick failed")
            stop.wait(self.poll)


def ray_logs(address: str, job_id: int, attempts: int) -> str:
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(address)
    out = []
    for attempt in range(1, attempts + 1):
        try:
            out.append(f"--- ray {submission_id(job_id, attempt)} ---\n"
                       + client.get_job_logs(submission_id(job_id, attempt)))
        except RuntimeError:
            continue
    return "".join(out)
