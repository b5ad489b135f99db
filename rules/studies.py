"""The reviewed studies as data, and the direct-evidence rules they imply.

`tables/studies.yaml` holds one row per study (and per stance where the review uses a
study both ways). Hand-written rules cannot give every exact-match study its due, so the
direct-evidence tier of the README's score table is generated here from the rows when the
knowledge loads; the rules are ordinary rules with ids `study.*`, traced like the others.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# Score tiers (rules/README.md): a reviewed study used the method for this task on this
# modality; the same and on this anatomy; a study the review reports as mixed.
DIRECT = 3.0
SAME_ANATOMY = 0.5
MIXED = 1.5
# A row whose modality the review does not state (taken from the paper's abstract).
INDIRECT = 1.0


class Study(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    ref: int
    methods: list[str] = []
    method_text: str
    modality: str
    anatomy: str | None = None
    tasks: list[str] = Field(min_length=1)
    dims: Literal["2d", "3d", "video"] | None = None
    label_regime: str | None = None
    stance: Literal["supports", "cautions", "mixed"] = "supports"
    sections: list[str] = Field(min_length=1)
    finding: str
    paired: list[str] = []
    note: str | None = None
    basis: Literal["review", "paper", "inferred"] = "review"


def load_studies(doc: Any, domains: dict[str, set[str] | None],
                 methods: set[str]) -> list[Study]:
    """Validate the rows against the vocabulary and the catalog."""
    rows = [Study.model_validate(raw) for raw in (doc or {}).get("studies") or []]
    for row in rows:
        where = f"ref {row.ref}"
        checks = [("modality", [row.modality]), ("anatomy", [row.anatomy] if row.anatomy else []),
                  ("task", row.tasks), ("modality", row.paired),
                  ("label_regime", [row.label_regime] if row.label_regime else [])]
        for kind, values in checks:
            for v in values:
                if v not in (domains[kind] or ()):
                    raise ValueError(f"{where}: unknown {kind} {v!r}")
        for m in row.methods:
            if m not in methods:
                raise ValueError(f"{where}: unknown method {m!r}")
    return rows


def _dims_condition(dims: str | None) -> list[dict[str, Any]]:
    # A 3D study is direct evidence for volumes only; a 2D or video one for images and
    # video alike (video studies pretrain on frames, and frame-level methods apply to each
    # frame); a study whose dimensionality is unstated for any.
    if dims == "3d":
        return [{"fact": "dims", "op": "eq", "value": "3d"}]
    if dims in ("2d", "video"):
        return [{"fact": "dims", "op": "in", "value": ["2d", "video"]}]
    return []


def _rationale(rows: list[Study]) -> str:
    return "Direct evidence: " + " ".join(f"[{r.ref}] {r.finding}" for r in rows)


def study_rules(studies: list[Study], domains: dict[str, set[str] | None]
                ) -> list[dict[str, Any]]:
    """Rules for the direct-evidence tier, plus two that say when there is none."""
    groups: dict[tuple[str, ...], list[Study]] = defaultdict(list)
    for row in studies:
        if row.stance == "cautions":
            continue
        # dims group; a label-free study is evidence only for users without labels
        dims = "3d" if row.dims == "3d" else ("2d" if row.dims else "any")
        if row.label_regime == "none":
            dims += "+nolabels"
        for task in row.tasks:
            for method in row.methods:
                groups[(row.modality, task, method, dims)].append(row)
                if row.anatomy:
                    groups[(row.modality, task, method, dims, row.anatomy)].append(row)
    out: list[dict[str, Any]] = []
    for key in sorted(groups):
        rows = groups[key]
        modality, task, method, dims = key[:4]
        anatomy = key[4] if len(key) > 4 else None
        no_labels = dims.endswith("+nolabels")
        dims = dims.removesuffix("+nolabels")
        when = [{"fact": "modality", "op": "eq", "value": modality},
                {"fact": "task", "op": "eq", "value": task},
                *_dims_condition(None if dims == "any" else dims),
                *([{"fact": "label_regime", "op": "eq", "value": "none"}] if no_labels else [])]
        # The review states the method and task; for `inferred` rows only the split between
        # modalities is ours, so they count as direct evidence; `paper` rows do not.
        stated = [r for r in rows if r.basis != "paper"]
        if anatomy and not stated:
            continue  # the anatomy refinement needs a modality the review itself states
        if anatomy:
            when.append({"fact": "anatomy", "op": "eq", "value": anatomy})
            add = SAME_ANATOMY
        elif not stated:
            add = INDIRECT
        else:
            add = DIRECT if any(r.stance == "supports" for r in stated) else MIXED
        where = f"{modality}{'/' + anatomy if anatomy else ''}"
        out.append({
            "id": ".".join(["study", modality, *([anatomy] if anatomy else []), task, method,
                            *([dims] if dims != "any" else []),
                            *(["no_labels"] if no_labels else [])]),
            "description": f"A reviewed study used {method} for {task} on {where}"
                           f"{'' if dims == 'any' else f' ({dims})'}"
                           f"{' without labels' if no_labels else ''}.",
            "when": {"all": when},
            "effects": [{"score": {"select": {"methods": [method]}, "add": add}}],
            "rationale": _rationale(rows),
            "refs": sorted({r.ref for r in rows}),
            "sections": sorted({s for r in rows for s in r.sections}),
            "source": "rules/tables/studies.yaml (direct-evidence tier)",
        })
    # Modalities the review names as the subject of a study; a modality taken only from a
    # paper's abstract does not count, and one used only as a paired second modality is
    # reported as such.
    studied = sorted({r.modality for r in studies if r.basis != "paper"})
    paired_only = sorted({p for r in studies for p in r.paired} - set(studied))
    paper_only = sorted({r.modality for r in studies} - set(studied) - set(paired_only))
    never = sorted((domains["modality"] or set()) - set(studied) - set(paired_only)
                   - set(paper_only))
    compare = "Compare the top methods, and random initialisation, on your own validation data."
    kinds = [  # (rule id, modalities, description, warning, rationale, why)
        ("study.none.modality", never, "No reviewed study used this modality.",
         "None of the 75 reviewed studies used this modality: the ranking transfers trends "
         f"seen on other modalities and has no direct evidence. {compare}",
         "The study table has no row for this modality.", "no matching row"),
        ("study.paper_only.modality", paper_only,
         "The review names no study on this modality; one reviewed study's paper used it.",
         "The review itself names no study on this modality; one reviewed study used it "
         "according to its own paper, not the review. The ranking rests mostly on trends "
         "seen on other modalities: compare the top methods, and random initialisation, on "
         "your own validation data.",
         "The study table has rows for this modality only with basis `paper`.",
         "basis paper only"),
        ("study.paired_only.modality", paired_only,
         "Reviewed studies used this modality only as a paired second modality.",
         "The reviewed studies used this modality only as the second, paired modality of "
         "another (for example angiography or OCT beside fundus photographs), never as the "
         "images a downstream task was evaluated on: the ranking has no direct evidence for "
         f"it. {compare}",
         "The study table lists this modality only under `paired`.", "paired modality only"),
    ]
    for rule_id, modalities, description, message, rationale, why in kinds:
        if modalities:
            out.append({
                "id": rule_id, "description": description,
                "when": {"fact": "modality", "op": "in", "value": modalities},
                "effects": [{"warn": {"code": "indirect_evidence_modality",
                                      "severity": "medium", "message": message}}],
                "rationale": rationale, "sections": ["5.3"],
                "source": f"rules/tables/studies.yaml ({why})",
            })
    pairs = sorted({(r.modality, t) for r in studies for t in r.tasks if r.basis != "paper"})
    out.append({
        "id": "study.none.task",
        "description": "No reviewed study did this task on this modality.",
        "when": {"all": [{"fact": "modality", "op": "in", "value": studied},
                         {"not": {"any": [{"all": [{"fact": "modality", "op": "eq", "value": m},
                                                   {"fact": "task", "op": "eq", "value": t}]}
                                          for m, t in pairs]}}]},
        "effects": [{"note": "No reviewed study did this task on this modality: no method gets "
                             "the direct-evidence bonus, and the ranking rests on Table 3 and on "
                             "trends from other tasks on this modality."}],
        "rationale": "The study table has no row for this modality and task.",
        "sections": ["5.1", "5.3"],
        "source": "rules/tables/studies.yaml (no matching row)",
    })
    return out
