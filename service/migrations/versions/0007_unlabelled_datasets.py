"""Datasets may be unlabelled (images only, for pretraining).

Every dataset registered before this revision was labelled: the column defaults to true.

Revision ID: 0007_unlabelled_datasets
Revises: 0006_task_models
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

revision = "0007_unlabelled_datasets"
down_revision = "0006_task_models"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("datasets") as batch:
        batch.add_column(sa.Column("labelled", sa.Boolean(), nullable=False,
                                   server_default=sa.true()))


def downgrade() -> None:
    with op.batch_alter_table("datasets") as batch:
        batch.drop_column("labelled")
