from __future__ import annotations

import json
import math
from datetime import datetime
from typing import Annotated

import numpy as np
from fastapi import APIRouter, File, Form, HTTPException, Query, Request, Response, UploadFile
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel

from zoo.cards import FileEntry, StoredCard, is_pickle_name
from zoo.catalog import EncoderRow, FileRow, RevisionRow
from zoo.embed import ImageError, decode, embed
from zoo.registry import ONNX, prepare

from ..auth import UserDep
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


class EncoderSummary(BaseModel):
    name: str
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


@router.get("", response_model=Page[EncoderSummary])
def list_encoders(
    zoo: ZooDep,
    modality: str | None = None,
    method: str | None = Query(None, description="Pretext method id, e.g. simclr."),
    family: str | None = None,
    dims: int | None = Query(None, ge=2, le=3, description="Spatial dims: 2 or 3."),
    q: str | None = Query(None, description="Text search in name and description."),
    limit: Limit = 100,
    offset: Offset = 0,
) -> Page[EncoderSummary]:
    """Encoders in the zoo, filtered and paginated."""
    rows, count = zoo.registry.list(modality=modality, method=method, family=family, dims=dims,
                                    q=q, limit=limit, offset=offset)
    return Page[EncoderSummary](data=[summary(r) for r in rows], count=count)


@router.get("/{name}", response_model=EncoderDetail)
def get_encoder(name: str, zoo: ZooDep) -> EncoderDetail:
    """An encoder's latest card, and every revision with its files."""
    row = zoo.registry.get(name)
    if row is None:
        raise not_found("encoder", name, zoo.registry.names())
    revisions = [RevisionPublic(revision=r.number, commit=r.commit, created_at=r.created_at,
                                files={f.filename: FileEntry(sha256=f.sha256, size=f.size)
                                       for f in r.files})
                 for r in row.revisions]
    return EncoderDetail(**summary(row).model_dump(),
                         card=StoredCard.model_validate(row.revisions[-1].card),
                         revisions=revisions)


def resolve_file(zoo: ZooState, name: str, revision: str | None,
                 filename: str) -> tuple[RevisionRow, FileRow]:
    rev = zoo.registry.revision(name, revision)
    if rev is None:
        if zoo.registry.get(name) is None:
            raise not_found("encoder", name, zoo.registry.names())
        raise HTTPException(404, f"encoder '{name}' has no revision '{revision}'")
    entry = next((f for f in rev.files if f.filename == filename), None)
    if entry is None:
        raise not_found("file", filename, [f.filename for f in rev.files])
    return rev, entry


FILE = "/{name}/files/{filename}"


@router.get(FILE, response_class=Response, responses={200: {
    "description": "The file's bytes (Range, ETag = sha256, X-Taskalign-Revision)",
    "content": {"application/octet-stream": {}}}, 404: {"description": "Unknown file"}})
@router.head(FILE, include_in_schema=False)  # clients check size and ETag first
def download_file(name: str, filename: str, request: Request, zoo: ZooDep,
                  revision: str | None = Query(None, description="Number or commit; "
                                               "default the latest.")) -> Response:
    """A file of a revision, with ETag (sha256), If-None-Match and Range support."""
    rev, entry = resolve_file(zoo, name, revision, filename)
    return blob_response(request, zoo.store.path(entry.sha256), entry.sha256, filename,
                         {"x-taskalign-revision": str(rev.number), "x-repo-commit": rev.commit})


@router.post("", status_code=201, response_model=StoredCard,
             responses={409: {"description": "Identical to the latest revision"},
                        413: {"description": "Upload too large"},
                        422: {"description": "Invalid card or weights"}})
async def upload_encoder(
    user: UserDep,
    zoo: ZooDep,
    engine: EngineDep,
    config: Annotated[UploadFile, File(description="config.json: the encoder card.")],
    weights: Annotated[UploadFile, File(description="model.safetensors")],
) -> StoredCard:
    """Register new weights: checked against the architecture, exported to ONNX, verified.
    A config.json downloaded from a zoo may be sent as it is: the fields the server computes
    (revision, commit, created_at, feature_dim, onnx_parity_max_abs_diff, files) are
    ignored and measured again."""
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
    stored = await run_in_threadpool(zoo.registry.register, prepared, method.family)
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


@router.post("/{name}/embed", response_model=EmbedResponse)
async def embed_images(
    name: str,
    zoo: ZooDep,
    settings: SettingsDep,
    images: Annotated[list[UploadFile], File(description="PNG or NPY images, one per part.")],
    revision: Annotated[str | None, Form()] = None,
) -> EmbedResponse:
    """Feature vectors for a batch of images, computed with onnxruntime."""
    if len(images) > MAX_IMAGES:
        raise HTTPException(422, f"at most {MAX_IMAGES} images per request, got {len(images)}")
    rev, entry = resolve_file(zoo, name, revision, ONNX)
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
    return EmbedResponse(name=name, revision=rev.number, feature_dim=int(features.shape[1]),
                         data=[ImageFeatures(image=n, features=f.tolist())
                               for n, f in zip(image_names, features, strict=True)],
                         count=len(image_names))
