from __future__ import annotations

import difflib
import json
import math
import re
from datetime import datetime
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, File, Form, HTTPException, Query, Request, Response, UploadFile
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field

from rules import Engine
from rules.vocabulary import UnknownValueError, Vocabulary, canonical_key
from zoo.access import OWNER_PATTERN, Reader, default_owner, may_write, repo_id
from zoo.cards import NAME_PATTERN, FileEntry, StoredCard, is_pickle_name
from zoo.catalog import EncoderRow, FileRow, RevisionRow
from zoo.embed import ImageError, declared_sizes, decode, embed
from zoo.matching import DIMS
from zoo.registry import ONNX, prepare

from ..auth import ReaderDep, UserDep
from ..config import Settings
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


def _unknown(kind: str, value: str, allowed: list[str],
             suggestion: str | None = None) -> RequestValidationError:
    """The 422 of an unknown value, shaped like the recommender's (allowed, did_you_mean);
    the closest allowed value unless the vocabulary (which knows aliases) suggested one."""
    if suggestion is None:
        close = difflib.get_close_matches(canonical_key(value), allowed, n=1, cutoff=0.6)
        suggestion = close[0] if close else None
    hint = f"; did you mean '{suggestion}'?" if suggestion else ""
    return RequestValidationError([{
        "type": "unknown_value", "loc": ("query", kind), "input": value,
        "msg": f"unknown {kind} '{value}'{hint} Allowed: {', '.join(allowed)}",
        "ctx": {"allowed": allowed, "did_you_mean": suggestion}}])


def _in_zoo(zoo: ZooState, reader: Reader, modality: str, vocab: Vocabulary) -> bool:
    """Whether some visible encoder carries a modality the vocabulary does not know (cards
    keep free text): filtering by it then still finds that encoder."""
    return zoo.registry.list(reader=reader, modality=modality, limit=1,
                             vocabulary=vocab)[1] > 0


def search_filters(engine: Engine, zoo: ZooState, reader: Reader, modality: str | None,
                   method: str | None, family: str | None, dims: str | None
                   ) -> dict[str, Any]:
    """The recommender's vocabulary applied to the zoo's filters: aliases to canonical
    values, and a 422 naming the allowed values for anything unknown."""
    kb, out = engine.kb, {}
    if modality:
        try:
            out["modality"] = kb.vocabulary.normalise("modality", modality)
        except UnknownValueError as err:
            if not _in_zoo(zoo, reader, modality, kb.vocabulary):
                raise _unknown("modality", modality, err.allowed, err.suggestion) from None
            out["modality"] = modality
    # Uploads take method ids from the catalog (and families from it), so the catalog is
    # the whole list of what the zoo can hold.
    if method:
        out["method"] = canonical_key(method)
        if out["method"] not in kb.methods:
            raise _unknown("method", method, sorted(kb.methods))
    if family:
        families = sorted({m.family for m in kb.methods.values()})
        out["family"] = canonical_key(family)
        if out["family"] not in families:
            raise _unknown("family", family, families)
    if dims:
        try:
            out["dims"] = DIMS[kb.vocabulary.normalise("dimensionality", dims)]
        except UnknownValueError as err:
            raise _unknown("dims", dims, err.allowed, err.suggestion) from None
    return out


