"""The read side of the Hugging Face Hub protocol, so that `hf_hub_download` and
`snapshot_download(endpoint=<server>/hf)` work against the zoo unchanged.

Repository ids are `taskalign/<encoder name>` (or the bare name); revisions are `main`,
a revision number, or the revision's 40-hex commit id.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from ..deps import ZooDep
from ..files import blob_response

router = APIRouter(prefix="/hf", tags=["huggingface"])
ORG = "taskalign"


def _error(code: str, message: str) -> JSONResponse:
    # huggingface_hub maps X-Error-Code to RepositoryNotFoundError, EntryNotFoundError...
    return JSONResponse(status_code=404, content={"error": message},
                        headers={"X-Error-Code": code, "X-Error-Message": message})


def _name(repo_id: str) -> str | None:
    org, _, name = repo_id.rpartition("/")
    if org not in ("", ORG) or "/" in org:
        return None
    return name


def _lookup(zoo: ZooDep, repo_id: str, revision: str | None) -> tuple[Any, JSONResponse | None]:
    name = _name(repo_id)
    if name is None or zoo.registry.get(name) is None:
        return None, _error("RepoNotFound", f"repository '{repo_id}' not found; ids are "
                                            f"'{ORG}/<encoder name>'")
    rev = zoo.registry.revision(name, revision)
    if rev is None:
        return None, _error("RevisionNotFound", f"revision '{revision}' not found in "
                                                f"'{repo_id}'")
    return rev, None


def _hub_time(value: datetime) -> str:
    """The Hub's timestamp format; ours are stored in UTC (SQLite hands them back naive)."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _info(repo_id: str, rev: Any) -> dict[str, Any]:
    card = rev.card
    return {
        "_id": rev.commit[:24], "id": repo_id, "modelId": repo_id, "author": ORG,
        "sha": rev.commit, "lastModified": _hub_time(rev.created_at),
        "createdAt": _hub_time(rev.created_at), "private": False, "disabled": False,
        "gated": False, "downloads": 0, "likes": 0, "library_name": "taskalign",
        "pipeline_tag": "image-feature-extraction",
        "tags": ["medical-imaging", card.get("modality", ""),
                 card.get("pretext", {}).get("method_id", "")],
        "siblings": [{"rfilename": f.filename, "size": f.size} for f in rev.files],
        "cardData": {"license": card.get("weights_licence", "").lower()},
    }


@router.get("/api/models/{repo_id:path}/revision/{revision}")
def model_info_at(repo_id: str, revision: str, zoo: ZooDep) -> Response:
    """Model info at a revision (HfApi.model_info / repo_info)."""
    rev, err = _lookup(zoo, repo_id, revision)
    return err or JSONResponse(_info(repo_id, rev))


@router.get("/api/models/{repo_id:path}/tree/{revision}")
def model_tree(repo_id: str, revision: str, zoo: ZooDep) -> Response:
    """Files of a revision (HfApi.list_repo_tree, used by snapshot_download)."""
    rev, err = _lookup(zoo, repo_id, revision)
    if err:
        return err
    return JSONResponse([
        {"type": "file", "path": f.filename, "size": f.size,
         "oid": hashlib.sha1(f.sha256.encode()).hexdigest(),
         "lfs": {"oid": f.sha256, "size": f.size, "pointerSize": 134}}
        for f in rev.files
    ])


@router.get("/api/models/{repo_id:path}")
def model_info(repo_id: str, zoo: ZooDep) -> Response:
    """Model info at the latest revision."""
    rev, err = _lookup(zoo, repo_id, None)
    return err or JSONResponse(_info(repo_id, rev))


@router.api_route("/{repo_id:path}/resolve/{revision}/{filename}", methods=["GET", "HEAD"])
def resolve(repo_id: str, revision: str, filename: str, request: Request,
            zoo: ZooDep) -> Response:
    """A file download as hf_hub_download expects it (commit and ETag headers, Range)."""
    rev, err = _lookup(zoo, repo_id, revision)
    if err:
        return err
    entry = next((f for f in rev.files if f.filename == filename), None)
    if entry is None:
        return _error("EntryNotFound", f"'{filename}' not in '{repo_id}' at {revision}")
    return blob_response(request, zoo.store.path(entry.sha256), entry.sha256, filename,
                         {"X-Repo-Commit": rev.commit, "X-Linked-Etag": f'"{entry.sha256}"',
                          "X-Linked-Size": str(entry.size)})
