"""Dataset registration: validate an upload or a path, store one canonical npz blob, and
record it in one transaction. The router only parses the request and calls these."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select

from rules.vocabulary import UnknownValueError, load_vocabulary
from zoo.cards import now
from zoo.catalog import DatasetRow

from .config import Settings
from .db import fetch_page
from .problems import Conflict, Invalid, NotFound
from .users import User
from .zoo_state import ZooState

if TYPE_CHECKING:
    from zoo.datasets.readers import Dataset

# zoo.datasets holds images as torch tensors: its functions are imported where a dataset is
# read, so that importing the API does not load torch.

NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
Kind = Literal["npz", "folder", "path"]


class InvalidDataset(Invalid):
    code = "invalid_dataset"


class DatasetNameTaken(Conflict):
    code = "invalid_dataset"
    itemised = True


class DatasetPath(BaseModel):
    """Register a file or folder that already lies under the data directory."""

    name: str = Field(pattern=NAME)
    path: str = Field(description="npz file or folder of images (with labels.csv for "
                      "labels; without, an unlabelled set), under the data dir.")
    modality: str | None = None


class DatasetPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    owner: str
    kind: str
    sha256: str | None
    path: str | None
    size: int
    modality: str | None
    spatial_dims: int
    channels: int
    image_size: list[int]
    num_classes: int
    labelled: bool = Field(description="False for images without labels: usable to "
                           "pretrain, not to fine-tune or evaluate.")
    summary: dict[str, Any]
    created_at: datetime


def normalise_modality(value: str | None) -> str | None:
    if not value:
        return None
    try:
        return load_vocabulary().normalise("modality", value)
    except UnknownValueError as err:
        raise InvalidDataset("modality", str(err)) from None


def path_roots(settings: Settings, user: User) -> list[Path]:
    """Where a user may register paths: an admin under the data dir and
    TASKALIGN_HOME/datasets; anyone else only under their own TASKALIGN_HOME/datasets/<name>/,
    so that no user reads files the service can see but they were never given."""
    if user.admin:
        return [r.resolve() for r in (settings.data_dir, settings.home / "datasets") if r]
    return [(settings.home / "datasets" / user.name).resolve()]


def load_path(spec: DatasetPath, settings: Settings, user: User) -> Dataset:
    """Read and check a dataset under one of the caller's path roots only."""
    from zoo.datasets.ingest import check
    from zoo.datasets.readers import DataError, load_folder, load_npz

    roots = path_roots(settings, user)
    target = Path(spec.path).resolve()
    if not any(target == r or r in target.parents for r in roots):
        raise InvalidDataset("path", f"paths must lie under {', '.join(map(str, roots))} "
                             "(other paths: ask an admin, or upload the file)")
    try:
        if target.is_file() and target.suffix == ".npz":
            dataset = load_npz(target, spec.name)
        elif target.is_dir():
            dataset = load_folder(target)
        else:
            raise InvalidDataset("path", f"{target} is neither an .npz file nor a folder")
        check(dataset)
    except DataError as err:
        raise InvalidDataset("path", str(err)) from None
    return dataset


def load_upload(filename: str, data: bytes, name: str, channels: int,
                max_bytes: int) -> tuple[Dataset, Kind, bytes]:
    """Decode an uploaded .npz or .zip (images, with labels.csv unless unlabelled); returns
    the dataset, its kind and the canonical npz bytes to store."""
    from zoo.datasets.ingest import from_npz_bytes, from_zip_bytes, to_npz_bytes
    from zoo.datasets.readers import DataError

    filename = filename.lower()
    try:
        if filename.endswith(".npz"):
            return from_npz_bytes(data, name), "npz", data
        if filename.endswith(".zip"):
            dataset = from_zip_bytes(data, name, max_bytes, channels)
            return dataset, "folder", to_npz_bytes(dataset)
    except DataError as err:
        raise InvalidDataset("file", str(err)) from None
    raise InvalidDataset("file", "upload a .npz (MedMNIST keys) or a .zip of images (with "
                                 "labels.csv, or without for an unlabelled set)")


def store(zoo: ZooState, owner: str, name: str, kind: Kind, dataset: Dataset,
          blob: bytes | None, path: str | None, modality: str | None) -> DatasetPublic:
    """Blob first, then one transaction; a refused insert removes a blob it created."""
    from zoo.datasets.ingest import summarise

    sha, size, created = (None, 0, False) if blob is None else zoo.store.put_bytes(blob)
    try:
        with zoo.registry.sessions.begin() as session:
            exists = session.scalar(select(func.count()).select_from(DatasetRow).where(
                DatasetRow.owner == owner, DatasetRow.name == name))
            if exists:
                raise DatasetNameTaken("name", f"you already have a dataset named '{name}'")
            row = DatasetRow(name=name, owner=owner, kind=kind, sha256=sha, path=path,
                             size=size, modality=modality, spatial_dims=dataset.spatial_dims,
                             channels=dataset.channels, image_size=dataset.image_size,
                             num_classes=dataset.num_classes, labelled=dataset.labelled,
                             summary=summarise(dataset), created_at=now())
            session.add(row)
            session.flush()
            return DatasetPublic.model_validate(row)
    except BaseException:
        if created and sha:
            zoo.registry.delete_if_unreferenced(sha)
        raise


def list_for(zoo: ZooState, user: User, limit: int, offset: int
             ) -> tuple[list[DatasetPublic], int]:
    """The user's datasets (everyone's for an admin), oldest first, and the total count."""
    query = select(DatasetRow)
    if not user.admin:
        query = query.where(DatasetRow.owner == user.name)
    with zoo.registry.sessions() as session:
        rows, count = fetch_page(session, query, DatasetRow.id, limit, offset)
        return [DatasetPublic.model_validate(r) for r in rows], count


def owned(zoo: ZooState, dataset_id: int, user: User) -> DatasetPublic:
    with zoo.registry.sessions() as session:
        row = session.get(DatasetRow, dataset_id)
        if row is None or not user.may_access(row.owner):
            raise NotFound("dataset_id", f"no dataset {dataset_id} of yours")
        return DatasetPublic.model_validate(row)
