"""The `taskalign` client commands against a live server with a worker: where the server
is found (TASKALIGN_URL, or TASKALIGN_HOST/PORT as `serve` uses them), datasets uploaded and
registered from real MedMNIST files, a fine-tuning job submitted and followed over its
event stream to the end, cancel and logs, the server's refusals printed, and the
recommendation readable at 80 columns."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner, Result

from rules import TaskProfile, default_engine
from service.cli import app
from service.config import get_settings
from tests.conftest import Server, free_port
from tests.utils import DATA_DIR, card, repo, upload_files, user_dataset, weights

ALICE, BOB, ADMIN = "alice-token-0123456789", "bob-token-0123456789", "admin-token-0123456789"
ENC_NAME = "resnet10-2d.cli-breast"
ENC = repo(ENC_NAME)
BREAST = DATA_DIR / "medmnist" / "breastmnist.npz"
runner = CliRunner()


def at_width(columns: int) -> None:
    """Every CLI console at this terminal width. Rich fixes a console's width when it is
    created if COLUMNS is set then, so in this process (other tests import the CLI too)
    the width is set on the consoles, as a terminal of that size would give it."""
    import sys

    from rich.console import Console

    for name, module in list(sys.modules.items()):
        if name == "service.cli" or name.startswith("service.cli_"):
            for value in vars(module).values():
                if isinstance(value, Console):
                    value.width = columns


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    if not BREAST.exists():
        pytest.skip(f"real data not found at {BREAST} (see shared/data/README.md)")
    s = Server(tmp_path_factory.mktemp("cli"), TASKALIGN_WORKER="true",
               TASKALIGN_API_TOKENS=f"alice={ALICE},bob={BOB}", TASKALIGN_ADMIN_TOKENS=ADMIN,
               TASKALIGN_DATA_DIR=str(DATA_DIR))
    try:
        # The smallest 2D encoder: its ONNX export (at upload and after fine-tuning) is most
        # of this file's time.
        c = {**card(ENC_NAME, arch={"name": "resnet10", "args": {"widths": [8, 8, 16, 16]}}),
             "modality": "ultrasound"}
        r = httpx.post(f"{s.url}/v1/encoders", files=upload_files(c, weights(c)),
                       headers={"Authorization": f"Bearer {ADMIN}"}, timeout=300)
        assert r.status_code == 201, r.text
        yield s
    finally:
        s.stop()


def cli(*args: str, url: str | None, token: str | None = ALICE,
        **env: str | None) -> Result:
    """Run `taskalign ARGS` in this process, with only the given client settings."""
    full = {"TASKALIGN_URL": url, "TASKALIGN_TOKEN": token, "TASKALIGN_ZOO_URL": None,
            "TASKALIGN_HOST": None, "TASKALIGN_PORT": None, "COLUMNS": "160", **env}
    at_width(160)
    return runner.invoke(app, list(args), env=full, catch_exceptions=False)


def test_server_found_from_url_or_serve_settings(server: Server) -> None:
    # No URL at all: the host and port `taskalign serve` would listen on.
    found = cli("zoo", "list", url=None, TASKALIGN_PORT=str(server.port),
                TASKALIGN_HOST="0.0.0.0")
    assert found.exit_code == 0, found.output
    assert ENC in found.stdout and "1 encoders" in found.stdout
    # The same search vocabulary as the API: an alias and an anatomy-free miss.
    assert ENC in cli("zoo", "list", "--modality", "us", url=server.url).stdout
    assert "0 encoders" in cli("zoo", "list", "--q", "chest", url=server.url).stdout
    # The deprecated zoo variable still works, with a note; TASKALIGN_URL wins over it.
    old = cli("zoo", "show", ENC, url=None, TASKALIGN_ZOO_URL=server.url,
              TASKALIGN_PORT=str(free_port()))
    assert old.exit_code == 0 and "simclr" in old.stdout and "deprecated" in old.stderr
    dead = f"http://127.0.0.1:{free_port()}"
    assert cli("zoo", "list", url=server.url, TASKALIGN_ZOO_URL=dead).exit_code == 0
    for args in (("zoo", "list"), ("datasets", "list"), ("jobs", "list")):
        gone = cli(*args, url=dead)
        assert gone.exit_code == 1 and "cannot reach the server" in gone.stderr
        assert dead in gone.stderr and "Traceback" not in gone.output


def test_refusals_are_printed_with_the_servers_reason(server: Server) -> None:
    anonymous = cli("datasets", "list", url=server.url, token=None)
    assert anonymous.exit_code == 1 and "401" in anonymous.stderr
    assert "--token" in anonymous.stderr
    unknown = cli("zoo", "list", "--modality", "xrya", url=server.url)
    assert unknown.exit_code == 1 and "422" in unknown.stderr
    assert "did you mean 'xray'" in unknown.stderr
    missing = cli("jobs", "show", "999999", url=server.url)
    assert missing.exit_code == 1 and "404" in missing.stderr and "no job 999999" in missing.stderr


def dataset_id(result: Result) -> int:
    assert result.exit_code == 0, result.output
    return int(result.stdout.strip())


def test_datasets_add_list_show(server: Server) -> None:
    uploaded = dataset_id(cli("datasets", "add", str(BREAST), "--name", "breast-upload",
                              "--modality", "us", url=server.url))
    path = user_dataset(server.home, "alice", BREAST)
    registered = dataset_id(cli("datasets", "add", "--path", str(path), "--name",
                                "breast-path", "--modality", "ultrasound", url=server.url))
    assert registered != uploaded
    listed = cli("datasets", "list", url=server.url)
    assert listed.exit_code == 0, listed.output
    assert "breast-upload" in listed.stdout and "breast-path" in listed.stdout
    assert "546/78/156" in listed.stdout and "ultrasound" in listed.stdout
    # Bob sees none of Alice's datasets.
    assert "0 datasets" in cli("datasets", "list", url=server.url, token=BOB).stdout
    shown = cli("datasets", "show", str(uploaded), url=server.url)
    assert shown.exit_code == 0, shown.output
    with np.load(BREAST) as data:
        counts = {s: np.bincount(data[f"{s}_labels"].ravel())
                  for s in ("train", "val", "test")}
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
            for line in shown.stdout.splitlines() if line.startswith("│")}
    for k in (0, 1):
        assert rows[str(k)] == [str(counts[s][k]) for s in ("train", "val", "test")]
    assert rows["all"] == ["546", "78", "156"]
    again = cli("datasets", "add", str(BREAST), "--name", "breast-upload", url=server.url)
    assert again.exit_code == 1 and "409" in again.stderr


def test_jobs_submit_follow_list_show_logs_cancel(server: Server) -> None:
    url = server.url
    ds = dataset_id(cli("datasets", "add", str(BREAST), "--name", "breast-jobs",
                        "--modality", "ultrasound", url=url))
    bad = cli("jobs", "submit", "--type", "finetune", "--dataset-id", str(ds), "--encoder",
              "taskalign/resnet18-2d.nope", url=url)
    assert bad.exit_code == 1 and "unknown encoder" in bad.stderr
    submitted = cli("jobs", "submit", "--type", "finetune", "--dataset-id", str(ds),
                    "--encoder", ENC, "--mode", "linear_probe", "--epochs", "1",
                    "--label-fraction", "0.1", url=url)
    assert submitted.exit_code == 0, submitted.output
    job_id = int(submitted.stdout.strip())
    followed = cli("jobs", "follow", str(job_id), url=url)
    assert followed.exit_code == 0, followed.output
    assert f"job {job_id} succeeded" in followed.stdout
    assert "epoch 1/1" in followed.stdout and "test_auc=" in followed.stdout
    assert "test AUC" in followed.stdout  # the runner's log lines, as they came
    final = httpx.get(f"{url}/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {ALICE}"})
    result = final.json()["result"]
    assert result["encoder"] in followed.stdout

    listed = cli("jobs", "list", url=url)
    assert re.search(rf"^\s*{job_id}\s+finetune\s+succeeded\s", listed.stdout, re.M), \
        listed.stdout
    shown = cli("jobs", "show", str(job_id), url=url)
    assert shown.exit_code == 0 and "succeeded" in shown.stdout
    assert "mode=linear_probe" in shown.stdout and "epochs=1" in shown.stdout
    assert "lr=" in shown.stdout and "auto from" in shown.stdout  # lr was left to the rules
    as_json = json.loads(cli("jobs", "show", str(job_id), "--json", url=url).stdout)
    assert as_json["params"]["label_fraction"] == 0.1 and as_json["status"] == "succeeded"
    logs = cli("jobs", "logs", str(job_id), url=url)
    assert logs.exit_code == 0 and "test AUC" in logs.stdout
    assert cli("jobs", "show", str(job_id), url=url, token=BOB).exit_code == 1

    long = cli("jobs", "submit", "--type", "finetune", "--dataset-id", str(ds), "--encoder",
               ENC, "--mode", "full", "--epochs", "400", url=url)
    long_id = int(long.stdout.strip())
    cancelled = cli("jobs", "cancel", str(long_id), url=url)
    assert cancelled.exit_code == 0 and f"job {long_id}" in cancelled.stdout
    ended = cli("jobs", "follow", str(long_id), "--quiet", url=url)
    assert ended.exit_code == 1, ended.output
    assert f"job {long_id} cancelled" in ended.stdout
    twice = cli("jobs", "cancel", str(long_id), url=url)
    assert twice.exit_code == 1 and "409" in twice.stderr


def recommend_output(home: Path, *args: str) -> str:
    """`taskalign recommend` at 80 columns over the zoo in `home` (the CLI reads the local
    zoo through the cached settings, so the cache is cleared around the call)."""
    get_settings.cache_clear()
    at_width(80)
    try:
        done = runner.invoke(app, ["recommend", *args], catch_exceptions=False,
                             env={"TASKALIGN_HOME": str(home), "COLUMNS": "80"})
    finally:
        get_settings.cache_clear()
    assert done.exit_code == 0, done.output
    return done.stdout


def test_recommend_says_which_methods_are_literature_only(server: Server) -> None:
    out = recommend_output(server.home, "--task", "segmentation", "--modality", "mri",
                           "--anatomy", "brain", "--dimensionality", "3d", "--label-regime",
                           "low", "--top-k", "60")
    rows = {cells[1]: cells[-1] for line in out.splitlines() if line.startswith("│")
            for cells in [[c.strip() for c in line.split("│")[1:-1]]]}
    assert rows["geodesic_distance"] == "literature only"
    assert "literature only: It needs serial sections" in " ".join(out.split())


def test_recommend_reads_at_80_columns(server: Server) -> None:
    from zoo.training.pretext.registry import OBJECTIVES

    args = ("--task", "classification", "--modality", "ultrasound", "--labeled", "40",
            "--unlabeled", "500")
    out = recommend_output(server.home, *args)
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 80, out
    rec = default_engine().recommend(TaskProfile(task="classification", modality="ultrasound",
                                                 labeled=40, unlabeled=500))
    rows = {cells[1]: cells for line in lines if line.startswith("│")
            for cells in [[c.strip() for c in line.split("│")[1:-1]]]}
    assert list(rows) == [r.id for r in rec.recommendations]  # every id whole, in order
    for r in rec.recommendations:
        expected = ("runnable here" if r.id in OBJECTIVES
                    else "literature only" if r.literature_only else "not yet")
        assert rows[r.id][-1] == expected, (r.id, rows[r.id])
    assert "runnable here" in {cells[-1] for cells in rows.values()}
    # The public encoder pretrained with simclr is named under simclr's details; the
    # fine-tuned one is Alice's (private) and is not listed.
    assert "simclr" in rows, "simclr should be recommended for ultrasound classification"
    block = out[out.index(f"{rows['simclr'][0]}. simclr:"):].splitlines()
    zoo_line = next(line for line in block if line.strip().startswith("zoo:"))
    assert ENC in zoo_line
    assert "alice/" not in out
