"""The compose stack, built and started for real (slow; `make deploy-test`).

Skipped unless TASKALIGN_DEPLOY_TEST=1, and skipped with the reason where no Docker engine
answers. The images are built from Debian packages (docker/build-local.sh) unless
TASKALIGN_DEPLOY_BUILD=0 reuses ones already built.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "deploy-admin-token-0123456789"
IMAGE = "taskalign:local"


def engine_problem() -> str | None:
    if os.environ.get("TASKALIGN_DEPLOY_TEST") != "1":
        return "the deployment test runs with TASKALIGN_DEPLOY_TEST=1 (make deploy-test)"
    try:
        info = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"],
                              capture_output=True, text=True, timeout=30)
    except (FileNotFoundError, subprocess.TimeoutExpired) as err:
        return f"no Docker client or engine: {err}"
    if info.returncode != 0:
        return f"no Docker engine answers: {info.stderr.strip()[:300]}"
    return None


@dataclass
class Stack:
    """One compose project: its files, environment, and the API's address."""

    project: str
    env: dict[str, str]
    url: str
    files: list[str] = field(default_factory=lambda: [
        "-f", "docker-compose.yml", "-f", "docker/compose.cpu.yml"])
    timings: dict[str, float] = field(default_factory=dict)

    def compose(self, *args: str, check: bool = True, timeout: float = 600,
                **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(["docker-compose", "-p", self.project, *self.files, *args],
                              cwd=ROOT, env={**self.env, **env}, capture_output=True,
                              text=True, timeout=timeout, check=check)

    def container(self, service: str) -> str:
        return self.compose("ps", "-q", service).stdout.strip()

    def docker(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(["docker", *args], capture_output=True, text=True,
                              timeout=timeout, check=True)

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60,
                            headers={"authorization": f"Bearer {TOKEN}"})

    def wait_healthy(self, seeds: int = 1, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                ok = httpx.get(f"{self.url}/healthz", timeout=5).status_code == 200
                with self.client() as c:  # the admin sees private models too
                    listed = c.get("/v1/encoders", params={"limit": 1}).json()["count"] \
                        if ok else 0
                if ok and listed >= seeds:
                    return
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(2)
        logs = self.compose("logs", "--tail", "40", check=False).stdout
        raise AssertionError(f"the stack did not become healthy in {timeout:.0f} s:\n{logs}")


@pytest.fixture(scope="package")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    problem = engine_problem()
    if problem:
        pytest.skip(problem)
    timings: dict[str, float] = {}
    if os.environ.get("TASKALIGN_DEPLOY_BUILD", "1") != "0":
        start = time.monotonic()
        subprocess.run([str(ROOT / "docker" / "build-local.sh"), IMAGE], cwd=ROOT,
                       check=True, timeout=3600)
        timings["build"] = time.monotonic() - start
    datasets = tmp_path_factory.mktemp("datasets")
    port = free_port()
    env = {**os.environ, "TASKALIGN_ADMIN_TOKENS": TOKEN, "TASKALIGN_IMAGE": IMAGE,
           "POSTGRES_IMAGE": "local/postgres:15", "TASKALIGN_DATASETS": str(datasets),
           "TASKALIGN_PORT": str(port), "TASKALIGN_RAY_DASHBOARD_PORT": str(free_port()),
           "TASKALIGN_EXECUTOR": "local"}
    stack = Stack(project=f"taskalign-test-{os.getpid()}", env=env,
                  url=f"http://127.0.0.1:{port}", timings=timings)
    start = time.monotonic()
    try:
        stack.compose("up", "-d", "--no-build")
        stack.wait_healthy(seeds=len(list((ROOT / "zoo" / "seed").glob("*/card.json"))))
        timings["up_to_seed_zoo"] = time.monotonic() - start
        yield stack
    finally:
        stack.compose("down", "-v", "--remove-orphans", check=False)
        print(f"deployment timings (s): {timings}")
