"""The core's structure, drawn from its imports: rooms, layers, no circles.

These tests read the source of ``core/headwater`` (they run none of it). An import counts
wherever it is written, at module level or inside a function, except under
``if TYPE_CHECKING:``: those are annotations, never executed, and a type may well name a
module above it (a ``Run`` names its ``PluginManager``, the hookspecs name ``Run``).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import headwater

CORE = Path(headwater.__file__).parent
PACKAGE = "headwater"

NATURAL_PAIR = {"headwater._graph", "headwater._pregel"}
"""The builder makes a compiled graph (``compile``) and accepts one as a node."""


def module_name(path: Path) -> str:
    parts = list(path.relative_to(CORE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(CORE.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement, skipping the bodies of ``if TYPE_CHECKING:``."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                yield from _imports(child)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        yield from _imports(node)


def imported(name: str) -> set[str]:
    """The core modules ``name`` imports (``from headwater import serde`` names a module)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in _imports(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" for alias in node.names]
            targets = [t if t in MODULES else base for t in targets]
        for target in targets:
            while target and target not in MODULES:  # headwater.x.Y -> headwater.x
                target = target.rpartition(".")[0]
            if target.startswith(PACKAGE) and target != name:
                found.add(target)
    return found


GRAPH = {name: imported(name) for name in MODULES}


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm: the import circles (components of more than one module)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[set[str]] = []

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
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return circles


def reachable(start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for nxt in GRAPH[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_the_import_graph_is_read() -> None:
    assert "headwater._pregel" in GRAPH["headwater"]
    assert "headwater.serde" in GRAPH["headwater.checkpoint"]  # `from headwater import serde`
    assert "headwater._pregel" in GRAPH["headwater._graph"]  # imported inside compile()


def test_no_import_circle_but_the_builder_and_compiled_graph() -> None:
    circles = strongly_connected(GRAPH)
    assert all(circle == NATURAL_PAIR for circle in circles), circles


def test_the_tarjan_helper_finds_circles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert strongly_connected(graph) == [{"a", "b", "c"}]


def test_the_bus_imports_only_the_event_types() -> None:
    assert GRAPH["headwater._bus"] == {"headwater.events"}


def test_the_scheduler_never_reaches_the_compiled_graph() -> None:
    assert "headwater._pregel" not in reachable("headwater._scheduler")
    assert "headwater._scheduler" not in reachable("headwater._persist")


@pytest.mark.parametrize("low", ["headwater._plugins", "headwater.hookspecs", "headwater.events"])
def test_the_plugin_manager_and_contracts_sit_near_the_ground(low: str) -> None:
    assert reachable(low) <= {"headwater.hookspecs", "headwater.errors", "headwater.events"}


def test_no_module_reaches_up_to_the_plugin_manager_inside_a_function() -> None:
    late: list[str] = []
    for name, path in MODULES.items():
        for func in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
                for node in ast.walk(func):
                    if isinstance(node, ast.ImportFrom) and node.module == "headwater._plugins":
                        late.append(f"{name}:{node.lineno}")
    assert late == []


def test_compiled_graph_module_keeps_only_the_public_face() -> None:
    lines = len(MODULES["headwater._pregel"].read_text(encoding="utf-8").splitlines())
    assert lines < 500


def _annotation_of(arg: ast.arg | None) -> str:
    return ast.unparse(arg.annotation) if arg is not None and arg.annotation else ""


def test_the_plugin_manager_is_typed_in_every_signature() -> None:
    untyped: list[str] = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                args = node.args
                for arg in [*args.posonlyargs, *args.args, *args.kwonlyargs]:
                    if arg.arg in ("pm", "plugin_manager") and "PluginManager" not in (
                        _annotation_of(arg)
                    ):
                        untyped.append(f"{name}.{node.name}({arg.arg}: {_annotation_of(arg)})")
                if node.name == "plugin_manager" and "PluginManager" not in ast.unparse(
                    node.returns or ast.Constant(None)
                ):
                    untyped.append(f"{name}.{node.name} -> {ast.unparse(node.returns or '')}")
            elif isinstance(node, ast.AnnAssign):
                target = ast.unparse(node.target)
                if target.endswith("plugin_manager") and "PluginManager" not in ast.unparse(
                    node.annotation
                ):
                    untyped.append(f"{name}: {target}: {ast.unparse(node.annotation)}")
    assert untyped == []


BUS_INTERNALS = {"_valves", "_inbox", "_by_kind", "_deliver", "_relieve", "_seq"}


def test_nothing_outside_the_bus_reads_its_internals() -> None:
    readers: list[str] = []
    for name, path in MODULES.items():
        if name == "headwater._bus":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Attribute) or not node.attr.startswith("_"):
                continue
            owner = ast.unparse(node.value)  # `self._subs` of a writer is its own
            if owner.endswith("bus") or (node.attr in BUS_INTERNALS and owner != "self"):
                readers.append(f"{name}:{node.lineno}: {ast.unparse(node)}")
    assert readers == []


def test_only_the_backends_module_names_a_concrete_event_loop() -> None:
    """STYLE 24: asyncio and trio are named in ``headwater._backends`` alone (imported
    anywhere in a module, even inside a function); the rest is written against anyio."""
    naming = set()
    for name, path in MODULES.items():
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            roots = (
                [alias.name.split(".")[0] for alias in node.names]
                if isinstance(node, ast.Import)
                else [(node.module or "").split(".")[0]]
            )
            if {"asyncio", "trio"} & set(roots):
                naming.add(name)
    assert naming == {"headwater._backends"}
