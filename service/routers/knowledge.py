"""Read-only views of the knowledge base: rules, references, Table 3."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query

from ..deps import EngineDep
from ..errors import not_found
from ..pagination import Limit, Offset, Page, page

router = APIRouter(tags=["knowledge"])


@router.get("/rules", response_model=Page[dict])
def list_rules(
    engine: EngineDep,
    file: str | None = Query(None, description="e.g. tables/transfer.yaml"),
    section: str | None = Query(None, description="Review section, e.g. 6.5"),
    limit: Limit = 500,
    offset: Offset = 0,
) -> dict[str, Any]:
    """Every rule the engine evaluates, Table 3 cells included, with conditions and citations."""
    items: list[dict[str, Any]] = []
    table = engine.kb.alignment
    for family, row in table.cells.items():
        for column, cell in row.items():
            items.append({
                "id": f"table3.{family}.{column}", "file": "tables/alignment.yaml",
                "description": f"{table.families[family]['label']} is {cell.rating} for "
                               f"{table.columns[column]['label']}",
                "when": {"fact": "table3", "op": "eq", "value": column},
                "effects": [{"score": {"select": {"families": [family]},
                                       "add": table.points[cell.rating]}}],
                "rationale": cell.why or table.note, "refs": cell.refs,
                "sections": cell.sections, "source": "review Table 3 (restored)",
                "per_task": cell.per_task,
            })
    for lr in engine.kb.rules:
        items.append({"file": lr.file, **lr.rule.model_dump(exclude_none=True)})
    if file:
        items = [r for r in items if r["file"] == file]
    if section:
        items = [r for r in items if section in r.get("sections", [])]
    return page(items, limit, offset)


@router.get("/references", response_model=Page[dict])
def list_references(
    engine: EngineDep,
    q: str | None = Query(None, description="Text search in authors and title."),
    limit: Limit = 200,
    offset: Offset = 0,
) -> dict[str, Any]:
    """The review's bibliography [1]-[97], plus the second seed and method papers (ext:...)."""
    items = [r.model_dump(exclude_none=True) for r in engine.kb.references.values()]
    if q:
        items = [r for r in items if q.lower() in f"{r['authors']} {r['title']}".lower()]
    return page(items, limit, offset)


@router.get("/references/{ref_id}")
def get_reference(ref_id: str, engine: EngineDep) -> dict[str, Any]:
    """One reference by number (e.g. 23) or external id (e.g. seed2)."""
    key: int | str = int(ref_id) if ref_id.isdigit() else ref_id
    ref = engine.kb.references.get(key)
    if ref is None:
        raise not_found("reference", ref_id, [str(k) for k in engine.kb.references])
    return ref.model_dump(exclude_none=True)


@router.get("/alignment-matrix")
def alignment_matrix(engine: EngineDep) -> dict[str, Any]:
    """Review Table 3: pretext family x downstream objective, strong / moderate / weak."""
    table = engine.kb.alignment
    return {
        "note": table.note,
        "source": "Review Table 3, restored from its prose (shared/design/alignment-matrix.md)",
        "points": table.points,
        "families": table.families,
        "columns": table.columns,
        "cells": {f: {c: cell.model_dump() for c, cell in row.items()}
                  for f, row in table.cells.items()},
    }
