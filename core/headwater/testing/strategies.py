"""Hypothesis strategies for headwater graphs and states: property-test graphs and plugins.

Needs `hypothesis <https://hypothesis.readthedocs.io>`_ (``pip install hypothesis``).

* :func:`states_for` — valid states of a state schema (``TypedDict``, dataclass or attrs),
  built from its annotations; :func:`inputs_for` — valid inputs of a compiled graph. Use
  them to property-test *your* graphs: whatever the input, the run must not fail.
* :func:`graphs` — random valid graphs (chains, fan-out/fan-in, joins, conditional edges,
  loops, ``Send`` fan-outs, ``Command`` routing, sync and async nodes, random delays) as
  :class:`GraphCase` objects that build the graph *and* compute the final state it must
  reach with a small sequential reference interpreter, independent of the scheduler. Use
  them to check that a plugin (a node wrapper, a checkpointer, a stream mode) changes
  nothing about what a run computes.
* :func:`malformed_graphs` — graphs with exactly one defect, as :class:`MalformedGraph`
  objects naming the culprit the ``GraphValidationError`` message must mention.
* :func:`retimed` — the same :class:`GraphCase` with new random per-node delays.

Example::

    from hypothesis import given, settings
    from headwater.testing.strategies import graphs, inputs_for

    app = build_my_graph()

    @settings(max_examples=50, deadline=None)
    @given(inputs_for(app))
    def test_my_graph_accepts_any_valid_input(state):
        app.invoke(state)

    @settings(max_examples=50, deadline=None)
    @given(graphs())
    def test_random_graphs_reach_the_reference_state(case):
        final = case.compile().invoke(case.input, case.config)
        assert final == case.reference().values
"""

from __future__ import annotations

import collections.abc
import dataclasses
import enum
import operator
import threading
import time
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, Literal, TypedDict

import anyio
import anyio.lowlevel
import attrs
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from headwater import END, START, Command, CompiledGraph, Send, StateGraph
from headwater.errors import GraphRecursionError, InvalidUpdateError

__all__ = [
    "BranchCase",
    "COMMUTATIVE_KEYS",
    "CaseAttrs",
    "CaseData",
    "CaseDict",
    "Choice",
    "DEFECTS",
    "GraphCase",
    "MalformedGraph",
    "NodeCase",
    "Reference",
    "SCHEMA_KINDS",
    "Trace",
    "graphs",
    "inputs_for",
    "malformed_graphs",
    "merge_counts",
    "retimed",
    "states_for",
]

SchemaKind = Literal["typeddict", "dataclass", "attrs"]
SCHEMA_KINDS: tuple[SchemaKind, ...] = ("typeddict", "dataclass", "attrs")


# -- the state every generated graph runs over -------------------------------------------


def merge_counts(current: Mapping[str, int], new: Mapping[str, int]) -> dict[str, int]:
    """A commutative reducer: add counts key by key (``Counter`` addition, kept as a dict).

    Example::

        assert merge_counts({"a": 1}, {"a": 2, "b": 1}) == {"a": 3, "b": 1}
    """
    out = dict(current)
    for key, count in new.items():
        out[key] = out.get(key, 0) + count
    return out


class CaseDict(TypedDict, total=False):
    """The state of generated graphs as a ``TypedDict``.

    ``seed`` and ``last`` take the last write; ``total`` (``operator.add`` on ints),
    ``tags`` (set union) and ``visits`` (:func:`merge_counts`) have commutative
    reducers; ``log`` (``operator.add`` on lists) is order-sensitive.

    Example::

        graph = StateGraph(CaseDict)
    """

    seed: int
    last: str
    total: Annotated[int, operator.add]
    tags: Annotated[set[str], operator.or_]
    visits: Annotated[dict[str, int], merge_counts]
    log: Annotated[list[str], operator.add]


@dataclasses.dataclass
class CaseData:
    """The state of generated graphs as a dataclass (same keys as :class:`CaseDict`).

    Example::

        assert CaseData().log == []
    """

    seed: int = 0
    last: str = ""
    total: Annotated[int, operator.add] = 0
    tags: Annotated[set[str], operator.or_] = dataclasses.field(default_factory=set)
    visits: Annotated[dict[str, int], merge_counts] = dataclasses.field(default_factory=dict)
    log: Annotated[list[str], operator.add] = dataclasses.field(default_factory=list)


@attrs.define
class CaseAttrs:
    """The state of generated graphs as an attrs class (same keys as :class:`CaseDict`).

    Example::

        assert CaseAttrs(total=3).total == 3
    """

    seed: int = 0
    last: str = ""
    total: Annotated[int, operator.add] = 0
    tags: Annotated[set[str], operator.or_] = attrs.Factory(set)
    visits: Annotated[dict[str, int], merge_counts] = attrs.Factory(dict)
    log: Annotated[list[str], operator.add] = attrs.Factory(list)


_SCHEMAS: dict[SchemaKind, type[Any]] = {
    "typeddict": CaseDict,
    "dataclass": CaseData,
    "attrs": CaseAttrs,
}
_DEFAULTS: dict[str, Callable[[], Any]] = {
    "seed": int,
    "last": str,
    "total": int,
    "tags": set,
    "visits": dict,
    "log": list,
}
_REDUCERS: dict[str, Callable[[Any, Any], Any]] = {
    "total": operator.add,
    "tags": operator.or_,
    "visits": merge_counts,
    "log": operator.add,
}
COMMUTATIVE_KEYS: tuple[str, ...] = ("total", "tags", "visits")
"""Keys of the generated graphs' state whose reducers are commutative."""


def _read(state: Any, key: str) -> Any:
    """A key of a state, whichever form it has (dict with missing keys, or an instance)."""
    if isinstance(state, Mapping):
        return state[key] if key in state else _DEFAULTS[key]()
    return getattr(state, key)


# -- graphs as data ----------------------------------------------------------------------


