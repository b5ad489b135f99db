from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy import func, select

from zoo.cards import now
from zoo.catalog import DatasetRow
from zoo.datasets.ingest import check, from_npz_bytes, from_zip_bytes, summarise, to_npz_bytes
from zoo.datasets.readers import DataError, Dataset, load_folder, load_npz

from ..auth import UserDep
from ..deps import SettingsDep, ZooDep
from ..pagination import Limit, Offset

router = APIRouter(prefix="/datasets", tags=["datasets"])

NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"


class DatasetPath(BaseModel):
    name: str = Field(pattern=NAME)
    path: str = Field(description="npz file or folder with labels.csv, under the data dir.")
    modality: str | None = None


def public(row: DatasetRow) -> dict[str, Any]:
    return {"id": row.id, "name": row.name, "owner": row.owner, "kind": row.kind,
            "sha256": row.sha256, "path": row.path, "size": row.size, "modality": row.modality,
            "spatial_dims": row.spatial_dims, "channels": row.channels,
            "image_size": row.image_size, "num_classes": row.num_classes,
            "summary": row.summary, "created_at": row.created_at}


def _bad(field: str, message: str, status: int = 422) -> HTTPException:
    return HTTPException(status, detail=[{"loc": ["body", field], "msg": message,
                                          "type": "invalid_dataset"}])


def _modality(value: str | None) -> str | None:
    if not value:
        return None
    from rules.vocabulary import UnknownValueError, load_vocabulary

    try:
        return load_vocabulary().normalise("modality", value)
    except UnknownValueError as err:
        raise _bad("modality", str(err)) from None


@router.post("", status_code=201, openapi_extra={"requestBody": {"content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["file", "name"],
                                       "properties": {
                                           "file": {"type": "string", "format": "binary"},
                                           "name": {"type": "string"},
                                           "modality": {"type": "string"},
                                           "channels": {"type": "integer", "enum": [1, 3]}}}},
    "application/json": {"schema": DatasetPath.model_json_schema()}}}})
async def create_dataset(request: Request, user: UserDep, zoo: ZooDep,
                         settings: SettingsDep) -> dict[str, Any]:
    """Upload an npz or a zip of images with labels.csv, or register a readable path."""
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("application/json"):
        try:
            spec = DatasetPath.model_validate_json(await request.body())
        except ValidationError as err:
            raise HTTPException(422, detail=json.loads(err.json())) from None
        ds = await run_in_threadpool(_from_path, spec, settings)
        kind, blob, path = "path", None, str(Path(spec.path).resolve())
        name, modality = spec.name, _modality(spec.modality)
    elif ctype.startswith("multipart/form-data"):
        form = await request.form()
        upload, name = form.get("file"), str(form.get("name") or "")
        if upload is None or isinstance(upload, str):
            raise _bad("file", "send the dataset as a file part named 'file'")
        if not re.match(NAME, name):
            raise _bad("name", "names use letters, digits, '.', '_' and '-' (max 128)")
        modality = _modality(str(form.get("modality") or "") or None)
        channels = int(form.get("channels") or 1)
        if channels not in (1, 3):
            raise _bad("channels", "channels must be 1 or 3")
        data = await upload.read()
        filename = (upload.filename or "").lower()
        try:
            if filename.endswith(".npz"):
                ds, kind = await run_in_threadpool(from_npz_bytes, data, name), "npz"
            elif filename.endswith(".zip"):
                ds, kind = await run_in_threadpool(
                    from_zip_bytes, data, name, settings.max_upload_bytes, channels), "folder"
            else:
                raise _bad("file", "upload a .npz (MedMNIST keys) or a .zip of images with "
                                   "labels.csv")
        except DataError as err:
            raise _bad("file", str(err)) from None
        blob, path = to_npz_bytes(ds) if kind == "folder" else data, None
    else:
        raise HTTPException(415, "send multipart/form-data (file upload) or application/json "
                                 "(path registration)")
    return await run_in_threadpool(_store, zoo, user.name, name, kind, ds, blob, path, modality)


def _from_path(spec: DatasetPath, settings: Any) -> Dataset:
    roots = [r.resolve() for r in (settings.data_dir, settings.home / "datasets") if r]
    target = Path(spec.path).resolve()
    if not any(target == r or r in target.parents for r in roots):
        raise _bad("path", f"paths must lie under {', '.join(map(str, roots))}")
    try:
        if target.is_file() and target.suffix == ".npz":
            ds = load_npz(target, spec.name)
        elif target.is_dir():
            ds = load_folder(target)
        else:
            raise _bad("path", f"{target} is neither an .npz file nor a folder")
        check(ds)
    except DataError as err:
        raise _bad("path", str(err)) from None
    return ds


def _store(zoo: Any, owner: str, name: str, kind: str, ds: Dataset, blob: bytes | None,
           path: str | None, modality: str | None) -> dict[str, Any]:
    """Blob first, then one transaction; a refused insert removes a blob it created."""
    sessions, store = zoo.registry.sessions, zoo.store
    sha, size, created = (None, 0, False) if blob is None else store.put_bytes(blob)
    try:
        with sessions.begin() as session:
            exists = session.scalar(select(func.count()).select_from(DatasetRow).where(
                DatasetRow.owner == owner, DatasetRow.name == name))
            if exists:
                raise _bad("name", f"you already have a dataset named '{name}'", 409)
            summary = summarise(ds)
            row = DatasetRow(name=name, owner=owner, kind=kind, sha256=sha, path=path,
                             size=size, modality=modality, spatial_dims=ds.spatial_dims,
                             channels=ds.channels, image_size=ds.image_size,
                             num_classes=ds.num_classes, summary=summary, created_at=now())
            session.add(row)
            session.flush()
            result = public(row)
        return result
    except BaseException:
        if created and sha:
            zoo.registry.delete_if_unreferenced(sha)
        raise


@router.get("")
def list_datasets(user: UserDep, zoo: ZooDep, limit: Limit = 100,
                  offset: Offset = 0) -> dict[str, Any]:
    """Your datasets (an admin token sees everyone's)."""
    query = select(DatasetRow)
    if not user.admin:
        query = query.where(DatasetRow.owner == user.name)
    with zoo.registry.sessions() as s:
        count = s.scalar(select(func.count()).select_from(query.subquery()))
        rows = s.scalars(query.order_by(DatasetRow.id).limit(limit).offset(offset)).all()
        return {"data": [public(r) for r in rows], "count": int(count or 0)}


@router.get("/{dataset_id}")
def get_dataset(dataset_id: int, user: UserDep, zoo: ZooDep) -> dict[str, Any]:
    """Counts per split and class, image size, channels, dims."""
    with zoo.registry.sessions() as s:
        row = s.get(DatasetRow, dataset_id)
        if row is None or (row.owner != user.name and not user.admin):
            raise HTTPException(404, f"no dataset {dataset_id} of yours")
        return public(row)
