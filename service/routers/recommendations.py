from __future__ import annotations

from collections import OrderedDict
from threading import Lock

from fastapi import APIRouter, Response

from rules import Engine, Recommendation, TaskProfile

from ..deps import EngineDep

router = APIRouter(prefix="/recommendations", tags=["recommendations"])


class RecommendationCache:
    """Serialized recommendations keyed by the normalised profile.

    The engine is deterministic, so a repeated profile can be answered from memory; the
    key is the profile after alias normalisation, so 'cxr' and 'x-ray' share an entry.
    """

    def __init__(self, size: int = 4096):
        self.size = size
        self._items: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        self._lock = Lock()

    def get(self, engine: Engine, profile: TaskProfile) -> bytes:
        key = (engine.kb.fingerprint, profile.model_dump_json())
        with self._lock:
            body = self._items.get(key)
            if body is not None:
                self._items.move_to_end(key)
                return body
        body = engine.recommend(profile).model_dump_json().encode()
        with self._lock:
            self._items[key] = body
            if len(self._items) > self.size:
                self._items.popitem(last=False)
        return body


cache = RecommendationCache()


@router.post("", response_model=Recommendation,
             responses={422: {"description": "Unknown value or contradictory profile"}})
async def create_recommendation(profile: TaskProfile, engine: EngineDep) -> Response:
    """Rank pretext methods, hyperparameters, augmentations and warnings for a task profile."""
    return Response(cache.get(engine, profile), media_type="application/json")
