"""Encoder repositories get an owner and a visibility; names become `owner/name`.

Encoders registered before owners existed were the seed zoo or admin uploads: they move to
the organisation's namespace (`taskalign/`) and stay public.

Revision ID: 0004_repo_owners
Revises: 0003_jobs
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_repo_owners"
down_revision = "0003_jobs"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("encoders") as batch:
        batch.add_column(sa.Column("owner", sa.String(64), nullable=False,
                                   server_default="taskalign"))
        batch.add_column(sa.Column("private", sa.Boolean(), nullable=False,
                                   server_default=sa.false()))
        batch.alter_column("name", type_=sa.String(161), existing_type=sa.String(96),
                           existing_nullable=False)
    op.execute("UPDATE encoders SET name = 'taskalign/' || name WHERE name NOT LIKE '%/%'")
    with op.batch_alter_table("encoders") as batch:
        batch.alter_column("owner", server_default=None, existing_type=sa.String(64),
                           existing_nullable=False)
    op.create_index("ix_encoders_owner", "encoders", ["owner"])


def downgrade() -> None:
    op.drop_index("ix_encoders_owner", "encoders")
    op.execute("UPDATE encoders SET name = substr(name, length(owner) + 2)")
    with op.batch_alter_table("encoders") as batch:
        batch.drop_column("private")
        batch.drop_column("owner")
        batch.alter_column("name", type_=sa.String(96), existing_type=sa.String(161),
                           existing_nullable=False)
