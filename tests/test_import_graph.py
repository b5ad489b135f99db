"""The package seams, checked on the source: imports point service -> zoo.training ->
zoo (registry) / zoo.datasets -> rules, and never back.

Every import statement counts, including those inside functions, because a deferred import
is still a dependency. A second test imports `rules` and the registry in a fresh
interpreter and checks which heavy libraries they actually pulled in.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# package prefix -> module prefixes it must not import (nearest prefix wins).
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "rules": ("torch", "monai", "numpy", "fastapi", "starlette", "sqlalchemy", "zoo",
              "service", "onnxruntime", "ray"),
    "zoo.datasets": ("zoo.training", "service", "fastapi", "starlette"),
    "zoo.training": ("service", "fastapi", "starlette"),
    "zoo": ("zoo.training", "service", "fastapi", "starlette"),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Absolute names of every module imported anywhere in the file."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            # `from zoo import training` imports the subpackage too.
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


def rule_for(module: str) -> tuple[str, tuple[str, ...]]:
    owner = max((p for p in FORBIDDEN if module == p or module.startswith(p + ".")),
                key=len)
    return owner, FORBIDDEN[owner]


def violations(package_dir: str) -> list[str]:
    found = []
    for path in sorted((ROOT / package_dir).rglob("*.py")):
        module = module_name(path)
        owner, banned = rule_for(module)
        for name in sorted(imports_of(path)):
            hit = next((b for b in banned if name == b or name.startswith(b + ".")), None)
            if hit:
                found.append(f"{module} imports {name} ({owner} must not import {hit})")
    return found


@pytest.mark.parametrize("package_dir", ["rules", "zoo", "zoo/datasets", "zoo/training"])
def test_imports_point_one_way(package_dir: str) -> None:
    assert violations(package_dir) == []


def test_checker_catches_a_backward_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rules above must fail on the imports they forbid (a test that cannot fail is a
    defect), relative imports included."""
    fake = tmp_path / "root"
    (fake / "rules").mkdir(parents=True)
    (fake / "rules" / "__init__.py").write_text("import torch\n")
    (fake / "zoo" / "training").mkdir(parents=True)
    (fake / "zoo" / "__init__.py").write_text("")
    (fake / "zoo" / "registry.py").write_text("def f():\n    from .training import build\n")
    (fake / "zoo" / "training" / "__init__.py").write_text("from service import cli\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", fake)
    assert violations("rules") == ["rules imports torch (rules must not import torch)"]
    assert violations("zoo") == [
        "zoo.registry imports zoo.training (zoo must not import zoo.training)",
        "zoo.registry imports zoo.training.build (zoo must not import zoo.training)",
        "zoo.training imports service (zoo.training must not import service)",
        "zoo.training imports service.cli (zoo.training must not import service)",
    ]


@pytest.mark.parametrize(("modules", "absent"), [
    ("rules", ("torch", "monai", "fastapi", "sqlalchemy")),
    ("zoo, zoo.cards, zoo.registry, zoo.matching, zoo.hub, zoo.loader", ("torch", "fastapi")),
    # The API starts without the training stack; torch loads where a dataset is read, an
    # upload is checked or an encoder is trained.
    ("service.main", ("torch", "monai", "onnxruntime", "ray")),
    # A job's runner process starts per job: the web framework would only add to the time
    # from submission to the first training step.
    ("service.jobs.runner, service.jobs.worker", ("fastapi", "starlette", "uvicorn")),
])
def test_heavy_libraries_stay_out(modules: str, absent: tuple[str, ...]) -> None:
    """What `import` really pulls in, transitive imports included."""
    code = (f"import sys, {modules}; "
            f"print(sorted(m for m in {absent!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out == "[]"
