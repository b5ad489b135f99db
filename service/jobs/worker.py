"""The local executor: claims jobs, runs each in a child process, heartbeats while it
runs, kills it on cancel, and requeues (once) jobs whose worker died. A child whose lease
was lost (its job reaped while this worker was paused) is killed before the worker claims
anything else.

One job at a time per GPU, or one on a CPU-only machine.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from . import queue

log = logging.getLogger("taskalign.worker")


def _die_with_parent() -> None:
    """Linux: the child gets SIGKILL when the worker dies, so no orphan keeps training."""
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    os.setsid()


def gpu_slots() -> int:
    try:
        import torch

        return max(1, torch.cuda.device_count())
    except Exception:
        return 1


@dataclass
class Running:
    job_id: int
    lease: int
    proc: subprocess.Popen
    cancel_at: float | None = None

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


class LocalWorker:
    def __init__(self, sessions: sessionmaker[Session], home: Path, slots: int | None = None,
                 poll: float = 0.5, heartbeat: float = 1.0, stale_after: float = 15.0,
                 env: dict[str, str] | None = None):
        self.sessions, self.home = sessions, Path(home)
        self.slots = slots or gpu_slots()
        self.poll, self.heartbeat_every, self.stale_after = poll, heartbeat, stale_after
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.env = env or {}
        self.running: dict[int, Running] = {}
        self._last_beat = 0.0

    def start_child(self, job_id: int, attempt: int, lease: int) -> Running:
        logs = self.home / "jobs" / str(job_id)
        logs.mkdir(parents=True, exist_ok=True)
        out = open(logs / f"attempt-{attempt}.log", "ab")  # noqa: SIM115 - child owns it
        slot = len(self.running)
        env = {**os.environ, **self.env, "CUDA_VISIBLE_DEVICES": str(slot)} if self.slots > 1 \
            else {**os.environ, **self.env}
        proc = subprocess.Popen([sys.executable, "-m", "service.jobs.runner", str(job_id),
                                 str(lease)],
                                stdout=out, stderr=subprocess.STDOUT, env=env,
                                preexec_fn=_die_with_parent)
        out.close()
        return Running(job_id, lease, proc)

    def tick(self) -> None:
        queue.reap(self.sessions, self.stale_after)
        now = time.monotonic()
        beat = now - self._last_beat >= self.heartbeat_every
        for job_id, run in list(self.running.items()):
            code = run.proc.poll()
            if code is not None:
                del self.running[job_id]
                if code != 0:  # a no-op when the attempt had lost its lease
                    status = "cancelled" if run.cancel_at else "failed"
                    queue.finish(self.sessions, job_id, run.lease, status,
                                 None if run.cancel_at else f"runner exited with code {code}")
                continue
            try:
                cancel = beat and queue.heartbeat(self.sessions, job_id, run.lease)
            except queue.LeaseLost:
                log.warning("job %s was taken from this worker (lease %s): stopping its "
                            "runner", job_id, run.lease)
                run.kill()
                del self.running[job_id]
                continue
            if cancel and not run.cancel_at:
                run.cancel_at = now
                os.killpg(run.proc.pid, signal.SIGTERM)
            if run.cancel_at and now - run.cancel_at > 5:
                os.killpg(run.proc.pid, signal.SIGKILL)
        if beat:
            self._last_beat = now
        while len(self.running) < self.slots:
            job = queue.claim(self.sessions, self.id)
            if job is None:
                break
            self.running[job.id] = self.start_child(job.id, job.attempts, job.lease)
            log.info("worker %s runs job %s (attempt %s, lease %s)", self.id, job.id,
                     job.attempts, job.lease)

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.tick()
            except Exception:  # keep serving; the database may come back
                log.exception("worker tick failed")
            stop.wait(self.poll)
        self.shut_down()

    def shut_down(self, grace: float = 10.0) -> None:
        """Stop every running child, then hand its job back to the queue without counting
        the attempt: a deploy or restart is not the job's failure."""
        for run in self.running.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(run.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for job_id, run in self.running.items():
            try:
                run.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(run.proc.pid, signal.SIGKILL)
                run.proc.wait()
            if not run.cancel_at and queue.hand_back(
                    self.sessions, job_id, run.lease, f"worker {self.id} shut down"):
                log.info("job %s handed back to the queue", job_id)
        self.running.clear()
