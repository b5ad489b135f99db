"""Canonical values, aliases and defaults of task profiles, loaded from vocabulary.yaml,
and the small generic code that reads it: alias lookup with a closest match, the label
regime steps and count warnings (conditions over count facts), the order of the default
layers and where each property applies. Anything malformed stops loading with the entry."""

from __future__ import annotations

import difflib
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from .conditions import ConditionError, Predicate, compile_condition

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


# The default layers `default_precedence` orders, by the name the vocabulary uses.
DEFAULT_LAYERS = ("global", "anatomy", "modality", "pair", "dims")

# Facts the label regime steps and count warnings may read: the counts, two ratios, the
# dimensionality (what a count counts) and the task (whether labels are per image).
COUNT_FACTS = ("labeled", "unlabeled", "classes", "labels_per_class", "labeled_fraction",
               "dims", "task")


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


class VocabularyError(ValueError):
    """vocabulary.yaml is invalid; names the entry."""

    def __init__(self, entry: str, message: str):
        self.entry = entry
        super().__init__(f"vocabulary.yaml: {entry}: {message}")


def suggest(name: str, allowed: list[str], hints: Mapping[str, str] | None = None
            ) -> str | None:
    """The allowed name closest to `name`: a known misnomer (`hints`), the same name up to
    case and dashes, a close spelling, or the one allowed name it begins."""
    key = canonical_key(str(name))
    by_key = {canonical_key(a): a for a in allowed}
    hinted = (hints or {}).get(key)
    if hinted in allowed:
        return hinted
    if key in by_key:
        return by_key[key]
    close = difflib.get_close_matches(key, list(by_key), n=1, cutoff=0.6)
    if close:
        return by_key[close[0]]
    starts = [a for k, a in by_key.items() if key and k.startswith(key)]
    return starts[0] if len(starts) == 1 else None


def count_facts(labeled: int, unlabeled: int | None, classes: int | None, dims: str,
                task: str) -> dict[str, Any]:
    """The facts label regime steps and count warnings test (see vocabulary.yaml)."""
    return {
        "labeled": labeled,
        "unlabeled": unlabeled,
        "classes": classes,
        "labels_per_class": labeled / classes if classes else None,
        "labeled_fraction": None if unlabeled is None else (
            labeled / (labeled + unlabeled) if labeled + unlabeled else 0.0),
        "dims": dims,
        "task": task,
    }


@dataclass(frozen=True)
class RegimeStep:
    """One step of the label regime derivation; `when` None: always."""

    id: str
    regime: str
    when: Predicate | None
    explain: str


@dataclass(frozen=True)
class CountWarning:
    code: str
    when: Predicate
    message: str


