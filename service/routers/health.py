from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field
from sqlalchemy import Engine as DbEngine

from rules.recommendation import EngineInfo

from ..db import ping
from ..deps import EngineDep

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    database: str = Field(description='"ok", or "unavailable: <error type>".')
    rules: EngineInfo


@router.get("/healthz", responses={503: {"model": Health, "description": "Database unreachable"}})
def healthz(request: Request, response: Response, engine: EngineDep) -> Health:
    """Liveness and readiness: database reachable, knowledge base loaded."""
    db_engine: DbEngine = request.app.state.db_engine
    try:
        ping(db_engine)
    except Exception as err:  # the health check reports, it does not raise
        response.status_code = 503
        return Health(status="degraded", database=f"unavailable: {type(err).__name__}",
                      rules=engine.info)
    return Health(status="ok", database="ok", rules=engine.info)
