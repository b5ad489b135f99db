"""Benchmark the recommender.

(a) Engine only: latency of Engine.evaluate over 10,000 random valid profiles
    (target p99 < 1 ms), with and without the per-signature memo.
(b) HTTP: requests/s of POST /v1/recommendations against a trivial JSON echo route
    added to the same app, served by the same uvicorn process, in the same run. Both go
    through FastAPI: there is one request path per route. Target: distinct profiles at
    steady state at least 0.6x the echo route. Every request body is distinct: first on a
    fresh server (the engine's per-signature memo starts empty and fills), then a working
    set of 200 repeated profiles, then --warmup seconds (unmeasured) of the rest of the
    first 60,000 profiles, then a second set of distinct profiles never sent before
    (steady state: new bodies, rule signatures mostly seen); and, on a second server over
    the same state with TASKALIGN_RECOMMEND_MEMO_MB=0, distinct profiles with no memo at
    all: every answer computed from scratch.
    Measuring starts only once the seed zoo has finished registering in the background
    (its ONNX exports would otherwise share the two cores with the server).

    .venv/bin/python bench/recommend.py [--seconds 5] [--connections 8] [--warmup 30]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.loadgen import encode_post, run_load  # noqa: E402
from rules import Engine, TaskProfile, default_engine  # noqa: E402
from rules.engine import MEMO_BYTES  # noqa: E402

# Ratio to the echo route that each HTTP measurement must reach (issue 9).
TARGETS = {"recommend, new distinct profiles, steady": 0.6}


def bench_app():  # noqa: ANN201 - uvicorn factory
    """The service app plus an echo route, so both are measured under identical conditions."""
    from fastapi import Body

    from service.main import create_app

    app = create_app()

    @app.post("/bench/echo")
    async def echo(body: dict = Body(...)) -> dict:  # noqa: B008
        return body

    return app


def random_profiles(n: int, seed: int = 0) -> list[dict]:
    vocab = default_engine().kb.vocabulary.raw
    rnd = random.Random(seed)
    out = []
    for _ in range(n):
        modality = rnd.choice(list(vocab["modalities"]))
        spec = vocab["modalities"][modality]
        profile: dict = {
            "task": rnd.choice(list(vocab["tasks"])),
            "modality": modality,
            "dimensionality": rnd.choice(spec["dims"]),
            "labeled": rnd.randint(0, 20_000),
            "unlabeled": rnd.randint(0, 200_000),
            "classes": rnd.randint(2, 12),
        }
        props = {}
        if rnd.random() < 0.5:
            props["lesion_scale"] = rnd.choice(["small_focal", "large", "diffuse"])
        if rnd.random() < 0.3:
            props["patient_ids"] = True
        if rnd.random() < 0.2:
            props["gpu_memory_gb"] = rnd.choice([8, 24, 80])
        if rnd.random() < 0.2:
            props["signal_organization"] = rnd.choice(["localized", "global"])
        if props:
            profile["properties"] = props
        out.append(profile)
    return out


def engine_latency(profiles: list[dict], memo_bytes: int) -> dict[str, float]:
    """Engine.evaluate (what the API calls) on a fresh engine: memo empty at the start."""
    kb = default_engine().kb
    parsed = [TaskProfile.model_validate(p) for p in profiles]
    warm = Engine(kb, memo_bytes=memo_bytes)
    for p in random_profiles(200, seed=99):  # warm-up of the interpreter, other profiles
        warm.evaluate(TaskProfile.model_validate(p))
    engine = Engine(kb, memo_bytes=memo_bytes)
    times = []
    for p in parsed:
        t0 = time.perf_counter()
        engine.evaluate(p)
        times.append(time.perf_counter() - t0)
    times.sort()
    return {"n": len(times), "p50_ms": times[len(times) // 2] * 1e3,
            "p99_ms": times[int(len(times) * 0.99)] * 1e3, "max_ms": times[-1] * 1e3,
            "memo_entries": len(engine.memo)}


def start_server(port: int, home: Path, **env_extra: str) -> subprocess.Popen:
    env = {**os.environ, "TASKALIGN_HOME": str(home), **env_extra}
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "bench.recommend:bench_app", "--factory",
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
         "--no-access-log"],
        env=env, cwd=Path(__file__).resolve().parents[1],
    )
    for _ in range(300):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not start")


def wait_for_seed_zoo(port: int, timeout: float = 600) -> int:
    """Block until every shipped seed encoder is listed (background registration done)."""
    expected = sum(1 for p in (ROOT / "zoo" / "seed").iterdir() if (p / "card.json").exists())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        count = httpx.get(f"http://127.0.0.1:{port}/v1/encoders", timeout=5,
                          params={"owner": "taskalign"}).json()["count"]  # the seed zoo's
        if count >= expected:
            return count
        time.sleep(1)
    raise RuntimeError(f"seed zoo not registered after {timeout:.0f} s")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--warmup", type=float, default=30.0,
                    help="Seconds of unmeasured distinct profiles before the steady phase.")
    ap.add_argument("--port", type=int, default=8731)
    args = ap.parse_args()

    profiles = random_profiles(10_000)
    for label, memo in (("no memo", 0), ("memo, empty at start", MEMO_BYTES)):
        lat = engine_latency(profiles, memo)
        print(f"engine only ({label}), {lat['n']} profiles: p50 {lat['p50_ms']:.3f} ms, "
              f"p99 {lat['p99_ms']:.3f} ms, max {lat['max_ms']:.3f} ms, "
              f"{lat['memo_entries']} signatures memoised "
              f"(target p99 < 1 ms: {'met' if lat['p99_ms'] < 1 else 'NOT met'})")

    import tempfile

    distinct = [encode_post("/v1/recommendations", json.dumps(p).encode())
                for p in random_profiles(60_000, seed=1)]
    distinct_later = [encode_post("/v1/recommendations", json.dumps(p).encode())
                      for p in random_profiles(60_000, seed=3)]
    working_set = [encode_post("/v1/recommendations", json.dumps(p).encode())
                   for p in random_profiles(200, seed=2)]
    echo_bodies = [encode_post("/bench/echo", json.dumps(p).encode())
                   for p in random_profiles(200, seed=2)]

    def run(reqs: list[bytes], seconds: float | None = None) -> dict[str, float]:
        return asyncio.run(run_load("127.0.0.1", args.port, reqs, seconds or args.seconds,
                                    args.connections))

    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as home:
        for memo_mb in (str(MEMO_BYTES // 2**20), "0"):
            proc = start_server(args.port, Path(home), TASKALIGN_RECOMMEND_MEMO_MB=memo_mb)
            try:
                encoders = wait_for_seed_zoo(args.port)
                run(echo_bodies[:50])  # warm-up
                tag = "" if memo_mb != "0" else ", no memo"
                results[f"echo{tag}"] = run(echo_bodies)
                results[f"recommend, distinct profiles{tag}"] = run(distinct)
                if memo_mb != "0":
                    results["recommend, 200-profile working set"] = run(working_set)
                    # Not measured: the rest of the first 60,000 profiles, so that the memo
                    # holds the signatures a long-running server has seen (steady state).
                    warm = run(distinct, args.warmup)
                    print(f"  warm-up: {warm['requests']} more distinct profiles sent")
                    results["recommend, new distinct profiles, steady"] = run(distinct_later)
                results[f"echo (repeat){tag}"] = run(echo_bodies)
            finally:
                proc.terminate()
                proc.wait(timeout=10)

    print(f"machine: {platform.machine()}, {os.cpu_count()} cpus, python "
          f"{platform.python_version()}; {args.connections} connections, {args.seconds:g} s "
          f"each; {encoders} zoo encoders registered")
    for name, r in results.items():
        print(f"  {name:44s} {r['rps']:8.0f} req/s  p50 {r['p50_ms']:6.2f} ms  "
              f"p99 {r['p99_ms']:6.2f} ms  non-2xx {r['non_2xx']}")
    for tag in ("", ", no memo"):
        echo_rps = (results[f"echo{tag}"]["rps"] + results[f"echo (repeat){tag}"]["rps"]) / 2
        names = ["recommend, distinct profiles"]
        if not tag:
            names += ["recommend, new distinct profiles, steady",
                      "recommend, 200-profile working set"]
        for name in names:
            ratio = results[name + tag]["rps"] / echo_rps
            target = TARGETS.get(name + tag)
            verdict = (f"target >= {target}: {'met' if ratio >= target else 'NOT met'}"
                       if target else "no target")
            print(f"ratio {name + tag} / echo: {ratio:.2f} ({verdict})")


if __name__ == "__main__":
    main()
