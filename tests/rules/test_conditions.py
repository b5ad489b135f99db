from __future__ import annotations

import pytest

from rules.conditions import ConditionError, compile_condition

FACTS = {"task": {"classification", "segmentation"}, "gpu": None, "tags": None}


@pytest.mark.parametrize(("cond", "facts", "expected"), [
    ({"fact": "task", "op": "eq", "value": "classification"}, {"task": "classification"}, True),
    ({"fact": "task", "op": "ne", "value": "classification"}, {"task": "classification"}, False),
    ({"fact": "gpu", "op": "lt", "value": 16}, {"gpu": 8}, True),
    ({"fact": "gpu", "op": "lt", "value": 16}, {"gpu": None}, False),
    ({"fact": "gpu", "op": "ge", "value": 16}, {"gpu": 16}, True),
    ({"fact": "task", "op": "in", "value": ["segmentation"]}, {"task": "classification"}, False),
    ({"fact": "task", "op": "not_in", "value": ["segmentation"]}, {"task": "classification"},
     True),
    ({"fact": "tags", "op": "contains", "value": "x"}, {"tags": ["x", "y"]}, True),
    ({"fact": "gpu", "op": "exists", "value": False}, {"gpu": None}, True),
    ({"all": [{"fact": "gpu", "op": "gt", "value": 1}, {"fact": "gpu", "op": "lt", "value": 3}]},
     {"gpu": 2}, True),
    ({"any": [{"fact": "gpu", "op": "gt", "value": 5}, {"fact": "gpu", "op": "lt", "value": 3}]},
     {"gpu": 4}, False),
    ({"not": {"fact": "task", "op": "eq", "value": "segmentation"}}, {"task": "classification"},
     True),
])
def test_operators(cond: dict, facts: dict, expected: bool) -> None:
    assert compile_condition(cond, FACTS)(facts) is expected


@pytest.mark.parametrize(("cond", "message"), [
    ({"fact": "colour", "op": "eq", "value": 1}, "unknown fact 'colour'"),
    ({"fact": "task", "op": "like", "value": "x"}, "unknown op 'like'"),
    ({"fact": "task", "op": "eq", "value": "clasification"}, "not a value of fact 'task'"),
    ({"fact": "task", "op": "in", "value": "classification"}, "needs a list"),
    ({"all": []}, "non-empty list"),
    ({"fact": "task", "op": "eq"}, "exactly fact, op, value"),
    ("task == classification", "expected a mapping"),
])
def test_invalid_conditions_are_refused(cond: object, message: str) -> None:
    with pytest.raises(ConditionError, match=message):
        compile_condition(cond, FACTS)
