"""The layering of the package: the ground floor (``pocketswap.core``) imports no stage, stages never import
the roof (the CLI shell and quickstart), and no library file grows past 400 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("faces", "teacher", "student", "distill", "export", "benchmarks", "demo")
ROOF = ("pocketswap.cli", "pocketswap.quickstart")
LIBRARY = [p for folder in ("pocketswap", *STAGES) for p in sorted((ROOT / folder).rglob("*.py"))]


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return found


@pytest.mark.parametrize("path", sorted((ROOT / "pocketswap" / "core").glob("*.py")), ids=lambda p: p.name)
def test_the_ground_floor_imports_no_stage(path: Path) -> None:
    above = {f"pocketswap.{name}" for name in STAGES} | set(ROOF)
    wrong = sorted(m for m in imported_modules(path) if any(m == a or m.startswith(a + ".") for a in above))
    assert not wrong, f"{path.relative_to(ROOT)} imports {wrong}"


def test_stages_never_import_the_roof() -> None:
    wrong = [
        f"{path.relative_to(ROOT)} imports {module}"
        for path in LIBRARY
        if path.parent.name in STAGES
        for module in imported_modules(path)
        if any(module == roof or module.startswith(roof + ".") for roof in ROOF)
    ]
    assert not wrong, "; ".join(wrong)


def test_no_library_file_is_over_400_lines() -> None:
    long = [f"{p.relative_to(ROOT)}: {n}" for p in LIBRARY if (n := len(p.read_text().splitlines())) > 400]
    assert not long, ", ".join(long)