@dataclass
class Vocabulary:
    raw: dict[str, Any]
    aliases: dict[str, dict[str, str]] = field(default_factory=dict)
    # Derived values that depend on the vocabulary alone (e.g. property defaults).
    memo: dict[Any, Any] = field(default_factory=dict, repr=False, compare=False)
    regime_steps: list[RegimeStep] = field(default_factory=list, repr=False)
    count_warnings: list[CountWarning] = field(default_factory=list, repr=False)
    # Property name -> (modalities where it may be true, why).
    property_applies: dict[str, tuple[frozenset[str], str]] = field(default_factory=dict,
                                                                     repr=False)
    field_hints: dict[str, str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for kind, section in KINDS.items():
            table: dict[str, str] = {}
            for name, entry in self.raw[section].items():
                name = str(name)
                for word in (name, *(str(a) for a in (entry or {}).get("aliases", []))):
                    key = canonical_key(word)
                    if table.get(key, name) != name:
                        raise VocabularyError(f"{section}.{name}", f"'{word}' already names "
                                              f"{kind} '{table[key]}'")
                    table[key] = name
            self.aliases[kind] = table
        self._check_modalities()
        self._load_precedence()
        self._load_property_applies()
        self._load_counts()
        self.field_hints = {canonical_key(str(k)): str(v)
                            for k, v in (self.raw.get("field_hints") or {}).items()}

    def _check_modalities(self) -> None:
        dims = set(self.allowed("dimensionality"))
        anatomies = set(self.allowed("anatomy"))
        for name, entry in self.raw["modalities"].items():
            where = f"modalities.{name}"
            if not set(entry["dims"]) <= dims or entry["default_dims"] not in entry["dims"]:
                raise VocabularyError(where, f"dims {entry['dims']} / default_dims "
                                      f"{entry['default_dims']!r} outside {sorted(dims)}")
            if not set(entry.get("anatomies") or []) <= anatomies:
                raise VocabularyError(where, f"unknown anatomy in {entry['anatomies']}")
        for pair in self.raw.get("pair_defaults") or {}:
            modality, _, anatomy = str(pair).partition(":")
            if modality not in self.raw["modalities"] or anatomy not in anatomies:
                raise VocabularyError(f"pair_defaults.{pair}", "expected 'modality:anatomy' "
                                      "with a known modality and anatomy")
        for key in self.raw.get("dims_defaults") or {}:
            if key not in dims:
                raise VocabularyError(f"dims_defaults.{key}", "unknown dimensionality")

    def _load_precedence(self) -> None:
        order = self.raw.get("default_precedence")
        if not isinstance(order, list) or sorted(order) != sorted(DEFAULT_LAYERS):
            raise VocabularyError("default_precedence", "list each of "
                                  f"{', '.join(DEFAULT_LAYERS)} once, weakest first")

    def _load_property_applies(self) -> None:
        modalities = set(self.raw["modalities"])
        for prop, spec in (self.raw.get("property_applies") or {}).items():
            where = f"property_applies.{prop}"
            if not isinstance(spec, dict) or set(spec) != {"modalities", "why"}:
                raise VocabularyError(where, "expected {modalities: [...], why: ...}")
            unknown = set(spec["modalities"]) - modalities
            if unknown:
                raise VocabularyError(where, f"unknown modalities {sorted(unknown)}")
            self.property_applies[str(prop)] = (frozenset(spec["modalities"]), spec["why"])

    def _load_counts(self) -> None:
        domains: dict[str, set[str] | None] = {k: None for k in COUNT_FACTS}
        domains["dims"] = set(self.allowed("dimensionality"))
        domains["task"] = set(self.allowed("task"))
        regimes = set(self.allowed("label_regime"))

        def compiled(where: str, node: Any) -> Predicate:
            try:
                return compile_condition(node, domains, f"{where}.when")
            except ConditionError as err:
                raise VocabularyError(where, str(err)) from None

        def template(where: str, text: Any) -> str:
            if not isinstance(text, str) or not text:
                raise VocabularyError(where, "needs a text")
            for _, name, _, _ in string.Formatter().parse(text):
                if name is not None and name not in domains:
                    raise VocabularyError(where, f"'{{{name}}}' is not a count fact; known: "
                                          f"{', '.join(COUNT_FACTS)}")
            return text

        steps = self.raw.get("label_regime") or []
        seen: set[str] = set()
        for i, raw in enumerate(steps):
            where = f"label_regime[{i}]"
            if not isinstance(raw, dict) or not {"id", "regime", "explain"} <= set(raw) \
                    or not set(raw) <= {"id", "regime", "when", "explain"}:
                raise VocabularyError(where, "expected id, regime, when (all but the last) "
                                      "and explain")
            sid, regime = str(raw["id"]), raw["regime"]
            where = f"label_regime.{sid}"
            if regime not in regimes:
                raise VocabularyError(where, f"unknown regime {regime!r}")
            parts = sid.split(".")
            if len(parts) != 3 or parts[0] != "regime" or parts[1] != regime \
                    or not parts[2].replace("_", "").isalnum() or sid != sid.lower():
                raise VocabularyError(where, f"id must be regime.{regime}.<why>")
            if sid in seen:
                raise VocabularyError(where, "duplicate id")
            seen.add(sid)
            last = i == len(steps) - 1
            if last == ("when" in raw):
                raise VocabularyError(where, "the last step, and only the last, has no "
                                      "`when`")
            self.regime_steps.append(RegimeStep(
                sid, regime, None if last else compiled(where, raw["when"]),
                template(where, raw["explain"])))
        if not self.regime_steps:
            raise VocabularyError("label_regime", "no steps")
        for i, raw in enumerate(self.raw.get("count_warnings") or []):
            where = f"count_warnings[{i}]"
            if not isinstance(raw, dict) or set(raw) != {"code", "when", "message"}:
                raise VocabularyError(where, "expected code, when and message")
            self.count_warnings.append(CountWarning(
                str(raw["code"]), compiled(where, raw["when"]),
                template(where, raw["message"])))

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