@attrs.frozen
class Choice:
    """Where a router or a ``Command`` goes, decided from a state: data, not code.

    With ``loop=(back, limit)``, goes back to ``back`` while ``visits[source] < limit``
    (so every loop ends). Otherwise picks from ``targets`` (node names or ``END``):
    ``mode="one"`` one of them (by the state's ``total`` and visits), ``"all"`` all of
    them, ``"some"`` those whose bit is set in ``total``; then adds ``count`` ``Send``
    objects per ``(worker, count)`` of ``sends``.

    Example::

        choice = Choice(source="a", targets=("b", END), mode="one")
        assert choice.decide({"total": 1, "visits": {"a": 0}}) == [END]
    """

    source: str
    targets: tuple[str, ...] = ()
    mode: Literal["one", "all", "some"] = "all"
    sends: tuple[tuple[str, int], ...] = ()
    loop: tuple[str, int] | None = None

    def decide(self, state: Any) -> list[str | Send]:
        """The destinations for ``state``.

        Example::

            Choice(source="a", sends=(("w", 2),)).decide({})  # two Send("w", ...)
        """
        visits = _read(state, "visits").get(self.source, 0)
        if self.loop is not None and visits < self.loop[1]:
            return [self.loop[0]]
        total = _read(state, "total")
        out: list[str | Send] = []
        if self.targets:
            if self.mode == "one":
                out.append(self.targets[(total + visits) % len(self.targets)])
            elif self.mode == "all":
                out.extend(self.targets)
            else:
                out.extend(t for i, t in enumerate(self.targets) if (total >> i) & 1)
        for worker, count in self.sends:
            out.extend(
                Send(worker, {"item": i, "src": self.source, "base": total}) for i in range(count)
            )
        return out

    def destinations(self) -> tuple[str, ...]:
        """Every name :meth:`decide` may return or send to (for ``path_map``).

        Example::

            Choice(source="a", targets=("b",), loop=("a", 2)).destinations()  # ("b", "a")
        """
        names = [*self.targets]
        if self.loop is not None:
            names.append(self.loop[0])
        names.extend(worker for worker, _ in self.sends)
        return tuple(dict.fromkeys(names))

    def describe(self) -> str:
        """A short readable form (used in :meth:`GraphCase.describe`).

        Example::

            Choice(source="a", targets=("b",)).describe()  # "all of ['b']"
        """
        parts = []
        if self.loop is not None:
            parts.append(f"back to {self.loop[0]!r} while visits < {self.loop[1]}, then")
        parts.append(f"{self.mode} of [{', '.join(_show(t) for t in self.targets)}]")
        parts.extend(f"+ {n} x Send({w!r})" for w, n in self.sends)
        return " ".join(parts)


def _show(name: str) -> str:
    return "START" if name == START else "END" if name == END else repr(name)


def _is_send_arg(value: Any) -> bool:
    """A ``Send`` argument made by :meth:`Choice.decide` (states never have these keys)."""
    return isinstance(value, Mapping) and {"item", "src", "base"} <= value.keys()


@attrs.frozen
class NodeCase:
    """One node of a :class:`GraphCase`: what it writes is a pure function of its input.

    A node reading the state appends ``"name@len(log)|total"`` to ``log``, adds
    ``weight + seed % 5`` to ``total``, counts itself in ``visits``, adds ``tag`` to
    ``tags`` and, with ``writes_last``, sets ``last``. A ``send_target`` node is also
    sent ``Send`` arguments ``{"item", "src", "base"}``; for one of those it appends
    ``"name<src.item|base"`` and adds ``item * 10 + weight``. With ``command``, it
    returns ``Command(update=..., goto=command.decide(input))``.

    Example::

        node = NodeCase(name="a", weight=2)
        assert node.update({"total": 1}) == {"log": ["a@0|1"], "total": 2, "visits": {"a": 1}}
    """

    name: str
    sync: bool = False
    signature: Literal["state", "config", "writer"] = "state"
    weight: int = 0
    tag: str | None = None
    writes_last: bool = False
    send_target: bool = False
    command: Choice | None = None
    delay: float | None = None

    def update(self, value: Any) -> dict[str, Any]:
        """The update this node returns for ``value`` (a state, or a ``Send`` argument).

        Example::

            NodeCase(name="w", send_target=True).update({"item": 1, "src": "a", "base": 0})
        """
        if self.send_target and _is_send_arg(value):
            entry = f"{self.name}<{value['src']}.{value['item']}|{value['base']}"
            total = value["item"] * 10 + self.weight
        else:
            entry = f"{self.name}@{len(_read(value, 'log'))}|{_read(value, 'total')}"
            total = self.weight + _read(value, "seed") % 5
        out: dict[str, Any] = {"log": [entry], "total": total, "visits": {self.name: 1}}
        if self.tag is not None:
            out["tags"] = {self.tag}
        if self.writes_last:
            out["last"] = self.name
        return out

    def output(self, value: Any) -> dict[str, Any] | Command:
        """What the node function returns: :meth:`update`, or a ``Command`` carrying it.

        Example::

            NodeCase(name="a", command=Choice(source="a", targets=(END,))).output({})
        """
        update = self.update(value)
        if self.command is None:
            return update
        return Command(update=update, goto=self.command.decide(value))


@attrs.frozen
class BranchCase:
    """A conditional edge of a :class:`GraphCase`: its :class:`Choice` and how it is wired.

    ``path_map`` is ``"none"`` (the router returns names), ``"list"`` (a list of the
    possible destinations) or ``"dict"`` (the router returns keys the dict maps to
    names); ``is_async`` makes the router a coroutine; ``bare`` returns a lone
    destination unwrapped instead of a one-item list.

    Example::

        BranchCase(choice=Choice(source="a", targets=("b", END), mode="one"), path_map="dict")
    """

    choice: Choice
    path_map: Literal["none", "list", "dict"] = "none"
    is_async: bool = False
    bare: bool = False

    def keys(self) -> dict[str, str]:
        """Name → key the router returns, when ``path_map="dict"``.

        Example::

            BranchCase(choice=Choice(source="a", targets=("b",))).keys()  # {"b": "to0"}
        """
        return {name: f"to{i}" for i, name in enumerate(self.choice.destinations())}


