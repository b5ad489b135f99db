from __future__ import annotations

import json
from collections import OrderedDict
from threading import Lock
from typing import Any

from fastapi import APIRouter, Response
from pydantic import BaseModel

from rules import Engine, Recommendation, TaskProfile
from zoo.matching import EncoderFacts, rank_encoders

from ..deps import EngineDep, ZooDep

router = APIRouter(prefix="/recommendations", tags=["recommendations"])


class EncoderMatch(BaseModel):
    rank: int
    name: str
    revision: int
    method_id: str
    modality: str
    feature_dim: int
    score: float
    reasons: list[str]


class RecommendationPublic(Recommendation):
    encoders: list[EncoderMatch]


class RecommendationCache:
    """Serialized recommendations keyed by the normalised profile.

    The engine is deterministic, so a repeated profile can be answered from memory; the
    key is the profile after alias normalisation, so 'cxr' and 'x-ray' share an entry.
    Besides the JSON it keeps the few fields that encoder matching needs.
    """

    def __init__(self, size: int = 4096):
        self.size = size
        self._items: OrderedDict[tuple[str, str], tuple[bytes, dict[str, Any]]] = OrderedDict()
        self._lock = Lock()

    def get(self, engine: Engine, profile: TaskProfile) -> tuple[bytes, dict[str, Any]]:
        key = (engine.kb.fingerprint, profile.model_dump_json())
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
                return hit
        rec = engine.recommend(profile)
        light = {
            "profile": {"dimensionality": rec.profile.dimensionality,
                        "modality": rec.profile.modality,
                        "properties": {"color": rec.profile.properties.get("color")}},
            "recommendations": [{"id": r.id, "rank": r.rank, "family": r.family}
                                for r in rec.recommendations],
        }
        value = (rec.model_dump_json().encode(), light)
        with self._lock:
            self._items[key] = value
            if len(self._items) > self.size:
                self._items.popitem(last=False)
        return value


cache = RecommendationCache()


def compose(body: bytes, light: dict[str, Any], encoders: list[EncoderFacts]) -> bytes:
    """The recommendation JSON with the ranked zoo encoders appended."""
    ranked = json.dumps(rank_encoders(light, encoders), separators=(",", ":"))
    return body[:-1] + b',"encoders":' + ranked.encode() + b"}"


def recommendation_json(engine: Engine, profile: TaskProfile,
                        encoders: list[EncoderFacts]) -> bytes:
    return compose(*cache.get(engine, profile), encoders)


@router.post("", response_model=RecommendationPublic,
             responses={422: {"description": "Unknown value or contradictory profile"}})
async def create_recommendation(profile: TaskProfile, engine: EngineDep,
                                zoo: ZooDep) -> Response:
    """Rank pretext methods, hyperparameters, augmentations, warnings and zoo encoders."""
    return Response(recommendation_json(engine, profile, zoo.encoders()),
                    media_type="application/json")
