from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

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


def test_encoders_from_before_owners_move_to_the_org_namespace(database_url: str) -> None:
    """Upgrading a zoo from before repositories had owners keeps every encoder, now as a
    public `taskalign/<name>` repository."""
    from datetime import UTC, datetime

    engine = create_engine(database_url)
    upgrade(engine, "0003_jobs")
    stamp = datetime(2026, 11, 1, tzinfo=UTC)
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO encoders (name, architecture, modality, method_id, spatial_dims, "
            "in_channels, feature_dim, latest_revision, description, created_at, updated_at) "
            "VALUES ('resnet18-2d.old', 'resnet18', 'x-ray', 'simclr', 2, 1, 512, 1, '', "
            ":t, :t)"), {"t": stamp})
    upgrade(engine)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT name, owner, private FROM encoders")).all()
    assert [(r[0], r[1], bool(r[2])) for r in rows] == [
        ("taskalign/resnet18-2d.old", "taskalign", False)]
    engine.dispose()


def test_lineage_parents_are_filled_from_the_latest_card(database_url: str) -> None:
    """0008 copies each repository's latest card `parent` into the indexed column; an
    older revision's parent does not count."""
    import json
    from datetime import UTC, datetime

    engine = create_engine(database_url)
    upgrade(engine, "0007_unlabelled_datasets")
    stamp = datetime(2026, 11, 1, tzinfo=UTC)
    with engine.begin() as conn:
        for i, (name, latest) in enumerate([("alice/child", 2), ("alice/root", 1)], start=1):
            conn.execute(text(
                "INSERT INTO encoders (id, name, owner, architecture, modality, method_id, "
                "spatial_dims, in_channels, feature_dim, latest_revision, description, "
                "created_at, updated_at) VALUES (:i, :n, 'alice', 'resnet18', 'xray', "
                "'simclr', 2, 1, 512, :l, '', :t, :t)"), {"i": i, "n": name, "l": latest,
                                                         "t": stamp})
        cards = [(1, 1, {"parent": "alice/stale"}), (1, 2, {"parent": "taskalign/base"}),
                 (2, 1, {})]
        for encoder_id, number, card in cards:
            conn.execute(text(
                "INSERT INTO encoder_revisions (encoder_id, number, \"commit\", card, created_at) "
                "VALUES (:e, :n, :c, :card, :t)"),
                {"e": encoder_id, "n": number, "c": f"{encoder_id}{number}" * 10,
                 "card": json.dumps(card), "t": stamp})
    upgrade(engine)
    with engine.connect() as conn:
        rows = dict(conn.execute(text("SELECT name, parent FROM encoders")).all())
    assert rows == {"alice/child": "taskalign/base", "alice/root": None}
    engine.dispose()