class Trace:
    """Records every update the nodes of a built :class:`GraphCase` return (thread-safe).

    Example::

        trace = Trace()
        app = case.compile(trace=trace)
        app.invoke(case.input, case.config)
        nodes_that_ran = [node for node, _ in trace.updates]
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.updates: list[tuple[str, dict[str, Any]]] = []

    def record(self, node: str, update: dict[str, Any]) -> None:
        """Add one node's update.

        Example::

            trace.record("a", {"total": 1})
        """
        with self._lock:
            self.updates.append((node, update))


@attrs.frozen
class Reference:
    """What a run of a :class:`GraphCase` must produce, per the reference interpreter.

    ``values`` is the final state; ``steps`` the number of supersteps the run takes;
    ``tasks`` the nodes that ran in each step (in write order); ``updates`` every node
    update in the order it was applied.

    Example::

        ref = case.reference()
        assert app.invoke(case.input, case.config) == ref.values
    """

    values: dict[str, Any]
    steps: int
    tasks: tuple[tuple[str, ...], ...]
    updates: tuple[tuple[str, dict[str, Any]], ...]


@attrs.frozen(kw_only=True, repr=False)
class GraphCase:
    """A random valid graph drawn by :func:`graphs`: build it, run it, know its answer.

    ``compile()`` builds the graph (``builder()`` the uncompiled ``StateGraph``);
    ``input`` and ``config`` are a run's input and config (``config`` sets
    ``recursion_limit`` to exactly the number of supersteps the run takes);
    ``reference()`` computes the final state sequentially, one task after the other,
    without the scheduler. ``describe()`` (also the ``repr``) reads like the builder
    calls, so a failing example shows the graph.

    Example::

        @given(graphs())
        def test_matches_reference(case):
            app = case.compile()
            assert app.invoke(case.input, case.config) == case.reference().values
    """

    kind: SchemaKind
    nodes: tuple[NodeCase, ...]
    edges: tuple[tuple[str, str], ...]
    joins: tuple[tuple[tuple[str, ...], str], ...] = ()
    branches: tuple[BranchCase, ...] = ()
    input: Mapping[str, Any] = attrs.field(factory=dict)
    recursion_limit: int = 25
    endless: bool = False

    @property
    def schema(self) -> type[Any]:
        """The state schema class: :class:`CaseDict`, :class:`CaseData` or :class:`CaseAttrs`.

        Example::

            StateGraph(case.schema)
        """
        return _SCHEMAS[self.kind]

    @property
    def config(self) -> dict[str, Any]:
        """A run config: ``{"recursion_limit": <the steps the run takes>}``.

        Example::

            await case.compile().ainvoke(case.input, case.config)
        """
        return {"recursion_limit": self.recursion_limit}

    def node(self, name: str) -> NodeCase:
        """The node called ``name``.

        Example::

            case.node(case.nodes[0].name).sync
        """
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def builder(self, *, trace: Trace | None = None) -> StateGraph:
        """The graph as a ``StateGraph`` (uncompiled); nodes record into ``trace``.

        Example::

            graph = case.builder()
            graph.add_node("extra", fn)  # then compile it yourself
        """
        graph = StateGraph(self.schema)
        for node in self.nodes:
            fn = _node_function(node, trace)
            if node.command is not None:
                graph.add_node(node.name, fn, destinations=node.command.destinations())
            else:
                graph.add_node(node.name, fn)
        for start, end in self.edges:
            graph.add_edge(start, end)
        for starts, end in self.joins:
            graph.add_edge(list(starts), end)
        for branch in self.branches:
            router, path_map = _router(branch)
            graph.add_conditional_edges(branch.choice.source, router, path_map)
        return graph

    def compile(self, *, trace: Trace | None = None, **kwargs: Any) -> CompiledGraph:
        """Build and compile the graph; ``kwargs`` go to ``StateGraph.compile``.

        Example::

            app = case.compile(checkpointer="memory:")
        """
        return self.builder(trace=trace).compile(**kwargs)

    def with_delays(self, delays: Mapping[str, float | None]) -> GraphCase:
        """The same graph with per-node delays (seconds; ``None``: never suspends).

        Example::

            slow_first = case.with_delays({case.nodes[0].name: 0.002})
        """
        nodes = tuple(
            attrs.evolve(n, delay=delays[n.name]) if n.name in delays else n for n in self.nodes
        )
        return attrs.evolve(self, nodes=nodes)

    def reference(
        self, input: Mapping[str, Any] | None = None, *, recursion_limit: int | None = None
    ) -> Reference:
        """Run the graph with the sequential reference interpreter.

        ``input`` defaults to :attr:`input`, ``recursion_limit`` to :attr:`recursion_limit`.
        Raises ``GraphRecursionError`` when the run needs more supersteps than the limit
        and ``InvalidUpdateError`` when two tasks of a step write a key without reducer,
        as the scheduler must.

        Example::

            with pytest.raises(GraphRecursionError):
                endless_case.reference(recursion_limit=10)
        """
        return _interpret(
            self,
            self.input if input is None else input,
            self.recursion_limit if recursion_limit is None else recursion_limit,
            None,
        )

    def describe(self) -> str:
        """The graph as readable builder calls (also the ``repr``).

        Example::

            print(case.describe())
        """
        lines = [
            f"GraphCase(kind={self.kind!r}, endless={self.endless}, "
            f"recursion_limit={self.recursion_limit}, input={dict(self.input)!r})"
        ]
        for n in self.nodes:
            how = [
                "sync" if n.sync else "async",
                f"fn({'state' if n.signature == 'state' else 'state, ' + n.signature})",
            ]
            if n.delay is not None:
                how.append(f"delay={n.delay * 1000:.2f}ms")
            how.append(f"weight={n.weight}")
            if n.tag is not None:
                how.append(f"tag={n.tag!r}")
            if n.writes_last:
                how.append("writes last")
            if n.send_target:
                how.append("also sent Send args")
            if n.command is not None:
                how.append(f"Command(goto={n.command.describe()})")
            lines.append(f"  add_node({n.name!r}: {', '.join(how)})")
        for start, end in self.edges:
            lines.append(f"  add_edge({_show(start)}, {_show(end)})")
        for starts, end in self.joins:
            lines.append(f"  add_edge({list(starts)!r}, {_show(end)})")
        for b in self.branches:
            lines.append(
                f"  add_conditional_edges({_show(b.choice.source)}, "
                f"{'async ' if b.is_async else ''}router: {b.choice.describe()}, "
                f"path_map={b.path_map}{', bare' if b.bare else ''})"
            )
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.describe()


def _node_function(node: NodeCase, trace: Trace | None) -> Callable[..., Any]:
    """The callable added to the graph for ``node`` (sync or async, with its signature)."""
    delay = node.delay

    def compute(value: Any) -> Any:
        out = node.output(value)
        if trace is not None:
            trace.record(node.name, node.update(value))
        return out

    fn: Callable[..., Any]
    if node.sync:
        if node.signature == "config":

            def fn(state: Any, config: Mapping[str, Any]) -> Any:
                if delay is not None:
                    time.sleep(delay)
                return compute(state)

        elif node.signature == "writer":

            def fn(state: Any, *, writer: Callable[..., Any]) -> Any:
                writer({"node": node.name})
                if delay is not None:
                    time.sleep(delay)
                return compute(state)

        else:

            def fn(state: Any) -> Any:
                if delay is not None:
                    time.sleep(delay)
                return compute(state)

    elif node.signature == "config":

        async def fn(state: Any, config: Mapping[str, Any]) -> Any:
            if delay is not None:
                await anyio.sleep(delay)
            return compute(state)

    elif node.signature == "writer":

        async def fn(state: Any, *, writer: Callable[..., Any]) -> Any:
            writer({"node": node.name})
            if delay is not None:
                await anyio.sleep(delay)
            return compute(state)

    else:

        async def fn(state: Any) -> Any:
            if delay is not None:
                await anyio.sleep(delay)
            return compute(state)

    fn.__name__ = fn.__qualname__ = node.name
    return fn


def _router(branch: BranchCase) -> tuple[Callable[..., Any], Any]:
    """The router callable and ``path_map`` argument for ``branch``."""
    choice = branch.choice
    keys = branch.keys() if branch.path_map == "dict" else None

    def decide(state: Any) -> Any:
        dests: list[Any] = choice.decide(state)
        if keys is not None:
            dests = [d if isinstance(d, Send) else keys[d] for d in dests]
        if branch.bare and len(dests) == 1:
            return dests[0]
        return dests

    router: Callable[..., Any]
    if branch.is_async:

        async def router(state: Any) -> Any:
            await anyio.lowlevel.checkpoint()
            return decide(state)

    else:
        router = decide
    router.__name__ = f"route_{choice.source}"
    path_map: Any
    if branch.path_map == "list":
        path_map = list(choice.destinations())
    elif keys is not None:
        path_map = {key: name for name, key in keys.items()}
    else:
        path_map = None
    return router, path_map


# -- the reference interpreter -----------------------------------------------------------


def _interpret(
    case: GraphCase,
    input: Mapping[str, Any],
    limit: int,
    conflicts: set[str] | None,
) -> Reference:
    """Run ``case`` one task at a time: the superstep semantics, spelled out plainly.

    Step 0 applies the input; each step runs every pending task against the state as it
    was at the start of the step, then applies their updates in (node name, task
    position) order through the reducers; routers then see the updated state. Pending
    tasks: one per node triggered by an edge, a completed join or a goto (sorted by
    name), then one per ``Send`` (in the order they were made). With ``conflicts``,
    nodes that write ``seed``/``last`` in the same step are collected instead of raising.
    """
    schema = case.schema
    values: dict[str, Any] = (
        {} if case.kind == "typeddict" else {k: make() for k, make in _DEFAULTS.items()}
    )
    nodes = {n.name: n for n in case.nodes}

    def state() -> Any:
        return dict(values) if case.kind == "typeddict" else schema(**values)

    def apply(writes: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
        per_key: dict[str, list[tuple[str, Any]]] = {}
        for node, update in writes:
            for key, value in update.items():
                per_key.setdefault(key, []).append((node, value))
        for key, items in per_key.items():
            reducer = _REDUCERS.get(key)
            if reducer is None:
                if len(items) > 1:
                    if conflicts is None:
                        raise InvalidUpdateError(
                            f"reference: key {key!r} written by {[n for n, _ in items]}"
                        )
                    conflicts.update(n for n, _ in items)
                values[key] = items[-1][1]
                continue
            current = values[key] if key in values else _DEFAULTS[key]()
            for _, value in items:
                current = reducer(current, value)
            values[key] = current

    join_seen: list[set[str]] = [set() for _ in case.joins]

    def route(ran: list[str], goto: Mapping[str, list[str | Send]]) -> list[tuple[str, Any]]:
        pulls: set[str] = set()
        pushes: list[tuple[str, Any]] = []

        def add(dest: str | Send) -> None:
            if isinstance(dest, Send):
                pushes.append((dest.node, dest.arg))
            elif dest != END:
                pulls.add(dest)

        now = state()
        for node in ran:
            for start, end in case.edges:
                if start == node and end != END:
                    pulls.add(end)
            for j, (starts, end) in enumerate(case.joins):
                if node in starts:
                    join_seen[j].add(node)
                    if join_seen[j] >= set(starts):
                        join_seen[j].clear()
                        add(end)
            for dest in goto.get(node, ()):
                add(dest)
            for branch in case.branches:
                if branch.choice.source == node:
                    for dest in branch.choice.decide(now):
                        add(dest)
        return [(name, None) for name in sorted(pulls)] + pushes

    apply([(START, input)])
    pending = route([START], {})
    steps: list[tuple[str, ...]] = []
    applied: list[tuple[str, dict[str, Any]]] = []
    while pending:
        if len(steps) == limit:
            raise GraphRecursionError(
                f"reference: recursion limit {limit} reached with {sorted(n for n, _ in pending)}"
            )
        snapshot = state()
        results = []
        for position, (name, arg) in enumerate(pending):
            value = snapshot if arg is None else arg
            node = nodes[name]
            goto = node.command.decide(value) if node.command is not None else []
            results.append((name, position, node.update(value), goto))
        results.sort(key=lambda r: (r[0], r[1]))
        steps.append(tuple(name for name, *_ in results))
        writes = [(name, update) for name, _, update, _ in results]
        applied.extend(writes)
        apply(writes)
        ran: list[str] = []
        gotos: dict[str, list[str | Send]] = {}
        for name, _, _, goto in results:
            if not ran or ran[-1] != name:
                ran.append(name)
            gotos.setdefault(name, []).extend(goto)
        pending = route(ran, gotos)
    return Reference(
        values=dict(values), steps=len(steps), tasks=tuple(steps), updates=tuple(applied)
    )


# -- graphs() ------------------------------------------------------------------------------

_NAME_CHARS = "abcdxyzAZ_09é"
_node_names = st.text(alphabet=_NAME_CHARS, min_size=1, max_size=5)
_delays = st.one_of(st.none(), st.just(0.0), st.floats(min_value=0.0, max_value=0.002))
_REFERENCE_CAP = 2000


@attrs.define
class _Draft:
    targets: list[str] = attrs.Factory(list)
    sends: list[tuple[str, int]] = attrs.Factory(list)
    loop: tuple[str, int] | None = None


def _draft(draw: st.DrawFn, routes: dict[str, list[_Draft]], source: str) -> _Draft:
    """The conditional edge of ``source`` to extend (now and then a new one)."""
    drafts = routes.setdefault(source, [])
    if not drafts or draw(st.integers(0, 3)) == 0:
        drafts.append(_Draft())
    return drafts[-1]


def _draw_choice(draw: st.DrawFn, source: str, draft: _Draft) -> Choice:
    mode: Literal["one", "all", "some"] = draw(st.sampled_from(["one", "all", "some"]))
    targets = list(draft.targets)
    if draw(st.booleans()):
        targets.append(END)
    return Choice(
        source=source,
        targets=tuple(targets),
        mode=mode,
        sends=tuple(draft.sends),
        loop=draft.loop,
    )


def _case_inputs(names: Sequence[str]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {},
        optional={
            "seed": st.integers(-5, 50),
            "last": st.text(alphabet="pq", max_size=3),
            "total": st.integers(-10, 10),
            "tags": st.sets(st.sampled_from("wxyz"), max_size=2),
            "visits": st.dictionaries(st.sampled_from(list(names)), st.integers(0, 2), max_size=2),
            "log": st.lists(st.text(alphabet="pq", max_size=2), max_size=2),
        },
    )


@st.composite
def _graph_cases(
    draw: st.DrawFn,
    *,
    min_nodes: int,
    max_nodes: int,
    allow_sends: bool,
    allow_delays: bool,
    allow_sync: bool,
    allow_joins: bool,
    allow_conditional: bool,
    allow_loops: bool,
    allow_commands: bool,
    endless: bool,
    kinds: tuple[SchemaKind, ...],
) -> GraphCase:
    n = draw(st.integers(min_nodes, max_nodes))
    names: list[str] = draw(st.lists(_node_names, min_size=n, max_size=n, unique=True))
    kind: SchemaKind = draw(st.sampled_from(kinds))
    links = ["edge"]
    if allow_joins:
        links.append("join")
    if allow_conditional:
        links.append("router")
    if allow_commands:
        links.append("command")
    if allow_sends:
        links.append("send")

    edges: list[tuple[str, str]] = [(START, names[0])]
    joins: list[tuple[tuple[str, ...], str]] = []
    routes: dict[str, list[_Draft]] = {}  # a source may have several conditional edges
    commands: dict[str, _Draft] = {}
    send_targets: set[str] = set()
    # Nodes that surely run, with the chain of plain edges from the entry that makes it so.
    certain: dict[str, tuple[str, ...]] = {names[0]: (names[0],)}

    # Every node after the first hangs from an earlier one (or START): all reachable,
    # and forward links alone can never loop.
    for i in range(1, n):
        me, earlier = names[i], names[:i]
        with_command = [x for x in earlier if x not in send_targets]
        link = draw(st.sampled_from(links))
        if link == "join" and i < 2:
            link = "edge"
        if link == "command" and not with_command:
            link = "router" if allow_conditional else "edge"
        if link == "edge":
            src = draw(st.sampled_from([START, *earlier]))
            edges.append((src, me))
            if src == START:
                certain[me] = (me,)
            elif src in certain:
                certain[me] = (*certain[src], me)
        elif link == "join":
            starts = draw(st.lists(st.sampled_from(earlier), min_size=2, max_size=3, unique=True))
            joins.append((tuple(starts), me))
        elif link == "router":
            src = draw(st.sampled_from([START, *earlier]))
            _draft(draw, routes, src).targets.append(me)
        elif link == "command":
            src = draw(st.sampled_from(with_command))
            commands.setdefault(src, _Draft()).targets.append(me)
        else:  # send
            count = draw(st.integers(1, 3))
            if with_command and allow_commands and draw(st.booleans()):
                src = draw(st.sampled_from(with_command))
                commands.setdefault(src, _Draft()).sends.append((me, count))
            else:
                src = draw(st.sampled_from([START, *earlier]))
                _draft(draw, routes, src).sends.append((me, count))
            send_targets.add(me)

    # More fan-out: extra forward edges, and edges to END.
    extra = draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n)), max_size=n))
    for a, b in extra:
        end = END if b == n else names[b]
        edge = (names[a], end)
        if (end == END or a < b) and edge not in edges:
            edges.append(edge)

    # Loops that end: go back while the source has run fewer than `limit` times.
    if allow_loops:
        for src in draw(st.lists(st.sampled_from(names), max_size=2, unique=True)):
            backs = names[: names.index(src) + 1]
            loop = (draw(st.sampled_from(backs)), draw(st.integers(1, 3)))
            if src in commands:
                commands[src].loop = loop
            elif allow_conditional:
                routes.setdefault(src, [_Draft()])[0].loop = loop
            elif allow_commands and src not in send_targets:
                commands.setdefault(src, _Draft()).loop = loop

    if endless:  # a cycle of plain edges through nodes that surely run: it never exits
        tail = draw(st.sampled_from(sorted(certain)))
        edges.append((tail, draw(st.sampled_from(certain[tail]))))

    branches = [
        BranchCase(
            choice=_draw_choice(draw, src, draft),
            path_map=draw(st.sampled_from(["none", "list", "dict"])),
            is_async=draw(st.booleans()),
            bare=draw(st.booleans()),
        )
        for src, drafts in routes.items()
        for draft in drafts
    ]
    nodes = [
        NodeCase(
            name=name,
            sync=draw(st.booleans()) if allow_sync else False,
            signature=draw(st.sampled_from(["state", "config", "writer"])),
            weight=draw(st.integers(-3, 9)),
            tag=draw(st.sampled_from([None, "x", "y", "z"])),
            writes_last=False if endless else draw(st.booleans()),
            send_target=name in send_targets,
            command=_draw_choice(draw, name, commands[name]) if name in commands else None,
            delay=draw(_delays) if allow_delays else None,
        )
        for name in names
    ]
    case = GraphCase(
        kind=kind,
        nodes=tuple(nodes),
        edges=tuple(edges),
        joins=tuple(joins),
        branches=tuple(branches),
        input=draw(_case_inputs(names)),
        recursion_limit=25,
        endless=endless,
    )
    if endless:
        return case
    # Keep `last` (no reducer) to nodes that never share a step with another writer of it.
    conflicts: set[str] = set()
    try:
        _interpret(case, case.input, _REFERENCE_CAP, conflicts)
    except GraphRecursionError:  # pragma: no cover - forward links and bounded loops end
        raise AssertionError(f"generated graph does not terminate:\n{case.describe()}") from None
    if conflicts:
        fixed = tuple(
            attrs.evolve(n, writes_last=False) if n.name in conflicts else n for n in case.nodes
        )
        case = attrs.evolve(case, nodes=fixed)
    steps = _interpret(case, case.input, _REFERENCE_CAP, None).steps
    return attrs.evolve(case, recursion_limit=max(steps, 1))


def graphs(
    *,
    min_nodes: int = 1,
    max_nodes: int = 8,
    allow_sends: bool = True,
    allow_delays: bool = True,
    allow_sync: bool = True,
    allow_joins: bool = True,
    allow_conditional: bool = True,
    allow_loops: bool = True,
    allow_commands: bool = True,
    endless: bool = False,
    schema_kinds: Sequence[SchemaKind] = SCHEMA_KINDS,
) -> st.SearchStrategy[GraphCase]:
    """Random valid graphs, as :class:`GraphCase` objects.

    Each node hangs from an earlier node (or START) by a plain edge, a join edge
    (``add_edge([a, b], c)``), a conditional edge, a ``Command(goto=...)`` or a ``Send``;
    extra edges add fan-out and fan-in; loops go back while a counter is low, so every
    run ends (``recursion_limit`` in ``case.config`` is exactly the supersteps it takes).
    Nodes are sync (run in worker threads) or async, take ``(state)``,
    ``(state, config)`` or ``(state, *, writer)``, and may sleep 0-2 ms first. Writes
    go through commutative reducers (int sum, set union, count merge), an
    order-sensitive one (list concatenation), and a key without reducer that only one
    task per step writes. The state schema is a ``TypedDict``, a dataclass or an attrs
    class (``schema_kinds``).

    With ``endless=True`` every graph also contains a cycle of plain edges through
    nodes that always run: it never ends, so any recursion limit is reached.

    Example::

        @settings(max_examples=50, deadline=None)
        @given(graphs(max_nodes=5, allow_sync=False))
        def test_graph(case):
            app = case.compile()
            assert app.invoke(case.input, case.config) == case.reference().values
    """
    if not 1 <= min_nodes <= max_nodes:
        raise InvalidArgument(f"need 1 <= min_nodes <= max_nodes; got {min_nodes}, {max_nodes}")
    kinds = tuple(schema_kinds)
    if not kinds or not set(kinds) <= set(SCHEMA_KINDS):
        raise InvalidArgument(f"schema_kinds must be a non-empty subset of {SCHEMA_KINDS}")
    return _graph_cases(
        min_nodes=min_nodes,
        max_nodes=max_nodes,
        allow_sends=allow_sends,
        allow_delays=allow_delays,
        allow_sync=allow_sync,
        allow_joins=allow_joins,
        allow_conditional=allow_conditional,
        allow_loops=allow_loops,
        allow_commands=allow_commands,
        endless=endless,
        kinds=kinds,
    )


def retimed(case: GraphCase) -> st.SearchStrategy[GraphCase]:
    """The same graph as ``case`` with new random per-node delays (0-2 ms, or none).

    Task completion order then differs; what the run computes must not.

    Example::

        @given(st.data(), graphs())
        def test_timing(data, case):
            other = data.draw(retimed(case))
            assert run(case) == run(other)
    """
    names = [n.name for n in case.nodes]
    return st.fixed_dictionaries({name: _delays for name in names}).map(case.with_delays)


# -- malformed_graphs() ----------------------------------------------------------------------


@attrs.frozen(repr=False)
class _Op:
    """One builder call, as data."""

    method: str
    args: tuple[Any, ...]
    kwargs: Mapping[str, Any] = attrs.field(factory=dict)

    def __repr__(self) -> str:
        shown = [_arg(a) for a in self.args] + [f"{k}={_arg(v)}" for k, v in self.kwargs.items()]
        return f"{self.method}({', '.join(shown)})"


def _arg(value: Any) -> str:
    if isinstance(value, str):
        return _show(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_arg(v) for v in value) + "]"
    if callable(value):
        return getattr(value, "__name__", repr(value))
    return repr(value)


DEFECTS: tuple[str, ...] = (
    "edge_to_unknown",
    "edge_from_unknown",
    "join_from_unknown",
    "join_to_unknown",
    "join_from_start",
    "branch_from_unknown",
    "path_map_to_unknown",
    "path_map_string",
    "destinations_unknown",
    "interrupt_before_unknown",
    "interrupt_after_unknown",
    "no_entry",
    "unreachable",
    "reserved_name",
    "reserved_char",
    "duplicate_name",
    "non_callable_reducer",
    "empty_schema",
    "non_callable_node",
    "non_callable_router",
    "bad_node_signature",
    "edge_into_start",
    "edge_from_end",
)
"""Every defect :func:`malformed_graphs` can plant."""


@attrs.frozen(kw_only=True, repr=False)
class MalformedGraph:
    """A graph with exactly one defect, drawn by :func:`malformed_graphs`.

    ``build()`` makes the ``StateGraph``, replays the builder calls ``ops`` and
    compiles: somewhere on the way it must raise ``GraphValidationError``. ``defect``
    names the kind of defect (one of :data:`DEFECTS`), ``culprit`` the node, key or
    schema at fault, ``needle`` the text the error message must contain (the culprit's
    ``repr`` for names, as messages quote them).

    Example::

        @given(malformed_graphs())
        def test_rejected(bad):
            with pytest.raises(GraphValidationError) as info:
                bad.build()
            assert bad.needle in str(info.value)
    """

    defect: str
    culprit: str
    needle: str
    schema: type[Any]
    ops: tuple[_Op, ...]
    compile_kwargs: Mapping[str, Any] = attrs.field(factory=dict)

    def build(self) -> CompiledGraph:
        """Replay the builder calls and compile (expected to raise).

        Example::

            with pytest.raises(GraphValidationError):
                bad.build()
        """
        graph = StateGraph(self.schema)
        for op in self.ops:
            getattr(graph, op.method)(*op.args, **op.kwargs)
        return graph.compile(**self.compile_kwargs)

    def __repr__(self) -> str:
        lines = [
            f"MalformedGraph(defect={self.defect!r}, culprit={self.culprit!r})",
            f"  graph = StateGraph({getattr(self.schema, '__name__', self.schema)})",
        ]
        lines.extend(f"  graph.{op!r}" for op in self.ops)
        kwargs = ", ".join(f"{k}={v!r}" for k, v in self.compile_kwargs.items())
        lines.append(f"  graph.compile({kwargs})")
        return "\n".join(lines)


def _noop(state: Any) -> None:
    return None


def _to_end(state: Any) -> str:
    return END


def _needs_keyword(state: Any, *, extra: int) -> None:
    return None


def _no_positional(*, config: Any = None) -> None:
    return None


def _typed_dict(name: str, fields: dict[str, Any]) -> type[Any]:
    make: Any = TypedDict  # a TypedDict named at run time
    schema: type[Any] = make(name, fields)
    return schema


_schema_names = st.from_regex(r"[A-Z][a-z]{2,8}State", fullmatch=True)


@st.composite
def _malformed(draw: st.DrawFn, defects: tuple[str, ...]) -> MalformedGraph:
    defect = draw(st.sampled_from(defects))
    n = draw(st.integers(1, 5))
    pool = draw(st.lists(_node_names, min_size=n + 1, max_size=n + 1, unique=True))
    names, ghost = pool[:n], pool[n]
    schema: type[Any] = draw(st.sampled_from(SCHEMA_KINDS).map(_SCHEMAS.__getitem__))

    # A valid base graph: an entry edge, every other node hanging from an earlier one.
    nodes = [_Op("add_node", (name, _noop)) for name in names]
    links: list[_Op] = []
    for i in range(1, n):
        how = draw(st.sampled_from(["edge", "join", "branch"] if i >= 2 else ["edge", "branch"]))
        if how == "edge":
            links.append(_Op("add_edge", (draw(st.sampled_from(names[:i])), names[i])))
        elif how == "join":
            starts = draw(st.lists(st.sampled_from(names[:i]), min_size=2, max_size=3, unique=True))
            links.append(_Op("add_edge", (starts, names[i])))
        else:
            path = [names[i], END] if draw(st.booleans()) else [names[i]]
            links.append(
                _Op("add_conditional_edges", (draw(st.sampled_from(names[:i])), _to_end, path))
            )
    for name in draw(st.lists(st.sampled_from(names), max_size=2, unique=True)):
        links.append(_Op("add_edge", (name, END)))
    entry: _Op | None = _Op("add_edge", (START, names[0]))
    some = draw(st.sampled_from(names))
    compile_kwargs: dict[str, Any] = {}
    culprit, needle = ghost, repr(ghost)
    planted: list[_Op] = []

    if defect == "edge_to_unknown":
        planted.append(_Op("add_edge", (some, ghost)))
    elif defect == "edge_from_unknown":
        planted.append(_Op("add_edge", (ghost, some)))
    elif defect == "join_from_unknown":
        planted.append(_Op("add_edge", ([some, ghost], draw(st.sampled_from([*names, END])))))
    elif defect == "join_to_unknown":
        planted.append(_Op("add_edge", (draw(st.lists(st.sampled_from(names), min_size=1)), ghost)))
    elif defect == "join_from_start":
        culprit, needle = START, "START"
        planted.append(_Op("add_edge", ([START, some], some)))
    elif defect == "branch_from_unknown":
        planted.append(_Op("add_conditional_edges", (ghost, _to_end, [some, END])))
    elif defect == "path_map_to_unknown":
        if draw(st.booleans()):
            path_map: Any = [some, ghost]
        else:
            path_map = {"known": some, "other": ghost}
        planted.append(_Op("add_conditional_edges", (some, _to_end, path_map)))
    elif defect == "path_map_string":
        culprit, needle = some, repr(some)
        planted.append(_Op("add_conditional_edges", (some, _to_end, some)))
    elif defect == "destinations_unknown":
        i = names.index(some)
        nodes[i] = _Op("add_node", (some, _noop), {"destinations": [ghost]})
    elif defect in ("interrupt_before_unknown", "interrupt_after_unknown"):
        which = "interrupt_before" if defect == "interrupt_before_unknown" else "interrupt_after"
        compile_kwargs[which] = [draw(st.sampled_from(names)), ghost]
    elif defect == "no_entry":
        culprit, needle, entry = START, "entry point", None
    elif defect == "unreachable":
        planted.append(_Op("add_node", (ghost, _noop)))
        for target in draw(st.lists(st.sampled_from([*names, ghost, END]), max_size=2)):
            planted.append(_Op("add_edge", (ghost, target)))
    elif defect == "reserved_name":
        culprit = draw(st.sampled_from([START, END]))
        needle = repr(culprit)
        planted.append(_Op("add_node", (culprit, _noop)))
    elif defect == "reserved_char":
        culprit = ghost[:2] + draw(st.sampled_from("|:")) + ghost[2:]
        needle = repr(culprit)
        planted.append(_Op("add_node", (culprit, _noop)))
    elif defect == "duplicate_name":
        culprit, needle = some, repr(some)
        planted.append(_Op("add_node", (some, _noop)))
    elif defect == "non_callable_reducer":
        key = draw(st.from_regex(r"[a-z]{1,8}", fullmatch=True))
        culprit, needle = key, repr(key)
        bad = draw(st.sampled_from([5, 2.5, None, (1, 2), b"x"]))
        schema = _typed_dict(draw(_schema_names), {key: Annotated[int, bad], "ok_" + key: int})
    elif defect == "empty_schema":
        culprit = needle = draw(_schema_names)
        schema = _typed_dict(culprit, {})
    elif defect == "non_callable_node":
        culprit, needle = some, repr(some)
        i = names.index(some)
        nodes[i] = _Op("add_node", (some, draw(st.sampled_from([42, "fn", None, [1]]))))
    elif defect == "non_callable_router":
        culprit, needle = some, repr(some)
        planted.append(_Op("add_conditional_edges", (some, 42, [some])))
    elif defect == "bad_node_signature":
        culprit, needle = some, repr(some)
        fn = draw(st.sampled_from([_needs_keyword, _no_positional]))
        nodes[names.index(some)] = _Op("add_node", (some, fn))
    elif defect == "edge_into_start":
        culprit, needle = START, "START"
        planted.append(_Op("add_edge", (some, START)))
    elif defect == "edge_from_end":
        culprit, needle = END, "END"
        planted.append(_Op("add_edge", (END, some)))
    else:  # pragma: no cover
        raise InvalidArgument(f"unknown defect {defect!r}")

    ops = [*nodes, *links]
    if entry is not None:
        ops.append(entry)
    ops = list(draw(st.permutations(ops)))
    for op in planted:
        first = 0
        if defect == "duplicate_name":  # after the original add_node
            first = 1 + next(i for i, o in enumerate(ops) if o.args[:1] == (culprit,))
        ops.insert(draw(st.integers(first, len(ops))), op)
    return MalformedGraph(
        defect=defect,
        culprit=culprit,
        needle=needle,
        schema=schema,
        ops=tuple(ops),
        compile_kwargs=compile_kwargs,
    )


def malformed_graphs(defects: Sequence[str] = DEFECTS) -> st.SearchStrategy[MalformedGraph]:
    """Graphs with exactly one defect each, as :class:`MalformedGraph` objects.

    The defects (:data:`DEFECTS`): an edge, join edge or conditional edge from or to
    an unknown node, a ``path_map`` or ``destinations`` naming an unknown node, an
    ``interrupt_before``/``interrupt_after`` naming one, no entry point, an
    unreachable node, a reserved or duplicate node name, a non-callable reducer, a
    schema without keys, a non-callable node or router, a node signature headwater
    cannot call, an edge into START or out of END. Everything else about the graph
    is valid, so the error must be about the culprit.

    Example::

        @given(malformed_graphs())
        def test_rejected_with_one_line(bad):
            with pytest.raises(GraphValidationError) as info:
                bad.build()
            assert "\\n" not in str(info.value) and bad.needle in str(info.value)
    """
    chosen = tuple(defects)
    unknown = set(chosen) - set(DEFECTS)
    if not chosen or unknown:
        raise InvalidArgument(f"defects must be a non-empty subset of DEFECTS; got {unknown}")
    return _malformed(chosen)


# -- states_for() and inputs_for() -------------------------------------------------------


_MAX_SIZE = 4
_scalars: st.SearchStrategy[Any] = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10)
)
_nested: st.SearchStrategy[Any] = (
    _scalars
    | st.lists(_scalars, max_size=3)
    | st.dictionaries(st.text(max_size=5), _scalars, max_size=3)
)
_anything: st.SearchStrategy[Any] = (
    _nested
    | st.lists(_nested, max_size=3)
    | st.dictionaries(st.text(max_size=5), _nested, max_size=3)
)
_LISTS = (list, collections.abc.Sequence, collections.abc.MutableSequence)
_SETS = (set, collections.abc.Set, collections.abc.MutableSet)
_DICTS = (dict, collections.abc.Mapping, collections.abc.MutableMapping)
_WRAPPERS = (Annotated, typing.Required, typing.NotRequired, typing.ClassVar, typing.Final)


def _is_schema(hint: Any) -> bool:
    return isinstance(hint, type) and (
        typing.is_typeddict(hint) or dataclasses.is_dataclass(hint) or attrs.has(hint)
    )


def _for_type(hint: Any) -> st.SearchStrategy[Any]:
    """A strategy for values of the annotation ``hint`` (reducers and wrappers ignored)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in _WRAPPERS:
        return _for_type(args[0])
    if hint is Any or hint is object:
        return _anything
    if hint is None or hint is type(None):
        return st.none()
    if hint is bool:
        return st.booleans()
    if hint is int:
        return st.integers()
    if hint is float:
        return st.floats(allow_nan=False)
    if hint is str:
        return st.text(max_size=20)
    if hint is bytes:
        return st.binary(max_size=20)
    if origin is typing.Union or origin is types.UnionType:
        return st.one_of([_for_type(a) for a in args])
    if origin is Literal:
        return st.sampled_from(args)
    if hint in _LISTS:
        return st.lists(_anything, max_size=_MAX_SIZE)
    if hint in _DICTS:
        return st.dictionaries(st.text(max_size=8), _anything, max_size=_MAX_SIZE)
    if origin in _LISTS:
        return st.lists(_for_type(args[0]) if args else _anything, max_size=_MAX_SIZE)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return st.lists(_for_type(args[0]), max_size=_MAX_SIZE).map(tuple)
        if args == ((),):
            return st.just(())
        return st.tuples(*[_for_type(a) for a in args])
    if origin in _SETS:
        return st.sets(_for_type(args[0]), max_size=_MAX_SIZE)
    if origin is frozenset:
        return st.frozensets(_for_type(args[0]), max_size=_MAX_SIZE)
    if origin in _DICTS:
        key, value = args if args else (str, Any)
        return st.dictionaries(_for_type(key), _for_type(value), max_size=_MAX_SIZE)
    if _is_schema(hint):
        return states_for(hint)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return st.sampled_from(hint)
    return st.from_type(hint)


