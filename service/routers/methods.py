from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query

from ..deps import EngineDep
from ..errors import not_found
from ..pagination import Limit, Offset, Page, page

router = APIRouter(prefix="/methods", tags=["methods"])


def method_public(engine: Any, method: Any) -> dict[str, Any]:
    out = method.model_dump()
    out["evidence"] = engine.evidence(method.references)
    return out


@router.get("", response_model=Page[dict])
def list_methods(
    engine: EngineDep,
    family: str | None = Query(None, description="contrastive_global, contrastive_local, "
                               "predictive, generative or hybrid"),
    dims: str | None = Query(None, description="2d, 3d or video"),
    tag: str | None = Query(None),
    q: str | None = Query(None, description="Text search in id, name and summary."),
    limit: Limit = 100,
    offset: Offset = 0,
) -> dict[str, Any]:
    """The pretext-method catalog (review section 4)."""
    items = []
    for m in engine.kb.methods.values():
        if family and m.family != family:
            continue
        if dims and dims not in m.dims:
            continue
        if tag and tag not in m.tags:
            continue
        if q and q.lower() not in f"{m.id} {m.name} {m.summary}".lower():
            continue
        items.append(method_public(engine, m))
    return page(items, limit, offset)


@router.get("/{method_id}")
def get_method(method_id: str, engine: EngineDep) -> dict[str, Any]:
    """One method with its defaults, data needs and expanded references."""
    method = engine.kb.methods.get(method_id)
    if method is None:
        raise not_found("method", method_id, list(engine.kb.methods))
    return method_public(engine, method)
