"""Jobs get a lease number (fencing token) per claim.

Revision ID: 0005_job_leases
Revises: 0004_repo_owners
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "0005_job_leases"
down_revision = "0004_repo_owners"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("lease", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("lease")
