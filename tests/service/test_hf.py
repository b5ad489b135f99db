"""The real huggingface_hub client against a live zoo server, and pull into a second one."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch

from tests.conftest import Server
from tests.utils import card, medmnist, upload_files, weights

TOKEN = "hf-test-admin-token-0123456789"
NAME = "resnet18-2d.hf-pneumoniamnist"
REPO = f"taskalign/{NAME}"


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    home = tmp_path_factory.mktemp("hf-source")
    server = Server(home, TASKALIGN_ADMIN_TOKENS=TOKEN)
    c = card(NAME)
    r = httpx.post(f"{server.url}/v1/encoders", files=upload_files(c, weights(c, seed=5)),
                   headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120)
    assert r.status_code == 201, r.text
    yield {"url": server.url, "home": home, "stored": r.json()}
    server.stop()


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_hf_hub_download(source: dict[str, Any], tmp_path: Path) -> None:
    from huggingface_hub import hf_hub_download

    path = hf_hub_download(REPO, "model.safetensors", endpoint=f"{source['url']}/hf",
                           cache_dir=tmp_path)
    assert sha(Path(path)) == source["stored"]["files"]["model.safetensors"]["sha256"]
    by_commit = hf_hub_download(REPO, "config.json", revision=source["stored"]["commit"],
                                endpoint=f"{source['url']}/hf", cache_dir=tmp_path)
    assert sha(Path(by_commit)) == source["stored"]["files"]["config.json"]["sha256"]


def test_snapshot_download(source: dict[str, Any], tmp_path: Path) -> None:
    from huggingface_hub import snapshot_download

    folder = Path(snapshot_download(REPO, endpoint=f"{source['url']}/hf", cache_dir=tmp_path))
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md", "config.json", "model.onnx", "model.safetensors"]
    for name, entry in source["stored"]["files"].items():
        assert sha(folder / name) == entry["sha256"], name
    assert folder.name == source["stored"]["commit"]  # the snapshot is keyed by our commit id
    readme = (folder / "README.md").read_text()
    assert readme.startswith("---\n") and "pipeline_tag: image-feature-extraction" in readme


def test_unknown_repo_and_file(source: dict[str, Any], tmp_path: Path) -> None:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError

    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("taskalign/nope.none", "config.json", endpoint=f"{source['url']}/hf",
                        cache_dir=tmp_path)
    with pytest.raises(RepositoryNotFoundError):  # ids are owner/name: bare names are unknown
        hf_hub_download(NAME, "config.json", endpoint=f"{source['url']}/hf", cache_dir=tmp_path)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(f"alice/{NAME}", "config.json", endpoint=f"{source['url']}/hf",
                        cache_dir=tmp_path)
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(REPO, "pytorch_model.bin", endpoint=f"{source['url']}/hf",
                        cache_dir=tmp_path)


def test_load_encoder_online_then_offline(source: dict[str, Any], tmp_path: Path) -> None:
    from zoo import load_encoder

    images, _ = medmnist("pneumoniamnist", n=4)
    x = torch.from_numpy(((images.astype(np.float32) / 255 - 0.5) / 0.5)[:, None])
    online = load_encoder(NAME, endpoint=source["url"], cache_dir=tmp_path)  # taskalign/NAME
    with torch.inference_mode():
        first = online(x)
    assert first.shape == (4, 64) and online.card.name == NAME
    offline = load_encoder(NAME, endpoint="http://127.0.0.1:9", cache_dir=tmp_path,
                           local_files_only=True)  # nothing listens there: cache only
    with torch.inference_mode():
        assert torch.allclose(offline(x), first)


def test_pull_into_second_instance(source: dict[str, Any], tmp_path: Path) -> None:
    home = tmp_path / "mirror"
    env = {**os.environ, "TASKALIGN_HOME": str(home), "HF_HOME": str(tmp_path / "hf")}
    out = subprocess.run([sys.executable, "-m", "service.cli", "zoo", "pull", REPO,
                          "--endpoint", f"{source['url']}/hf"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    mirror = Server(home, TASKALIGN_ADMIN_TOKENS=TOKEN)
    try:
        listed = httpx.get(f"{mirror.url}/v1/encoders").json()
        assert [e["name"] for e in listed["data"]] == [REPO]  # `pull` registers under taskalign/
        detail = httpx.get(f"{mirror.url}/v1/encoders/{REPO}").json()
        assert detail["owner"] == "taskalign" and detail["private"] is False
        files = detail["revisions"][0]["files"]
        for name in ("model.safetensors", "model.onnx"):
            assert files[name]["sha256"] == source["stored"]["files"][name]["sha256"]
        assert detail["card"]["lineage"]["source_commit"] == source["stored"]["commit"]
    finally:
        mirror.stop()
    again = subprocess.run([sys.executable, "-m", "service.cli", "zoo", "pull", REPO,
                            "--endpoint", f"{source['url']}/hf"],
                           env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 1 and "identical" in again.stderr


def test_cli_download_and_export(source: dict[str, Any], tmp_path: Path) -> None:
    env = {**os.environ, "TASKALIGN_HOME": str(source["home"])}
    out = subprocess.run([sys.executable, "-m", "service.cli", "zoo", "download", REPO,
                          "--endpoint", source["url"], "--dest", str(tmp_path / "dl")],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for name, entry in source["stored"]["files"].items():
        assert sha(tmp_path / "dl" / REPO / name) == entry["sha256"]
    out = subprocess.run([sys.executable, "-m", "service.cli", "zoo", "export", REPO,
                          "--out", str(tmp_path / "ex")],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert sha(tmp_path / "ex" / "model.onnx") == \
        source["stored"]["files"]["model.onnx"]["sha256"]
    # wide enough for repository ids (at 80 columns rich cuts them short with an ellipsis)
    listed = subprocess.run([sys.executable, "-m", "service.cli", "zoo", "list",
                             "--endpoint", source["url"]], capture_output=True, text=True,
                            timeout=60, env={**os.environ, "COLUMNS": "160"})
    assert listed.returncode == 0 and REPO in listed.stdout, listed.stdout


def test_model_info_and_tree_match_models(source: dict[str, Any]) -> None:
    from huggingface_hub import HfApi

    from service.routers.hf import HfModelInfo, HfTreeEntry

    endpoint = f"{source['url']}/hf"
    api = HfApi(endpoint=endpoint)
    info = api.model_info(REPO)
    assert info.id == REPO and info.sha == source["stored"]["commit"]
    assert info.author == "taskalign" and info.private is False
    assert info.library_name == "taskalign" and info.pipeline_tag == "image-feature-extraction"
    stored = source["stored"]["files"]
    assert {s.rfilename: s.size for s in info.siblings or []} == {
        name: entry["size"] for name, entry in stored.items()}
    tree = list(api.list_repo_tree(REPO))
    assert {f.path: f.lfs.sha256 for f in tree if f.lfs} == {
        name: entry["sha256"] for name, entry in stored.items()}
    # The raw JSON is what our models describe, under the Hub's key names.
    raw = httpx.get(f"{endpoint}/api/models/{REPO}").json()
    assert HfModelInfo.model_validate(raw).model_dump(by_alias=True) == raw
    raw_tree = httpx.get(f"{endpoint}/api/models/{REPO}/tree/main").json()
    assert [HfTreeEntry.model_validate(e).model_dump(by_alias=True) for e in raw_tree] == raw_tree
    missing = httpx.get(f"{endpoint}/api/models/{REPO}/revision/999")
    assert missing.status_code == 404 and missing.headers["X-Error-Code"] == "RevisionNotFound"
    assert set(missing.json()) == {"error"}
