from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from ..db import ping

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz(request: Request) -> JSONResponse:
    """Liveness and readiness: database reachable, knowledge base loaded."""
    engine = request.app.state.rules_engine
    status, db = 200, "ok"
    try:
        ping(request.app.state.db_engine)
    except Exception as err:  # the health check reports, it does not raise
        status, db = 503, f"unavailable: {type(err).__name__}"
    return JSONResponse(status_code=status, content={
        "status": "ok" if status == 200 else "degraded",
        "database": db,
        "rules": engine.info.model_dump(),
    })
