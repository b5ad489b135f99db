from __future__ import annotations

from fastapi import APIRouter, Query

from rules import Engine
from rules.knowledge import Method
from rules.recommendation import Evidence

from ..deps import EngineDep
from ..errors import not_found
from ..pagination import Limit, Offset, Page
from ..responses import NOT_FOUND

router = APIRouter(prefix="/methods", tags=["methods"])


class MethodPublic(Method):
    """A catalog method with its references expanded to short citations."""

    evidence: list[Evidence]


def method_public(engine: Engine, method: Method) -> MethodPublic:
    return MethodPublic(**dict(method), evidence=engine.evidence(method.references))


@router.get("")
def list_methods(
    engine: EngineDep,
    family: str | None = Query(None, description="contrastive_global, contrastive_local, "
                               "predictive, generative or hybrid"),
    dims: str | None = Query(None, description="2d, 3d or video"),
    tag: str | None = Query(None),
    q: str | None = Query(None, description="Text search in id, name and summary."),
    limit: Limit = 100,
    offset: Offset = 0,
) -> Page[MethodPublic]:
    """The pretext-method catalog (review section 4)."""
    found = [
        m for m in engine.kb.methods.values()
        if (not family or m.family == family) and (not dims or dims in m.dims)
        and (not tag or tag in m.tags)
        and (not q or q.lower() in f"{m.id} {m.name} {m.summary}".lower())
    ]
    return Page[MethodPublic](
        data=[method_public(engine, m) for m in found[offset: offset + limit]], count=len(found))


@router.get("/{method_id}", responses=NOT_FOUND)
def get_method(method_id: str, engine: EngineDep) -> MethodPublic:
    """One method with its defaults, data needs and expanded references."""
    method = engine.kb.methods.get(method_id)
    if method is None:
        raise not_found("method", method_id, list(engine.kb.methods))
    return method_public(engine, method)
