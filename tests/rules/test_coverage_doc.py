"""docs/rules-coverage.md stays true to the knowledge base: every id it names exists, every
rule the engine loads is documented, and every guideline row has a status with a reason.

A rule added to rules/ without a line in the coverage document's reverse index fails
`test_every_loaded_id_is_in_the_reverse_index`."""

from __future__ import annotations

import collections
import fnmatch
import re
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from rules import default_engine

from .test_traceability import known_ids

DOC = Path(__file__).resolve().parents[2] / "docs" / "rules-coverage.md"
COVERAGE_TABLES = ("## Sections 4-6", "## Sections 7 and 8")
REVERSE_INDEX = "## Reverse index"
# A dotted id in backticks: `tr.small_lesions.gentle_masking`, `table3.hybrid.*`.
ID_TOKEN = re.compile(r"`([a-z][a-z0-9_]*(?:\.[a-z0-9_*]+)+)`")
FILE_SUFFIXES = (".yaml", ".yml", ".py", ".md", ".txt", ".json", ".jsonl")
STATUS = re.compile(r"^(encoded\b.*|partly: \S.*|not encoded \(\S.*\))$")


@cache
def doc() -> str:
    return DOC.read_text(encoding="utf-8")


def section(heading: str) -> str:
    """The text under a level-2 heading, up to the next level-2 heading."""
    text = doc()
    start = text.index("\n" + heading)
    end = text.find("\n## ", start + 1)
    return text[start:] if end < 0 else text[start:end]


def table_rows(heading: str) -> list[list[str]]:
    """The rows of the coverage table under a heading, as lists of cells."""
    return [[c.strip() for c in line.strip().strip("|").split(" | ")]
            for line in section(heading).splitlines()
            if line.startswith("|") and not line.startswith(("| section |", "|---"))]


def coverage_rows() -> list[list[str]]:
    return [row for heading in COVERAGE_TABLES for row in table_rows(heading)]


def status_kind(status: str) -> str:
    if status.startswith("encoded"):
        return "encoded"
    if status.startswith("partly: "):
        return "partly"
    reason = status.removeprefix("not encoded (")
    if reason.startswith("description"):
        return "description"
    if reason.startswith("outside a recommender's scope"):
        return "scope"
    return "gap"


def _vocabulary_paths(node: Any, prefix: str) -> set[str]:
    out = {prefix}
    if isinstance(node, dict):
        for key, value in node.items():
            out |= _vocabulary_paths(value, f"{prefix}.{key}")
    return out


@cache
def all_ids() -> frozenset[str]:
    """Every id an answer (or a fine-tuning job) can name, plus the vocabulary's sections."""
    kb = default_engine().kb
    ids = set(known_ids()) | {"table3.note"}
    ids |= {f.entry.id for f in kb.finetune}
    ids |= _vocabulary_paths(kb.vocabulary.raw, "vocabulary")
    return frozenset(ids)


def documented_ids() -> list[str]:
    return [t for t in ID_TOKEN.findall(doc()) if not t.endswith(FILE_SUFFIXES)]


def test_every_row_has_a_status_with_a_reason() -> None:
    rows = coverage_rows()
    assert len(rows) > 250, "the coverage tables were not found"
    bad = [r for r in rows if len(r) != 5 or not STATUS.match(r[4])]
    assert not bad, f"rows without a valid status: {bad[:5]}"
    planned = [r[:2] for r in rows if "planned" in r[3] + r[4]]
    assert not planned, f"rows still marked as planned: {planned}"
    for r in rows:
        if r[4].startswith("partly"):
            assert len(r[4]) > len("partly: ") + 20, f"partly without what is missing: {r[:2]}"


def test_every_id_in_the_doc_exists() -> None:
    ids = all_ids()
    unknown = []
    for token in set(documented_ids()):
        if "*" in token:
            if not fnmatch.filter(ids, token):
                unknown.append(token)
        elif token not in ids:
            unknown.append(token)
    assert not unknown, f"ids named in {DOC.name} that the engine does not load: {sorted(unknown)}"


def loaded_ids() -> list[str]:
    """Every id the engine loads that needs a line in the reverse index."""
    kb = default_engine().kb
    ids = [lr.rule.id for lr in kb.rules]
    ids += [c.id for c in kb.checks]
    ids += [f.entry.id for f in kb.finetune]
    ids += [step["id"] for step in kb.vocabulary.raw["label_regime"]]
    ids += [f"advice.{r}" for r in kb.regime_advice]
    ids += [f"advice.{r}.{t}" for r, a in kb.regime_advice.items() for t in a.by_task]
    ids += [f"table3.{f}.{c}" for f, row in kb.alignment.cells.items() for c in row]
    ids += [f"catalog.{m}" for m in kb.methods]
    return ids


def test_every_loaded_id_is_in_the_reverse_index() -> None:
    index = set(ID_TOKEN.findall(section(REVERSE_INDEX)))
    missing = [i for i in loaded_ids() if i not in index]
    assert not missing, (
        f"loaded but not documented in {DOC.name} (add a line to its reverse index, and "
        f"a row or a rule id in the coverage tables where a review sentence is encoded): "
        f"{missing}")


def test_every_hand_written_rule_and_check_is_in_the_doc() -> None:
    kb = default_engine().kb
    named = set(documented_ids())
    hand_written = [lr.rule.id for lr in kb.rules if not lr.rule.id.startswith("study.")]
    hand_written += [c.id for c in kb.checks]
    missing = [i for i in hand_written if i not in named]
    assert not missing, f"not in {DOC.name}: {missing}"


def test_every_reviewed_study_is_in_the_study_index() -> None:
    kb = default_engine().kb
    index = section(REVERSE_INDEX)
    missing = sorted({s.ref for s in kb.studies if f"| [{s.ref}] |" not in index})
    assert not missing, f"study table rows without a line in the study index: {missing}"


def test_counts_and_gaps_agree_with_the_tables() -> None:
    counts = {}
    for heading, label in zip(COVERAGE_TABLES, ("sections 4-6", "sections 7-8"), strict=True):
        rows = table_rows(heading)
        kinds = collections.Counter(status_kind(r[4]) for r in rows)
        counts[label] = [len(rows), kinds["encoded"], kinds["partly"], kinds["description"],
                         kinds["scope"], kinds["gap"]]
    table = {}
    for line in section("## Counts").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0].startswith("sections"):
            table[cells[0][: len("sections 4-6")]] = [int(c) for c in cells[1:]]
    assert table == counts
    gaps = [line for line in section("## Gaps").splitlines() if line.startswith("- ")]
    expected = [r for r in coverage_rows() if status_kind(r[4]) in ("partly", "gap")]
    assert len(gaps) == len(expected)
    for line, row in zip(gaps, expected, strict=True):
        assert line.startswith(f"- {row[0]}: {row[1]}") and line.endswith(row[4])


@pytest.mark.parametrize("token", ["table3.hybrid.*", "study.*", "regime.*"])
def test_patterns_resolve(token: str) -> None:
    assert fnmatch.filter(all_ids(), token)