@attrs.frozen
class _Key:
    name: str  # the key in the state
    init: str  # the constructor argument (attrs strips a leading underscore)
    required: bool  # no default (dataclass, attrs) / a required key (TypedDict)
    hint: Any


def _keys(schema: type[Any]) -> list[_Key]:
    if not _is_schema(schema):
        raise InvalidArgument(
            f"{schema!r} is not a state schema: expected a TypedDict, a dataclass or an "
            "attrs class."
        )
    hints = typing.get_type_hints(schema, include_extras=True)
    if typing.is_typeddict(schema):
        required = schema.__required_keys__
        return [_Key(k, k, k in required, h) for k, h in hints.items()]
    if dataclasses.is_dataclass(schema):
        return [
            _Key(
                f.name,
                f.name,
                f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING,
                hints.get(f.name, Any),
            )
            for f in dataclasses.fields(schema)
            if f.init
        ]
    return [
        _Key(a.name, a.alias or a.name, a.default is attrs.NOTHING, hints.get(a.name, Any))
        for a in attrs.fields(schema)
        if a.init
    ]


def _field_strategies(
    keys: list[_Key], overrides: Mapping[str, st.SearchStrategy[Any]], owner: Any
) -> dict[str, st.SearchStrategy[Any]]:
    unknown = set(overrides) - {k.name for k in keys}
    if unknown:
        raise InvalidArgument(
            f"{sorted(unknown)} are not keys of {getattr(owner, '__name__', owner)}; its keys "
            f"are {[k.name for k in keys]}."
        )
    return {k.name: overrides[k.name] if k.name in overrides else _for_type(k.hint) for k in keys}


