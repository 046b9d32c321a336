"""Layers import downward only: starter → worker → activities → workflows.

A package may import its own layer and the layers below it, never one above:
workflows import none of the others (they run in the Temporal sandbox), activities
import only workflows, worker imports activities and workflows, starter any.
Every import counts, wherever it is written: at the top, inside a function, under
`if TYPE_CHECKING:` or in a `with workflow.unsafe.imports_passed_through():` block.
"""

from __future__ import annotations

import ast
from pathlib import Path
from textwrap import dedent

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Lowest first: a package may import the packages at or before its own position.
LAYERS = ("workflows", "activities", "worker", "starter")


def upward_imports(root: Path, package: str) -> list[str]:
    """`file:line: import ...` for each import in `package` of a layer above it."""
    rank = LAYERS.index(package)
    found: list[tuple[str, ast.Import | ast.ImportFrom]] = []
    for path in sorted((root / package).rglob("*.py")):
        module = path.relative_to(root).with_suffix("").parts
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            tops = {target.split(".")[0] for target in _imported_modules(node, module)}
            if any(top in LAYERS and LAYERS.index(top) > rank for top in tops):
                found.append((path.relative_to(root).as_posix(), node))
    return [
        f"{where}:{node.lineno}: {ast.unparse(node)}"
        for where, node in sorted(found, key=lambda pair: (pair[0], pair[1].lineno))
    ]


def _imported_modules(node: ast.Import | ast.ImportFrom, module: tuple[str, ...]) -> list[str]:
    """The absolute module names an import statement reads; `module` is where it is."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level == 0:
        return [node.module or ""]
    # In a/b/c.py and in a/b/__init__.py alike, `.` is a.b and `..` is a.
    package = module[:-1]
    base = package[: len(package) - (node.level - 1)]
    return [".".join([*base, *([node.module] if node.module else [])])]


@pytest.mark.parametrize("package", LAYERS)
def test_package_imports_only_its_own_layer_and_those_below(package: str) -> None:
    found = upward_imports(ROOT, package)
    assert not found, f"{package} imports a layer above it:\n" + "\n".join(found)


def test_every_kind_of_upward_import_is_named_with_file_and_line(tmp_path: Path) -> None:
    source = dedent(
        """\
        from __future__ import annotations

        from temporalio import workflow

        from workflows.names import CONTROL_TASK_QUEUE
        import activities.calendar

        with workflow.unsafe.imports_passed_through():
            from activities.pipeline_loader import load_pipeline


        def late() -> None:
            from worker import settings
        """
    )
    (tmp_path / "workflows").mkdir()
    (tmp_path / "workflows" / "stage.py").write_text(source)
    (tmp_path / "activities").mkdir()
    (tmp_path / "activities" / "__init__.py").write_text("from ..worker import settings\n")

    assert upward_imports(tmp_path, "workflows") == [
        "workflows/stage.py:6: import activities.calendar",
        "workflows/stage.py:9: from activities.pipeline_loader import load_pipeline",
        "workflows/stage.py:13: from worker import settings",
    ]
    assert upward_imports(tmp_path, "activities") == [
        "activities/__init__.py:1: from ..worker import settings"
    ]