@router.get("", response_model=Page[EncoderSummary], responses={**BAD_TOKEN})
def list_encoders(
    zoo: ZooDep,
    reader: ReaderDep,
    engine: EngineDep,
    owner: str | None = Query(None, max_length=64, description="Only this namespace."),
    modality: str | None = Query(None, max_length=64, description="ct, mri, xray, ... "
                                 "(the recommender's aliases such as cxr, x-ray, wsi too)."),
    method: str | None = Query(None, max_length=64,
                               description="Pretext method id, e.g. simclr."),
    family: str | None = Query(None, max_length=64, description="contrastive_global, "
                               "contrastive_local, predictive, generative or hybrid."),
    dims: str | None = Query(None, max_length=16, description="2d or 3d (also 2, 3, "
                             "volume; video means 2d encoders)."),
    q: str | None = Query(None, max_length=200, description="Case-insensitive text in the "
                          "name, description, modality or pretraining dataset; a modality "
                          "or anatomy word (cxr, chest) also finds the modalities it names."),
    task: Literal["encoder", "classification", "segmentation"] | None = Query(
        None, description="encoder (pretrained, no head) or a task model's kind."),
    parent: str | None = Query(None, max_length=161, description="Only repositories "
                               "trained from this one (owner/name): its lineage children."),
    limit: Limit = 100,
    offset: Offset = 0,
) -> Page[EncoderSummary]:
    """Encoder repositories this caller may see (public ones, plus a user's own private
    ones), filtered and paginated. Unknown filter values are a 422 with the allowed
    values and the closest one."""
    filters = search_filters(engine, zoo, reader, modality, method, family, dims)
    rows, count = zoo.registry.list(reader=reader, owner=owner, q=q, limit=limit,
                                    offset=offset, vocabulary=engine.kb.vocabulary,
                                    task=task, parent=parent, **filters)
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
    feature_dim, parameters, onnx_parity_max_abs_diff, files) are ignored and measured again."""
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


def decode_all(files: list[tuple[str, bytes]], card: StoredCard, max_values: int,
               slice_index: int | None = None
               ) -> tuple[list[np.ndarray], list[dict[str, object]]]:
    """Every image decoded, or every problem named (all of them, not just the first)."""
    arrays, problems = [], []
    for i, (name, data) in enumerate(files):
        try:
            arrays.append(decode(name, data, card, max_values, slice_index))
        except ImageError as err:
            problems.append({"loc": ["body", "images", i], "image": err.image,
                             "msg": err.problem, "type": "bad_image"})
    return arrays, problems


Images = Annotated[list[UploadFile], File(
    description="Image files, one per part: PNG, JPEG, NPY, DICOM (.dcm) or NIfTI (.nii, "
                ".nii.gz); resized to the model's input size.")]
SliceIndex = Annotated[int | None, Form(ge=0, le=100_000, description="For a 2D model given "
                                        "a volume: the slice to use (default: the middle).")]


async def checked_request(zoo: ZooState, repo: str, revision: str | None, reader: Reader,
                          settings: Settings, images: list[UploadFile], task_model: bool
                          ) -> tuple[RevisionRow, FileRow, StoredCard, list[tuple[str, bytes]]]:
    """Resolve the repository, check its kind and the request's size before any pixel is
    decoded: (revision, its ONNX file, card, (name, bytes) per image)."""
    if len(images) > MAX_IMAGES:
        raise HTTPException(422, f"at most {MAX_IMAGES} images per request, got {len(images)}")
    rev, entry = resolve_file(zoo, repo, revision, ONNX, reader)
    card = StoredCard.model_validate(rev.card)
    if task_model and card.task is None:
        raise HTTPException(422, f"{repo} is an encoder, not a task model: use "
                                 f"/v1/encoders/{repo}/embed for features, or fine-tune it "
                                 "(POST /v1/jobs) to get a classifier")
    if not task_model and card.task is not None:
        raise HTTPException(422, f"{repo} is a task model ({card.task.kind}): use "
                                 f"/v1/encoders/{repo}/predict")
    budget = settings.max_embed_values
    per_input = card.in_channels * math.prod(card.input_size)
    if per_input * len(images) > budget:  # the resized copies are held together
        raise HTTPException(422, f"{len(images)} images of {per_input:,} values each (the "
                                 f"model's input) is over the limit of {budget:,} values per "
                                 f"request; send at most {max(1, budget // per_input)} images "
                                 "of this size at once")
    files = [(upload.filename or f"image[{i}]", await upload.read())
             for i, upload in enumerate(images)]
    # Each file is decoded whole, one at a time, before it is resized: what its header
    # declares must fit the budget too. Checked before any pixel is decoded.
    oversized = [{"loc": ["body", "images", i], "image": name, "type": "bad_image",
                  "msg": f"declares {values:,} values, over the limit of {budget:,} per "
                         "request (TASKALIGN_MAX_EMBED_VALUES)" if problem is None
                         else problem}
                 for i, (name, values, problem) in enumerate(declared_sizes(files))
                 if problem is not None or values > budget]
    if oversized:
        raise HTTPException(422, detail=oversized)
    return rev, entry, card, files


async def run_model(zoo: ZooState, repo: str, revision: str | None, reader: Reader,
                    settings: Settings, images: list[UploadFile], task_model: bool,
                    slice_index: int | None = None
                    ) -> tuple[RevisionRow, StoredCard, list[str], np.ndarray]:
    """Check the request, decode off the event loop and run the ONNX graph: (revision,
    card, image names, outputs)."""
    rev, entry, card, files = await checked_request(zoo, repo, revision, reader, settings,
                                                    images, task_model)
    outputs = await run_graph(zoo, entry, card, files, settings, slice_index)
    return rev, card, [image for image, _ in files], outputs


async def run_graph(zoo: ZooState, entry: FileRow, card: StoredCard,
                    files: list[tuple[str, bytes]], settings: Settings,
                    slice_index: int | None) -> np.ndarray:
    """Decode every file (all problems named at once) and run the ONNX graph on the
    batch. Both are CPU work: off the event loop, so other requests keep being served."""
    arrays, problems = await run_in_threadpool(decode_all, files, card,
                                               settings.max_embed_values, slice_index)
    if problems:
        raise HTTPException(422, detail=problems)
    session = zoo.onnx_sessions.get(entry.sha256, zoo.store.path(entry.sha256))
    return await run_in_threadpool(embed, session, np.stack(arrays).astype(np.float32))


@router.post("/{owner}/{name}/embed", response_model=EmbedResponse,
             responses={**NOT_VISIBLE, **BAD_TOKEN, 413: {"description": "Request too large"},
                        422: {"description": "Bad images, too many values, or a task model"}})
async def embed_images(
    owner: Owner,
    name: Name,
    zoo: ZooDep,
    reader: ReaderDep,
    settings: SettingsDep,
    images: Images,
    revision: Annotated[str | None, Form()] = None,
    slice_index: SliceIndex = None,
) -> EmbedResponse:
    """Feature vectors for a batch of images, computed with onnxruntime."""
    repo = repo_id(owner, name)
    rev, _, names, features = await run_model(zoo, repo, revision, reader, settings, images,
                                              task_model=False, slice_index=slice_index)
    return EmbedResponse(name=repo, revision=rev.number, feature_dim=int(features.shape[1]),
                         data=[ImageFeatures(image=n, features=f.tolist())
                               for n, f in zip(names, features, strict=True)],
                         count=len(names))


class ImagePrediction(BaseModel):
    image: str
    probabilities: dict[str, float] = Field(description="Class name -> probability.")
    top_class: str = Field(description="The decision: the most probable class, or for a "
                           "binary model the threshold's call.")
    top_index: int


class PredictResponse(BaseModel):
    name: str
    revision: int
    classes: list[str]
    threshold: float | None = Field(description="Binary models: probability of the second "
                                    "class at or above which it is called.")
    data: list[ImagePrediction]
    count: int


MASK_TYPES = {"image/png": {"schema": {"type": "string", "format": "binary"}},
              "application/gzip": {"schema": {"type": "string", "format": "binary"}}}
MAX_HEADER_NAMES = 4096  # characters of JSON class names sent in X-Mask-Classes
MASK_HEADERS = {
    "X-Mask-Classes": {"description": "Segmentation: the class names of the mask values "
                       "as a JSON list (left out when longer than 4096 characters: see the "
                       "model card)", "schema": {"type": "string"}},
    "X-Mask-Fractions": {"description": "Segmentation: each class's share of the mask, "
                         "JSON list", "schema": {"type": "string"}}}


@router.post("/{owner}/{name}/predict", response_model=PredictResponse,
             responses={**NOT_VISIBLE, **BAD_TOKEN, 413: {"description": "Request too large"},
                        200: {"description": "Classification: JSON. Segmentation: the mask "
                              "of the one image sent, PNG (2D) or gzipped NIfTI (3D, with "
                              "the input's RAS+ affine), values = class indices; class names "
                              "and fractions in the X-Mask-Classes and X-Mask-Fractions "
                              "headers (JSON).", "content": MASK_TYPES,
                              "headers": MASK_HEADERS},
                        422: {"description": "Bad images, too many values, or an encoder"}})
async def predict_images(
    owner: Owner,
    name: Name,
    zoo: ZooDep,
    reader: ReaderDep,
    settings: SettingsDep,
    images: Images,
    revision: Annotated[str | None, Form()] = None,
    slice_index: SliceIndex = None,
) -> PredictResponse | Response:
    """Class probabilities and the decision per image from a classification model, or
    the mask of one image from a segmentation model (onnxruntime)."""
    repo = repo_id(owner, name)
    rev, entry, card, files = await checked_request(zoo, repo, revision, reader, settings,
                                                    images, task_model=True)
    if card.task is not None and card.task.kind == "segmentation":
        return await segmentation_response(zoo, entry, card, files, settings, slice_index)
    probs = await run_graph(zoo, entry, card, files, settings, slice_index)
    names = [image for image, _ in files]
    task = card.task
    assert task is not None  # run_model refused encoders
    picks = (probs[:, 1] >= task.threshold).astype(int) if (
        task.threshold is not None and probs.shape[1] == 2) else probs.argmax(axis=1)
    return PredictResponse(
        name=repo, revision=rev.number, classes=task.classes, threshold=task.threshold,
        data=[ImagePrediction(image=n, probabilities={c: round(float(v), 6) for c, v in
                                                      zip(task.classes, p, strict=True)},
                              top_class=task.classes[int(k)], top_index=int(k))
              for n, p, k in zip(names, probs, picks, strict=True)],
        count=len(names))


async def segmentation_response(zoo: ZooState, entry: FileRow, card: StoredCard,
                                files: list[tuple[str, bytes]], settings: Settings,
                                slice_index: int | None) -> Response:
    """One image in, its mask out, as a file a viewer opens next to the image."""
    from zoo.segment_predict import encode_mask, predict_mask

    if len(files) != 1:
        raise HTTPException(422, f"a segmentation model takes one image per request (its "
                                 f"mask is the answer); got {len(files)}")
    (filename, data), = files
    session = zoo.onnx_sessions.get(entry.sha256, zoo.store.path(entry.sha256))
    try:
        mask = await run_in_threadpool(predict_mask, session, filename, data, card,
                                       settings.max_embed_values, slice_index)
    except ImageError as err:
        raise HTTPException(422, detail=[{"loc": ["body", "images", 0], "image": err.image,
                                          "msg": err.problem, "type": "bad_image"}]) from None
    body, media_type, suffix = encode_mask(mask)
    # Only safe characters in a header: names may hold quotes or non-Latin-1 letters.
    stem = re.sub(r"[^A-Za-z0-9_-]", "_", filename.rsplit("/", 1)[-1].split(".", 1)[0])
    stem = stem[:64] or "image"
    classes = card.task.classes if card.task else []
    headers = {"Content-Disposition": f'attachment; filename="{stem}.mask{suffix}"',
               "X-Mask-Fractions": json.dumps(mask.fractions(len(classes)))}
    names = json.dumps(classes)  # ASCII: non-Latin-1 names are escaped
    if len(names) <= MAX_HEADER_NAMES:  # else clients refuse the answer; the card has them
        headers["X-Mask-Classes"] = names
    return Response(body, media_type=media_type, headers=headers)
