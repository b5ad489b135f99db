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
import time
from datetime import datetime

from sqlalchemy.orm import Session, sessionmaker

from . import queue
from .models import JobRow

log = logging.getLogger("taskalign.ray")

RAY_TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def submission_id(job_id: int, created_at: datetime, lease: int) -> str:
    """Ray's id for one attempt (lease) of a job: the same for a resubmission (idempotent),
    and unique across databases sharing a cluster, which all count job ids from 1 (a reset
    database or a second installation would otherwise adopt each other's Ray jobs)."""
    stamp = queue.aware(created_at).strftime("%Y%m%dT%H%M%S%f")
    return f"taskalign-job-{job_id}-{stamp}-lease-{lease}"


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
        self.running: dict[int, tuple[str, int]] = {}  # job id -> (submission, lease)
        self.cancelling: set[int] = set()

    def submit(self, job: JobRow) -> str:
        self.stop_earlier_attempts(job)
        sub = submission_id(job.id, job.created_at, job.lease)
        gpus = 1 if job.params.get("device") == "cuda" else 0
        try:
            self.client.submit_job(
                entrypoint=f"{sys.executable} -m service.jobs.runner {job.id} {job.lease}",
                submission_id=sub, runtime_env={"env_vars": self.env},
                entrypoint_num_gpus=gpus, entrypoint_num_cpus=1,
                metadata={"taskalign_job": str(job.id)})
        except RuntimeError as err:  # already submitted (idempotent resubmission) is fine
            if "already exists" not in str(err):
                raise
        return sub

    def stop_earlier_attempts(self, job: JobRow, wait_s: float = 60.0) -> None:
        """A retry follows a dispatcher that died, but its Ray job lives on in the cluster:
        stop every earlier attempt, and wait until Ray says it ended, so that no job ever
        runs twice at once (a stale runner would also report into the job's row)."""
        earlier = [submission_id(job.id, job.created_at, lease) for lease in range(1, job.lease)]
        deadline = time.monotonic() + wait_s
        for sub in earlier:
            try:
                if self._status(sub) in RAY_TERMINAL:
                    continue
                self.client.stop_job(sub)
                log.warning("job %s: stopped the earlier Ray job %s before retrying",
                            job.id, sub)
                while self._status(sub) not in RAY_TERMINAL:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"Ray job {sub} did not stop in {wait_s:.0f} s")
                    time.sleep(0.5)
            except RuntimeError as err:
                if "does not exist" in str(err) or "404" in str(err):
                    continue  # never reached Ray: nothing to stop
                raise

    def _status(self, sub: str) -> str:
        return str(self.client.get_job_status(sub)).split(".")[-1]

    def tick(self) -> None:
        queue.reap(self.sessions, self.stale_after)
        for job_id, (sub, lease) in list(self.running.items()):
            status = self._status(sub)
            if status in RAY_TERMINAL:
                del self.running[job_id]
                if status != "SUCCEEDED":  # a no-op when the attempt had lost its lease
                    cancelled = job_id in self.cancelling
                    queue.finish(self.sessions, job_id, lease,
                                 "cancelled" if cancelled else "failed",
                                 None if cancelled else f"Ray job {sub} ended {status}")
                self.cancelling.discard(job_id)
                continue
            try:
                cancel = queue.heartbeat(self.sessions, job_id, lease)
            except queue.LeaseLost:
                del self.running[job_id]
                if queue.ended_under(self.sessions, job_id, lease):
                    continue  # the runner finished the job and is exiting: let it
                log.warning("job %s was taken from this dispatcher: stopping Ray job %s",
                            job_id, sub)
                self.client.stop_job(sub)
                continue
            if cancel and job_id not in self.cancelling:
                self.cancelling.add(job_id)
                self.client.stop_job(sub)
        while len(self.running) < self.slots:
            job = queue.claim(self.sessions, self.id)
            if job is None:
                break
            self.running[job.id] = (self.submit(job), job.lease)
            log.info("job %s submitted to Ray as %s", job.id, self.running[job.id][0])

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.tick()
            except Exception:
                log.exception("ray worker tick failed")
            stop.wait(self.poll)
        self.shut_down()

    def shut_down(self) -> None:
        """Stop the Ray jobs this dispatcher runs and hand their jobs back to the queue
        without counting the attempt, as the local executor does on SIGTERM. The next
        dispatcher waits for the stopped Ray jobs to end before it resubmits."""
        for job_id, (sub, lease) in self.running.items():
            try:
                self.client.stop_job(sub)
            except Exception:  # the cluster may be gone; fencing still guards the job
                log.exception("could not stop Ray job %s", sub)
            if job_id not in self.cancelling and queue.hand_back(
                    self.sessions, job_id, lease, f"dispatcher {self.id} shut down"):
                log.info("job %s handed back to the queue", job_id)
        self.running.clear()


def ray_logs(address: str, job: JobRow) -> str:
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(address)
    out = []
    for lease in range(1, job.lease + 1):
        sub = submission_id(job.id, job.created_at, lease)
        try:
            out.append(f"--- ray {sub} ---\n" + client.get_job_logs(sub))
        except RuntimeError:
            continue
    return "".join(out)
