"""Registration against real SQLite and PostgreSQL databases, with real ONNX export."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import sessionmaker

from service.migrate import upgrade
from tests.utils import card, weights
from zoo.catalog import EncoderRow, FileRow, RevisionRow
from zoo.registry import (
    RegistrationConflict,
    RegistrationError,
    Registry,
    check_safetensors,
    prepare,
)
from zoo.storage import BlobStore


@pytest.fixture
def registry(database_url: str, tmp_path: Path) -> Registry:
    engine = create_engine(database_url)
    upgrade(engine)
    return Registry(sessionmaker(engine, expire_on_commit=False), BlobStore(tmp_path / "art"))


def counts(reg: Registry) -> tuple[int, int, int, int]:
    with reg.sessions() as s:
        return (s.scalar(select(func.count()).select_from(EncoderRow)),
                s.scalar(select(func.count()).select_from(RevisionRow)),
                s.scalar(select(func.count()).select_from(FileRow)), len(reg.store.all()))


def test_register_then_new_revision(registry: Registry) -> None:
    c = card()
    first = registry.register(prepare(c, weights(c, seed=0)), family="contrastive_global")
    assert first.revision == 1 and len(first.commit) == 40
    assert set(first.files) == {"config.json", "README.md", "model.safetensors", "model.onnx"}
    assert first.onnx_parity_max_abs_diff < 1e-4 and first.feature_dim == 64
    for entry in first.files.values():
        assert registry.store.path(entry.sha256).stat().st_size == entry.size
    with pytest.raises(RegistrationConflict, match="same weights and card"):
        registry.register(prepare(c, weights(c, seed=0)))
    edited = {**c, "description": "same weights, corrected description"}
    card_only = registry.register(prepare(edited, weights(c, seed=0)))
    assert card_only.revision == 2 and card_only.pretext.family == "contrastive_global"
    assert card_only.files["model.safetensors"] == first.files["model.safetensors"]
    c = edited
    second = registry.register(prepare(c, weights(c, seed=1)))
    assert second.revision == 3 and second.commit != first.commit
    assert registry.revision(first.repo_id, "1").commit == first.commit
    assert registry.revision(first.repo_id, None).number == 3
    assert registry.revision(first.repo_id, first.commit).number == 1
    assert counts(registry)[:2] == (1, 3)


def test_fp16_weights_accepted(registry: Registry) -> None:
    c = card(name="resnet18-2d.fp16-test")
    stored = registry.register(prepare(c, weights(c, fp16=True)))
    assert stored.onnx_parity_max_abs_diff < 1e-4


def test_pickle_checkpoint_refused_by_content() -> None:
    import torch

    buf = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, buf)
    with pytest.raises(RegistrationError, match="pickle"):
        check_safetensors(buf.getvalue())


@pytest.mark.parametrize(("mutate", "field", "message"), [
    (lambda c: c["architecture"].update({"name": "resnet99"}), "config.architecture",
     "unknown architecture"),
    (lambda c: c.update({"name": "Bad Name"}), "config", "name"),
    (lambda c: c["architecture"]["args"].update({"widths": [8, 16, 32, 128]}), "weights",
     "shape mismatch"),
    (lambda c: c.update({"architecture": {"name": "resnet10",
                                          "args": {"widths": [8, 16, 32, 64]}}}),
     "weights", "unexpected"),
])
def test_refused_uploads(mutate, field: str, message: str) -> None:  # noqa: ANN001
    original = card()
    data = weights(original)
    changed = card()
    mutate(changed)
    with pytest.raises(RegistrationError) as info:
        prepare(changed, data)
    assert info.value.field == field
    assert message in str(info.value)


def test_failed_commit_leaves_nothing(registry: Registry) -> None:
    c = card(name="resnet18-2d.broken")
    prepared = prepare(c, weights(c))
    assert counts(registry) == (0, 0, 0, 0)
    # Make the database refuse the last inserts of the transaction for real.
    with registry.sessions.begin() as session:
        session.execute(text("DROP TABLE encoder_files"))
    with pytest.raises(DBAPIError):
        registry.register(prepared)
    with registry.sessions() as s:
        assert s.scalar(select(func.count()).select_from(EncoderRow)) == 0
        assert s.scalar(select(func.count()).select_from(RevisionRow)) == 0
    assert registry.store.all() == set()


def test_huge_declared_input_is_refused_before_building_a_model() -> None:
    """A small upload must not make the server build and export a network for a 1024^3
    volume (minutes, gigabytes): the card is refused first."""
    c = card("resnet10-3d.huge", dims=3)
    c["input_size"] = [1024, 1024, 1024]
    with pytest.raises(RegistrationError, match="over the limit of 16,777,216") as info:
        prepare(c, b"\0" * 64)
    assert info.value.field == "config"


def test_repositories_are_per_owner_and_private_ones_are_hidden(registry: Registry) -> None:
    """Two owners may use one name without touching each other's repository; a private
    repository is invisible (list, get, revision, names) to anyone but its owner and admins."""
    from zoo.access import ANONYMOUS, SYSTEM, Principal

    alice, bob = Principal("alice"), Principal("bob")
    c = card()
    mine = registry.register(prepare(c, weights(c, seed=0)), owner="alice", private=True)
    theirs = registry.register(prepare(c, weights(c, seed=1)), owner="bob")
    assert mine.repo_id == f"alice/{c['name']}" and theirs.repo_id == f"bob/{c['name']}"
    assert mine.revision == theirs.revision == 1 and mine.commit != theirs.commit
    for reader, expected in ((ANONYMOUS, {theirs.repo_id}), (bob, {theirs.repo_id}),
                             (alice, {mine.repo_id, theirs.repo_id}),
                             (SYSTEM, {mine.repo_id, theirs.repo_id})):
        rows, count = registry.list(reader=reader)
        assert {r.name for r in rows} == expected and count == len(expected)
        assert set(registry.names(reader)) == expected
        assert (registry.get(mine.repo_id, reader) is not None) == (mine.repo_id in expected)
        assert (registry.revision(mine.repo_id, "1", reader) is not None) == (
            mine.repo_id in expected)
        assert registry.revision(mine.repo_id, mine.commit, reader) is None or \
            mine.repo_id in expected
    # A new revision keeps the repository's visibility unless told otherwise.
    again = registry.register(prepare(c, weights(c, seed=2)), owner="alice")
    assert again.revision == 2 and registry.get(mine.repo_id, ANONYMOUS) is None
    registry.set_private(mine.repo_id, False)
    assert registry.get(mine.repo_id, ANONYMOUS) is not None
    with pytest.raises(RegistrationError, match="namespace"):
        registry.register(prepare(c, weights(c, seed=3)), owner="Not/Valid")
