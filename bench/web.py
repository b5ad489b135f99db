"""Benchmark the web pages: server-side render time with 1,000 encoders and 1,000 jobs.

Each page is fetched sequentially over a keep-alive connection from a live `taskalign
serve` (uvicorn, SQLite), and compared in the same run with the JSON API's list routes
that the pages call (`/v1/encoders`, `/v1/jobs`, same page size). Target: every page p95
under 100 ms.

The catalogue is grown from real rows: the seed zoo is registered first, then its
revisions are cloned under new names (1,000 repositories in all), and 1,000 finished jobs
with 20 epochs of metrics and 30 events each are added.

    .venv/bin/python bench/web.py [--requests 200] [--encoders 1000] [--jobs 1000]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session, selectinload

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service.jobs.models import JobEventRow, JobRow  # noqa: E402
from tests.conftest import Server  # noqa: E402
from zoo.catalog import EncoderRow, FileRow, RevisionRow  # noqa: E402

TOKEN = "bench-alice-token-0123456789"
SEED_COUNT = 15


def wait_for_seed_zoo(url: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if httpx.get(f"{url}/v1/encoders", params={"limit": 1}).json()["count"] >= SEED_COUNT:
            return
        time.sleep(2)
    raise RuntimeError("the seed zoo did not register in time")


def grow_catalogue(db_url: str, encoders: int, jobs: int) -> tuple[str, int]:
    """Clone seed repositories up to `encoders` and add `jobs` finished jobs; returns a
    cloned repository id and a job id to open."""
    engine = create_engine(db_url)
    now = datetime.now(UTC)
    with Session(engine) as session, session.begin():
        seeds = session.scalars(select(EncoderRow).options(
            selectinload(EncoderRow.revisions).selectinload(RevisionRow.files))).all()
        existing = len(seeds)
        for i in range(encoders - existing):
            seed = seeds[i % len(seeds)]
            name = f"alice/{seed.name.split('/')[1]}-copy{i}"
            row = EncoderRow(name=name, owner="alice", private=i % 3 == 0, task=seed.task,
                             architecture=seed.architecture, modality=seed.modality,
                             method_id=seed.method_id, family=seed.family,
                             spatial_dims=seed.spatial_dims, in_channels=seed.in_channels,
                             feature_dim=seed.feature_dim, latest_revision=1,
                             description=seed.description, created_at=now, updated_at=now,
                             parent=seed.name if i % 10 == 0 else None)
            rev = seed.revisions[-1]
            card = copy.deepcopy(rev.card)
            card["repo_id"] = name
            if i % 10 == 0:
                card["parent"] = seed.name  # some lineage to draw
            row.revisions.append(RevisionRow(
                number=1, commit=uuid.uuid4().hex + "00000000", card=card, created_at=now,
                files=[FileRow(filename=f.filename, sha256=f.sha256, size=f.size)
                       for f in rev.files]))
            session.add(row)
        sample = f"alice/{seeds[0].name.split('/')[1]}-copy0"
        history = [{"epoch": e, "train_loss": round(1 / e, 4), "val_auc": round(0.5 + e / 50, 4)}
                   for e in range(1, 21)]
        for j in range(jobs):
            job = JobRow(owner="alice", type="finetune", status="succeeded",
                         request={"type": "finetune", "dataset_id": 1,
                                  "encoder": seeds[j % len(seeds)].name},
                         params={"epochs": 20}, attempts=1, max_attempts=2, lease=1,
                         progress={"percent": 100.0, "phase": "succeeded"},
                         metrics={"history": history, "val_auc": 0.9},
                         device="cpu", result={"encoder": sample, "revision": 1},
                         created_at=now, updated_at=now, started_at=now, finished_at=now)
            session.add(job)
            session.flush()
            session.add_all([JobEventRow(job_id=job.id, type="log" if k % 2 else "metrics",
                                         data={"line": f"epoch {k}"} if k % 2 else history[k % 20],
                                         created_at=now) for k in range(30)])
        last_job = job.id
    engine.dispose()
    return sample, last_job


def timings(client: httpx.Client, path: str, n: int) -> list[float]:
    client.get(path).raise_for_status()  # warm
    out = []
    for _ in range(n):
        start = time.perf_counter()
        response = client.get(path)
        out.append((time.perf_counter() - start) * 1000)
        if response.status_code != 200:
            raise RuntimeError(f"{path} answered {response.status_code}")
    return out


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--encoders", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=1000)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="bench-web-"))
    env = {"TASKALIGN_API_TOKENS": f"alice={TOKEN}"}
    server = Server(home, TASKALIGN_SEED_ZOO="true", **env)
    try:
        wait_for_seed_zoo(server.url)
    finally:
        server.stop()
    repo, job_id = grow_catalogue(f"sqlite:///{home / 'taskalign.db'}", args.encoders, args.jobs)
    server = Server(home, **env)
    cookie = {"taskalign_token": TOKEN}
    routes = [  # (path, the JSON route it is compared with)
        ("/v1/encoders?limit=50", None),
        ("/v1/jobs?limit=50", None),
        ("/", "/v1/encoders?limit=50"),
        ("/zoo", "/v1/encoders?limit=50"),
        ("/zoo?q=chest+x-ray&family=contrastive_global", "/v1/encoders?limit=50"),
        (f"/zoo/{repo}", "/v1/encoders?limit=50"),
        ("/recommend?task=classification&modality=cxr&label_regime=low",
         "/v1/encoders?limit=50"),
        ("/jobs", "/v1/jobs?limit=50"),
        (f"/jobs/{job_id}", "/v1/jobs?limit=50"),
        ("/datasets", "/v1/jobs?limit=50"),
    ]
    results: dict[str, list[float]] = {}
    try:
        with httpx.Client(base_url=server.url, cookies=cookie, timeout=30) as client:
            count = client.get("/v1/encoders", params={"limit": 1}).json()["count"]
            jobs = client.get("/v1/jobs", params={"limit": 1}).json()["count"]
            print(f"catalogue: {count} encoders visible to alice, {jobs} jobs; "
                  f"{args.requests} sequential requests per route")
            for path, _ in routes:
                results[path] = timings(client, path, args.requests)
    finally:
        server.stop()
    print(f"{'route':62} {'p50 ms':>8} {'p95 ms':>8} {'p95 / JSON list p95':>20}")
    for path, baseline in routes:
        values = results[path]
        ratio = f"{p95(values) / p95(results[baseline]):.2f}" if baseline else "(baseline)"
        print(f"{path[:62]:62} {statistics.median(values):8.1f} {p95(values):8.1f} {ratio:>20}")
    worst = max(p95(results[p]) for p, b in routes if b)
    print(f"slowest page p95: {worst:.1f} ms (target < 100 ms): "
          f"{'met' if worst < 100 else 'NOT met'}")


if __name__ == "__main__":
    main()
