"""Job service latency.

(a) p50/p99 of GET /v1/jobs/{id} with 200 jobs queued and the worker busy on one, against
    GET /healthz (a trivial route of the same server) in the same run. Target p99 < 50 ms.
(b) Job overhead: time from POST /v1/jobs to the job's first training step (its first
    progress report), with an idle worker. Target < 5 s locally.
(c) Live view: from the end of each epoch (the metrics event's timestamp) to the event
    reaching the stream client of `taskalign jobs follow`. Target < 2 s.

    .venv/bin/python bench/jobs.py
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.loadgen import encode_get, run_load  # noqa: E402
from tests.conftest import Server  # noqa: E402
from tests.service.test_jobs import ADMIN, ALICE, ENC, TOKENS, h, seed_server  # noqa: E402


def follow_delays(url: str, ds: int, epochs: int = 6) -> list[float]:
    """Seconds from each epoch's metrics event being written (its created_at, the moment
    the runner reported the epoch's end) to its arrival through the SSE client that
    `taskalign jobs follow` reads with (service.cli_http.Client.events)."""
    from datetime import datetime

    from service.cli_http import Client

    job_id = httpx.post(f"{url}/v1/jobs", headers=h(ALICE), json={
        "type": "finetune", "encoder": ENC, "dataset_id": ds, "epochs": epochs,
        "mode": "full"}).json()["id"]
    delays = []
    with Client(url, ALICE) as client:
        for kind, _, data in client.events(f"/v1/jobs/{job_id}/events"):
            arrived = time.time()
            if kind == "metrics" and "epoch" in data["data"] and "val_auc" in data["data"]:
                written = datetime.fromisoformat(data["created_at"]).timestamp()
                delays.append(arrived - written)
    return delays


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(Path(tmp), TASKALIGN_WORKER="true", **TOKENS)
        try:
            url = server.url
            ds = seed_server(url, server.home)
            t0 = time.perf_counter()
            first = httpx.post(f"{url}/v1/jobs", headers=h(ALICE), json={
                "type": "finetune", "encoder": ENC, "dataset_id": ds, "epochs": 1,
                "mode": "full"}).json()
            while True:
                j = httpx.get(f"{url}/v1/jobs/{first['id']}", headers=h(ALICE)).json()
                if j["progress"].get("phase") or j["status"] in ("failed", "succeeded"):
                    break
                time.sleep(0.02)
            overhead = time.perf_counter() - t0
            while httpx.get(f"{url}/v1/jobs/{first['id']}", headers=h(ALICE)).json()[
                    "status"] not in ("succeeded", "failed"):
                time.sleep(0.2)
            delays = follow_delays(url, ds)
            busy = httpx.post(f"{url}/v1/jobs", headers=h(ALICE), json={
                "type": "finetune", "encoder": ENC, "dataset_id": ds, "epochs": 400,
                "mode": "full"}).json()
            ids = [httpx.post(f"{url}/v1/jobs", headers=h(ALICE), json={
                "type": "finetune", "encoder": ENC, "dataset_id": ds, "epochs": 1,
                "seed": i}).json()["id"] for i in range(200)]
            queued = httpx.get(f"{url}/v1/jobs", headers=h(ADMIN),
                               params={"status": "queued"}).json()["count"]
            auth = f"Authorization: Bearer {ALICE}\r\n"
            get_job = [encode_get(f"/v1/jobs/{i}").replace(b"\r\n\r\n", f"\r\n{auth}\r\n"
                                                           .encode(), 1) for i in ids]
            health = [encode_get("/healthz")]
            runs = {}
            for name, reqs in (("healthz", health), ("job", get_job), ("healthz2", health),
                               ("job2", get_job)):
                runs[name] = asyncio.run(run_load("127.0.0.1", server.port, reqs, 5.0, 4))
            state = httpx.get(f"{url}/v1/jobs/{busy['id']}", headers=h(ALICE)).json()["status"]
        finally:
            server.stop()
    print(f"(b) job overhead, submit -> first training step reported: {overhead:.2f} s "
          f"(target < 5 s: {'met' if overhead < 5 else 'NOT met'}); includes the claim poll, "
          "starting the runner process (Python, torch), loading data and encoder")
    print(f"(c) epoch end -> event read by the client `taskalign jobs follow` uses, "
          f"{len(delays)} epochs: median {statistics.median(delays):.2f} s, max "
          f"{max(delays):.2f} s (target < 2 s: {'met' if max(delays) < 2 else 'NOT met'})")
    print(f"(a) {queued} jobs queued, worker busy on job {busy['id']} ({state}); 4 connections,"
          f" 5 s each:")
    for name, r in runs.items():
        print(f"    {name:9s} {r['rps']:7.0f} req/s  p50 {r['p50_ms']:6.2f} ms  "
              f"p99 {r['p99_ms']:6.2f} ms  non-2xx {r['non_2xx']}")
    p99 = statistics.median([runs["job"]["p99_ms"], runs["job2"]["p99_ms"]])
    print(f"    GET /v1/jobs/{{id}} p99 {p99:.1f} ms (target < 50 ms: "
          f"{'met' if p99 < 50 else 'NOT met'})")


if __name__ == "__main__":
    main()
