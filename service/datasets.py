"""Dataset registration: validate an upload or a path, store one canonical npz blob, and
record it in one transaction. The router only parses the request and calls these."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field
from sqlalchemy import String, cast, func, select

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
    path: str = Field(description="npz file or folder under one of your path roots: images "
                      "with labels.csv (classification), images/ + masks/ or imagesTr/ [+ "
                      "labelsTr/] of NIfTI files or DICOM series (segmentation), or images "
                      "only (unlabelled).")
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
    num_classes: int = Field(description="Classes of the image labels (classification); 0 "
                             "without labels. Mask classes are in `mask_classes`.")
    labelled: bool = Field(description="False for images without labels or masks: usable to "
                           "pretrain, not to fine-tune or evaluate.")
    summary: dict[str, Any]
    created_at: datetime

    @computed_field(description="`segmentation` when images have masks (even with class "
                    "labels too), `classification` with labels only, null for images only.")
    @property
    def task(self) -> Literal["classification", "segmentation"] | None:
        if "task" in self.summary:
            return self.summary["task"]
        return "classification" if self.labelled else None  # registered before masks

    @computed_field(description="Names of the mask values 0, 1, ... (background first); "
                    "null without masks.")
    @property
    def mask_classes(self) -> list[str] | None:
        return self.summary.get("mask_classes")


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


def load_upload(filename: str, data: bytes, name: str, channels: int | None,
                max_bytes: int) -> tuple[Dataset, Kind, bytes]:
    """Decode an uploaded .npz or .zip (images with labels.csv, a segmentation layout, or
    images only); returns the dataset, its kind and the canonical npz bytes to store.
    `channels` None: 1 for classification, detected for segmentation layouts."""
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
    raise InvalidDataset("file", "upload a .npz (MedMNIST keys, with {split}_masks for "
                                 "segmentation) or a .zip of images (with labels.csv; "
                                 "images/ + masks/; imagesTr/ + labelsTr/ of NIfTI or DICOM; "
                                 "or images only for an unlabelled set)")


def _put_thumbnails(zoo: ZooState, dataset: Dataset) -> tuple[dict[str, Any], bool]:
    """The overlay montage, stored as a blob (written to a temporary file and renamed, so
    never half-written); returns what the summary records and whether the blob is new."""
    from zoo.datasets.thumbnails import montage

    sha, size, created = zoo.store.put_bytes(montage(dataset))
    return {"sha256": sha, "size": size}, created


def _thumbnails_in_use(zoo: ZooState, sha: str) -> bool:
    """Whether a committed dataset's summary names this montage (identical data registered
    twice shares one blob)."""
    with zoo.registry.sessions() as session:
        return bool(session.scalar(select(func.count()).select_from(DatasetRow).where(
            cast(DatasetRow.summary, String).contains(sha))))


def store(zoo: ZooState, owner: str, name: str, kind: Kind, dataset: Dataset,
          blob: bytes | None, path: str | None, modality: str | None) -> DatasetPublic:
    """Blobs first (data and thumbnails), then one transaction; a refused insert removes
    the blobs it created."""
    from zoo.datasets.ingest import summarise

    sha, size, created = (None, 0, False) if blob is None else zoo.store.put_bytes(blob)
    thumbs: dict[str, Any] = {}
    thumbs_created = False
    try:
        thumbs, thumbs_created = _put_thumbnails(zoo, dataset)
        with zoo.registry.sessions.begin() as session:
            exists = session.scalar(select(func.count()).select_from(DatasetRow).where(
                DatasetRow.owner == owner, DatasetRow.name == name))
            if exists:
                raise DatasetNameTaken("name", f"you already have a dataset named '{name}'")
            row = DatasetRow(name=name, owner=owner, kind=kind, sha256=sha, path=path,
                             size=size, modality=modality, spatial_dims=dataset.spatial_dims,
                             channels=dataset.channels, image_size=dataset.image_size,
                             num_classes=dataset.num_classes,
                             labelled=dataset.labelled or dataset.has_masks,
                             summary={**summarise(dataset), "thumbnails": thumbs},
                             created_at=now())
            session.add(row)
            session.flush()
            return DatasetPublic.model_validate(row)
    except BaseException:
        if created and sha:
            zoo.registry.delete_if_unreferenced(sha)
        if thumbs_created and not _thumbnails_in_use(zoo, thumbs["sha256"]):
            zoo.store.delete(thumbs["sha256"])
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


def thumbnails(zoo: ZooState, dataset_id: int, user: User) -> tuple[Path, str]:
    """The stored montage of a dataset the user may see, and its sha256 (its ETag)."""
    dataset = owned(zoo, dataset_id, user)
    sha = (dataset.summary.get("thumbnails") or {}).get("sha256")
    path = zoo.store.path(sha) if sha else None
    if not sha or path is None or not path.is_file():
        raise NotFound("dataset_id", f"dataset {dataset_id} has no thumbnails: it was "
                       "registered before they were made; register it again to get them")
    return path, sha
