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

# Error bodies quote what was sent (a name, a value, a key), so without a bound a refusal is
# as large as the request or larger. Any text is cut to MAX_TEXT characters (an echoed
# input or loc part to MAX_ECHO) and an itemised body to MAX_ITEMS items, with a note saying
# what was cut; the worst case is a few tens of KB whatever the request.
MAX_TEXT = 2048
MAX_ECHO = 256
MAX_ITEMS = 20


def cap_text(value: str, limit: int = MAX_TEXT) -> str:
    if len(value) <= limit:
        return value
    return f"{value[:limit]}... (truncated; {len(value):,} characters in all)"


def _cap_items(items: list[Any], total: int | None = None) -> list[Any]:
    """At most MAX_ITEMS items (of `total`, when only those were passed), then one saying
    how many were left out, in the same {loc, msg, type} shape."""
    total = len(items) if total is None else total
    shown = [_cap_item(i) for i in items[:MAX_ITEMS]]
    if total > len(shown):
        shown.append({"loc": [], "msg": f"and {total - len(shown):,} more errors (not shown)",
                      "type": "truncated"})
    return shown


def _cap_item(item: Any) -> Any:
    if isinstance(item, str):
        return cap_text(item)
    if not isinstance(item, dict):
        return item
    out = dict(item)
    for key, value in item.items():
        if key == "loc" and isinstance(value, list):
            out[key] = [cap_text(p, MAX_ECHO) if isinstance(p, str) else p for p in value]
        elif isinstance(value, str):
            out[key] = cap_text(value, MAX_ECHO if key == "input" else MAX_TEXT)
    return out


def _cap_detail(detail: Any) -> Any:
    if isinstance(detail, str):
        return cap_text(detail)
    if isinstance(detail, list):
        return _cap_items(detail)
    return detail


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
        errors = exc.errors()
        return JSONResponse(status_code=422, content={"detail": _cap_items(
            [_clean(e) for e in errors[:MAX_ITEMS]], len(errors))})

    @app.exception_handler(ProfileConflict)
    async def _conflict(_: Request, exc: ProfileConflict) -> JSONResponse:
        loc = ["body", *exc.field.split(".")]
        return JSONResponse(status_code=422, content={
            "detail": _cap_items([{"loc": loc, "msg": exc.reason, "type": "contradiction"}])})

    @app.exception_handler(Problem)
    async def _problem(_: Request, exc: Problem) -> JSONResponse:
        if exc.itemised:  # the same shape as a failed request validation
            return JSONResponse(status_code=exc.status, content={"detail": _cap_items([
                {"loc": ["body", *exc.field.split(".")], "msg": exc.message,
                 "type": exc.code}])})
        return JSONResponse(status_code=exc.status, content={"detail": cap_text(exc.message)})

    @app.exception_handler(RegistrationError)
    async def _registration(_: Request, exc: RegistrationError) -> JSONResponse:
        status = 409 if isinstance(exc, RegistrationConflict) else 422
        return JSONResponse(status_code=status, content={"detail": _cap_items([
            {"loc": ["body", *exc.field.split(".")], "msg": str(exc),
             "type": "registration"}])})

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        # Under /hf every 404 speaks the Hub's dialect (the huggingface_hub client reads
        # X-Error-Code), also for a URL that matched no route at all.
        if exc.status_code == 404 and request.url.path.startswith("/hf/"):
            return hub_error("RepoNotFound", "repository not found")
        detail = _cap_detail(exc.detail)
        if detail != exc.detail:
            exc = StarletteHTTPException(exc.status_code, detail, exc.headers)
        return await http_exception_handler(request, exc)
