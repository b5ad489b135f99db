"""Read-only views of the knowledge base: rules, references, Table 3."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field, SerializerFunctionWrapHandler, model_serializer

from rules import Engine
from rules.knowledge import (
    Cell,
    Effect,
    Family,
    FinetuneValues,
    Reference,
    RefId,
    ScoreEffect,
    Selector,
)

from ..deps import EngineDep
from ..errors import not_found
from ..pagination import Limit, Offset, Page
from ..responses import NOT_FOUND

router = APIRouter(tags=["knowledge"])

Rating = Literal["strong", "moderate", "weak"]
ALIGNMENT_FILE = "tables/alignment.yaml"
FINETUNE_FILE = "tables/finetune.yaml"


class RulePublic(BaseModel):
    """One rule: a Table 3 cell, a rule-table entry or a fine-tuning default."""

    id: str
    file: str = Field(description="Knowledge file it comes from, e.g. tables/transfer.yaml.")
    description: str
    when: dict[str, Any] | None = Field(
        None, description="Condition on the task profile; null: always applies.")
    effects: list[Effect] | None = Field(
        None, description="What the rule does to the ranking (Table 3 and rule tables).")
    set: FinetuneValues | None = Field(
        None, description=f"Fine-tuning values the entry sets ({FINETUNE_FILE}).")
    rationale: str
    refs: list[RefId]
    sections: list[str] = []
    source: str | None = None
    per_task: dict[str, Rating] | None = Field(
        None, description="Table 3 only: tasks whose rating differs from the cell's.")

    @model_serializer(mode="wrap")
    def _always_when(self, handler: SerializerFunctionWrapHandler):  # unannotated: keeps schema
        # The route drops nulls; `when: null` is kept, it means "always applies".
        out = handler(self)
        out.setdefault("when", None)
        return out


class AlignmentMatrix(BaseModel):
    """Review Table 3 with its scoring points."""

    note: str
    source: str
    points: dict[Rating, float]
    families: dict[Family, dict[str, str]]
    columns: dict[str, dict[str, Any]]
    cells: dict[Family, dict[str, Cell]]


def all_rules(engine: Engine) -> list[RulePublic]:
    """Table 3 cells, then the rule tables, then the fine-tuning defaults, as evaluated."""
    table = engine.kb.alignment
    items = [
        RulePublic(
            id=f"table3.{family}.{column}", file=ALIGNMENT_FILE,
            description=f"{table.families[family]['label']} is {cell.rating} for "
                        f"{table.columns[column]['label']}",
            when={"fact": "table3", "op": "eq", "value": column},
            effects=[Effect(score=ScoreEffect(select=Selector(families=[family]),
                                              add=table.points[cell.rating]))],
            rationale=cell.why or table.note, refs=cell.refs, sections=cell.sections,
            source="review Table 3 (restored)", per_task=cell.per_task,
        )
        for family, row in table.cells.items() for column, cell in row.items()
    ]
    items += [RulePublic(file=lr.file, **dict(lr.rule)) for lr in engine.kb.rules]
    # Fine-tuning defaults change no ranking: `effects` is empty, `set` holds the values.
    items += [RulePublic(file=FINETUNE_FILE, effects=[], **dict(lf.entry))
              for lf in engine.kb.finetune]
    return items


@router.get("/rules", response_model_exclude_none=True)
def list_rules(
    engine: EngineDep,
    file: str | None = Query(None, description="e.g. tables/transfer.yaml"),
    section: str | None = Query(None, description="Review section, e.g. 6.5"),
    limit: Limit = 500,
    offset: Offset = 0,
) -> Page[RulePublic]:
    """Every rule the engine evaluates, Table 3 cells and fine-tuning defaults included."""
    items = [r for r in all_rules(engine)
             if (not file or r.file == file) and (not section or section in r.sections)]
    return Page[RulePublic](data=items[offset: offset + limit], count=len(items))


@router.get("/references", response_model_exclude_none=True)
def list_references(
    engine: EngineDep,
    q: str | None = Query(None, description="Text search in authors and title."),
    limit: Limit = 200,
    offset: Offset = 0,
) -> Page[Reference]:
    """The review's bibliography [1]-[97], plus the second seed and method papers (ext:...)."""
    items = [r for r in engine.kb.references.values()
             if not q or q.lower() in f"{r.authors} {r.title}".lower()]
    return Page[Reference](data=items[offset: offset + limit], count=len(items))


@router.get("/references/{ref_id}", response_model_exclude_none=True, responses=NOT_FOUND)
def get_reference(ref_id: str, engine: EngineDep) -> Reference:
    """One reference by number (e.g. 23) or external id (e.g. seed2)."""
    key: int | str = int(ref_id) if ref_id.isascii() and ref_id.isdigit() else ref_id
    ref = engine.kb.references.get(key)
    if ref is None:
        raise not_found("reference", ref_id, [str(k) for k in engine.kb.references])
    return ref


@router.get("/alignment-matrix")
def alignment_matrix(engine: EngineDep) -> AlignmentMatrix:
    """Review Table 3: pretext family x downstream objective, strong / moderate / weak."""
    table = engine.kb.alignment
    return AlignmentMatrix(
        note=table.note,
        source="Review Table 3, restored from its prose (shared/design/alignment-matrix.md)",
        points=table.points, families=table.families, columns=table.columns,
        cells=table.cells,
    )
