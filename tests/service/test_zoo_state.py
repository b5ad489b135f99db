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
    assert [m["name"] for m in json.loads(first)] == ["resnet18-2d.simclr-cxr"]
    assert first == to_json(rank_encoders(ev.profile, ev.ranked, zoo.encoders()))
    assert zoo.matches_json(ev.profile, ev.ranked) is first  # memoised
    other = default_engine().evaluate(TaskProfile(task="classification", modality="ct",
                                                  dimensionality="3d", label_regime="low"))
    assert zoo.matches_json(other.profile, other.ranked) == b"[]"  # 2D encoder, 3D data
