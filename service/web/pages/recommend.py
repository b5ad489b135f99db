"""The recommendation wizard: the profile's fields as a GET form, so the URL is the
profile and a result can be shared by its link."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from rules.profile import Properties, TaskProfile

from ..api_client import ApiError
from ..context import Page

router = APIRouter(include_in_schema=False)

VOCABULARY_FIELDS = ("task", "modality", "anatomy", "dimensionality", "label_regime",
                     "lesion_scale", "signal_organization", "noise")
LIST_FIELDS = {"paired_modalities"}


def form_fields(vocabulary: Any) -> list[dict[str, Any]]:
    """Every profile and property field, with its choices and help, from the models."""
    out = []
    models = [(TaskProfile, False), (Properties, True)]
    for model, is_property in models:
        for name, info in model.model_fields.items():
            if name == "properties":
                continue
            annotation = str(info.annotation)
            kind = ("choice" if name in VOCABULARY_FIELDS else
                    "flag" if "bool" in annotation else
                    "number" if ("int" in annotation or "float" in annotation) else "text")
            out.append({"name": name, "kind": kind, "property": is_property,
                        "help": info.description or "",
                        "required": info.is_required(),
                        "choices": vocabulary.allowed(name) if kind == "choice" else [],
                        "default": None if info.default is None or info.is_required()
                        else info.default})
    return out


def profile_from(params: dict[str, str]) -> dict[str, Any]:
    """The JSON profile of the form's non-empty fields; values go as typed (the API
    parses numbers and yes/no, and names what is wrong)."""
    profile: dict[str, Any] = {}
    properties: dict[str, Any] = {}
    for name, value in params.items():
        value = value.strip()
        if not value:
            continue
        target = properties if name in Properties.model_fields else profile
        if name in LIST_FIELDS:
            target[name] = [v.strip() for v in value.split(",") if v.strip()]
        elif name in TaskProfile.model_fields or name in Properties.model_fields:
            target[name] = value
    if properties:
        profile["properties"] = properties
    return profile


@router.get("/recommend", response_class=HTMLResponse)
async def recommend(request: Request) -> HTMLResponse:
    page = Page(request)
    params = dict(request.query_params)
    fields = form_fields(request.app.state.rules_engine.kb.vocabulary)
    result, errors, status = None, {}, 200
    if params.get("task") or params.get("modality"):
        try:
            result = await page.api.post("/v1/recommendations", json=profile_from(params))
        except ApiError as err:
            if err.status != 422:
                raise
            errors, status = {k.split(".")[-1]: v for k, v in err.field_errors.items()}, 422
    if result:
        top = max((r["score"] for r in result["recommendations"]), default=1) or 1
        for rec in result["recommendations"]:
            rec["bar"] = max(0, min(100, round(100 * rec["score"] / top)))
    return page.render("recommend.html", status, fields=fields, params=params, result=result,
                       errors=errors)


@router.get("/references", response_class=HTMLResponse)
async def references(request: Request) -> HTMLResponse:
    page = Page(request)
    refs = await page.api.get("/v1/references", {"limit": 500})
    return page.render("references.html", references=refs["data"])
