"""Repositories record their latest card's parent, so lineage children are found by index.

Existing rows are filled from their latest revision's card.

Revision ID: 0008_encoder_parent
Revises: 0007_unlabelled_datasets
Create Date: 2026-12-04
"""

import json

import sqlalchemy as sa
from alembic import op

revision = "0008_encoder_parent"
down_revision = "0007_unlabelled_datasets"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("encoders") as batch:
        batch.add_column(sa.Column("parent", sa.String(161), nullable=True))
    op.create_index("ix_encoders_parent", "encoders", ["parent"])
    conn = op.get_bind()
    rows = conn.execute(sa.text(
        "SELECT e.id, r.card FROM encoders e JOIN encoder_revisions r "
        "ON r.encoder_id = e.id AND r.number = e.latest_revision")).all()
    for encoder_id, card in rows:
        parent = (json.loads(card) if isinstance(card, str) else card or {}).get("parent")
        if parent:
            conn.execute(sa.text("UPDATE encoders SET parent = :p WHERE id = :i"),
                         {"p": parent, "i": encoder_id})


def downgrade() -> None:
    op.drop_index("ix_encoders_parent", "encoders")
    with op.batch_alter_table("encoders") as batch:
        batch.drop_column("parent")
