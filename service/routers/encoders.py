from __future__ import annotations

import json
import math
from datetime import datetime
from typing import Annotated

import numpy as np
from fastapi import APIRouter, File, Form, HTTPException, Query, Request, Response, UploadFile
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from zoo.access import OWNER_PATTERN, Reader, default_owner, may_write, repo_id
from zoo.cards import NAME_PATTERN, FileEntry, StoredCard, is_pickle_name
from zoo.catalog import EncoderRow, FileRow, RevisionRow
from zoo.embed import ImageError, decode, embed
from zoo.registry import ONNX, prepare

from ..auth import ReaderDep, UserDep
from ..deps import EngineDep, SettingsDep, ZooDep
from ..errors import not_found
from ..files import blob_response
from ..pagination import Limit, Offset, Page
from ..problems import Invalid
from ..zoo_state import ZooState

router = APIRouter(prefix="/encoders", tags=["encoders"])

MAX_IMAGES = 1024


class InvalidUpload(Invalid):
    code = "invalid_upload"


Owner = Annotated[str, PathParam(pattern=OWNER_PATTERN, max_length=64,
                                 description="Namespace: a user, or taskalign for the seed zoo.")]
Name = Annotated[str, PathParam(pattern=NAME_PATTERN, max_length=96,
                                description="arch.tag, e.g. resnet18-2d.simclr-pneumoniamnist")]


class EncoderSummary(BaseModel):
    name: str = Field(description="Repository id owner/name.")
    owner: str
    private: bool
    architecture: str
    modality: str
    method_id: str
    family: str | None
    spatial_dims: int
    in_channels: int
    feature_dim: int
    latest_revision: int
    description: str
    created_at: datetime
    updated_at: datetime


class RevisionPublic(BaseModel):
    revision: int
    commit: str
    created_at: datetime
    files: dict[str, FileEntry]


class EncoderDetail(EncoderSummary):
    card: StoredCard
    revisions: list[RevisionPublic]


class EncoderUpdate(BaseModel):
    model_config = {"extra": "forbid"}

    private: bool = Field(description="Whether only the owner (and admins) can see it.")


class ImageFeatures(BaseModel):
    image: str
    features: list[float]


class EmbedResponse(BaseModel):
    name: str
    revision: int
    feature_dim: int
    data: list[ImageFeatures]
    count: int


def summary(row: EncoderRow) -> EncoderSummary:
    return EncoderSummary.model_validate(row, from_attributes=True)


NOT_VISIBLE = {404: {"description": "No such repository, or not visible to this caller "
                                   "(the two answer the same)"}}
BAD_TOKEN = {401: {"description": "A token was sent and is unknown"}}


@router.get("", response_model=Page[EncoderSummary], responses={**BAD_TOKEN})
def list_encoders(
    zoo: ZooDep,
    reader: ReaderDep,
    owner: str | None = Query(None, max_length=64, description="Only this namespace."),
    modality: str | None = None,
    method: str | None = Query(None, description="Pretext method id, e.g. simclr."),
    family: str | None = None,
    dims: int | None = Query(None, ge=2, le=3, description="Spatial dims: 2 or 3."),
    q: str | None = Query(None, description="Text search in name and description."),
    limit: Limit = 100,
    offset: Offset = 0,
) -> Page[EncoderSummary]:
    """Encoder repositories this caller may see (public ones, plus a user's own private
    ones), filtered and paginated."""
    rows, count = zoo.registry.list(reader=reader, owner=owner, modality=modality,
                                    method=method, family=family, dims=dims, q=q, limit=limit,
                                    offset=offset)
    return Page[EncoderSummary](data=[summary(r) for r in rows], count=count)


def visible_repo(zoo: ZooState, repo: str, reader: Reader) -> EncoderRow:
    row = zoo.registry.get(repo, reader)
    if row is None:
        raise not_found("encoder", repo, zoo.registry.names(reader))
    return row