def states_for(schema: type[Any], /, **overrides: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Valid states of a state schema, drawn from its annotations.

    For a ``TypedDict``: a dict with every required key (and some of the
    ``NotRequired`` / ``total=False`` ones); for a dataclass or attrs class: an instance
    with every field drawn. Understands ``int``, ``float`` (no NaN, so states compare
    equal), ``bool``, ``str``, ``bytes``, ``list[...]``, ``tuple[...]``, ``set[...]``,
    ``dict[K, V]``, ``Optional``/unions, ``Literal``, enums, nested schemas, ``Any``
    and ``Annotated[T, reducer]`` (drawn as ``T``); anything else through
    ``hypothesis.strategies.from_type``. ``overrides`` replace the strategy of a key
    (for values with invariants, or types hypothesis cannot build).

    Example::

        class State(TypedDict):
            query: str
            scores: Annotated[list[float], operator.add]

        @given(states_for(State, query=st.text(min_size=1)))
        def test_rank(state):
            assert rank(state)["scores"] == sorted(state["scores"], reverse=True)
    """
    keys = _keys(schema)
    fields = _field_strategies(keys, overrides, schema)
    if typing.is_typeddict(schema):
        return st.fixed_dictionaries(
            {k.name: fields[k.name] for k in keys if k.required},
            optional={k.name: fields[k.name] for k in keys if not k.required},
        )
    return st.builds(schema, **{k.init: fields[k.name] for k in keys})


def inputs_for(
    app: Any, /, **overrides: st.SearchStrategy[Any]
) -> st.SearchStrategy[dict[str, Any]]:
    """Valid inputs of a graph (compiled, or a ``StateGraph``): dicts of state keys.

    Required keys (a ``TypedDict``'s required keys; dataclass and attrs fields without
    default) are always there, the others sometimes; values are drawn as in
    :func:`states_for`, and ``overrides`` replace the strategy of a key.

    Example::

        app = graph.compile()

        @settings(deadline=None)
        @given(inputs_for(app, messages=st.just([])))
        def test_accepts_any_input(state):
            app.invoke(state)
    """
    schema = getattr(getattr(app, "schema", None), "cls", None)
    if schema is None:
        raise InvalidArgument(
            f"inputs_for() needs a compiled graph or a StateGraph; got {type(app).__name__}."
        )
    keys = _keys(schema)
    fields = _field_strategies(keys, overrides, schema)
    return st.fixed_dictionaries(
        {k.name: fields[k.name] for k in keys if k.required},
        optional={k.name: fields[k.name] for k in keys if not k.required},
    )
