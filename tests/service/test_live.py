"""The real thing: `taskalign serve` under uvicorn, and the CLI, against the same engine."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
from sqlalchemy import create_engine

from service.config import Settings
from service.db import ping


def test_live_server_answers(live_server: str) -> None:
    assert httpx.get(f"{live_server}/healthz").json()["status"] == "ok"
    r = httpx.post(f"{live_server}/v1/recommendations",
                   json={"task": "classification", "modality": "wsi", "label_regime": "low"})
    assert r.status_code == 200
    assert r.json()["recommendations"][0]["family"] == "contrastive_global"


def test_cli_json_equals_api_json(live_server: str, live_home) -> None:  # noqa: ANN001
    import os

    args = ["--task", "segmentation", "--modality", "ct", "--labeled", "40",
            "--unlabeled", "2000"]
    out = subprocess.run([sys.executable, "-m", "service.cli", "recommend", *args, "--json"],
                         capture_output=True, text=True, check=True,
                         env={**os.environ, "TASKALIGN_HOME": str(live_home)}).stdout
    api = httpx.post(f"{live_server}/v1/recommendations",
                     json={"task": "segmentation", "modality": "ct", "labeled": 40,
                           "unlabeled": 2000}).json()
    assert json.loads(out) == api
    assert "recommendations" in api


def test_cli_table_and_errors() -> None:
    ok = subprocess.run([sys.executable, "-m", "service.cli", "recommend", "--task",
                         "classification", "--modality", "xray", "--label-regime", "low"],
                        capture_output=True, text=True)
    assert ok.returncode == 0 and "MoCo v2" in ok.stdout and "rotation" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "service.cli", "recommend", "--task",
                          "clasification", "--modality", "xray", "--label-regime", "low"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "did you mean 'classification'" in bad.stderr


def test_database_reachable(database_url: str, tmp_path) -> None:  # noqa: ANN001
    settings = Settings(home=tmp_path, database_url=database_url)
    engine = create_engine(settings.resolved_database_url())
    ping(engine)
    engine.dispose()


def test_default_database_is_sqlite_under_home(tmp_path) -> None:  # noqa: ANN001
    settings = Settings(home=tmp_path / "state")
    assert settings.resolved_database_url().startswith("sqlite:///")
    assert str(tmp_path / "state") in settings.resolved_database_url()


def test_bad_rule_file_stops_startup(tmp_path) -> None:  # noqa: ANN001
    import os
    import shutil

    import yaml

    from rules.vocabulary import PACKAGE_DIR

    root = tmp_path / "rules"
    shutil.copytree(PACKAGE_DIR, root, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    path = root / "tables" / "transfer.yaml"
    doc = yaml.safe_load(path.read_text())
    rule = next(r for r in doc["rules"] if r["id"] == "tr.orientation.no_rotation_invariance")
    rule["when"]["op"] = "equals"
    path.write_text(yaml.safe_dump(doc))
    env = {**os.environ, "TASKALIGN_RULES_DIR": str(root), "TASKALIGN_HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "service.cli", "serve", "--port", "1"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "tables/transfer.yaml: tr.orientation.no_rotation_invariance" in proc.stderr
    assert "unknown op 'equals'" in proc.stderr


def test_startup_creates_sqlite_under_home(live_server: str, live_home) -> None:  # noqa: ANN001
    assert (live_home / "taskalign.db").exists()


def test_eval_cli_reports_the_baseline() -> None:
    out = subprocess.run([sys.executable, "-m", "service.cli", "eval", "--dataset",
                          "breastmnist", "--fractions", "0.1,1", "--seeds", "0,1",
                          "--protocols", "linear_probe,knn", "--json"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)["data"]
    protocols = {(r["protocol"], r["label_fraction"], r["metric"]) for r in rows}
    assert ("random_init_linear_probe", 0.1, "AUC") in protocols
    assert ("random_init_knn", 1.0, "ACC") in protocols
    auc = next(r for r in rows if r["protocol"] == "random_init_linear_probe"
               and r["label_fraction"] == 1.0 and r["metric"] == "AUC")
    assert 0.5 < auc["value"] <= 1.0 and auc["seeds"] == [0, 1]
    bad = subprocess.run([sys.executable, "-m", "service.cli", "eval", "--dataset", "nope"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "unknown dataset" in bad.stderr


def test_an_idle_connection_outlives_uvicorns_default_keep_alive(live_server: str) -> None:
    """Hub clients reuse a connection between downloads; with uvicorn's 5 s default a
    client busy for a few seconds sent on a socket the server was closing ("Server
    disconnected without sending a response"). `taskalign serve` keeps idle ones 75 s."""
    import http.client
    import time
    from urllib.parse import urlparse

    url = urlparse(live_server)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    try:
        conn.request("GET", "/healthz")
        first = conn.getresponse()
        assert first.status == 200 and first.read()
        socket_before = conn.sock
        time.sleep(6)  # longer than uvicorn's default keep-alive
        conn.request("GET", "/healthz")  # on the same socket: it must still be open
        assert conn.sock is socket_before
        second = conn.getresponse()
        assert second.status == 200 and second.read()
    finally:
        conn.close()
