"""The graph builder: ``StateGraph`` and its compile-time validation."""

from __future__ import annotations

import difflib
import functools
import inspect
import typing
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from headwater._nodes import Branch, Calling, NodeSpec, calling_convention, is_seconds
from headwater._state import Schema, describe_schema
from headwater._types import END, START, Command
from headwater.errors import GraphValidationError
from headwater.retry import RetryPolicy

if TYPE_CHECKING:
    from headwater._plugins import PluginManager
    from headwater._pregel import CompiledGraph
    from headwater.checkpoint import Checkpointer

__all__ = ["StateGraph"]

_RESERVED_CHARS = ("|", ":")


def _command_destinations(fn: Callable[..., Any]) -> tuple[str, ...] | None:
    """Where a node's ``Command(goto=...)`` may go, read from its return annotation.

    ``()`` when it returns no ``Command``; the names of ``Command[Literal["a", "b"]]``;
    ``None`` (anywhere) for a bare ``Command`` or an annotation that cannot be read.
    """
    target: Any = fn
    while isinstance(target, functools.partial):
        target = target.func
    if not (inspect.isfunction(target) or inspect.ismethod(target) or isinstance(target, type)):
        target = type(target).__call__  # a callable object: its __call__'s annotation
    try:
        hints = typing.get_type_hints(target)
    except Exception:
        return ()
    ret = hints.get("return")
    if ret is None:
        return ()
    found: list[str] = []
    stack = [ret]
    is_command = False
    while stack:
        t = stack.pop()
        if t is Command:
            return None
        if typing.get_origin(t) is Command:
            is_command = True
            args = typing.get_args(t)
            names = [a for arg in args for a in _literal_names(arg)]
            if not names:
                return None
            found.extend(names)
            continue
        stack.extend(typing.get_args(t))
    return tuple(dict.fromkeys(found)) if is_command else ()


def _literal_names(t: Any) -> list[str]:
    if typing.get_origin(t) is typing.Literal:
        return [a for a in typing.get_args(t) if isinstance(a, str)]
    return [n for arg in typing.get_args(t) for n in _literal_names(arg)]


