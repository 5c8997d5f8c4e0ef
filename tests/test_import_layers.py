"""The import layering of DESIGN.md, checked from the source: ``worker -> api -> lethe_client ->
unlearning_core``, and no import circles anywhere in the three packages.

Every ``import`` counts, at module level or inside a function (a function-level import is
still a dependency; it only hides a circle until the function runs). The two process entry
points that start a worker from the ``lethe`` console script are the only upward imports
allowed. A failure names the files involved.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("unlearning_core", "lethe_client", "api", "worker")  # lowest layer first
#: ``lethe serve`` runs the embedded worker and ``lethe worker`` a Celery worker: the
#: process entry points, which sit above every layer.
ENTRY_POINTS = frozenset({("api.serve", "worker.embedded"), ("api.cli", "worker.main")})


def modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the packages under ``root``."""
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the project modules it imports (``from a import b`` counts ``a.b`` when it
    is a module, else ``a``)."""
    mods = modules(root)

    def known(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(t for a in node.names if (t := known(a.name)))
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([node.module] if node.module else [])])
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    target = full if full in mods else known(base)
                    if target:
                        targets.add(target)
        targets.discard(name)
        graph[name] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in graph:
        if start in index:
            continue
        work: list[tuple[str, list[str]]] = [(start, sorted(graph[start]))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, pending = work[-1]
            if pending:
                nxt = pending.pop()
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, sorted(graph.get(nxt, ()))))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def upward(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Imports from a lower layer into a higher one, the entry points excepted."""
    rank = {p: i for i, p in enumerate(PACKAGES)}
    return sorted(
        (src, dst)
        for src, targets in graph.items()
        for dst in targets
        if rank[dst.split(".")[0]] > rank[src.split(".")[0]] and (src, dst) not in ENTRY_POINTS
    )


def _describe(names: list[str], files: dict[str, Path]) -> str:
    return ", ".join(str(files[n].relative_to(ROOT)) for n in names)


def test_no_import_circles() -> None:
    graph = import_graph(ROOT)
    files = modules(ROOT)
    found = cycles(graph)
    assert not found, "import circles: " + "; ".join(_describe(c, files) for c in found)


def test_imports_run_worker_api_core() -> None:
    graph = import_graph(ROOT)
    files = modules(ROOT)
    bad = upward(graph)
    assert not bad, "upward imports: " + "; ".join(
        f"{files[a].relative_to(ROOT)} imports {files[b].relative_to(ROOT)}" for a, b in bad
    )


@pytest.fixture
def planted(tmp_path: Path) -> Path:
    """A tree with a circle (lazy, inside a function) and an upward import."""
    for package in PACKAGES:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "unlearning_core" / "a.py").write_text("from unlearning_core import b\n")
    (tmp_path / "unlearning_core" / "b.py").write_text(
        "def f():\n    from .a import x\n    return x\n"
    )
    (tmp_path / "api" / "views.py").write_text("from worker.tasks import send\n")
    (tmp_path / "worker" / "tasks.py").write_text("import api.views\n")
    return tmp_path


def test_the_checks_find_what_is_planted(planted: Path) -> None:
    graph = import_graph(planted)
    assert ["unlearning_core.a", "unlearning_core.b"] in cycles(graph)
    assert ["api.views", "worker.tasks"] in cycles(graph)
    assert upward(graph) == [("api.views", "worker.tasks")]
