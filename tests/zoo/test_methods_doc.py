"""docs/methods.md is what tools/methods_table.py writes from the catalog, the objectives
and the seed zoo today: a method that becomes runnable, or a new seed encoder, without
regenerating the table fails here."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_methods_table_is_current() -> None:
    spec = importlib.util.spec_from_file_location("methods_table",
                                                  ROOT / "tools" / "methods_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (ROOT / "docs" / "methods.md").read_text(encoding="utf-8") == module.render(), \
        "docs/methods.md is stale: run .venv/bin/python tools/methods_table.py"
