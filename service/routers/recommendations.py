from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from fastapi import APIRouter, Response
from pydantic import BaseModel
from pydantic_core import to_json

from rules import Engine, Recommendation, TaskProfile
from zoo.matching import EncoderFacts, encoders_by_method, rank_encoders

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
    encoders_by_method: dict[str, list[str]]
    """For each recommended method, the zoo encoders pretrained with it that fit the data's
    dimensionality (repository names): what to download or fine-tune for that line."""


# (resolved profile, ranked methods) -> the zoo's members of the answer as JSON bytes:
# b',"encoders":[...],"encoders_by_method":{...}'.
Matcher = Callable[[dict[str, Any], Sequence[tuple[str, int, str]]], bytes]


def matcher_over(encoders: list[EncoderFacts]) -> Matcher:
    """A matcher over a fixed list of encoders (the CLI's local zoo)."""
    return lambda profile, ranked: (
        b',"encoders":' + to_json(rank_encoders(profile, ranked, encoders))
        + b',"encoders_by_method":' + to_json(encoders_by_method(profile, ranked, encoders)))


def recommendation_json(engine: Engine, profile: TaskProfile, members: Matcher) -> bytes:
    """The engine's JSON with the zoo's members appended (`encoders`, `encoders_by_method`).

    The engine's bytes are final and these members are the only part that depends on the
    zoo, so they are appended rather than the answer re-serialised.
    """
    ev = engine.evaluate(profile)
    return ev.with_members(members(ev.profile, ev.ranked))


@router.post("", response_model=RecommendationPublic,
             responses=error((422, "Unknown value or contradictory profile")))
async def create_recommendation(profile: TaskProfile, engine: EngineDep,
                                zoo: ZooDep) -> Response:
    """Rank pretext methods, hyperparameters, augmentations, warnings and zoo encoders."""
    return Response(recommendation_json(engine, profile, zoo.members_json),
                    media_type="application/json")
