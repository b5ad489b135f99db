"""Shared fixtures: real SQLite in a temp dir, real PostgreSQL when one answers, a live
uvicorn server in a child process, and an ASGI client on the same app factory."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from service.config import Settings
from service.main import create_app

POSTGRES_URL = os.environ.get("TASKALIGN_TEST_POSTGRES_URL",
                              "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_available() -> str | None:
    """Return why PostgreSQL cannot be used, or None when it answers."""
    try:
        import sqlalchemy as sa

        engine = sa.create_engine(POSTGRES_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        engine.dispose()
        return None
    except Exception as err:  # any failure to connect means: skip with the reason
        return f"no PostgreSQL at {POSTGRES_URL}: {type(err).__name__}: {err}"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "var", data_dir=None, seed_zoo=False, worker=False)


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A real, empty database of each kind; PostgreSQL gets a fresh database per test."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'db.sqlite'}"
        return
    reason = postgres_available()
    if reason:
        pytest.skip(reason)
    from tests.utils import fresh_postgres_database

    with fresh_postgres_database(POSTGRES_URL) as url:
        yield url


@pytest.fixture(scope="session")
def live_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("live")


class Server:
    """`taskalign serve` in a child process on a free port, as `make run` starts it."""

    def __init__(self, home: Path, **env: str):
        self.home, self.port = home, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full_env = {**os.environ, "TASKALIGN_HOME": str(home), "TASKALIGN_SEED_ZOO": "false",
                    "TASKALIGN_WORKER": "false", "TASKALIGN_LOG_LEVEL": "warning", **env}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--port", str(self.port)],
            env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                out = self.proc.stdout.read().decode() if self.proc.stdout else ""
                raise RuntimeError(f"server exited early:\n{out}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("server did not become healthy in 60 s")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="session")
def live_server(live_home: Path) -> Iterator[str]:
    server = Server(live_home)
    yield server.url
    server.stop()


@pytest.fixture(scope="module")
def kvasir() -> dict:
    """The first cases of each Kvasir-SEG split (real polyp images and masks), as arrays;
    modules that need another cut define their own."""
    from tests.zoo.datasets.seg_builders import KVASIR, real

    return real(KVASIR)
