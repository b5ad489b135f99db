from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

import service.jobs.models  # noqa: F401
from service.migrate import upgrade
from zoo.catalog import Base


def test_migrations_match_models(database_url: str) -> None:
    """`alembic upgrade head` on an empty database gives exactly the ORM's schema."""
    engine = create_engine(database_url)
    upgrade(engine)
    upgrade(engine)  # idempotent
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
    assert {"encoders", "encoder_revisions", "encoder_files", "alembic_version"} <= set(
        inspect(engine).get_table_names())
    engine.dispose()
