"""The read side of the Hugging Face Hub protocol, so that `hf_hub_download` and
`snapshot_download(endpoint=<server>/hf)` work against the zoo unchanged.

Repository ids are `owner/name`, the zoo's own (seed encoders under `taskalign/`);
revisions are `main`, a revision number, or the revision's 40-hex commit id. A private
repository answers only its owner's (or an admin's) token, and to anyone else exactly like
an unknown one.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import BaseModel, ConfigDict, Field

from zoo.access import ANONYMOUS, ORG, Principal, Reader
from zoo.catalog import RevisionRow

from ..auth import User, bearer, find_user
from ..deps import ZooDep
from ..files import blob_response

router = APIRouter(prefix="/hf", tags=["huggingface"])


async def hub_reader(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> User | Principal:
    """The caller, by token. huggingface_hub sends whatever token its machine is logged in
    with (often a huggingface.co one) to every endpoint; an unknown token therefore reads
    as anonymous here, which sees public repositories only, rather than as an error."""
    token = credentials.credentials if credentials else ""
    return (find_user(request, token) if token else None) or ANONYMOUS


HubReader = Annotated[User | Principal, Depends(hub_reader)]


class HfModel(BaseModel):
    # Field names are ours; the JSON uses the Hub's keys (aliases).
    model_config = ConfigDict(validate_by_name=True, validate_by_alias=True)


class HfError(HfModel):
    error: str


class HfSibling(HfModel):
    rfilename: str
    size: int


class HfCardData(HfModel):
    license: str


class HfModelInfo(HfModel):
    """What HfApi.model_info parses; the constants are what a public Hub model reports."""

    object_id: str = Field(alias="_id")
    id: str
    model_id: str = Field(alias="modelId")
    author: str = ORG
    sha: str
    last_modified: str = Field(alias="lastModified")
    created_at: str = Field(alias="createdAt")
    private: bool = False
    disabled: bool = False
    gated: bool = False
    downloads: int = 0
    likes: int = 0
    library_name: str = "taskalign"
    pipeline_tag: str = "image-feature-extraction"
    tags: list[str]
    siblings: list[HfSibling]
    card_data: HfCardData = Field(alias="cardData")


class HfLfs(HfModel):
    oid: str = Field(description="sha256 of the file.")
    size: int
    pointer_size: int = Field(134, alias="pointerSize")


class HfTreeEntry(HfModel):
    """One entry of HfApi.list_repo_tree."""

    type: Literal["file"] = "file"
    path: str
    size: int
    oid: str = Field(description="Git blob id (here: sha1 of the sha256).")
    lfs: HfLfs


NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": HfError, "description": "Not found; X-Error-Code says what (RepoNotFound, "
                                           "RevisionNotFound, EntryNotFound)"}}


def hub_error(code: str, message: str) -> JSONResponse:
    """A 404 as the Hub answers it; also used for /hf URLs that match no route."""
    # huggingface_hub maps X-Error-Code to RepositoryNotFoundError, EntryNotFoundError...
    # Header values must be printable ASCII: a name from the URL is escaped there (control
    # characters and non-ASCII letters alike) and kept as it is in the body.
    header = "".join(c if " " <= c <= "~" else c.encode("unicode_escape").decode("ascii")
                     for c in message)
    return JSONResponse(status_code=404, content=HfError(error=message).model_dump(),
                        headers={"X-Error-Code": code, "X-Error-Message": header})


def _lookup(zoo: ZooDep, repo_id: str, revision: str | None,
            reader: Reader) -> RevisionRow | JSONResponse:
    """The revision, or the Hub-style 404 to return."""
    if zoo.registry.get(repo_id, reader) is None:
        return hub_error("RepoNotFound", f"repository '{repo_id}' not found; ids are "
                                      f"'owner/name' (seed encoders: '{ORG}/<name>')")
    rev = zoo.registry.revision(repo_id, revision, reader)
    if rev is None:
        return hub_error("RevisionNotFound", f"revision '{revision}' not found in '{repo_id}'")
    return rev


def _hub_time(value: datetime) -> str:
    """The Hub's timestamp format; ours are stored in UTC (SQLite hands them back naive)."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _info(repo_id: str, rev: RevisionRow) -> HfModelInfo:
    card = rev.card
    return HfModelInfo(
        object_id=rev.commit[:24], id=repo_id, model_id=repo_id, sha=rev.commit,
        author=rev.encoder.owner, private=rev.encoder.private,
        last_modified=_hub_time(rev.created_at), created_at=_hub_time(rev.created_at),
        tags=["medical-imaging", card.get("modality", ""),
              card.get("pretext", {}).get("method_id", "")],
        siblings=[HfSibling(rfilename=f.filename, size=f.size) for f in rev.files],
        card_data=HfCardData(license=card.get("weights_licence", "").lower()),
    )


@router.get("/api/models/{repo_id:path}/revision/{revision}", response_model=HfModelInfo,
            responses=NOT_FOUND)
def model_info_at(repo_id: str, revision: str, zoo: ZooDep,
                  reader: HubReader) -> HfModelInfo | JSONResponse:
    """Model info at a revision (HfApi.model_info / repo_info)."""
    rev = _lookup(zoo, repo_id, revision, reader)
    return rev if isinstance(rev, JSONResponse) else _info(repo_id, rev)


@router.get("/api/models/{repo_id:path}/tree/{revision}", response_model=list[HfTreeEntry],
            responses=NOT_FOUND)
def model_tree(repo_id: str, revision: str, zoo: ZooDep,
               reader: HubReader) -> list[HfTreeEntry] | JSONResponse:
    """Files of a revision (HfApi.list_repo_tree, used by snapshot_download)."""
    rev = _lookup(zoo, repo_id, revision, reader)
    if isinstance(rev, JSONResponse):
        return rev
    return [HfTreeEntry(path=f.filename, size=f.size,
                        oid=hashlib.sha1(f.sha256.encode()).hexdigest(),
                        lfs=HfLfs(oid=f.sha256, size=f.size))
            for f in rev.files]


@router.get("/api/models/{repo_id:path}", response_model=HfModelInfo, responses=NOT_FOUND)
def model_info(repo_id: str, zoo: ZooDep,
                  reader: HubReader) -> HfModelInfo | JSONResponse:
    """Model info at the latest revision."""
    rev = _lookup(zoo, repo_id, None, reader)
    return rev if isinstance(rev, JSONResponse) else _info(repo_id, rev)


RESOLVE = "/{repo_id:path}/resolve/{revision}/{filename}"


@router.get(RESOLVE, response_class=Response, responses={**NOT_FOUND, 200: {
    "description": "The file's bytes (Range, ETag, X-Repo-Commit)",
    "content": {"application/octet-stream": {}}}})
@router.head(RESOLVE, include_in_schema=False)  # hf_hub_download asks HEAD first
def resolve(repo_id: str, revision: str, filename: str, request: Request,
            zoo: ZooDep, reader: HubReader) -> Response:
    """A file download as hf_hub_download expects it (commit and ETag headers, Range)."""
    rev = _lookup(zoo, repo_id, revision, reader)
    if isinstance(rev, JSONResponse):
        return rev
    entry = next((f for f in rev.files if f.filename == filename), None)
    if entry is None:
        return hub_error("EntryNotFound", f"'{filename}' not in '{repo_id}' at {revision}")
    return blob_response(request, zoo.store.path(entry.sha256), entry.sha256, filename,
                         {"X-Repo-Commit": rev.commit, "X-Linked-Etag": f'"{entry.sha256}"',
                          "X-Linked-Size": str(entry.size)})
