"""A compiled graph's shape, for pictures: what ``CompiledGraph.get_graph()`` returns.

:class:`DrawableGraph` lists the nodes and edges (``__start__`` and ``__end__`` included)
and draws them as Mermaid (``draw_mermaid()``, the text GitHub, mkdocs and the server's
page render) or as ASCII art for a terminal (``draw_ascii()``); ``to_json()`` is the
plain-JSON form a browser draws from. Conditional edges (routers, ``Command`` targets)
are marked ``conditional``: a router's destinations come from its ``path_map``, else
from its ``Literal[...]`` return annotation, else every node and ``END``.

Example::

    view = app.get_graph()
    print(view.draw_mermaid())
    print(view.draw_ascii())
"""

from __future__ import annotations

import re
import typing
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

import attrs

from headwater._types import END, START

if TYPE_CHECKING:
    from headwater._nodes import Branch
    from headwater._pregel import CompiledGraph

__all__ = ["DrawableGraph", "Edge", "Node"]


@attrs.frozen
class Node:
    """One box of the picture: ``id`` (unique; ``"sub:inner"`` inside an expanded
    subgraph), ``name`` (the label) and the node's ``metadata``.

    Example::

        Node(id="agent", name="agent")
    """

    id: str
    name: str
    metadata: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class Edge:
    """One arrow: ``source`` and ``target`` node ids; ``conditional`` for a router's or a
    ``Command``'s possible destination; ``data`` is the router's label for it, if any.

    Example::

        Edge(source="agent", target="tools", conditional=True)
    """

    source: str
    target: str
    conditional: bool = False
    data: str | None = None


@attrs.frozen
class DrawableGraph:
    """The nodes and edges of a compiled graph, with ways to draw them.

    Example::

        view = app.get_graph()
        sorted(view.nodes)          # ['__end__', '__start__', 'agent', 'tools']
        view.draw_mermaid()         # 'graph TD;\\n ...'
    """

    nodes: Mapping[str, Node]
    edges: tuple[Edge, ...]
    subgraphs: Mapping[str, tuple[str, ...]] = attrs.field(factory=dict)
    """For ``xray``: each expanded subgraph node's id and the ids of the nodes inside it."""

    def to_json(self) -> dict[str, Any]:
        """Plain JSON: ``{"nodes": [{"id", "type", "data": {"name"}, ...}], "edges": [...]}``.

        Example::

            json.dumps(app.get_graph().to_json())
        """
        nodes = []
        for node in self.nodes.values():
            item: dict[str, Any] = {"id": node.id, "type": "runnable", "data": {"name": node.name}}
            if node.metadata:
                item["metadata"] = dict(node.metadata)
            nodes.append(item)
        edges = []
        for edge in self.edges:
            out: dict[str, Any] = {"source": edge.source, "target": edge.target}
            if edge.conditional:
                out["conditional"] = True
            if edge.data is not None:
                out["data"] = edge.data
            edges.append(out)
        return {"nodes": nodes, "edges": edges}

    def draw_mermaid(self, *, with_styles: bool = True) -> str:
        """The graph as a Mermaid flowchart (``graph TD``), in LangGraph's layout.

        Solid arrows are plain edges, dotted ones conditional; ``__start__`` and
        ``__end__`` are rounded. ``with_styles=False`` gives the bare edges: no front
        matter, node declarations or class definitions.

        Example::

            print(app.get_graph().draw_mermaid())
        """
        lines: list[str] = []
        if with_styles:
            lines += ["---", "config:", "  flowchart:", "    curve: linear", "---"]
        lines.append("graph TD;")
        inside = {n for members in self.subgraphs.values() for n in members}
        if with_styles:
            for node in self.nodes.values():
                if node.id not in inside:
                    lines.append(f"\t{_mermaid_node(node)}")
        for edge in self.edges:
            if edge.source not in inside or edge.target not in inside:
                lines.append(f"\t{_mermaid_edge(edge)}")
        for sub, members in self.subgraphs.items():
            lines.append(f"\tsubgraph {sub}")
            member_set = set(members)
            if with_styles:
                for node_id in members:
                    lines.append(f"\t{_mermaid_node(self.nodes[node_id])}")
            for edge in self.edges:
                if edge.source in member_set and edge.target in member_set:
                    lines.append(f"\t{_mermaid_edge(edge)}")
            lines.append("\tend")
        if with_styles:
            lines += [
                "\tclassDef default fill:#f2f0ff,line-height:1.2",
                "\tclassDef first fill-opacity:0",
                "\tclassDef last fill:#bfb6fc",
            ]
        return "\n".join(lines) + "\n"

    def draw_ascii(self) -> str:
        """The graph as ASCII art: boxes in layers from ``__start__`` down to ``__end__``;
        ``*`` lines are plain edges, ``.`` lines conditional ones. Needs no extra package.

        Example::

            print(app.get_graph().draw_ascii())
        """
        return _draw_ascii(self)

    def print_ascii(self) -> None:
        """Print :meth:`draw_ascii`.

        Example::

            app.get_graph().print_ascii()
        """
        print(self.draw_ascii())


