"""Benchmark the recommender.

(a) Engine only: latency of Engine.recommend over 10,000 random valid profiles
    (target p99 < 1 ms).
(b) HTTP: requests/s of POST /v1/recommendations against a trivial JSON echo route
    added to the same app, served by the same uvicorn process, in the same run
    (target ratio >= 0.8). Measured twice: with every profile distinct (no cache hit)
    and with a working set of 200 profiles (the response cache answers).

    .venv/bin/python bench/recommend.py [--seconds 5] [--connections 8]
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.loadgen import encode_post, run_load  # noqa: E402
from rules import TaskProfile, default_engine  # noqa: E402


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


def engine_latency(profiles: list[dict]) -> dict[str, float]:
    engine = default_engine()
    parsed = [TaskProfile.model_validate(p) for p in profiles]
    for p in parsed[:200]:  # warm-up
        engine.recommend(p)
    times = []
    for p in parsed:
        t0 = time.perf_counter()
        engine.recommend(p)
        times.append(time.perf_counter() - t0)
    times.sort()
    return {"n": len(times), "p50_ms": times[len(times) // 2] * 1e3,
            "p99_ms": times[int(len(times) * 0.99)] * 1e3, "max_ms": times[-1] * 1e3}


def start_server(port: int, home: Path) -> subprocess.Popen:
    env = {**os.environ, "TASKALIGN_HOME": str(home)}
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--port", type=int, default=8731)
    args = ap.parse_args()

    profiles = random_profiles(10_000)
    lat = engine_latency(profiles)
    print(f"engine only, {lat['n']} profiles: p50 {lat['p50_ms']:.3f} ms, "
          f"p99 {lat['p99_ms']:.3f} ms, max {lat['max_ms']:.3f} ms "
          f"(target p99 < 1 ms: {'met' if lat['p99_ms'] < 1 else 'NOT met'})")

    import tempfile

    with tempfile.TemporaryDirectory() as home:
        proc = start_server(args.port, Path(home))
        try:
            distinct = [encode_post("/v1/recommendations", json.dumps(p).encode())
                        for p in random_profiles(60_000, seed=1)]
            working_set = [encode_post("/v1/recommendations", json.dumps(p).encode())
                           for p in random_profiles(200, seed=2)]
            echo_bodies = [encode_post("/bench/echo", json.dumps(p).encode())
                           for p in random_profiles(200, seed=2)]

            def run(reqs: list[bytes]) -> dict[str, float]:
                return asyncio.run(run_load("127.0.0.1", args.port, reqs, args.seconds,
                                            args.connections))

            run(echo_bodies[:50])  # warm-up
            echo = run(echo_bodies)
            cold = run(distinct)
            warm = run(working_set)
            echo_again = run(echo_bodies)
        finally:
            proc.terminate()
            proc.wait(timeout=10)

    echo_rps = (echo["rps"] + echo_again["rps"]) / 2
    print(f"machine: {platform.machine()}, {os.cpu_count()} cpus, python "
          f"{platform.python_version()}; {args.connections} connections, {args.seconds:g} s each")
    for name, r in (("echo", echo), ("echo (repeat)", echo_again),
                    ("recommend, distinct profiles", cold),
                    ("recommend, 200-profile working set", warm)):
        print(f"  {name:36s} {r['rps']:8.0f} req/s  p50 {r['p50_ms']:6.2f} ms  "
              f"p99 {r['p99_ms']:6.2f} ms  non-2xx {r['non_2xx']}")
    for name, r in (("distinct", cold), ("working set", warm)):
        ratio = r["rps"] / echo_rps
        print(f"ratio recommend/echo ({name}): {ratio:.2f} "
              f"(target >= 0.8: {'met' if ratio >= 0.8 else 'NOT met'})")


if __name__ == "__main__":
    main()
