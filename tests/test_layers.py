"""The package's import graph: no cycle, and no import from a lower layer to a higher one.

A lower layer reaches a higher one's plug-ins by name through ``equiseg.registry`` (config and
engine find methods there) instead of importing them. Late imports inside functions count too.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "equiseg"

LAYERS = (
    ("equiseg.registry", "equiseg.errors", "equiseg.parallel", "equiseg.run_layout", "equiseg.provenance"),
    ("equiseg.config",),
    ("equiseg.data", "equiseg.models"),
    ("equiseg.evaluation",),
    ("equiseg.methods",),
    ("equiseg.engine",),
    ("equiseg.report",),
    ("equiseg.bench",),
    ("equiseg.cli", "equiseg.__main__", "equiseg"),
)
"""Lowest first; a module may import its own layer and those before it."""



def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                if base.split(".")[0] == "equiseg":
                    targets |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names}
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name.split(".")[0] == "equiseg"}
        graph[name] = {t for t in targets if t != name}
    return graph


def layer_of(module: str) -> tuple[int, str]:
    matches = [(len(prefix), i, prefix) for i, group in enumerate(LAYERS) for prefix in group
               if module == prefix or module.startswith(prefix + ".")]
    assert matches, f"{module} is in no layer of LAYERS"
    _, i, prefix = max(matches)
    return i, prefix


def test_no_import_from_a_lower_layer_to_a_higher_one():
    upward = []
    for module, targets in import_graph().items():
        for target in targets:
            (mine, _), (theirs, _) = layer_of(module), layer_of(target)
            if theirs > mine:
                upward.append(f"{module} imports {target}")
    assert not upward, "imports against the layer order:\n" + "\n".join(sorted(upward))


def test_no_import_cycle_between_packages_or_modules():
    graph = import_graph()
    packages: dict[str, set[str]] = {}
    for module, targets in graph.items():
        packages.setdefault(layer_of(module)[1], set()).update(layer_of(t)[1] for t in targets)
    for g in (graph, packages):
        cycle = find_cycle({k: {t for t in v if t in g and t != k} for k, v in g.items()})
        assert not cycle, " -> ".join(cycle)


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """A cycle of ``graph`` as [a, b, ..., a], or [] when it has none."""
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        path.pop()
        return []

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return []


def test_the_checker_sees_cycles_and_layers():
    assert find_cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []
    assert layer_of("equiseg.engine.trainer") > layer_of("equiseg.methods.base")
    assert "equiseg.registry" in import_graph()["equiseg.config"]
