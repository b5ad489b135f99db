"""Repositories say whether they hold an encoder or a task model (encoder + head).

Revision ID: 0006_task_models
Revises: 0005_job_leases
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0006_task_models"
down_revision = "0005_job_leases"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("encoders") as batch:
        batch.add_column(sa.Column("task", sa.String(32), nullable=True))
    op.create_index("ix_encoders_task", "encoders", ["task"])


def downgrade() -> None:
    op.drop_index("ix_encoders_task", "encoders")
    with op.batch_alter_table("encoders") as batch:
        batch.drop_column("task")
