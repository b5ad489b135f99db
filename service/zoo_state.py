"""The zoo as the API process sees it: registry, blob store, ONNX sessions, and a small
in-memory index of encoders for matching, refreshed when the database changes."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from pydantic_core import to_json
from sqlalchemy.orm import Session, sessionmaker

from zoo.embed import SessionCache
from zoo.matching import EncoderFacts, encoders_by_method, match_key, rank_encoders
from zoo.registry import Registry
from zoo.storage import BlobStore


class ZooState:
    REFRESH_SECONDS = 2.0
    MATCHES_KEPT = 4096  # answers differ only by ranked methods, modality, dims, colour

    def __init__(self, sessions: sessionmaker[Session], store: BlobStore):
        self.registry = Registry(sessions, store)
        self.store = store
        self.onnx_sessions = SessionCache()
        self._lock = threading.Lock()
        self._checked = 0.0
        self._generation: tuple[int, ...] = (-1, -1, -1)
        self._facts: list[EncoderFacts] = []
        self._matches: OrderedDict[tuple[Any, ...], tuple[bytes, bytes]] = OrderedDict()

    def generation(self) -> tuple[int, ...]:
        """Registry.generation() (revisions and visibility); polled at most every couple of
        seconds, and at once after `invalidate`."""
        now = time.monotonic()
        if now - self._checked >= self.REFRESH_SECONDS:
            with self._lock:
                if now - self._checked >= self.REFRESH_SECONDS:
                    self._checked = now
                    gen = self.registry.generation()
                    if gen != self._generation:
                        rows, _ = self.registry.list(limit=100_000)
                        self._facts = [EncoderFacts(
                            name=r.name, revision=r.latest_revision, method_id=r.method_id,
                            family=r.family, modality=r.modality, spatial_dims=r.spatial_dims,
                            in_channels=r.in_channels, feature_dim=r.feature_dim)
                            for r in rows]
                        self._generation = gen
                        self._matches.clear()
        return self._generation

    def invalidate(self) -> None:
        self._checked = 0.0

    def encoders(self) -> list[EncoderFacts]:
        self.generation()
        return self._facts

    def matches_json(self, profile: dict[str, Any],
                     ranked: Sequence[tuple[str, int, str]]) -> bytes:
        """`rank_encoders` over the zoo as JSON."""
        return self._match(profile, ranked)[0]

    def members_json(self, profile: dict[str, Any],
                     ranked: Sequence[tuple[str, int, str]]) -> bytes:
        """The members a recommendation gets from the zoo: `encoders` (the best matches) and
        `encoders_by_method` (for each recommended method, the encoders pretrained with it)."""
        matches, by_method = self._match(profile, ranked)
        return b',"encoders":' + matches + b',"encoders_by_method":' + by_method

    def _match(self, profile: dict[str, Any],
               ranked: Sequence[tuple[str, int, str]]) -> tuple[bytes, bytes]:
        """Both zoo answers as JSON, memoised until the zoo changes: many profiles share
        their ranked methods, modality and dims."""
        self.generation()
        key = match_key(profile, ranked)
        with self._lock:
            hit = self._matches.get(key)
            if hit is not None:
                self._matches.move_to_end(key)
                return hit
            facts = self._facts
        answer = (to_json(rank_encoders(profile, ranked, facts)),
                  to_json(encoders_by_method(profile, ranked, facts)))
        with self._lock:
            if facts is self._facts:  # not refreshed meanwhile
                self._matches[key] = answer
                if len(self._matches) > self.MATCHES_KEPT:
                    self._matches.popitem(last=False)
        return answer