# -- building the view from a compiled graph -----------------------------------------------


def graph_of(graph: CompiledGraph, xray: bool | int = False) -> DrawableGraph:
    """The :class:`DrawableGraph` of ``graph``; ``xray`` expands subgraphs (``True``: all
    levels, an int: that many)."""
    if not isinstance(xray, bool | int):
        raise TypeError(f"xray must be a bool or an int (levels); got {xray!r:.40}.")
    depth = (1 << 30 if xray is True else int(xray)) if xray else 0
    nodes: dict[str, Node] = {}
    edges: list[Edge] = []
    subgraphs: dict[str, tuple[str, ...]] = {}
    entries, exits = _add(graph, "", depth, nodes, edges, subgraphs)
    del entries, exits
    ordered = {START: nodes.pop(START), **nodes}
    ordered[END] = ordered.pop(END)
    unique = list(dict.fromkeys(edges))
    unique.sort(key=lambda e: (e.source, e.target))
    return DrawableGraph(nodes=ordered, edges=tuple(unique), subgraphs=subgraphs)


def _add(
    graph: CompiledGraph,
    prefix: str,
    depth: int,
    nodes: dict[str, Node],
    edges: list[Edge],
    subgraphs: dict[str, tuple[str, ...]],
) -> tuple[list[str], list[str]]:
    """Add ``graph``'s nodes and edges under ``prefix``; return the ids its START leads to
    and the ids that lead to its END (to wire an expanded subgraph into its parent)."""
    edge_list, joins, branches = graph._shape
    raw: list[Edge] = [Edge(source, target) for source, target in edge_list]
    for starts, end in joins:
        raw.extend(Edge(source, end) for source in sorted(starts))
    for branch in branches:
        for target, label in _destinations(branch, graph):
            raw.append(Edge(branch.source, target, conditional=True, data=label))
    for name, spec in graph.nodes.items():
        if spec.destinations is not None:
            raw.extend(Edge(name, d, conditional=True) for d in spec.destinations)
    expanded: dict[str, tuple[list[str], list[str]]] = {}
    if prefix == "":
        nodes[START] = Node(START, START)
        nodes[END] = Node(END, END)
    for name, spec in graph.nodes.items():
        node_id = prefix + name
        sub = spec.subgraph
        if depth > 0 and sub is not None and hasattr(sub, "_shape"):  # a compiled graph
            before = set(nodes)
            expanded[name] = _add(
                cast("CompiledGraph", sub), node_id + ":", depth - 1, nodes, edges, subgraphs
            )
            subgraphs[node_id] = tuple(n for n in nodes if n not in before)
        else:
            nodes[node_id] = Node(node_id, node_id if prefix else name, dict(spec.metadata))
    entries: list[str] = []
    exits: list[str] = []
    for edge in raw:
        sources = [prefix + edge.source]
        targets = [prefix + edge.target]
        if edge.source == START:
            if prefix:
                entries.append(prefix + edge.target)
                continue
            sources = [START]
        elif edge.source in expanded:
            sources = expanded[edge.source][1]
        if edge.target == END:
            if prefix:
                exits.extend(sources)
                continue
            targets = [END]
        elif edge.target in expanded:
            targets = expanded[edge.target][0]
        edges.extend(Edge(s, t, edge.conditional, edge.data) for s in sources for t in targets)
    # An entry or exit that is itself an expanded subgraph stands for its own ends.
    entries = [i for e in entries for i in _ends(e, prefix, expanded, 0)]
    exits = [i for e in exits for i in _ends(e, prefix, expanded, 1)]
    return entries, exits


def _ends(
    node_id: str, prefix: str, expanded: Mapping[str, tuple[list[str], list[str]]], which: int
) -> list[str]:
    name = node_id[len(prefix) :]
    return expanded[name][which] if name in expanded else [node_id]


def _destinations(branch: Branch, graph: CompiledGraph) -> list[tuple[str, str | None]]:
    if branch.path_map is not None:
        return [
            (target, None if key == target else str(key)) for key, target in branch.path_map.items()
        ]
    router: Any = branch.router
    if not callable(router):  # pragma: no cover - validated when added
        return []
    try:
        hints = typing.get_type_hints(
            router if hasattr(router, "__code__") else type(router).__call__
        )
    except Exception:
        hints = {}
    names = _literals(hints.get("return"))
    if names:
        return [(n, None) for n in names]
    return [(n, None) for n in [*graph.nodes, END]]


def _literals(t: Any) -> list[str]:
    if t is None:
        return []
    if typing.get_origin(t) is typing.Literal:
        return [a for a in typing.get_args(t) if isinstance(a, str)]
    return [n for arg in typing.get_args(t) for n in _literals(arg)]


