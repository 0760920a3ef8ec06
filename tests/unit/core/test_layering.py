"""tdb_core's layers: no import cycle, and no module both below and above the runner.

Below the runner: what it is built from (schema, hook engine, planner, tokens, admission, checks,
SAE kinds, formats, attaching and training). Above it: whatever drives it (the operations in
ops/, the explain workflow). Read from the source (module-level and function-level imports, not
``TYPE_CHECKING`` ones), so the test needs no torch.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
CORE = ROOT / "tdb_core"

BELOW = (
    "tdb_core.adapter",
    "tdb_core.admission",
    "tdb_core.cancel",
    "tdb_core.checks",
    "tdb_core.datasets",
    "tdb_core.errors",
    "tdb_core.hooks",
    "tdb_core.nodes",
    "tdb_core.plan",
    "tdb_core.schema",
    "tdb_core.specs",
    "tdb_core.tokens",
    "tdb_core.sae",
)
ABOVE = ("tdb_core.ops", "tdb_core.explain.workflow")


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """tdb_core modules imported by a file, outside ``if TYPE_CHECKING:`` blocks."""
    tree = ast.parse(path.read_text())
    skip = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for n in ast.walk(node)
    }
    out = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return {m for m in out if m.startswith("tdb_core")}


def _graph() -> dict[str, set[str]]:
    files = {_module(p): p for p in CORE.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        graph[name] = {m for m in _imports(path) if m in files and m != name}
    return graph


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_nothing_below_the_runner_imports_the_runner_or_what_drives_it():
    """Modules the runner is built from import neither the runner nor the operations."""
    bad = {
        name: sorted(m for m in deps if m == "tdb_core.runner" or _under(m, ABOVE))
        for name, deps in _graph().items()
        if _under(name, BELOW)
    }
    assert {k: v for k, v in bad.items() if v} == {}


def test_no_import_cycles():
    """The module graph of tdb_core is acyclic."""
    graph = _graph()
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node: str, path: list[str]) -> bool:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycle.extend([*path, node, dep])
                return True
            if dep not in state and visit(dep, [*path, node]):
                return True
        state[node] = 2
        return False

    for n in sorted(graph):
        if n not in state and visit(n, []):
            break
    assert not cycle, " -> ".join(cycle)


def test_operations_are_siblings():
    """An operation imports no other operation (shared pieces live in ops/common.py)."""
    graph = _graph()
    ops = [n for n in graph if n.startswith("tdb_core.ops.") and n != "tdb_core.ops.common"]
    for op in ops:
        assert not {m for m in graph[op] if m in ops}, op
