"""Conditions as data: `all` / `any` / `not` over `{fact, op, value}`, compiled to closures.

No expression strings and no eval: a rule file can only compare facts with values, and a
typo in a fact or operator is caught when the rules load, not when a request arrives.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

Predicate = Callable[[Mapping[str, Any]], bool]


def _ordered(compare: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
    # An unknown fact (None) satisfies no ordering comparison.
    return lambda a, b: a is not None and compare(a, b)


OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": lambda a, b: a == b,
    "ne": lambda a, b: a != b,
    "lt": _ordered(lambda a, b: a < b),
    "le": _ordered(lambda a, b: a <= b),
    "gt": _ordered(lambda a, b: a > b),
    "ge": _ordered(lambda a, b: a >= b),
    "in": lambda a, b: a in b,
    "not_in": lambda a, b: a not in b,
    "contains": lambda a, b: a is not None and b in a,
    "exists": lambda a, b: (a is not None) == bool(b),
}

LIST_OPERATORS = {"in", "not_in"}


def facts_in(node: Mapping[str, Any]) -> set[str]:
    """The facts a (valid) condition reads: a predicate's answer depends on these alone."""
    if "fact" in node:
        return {node["fact"]}
    children = node.get("all") or node.get("any") or [node["not"]]
    return set().union(*(facts_in(c) for c in children))


class ConditionError(ValueError):
    pass


def compile_condition(
    node: Any, facts: Mapping[str, set[str] | None], path: str = "when"
) -> Predicate:
    """Check a condition tree against the known facts and return a fast predicate.

    `facts` maps each fact name to its closed set of allowed values, or None when the
    fact is open (numbers, booleans).
    """
    if not isinstance(node, Mapping):
        raise ConditionError(f"{path}: expected a mapping, got {type(node).__name__}")
    keys = set(node)
    if keys == {"all"} or keys == {"any"}:
        (key,) = keys
        children = node[key]
        if not isinstance(children, list) or not children:
            raise ConditionError(f"{path}.{key}: expected a non-empty list")
        preds = [compile_condition(c, facts, f"{path}.{key}[{i}]") for i, c in enumerate(children)]
        return _all(preds) if key == "all" else _any(preds)
    if keys == {"not"}:
        inner = compile_condition(node["not"], facts, f"{path}.not")
        return lambda f: not inner(f)
    if keys != {"fact", "op", "value"}:
        raise ConditionError(
            f"{path}: expected all/any/not or exactly fact, op, value; got {sorted(keys)}"
        )
    fact, op, value = node["fact"], node["op"], node["value"]
    if fact not in facts:
        raise ConditionError(f"{path}: unknown fact '{fact}'; known: {', '.join(sorted(facts))}")
    if op not in OPERATORS:
        raise ConditionError(f"{path}: unknown op '{op}'; known: {', '.join(OPERATORS)}")
    if op in LIST_OPERATORS and not isinstance(value, list):
        raise ConditionError(f"{path}: op '{op}' needs a list value")
    allowed = facts[fact]
    if allowed is not None and op != "exists":
        for v in value if isinstance(value, list) else [value]:
            if v not in allowed:
                raise ConditionError(
                    f"{path}: '{v}' is not a value of fact '{fact}'; allowed: "
                    f"{', '.join(sorted(allowed))}"
                )
    frozen = tuple(value) if isinstance(value, list) else value
    return _leaf(fact, op, frozen)


# Rules are evaluated on every request: the closures below are specialised by operator and
# arity so that a leaf costs one Python call, not two, and all/any build no generator.


def _leaf(fact: str, op: str, value: Any) -> Predicate:
    if op == "eq":
        return lambda f: f.get(fact) == value
    if op == "ne":
        return lambda f: f.get(fact) != value
    if op == "in":
        return lambda f: f.get(fact) in value
    if op == "not_in":
        return lambda f: f.get(fact) not in value
    compare = OPERATORS[op]
    return lambda f: compare(f.get(fact), value)


def _all(preds: list[Predicate]) -> Predicate:
    if len(preds) == 1:
        return preds[0]
    if len(preds) == 2:
        a, b = preds
        return lambda f: a(f) and b(f)
    if len(preds) == 3:
        a, b, c = preds
        return lambda f: a(f) and b(f) and c(f)
    return lambda f: all(p(f) for p in preds)


def _any(preds: list[Predicate]) -> Predicate:
    if len(preds) == 1:
        return preds[0]
    if len(preds) == 2:
        a, b = preds
        return lambda f: a(f) or b(f)
    if len(preds) == 3:
        a, b, c = preds
        return lambda f: a(f) or b(f) or c(f)
    return lambda f: any(p(f) for p in preds)
