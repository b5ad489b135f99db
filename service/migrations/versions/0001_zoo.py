"""Zoo: encoders, immutable revisions, and their files.

Revision ID: 0001_zoo
Revises:
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op

revision = "0001_zoo"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "encoders",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(96), nullable=False),
        sa.Column("architecture", sa.String(64), nullable=False),
        sa.Column("modality", sa.String(64), nullable=False),
        sa.Column("method_id", sa.String(64), nullable=False),
        sa.Column("family", sa.String(64), nullable=True),
        sa.Column("spatial_dims", sa.Integer(), nullable=False),
        sa.Column("in_channels", sa.Integer(), nullable=False),
        sa.Column("feature_dim", sa.Integer(), nullable=False),
        sa.Column("latest_revision", sa.Integer(), nullable=False),
        sa.Column("description", sa.String(2000), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_encoders_name", "encoders", ["name"], unique=True)
    op.create_index("ix_encoders_modality", "encoders", ["modality"])
    op.create_index("ix_encoders_method_id", "encoders", ["method_id"])
    op.create_index("ix_encoders_family", "encoders", ["family"])
    op.create_table(
        "encoder_revisions",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("encoder_id", sa.Integer(),
                  sa.ForeignKey("encoders.id", ondelete="CASCADE"), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("commit", sa.String(40), nullable=False),
        sa.Column("card", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("encoder_id", "number"),
    )
    op.create_index("ix_encoder_revisions_encoder_id", "encoder_revisions", ["encoder_id"])
    op.create_index("ix_encoder_revisions_commit", "encoder_revisions", ["commit"], unique=True)
    op.create_table(
        "encoder_files",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("revision_id", sa.Integer(),
                  sa.ForeignKey("encoder_revisions.id", ondelete="CASCADE"), nullable=False),
        sa.Column("filename", sa.String(255), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.UniqueConstraint("revision_id", "filename"),
    )
    op.create_index("ix_encoder_files_revision_id", "encoder_files", ["revision_id"])
    op.create_index("ix_encoder_files_sha256", "encoder_files", ["sha256"])


def downgrade() -> None:
    op.drop_table("encoder_files")
    op.drop_table("encoder_revisions")
    op.drop_table("encoders")
