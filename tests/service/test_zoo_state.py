"""The API's view of the zoo: encoder matches are memoised per zoo state and forgotten
when the zoo changes."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic_core import to_json
from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

from rules import TaskProfile, default_engine
from service.migrate import upgrade
from service.zoo_state import ZooState
from tests.utils import card, weights
from zoo.matching import rank_encoders
from zoo.registry import prepare
from zoo.storage import BlobStore


def test_matches_follow_the_zoo(tmp_path: Path) -> None:
    db = create_engine(f"sqlite:///{tmp_path / 'zoo.db'}")
    upgrade(db)
    zoo = ZooState(sessionmaker(db, expire_on_commit=False), BlobStore(tmp_path / "art"))
    ev = default_engine().evaluate(TaskProfile(task="classification", modality="xray",
                                               label_regime="low"))
    assert zoo.matches_json(ev.profile, ev.ranked) == b"[]"
    c = card("resnet18-2d.simclr-cxr", modality="xray")
    zoo.registry.register(prepare(c, weights(c)), family="contrastive_global")
    zoo.invalidate()
    first = zoo.matches_json(ev.profile, ev.ranked)
    assert [m["name"] for m in json.loads(first)] == ["taskalign/resnet18-2d.simclr-cxr"]
    assert first == to_json(rank_encoders(ev.profile, ev.ranked, zoo.encoders()))
    assert zoo.matches_json(ev.profile, ev.ranked) is first  # memoised
    other = default_engine().evaluate(TaskProfile(task="classification", modality="ct",
                                                  dimensionality="3d", label_regime="low"))
    assert zoo.matches_json(other.profile, other.ranked) == b"[]"  # 2D encoder, 3D data


def test_matches_forget_a_repository_made_private(tmp_path: Path) -> None:
    """The index behind recommendations holds public encoders only; a visibility change is
    a zoo change (no revision is added), so a repository made private leaves the answers
    at once, and comes back when made public again."""
    db = create_engine(f"sqlite:///{tmp_path / 'zoo.db'}")
    upgrade(db)
    zoo = ZooState(sessionmaker(db, expire_on_commit=False), BlobStore(tmp_path / "art"))
    ev = default_engine().evaluate(TaskProfile(task="classification", modality="xray",
                                               label_regime="low"))
    c = card("resnet18-2d.simclr-cxr", modality="xray")
    stored = zoo.registry.register(prepare(c, weights(c)), family="contrastive_global",
                                   owner="alice")
    zoo.invalidate()
    assert [m["name"] for m in json.loads(zoo.matches_json(ev.profile, ev.ranked))] == [
        stored.repo_id]
    before = zoo.registry.generation()
    zoo.registry.set_private(stored.repo_id, True)
    assert zoo.registry.generation() != before
    zoo.invalidate()
    assert zoo.matches_json(ev.profile, ev.ranked) == b"[]"
    zoo.registry.set_private(stored.repo_id, False)
    zoo.invalidate()
    assert [m["name"] for m in json.loads(zoo.matches_json(ev.profile, ev.ranked))] == [
        stored.repo_id]
    db.dispose()
