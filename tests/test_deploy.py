"""No Docker engine runs here: check what can be checked of the images and compose file."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from service.cli import app

ROOT = Path(__file__).resolve().parents[1]


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_services_and_wiring() -> None:
    c = compose()
    assert set(c["services"]) == {"postgres", "api", "ray-head", "worker"}
    pg, api, worker = c["services"]["postgres"], c["services"]["api"], c["services"]["worker"]
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
    for svc in (api, worker):
        assert svc["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert any(v.startswith("artifacts:/data") for v in svc["volumes"])
        assert svc["environment"]["TASKALIGN_DATABASE_URL"].startswith("postgresql+psycopg://")
        assert svc["environment"]["TASKALIGN_HOME"] == "/data"
    gpu = worker["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and gpu["capabilities"] == ["gpu"]
    assert api["environment"]["TASKALIGN_WORKER"] == "false"  # jobs go to the GPU worker
    assert set(c["volumes"]) == {"pgdata", "artifacts"}


def test_builds_point_at_real_files_and_commands() -> None:
    commands = {c.name or c.callback.__name__ for c in app.registered_commands}
    for name in ("api", "worker"):
        build = compose()["services"][name]["build"]
        dockerfile = ROOT / build["dockerfile"]
        text = dockerfile.read_text()
        declared = set(re.findall(r"^ARG (\w+)", text, re.M))
        assert set(build.get("args", {})) <= declared, f"{name}: undeclared build args"
        for src in re.findall(r"^COPY (?:--\S+ )?(\S+(?: \S+)*) \S+$", text, re.M):
            for part in src.split():
                assert (ROOT / part).exists(), f"{dockerfile.name} copies missing {part}"
        cmd = re.search(r'^CMD \["taskalign", "(\w+)"', text, re.M)
        assert cmd and cmd.group(1) in commands
    assert "onnxruntime-gpu" in (ROOT / "docker/worker.Dockerfile").read_text()
    assert "cuda" in (ROOT / "docker/worker.Dockerfile").read_text().lower()
    assert "download.pytorch.org/whl/cpu" in (ROOT / "docker/api.Dockerfile").read_text()
