"""Canonical values, aliases and defaults of task profiles, loaded from vocabulary.yaml."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

PACKAGE_DIR = Path(__file__).resolve().parent

# Vocabulary sections that name a closed set of values, by the name users see in errors.
KINDS = {
    "task": "tasks",
    "modality": "modalities",
    "dimensionality": "dimensionalities",
    "label_regime": "label_regimes",
    "anatomy": "anatomies",
    "lesion_scale": "lesion_scales",
    "signal_organization": "signal_organizations",
    "noise": "noise_models",
}


def canonical_key(value: str) -> str:
    """Fold case, blanks and dashes so that 'X-Ray', 'x ray' and 'x_ray' compare equal."""
    return value.strip().lower().replace(" ", "_").replace("-", "_")


class UnknownValueError(ValueError):
    """A value outside the vocabulary; carries what is allowed and the closest match."""

    def __init__(self, kind: str, value: str, allowed: list[str], suggestion: str | None):
        self.kind, self.value, self.allowed, self.suggestion = kind, value, allowed, suggestion
        hint = f"; did you mean '{suggestion}'?" if suggestion else ""
        super().__init__(
            f"unknown {kind} '{value}'{hint} Allowed: {', '.join(allowed)}"
        )


@dataclass
class Vocabulary:
    raw: dict[str, Any]
    aliases: dict[str, dict[str, str]] = field(default_factory=dict)
    # Derived values that depend on the vocabulary alone (e.g. property defaults).
    memo: dict[Any, Any] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        for kind, section in KINDS.items():
            table: dict[str, str] = {}
            for name, entry in self.raw[section].items():
                name = str(name)
                table[canonical_key(name)] = name
                for alias in (entry or {}).get("aliases", []):
                    table[canonical_key(str(alias))] = name
            self.aliases[kind] = table

    def allowed(self, kind: str) -> list[str]:
        return [str(k) for k in self.raw[KINDS[kind]]]

    def normalise(self, kind: str, value: str) -> str:
        key = canonical_key(str(value))
        table = self.aliases[kind]
        if key in table:
            return table[key]
        close = difflib.get_close_matches(key, list(table), n=1, cutoff=0.6)
        suggestion = table[close[0]] if close else None
        raise UnknownValueError(kind, str(value), self.allowed(kind), suggestion)

    def modality(self, name: str) -> dict[str, Any]:
        return self.raw["modalities"][name]


@cache
def load_vocabulary(path: Path | None = None) -> Vocabulary:
    path = path or PACKAGE_DIR / "vocabulary.yaml"
    with open(path, encoding="utf-8") as fh:
        return Vocabulary(yaml.safe_load(fh))
