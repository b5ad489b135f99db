"""Move encoders between zoos and Hugging Face style hubs with huggingface_hub.

`pull` works against any Hub-compatible endpoint (huggingface.co, or another TaskAlign
server's /hf); every file is checked against the sha256 the source lists before anything
is registered. `push` publishes a revision's folder with create_repo + upload_folder.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .access import ORG, SYSTEM
from .cards import StoredCard, declared_part
from .registry import CONFIG, FILES, ONNX, README, WEIGHTS, Registry, prepare
from .storage import sha256_file


class TransferError(RuntimeError):
    pass


def export_folder(registry: Registry, name: str, revision: str | None, dest: Path) -> StoredCard:
    """Write a revision's four files into `dest`, as a Hugging Face model repo lays them out.
    Local use (the CLI holds the database): private repositories are readable."""
    rev = registry.revision(name, revision, SYSTEM)
    if rev is None:
        raise TransferError(f"no encoder '{name}' at revision {revision or 'latest'}")
    dest.mkdir(parents=True, exist_ok=True)
    for f in rev.files:
        target = dest / f.filename
        tmp = target.with_name(target.name + ".part")
        tmp.write_bytes(registry.store.path(f.sha256).read_bytes())
        tmp.replace(target)
    return StoredCard.model_validate(rev.card)


def remote_manifest(repo_id: str, endpoint: str | None, revision: str | None,
                    token: str | None) -> tuple[str, dict[str, tuple[str, int]]]:
    """(commit, {filename: (sha256, size)}) as the source lists them."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint, token=token)
    info = api.model_info(repo_id, revision=revision)
    files: dict[str, tuple[str, int]] = {}
    for entry in api.list_repo_tree(repo_id, revision=info.sha, recursive=True):
        lfs = getattr(entry, "lfs", None)
        if lfs is not None:
            files[entry.path] = (lfs.sha256, lfs.size)
    return info.sha, files


def pull(registry: Registry, repo_id: str, endpoint: str | None = None,
         revision: str | None = None, token: str | None = None,
         on_file: Callable[[str], None] | None = None, owner: str = ORG,
         private: bool = False) -> StoredCard:
    """Copy a Hub repository into the local zoo as `owner/<card name>`."""
    from huggingface_hub import hf_hub_download

    commit, manifest = remote_manifest(repo_id, endpoint, revision, token)
    missing = [f for f in FILES if f not in manifest]
    if missing:
        raise TransferError(f"{repo_id} lacks {missing}; not a TaskAlign encoder")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for filename in FILES:
            hf_hub_download(repo_id, filename, revision=commit, endpoint=endpoint, token=token,
                            local_dir=folder)
            expected, size = manifest[filename]
            got = sha256_file(folder / filename)
            if got != expected or (folder / filename).stat().st_size != size:
                raise TransferError(f"{filename}: sha256 {got} does not match the source's "
                                    f"{expected}; nothing was registered")
            if on_file:
                on_file(filename)
        card: dict[str, Any] = json.loads((folder / CONFIG).read_text())
        declared = declared_part(card)
        declared["lineage"] = {**declared.get("lineage", {}), "pulled_from": endpoint or "hub",
                               "repo": repo_id, "source_commit": commit}
        prepared = prepare(declared, (folder / WEIGHTS).read_bytes(),
                           onnx=(folder / ONNX).read_bytes())
        _ = (folder / README).read_text()  # present and readable; ours is regenerated
    return registry.register(prepared, family=card.get("pretext", {}).get("family"),
                             owner=owner, private=private)


def push(registry: Registry, name: str, repo_id: str, endpoint: str | None = None,
         token: str | None = None, revision: str | None = None, private: bool = False) -> str:
    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint, token=token)
    with tempfile.TemporaryDirectory() as tmp:
        card = export_folder(registry, name, revision, Path(tmp))
        api.create_repo(repo_id, exist_ok=True, private=private)
        info = api.upload_folder(folder_path=tmp, repo_id=repo_id,
                                 commit_message=f"{card.name} revision {card.revision}")
    return str(getattr(info, "oid", info))
