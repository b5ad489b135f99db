"""Soak test: mixed traffic on PostgreSQL while workers die, pause and the API restarts.

For `--minutes` (default 10) a few client threads send a mix of requests to a real
`taskalign serve` (no in-process worker) and `--workers` separate `taskalign worker`
processes, all on one fresh PostgreSQL database and one TASKALIGN_HOME:

    recommend, list encoders, encoder detail, file download (full, Range, If-None-Match),
    embed or predict (PNG / NPY made from real MedMNIST images; predict for the task
    models fine-tunes produce), list datasets, submit fine-tune jobs
    with an Idempotency-Key (some sent three times at once with the same key, some repeated
    later), cancel some, poll job status, list jobs, read events (JSON pages and SSE),
    and GET /healthz as the in-run baseline for latency.

Meanwhile, on a schedule (one cycle per 5 minutes of run time, at least one):

    kill -9 a worker that is running a job, and start a replacement;
    SIGSTOP the worker running a long job for the lease (TASKALIGN_JOB_STALE_SECONDS) plus
    25 s, so the job is reaped and retried elsewhere while its first attempt is frozen,
    then SIGCONT it;
    restart the API (SIGTERM, wait, start again). Connection errors while it is down are
    counted as "unavailable", apart from 5xx.

Afterwards it waits (bounded) for every job to end, then checks exactly-once from the
jobs' events: one terminal status event per job (succeeded, failed or cancelled), no event
after it, the job's status equal to it, at most one zoo encoder registered per job, every
acknowledged job present and ended, and every job in the database acknowledged to a
client. It reports requests by kind, 5xx (target 0, with the first bodies), connection
errors during and outside restarts, jobs submitted / ended exactly once / doubled / lost,
API and worker RSS at start and end (VmRSS), and p50/p99 latency per kind with the ratio
to GET /healthz in the same run; job turnaround is compared with a calibration job run
on an idle cluster before the traffic starts.

    .venv/bin/python bench/soak.py                       # 10 minutes, 3 workers
    .venv/bin/python bench/soak.py --minutes 2 --out soak.json

A run takes the traffic time plus about 1.5 minutes of set-up (seed zoo ONNX export, two
calibration jobs) and the drain (0.5-1.5 minutes on 2 CPUs): about 13 minutes for the
default 10. It exits 1 when a target is missed (any 5xx, a job doubled, lost or with
events after its end). Every process it started is stopped on exit, Ctrl-C included; the
database it creates is dropped unless --keep (which also keeps TASKALIGN_HOME and the
process logs); a --database-url given by the caller is never dropped.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("TASKALIGN_DATA_DIR", ROOT.parent / "shared" / "data"))
PYTHON = sys.executable

USERS = {"alice": "soak-alice-token-0123456789", "bob": "soak-bob-token-0123456789"}
ADMIN = "soak-admin-token-0123456789"
TERMINAL = ("succeeded", "failed", "cancelled")
DEFAULT_STALE = 15.0  # service/config.py job_stale_seconds
PAUSE_PAST_LEASE = 25.0

# What each kind of request may answer without it being a finding.
EXPECTED: dict[str, tuple[int, ...]] = {
    "healthz": (200,), "recommend": (200,), "encoders_list": (200,),
    "encoder_detail": (200,), "download": (200, 206, 304), "embed": (200,), "predict": (200,),
    "datasets_list": (200,), "submit": (202,), "submit_dup": (202,), "submit_repeat": (202,),
    "job_status": (200,), "jobs_list": (200,), "job_events": (200,), "job_events_sse": (200,),
    "cancel": (200, 409),
}

PROFILES: list[dict[str, Any]] = [
    {"task": "classification", "modality": "xray", "anatomy": "chest"},
    {"task": "segmentation", "modality": "mri", "anatomy": "cardiac"},
    {"task": "classification", "modality": "ultrasound", "anatomy": "breast"},
    {"task": "segmentation", "modality": "ct", "anatomy": "liver"},
    {"task": "classification", "modality": "histopathology"},
    {"task": "classification", "modality": "fundus", "anatomy": "retina"},
    {"task": "detection", "modality": "mammography", "anatomy": "breast"},
    {"task": "segmentation", "modality": "mri", "anatomy": "brain", "dimensionality": "3d"},
    {"task": "classification", "modality": "dermatology", "anatomy": "skin"},
    {"task": "anomaly_detection", "modality": "ct", "anatomy": "lung"},
]


def log(msg: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vmrss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def children_of(pids: set[int]) -> list[int]:
    """Processes whose parent is one of `pids` (the workers' job runners)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rfind(")") + 2:].split()[1])
        if ppid in pids:
            found.append(int(entry))
    return found


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * q))]


# ---------------------------------------------------------------------------- database

def create_database(admin_url: str) -> str:
    import sqlalchemy as sa

    name = f"taskalign_soak_{uuid.uuid4().hex[:10]}"
    eng = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with eng.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    finally:
        eng.dispose()
    return sa.engine.make_url(admin_url).set(database=name).render_as_string(
        hide_password=False)


def drop_database(admin_url: str, url: str) -> None:
    import sqlalchemy as sa

    name = sa.engine.make_url(url).database
    eng = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with eng.connect() as conn:
            conn.execute(sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                 "WHERE datname = :n"), {"n": name})
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
    finally:
        eng.dispose()


# ---------------------------------------------------------------------------- processes

@dataclass
class Proc:
    role: str            # api | worker
    label: str           # api-1, worker-3, ...
    popen: subprocess.Popen
    started: float
    ended: float | None = None
    how_ended: str | None = None
    stopped: bool = False   # SIGSTOPped right now
    expect_exit: bool = False  # signalled by the soak: its exit is not a finding
    rss_first: int | None = None   # KiB, first sample once traffic runs
    rss_last: int | None = None
    rss_max: int | None = None
    timeline: list[tuple[float, float]] = field(default_factory=list)  # (t, MiB)

    @property
    def pid(self) -> int:
        return self.popen.pid