# -- Mermaid ------------------------------------------------------------------------------

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def _mermaid_id(node_id: str) -> str:
    return _UNSAFE.sub(lambda m: "\\" + format(ord(m.group()), "x"), node_id)


def _mermaid_node(node: Node) -> str:
    key = _mermaid_id(node.id)
    if node.id == START:
        return f"{key}([<p>{START}</p>]):::first"
    if node.id == END:
        return f"{key}([<p>{END}</p>]):::last"
    return f"{key}({node.name.rsplit(':', 1)[-1]})"


def _mermaid_edge(edge: Edge) -> str:
    source, target = _mermaid_id(edge.source), _mermaid_id(edge.target)
    if not edge.conditional:
        return f"{source} --> {target};"
    if edge.data is not None:
        return f"{source} -. &nbsp;{edge.data}&nbsp; .-> {target};"
    return f"{source} -.-> {target};"


# -- ASCII --------------------------------------------------------------------------------

_GAP_X = 3  # columns between boxes in a layer
_GAP_Y = 4  # rows between layers (where edges are drawn)


def _layers(view: DrawableGraph) -> list[list[str]]:
    """Nodes in layers: the longest path from ``__start__`` over forward edges."""
    succ: dict[str, list[str]] = {n: [] for n in view.nodes}
    for edge in view.edges:
        succ[edge.source].append(edge.target)
    back: set[tuple[str, str]] = set()
    state: dict[str, int] = {}  # 1: on the DFS stack, 2: finished

    def visit(start: str) -> None:
        stack = [(start, iter(succ[start]))]
        state[start] = 1
        while stack:
            node, it = stack[-1]
            for nxt in it:
                if state.get(nxt) == 1:
                    back.add((node, nxt))
                elif nxt not in state:
                    state[nxt] = 1
                    stack.append((nxt, iter(succ[nxt])))
                    break
            else:
                state[node] = 2
                stack.pop()

    for root in [START, *view.nodes]:
        if root not in state:
            visit(root)
    level = {n: 0 for n in view.nodes}
    for _ in range(len(view.nodes)):  # relax: longest path on the acyclic part
        changed = False
        for edge in view.edges:
            if (edge.source, edge.target) in back or edge.target == START:
                continue
            if level[edge.target] < level[edge.source] + 1:
                level[edge.target] = level[edge.source] + 1
                changed = True
        if not changed:
            break
    rows: list[list[str]] = [[] for _ in range(max(level.values()) + 1)]
    for node in view.nodes:
        rows[level[node]].append(node)
    return [row for row in rows if row]


def _draw_ascii(view: DrawableGraph) -> str:
    layers = _layers(view)
    labels = {n: view.nodes[n].name for n in view.nodes}
    widths = {n: len(labels[n]) + 4 for n in view.nodes}
    row_widths = [sum(widths[n] for n in row) + _GAP_X * (len(row) - 1) for row in layers]
    width = max(row_widths)
    height = len(layers) * 3 + (len(layers) - 1) * _GAP_Y
    canvas = [[" "] * width for _ in range(height)]
    box: dict[str, tuple[int, int]] = {}  # node -> (left column, top row)
    for i, row in enumerate(layers):
        x = (width - row_widths[i]) // 2
        for node in row:
            box[node] = (x, i * (3 + _GAP_Y))
            x += widths[node] + _GAP_X
    for edge in view.edges:
        (sx, sy), (tx, ty) = box[edge.source], box[edge.target]
        if ty > sy:  # downwards, centre to centre
            x0, x1 = sx + widths[edge.source] // 2, tx + widths[edge.target] // 2
            y0, y1 = sy + 3, ty - 1
        else:  # back up a loop: from and to the boxes' right-hand part, beside the way down
            x0, x1 = sx + widths[edge.source] - 2, tx + widths[edge.target] - 2
            y0, y1 = sy - 1, ty + 3
        _line(canvas, x0, y0, x1, y1, "." if edge.conditional else "*")
    for node, (x, y) in box.items():
        w = widths[node]
        canvas[y][x : x + w] = "+" + "-" * (w - 2) + "+"
        canvas[y + 1][x : x + w] = "| " + labels[node] + " |"
        canvas[y + 2][x : x + w] = "+" + "-" * (w - 2) + "+"
    return "\n".join("".join(r).rstrip() for r in canvas)


def _line(canvas: list[list[str]], x0: int, y0: int, x1: int, y1: int, char: str) -> None:
    steps = max(abs(x1 - x0), abs(y1 - y0), 1)
    for i in range(steps + 1):
        x = x0 + round((x1 - x0) * i / steps)
        y = y0 + round((y1 - y0) * i / steps)
        if 0 <= y < len(canvas) and 0 <= x < len(canvas[y]):
            canvas[y][x] = char
