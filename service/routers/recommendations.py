from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from fastapi import APIRouter, Response
from pydantic import BaseModel
from pydantic_core import to_json

from rules import Engine, Recommendation, TaskProfile
from zoo.matching import EncoderFacts, rank_encoders

from ..deps import EngineDep, ZooDep
from ..responses import error

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


# (resolved profile, ranked methods) -> the matching zoo encoders as a JSON list.
Matcher = Callable[[dict[str, Any], Sequence[tuple[str, int, str]]], bytes]


def matcher_over(encoders: list[EncoderFacts]) -> Matcher:
    """A matcher over a fixed list of encoders (the CLI's local zoo)."""
    return lambda profile, ranked: to_json(rank_encoders(profile, ranked, encoders))


def recommendation_json(engine: Engine, profile: TaskProfile, matches: Matcher) -> bytes:
    """The engine's JSON with the matching zoo encoders appended as `encoders`.

    The engine's bytes are final and the encoder list is the only part that depends on the
    zoo, so the list is appended to them rather than the answer re-serialised.
    """
    ev = engine.evaluate(profile)
    return ev.with_members(b',"encoders":' + matches(ev.profile, ev.ranked))


@router.post("", response_model=RecommendationPublic,
             responses=error((422, "Unknown value or contradictory profile")))
async def create_recommendation(profile: TaskProfile, engine: EngineDep,
                                zoo: ZooDep) -> Response:
    """Rank pretext methods, hyperparameters, augmentations, warnings and zoo encoders."""
    return Response(recommendation_json(engine, profile, zoo.matches_json),
                    media_type="application/json")
