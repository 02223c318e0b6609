"""The package's structure: no import cycles between its modules, and every import (inside functions too) pointing
down the layers of docs/design.md."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import masterkey

PACKAGE = Path(masterkey.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@functools.cache
def _tree(path: Path) -> ast.Module:
    """The parsed source of ``path``, parsed once per session (several tests walk every module; they only read)."""
    return ast.parse(path.read_text(), str(path))


def import_graph() -> dict[str, set[str]]:
    """``module -> modules of the package it imports`` (module level and inside functions alike). The root
    package ``masterkey`` (a facade re-exporting the basics, and the version) is left out."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(_tree(path)):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import: climb from this module's package
                    parents = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parents, base]).strip(".")
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != "masterkey" and target != name:
                    graph[name].add(target)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_the_graph_sees_function_level_imports() -> None:
    graph = import_graph()
    assert "masterkey.networks.models" in graph["masterkey.train.loop"]
    assert "masterkey.kernels" in graph["masterkey.keys"]  # imported inside the scalespace8 builder


def test_cycle_finder_finds_a_cycle() -> None:
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles() -> None:
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


# ---------------------------------------------------------------------- the direction of dependencies
#: The layers of docs/design.md ("Dependencies"), lowest first: a module may import modules of its own layer and of
#: the layers below it, never above. Stages sit side by side: one stage never imports another. A module is placed by
#: the longest prefix listed.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "basics",
        (
            "errors", "lazy", "atomic", "jsonio", "reading", "runformats", "files", "runs", "manifest", "query",
            "progress", "tables", "plots", "stats", "threads", "normalize", "depthwise", "kernels", "sources.base",
        ),
    ),
    ("filters and keys", ("keys", "bank", "fit", "scalespace")),
    ("images and networks", ("data", "networks", "nn")),
    ("stages", ("sources", "discover", "swap", "train", "explain")),
    ("report", ("report",)),
    ("commands", ("commands", "cli", "__main__")),
]  # fmt: skip
STAGES = LAYERS[3][1]

#: Known edges against the direction, each with the issue that removes it (none now: the stages draw with
#: masterkey.plots and write Markdown tables with masterkey.tables, below them).
ALLOWED_UPWARD: set[tuple[str, str]] = set()


def place(module: str) -> tuple[int, str]:
    """``(layer index, the prefix that placed it)`` of a module (``masterkey.x.y``)."""
    if module == "masterkey":  # the facade re-exporting every layer's public names, lazily: on top
        return len(LAYERS) - 1, module
    name = module.removeprefix("masterkey.")
    best: tuple[int, str] | None = None
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and (best is None or len(prefix) > len(best[1])):
                best = (i, prefix)
    if best is None:
        raise AssertionError(f"{module} has no layer: place it in LAYERS here and in docs/design.md")
    return best


def violations(graph: dict[str, set[str]]) -> list[tuple[str, str, str]]:
    """``(importer, imported, why)`` for every import against the layering."""
    out = []
    for a, targets in sorted(graph.items()):
        la, pa = place(a)
        for b in sorted(targets):
            lb, pb = place(b)
            if lb > la:
                out.append((a, b, f"{LAYERS[la][0]} imports {LAYERS[lb][0]}"))
            elif la == lb and LAYERS[la][1] is STAGES and pa.split(".")[0] != pb.split(".")[0]:
                out.append((a, b, "one stage imports another"))
    return out


def test_every_module_has_a_layer() -> None:
    for module in import_graph():
        place(module)


def test_the_layering_check_finds_upward_and_sideways_imports() -> None:
    graph = {
        "masterkey.keys": {"masterkey.discover.greedy"},  # upward
        "masterkey.train.loop": {"masterkey.explain.run", "masterkey.nn.layers"},  # sideways; downward
        "masterkey.bank": {"masterkey.sources.base"},  # the one basic module of a stage package
        "masterkey.sources.network": {"masterkey.networks.models"},
    }
    found = {(a, b) for a, b, _ in violations(graph)}
    assert found == {("masterkey.keys", "masterkey.discover.greedy"), ("masterkey.train.loop", "masterkey.explain.run")}


def test_dependencies_point_down_the_pipeline() -> None:
    bad = [f"{a} -> {b} ({why})" for a, b, why in violations(import_graph()) if (a, b) not in ALLOWED_UPWARD]
    assert not bad, "imports against docs/design.md's layering:\n" + "\n".join(bad)


def test_the_allowed_exceptions_still_exist() -> None:
    """An allowed edge that is gone must leave ALLOWED_UPWARD too, so the list never hides a new one."""
    graph = import_graph()
    stale = sorted(f"{a} -> {b}" for a, b in ALLOWED_UPWARD if b not in graph.get(a, set()))
    assert not stale, "no longer imported, remove from ALLOWED_UPWARD: " + ", ".join(stale)


# ---------------------------------------------------------------------- module sizes
MAX_LINES, MAX_COMMAND_LINES = 600, 250
#: Modules allowed over the limit (none).
OVERSIZED: set[str] = set()


def test_modules_stay_small_and_commands_thin() -> None:
    too_long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = path.relative_to(PACKAGE).as_posix()
        limit = MAX_COMMAND_LINES if name.startswith("commands/") else MAX_LINES
        lines = len(path.read_text().splitlines())
        if lines > limit and name not in OVERSIZED:
            too_long.append(f"{name}: {lines} lines (at most {limit})")
    assert not too_long, "; ".join(too_long)
