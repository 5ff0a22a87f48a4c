"""Every import of the package from a benchmark or a script names a module and a name that exist, the imports
inside functions included: those run only in the part that needs them (GPU-only cases), so a CPU rehearsal never
reaches them. The layout move left one such import doubled (``models.loading.loading``) and a GPU session found it."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted([*ROOT.glob("benchmarks/*.py"), *ROOT.glob("scripts/*.py"), *ROOT.glob("examples/**/*.py")])


def package_imports(path: Path) -> list[tuple[int, str, str | None]]:
    """(line, module, name) of each ``from rdpo_lightning... import name`` and ``import rdpo_lightning...``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("rdpo_lightning"):
            found += [(node.lineno, node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name, None) for a in node.names if a.name.startswith("rdpo_lightning")]
    return found


def test_the_sources_are_found():
    assert len(SOURCES) >= 10 and any(package_imports(p) for p in SOURCES)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_package_import_resolves(path):
    broken = []
    for line, module_name, name in package_imports(path):
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            broken.append(f"{path.name}:{line}: {module_name}: {error}")
            continue
        if name is not None and name != "*" and not hasattr(module, name):
            try:
                importlib.import_module(f"{module_name}.{name}")  # a submodule
            except ImportError:
                broken.append(f"{path.name}:{line}: {module_name} has no {name}")
    assert not broken, "\n".join(broken)
