"""The house's map, checked: every import of every module of `src/clipforge` (lazy ones included) points
down the layers, and no two modules import each other, directly or round a circle (docs/design.md §4)."""

from __future__ import annotations

import ast
from pathlib import Path

import clipforge

ROOT = Path(clipforge.__file__).parent
# Lowest first. The package's first-level modules sit in the layer of what they serve.
LAYERS = ["core", "models", "data", "train", "eval", "methods", "report", "demo", "cli"]
LAYER_OF = {
    "errors": "core", "files": "core", "distributed": "core", "run": "core", "markdown": "core", "stats": "core",
    "models": "models", "data": "data", "train": "train", "schedule": "train", "eval": "eval",
    "cost": "methods", "moe": "methods", "learngene": "methods", "report": "report", "demo": "demo",
    "cli": "cli", "__main__": "cli",
}


def _module(path: Path) -> str:
    parts = ["clipforge", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _known(name: str, modules: set[str]) -> str | None:
    """The longest prefix of `name` that is a module of the package (an import names a module or a member)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _imports(path: Path, module: str, modules: set[str]) -> set[str]:
    pkg = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
            and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)}
    out = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom):
            base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1] if node.level else []
            target = ".".join([*base, node.module] if node.module else base)
            names = [f"{target}.{a.name}" for a in node.names] if node.module is None else [target]
            names += [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in modules]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        out |= {k for n in names if n.startswith("clipforge") and (k := _known(n, modules)) and k != module}
    return out


def _graph() -> dict[str, set[str]]:
    files = {(_module(p)): p for p in ROOT.rglob("*.py")}
    modules = set(files)
    return {m: _imports(p, m, modules) for m, p in files.items()}


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.index(LAYER_OF[parts[1]]) if len(parts) > 1 else None


def test_every_import_points_down():
    up = [f"{a} -> {b}" for a, targets in _graph().items() for b in targets
          if _layer(a) is not None and _layer(b) is not None and _layer(b) > _layer(a)]
    assert not up, "imports that climb a layer:\n" + "\n".join(sorted(up))


def test_no_import_circles():
    graph = _graph()
    # a package's __init__ importing its own modules is how a package exposes them, not a circle
    edges = {a: {b for b in bs if not b.startswith(a + ".")} for a, bs in graph.items()}
    state: dict[str, int] = {}
    circles: list[str] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                circles.append(" -> ".join(path[path.index(nxt):] + [nxt]) if nxt in path else f"{node} -> {nxt}")
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_the_walk_sees_lazy_imports():
    """The checks would pass vacuously if the walk missed imports inside functions."""
    graph = _graph()
    assert "clipforge.models.io" in graph["clipforge.cli.models"]  # imported inside run_build
    assert len(graph) > 80 and sum(map(len, graph.values())) > 200