def detail(row: EncoderRow) -> EncoderDetail:
    revisions = [RevisionPublic(revision=r.number, commit=r.commit, created_at=r.created_at,
                                files={f.filename: FileEntry(sha256=f.sha256, size=f.size)
                                       for f in r.files})
                 for r in row.revisions]
    card = StoredCard.model_validate(row.revisions[-1].card)
    return EncoderDetail(**summary(row).model_dump(),
                         card=card.model_copy(update={"repo_id": row.name}),
                         revisions=revisions)


@router.get("/{owner}/{name}", response_model=EncoderDetail,
            responses={**NOT_VISIBLE, **BAD_TOKEN})
def get_encoder(owner: Owner, name: Name, zoo: ZooDep, reader: ReaderDep) -> EncoderDetail:
    """A repository's latest card, and every revision with its files."""
    return detail(visible_repo(zoo, repo_id(owner, name), reader))


@router.patch("/{owner}/{name}", response_model=EncoderDetail,
              responses={**NOT_VISIBLE, 403: {"description": "Not the owner or an admin"}})
def update_encoder(owner: Owner, name: Name, change: EncoderUpdate, zoo: ZooDep,
                   user: UserDep) -> EncoderDetail:
    """Make a repository public or private (its owner or an admin)."""
    repo = repo_id(owner, name)
    visible_repo(zoo, repo, user)
    if not may_write(user, owner):
        raise HTTPException(403, f"only {owner} or an admin may change {repo}")
    zoo.registry.set_private(repo, change.private)
    zoo.invalidate()
    return detail(visible_repo(zoo, repo, user))


@router.get("/{name}", include_in_schema=False)
def bare_name(name: str, zoo: ZooDep, reader: ReaderDep) -> None:
    """Encoder names became `owner/name`: point old links at the repository id."""
    raise not_found("encoder", name, zoo.registry.names(reader))


def resolve_file(zoo: ZooState, repo: str, revision: str | None, filename: str,
                 reader: Reader) -> tuple[RevisionRow, FileRow]:
    rev = zoo.registry.revision(repo, revision, reader)
    if rev is None:
        visible_repo(zoo, repo, reader)
        raise HTTPException(404, f"encoder '{repo}' has no revision '{revision}'")
    entry = next((f for f in rev.files if f.filename == filename), None)
    if entry is None:
        raise not_found("file", filename, [f.filename for f in rev.files])
    return rev, entry


FILE = "/{owner}/{name}/files/{filename}"


@router.get(FILE, response_class=Response, responses={200: {
    "description": "The file's bytes (Range, ETag = sha256, X-Taskalign-Revision)",
    "content": {"application/octet-stream": {}}},
    404: {"description": "Unknown repository (or not visible), revision or file"},
    **BAD_TOKEN})
@router.head(FILE, include_in_schema=False)  # clients check size and ETag first
def download_file(owner: Owner, name: Name, filename: str, request: Request, zoo: ZooDep,
                  reader: ReaderDep,
                  revision: str | None = Query(None, description="Number or commit; "
                                               "default the latest.")) -> Response:
    """A file of a revision, with ETag (sha256), If-None-Match and Range support."""
    rev, entry = resolve_file(zoo, repo_id(owner, name), revision, filename, reader)
    return blob_response(request, zoo.store.path(entry.sha256), entry.sha256, filename,
                         {"x-taskalign-revision": str(rev.number), "x-repo-commit": rev.commit})


@router.post("", status_code=201, response_model=StoredCard,
             responses={401: {"description": "No token, or an unknown one"},
                        403: {"description": "The namespace is not the caller's"},
                        409: {"description": "Identical to the latest revision"},
                        413: {"description": "Upload too large"},
                        422: {"description": "Invalid card or weights"}})
