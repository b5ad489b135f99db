"""Uniform 4xx bodies: every error says what was wrong and what is allowed."""

from __future__ import annotations

import difflib
import logging
import math
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from rules import ProfileConflict
from zoo.registry import RegistrationConflict, RegistrationError

from .problems import Problem
from .routers.hf import hub_error

log = logging.getLogger("taskalign")


def not_found(kind: str, key: str, known: list[str]) -> HTTPException:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return HTTPException(status_code=404, detail=f"unknown {kind} '{key}'{hint}")


def _clean(error: dict[str, Any]) -> dict[str, Any]:
    out = {"loc": list(error.get("loc", ())), "msg": error.get("msg", ""),
           "type": error.get("type", "")}
    ctx = error.get("ctx") or {}
    for key in ("allowed", "did_you_mean"):
        if key in ctx:
            out[key] = ctx[key]
    if "input" in error and error.get("type") != "json_invalid":
        value = error["input"]
        if isinstance(value, float) and not math.isfinite(value):
            out["input"] = str(value)  # JSON has no NaN or Infinity
        elif isinstance(value, str | int | float | bool) or value is None:
            out["input"] = value
    return out


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": [_clean(e) for e in exc.errors()]})

    @app.exception_handler(ProfileConflict)
    async def _conflict(_: Request, exc: ProfileConflict) -> JSONResponse:
        loc = ["body", *exc.field.split(".")]
        return JSONResponse(status_code=422, content={
            "detail": [{"loc": loc, "msg": exc.reason, "type": "contradiction"}]})

    @app.exception_handler(Problem)
    async def _problem(_: Request, exc: Problem) -> JSONResponse:
        if exc.itemised:  # the same shape as a failed request validation
            return JSONResponse(status_code=exc.status, content={"detail": [
                {"loc": ["body", *exc.field.split(".")], "msg": exc.message,
                 "type": exc.code}]})
        return JSONResponse(status_code=exc.status, content={"detail": exc.message})

    @app.exception_handler(RegistrationError)
    async def _registration(_: Request, exc: RegistrationError) -> JSONResponse:
        status = 409 if isinstance(exc, RegistrationConflict) else 422
        return JSONResponse(status_code=status, content={"detail": [
            {"loc": ["body", *exc.field.split(".")], "msg": str(exc),
             "type": "registration"}]})

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        # Under /hf every 404 speaks the Hub's dialect (the huggingface_hub client reads
        # X-Error-Code), also for a URL that matched no route at all.
        if exc.status_code == 404 and request.url.path.startswith("/hf/"):
            return hub_error("RepoNotFound", "repository not found")
        return await http_exception_handler(request, exc)
