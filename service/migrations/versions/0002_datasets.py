"""Datasets: validated uploads and registered paths, owned by a user.

Revision ID: 0002_datasets
Revises: 0001_zoo
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_datasets"
down_revision = "0001_zoo"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "datasets",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=True),
        sa.Column("path", sa.String(1024), nullable=True),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("modality", sa.String(64), nullable=True),
        sa.Column("spatial_dims", sa.Integer(), nullable=False),
        sa.Column("channels", sa.Integer(), nullable=False),
        sa.Column("image_size", sa.JSON(), nullable=False),
        sa.Column("num_classes", sa.Integer(), nullable=False),
        sa.Column("summary", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("owner", "name"),
    )
    op.create_index("ix_datasets_name", "datasets", ["name"])
    op.create_index("ix_datasets_owner", "datasets", ["owner"])


def downgrade() -> None:
    op.drop_table("datasets")
