"""Datasets over HTTP: an upload (multipart) or a path registration (JSON)."""

from __future__ import annotations

import re
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from .. import datasets
from ..auth import UserDep
from ..datasets import NAME, DatasetPath, DatasetPublic, InvalidDataset
from ..deps import SettingsDep, ZooDep
from ..pagination import Limit, Offset, Page, RowId
from ..responses import MEDIA_TYPE, NOT_FOUND, TOKEN, error

router = APIRouter(prefix="/datasets", tags=["datasets"], responses=TOKEN)

UPLOAD_SCHEMA = {"requestBody": {"content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["file", "name"],
                                       "properties": {
                                           "file": {"type": "string", "format": "binary"},
                                           "name": {"type": "string"},
                                           "modality": {"type": "string"},
                                           "channels": {
                                               "type": "integer", "enum": [1, 3],
                                               "description": "Image channels of a zip; "
                                               "default 1, detected for images/ + masks/"}}}},
    "application/json": {"schema": DatasetPath.model_json_schema()}}}}


@router.post("", status_code=201, response_model=DatasetPublic, openapi_extra=UPLOAD_SCHEMA,
             responses={**MEDIA_TYPE, **error((409, "You already have a dataset of that name"))})
async def create_dataset(request: Request, user: UserDep, zoo: ZooDep,
                         settings: SettingsDep) -> DatasetPublic:
    """Upload an npz or a zip (images with labels.csv; images/ + masks/; imagesTr/ [+
    labelsTr/] of NIfTI or DICOM), or register a readable path; images only (no labels, no
    masks) make an unlabelled set (for pretraining)."""
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("application/json"):
        try:
            spec = DatasetPath.model_validate_json(await request.body())
        except ValidationError as err:  # the same 422 body as any request validation
            raise RequestValidationError(err.errors(), body=None) from None
        modality = datasets.normalise_modality(spec.modality)
        dataset = await run_in_threadpool(datasets.load_path, spec, settings, user)
        return await run_in_threadpool(datasets.store, zoo, user.name, spec.name, "path",
                                       dataset, None, str(Path(spec.path).resolve()),
                                       modality)
    if not ctype.startswith("multipart/form-data"):
        raise HTTPException(415, "send multipart/form-data (file upload) or application/json "
                                 "(path registration)")
    form = await request.form()
    upload, name = form.get("file"), str(form.get("name") or "")
    if upload is None or isinstance(upload, str):
        raise InvalidDataset("file", "send the dataset as a file part named 'file'")
    if not re.match(NAME, name):
        raise InvalidDataset("name", "names use letters, digits, '.', '_' and '-' (max 128)")
    modality = datasets.normalise_modality(str(form.get("modality") or "") or None)
    channels = str(form.get("channels") or "")
    if channels not in ("", "1", "3"):
        raise InvalidDataset("channels", "channels must be 1 or 3")
    dataset, kind, blob = await run_in_threadpool(
        datasets.load_upload, upload.filename or "", await upload.read(), name,
        int(channels) if channels else None, settings.max_upload_bytes)
    return await run_in_threadpool(datasets.store, zoo, user.name, name, kind, dataset, blob,
                                   None, modality)


@router.get("", response_model=Page[DatasetPublic])
async def list_datasets(user: UserDep, zoo: ZooDep, limit: Limit = 100,
                        offset: Offset = 0) -> Page[DatasetPublic]:
    """Your datasets (an admin token sees everyone's)."""
    rows, count = await run_in_threadpool(datasets.list_for, zoo, user, limit, offset)
    return Page[DatasetPublic](data=rows, count=count)


@router.get("/{dataset_id}", response_model=DatasetPublic, responses=NOT_FOUND)
async def get_dataset(dataset_id: RowId, user: UserDep, zoo: ZooDep) -> DatasetPublic:
    """Counts per split and class (per split only, `labelled` false, for images without
    labels), image size, channels, dims."""
    return await run_in_threadpool(datasets.owned, zoo, dataset_id, user)


@router.get("/{dataset_id}/thumbnails.png", response_class=Response, response_model=None,
            responses={**NOT_FOUND, 200: {"content": {"image/png": {}},
                                          "description": "A PNG montage of train images"}})
async def dataset_thumbnails(dataset_id: RowId, user: UserDep, zoo: ZooDep) -> Response:
    """A few train images with their masks overlaid (3D: one axial slice through the mask),
    captioned with case ids; for checking that masks lie on the structures."""
    path, sha = await run_in_threadpool(datasets.thumbnails, zoo, dataset_id, user)
    return Response(await run_in_threadpool(path.read_bytes), media_type="image/png",
                    headers={"etag": f'"{sha}"', "cache-control": "private, max-age=3600"})
