from __future__ import annotations

from fastapi import APIRouter, Response
from pydantic import BaseModel
from pydantic_core import to_json

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


def recommendation_json(engine: Engine, profile: TaskProfile,
                        encoders: list[EncoderFacts]) -> bytes:
    """The engine's JSON with the matching zoo encoders appended as `encoders`.

    The body is spliced rather than re-serialised: the engine's bytes are final, and the
    encoder list is the only part that depends on the zoo.
    """
    ev = engine.evaluate(profile)
    ranked = to_json(rank_encoders(ev.profile, ev.ranked, encoders))
    return ev.json[:-1] + b',"encoders":' + ranked + b"}"


@router.post("", response_model=RecommendationPublic,
             responses={422: {"description": "Unknown value or contradictory profile"}})
async def create_recommendation(profile: TaskProfile, engine: EngineDep,
                                zoo: ZooDep) -> Response:
    """Rank pretext methods, hyperparameters, augmentations, warnings and zoo encoders."""
    return Response(recommendation_json(engine, profile, zoo.encoders()),
                    media_type="application/json")