async def upload_encoder(
    user: UserDep,
    zoo: ZooDep,
    engine: EngineDep,
    config: Annotated[UploadFile, File(description="config.json: the encoder card.")],
    weights: Annotated[UploadFile, File(description="model.safetensors")],
    owner: Annotated[str | None, Form(description="Namespace; default the caller's own "
                                      "(an admin's: taskalign). Only an admin may name "
                                      "another.")] = None,
    private: Annotated[bool | None, Form(description="Default: public for a new "
                                         "repository, unchanged for an existing one.")] = None,
) -> StoredCard:
    """Add a revision to the repository `owner/<card name>`: the weights are checked against
    the architecture, exported to ONNX, verified. A config.json downloaded from a zoo may be
    sent as it is: the fields the server computes (repo_id, revision, commit, created_at,
    feature_dim, onnx_parity_max_abs_diff, files) are ignored and measured again."""
    owner = owner or default_owner(user)
    if not may_write(user, owner):
        raise HTTPException(403, f"you may publish under '{user.name}/' only; '{owner}/' "
                                 "belongs to another user")
    if weights.filename and is_pickle_name(weights.filename):
        raise InvalidUpload("weights", f"'{weights.filename}' looks like a pickle checkpoint; "
                            "these are refused. Save the state dict with "
                            "safetensors.torch.save_file and upload model.safetensors",
                            "pickle_refused")
    try:
        card_data = json.loads(await config.read())
    except ValueError:
        raise InvalidUpload("config", "config is not valid JSON", "json_invalid") from None
    if not isinstance(card_data, dict):
        raise InvalidUpload("config", "config must be a JSON object", "object_type")
    method_id = (card_data.get("pretext") or {}).get("method_id")
    method = engine.kb.methods.get(method_id) if isinstance(method_id, str) else None
    if method is None:
        raise InvalidUpload("config.pretext.method_id", f"unknown pretext method {method_id!r}; "
                            "see GET /v1/methods", "unknown_method")
    data = await weights.read()
    prepared = await run_in_threadpool(prepare, card_data, data)
    stored = await run_in_threadpool(zoo.registry.register, prepared, method.family,
                                     owner=owner, private=private)
    zoo.invalidate()
    return stored


def decode_all(files: list[tuple[str, bytes]], card: StoredCard
               ) -> tuple[list[np.ndarray], list[dict[str, object]]]:
    """Every image decoded, or every problem named (all of them, not just the first)."""
    arrays, problems = [], []
    for i, (name, data) in enumerate(files):
        try:
            arrays.append(decode(name, data, card))
        except ImageError as err:
            problems.append({"loc": ["body", "images", i], "image": err.image,
                             "msg": err.problem, "type": "bad_image"})
    return arrays, problems


@router.post("/{owner}/{name}/embed", response_model=EmbedResponse,
             responses={**NOT_VISIBLE, **BAD_TOKEN, 413: {"description": "Request too large"},
                        422: {"description": "Bad images, or too many values"}})
async def embed_images(
    owner: Owner,
    name: Name,
    zoo: ZooDep,
    reader: ReaderDep,
    settings: SettingsDep,
    images: Annotated[list[UploadFile], File(description="PNG or NPY images, one per part.")],
    revision: Annotated[str | None, Form()] = None,
) -> EmbedResponse:
    """Feature vectors for a batch of images, computed with onnxruntime."""
    if len(images) > MAX_IMAGES:
        raise HTTPException(422, f"at most {MAX_IMAGES} images per request, got {len(images)}")
    repo = repo_id(owner, name)
    rev, entry = resolve_file(zoo, repo, revision, ONNX, reader)
    card = StoredCard.model_validate(rev.card)
    per_image, budget = card.in_channels * math.prod(card.input_size), settings.max_embed_values
    if per_image * len(images) > budget:
        raise HTTPException(422, f"{len(images)} images of {per_image:,} values each is over "
                                 f"the limit of {budget:,} values per request; send at most "
                                 f"{max(1, budget // per_image)} images of this size at once")
    files = [(upload.filename or f"image[{i}]", await upload.read())
             for i, upload in enumerate(images)]
    # Decoding is CPU work: off the event loop, so other requests keep being served.
    arrays, problems = await run_in_threadpool(decode_all, files, card)
    if problems:
        raise HTTPException(422, detail=problems)
    image_names = [image for image, _ in files]
    session = zoo.onnx_sessions.get(entry.sha256, zoo.store.path(entry.sha256))
    features = await run_in_threadpool(embed, session, np.stack(arrays).astype(np.float32))
    return EmbedResponse(name=repo, revision=rev.number, feature_dim=int(features.shape[1]),
                         data=[ImageFeatures(image=n, features=f.tolist())
                               for n, f in zip(image_names, features, strict=True)],
                         count=len(image_names))