def _suggest(name: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


class StateGraph:
    """Builds a graph of nodes over a shared state; ``compile()`` makes it runnable.

    The schema is a ``TypedDict``, an attrs class or a dataclass. Keys annotated
    ``Annotated[T, reducer]`` combine writes with the reducer; other keys take the last
    write. Nodes are sync or async functions taking ``(state)``, ``(state, config)`` or
    ``(state, *, writer)`` and returning a dict of updates (or ``None``, or a ``Command``).

    Example::

        import operator
        from typing import Annotated, TypedDict
        from headwater import END, START, StateGraph

        class State(TypedDict):
            text: str
            log: Annotated[list[str], operator.add]

        async def shout(state):
            return {"text": state["text"].upper(), "log": ["shouted"]}

        graph = StateGraph(State)
        graph.add_node("shout", shout)
        graph.add_edge(START, "shout")
        graph.add_edge("shout", END)
        app = graph.compile()
        assert app.invoke({"text": "hi", "log": []}) == {"text": "HI", "log": ["shouted"]}
    """

    def __init__(self, schema: type[Any]) -> None:
        self.schema: Schema = describe_schema(schema)
        self.nodes: dict[str, NodeSpec] = {}
        self.edges: list[tuple[str, str]] = []
        self.joins: list[tuple[tuple[str, ...], str]] = []
        self.branches: list[Branch] = []

    # -- nodes ------------------------------------------------------------------------

    def add_node(
        self,
        name: str | Callable[..., Any],
        fn: Callable[..., Any] | CompiledGraph | None = None,
        *,
        tags: Sequence[str] | None = None,
        metadata: Mapping[str, Any] | None = None,
        destinations: Sequence[str] | None = None,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
    ) -> StateGraph:
        """Add a node: a function, an async function or a compiled graph (a subgraph).

        ``fn`` may be omitted: ``add_node(fn)`` uses ``fn.__name__`` as the name.

        ``tags`` go on every event of the node (and of models and tools it calls);
        ``metadata`` is merged into those events' metadata; ``destinations`` lists the
        nodes a ``Command(goto=...)`` from this node may go to (for validation);
        ``retry`` is a :class:`~headwater.retry.RetryPolicy` that runs the node again
        when it fails with a transient error; ``timeout`` bounds each attempt of the node
        in seconds (then it is cancelled and fails with
        :class:`~headwater.errors.RunTimeoutError`, which ``retry`` may retry).

        Example::

            graph.add_node("process", process_fn, tags=["critical"])
            graph.add_node("call_api", call_api, retry=RetryPolicy(max_attempts=5), timeout=30)
        """
        if fn is None and callable(name):
            fn, name = name, getattr(name, "__name__", "")
        if not isinstance(name, str) or not name:
            raise GraphValidationError(f"Node name must be a non-empty string; got {name!r}.")
        if name in (START, END):
            raise GraphValidationError(
                f"Node name {name!r} is reserved for the graph's virtual start/end; pick "
                "another name."
            )
        bad = [c for c in _RESERVED_CHARS if c in name]
        if bad:
            raise GraphValidationError(
                f"Node name {name!r} contains reserved character {bad[0]!r} (used in "
                "subgraph namespaces); pick a name without '|' or ':'."
            )
        if name in self.nodes:
            raise GraphValidationError(
                f"Node {name!r} is already in the graph; node names must be unique."
            )
        from headwater._pregel import CompiledGraph

        if fn is None or not (callable(fn) or isinstance(fn, CompiledGraph)):
            raise GraphValidationError(
                f"Node {name!r} needs a callable (a function, async function or compiled "
                f"graph); got {type(fn).__name__}: {fn!r:.80}."
            )
        if tags is not None and (
            isinstance(tags, str) or not all(isinstance(t, str) for t in tags)
        ):
            raise GraphValidationError(
                f"Tags of node {name!r} must be a list of strings; got {tags!r:.80}."
            )
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise GraphValidationError(
                f"retry of node {name!r} must be a headwater.RetryPolicy; got "
                f"{type(retry).__name__}: {retry!r:.80}."
            )
        if timeout is not None and not is_seconds(timeout):
            raise GraphValidationError(
                f"timeout of node {name!r} must be a positive, finite number of seconds "
                f"(each attempt of the node); got {type(timeout).__name__}: {timeout!r:.40}."
            )
        if retry is not None and isinstance(fn, CompiledGraph):
            raise GraphValidationError(
                f"Node {name!r} is a subgraph, which cannot be retried as a whole (its own "
                "checkpoints and events would repeat); give its own nodes a retry policy."
            )
        node_fn: Callable[..., Any]
        if isinstance(fn, CompiledGraph):
            subgraph: CompiledGraph | None = fn
            node_fn = fn.ainvoke  # not called: the scheduler runs `subgraph` as a child run
            calling = Calling(is_async=True, config="positional", writer=False)
        else:
            subgraph = None
            node_fn = fn
            calling = calling_convention(fn, f"Node {name!r}")
        dests: tuple[str, ...] | None
        if destinations is not None:
            if isinstance(destinations, str) or not all(isinstance(d, str) for d in destinations):
                raise GraphValidationError(
                    f"destinations of node {name!r} must be a list of node names; got "
                    f"{destinations!r:.80}."
                )
            dests = tuple(destinations)
        elif subgraph is not None:
            dests = None
        else:
            dests = _command_destinations(node_fn)
        self.nodes[name] = NodeSpec(
            name=name,
            fn=node_fn,
            calling=calling,
            tags=tuple(tags or ()),
            metadata=dict(metadata or {}),
            destinations=dests,
            subgraph=subgraph,
            retry=retry,
            timeout=timeout,
        )
        return self

    # -- edges ------------------------------------------------------------------------

    def add_edge(self, start: str | Sequence[str], end: str) -> StateGraph:
        """Run ``end`` after ``start``; with a list of starts, after all of them (a join).

        Example::

            graph.add_edge(START, "a")
            graph.add_edge(["a", "b"], "c")   # c waits for both a and b
        """
        if not isinstance(end, str):
            raise GraphValidationError(f"Edge end must be a node name; got {end!r:.80}.")
        if end == START:
            raise GraphValidationError(f"Edge {start!r} -> START: START cannot be an edge's end.")
        if isinstance(start, str):
            if start == END:
                raise GraphValidationError(f"Edge END -> {end!r}: END cannot be an edge's start.")
            self.edges.append((start, end))
            return self
        starts = tuple(start)
        if not starts or not all(isinstance(s, str) for s in starts):
            raise GraphValidationError(
                f"Join edge into {end!r} needs a non-empty list of node names; got {start!r:.80}."
            )
        if START in starts or END in starts:
            raise GraphValidationError(
                f"Join edge {list(starts)} -> {end!r} may not start at START or END."
            )
        if len(starts) == 1:
            self.edges.append((starts[0], end))
        else:
            self.joins.append((starts, end))
        return self

    def add_conditional_edges(
        self,
        source: str,
        path: Callable[..., Any],
        path_map: Mapping[Hashable, str] | Sequence[str] | None = None,
    ) -> StateGraph:
        """After ``source``, call ``path(state)`` to choose the next node(s).

        The router returns a node name, ``END``, a :class:`~headwater.Send`, or a list of
        them. ``path_map`` translates return values to node names (a dict) or lists the
        possible destinations (a list). The router runs after the step's writes are applied,
        once per step in which ``source`` ran, and may be sync or async.

        Example::

            def route(state):
                return "tools" if state["calls"] else END

            graph.add_conditional_edges("agent", route, ["tools", END])
        """
        if not isinstance(source, str):
            raise GraphValidationError(
                f"Conditional edge source must be a node name; got {source!r:.80}."
            )
        if source == END:
            raise GraphValidationError("Conditional edges cannot start at END.")
        if not callable(path):
            raise GraphValidationError(
                f"Router of conditional edge from {source!r} must be callable; got "
                f"{type(path).__name__}: {path!r:.80}."
            )
        mapping: Mapping[Hashable, str] | None
        if path_map is None:
            mapping = None
        elif isinstance(path_map, Mapping):
            mapping = dict(path_map)
        elif isinstance(path_map, str):
            raise GraphValidationError(
                f"path_map of conditional edge from {source!r} must be a dict or a list of "
                f"node names; got the string {path_map!r}."
            )
        else:
            mapping = {name: name for name in path_map}
        calling = calling_convention(path, f"Router of conditional edge from {source!r}")
        self.branches.append(Branch(source, path, calling, mapping))
        return self

    def set_entry_point(self, name: str) -> StateGraph:
        """Same as ``add_edge(START, name)``.

        Example::

            graph.set_entry_point("first")
        """
        return self.add_edge(START, name)

    def set_conditional_entry_point(
        self,
        path: Callable[..., Any],
        path_map: Mapping[Hashable, str] | Sequence[str] | None = None,
    ) -> StateGraph:
        """Same as ``add_conditional_edges(START, path, path_map)``.

        Example::

            graph.set_conditional_entry_point(lambda s: "fast" if s["easy"] else "slow")
        """
        return self.add_conditional_edges(START, path, path_map)

    def set_finish_point(self, name: str) -> StateGraph:
        """Same as ``add_edge(name, END)``.

        Example::

            graph.set_finish_point("last")
        """
        return self.add_edge(name, END)

    # -- compile ----------------------------------------------------------------------

    def validate(self) -> None:
        """Check the graph; raise :class:`~headwater.errors.GraphValidationError` if broken.

        Example::

            graph.validate()  # compile() calls this for you
        """
        known = set(self.nodes)
        names = sorted(known)
        listing = ", ".join(names) or "(none)"

        def check(node: str, where: str, role: str) -> None:
            if node not in known:
                hint = _suggest(node, names)
                raise GraphValidationError(
                    f"{where} {role} unknown node {node!r}.{hint} Known nodes: {listing}. "
                    f"Add it with add_node({node!r}, fn) or fix the edge."
                )

        for start, end in self.edges:
            where = f"Edge {start!r} -> {end!r}"
            if start != START:
                check(start, where, "starts at")
            if end != END:
                check(end, where, "points to")
        for starts, end in self.joins:
            where = f"Join edge {list(starts)} -> {end!r}"
            for s in starts:
                check(s, where, "starts at")
            if end != END:
                check(end, where, "points to")
        for branch in self.branches:
            where = f"Conditional edge from {branch.source!r}"
            if branch.source != START:
                check(branch.source, where, "starts at")
            for target in (branch.path_map or {}).values():
                if target != END:
                    check(target, where + " (path_map)", "points to")
        for spec in self.nodes.values():
            for target in spec.destinations or ():
                if target != END:
                    check(target, f"Command destinations of node {spec.name!r}", "name")

        has_entry = any(s == START for s, _ in self.edges) or any(
            b.source == START for b in self.branches
        )
        if not has_entry:
            raise GraphValidationError(
                "Graph has no entry point: add an edge from START, e.g. "
                f"add_edge(START, {names[0] if names else 'node'!r})."
            )

        # Reachability from START over every way a run can move.
        successors: dict[str, set[str]] = {n: set() for n in (*known, START)}
        anywhere: set[str] = set()
        for s, e in self.edges:
            successors[s].add(e)
        for b in self.branches:
            if b.path_map is None:
                anywhere.add(b.source)
            else:
                successors[b.source].update(b.path_map.values())
        for spec in self.nodes.values():
            if spec.destinations is None:
                anywhere.add(spec.name)
            else:
                successors[spec.name].update(spec.destinations)
        reached = {START}
        frontier = [START]
        pending_joins = list(self.joins)
        while frontier:
            while frontier:
                node = frontier.pop()
                if node in anywhere:
                    nxt: set[str] = known
                else:
                    nxt = successors.get(node, set())
                for n in nxt:
                    if n not in reached and n != END:
                        reached.add(n)
                        frontier.append(n)
            still = []
            for starts, end in pending_joins:
                if all(s in reached for s in starts):
                    if end not in reached and end != END:
                        reached.add(end)
                        frontier.append(end)
                else:
                    still.append((starts, end))
            pending_joins = still
        unreachable = sorted(known - reached)
        if unreachable:
            raise GraphValidationError(
                f"Node {unreachable[0]!r} is unreachable from START: no edge, path_map or "
                "Command destination leads to it. Add an edge to it, remove it, or annotate "
                f"the node that goes there with Command: -> Command[Literal[{unreachable[0]!r}]]."
            )

    def compile(
        self,
        checkpointer: Checkpointer | str | None = None,
        *,
        interrupt_before: Sequence[str] = (),
        interrupt_after: Sequence[str] = (),
        name: str | None = None,
        plugin_manager: PluginManager | None = None,
    ) -> CompiledGraph:
        """Validate the graph and return a runnable :class:`~headwater.CompiledGraph`.

        ``plugin_manager`` pins the plugins the graph uses (tests and embedders); by
        default the process-wide one is built on first run.

        Example::

            app = graph.compile(name="pipeline")
            result = app.invoke({"text": "hi"})
        """
        from headwater._pregel import CompiledGraph

        self.validate()
        for which, nodes in (
            ("interrupt_before", interrupt_before),
            ("interrupt_after", interrupt_after),
        ):
            for node in nodes:
                if node not in self.nodes:
                    raise GraphValidationError(
                        f"{which} names unknown node {node!r}.{_suggest(node, sorted(self.nodes))}"
                    )
        if name is not None and (not isinstance(name, str) or not name):
            raise GraphValidationError(f"Graph name must be a non-empty string; got {name!r}.")
        return CompiledGraph(
            self,
            name=name or "Graph",
            plugin_manager=plugin_manager,
            checkpointer=checkpointer,
            interrupt_before=interrupt_before,
            interrupt_after=interrupt_after,
        )
