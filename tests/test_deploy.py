"""What can be checked of the images and compose files without a Docker engine (the stack
itself is started for real by tests/deploy/test_stack.py, `make deploy-test`)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
ROLES = {"api", "worker", "ray-head"}


def compose(name: str = "docker-compose.yml") -> dict:
    return yaml.safe_load((ROOT / name).read_text())


def test_compose_services_and_wiring() -> None:
    c = compose()
    assert set(c["services"]) == {"postgres", "api", "ray-head", "worker"}
    pg = c["services"]["postgres"]
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
    for name in ("api", "ray-head", "worker"):
        svc = c["services"][name]
        assert svc["command"][0] in ROLES, name
        assert svc["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert any(v.startswith("artifacts:/data") for v in svc["volumes"])
        env = svc["environment"]
        assert env["TASKALIGN_DATABASE_URL"].startswith("postgresql+psycopg://")
        assert env["TASKALIGN_HOME"] == "/data" and env["TASKALIGN_WORKER"] == "false"
    gpu = c["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and gpu["capabilities"] == ["gpu"]
    assert set(c["volumes"]) == {"pgdata", "artifacts"}


def test_cpu_override_replaces_the_gpu_worker() -> None:
    cpu = compose("docker/compose.cpu.yml")["services"]
    assert cpu["worker"]["scale"] == 0
    assert cpu["worker-cpu"]["command"] == ["worker"]
    assert "deploy" not in cpu["worker-cpu"]


def test_dockerfiles_copy_real_files_and_declare_their_args() -> None:
    for name in ("api", "worker"):
        build = compose()["services"][name]["build"]
        text = (ROOT / build["dockerfile"]).read_text()
        declared = set(re.findall(r"^ARG (\w+)", text, re.M))
        assert "BASE_IMAGE" in declared, f"{name}: the base image is a build argument"
        assert set(build.get("args", {})) <= declared, f"{name}: undeclared build args"
        for src in re.findall(r"^COPY (?:--\S+ )?(\S+(?: \S+)*) \S+$", text, re.M):
            for part in src.split():
                assert (ROOT / part).exists(), f"{build['dockerfile']} copies missing {part}"
        assert re.search(r"^USER taskalign$", text, re.M), "runs as a non-root user"
        assert "HEALTHCHECK" in text and 'ENTRYPOINT ["taskalign-entrypoint"]' in text
    gpu = (ROOT / "docker/worker.Dockerfile").read_text()
    assert "onnxruntime-gpu" in gpu and "cuda" in gpu.lower()


def test_entrypoint_knows_every_role_the_files_use() -> None:
    text = (ROOT / "docker/entrypoint.sh").read_text()
    for role in ROLES | {"health"}:
        assert re.search(rf"^  {re.escape(role)}\)$", text, re.M), role