class Cluster:
    """The API and the workers: started, signalled, sampled and always cleaned up."""

    def __init__(self, home: Path, logs: Path, env: dict[str, str], port: int,
                 worker_threads: int):
        self.home, self.logs, self.env, self.port = home, logs, env, port
        self.worker_threads = worker_threads
        self.url = f"http://127.0.0.1:{port}"
        self.lock = threading.RLock()
        self.procs: list[Proc] = []
        self.api: Proc | None = None
        self.counts: Counter[str] = Counter()
        self.runner_rss_max = 0
        self.sampling = False

    def _spawn(self, role: str, args: list[str], extra: dict[str, str]) -> Proc:
        self.counts[role] += 1
        label = f"{role}-{self.counts[role]}"
        out = open(self.logs / f"{label}.log", "wb")  # noqa: SIM115 - the child owns it
        popen = subprocess.Popen([PYTHON, "-m", "service.cli", *args], cwd=ROOT,
                                 env={**self.env, **extra}, stdout=out,
                                 stderr=subprocess.STDOUT, start_new_session=True)
        out.close()
        proc = Proc(role, label, popen, time.monotonic())
        with self.lock:
            self.procs.append(proc)
        return proc

    def start_api(self, timeout: float = 120) -> Proc:
        proc = self._spawn("api", ["serve", "--port", str(self.port)], {})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.popen.poll() is not None:
                raise RuntimeError(f"{proc.label} exited with {proc.popen.returncode}; see "
                                   f"{self.logs / (proc.label + '.log')}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    with self.lock:
                        self.api = proc
                    return proc
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{proc.label} not healthy in {timeout:.0f} s")

    def stop_api(self, grace: float = 30) -> tuple[float, bool]:
        """SIGTERM, then SIGKILL after `grace`; returns (seconds to exit, killed)."""
        proc = self.api
        assert proc is not None
        t0 = time.monotonic()
        proc.expect_exit = True
        proc.popen.send_signal(signal.SIGTERM)
        killed = False
        try:
            proc.popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.popen.kill()
            proc.popen.wait()
            killed = True
        self._ended(proc, "SIGKILL after SIGTERM timeout" if killed else "SIGTERM")
        with self.lock:
            self.api = None
        return time.monotonic() - t0, killed

    def start_worker(self) -> Proc:
        n = str(self.worker_threads)
        return self._spawn("worker", ["worker"], {"OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n})

    def workers(self) -> list[Proc]:
        with self.lock:
            return [p for p in self.procs if p.role == "worker" and p.ended is None]

    def by_pid(self, pid: int) -> Proc | None:
        with self.lock:
            return next((p for p in self.procs if p.pid == pid and p.ended is None), None)

    def kill9(self, proc: Proc) -> None:
        proc.expect_exit = True
        proc.popen.send_signal(signal.SIGKILL)
        proc.popen.wait()
        self._ended(proc, "SIGKILL (chaos)")

    def pause(self, proc: Proc) -> None:
        proc.popen.send_signal(signal.SIGSTOP)
        proc.stopped = True

    def resume(self, proc: Proc) -> None:
        proc.popen.send_signal(signal.SIGCONT)
        proc.stopped = False

    def _ended(self, proc: Proc, how: str) -> None:
        self._sample_one(proc)
        proc.ended, proc.how_ended = time.monotonic(), how

    def _sample_one(self, proc: Proc, t0: float | None = None) -> None:
        if not self.sampling:
            return
        rss = vmrss_kib(proc.pid)
        if rss is None:
            return
        now = time.monotonic()
        if t0 is not None:
            proc.timeline.append((round(now - t0, 1), round(rss / 1024, 1)))
        # A process started during the run is first measured once it has loaded (10 s).
        if proc.rss_first is None and now - proc.started >= 10:
            proc.rss_first = rss
        proc.rss_last = rss
        proc.rss_max = max(proc.rss_max or 0, rss)

    def sample(self, timeline_t0: float | None = None) -> None:
        with self.lock:
            live = [p for p in self.procs if p.ended is None]
        for p in live:
            self._sample_one(p, timeline_t0)
        workers = {p.pid for p in live if p.role == "worker"}
        for child in children_of(workers):
            rss = vmrss_kib(child)
            if rss:
                self.runner_rss_max = max(self.runner_rss_max, rss)

    def died_unexpectedly(self) -> list[Proc]:
        with self.lock:
            dead = [p for p in self.procs if p.ended is None and not p.expect_exit
                    and p.popen.poll() is not None]
        for p in dead:
            self._ended(p, f"exited by itself with code {p.popen.returncode}")
        return dead

    def close(self) -> None:
        """Resume anything paused, SIGTERM everything, SIGKILL what is left after 20 s."""
        with self.lock:
            live = [p for p in self.procs if p.popen.poll() is None]
        for p in live:
            p.expect_exit = True
            with contextlib.suppress(ProcessLookupError):
                if p.stopped:
                    p.popen.send_signal(signal.SIGCONT)
                p.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        for p in live:
            try:
                p.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.popen.wait()
            if p.ended is None:
                p.ended, p.how_ended = time.monotonic(), "SIGTERM at the end"


# ---------------------------------------------------------------------------- recording

@dataclass
class Sample:
    kind: str
    t: float            # seconds since traffic start, when the answer (or error) came
    seconds: float
    status: int | None  # None: no HTTP answer
    error: str | None   # conn | timeout


class Recorder:
    def __init__(self, t0: float):
        self.t0 = t0
        self.lock = threading.Lock()
        self.samples: list[Sample] = []
        self.five_xx: list[dict[str, Any]] = []
        self.unexpected: list[dict[str, Any]] = []
        self.errors: list[dict[str, Any]] = []
        self.restarts: list[list[float]] = []   # [start, end] seconds since t0
        self.local = threading.local()           # .failed: this thread's last call failed

    def now(self) -> float:
        return time.monotonic() - self.t0

    def call(self, client: httpx.Client, kind: str, method: str, url: str,
             **kw: Any) -> httpx.Response | None:
        t = time.monotonic()
        try:
            r = client.request(method, url, **kw)
        except httpx.TimeoutException as err:
            self._error(kind, t, "timeout", method, url, err)
            return None
        except httpx.TransportError as err:
            self._error(kind, t, "conn", method, url, err)
            return None
        self.record(kind, t, r.status_code, method, url, r.text)
        return r

    def record(self, kind: str, t_start: float, status: int, method: str, url: str,
               body: str) -> None:
        now = time.monotonic()
        s = Sample(kind, now - self.t0, now - t_start, status, None)
        with self.lock:
            self.samples.append(s)
            if status >= 500:
                self.five_xx.append({"kind": kind, "t": round(s.t, 2), "status": status,
                                     "request": f"{method} {url}", "body": body[:1000]})
            elif status not in EXPECTED.get(kind, (200,)):
                self.unexpected.append({"kind": kind, "t": round(s.t, 2), "status": status,
                                        "request": f"{method} {url}", "body": body[:500]})

    def _error(self, kind: str, t_start: float, what: str, method: str, url: str,
               err: Exception) -> None:
        now = time.monotonic()
        s = Sample(kind, now - self.t0, now - t_start, None, what)
        self.local.failed = True
        with self.lock:
            self.samples.append(s)
            self.errors.append({"kind": kind, "t": round(s.t, 2), "error": what,
                                "request": f"{method} {url}",
                                "detail": f"{type(err).__name__}: {err}"[:300]})

    def in_restart(self, t: float, grace: float = 2.0) -> bool:
        return any(a - 0.5 <= t <= (b if b is not None else math.inf) + grace
                   for a, b in self.restarts)


# ---------------------------------------------------------------------------- data

def tiny_breast_npz(seed: int) -> bytes:
    """A small real BreastMNIST subset (both classes in every split), so a job is seconds."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    with np.load(DATA_DIR / "medmnist" / "breastmnist.npz") as d:
        for split, n in (("train", 160), ("val", 40), ("test", 80)):
            labels = d[f"{split}_labels"].reshape(-1)
            pick = []
            for c in np.unique(labels):
                idx = np.flatnonzero(labels == c)
                pick += list(rng.choice(idx, size=min(len(idx), n // 2), replace=False))
            pick = np.array(sorted(pick))
            out[f"{split}_images"] = d[f"{split}_images"][pick]
            out[f"{split}_labels"] = d[f"{split}_labels"][pick]
    buf = io.BytesIO()
    np.savez(buf, **out)
    return buf.getvalue()


class ImagePool:
    """Real MedMNIST images resampled to whatever size and channels an encoder expects."""

    def __init__(self) -> None:
        def load(path: str, n: int = 16) -> np.ndarray:
            with np.load(DATA_DIR / path) as d:
                return d["test_images"][:n]

        self.gray = np.concatenate([load("medmnist/breastmnist.npz"),
                                    load("medmnist/pneumoniamnist.npz")])
        self.rgb = load("medmnist/retinamnist.npz")
        self.vol = load("medmnist/adrenalmnist3d.npz", 8)
        self.cache: dict[tuple[Any, ...], list[tuple[str, bytes]]] = {}

    @staticmethod
    def _resample(arr: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
        for axis, n in enumerate(size):
            idx = np.linspace(0, arr.shape[axis] - 1, n).round().astype(int)
            arr = np.take(arr, idx, axis=axis)
        return arr

    def files(self, dims: int, channels: int, size: tuple[int, ...]) -> list[tuple[str, bytes]]:
        key = (dims, channels, size)
        if key not in self.cache:
            from PIL import Image

            files = []
            if dims == 2:
                src = self.gray if channels == 1 else self.rgb
                for i, img in enumerate(src):
                    img = self._resample(img, size)
                    if channels == 3 and img.ndim == 2:
                        img = np.repeat(img[..., None], 3, axis=2)
                    buf = io.BytesIO()
                    Image.fromarray(np.ascontiguousarray(img)).save(buf, format="PNG")
                    files.append((f"img{i}.png", buf.getvalue()))
            else:
                for i, vol in enumerate(self.vol):
                    arr = self._resample(vol, size)
                    if channels > 1:
                        arr = np.repeat(arr[None], channels, axis=0)
                    buf = io.BytesIO()
                    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
                    files.append((f"vol{i}.npy", buf.getvalue()))
            self.cache[key] = files
        return self.cache[key]


# ---------------------------------------------------------------------------- jobs

@dataclass
class Tracked:
    id: int
    owner: str
    key: str
    size: str            # short | long | calibration
    submitted: float     # seconds since t0
    body: dict[str, Any]
    cancel_answers: list[int] = field(default_factory=list)
    cancel_plan: str | None = None   # "running": cancel once seen running
    last_status: str = "queued"


class Jobs:
    """Every job a client was told about, by id and by (owner, key)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_id: dict[int, Tracked] = {}
        self.by_key: dict[tuple[str, str], int] = {}
        self.key_mismatch: list[dict[str, Any]] = []   # one key answered with two ids
        self.dup_groups = 0
        self.repeat_checks = 0

    def add(self, job: Tracked) -> None:
        with self.lock:
            known = self.by_key.get((job.owner, job.key))
            if known is not None and known != job.id:
                self.key_mismatch.append({"owner": job.owner, "key": job.key,
                                          "ids": sorted({known, job.id})})
                return
            self.by_key[(job.owner, job.key)] = job.id
            self.by_id.setdefault(job.id, job)

    def open_of(self, owner: str) -> list[Tracked]:
        with self.lock:
            return [j for j in self.by_id.values()
                    if j.owner == owner and j.last_status not in TERMINAL]

    def all_of(self, owner: str) -> list[Tracked]:
        with self.lock:
            return [j for j in self.by_id.values() if j.owner == owner]


# ---------------------------------------------------------------------------- the soak

class Soak:
    def __init__(self, args: argparse.Namespace, cluster: Cluster):
        self.args, self.cluster = args, cluster
        self.url = cluster.url
        self.stop = threading.Event()
        self.t0 = time.monotonic()
        self.rec = Recorder(self.t0)
        self.jobs = Jobs()
        self.pool = ImagePool()
        self.datasets: dict[str, int] = {}
        # What each user sees (fine-tuned encoders are private to their owner).
        self.encoders: dict[str, list[dict[str, Any]]] = {}
        self.details: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
        self.seed_encoders: list[dict[str, Any]] = []
        self.finetune_encoders: list[str] = []
        self.long_epochs = 50
        self.stale = args.stale_seconds or DEFAULT_STALE
        self.chaos: list[dict[str, Any]] = []
        self.sse_slots = threading.Semaphore(2)
        self.sse_open = 0
        self.calibration: dict[str, Any] = {}
        self.events: dict[int, list[dict[str, Any]]] = {}
        self.seq = 0
        self.seq_lock = threading.Lock()

    # -- helpers ------------------------------------------------------------------------

    def h(self, user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {ADMIN if user == 'admin' else USERS[user]}"}

    def next_seq(self) -> int:
        with self.seq_lock:
            self.seq += 1
            return self.seq

    def client(self, user: str, timeout: float = 60) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.h(user), timeout=timeout)

    def admin_get(self, path: str, **params: Any) -> Any:
        """A bookkeeping read (not counted as traffic), retried through API restarts."""
        deadline = time.monotonic() + 180
        while True:
            try:
                r = httpx.get(f"{self.url}{path}", params=params, headers=self.h("admin"),
                              timeout=60)
                if r.status_code == 200:
                    return r.json()
                if r.status_code < 500:
                    raise RuntimeError(f"GET {path}: {r.status_code} {r.text[:300]}")
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"GET {path}: no answer in 180 s")
            time.sleep(0.5)

    def all_jobs(self) -> list[dict[str, Any]]:
        out, offset = [], 0
        while True:
            page = self.admin_get("/v1/jobs", limit=100, offset=offset)
            out += page["data"]
            offset += len(page["data"])
            if not page["data"] or offset >= page["count"]:
                return out

    def all_events(self, job_id: int) -> list[dict[str, Any]]:
        out, after = [], 0
        while True:
            page = self.admin_get(f"/v1/jobs/{job_id}/events", after=after, limit=100)
            out += page["data"]
            if len(page["data"]) < 100:
                return out
            after = page["data"][-1]["id"]

    # -- set-up -------------------------------------------------------------------------

    def wait_for_seed_zoo(self, timeout: float = 400) -> None:
        expected = sum(1 for p in (ROOT / "zoo" / "seed").glob("*/card.json"))
        deadline, last, since = time.monotonic() + timeout, -1, time.monotonic()
        while time.monotonic() < deadline:
            count = self.admin_get("/v1/encoders", limit=100)["count"]
            if count != last:
                last, since = count, time.monotonic()
            if count >= expected or (count and time.monotonic() - since > 60):
                log(f"seed zoo: {count} encoders registered (expected {expected})")
                return
            time.sleep(1)
        raise RuntimeError(f"seed zoo: {last} of {expected} encoders after {timeout:.0f} s")

    def detail(self, name: str) -> dict[str, Any]:
        """An encoder's detail, read as admin (set-up only)."""
        return self.admin_get(f"/v1/encoders/{name}")

    def setup(self) -> None:
        self.wait_for_seed_zoo()
        self.seed_encoders = self.admin_get("/v1/encoders", limit=100)["data"]
        for user in USERS:
            self.encoders[user] = list(self.seed_encoders)
        for user in USERS:
            r = httpx.post(f"{self.url}/v1/datasets", headers=self.h(user), timeout=120,
                           files={"file": ("breast-soak.npz", tiny_breast_npz(self.args.seed),
                                           "application/octet-stream")},
                           data={"name": f"breast-soak-{user}", "modality": "ultrasound"})
            if r.status_code != 201:
                raise RuntimeError(f"dataset upload for {user}: {r.status_code} {r.text[:500]}")
            self.datasets[user] = r.json()["id"]
        # Fine-tune the small 2D single-channel ResNets of the seed zoo (BreastMNIST first).
        cands = []
        for e in self.seed_encoders:
            d = self.detail(e["name"])
            for user in USERS:
                self.details[user][e["name"]] = d
            size = d["card"]["input_size"]
            if e["spatial_dims"] == 2 and e["in_channels"] == 1 and size == [28, 28] \
                    and e["architecture"].startswith("resnet"):
                cands.append(e["name"])
        cands.sort(key=lambda n: ("breast" not in n, n))
        if not cands:
            raise RuntimeError("no 2D single-channel 28x28 ResNet encoder in the zoo: "
                               f"{[e['name'] for e in self.seed_encoders]}")
        self.finetune_encoders = cands[:2]
        log(f"datasets {self.datasets}; fine-tuning {self.finetune_encoders}")
        self.calibrate()

    def calibrate(self) -> None:
        """One short job and one 5-epoch job on the idle cluster: the turnaround baseline,
        and how many epochs make a "long" job outlast the lease."""
        with self.client("alice") as c:
            out = {}
            for name, epochs in (("short", 1), ("epochs5", 5)):
                body = self.job_body("alice", epochs, "full", 0)
                t = time.monotonic()
                r = c.post("/v1/jobs", json=body, headers={"Idempotency-Key": f"cal-{name}"})
                if r.status_code != 202:
                    raise RuntimeError(f"calibration job refused: {r.status_code} {r.text}")
                job = r.json()
                self.jobs.add(Tracked(job["id"], "alice", f"cal-{name}", "calibration",
                                      0.0, body))
                while job["status"] not in TERMINAL:
                    if time.monotonic() - t > 300:
                        raise RuntimeError(f"calibration job {job['id']} not done in 300 s")
                    time.sleep(0.25)
                    job = c.get(f"/v1/jobs/{job['id']}").json()
                if job["status"] != "succeeded":
                    raise RuntimeError(f"calibration job {job['id']} {job['status']}: "
                                       f"{job['error']}")
                self.jobs.by_id[job["id"]].last_status = job["status"]
                out[name] = {"id": job["id"], "turnaround_s": round(time.monotonic() - t, 2),
                             "train_s": (job["result"] or {}).get("seconds")}
        per_epoch = max(0.05, ((out["epochs5"]["train_s"] or 5.0)
                               - (out["short"]["train_s"] or 0.0)) / 4)
        # Long enough to outlast the lease with three workers sharing the CPU.
        self.long_epochs = int(min(500, max(10, math.ceil((self.stale + 30) / per_epoch))))
        self.calibration = {**out, "seconds_per_epoch": round(per_epoch, 3),
                            "long_job_epochs": self.long_epochs}
        log(f"calibration: {self.calibration}")

    def job_body(self, user: str, epochs: int, mode: str, seed: int,
                 label_fraction: float = 1.0, encoder: str | None = None) -> dict[str, Any]:
        return {"type": "finetune", "dataset_id": self.datasets[user],
                "encoder": encoder or self.finetune_encoders[0], "epochs": epochs,
                "mode": mode, "seed": seed, "label_fraction": label_fraction}

    # -- traffic ------------------------------------------------------------------------

    def reader_loop(self, user: str, index: int) -> None:
        """Zoo and rules traffic: recommend, list, detail, download, embed, datasets."""
        rng = random.Random(f"{self.args.seed}-reader-{index}")
        ops: list[tuple[Callable[[httpx.Client, str, random.Random], None], int]] = [
            (self.op_healthz, 2), (self.op_recommend, 4), (self.op_list, 3),
            (self.op_detail, 3), (self.op_download, 3), (self.op_embed, 3),
            (self.op_datasets, 1)]
        fns, weights = zip(*ops, strict=True)
        with self.client(user) as c:
            while not self.stop.is_set():
                rng.choices(fns, weights)[0](c, user, rng)
                self.think(rng)

    def think(self, rng: random.Random) -> None:
        """A pause between requests; longer after a connection error, so a client does not
        spin while the API is down."""
        failed = getattr(self.rec.local, "failed", False)
        self.rec.local.failed = False
        self.stop.wait(0.25 if failed else rng.uniform(0, 2 * self.args.think_ms / 1e3))

    def op_healthz(self, c: httpx.Client, user: str, rng: random.Random) -> None:
        self.rec.call(c, "healthz", "GET", "/healthz")

    def op_recommend(self, c: httpx.Client, user: str, rng: random.Random) -> None:
        body = dict(rng.choice(PROFILES))
        if rng.random() < 0.5:
            body.update(labeled=rng.randint(5, 500), unlabeled=rng.randint(0, 20000))
        else:
            body["label_regime"] = rng.choice(["none", "few_shot", "low", "moderate", "full"])
        body["top_k"] = rng.randint(1, 10)
        self.rec.call(c, "recommend", "POST", "/v1/recommendations", json=body)

    def op_list(self, c: httpx.Client, user: str, rng: random.Random) -> None:
        params: dict[str, Any] = rng.choice([
            {}, {"dims": 2}, {"dims": 3}, {"modality": "ultrasound"}, {"q": "breast"},
            {"method": "simclr"}, {"limit": 3, "offset": rng.randint(0, 6)}])
        r = self.rec.call(c, "encoders_list", "GET", "/v1/encoders", params=params)
        if r is not None and r.status_code == 200 and not params and r.json()["data"]:
            self.encoders[user] = r.json()["data"]

    def pick_encoder(self, user: str, rng: random.Random) -> dict[str, Any] | None:
        mine = self.encoders.get(user)
        return rng.choice(mine) if mine else None

    def op_detail(self, c: httpx.Client, user: str, rng: random.Random) -> None:
        e = self.pick_encoder(user, rng)
        if e:
            r = self.rec.call(c, "encoder_detail", "GET", f"/v1/encoders/{e['name']}")
            if r is not None and r.status_code == 200:
                self.details[user][e["name"]] = r.json()

    def op_download(self, c: httpx.Client, user: str, rng: random.Random) -> None:
        e = self.pick_encoder(user, rng)
        details = self.details[user]
        if not e or e["name"] not in details:
            return self.op_detail(c, user, rng)
        files = details[e["name"]]["revisions"][-1]["files"]
        fname = rng.choice(sorted(files))
        headers = {}
        roll = rng.random()
        if roll < 0.25:
            headers["Range"] = "bytes=0-1023"
        elif roll < 0.45:
            headers["If-None-Match"] = f'"{files[fname]["sha256"]}"'
        self.rec.call(c, "download", "GET", f"/v1/encoders/{e['name']}/files/{fname}",
                      headers=headers)

    def op_embed(self, c: httpx.Client, user: str, rng: random.Random) -> None:
        e = self.pick_encoder(user, rng)
        details = self.details[user]
        if not e or e["name"] not in details:
            return self.op_detail(c, user, rng)
        card = details[e["name"]]["card"]
        pool = self.pool.files(card["spatial_dims"], card["in_channels"],
                               tuple(card["input_size"]))
        n = rng.randint(1, 8 if card["spatial_dims"] == 2 else 2)
        files = [("images", (name, data, "application/octet-stream"))
                 for name, data in rng.sample(pool, min(n, len(pool)))]
        # Fine-tune results are task models: they answer /predict, encoders /embed.
        route, kind = ("predict", "predict") if card.get("task") else ("embed", "embed")
        self.rec.call(c, kind, "POST", f"/v1/encoders/{e['name']}/{route}", files=files)

    def op_datasets(self, c: httpx.Client, user: str, rng: random.Random) -> None:
        self.rec.call(c, "datasets_list", "GET", "/v1/datasets")

    # -- jobs traffic -------------------------------------------------------------------

    def submit(self, c: httpx.Client, user: str, body: dict[str, Any], key: str, size: str,
               kind: str = "submit", budget: float = 240) -> int | None:
        """POST /v1/jobs, retried with the same key through connection errors and 5xx (as
        a client should); returns the job id, or None for a 4xx answer."""
        deadline = time.monotonic() + budget
        while True:
            r = self.rec.call(c, kind, "POST", "/v1/jobs", json=body,
                              headers={"Idempotency-Key": key})
            if r is not None and r.status_code == 202:
                job = r.json()
                self.jobs.add(Tracked(job["id"], user, key, size, self.rec.now(), body))
                return job["id"]
            if r is not None and r.status_code < 500:
                return None
            if time.monotonic() > deadline:
                return None
            time.sleep(0.5)

    def job_loop(self, user: str, index: int) -> None:
        rng = random.Random(f"{self.args.seed}-jobs-{index}")
        # Few jobs open per user, so the queue stays short and a job starts within seconds
        # (the chaos events need their long job to start promptly).
        max_open = max(1, math.ceil((self.args.workers + 1) / len(USERS)))
        with self.client(user) as c:
            while not self.stop.is_set():
                self.job_step(c, user, rng, max_open)
                self.think(rng)
                self.stop.wait(rng.uniform(0.2, 1.0))

    def job_step(self, c: httpx.Client, user: str, rng: random.Random, max_open: int) -> None:
        open_jobs = self.jobs.open_of(user)
        # A job picked at submission to be cancelled once running is cancelled when seen so.
        due = [j for j in open_jobs if j.cancel_plan == "running" and j.last_status == "running"
               and not j.cancel_answers]
        if due:
            return self.cancel(c, due[0].id)
        actions = {"submit": 4.0 if len(open_jobs) < max_open else 0.0, "repeat": 0.7,
                   "status": 3.0 if open_jobs else 0.0, "list": 1.5, "events": 1.5}
        what = rng.choices(list(actions), list(actions.values()))[0]
        if what == "submit":
            n = self.next_seq()
            size = "long" if rng.random() < 0.05 else "short"
            body = self.job_body(user, self.long_epochs if size == "long" else 1,
                                 rng.choice(["full", "linear_probe"]), n,
                                 rng.choice([0.5, 1.0]), rng.choice(self.finetune_encoders))
            key = f"{user}-{n}"
            fate = rng.random()
            if rng.random() < 0.25:
                job_id = self.submit_concurrently(user, body, key, size)
            else:
                job_id = self.submit(c, user, body, key, size)
            if job_id is None:
                return None
            if fate < 0.08:            # cancelled while still queued
                self.cancel(c, job_id)
            elif fate < 0.16:          # cancelled once it runs
                self.jobs.by_id[job_id].cancel_plan = "running"
        elif what == "repeat":
            mine = [j for j in self.jobs.all_of(user) if j.size != "calibration"]
            if mine:   # the same key again, later: must answer the same job
                j = rng.choice(mine)
                r = self.rec.call(c, "submit_repeat", "POST", "/v1/jobs", json=j.body,
                                  headers={"Idempotency-Key": j.key})
                if r is not None and r.status_code == 202:
                    with self.jobs.lock:
                        self.jobs.repeat_checks += 1
                        if r.json()["id"] != j.id:
                            self.jobs.key_mismatch.append(
                                {"owner": user, "key": j.key, "ids": [j.id, r.json()["id"]],
                                 "when": "repeated later"})
        elif what == "status":
            j = rng.choice(open_jobs)
            r = self.rec.call(c, "job_status", "GET", f"/v1/jobs/{j.id}")
            if r is not None and r.status_code == 200:
                j.last_status = r.json()["status"]
        elif what == "list":
            r = self.rec.call(c, "jobs_list", "GET", "/v1/jobs",
                              params=rng.choice([{}, {"status": "running"},
                                                 {"status": "queued"}, {"limit": 10}]))
            if r is not None and r.status_code == 200:
                by_id = {x["id"]: x["status"] for x in r.json()["data"]}
                for j in open_jobs:
                    j.last_status = by_id.get(j.id, j.last_status)
        else:
            mine = self.jobs.all_of(user)
            if not mine:
                return None
            j = rng.choice(mine)
            if rng.random() < 0.3 and self.sse_slots.acquire(blocking=False):
                threading.Thread(target=self.follow_sse, args=(user, j.id),
                                 daemon=True).start()
            else:
                self.rec.call(c, "job_events", "GET", f"/v1/jobs/{j.id}/events",
                              params={"limit": 100})
        return None

    def cancel(self, c: httpx.Client, job_id: int) -> None:
        for _ in range(40):   # through a restart: a cancel is worth retrying
            r = self.rec.call(c, "cancel", "POST", f"/v1/jobs/{job_id}/cancel")
            if r is not None and r.status_code < 500:
                with self.jobs.lock:
                    self.jobs.by_id[job_id].cancel_answers.append(r.status_code)
                    if r.status_code == 200:
                        self.jobs.by_id[job_id].last_status = r.json()["status"]
                return
            if self.stop.is_set():
                return
            time.sleep(0.5)

    def submit_concurrently(self, user: str, body: dict[str, Any], key: str,
                            size: str) -> int | None:
        """Three clients send the same Idempotency-Key and body at the same moment."""
        ids: list[int | None] = [None] * 3
        barrier = threading.Barrier(3)

        def one(i: int) -> None:
            with self.client(user) as c:
                barrier.wait()
                ids[i] = self.submit(c, user, body, key, size, kind="submit_dup")

        threads = [threading.Thread(target=one, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        got = {i for i in ids if i is not None}
        with self.jobs.lock:
            self.jobs.dup_groups += 1
            if len(got) > 1:
                self.jobs.key_mismatch.append({"owner": user, "key": key, "ids": sorted(got),
                                               "when": "three at once"})
        return min(got) if got else None

    def follow_sse(self, user: str, job_id: int, slot: bool = True) -> None:
        """Read a job's event stream to its end, for at most 60 s."""
        with self.seq_lock:
            self.sse_open += 1
        try:
            t = time.monotonic()
            headers = {**self.h(user), "Accept": "text/event-stream"}
            try:
                with httpx.stream("GET", f"{self.url}/v1/jobs/{job_id}/events",
                                  headers=headers, timeout=30) as r:
                    self.rec.record("job_events_sse", t, r.status_code, "GET",
                                    f"/v1/jobs/{job_id}/events (SSE)",
                                    "" if r.status_code < 400 else r.read().decode())
                    if r.status_code != 200:
                        return
                    for line in r.iter_lines():
                        if line == "event: end" or time.monotonic() - t > 60 \
                                or self.stop.is_set():
                            return
            except httpx.TimeoutException as err:
                self.rec._error("job_events_sse", t, "timeout", "GET",
                                f"/v1/jobs/{job_id}/events (SSE)", err)
            except httpx.TransportError as err:
                self.rec._error("job_events_sse", t, "conn", "GET",
                                f"/v1/jobs/{job_id}/events (SSE)", err)
        finally:
            with self.seq_lock:
                self.sse_open -= 1
            if slot:
                self.sse_slots.release()

    # -- chaos --------------------------------------------------------------------------

    def schedule(self, seconds: float) -> list[tuple[float, str]]:
        cycles = max(1, round(seconds / 300))
        length = seconds / cycles
        plan = []
        for i in range(cycles):
            base = i * length
            plan += [(base + 0.12 * length, "kill"), (base + 0.25 * length, "pause"),
                     (base + 0.70 * length, "restart_api")]
        return plan

    def chaos_threads(self, seconds: float) -> list[threading.Thread]:
        """One thread per scheduled event, so a slow one (waiting for its long job to
        start) does not delay the next."""
        def one(at: float, what: str) -> None:
            if self.stop.wait(max(0.0, at - self.rec.now())):
                return
            try:
                getattr(self, f"chaos_{what}")()
            except Exception as err:  # report, and keep the soak going
                self.chaos.append({"t": round(self.rec.now(), 1), "event": what,
                                   "error": f"{type(err).__name__}: {err}"})
                log(f"chaos {what} failed: {err}")

        return [threading.Thread(target=one, args=(at, what), daemon=True,
                                 name=f"chaos-{what}-{i}")
                for i, (at, what) in enumerate(self.schedule(seconds))]

    def running_workers(self) -> list[tuple[Proc, dict[str, Any]]]:
        """(worker process, job) for every running job whose worker is one of ours."""
        out = []
        for j in self.admin_get("/v1/jobs", status="running", limit=100)["data"]:
            parts = (j.get("worker") or "").split(":")
            if len(parts) >= 2 and parts[1].isdigit():
                p = self.cluster.by_pid(int(parts[1]))
                if p is not None and not p.stopped:
                    out.append((p, j))
        return out

    def chaos_kill(self) -> None:
        deadline = time.monotonic() + 60
        target = None
        while time.monotonic() < deadline and not self.stop.is_set():
            busy = [(p, j) for p, j in self.running_workers() if j["progress"]]
            if busy:
                target = random.Random(self.args.seed).choice(busy)
                break
            time.sleep(0.5)
        if target is None:
            p, job = next(iter(w for w in self.cluster.workers() if not w.stopped)), None
        else:
            p, job = target
        self.cluster.kill9(p)
        replacement = self.cluster.start_worker()
        ev = {"t": round(self.rec.now(), 1), "event": "kill -9 worker", "worker": p.label,
              "pid": p.pid, "job": job and job["id"], "job_attempt": job and job["attempts"],
              "replacement": replacement.label}
        self.chaos.append(ev)
        log(f"chaos: {ev}")

    def chaos_pause(self) -> None:
        """A long job, its worker frozen past the lease: the job is reaped and retried
        elsewhere while the frozen attempt's runner may still be training."""
        n = self.next_seq()
        body = self.job_body("alice", self.long_epochs, "full", n)
        with self.client("alice") as c:
            job_id = self.submit(c, "alice", body, f"chaos-pause-{n}", "long")
        if job_id is None:
            raise RuntimeError("the long job for the pause was refused")
        t_wait = time.monotonic()
        target = None
        while time.monotonic() - t_wait < 150 and not self.stop.is_set():
            for p, j in self.running_workers():
                if j["id"] == job_id and j["progress"].get("epoch", 0) >= 1:
                    target = p
            if target:
                break
            time.sleep(0.3)
        if target is None:
            raise RuntimeError(f"long job {job_id} was not training after "
                               f"{time.monotonic() - t_wait:.0f} s"
                               + (" (traffic ended first)" if self.stop.is_set() else ""))
        pause = self.stale + PAUSE_PAST_LEASE
        t = round(self.rec.now(), 1)
        self.cluster.pause(target)
        log(f"chaos: SIGSTOP {target.label} (pid {target.pid}, job {job_id}) for {pause:.0f} s")
        time.sleep(pause)   # the full pause, even if the traffic ends meanwhile
        self.cluster.resume(target)
        after = self.admin_get(f"/v1/jobs/{job_id}")
        ev = {"t": t, "event": "SIGSTOP worker", "worker": target.label, "pid": target.pid,
              "job": job_id, "paused_s": pause,
              "job_after_resume": {k: after[k] for k in ("status", "attempts", "worker")}}
        self.chaos.append(ev)
        log(f"chaos: SIGCONT {target.label}; job {job_id} now {ev['job_after_resume']}")

    def chaos_restart_api(self) -> None:
        # A client follows an unfinished job's events across the restart, as a dashboard
        # would (when no stream happens to be open already).
        if not self.sse_open:
            for user in USERS:
                if self.jobs.open_of(user):
                    threading.Thread(target=self.follow_sse, daemon=True, args=(
                        user, self.jobs.open_of(user)[0].id, False)).start()
                    time.sleep(1)
                    break
        sse_open = self.sse_open
        t = self.rec.now()
        window = [t, None]
        self.rec.restarts.append(window)
        old = self.cluster.api
        down_s, killed = self.cluster.stop_api(self.args.api_grace)
        t_up = time.monotonic()
        new = self.cluster.start_api()
        window[1] = self.rec.now()
        ev = {"t": round(t, 1), "event": "restart API", "old": old and old.label,
              "new": new.label, "sse_streams_open_at_sigterm": sse_open,
              "sigterm_to_exit_s": round(down_s, 2),
              "killed_after_grace": killed, "start_to_healthy_s": round(time.monotonic() - t_up, 2),
              "unavailable_s": round(window[1] - t, 2)}
        self.chaos.append(ev)
        log(f"chaos: {ev}")

    # -- run ----------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        seconds = self.args.minutes * 60
        self.t0 = self.rec.t0 = time.monotonic()
        self.cluster.sampling = True
        self.cluster.sample()
        users = list(USERS)
        threads = [threading.Thread(target=self.reader_loop, args=(users[i % len(users)], i),
                                    daemon=True, name=f"reader-{i}")
                   for i in range(self.args.readers)]
        threads += [threading.Thread(target=self.job_loop, args=(u, i), daemon=True,
                                     name=f"jobs-{u}") for i, u in enumerate(USERS)]
        chaos = self.chaos_threads(seconds)
        for t in threads + chaos:
            t.start()
        log(f"traffic for {seconds:.0f} s: {self.args.readers} readers, 2 job clients, "
            f"{self.args.workers} workers; chaos at "
            + ", ".join(f"{a:.0f}s {w}" for a, w in self.schedule(seconds)))
        unexpected_deaths = []
        next_report, next_timeline = 30.0, 0.0
        while self.rec.now() < seconds:
            time.sleep(1)
            if self.rec.now() >= next_timeline:
                next_timeline += 15
                self.cluster.sample(self.t0)
            else:
                self.cluster.sample()
            unexpected_deaths += [{"t": round(self.rec.now(), 1), "process": p.label,
                                   "code": p.popen.returncode}
                                  for p in self.cluster.died_unexpectedly()]
            if self.rec.now() >= next_report:
                next_report += 30
                with self.rec.lock:
                    n, e5 = len(self.rec.samples), len(self.rec.five_xx)
                log(f"t={self.rec.now():.0f}s requests {n}, 5xx {e5}, jobs "
                    f"{len(self.jobs.by_id)}")
        traffic_s = self.rec.now()
        log("traffic done; stopping clients and chaos")
        self.stop.set()
        for t in chaos + threads:
            t.join(timeout=self.stale + PAUSE_PAST_LEASE + 180)
        for p in self.cluster.workers():
            if p.stopped:
                self.cluster.resume(p)
        if self.cluster.api is None:   # stopped mid-restart: bring it back for the checks
            self.cluster.start_api()
        self.cluster.sample(self.t0)
        rss_end = self.rss_report()
        drain = self.drain()
        self.cluster.sample()
        unexpected_deaths += [{"t": round(self.rec.now(), 1), "process": p.label,
                               "code": p.popen.returncode}
                              for p in self.cluster.died_unexpectedly()]
        verdict = self.verify()
        verdict["fencing"] = self.fencing_evidence()
        return self.report(traffic_s, rss_end, drain, verdict, unexpected_deaths)

    def drain(self) -> dict[str, Any]:
        t = time.monotonic()
        deadline = t + self.args.drain_timeout
        while True:
            jobs = self.all_jobs()
            open_jobs = [j["id"] for j in jobs if j["status"] not in TERMINAL]
            if not open_jobs or time.monotonic() > deadline:
                break
            time.sleep(1)
        out = {"seconds": round(time.monotonic() - t, 1), "open_at_end": open_jobs}
        log(f"drain: {out['seconds']} s, {len(open_jobs)} job(s) still open")
        return out

    # -- checks -------------------------------------------------------------------------

    def verify(self) -> dict[str, Any]:
        jobs = {j["id"]: j for j in self.all_jobs()}
        # Encoders registered by jobs (their lineage names the job), every namespace.
        registrations: dict[int, list[str]] = defaultdict(list)
        encs, offset = [], 0
        while True:
            page = self.admin_get("/v1/encoders", limit=100, offset=offset)
            encs += page["data"]
            offset += len(page["data"])
            if not page["data"] or offset >= page["count"]:
                break
        for e in encs:
            if "ft-job" not in e["name"]:
                continue
            d = self.admin_get(f"/v1/encoders/{e['name']}")
            job_id = ((d.get("card") or {}).get("lineage") or {}).get("job_id")
            if job_id is not None:
                for _ in d["revisions"]:
                    registrations[int(job_id)].append(e["name"])
        per_job: dict[int, dict[str, Any]] = {}
        for job_id, job in sorted(jobs.items()):
            events = self.events[job_id] = self.all_events(job_id)
            terminal = [e for e in events if e["type"] == "status"
                        and e["data"].get("status") in TERMINAL]
            after = [e for e in events if terminal and e["id"] > terminal[0]["id"]]
            claims = [e for e in events if e["type"] == "status"
                      and e["data"].get("status") == "running"]
            per_job[job_id] = {
                "status": job["status"], "attempts": job["attempts"],
                "terminal_events": [e["data"]["status"] for e in terminal],
                "events_after_end": [f"{e['type']}:{json.dumps(e['data'])[:120]}"
                                     for e in after],
                "claims": len(claims), "registrations": registrations.get(job_id, []),
                "error": job["error"],
                "turnaround_s": self._turnaround(job),
            }
        return {"jobs": per_job, "registrations_without_job": sorted(
            set(registrations) - set(jobs))}

    def fencing_evidence(self) -> dict[str, Any]:
        """What the attempt and worker logs say about attempts stopped for a lost lease
        (informative: shows whether the pause exercised a stale attempt)."""
        import re

        # A runner says "lease L lost" (its watchdog) or "lease L is no longer current" (a
        # refused write). Stale if another attempt ended the job; benign if L ended it.
        runner_stale, runner_after_own_end = set(), set()
        for log_file in (self.cluster.home / "jobs").glob("*/attempt-*.log"):
            job_id = int(log_file.parent.name)
            for m in re.finditer(r"lease (\d+) (?:lost|is no longer current)",
                                 log_file.read_text(errors="replace")):
                lease = int(m.group(1))
                (runner_after_own_end if self.ended_under_lease(job_id) == lease
                 else runner_stale).add((job_id, lease))
        # "job N was taken from this worker (lease L)": either a stale attempt stopped (the
        # job was reaped and retried), or lease L itself had just ended the job and the
        # worker's heartbeat saw it before the runner's exit (a spurious warning).
        stale, after_own_end, other = [], [], []
        for log_file in sorted(self.cluster.logs.glob("worker-*.log")):
            for line in log_file.read_text(errors="replace").splitlines():
                m = re.search(r"job (\d+) was taken from this worker \(lease (\d+)\)", line)
                if not m:
                    if "lease" in line.lower() and "lost" in line.lower():
                        other.append(f"{log_file.stem}: {line[:200]}")
                    continue
                job_id, lease = int(m.group(1)), int(m.group(2))
                entry = {"worker": log_file.stem, "job": job_id, "lease": lease}
                if self.ended_under_lease(job_id) == lease:
                    after_own_end.append(entry)
                else:
                    stale.append(entry)
        return {"runner_stopped_stale": sorted(runner_stale),
                "runner_lease_lost_after_own_end": sorted(runner_after_own_end),
                "worker_stopped_stale_attempt": stale,
                "worker_taken_after_own_attempt_ended": after_own_end,
                "other_worker_lease_lines": other[:10]}

    def ended_under_lease(self, job_id: int) -> int | None:
        """The lease of the attempt that was current when the job ended."""
        lease = None
        for e in self.events.get(job_id, []):
            if e["type"] != "status":
                continue
            if e["data"].get("status") == "running":
                lease = e["data"].get("lease")
            elif e["data"].get("status") in TERMINAL:
                return lease
        return None

    @staticmethod
    def _turnaround(job: dict[str, Any]) -> float | None:
        from datetime import datetime

        if not job.get("finished_at"):
            return None
        a = datetime.fromisoformat(job["created_at"])
        b = datetime.fromisoformat(job["finished_at"])
        return round((b - a).total_seconds(), 2)

    def rss_report(self) -> dict[str, Any]:
        rows = []
        for p in self.cluster.procs:
            tl = p.timeline
            mid = next((v for t, v in tl if t >= (tl[0][0] + tl[-1][0]) / 2), None) if tl \
                else None
            rows.append({"process": p.label, "pid": p.pid, "first_mib": kib_mib(p.rss_first),
                         "last_mib": kib_mib(p.rss_last), "max_mib": kib_mib(p.rss_max),
                         "growth_mib": None if p.rss_first is None or p.rss_last is None
                         else round((p.rss_last - p.rss_first) / 1024, 1),
                         "growth_second_half_mib": None if mid is None or p.rss_last is None
                         else round(p.rss_last / 1024 - mid, 1),
                         "timeline_mib": tl,
                         "lived_s": round((p.ended or time.monotonic()) - max(p.started,
                                                                             self.t0), 1),
                         "ended": p.how_ended})
        return {"processes": rows, "runner_max_mib": kib_mib(self.cluster.runner_rss_max)}

    def report(self, traffic_s: float, rss: dict[str, Any], drain: dict[str, Any],
               verdict: dict[str, Any], deaths: list[dict[str, Any]]) -> dict[str, Any]:
        rec = self.rec
        by_kind: dict[str, dict[str, Any]] = {}
        kinds = sorted({s.kind for s in rec.samples})
        health_p99 = pct([s.seconds for s in rec.samples
                          if s.kind == "healthz" and s.status == 200], 0.99)
        for kind in kinds:
            ss = [s for s in rec.samples if s.kind == kind]
            ok = [s.seconds for s in ss if s.status is not None and s.status < 500]
            p99 = pct(ok, 0.99)
            by_kind[kind] = {
                "requests": len(ss),
                "statuses": dict(sorted(Counter(str(s.status) for s in ss
                                                if s.status is not None).items())),
                "5xx": sum(1 for s in ss if s.status is not None and s.status >= 500),
                "unavailable_in_restart": sum(1 for s in ss if s.error and
                                              rec.in_restart(s.t)),
                "conn_errors_outside_restart": sum(1 for s in ss if s.error == "conn" and
                                                   not rec.in_restart(s.t)),
                "timeouts_outside_restart": sum(1 for s in ss if s.error == "timeout" and
                                                not rec.in_restart(s.t)),
                "p50_ms": round(pct(ok, 0.5) * 1e3, 1) if ok else None,
                "p99_ms": round(p99 * 1e3, 1) if p99 is not None else None,
                "max_ms": round(max(ok) * 1e3, 1) if ok else None,
                "p99_vs_healthz": round(p99 / health_p99, 1) if p99 and health_p99 else None,
            }
        answered = [s.seconds for s in rec.samples if s.status is not None and s.status < 500]
        slowest = sorted((s for s in rec.samples if s.status is not None),
                         key=lambda s: -s.seconds)[:8]
        outside = [e for e in rec.errors if not rec.in_restart(e["t"])]
        jobs_v = verdict["jobs"]
        acked = set(self.jobs.by_id)
        in_db = set(jobs_v)
        once, doubled, after_end, not_ended, mismatch, multi_reg = [], [], [], [], [], []
        for job_id, v in jobs_v.items():
            n = len(v["terminal_events"])
            if n > 1 or len(v["registrations"]) > 1:
                doubled.append(job_id)
            if v["events_after_end"]:
                after_end.append(job_id)
            if n == 0 or v["status"] not in TERMINAL:
                not_ended.append(job_id)
            if n >= 1 and v["terminal_events"][0] != v["status"]:
                mismatch.append(job_id)
            if len(v["registrations"]) > 1 or (v["registrations"] and
                                               v["status"] != "succeeded"):
                multi_reg.append(job_id)
            if n == 1 and not v["events_after_end"] and v["status"] == v["terminal_events"][0] \
                    and len(v["registrations"]) <= (1 if v["status"] == "succeeded" else 0):
                once.append(job_id)
        lost = sorted((acked - in_db) | (acked & set(not_ended)))
        statuses = Counter(v["status"] for v in jobs_v.values())
        turn = [v["turnaround_s"] for i, v in jobs_v.items() if v["turnaround_s"] is not None
                and self.jobs.by_id.get(i) and self.jobs.by_id[i].size == "short"
                and v["status"] == "succeeded"]
        cal = self.calibration.get("short", {}).get("turnaround_s")
        failures = Counter((v["error"] or "")[:160] for v in jobs_v.values()
                           if v["status"] == "failed")
        cancel_200 = [i for i, j in self.jobs.by_id.items() if 200 in j.cancel_answers]
        jobs_report = {
            "submitted": len(acked),
            "in_database": len(in_db),
            "ended_exactly_once": len(set(once) & acked),
            "doubled": sorted(doubled),
            "events_after_end": sorted(after_end),
            "status_differs_from_terminal_event": sorted(mismatch),
            "encoder_registrations_not_one_per_success": sorted(multi_reg),
            "registrations_for_unknown_jobs": verdict["registrations_without_job"],
            "lost": lost,
            "unknown_to_clients": sorted(in_db - acked),
            "by_status": dict(statuses),
            "retried": sum(1 for v in jobs_v.values() if v["claims"] > 1),
            "max_claims": max((v["claims"] for v in jobs_v.values()), default=0),
            "failed_reasons": dict(failures.most_common(8)),
            "cancel_acknowledged": len(cancel_200),
            "cancel_acknowledged_but_not_cancelled": sorted(
                i for i in cancel_200 if jobs_v.get(i, {}).get("status") != "cancelled"),
            "idempotency": {"three_at_once_groups": self.jobs.dup_groups,
                            "repeated_later": self.jobs.repeat_checks,
                            "one_key_two_jobs": self.jobs.key_mismatch},
            "short_job_turnaround_s": {"p50": pct(turn, 0.5), "p99": pct(turn, 0.99),
                                       "idle_baseline": cal,
                                       "p50_vs_idle": round(pct(turn, 0.5) / cal, 1)
                                       if turn and cal else None},
            "fencing": verdict["fencing"],
            "details_of_problem_jobs": {i: jobs_v[i] for i in sorted(
                set(doubled) | set(after_end) | set(mismatch) | set(multi_reg)
                | set(not_ended))[:20]},
        }
        return {
            "config": {"minutes": self.args.minutes, "workers": self.args.workers,
                       "readers": self.args.readers, "seed": self.args.seed,
                       "lease_s": self.stale, "pause_s": self.stale + PAUSE_PAST_LEASE,
                       "cpus": os.cpu_count(), "worker_threads": self.cluster.worker_threads,
                       "finetune_encoders": self.finetune_encoders},
            "calibration": self.calibration,
            "traffic_s": round(traffic_s, 1),
            "requests": {"total": len(rec.samples),
                         "per_s": round(len(rec.samples) / traffic_s, 1),
                         "p50_ms": round(pct(answered, 0.5) * 1e3, 1) if answered else None,
                         "p99_ms": round(pct(answered, 0.99) * 1e3, 1) if answered else None,
                         "healthz_p99_ms": round(health_p99 * 1e3, 1) if health_p99 else None,
                         "slowest": [{"kind": s.kind, "t": round(s.t, 1), "status": s.status,
                                      "ms": round(s.seconds * 1e3)} for s in slowest],
                         "by_kind": by_kind},
            "5xx": {"count": len(rec.five_xx), "first": rec.five_xx[:5]},
            "unexpected_4xx": {"count": len(rec.unexpected), "first": rec.unexpected[:5],
                               "by_kind_status": dict(Counter(
                                   f"{u['kind']} {u['status']}" for u in rec.unexpected))},
            "unavailable": {
                "during_restart": sum(1 for e in rec.errors if rec.in_restart(e["t"])),
                "outside_restart": len(outside), "outside_first": outside[:5],
                "restart_windows_s": [[round(a, 1), round(b, 1) if b else None]
                                      for a, b in rec.restarts]},
            "chaos": sorted(self.chaos, key=lambda c: c["t"]),
            "unexpected_process_exits": deaths,
            "jobs": jobs_report,
            "drain": drain,
            "rss": rss,
        }


def kib_mib(v: int | None) -> float | None:
    return None if v is None else round(v / 1024, 1)


# ---------------------------------------------------------------------------- output

def print_report(r: dict[str, Any]) -> None:
    req = r["requests"]
    print()
    print(f"soak: {r['traffic_s']:.0f} s of traffic, {r['config']['workers']} workers, "
          f"{r['config']['cpus']} CPUs, lease {r['config']['lease_s']:g} s")
    print(f"requests {req['total']} ({req['per_s']}/s), p50 {req['p50_ms']} ms, "
          f"p99 {req['p99_ms']} ms; GET /healthz p99 {req['healthz_p99_ms']} ms (baseline)")
    head = (f"  {'kind':16s} {'requests':>8s} {'5xx':>4s} {'unavail':>7s} {'conn*':>5s} "
            f"{'p50 ms':>8s} {'p99 ms':>8s} {'max ms':>8s} {'p99/hz':>7s}  statuses")
    print(head)
    for kind, k in req["by_kind"].items():
        print(f"  {kind:16s} {k['requests']:8d} {k['5xx']:4d} {k['unavailable_in_restart']:7d} "
              f"{k['conn_errors_outside_restart'] + k['timeouts_outside_restart']:5d} "
              f"{k['p50_ms'] if k['p50_ms'] is not None else '-':>8} "
              f"{k['p99_ms'] if k['p99_ms'] is not None else '-':>8} "
              f"{k['max_ms'] if k['max_ms'] is not None else '-':>8} "
              f"{k['p99_vs_healthz'] if k['p99_vs_healthz'] is not None else '-':>7}  "
              f"{k['statuses']}")
    print("  (unavail: connection errors during an API restart; conn*: connection errors or "
          "timeouts outside one)")
    print("  slowest: " + ", ".join(f"{x['kind']} {x['ms']} ms at t={x['t']}s"
                                    for x in req["slowest"][:6]))
    e5 = r["5xx"]
    print(f"5xx: {e5['count']} (target 0: {'met' if e5['count'] == 0 else 'NOT met'})")
    for x in e5["first"]:
        print(f"  t={x['t']}s {x['request']} -> {x['status']}: {x['body'][:300]}")
    u = r["unavailable"]
    print(f"unavailable: {u['during_restart']} during restarts {u['restart_windows_s']}, "
          f"{u['outside_restart']} outside")
    for x in u["outside_first"]:
        print(f"  t={x['t']}s {x['request']}: {x['error']} {x['detail'][:200]}")
    if r["unexpected_4xx"]["count"]:
        print(f"unexpected 4xx: {r['unexpected_4xx']['by_kind_status']}")
        for x in r["unexpected_4xx"]["first"]:
            print(f"  t={x['t']}s {x['request']} -> {x['status']}: {x['body'][:200]}")
    print("chaos:")
    for c in r["chaos"]:
        print(f"  {json.dumps(c)}")
    for d in r["unexpected_process_exits"]:
        print(f"  UNEXPECTED EXIT {d}")
    j = r["jobs"]
    ok = (j["ended_exactly_once"] == j["submitted"] and not j["doubled"] and not j["lost"]
          and not j["events_after_end"])
    print(f"jobs: submitted {j['submitted']}, ended exactly once {j['ended_exactly_once']}, "
          f"doubled {len(j['doubled'])}, lost {len(j['lost'])} "
          f"(target equal, none twice: {'met' if ok else 'NOT met'})")
    print(f"  in database {j['in_database']}, unknown to clients {len(j['unknown_to_clients'])},"
          f" events after the end {len(j['events_after_end'])}, status != terminal event "
          f"{len(j['status_differs_from_terminal_event'])}, encoder registrations not one per "
          f"success {len(j['encoder_registrations_not_one_per_success'])}")
    print(f"  by status {j['by_status']}; retried {j['retried']} (max claims "
          f"{j['max_claims']}); cancels acknowledged {j['cancel_acknowledged']}, of which not "
          f"cancelled {len(j['cancel_acknowledged_but_not_cancelled'])}")
    idem = j["idempotency"]
    print(f"  idempotency: {idem['three_at_once_groups']} keys sent three at once, "
          f"{idem['repeated_later']} repeated later, one key -> two jobs: "
          f"{len(idem['one_key_two_jobs'])}")
    t = j["short_job_turnaround_s"]
    print(f"  short job turnaround p50 {t['p50']} s, p99 {t['p99']} s; idle baseline "
          f"{t['idle_baseline']} s (ratio {t['p50_vs_idle']})")
    for reason, n in j["failed_reasons"].items():
        print(f"  failed x{n}: {reason}")
    f = j["fencing"]
    print(f"  stale attempts stopped on a lost lease (job, lease): by their runner "
          f"{f['runner_stopped_stale']}; by their worker, jobs "
          f"{sorted({x['job'] for x in f['worker_stopped_stale_attempt']})}; worker said "
          f"'taken from this worker' after its own attempt had ended the job: "
          f"{len(f['worker_taken_after_own_attempt_ended'])} time(s); runner said 'lease "
          f"lost' after its own attempt had ended the job: "
          f"{len(f['runner_lease_lost_after_own_end'])} time(s)")
    for job_id, v in j["details_of_problem_jobs"].items():
        print(f"  PROBLEM job {job_id}: {json.dumps(v)[:400]}")
    print(f"drain: {r['drain']['seconds']} s, open at the end: {r['drain']['open_at_end']}")
    print("RSS (MiB, VmRSS; first = when traffic started or the process did):")
    for p in r["rss"]["processes"]:
        print(f"  {p['process']:10s} pid {p['pid']:>7} first {p['first_mib']} last "
              f"{p['last_mib']} max {p['max_mib']} growth {p['growth_mib']} (second half "
              f"{p['growth_second_half_mib']}) over {p['lived_s']} s "
              f"({p['ended'] or 'running'})")
        if p["process"].startswith("api") and p["timeline_mib"]:
            print("    " + " ".join(f"{t:.0f}s:{v:.0f}" for t, v in p["timeline_mib"]))
    print(f"  job runners: max {r['rss']['runner_max_mib']}")


# ---------------------------------------------------------------------------- main

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="traffic time (default 10)")
    ap.add_argument("--workers", type=int, default=3, help="worker processes (default 3)")
    ap.add_argument("--readers", type=int, default=3,
                    help="client threads for zoo and rules traffic (default 3)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--database-url", help="PostgreSQL URL to use as it is (never dropped); "
                    "default: a fresh database on --postgres")
    ap.add_argument("--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
                    help="server (and maintenance database) where the fresh database is made")
    ap.add_argument("--stale-seconds", type=float, default=None,
                    help="TASKALIGN_JOB_STALE_SECONDS for every process (default: the "
                    f"service's, {DEFAULT_STALE:g} s)")
    ap.add_argument("--think-ms", type=float, default=20.0,
                    help="mean pause between a client's requests")
    ap.add_argument("--worker-threads", type=int, default=None,
                    help="OMP/MKL threads per worker (default: CPUs / workers, at least 1)")
    ap.add_argument("--api-grace", type=float, default=30.0,
                    help="seconds the API gets to exit after SIGTERM before SIGKILL")
    ap.add_argument("--drain-timeout", type=float, default=300.0,
                    help="longest wait for every job to end after the traffic")
    ap.add_argument("--out", type=Path, help="write the report as JSON here")
    ap.add_argument("--keep", action="store_true",
                    help="keep the database and the temporary TASKALIGN_HOME (with logs)")
    args = ap.parse_args()

    def on_signal(signum: int, _: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    # Both, explicitly: a shell starts background jobs with SIGINT ignored.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    tmp = Path(tempfile.mkdtemp(prefix="taskalign-soak-"))
    home, logs = tmp / "home", tmp / "logs"
    home.mkdir()
    logs.mkdir()
    created_db = None
    cluster = None
    failed = True
    try:
        if args.database_url:
            db_url = args.database_url
        else:
            db_url = created_db = create_database(args.postgres)
        log(f"database {db_url}; home {home}; logs {logs}")
        env = {**os.environ, "TASKALIGN_HOME": str(home), "TASKALIGN_DATABASE_URL": db_url,
               "TASKALIGN_WORKER": "false", "TASKALIGN_SEED_ZOO": "true",
               "TASKALIGN_LOG_LEVEL": "warning", "TASKALIGN_DATA_DIR": str(DATA_DIR),
               "TASKALIGN_API_TOKENS": ",".join(f"{u}={t}" for u, t in USERS.items()),
               "TASKALIGN_ADMIN_TOKENS": ADMIN, "PYTHONUNBUFFERED": "1"}
        if args.stale_seconds:
            env["TASKALIGN_JOB_STALE_SECONDS"] = str(args.stale_seconds)
        threads = args.worker_threads or max(1, (os.cpu_count() or 1) // args.workers)
        cluster = Cluster(home, logs, env, free_port(), threads)
        t_setup = time.monotonic()
        cluster.start_api()
        for _ in range(args.workers):
            cluster.start_worker()
        soak = Soak(args, cluster)
        soak.setup()
        setup_s = time.monotonic() - t_setup
        log(f"set-up took {setup_s:.0f} s")
        report = soak.run()
        report["setup_s"] = round(setup_s, 1)
        report["total_s"] = round(time.monotonic() - t_setup, 1)
        report["logs"] = str(logs) if args.keep else None
        print_report(report)
        print(f"total {report['total_s']:.0f} s (set-up {setup_s:.0f} s, traffic "
              f"{report['traffic_s']:.0f} s, drain {report['drain']['seconds']:.0f} s)")
        if args.out:
            args.out.write_text(json.dumps(report, indent=2, default=str))
            log(f"wrote {args.out}")
        j = report["jobs"]
        failed = bool(report["5xx"]["count"] or j["doubled"] or j["lost"]
                      or j["events_after_end"] or j["ended_exactly_once"] != j["submitted"])
    except KeyboardInterrupt as err:
        log(f"interrupted ({err}); cleaning up")
    finally:
        if cluster is not None:
            cluster.close()
        if created_db and not args.keep:
            with contextlib.suppress(Exception):
                drop_database(args.postgres, created_db)
        if args.keep:
            log(f"kept database {created_db or args.database_url} and {tmp}")
        else:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
