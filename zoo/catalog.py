"""SQL tables of the zoo. Revisions are immutable: new weights add a row, never update one."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Dialect,
    ForeignKey,
    Integer,
    String,
    UniqueConstraint,
    false,
    true,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator


class UtcDateTime(TypeDecorator[datetime]):
    """A timestamp that reads back timezone-aware (UTC) on every database: SQLite keeps no
    zone, and a naive time in an API answer is not an RFC 3339 date-time."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    pass


class EncoderRow(Base):
    """A repository: `name` is the repo id `owner/short-name`, unique."""

    __tablename__ = "encoders"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(161), unique=True, index=True)
    owner: Mapped[str] = mapped_column(String(64), index=True)
    private: Mapped[bool] = mapped_column(Boolean, server_default=false())
    # None for an encoder; the task kind ("classification") for a task model.
    task: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    architecture: Mapped[str] = mapped_column(String(64))
    modality: Mapped[str] = mapped_column(String(64), index=True)
    method_id: Mapped[str] = mapped_column(String(64), index=True)
    family: Mapped[str | None] = mapped_column(String(64), index=True)
    # The latest card's parent (owner/name): lineage children are an indexed lookup.
    parent: Mapped[str | None] = mapped_column(String(161), nullable=True, index=True)
    spatial_dims: Mapped[int] = mapped_column(Integer)
    in_channels: Mapped[int] = mapped_column(Integer)
    feature_dim: Mapped[int] = mapped_column(Integer)
    latest_revision: Mapped[int] = mapped_column(Integer)
    description: Mapped[str] = mapped_column(String(2000), default="")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())

    revisions: Mapped[list[RevisionRow]] = relationship(
        back_populates="encoder", order_by="RevisionRow.number")


class RevisionRow(Base):
    __tablename__ = "encoder_revisions"
    __table_args__ = (UniqueConstraint("encoder_id", "number"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    encoder_id: Mapped[int] = mapped_column(ForeignKey("encoders.id", ondelete="CASCADE"),
                                            index=True)
    number: Mapped[int] = mapped_column(Integer)
    commit: Mapped[str] = mapped_column(String(40), unique=True, index=True)
    card: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())

    encoder: Mapped[EncoderRow] = relationship(back_populates="revisions")
    files: Mapped[list[FileRow]] = relationship(back_populates="revision",
                                                order_by="FileRow.filename")


class FileRow(Base):
    __tablename__ = "encoder_files"
    __table_args__ = (UniqueConstraint("revision_id", "filename"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    revision_id: Mapped[int] = mapped_column(
        ForeignKey("encoder_revisions.id", ondelete="CASCADE"), index=True)
    filename: Mapped[str] = mapped_column(String(255))
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size: Mapped[int] = mapped_column(Integer)

    revision: Mapped[RevisionRow] = relationship(back_populates="files")


class DatasetRow(Base):
    """A validated dataset, stored as one canonical npz blob (or a registered path)."""

    __tablename__ = "datasets"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), index=True)
    owner: Mapped[str] = mapped_column(String(64), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # npz | folder | path
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    path: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    size: Mapped[int] = mapped_column(Integer)
    modality: Mapped[str | None] = mapped_column(String(64), nullable=True)
    spatial_dims: Mapped[int] = mapped_column(Integer)
    channels: Mapped[int] = mapped_column(Integer)
    image_size: Mapped[list[int]] = mapped_column(JSON)
    num_classes: Mapped[int] = mapped_column(Integer)  # 0 when unlabelled
    # Images only (for pretraining): no class counts, no fine-tuning or evaluation on it.
    labelled: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    summary: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())

    __table_args__ = (UniqueConstraint("owner", "name"),)
