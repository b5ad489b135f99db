"""rules/tables/studies.yaml: one row per reviewed study, checked against the knowledge files.

Reads the YAML files directly (no engine), so it stays fast and independent of the loader.
"""

from __future__ import annotations

from collections import Counter
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from rules.vocabulary import PACKAGE_DIR

RULES = Path(PACKAGE_DIR)
FIELDS = {"ref", "methods", "method_text", "modality", "anatomy", "tasks", "dims",
          "label_regime", "stance", "sections", "finding", "paired", "note", "basis"}
REQUIRED = FIELDS - {"paired", "note", "basis"}
DIMS = {"2d", "3d", "video", None}
STANCES = {"supports", "cautions", "mixed"}
# Cited in 4.1.1 only to introduce SimCLR and MoCo: method papers, not reviewed studies.
METHOD_PAPERS = {10, 27}


def _load(rel: str) -> Any:
    with open(RULES / rel, encoding="utf-8") as f:
        return yaml.safe_load(f)


@cache
def rows() -> list[dict[str, Any]]:
    return _load("tables/studies.yaml")["studies"]


@cache
def references() -> dict[Any, list[str]]:
    return {r["id"]: [str(s) for s in r.get("cited_in") or []]
            for r in _load("references.yaml")["references"]}


@cache
def vocabulary() -> dict[str, set[str]]:
    v = _load("vocabulary.yaml")
    return {k: set(v[k]) for k in ("tasks", "modalities", "anatomies", "label_regimes")}


@cache
def catalog_ids() -> set[str]:
    ids: set[str] = set()
    for path in sorted((RULES / "catalog").glob("*.yaml")):
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        ids.update(m["id"] for m in doc.get("methods") or [])
    return ids


def test_at_least_75_distinct_studies() -> None:
    assert len({r["ref"] for r in rows()}) >= 75


def test_refs_are_the_studies_sections_4_and_5_cite() -> None:
    cited = {rid for rid, secs in references().items()
             if isinstance(rid, int) and any(s[0] in "45" for s in secs)}
    assert {r["ref"] for r in rows()} == cited - METHOD_PAPERS


def test_fields() -> None:
    for r in rows():
        keys = set(r)
        assert REQUIRED <= keys <= FIELDS, (r.get("ref"), keys ^ REQUIRED)
        assert isinstance(r["ref"], int), r


def test_refs_exist() -> None:
    refs = references()
    for r in rows():
        assert r["ref"] in refs, r["ref"]


def test_methods_in_catalog() -> None:
    ids = catalog_ids()
    assert ids
    for r in rows():
        assert isinstance(r["methods"], list), r["ref"]
        for m in r["methods"]:
            assert m in ids, (r["ref"], m)
        assert r["method_text"].strip(), r["ref"]


def test_values_are_canonical() -> None:
    v = vocabulary()
    for r in rows():
        ref = r["ref"]
        assert r["modality"] in v["modalities"], (ref, r["modality"])
        for p in r.get("paired", []):
            assert p in v["modalities"], (ref, p)
        assert r["anatomy"] is None or r["anatomy"] in v["anatomies"], (ref, r["anatomy"])
        assert r["tasks"] and len(set(r["tasks"])) == len(r["tasks"]), ref
        for t in r["tasks"]:
            assert t in v["tasks"], (ref, t)
        assert r["dims"] in DIMS, (ref, r["dims"])
        regime = r["label_regime"]
        assert regime is None or regime in v["label_regimes"], (ref, regime)


def test_sections_stance_and_finding() -> None:
    refs = references()
    for r in rows():
        ref = r["ref"]
        assert r["sections"], ref
        for s in r["sections"]:
            assert isinstance(s, str) and s[0] in "456", (ref, s)
            # Each section must be one where the bibliography says the study is cited.
            assert s in refs[ref], (ref, s)
        assert r["stance"] in STANCES, (ref, r["stance"])
        assert isinstance(r["finding"], str) and r["finding"].strip(), ref


def test_uncatalogued_methods_and_approximations_explained() -> None:
    for r in rows():
        if not r["methods"]:
            assert len(r["method_text"]) > 20, r["ref"]
        if "note" in r:
            assert isinstance(r["note"], str) and r["note"].strip(), r["ref"]


def test_one_row_per_study_modality_and_stance() -> None:
    counts = Counter((r["ref"], r["modality"], r["stance"]) for r in rows())
    assert not [k for k, n in counts.items() if n > 1]
