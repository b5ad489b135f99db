"""The zoo as the API process sees it: registry, blob store, ONNX sessions, and a small
in-memory index of encoders for matching, refreshed when the database changes."""

from __future__ import annotations

import threading
import time

from sqlalchemy.orm import Session, sessionmaker

from zoo.embed import SessionCache
from zoo.matching import EncoderFacts
from zoo.registry import Registry
from zoo.storage import BlobStore


class ZooState:
    REFRESH_SECONDS = 2.0

    def __init__(self, sessions: sessionmaker[Session], store: BlobStore):
        self.registry = Registry(sessions, store)
        self.store = store
        self.onnx_sessions = SessionCache()
        self._lock = threading.Lock()
        self._checked = 0.0
        self._generation: tuple[int, int] = (-1, -1)
        self._facts: list[EncoderFacts] = []

    def generation(self) -> tuple[int, int]:
        """(revision count, newest revision id); polled at most every couple of seconds."""
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
        return self._generation

    def invalidate(self) -> None:
        self._checked = 0.0

    def encoders(self) -> list[EncoderFacts]:
        self.generation()
        return self._facts
