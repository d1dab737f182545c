"""The compiled graph and its bulk-synchronous superstep scheduler.

A run is a sequence of supersteps. Step 0 applies the input. In each following step,
every triggered task (one per triggered node, plus one per ``Send``) runs concurrently
against the same snapshot of the state; their updates are applied together at the end
of the step, in node-name order, through the reducers. Edges from the nodes that ran
then decide the next step's tasks. The run ends when a step triggers nothing.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread

from headwater import _concurrency
from headwater._graph import Branch, NodeSpec, StateGraph
from headwater._state import MISSING, Schema
from headwater._types import END, START, Command, Send
from headwater.errors import (
    GraphRecursionError,
    InvalidInputError,
    InvalidRouteError,
    InvalidUpdateError,
)
from headwater.events import (
    ON_CHAIN_END,
    ON_CHAIN_ERROR,
    ON_CHAIN_START,
    STEP_END,
    TASK_END,
    TASK_START,
)
from headwater.runtime import Run, Task, current_task

if TYPE_CHECKING:
    from headwater._stream import RunStream

__all__ = ["DEFAULT_RECURSION_LIMIT", "CompiledGraph"]

DEFAULT_RECURSION_LIMIT = 25
"""Supersteps a run may take unless ``config["recursion_limit"]`` says otherwise."""

_EMPTY: Mapping[str, Any] = {}


class _Pending:
    """A task to run in the next step (before it has a :class:`Task`)."""

    __slots__ = ("arg", "node", "path", "triggers")

    def __init__(
        self, node: str, triggers: tuple[str, ...], path: tuple[str | int, ...], arg: Any
    ) -> None:
        self.node = node
        self.triggers = triggers
        self.path = path
        self.arg = arg


class _Outcome:
    __slots__ = ("goto", "update")

    def __init__(self, update: Mapping[str, Any] | None, goto: tuple[str | Send, ...]) -> None:
        self.update = update
        self.goto = goto


class CompiledGraph:
    """A validated, runnable graph made by ``StateGraph.compile()``.

    Run it with :meth:`invoke` / :meth:`ainvoke`; stream it with ``astream`` and
    ``astream_events``. A compiled graph can itself be a node of another graph.

    Example::

        app = graph.compile()
        final_state = app.invoke({"text": "hi"})
        final_state = await app.ainvoke({"text": "hi"})
    """

    def __init__(self, builder: StateGraph, *, name: str, plugin_manager: Any = None) -> None:
        self.name = name
        self.schema: Schema = builder.schema
        self.nodes: dict[str, NodeSpec] = dict(builder.nodes)
        self._pm = plugin_manager
        successors: dict[str, list[str]] = {}
        for start, end in builder.edges:
            if end != END:
                successors.setdefault(start, []).append(end)
        self._edges: dict[str, tuple[str, ...]] = {k: tuple(v) for k, v in successors.items()}
        self._joins: list[tuple[frozenset[str], str]] = [
            (frozenset(starts), end) for starts, end in builder.joins
        ]
        joins_by_source: dict[str, list[int]] = {}
        for i, (starts, _) in enumerate(self._joins):
            for s in starts:
                joins_by_source.setdefault(s, []).append(i)
        self._joins_by_source = {k: tuple(v) for k, v in joins_by_source.items()}
        branches: dict[str, list[Branch]] = {}
        for b in builder.branches:
            branches.setdefault(b.source, []).append(b)
        self._branches = {k: tuple(v) for k, v in branches.items()}
        self._reducers = {k: f.reducer for k, f in self.schema.fields.items()}
        self._fields = self.schema.fields

    def __repr__(self) -> str:
        return f"<CompiledGraph {self.name!r} nodes={sorted(self.nodes)}>"

    @property
    def plugin_manager(self) -> Any:
        """The plugin manager this graph runs with (the process-wide one by default)."""
        if self._pm is None:
            from headwater._plugins import get_plugin_manager

            return get_plugin_manager()
        return self._pm

    # -- public entry points ----------------------------------------------------------

    def invoke(self, input: Any, config: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Run the graph to completion from sync code and return the final state.

        Example::

            state = app.invoke({"text": "hi"}, {"recursion_limit": 50})
        """
        return anyio.run(functools.partial(self.ainvoke, input, config))

    async def ainvoke(self, input: Any, config: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Run the graph to completion and return the final state (asyncio or trio).

        Example::

            state = await app.ainvoke({"text": "hi"})
        """
        run = self.prepare_run(input, config)
        return await self.execute(run, input)

    def astream(
        self,
        input: Any,
        config: Mapping[str, Any] | None = None,
        *,
        stream_mode: str | Sequence[str] = "values",
        subgraphs: bool = False,
    ) -> RunStream:
        """Stream a run as it happens, shaped by one or more stream modes.

        With one mode, yields that mode's chunks; with a list of modes, ``(mode, chunk)``
        tuples in the order they happened; with ``subgraphs=True``, the namespace of the
        (sub)graph comes first: ``(ns, chunk)`` or ``(ns, mode, chunk)``. Modes come from
        plugins (``headwater-streams``: values, updates, messages, custom, debug, tasks).
        Leaving the ``async for`` early cancels the run.

        Example::

            async for chunk in app.astream(state, stream_mode="updates"):
                print(chunk)          # {"node_name": {"key": "new value"}}
        """
        from headwater._stream import open_stream

        return open_stream(self, input, config, stream_mode, subgraphs)

    def stream(
        self,
        input: Any,
        config: Mapping[str, Any] | None = None,
        *,
        stream_mode: str | Sequence[str] = "values",
        subgraphs: bool = False,
    ) -> Iterator[Any]:
        """The sync twin of :meth:`astream`: the run executes on an event loop in a thread.

        Example::

            for chunk in app.stream(state, stream_mode="values"):
                print(chunk)
        """
        from headwater._stream import open_stream, stream_sync

        return stream_sync(
            functools.partial(open_stream, self, input, config, stream_mode, subgraphs)
        )

    def astream_events(
        self,
        input: Any,
        config: Mapping[str, Any] | None = None,
        *,
        version: str = "v2",
        include_names: Sequence[str] | None = None,
        include_types: Sequence[str] | None = None,
        include_tags: Sequence[str] | None = None,
        exclude_names: Sequence[str] | None = None,
        exclude_types: Sequence[str] | None = None,
        exclude_tags: Sequence[str] | None = None,
        filters: Sequence[Any] | None = None,
    ) -> RunStream:
        """Stream every event of a run as ``{"event", "name", "run_id", ...}`` dicts.

        ``include_*`` / ``exclude_*`` select by name, event type or tag (glob patterns
        such as ``"*_node"`` work); ``filters`` adds your own: callables taking an
        :class:`~headwater.events.Event`, names of installed filters, or
        :class:`~headwater.events.EventFilter` objects. Filters run before an event is
        built. ``version="v2"`` is the default and only version.

        Example::

            async for event in app.astream_events(state, version="v2"):
                if event["event"] == "on_chat_model_stream":
                    print(event["data"]["chunk"].content, end="")
        """
        from headwater._stream import open_event_stream

        filter_args = {
            "include_names": include_names,
            "include_types": include_types,
            "include_tags": include_tags,
            "exclude_names": exclude_names,
            "exclude_types": exclude_types,
            "exclude_tags": exclude_tags,
        }
        return open_event_stream(self, input, config, version, filter_args, filters)

    # -- running ----------------------------------------------------------------------

    def prepare_run(
        self,
        input: Any,
        config: Mapping[str, Any] | None,
        *,
        parent: Task | None = None,
    ) -> Run:
        """Make the :class:`Run` record for one execution (subscriptions are added to it)."""
        config = _check_config(config)
        if parent is None:
            return Run(graph_name=self.name, config=config, input=input)
        outer = parent.run
        return Run(
            graph_name=self.name,
            config=config,
            input=input,
            parent=outer,
            ns=(*outer.ns, f"{parent.node}:{parent.run_id}"),
            parent_ids=(*outer.parent_ids, outer.run_id, parent.run_id),
        )

    async def execute(self, run: Run, input: Any) -> dict[str, Any]:
        """Execute ``run`` with hooks and graph-level events around the supersteps."""
        pm = self.plugin_manager
        hooks = pm.hook
        for subs in hooks.headwater_event_subscribers(run=run):
            for sub in subs or ():
                run.subscribe(sub)
        for result in hooks.headwater_run_start(run=run):
            if inspect.isawaitable(result):
                await result
        error: BaseException | None = None
        try:
            cbs = run.subscriptions(ON_CHAIN_START)
            if cbs:
                run.emit(
                    cbs,
                    ON_CHAIN_START,
                    self.name,
                    run.run_id,
                    run.parent_ids,
                    run.tags,
                    run.metadata,
                    {"input": input},
                )
            values = await self._loop(run, input, pm)
            cbs = run.subscriptions(ON_CHAIN_END)
            if cbs:
                run.emit(
                    cbs,
                    ON_CHAIN_END,
                    self.name,
                    run.run_id,
                    run.parent_ids,
                    run.tags,
                    run.metadata,
                    {"output": dict(values)},
                )
            return values
        except Exception as exc:
            error = exc
            cbs = run.subscriptions(ON_CHAIN_ERROR)
            if cbs:
                run.emit(
                    cbs,
                    ON_CHAIN_ERROR,
                    self.name,
                    run.run_id,
                    run.parent_ids,
                    run.tags,
                    run.metadata,
                    {"error": exc},
                )
            raise
        except BaseException as exc:
            error = exc
            raise
        finally:
            for result in hooks.headwater_run_end(run=run, error=error):
                if inspect.isawaitable(result):
                    with anyio.CancelScope(shield=True):
                        await result

    async def _loop(self, run: Run, input: Any, pm: Any) -> dict[str, Any]:
        schema = self.schema
        limit = run.config.get("recursion_limit", DEFAULT_RECURSION_LIMIT)
        values = schema.defaults()
        update = schema.coerce_input(input, self.name)
        self._apply(values, [(START, update)], 0)
        wrap = bool(pm.hook.headwater_wrap_node.get_hookimpls())
        step_end_hook = (
            pm.hook.headwater_step_end if pm.hook.headwater_step_end.get_hookimpls() else None
        )
        step_cbs = run.subscriptions(STEP_END)
        if step_cbs:
            run.emit(
                step_cbs,
                STEP_END,
                self.name,
                run.run_id,
                run.parent_ids,
                run.tags,
                run.metadata,
                {"values": dict(values), "writes": {START: (update,)}, "step": 0},
            )
        join_seen: list[set[str]] = [set() for _ in self._joins]
        pending = await self._route([START], {}, values, join_seen, run)
        step = 0
        while pending:
            step += 1
            if step > limit:
                raise GraphRecursionError(
                    f"Graph {self.name!r} reached its recursion limit of {limit} supersteps with "
                    f"node(s) {sorted({p.node for p in pending})} still to run. If it loops on "
                    "purpose, raise the limit: "
                    f"config={{'recursion_limit': {max(limit * 4, 100)}}}; "
                    "otherwise make a conditional edge route to END."
                )
            tasks = [self._make_task(p, step, values, run) for p in pending]
            outcomes = await self._run_step(tasks, wrap, pm)
            goto: dict[str, tuple[str | Send, ...]] = {}
            if len(tasks) == 1:
                node, outcome = tasks[0].node, outcomes[0]
                written = outcome.update
                writes: list[tuple[str, Mapping[str, Any]]] = [(node, written)] if written else []
                ran = [node]
                if outcome.goto:
                    goto[node] = outcome.goto
            else:
                order = sorted(range(len(tasks)), key=lambda i: (tasks[i].node, i))
                writes = [(tasks[i].node, u) for i in order if (u := outcomes[i].update)]
                ran = []
                for i in order:
                    node = tasks[i].node
                    if not ran or ran[-1] != node:
                        ran.append(node)
                    if outcomes[i].goto:
                        goto[node] = goto.get(node, ()) + outcomes[i].goto
            self._apply(values, writes, step)
            if step_cbs:
                per_node: dict[str, tuple[Any, ...]] = {}
                for node, upd in writes:
                    per_node[node] = (*per_node.get(node, ()), upd)
                run.emit(
                    step_cbs,
                    STEP_END,
                    self.name,
                    run.run_id,
                    run.parent_ids,
                    run.tags,
                    run.metadata,
                    {"values": dict(values), "writes": per_node, "step": step},
                )
                if run._valves:
                    await run.relieve()
            if step_end_hook is not None:
                for result in step_end_hook(run=run, step=step):
                    if inspect.isawaitable(result):
                        await result
            pending = await self._route(ran, goto, values, join_seen, run)
        return values

    def _make_task(self, p: _Pending, step: int, values: dict[str, Any], run: Run) -> Task:
        spec = self.nodes[p.node]
        node_input = self.schema.make_input(values) if p.arg is MISSING else p.arg
        return Task(
            node=p.node,
            step=step,
            input=node_input,
            triggers=p.triggers,
            path=p.path,
            tags=spec.tags,
            metadata=spec.metadata,
            run=run,
        )

    async def _run_step(self, tasks: list[Task], wrap: bool, pm: Any) -> list[_Outcome]:
        if len(tasks) == 1:
            task = tasks[0]
            return [await _concurrency.run_one(functools.partial(self._run_task, task, wrap, pm))]
        results, error = await _concurrency.run_all(
            [functools.partial(self._run_task, t, wrap, pm) for t in tasks]
        )
        if error is not None:
            raise error[1]
        return results

    async def _run_task(self, task: Task, wrap: bool, pm: Any) -> _Outcome:
        current_task.set(task)
        run = task.run
        streaming = run.streaming
        if streaming:
            task.dispatch(TASK_START, {"input": task.input, "triggers": task.triggers})
            task.dispatch(ON_CHAIN_START, {"input": task.input})
        try:
            if wrap:
                out = await _wrapped(self._call_node, task, pm)
            else:
                out = await self._call_node(task)
            outcome = self._outcome(task.node, out)
        except Exception as exc:
            if streaming:
                task.dispatch(ON_CHAIN_ERROR, {"error": exc})
                task.dispatch(TASK_END, {"node": task.node, "update": None, "error": exc})
            exc.add_note(
                f"While running node {task.node!r} (step {task.step}) of graph {self.name!r}."
            )
            raise
        if streaming:
            task.dispatch(TASK_END, {"node": task.node, "update": outcome.update, "error": None})
            task.dispatch(ON_CHAIN_END, {"output": out})
            if run._valves:
                await run.relieve()
        return outcome

    async def _call_node(self, task: Task) -> Any:
        spec = self.nodes[task.node]
        if spec.subgraph is not None:
            return await spec.subgraph._as_node(task, self.schema)
        calling = spec.calling
        args: tuple[Any, ...] = (task.input,)
        kwargs: dict[str, Any] = {}
        if calling.config is not None:
            config = task.config
            if calling.config == "positional":
                args = (task.input, config)
            else:
                kwargs["config"] = config
        if calling.writer:
            kwargs["writer"] = task.writer
        if calling.is_async:
            return await spec.fn(*args, **kwargs)
        if kwargs:
            return await anyio.to_thread.run_sync(functools.partial(spec.fn, *args, **kwargs))
        return await anyio.to_thread.run_sync(spec.fn, *args)

    async def _as_node(self, task: Task, parent_schema: Schema) -> dict[str, Any]:
        run = self.prepare_run(task.input, task.run.config, parent=task)
        values = await self.execute(run, task.input)
        return {k: v for k, v in values.items() if k in parent_schema.keys}

    def _outcome(self, node: str, out: Any) -> _Outcome:
        if out is None:
            return _Outcome(None, ())
        if type(out) is dict or isinstance(out, Mapping):
            return _Outcome(self.schema.check_update(node, out), ())
        if isinstance(out, Command):
            update = self.schema.check_update(node, out.update) if out.update is not None else None
            return _Outcome(update, out.goto)
        self.schema.check_update(node, out)  # raises with the right message
        raise AssertionError("unreachable")

    def _apply(
        self, values: dict[str, Any], writes: list[tuple[str, Mapping[str, Any]]], step: int
    ) -> None:
        reducers = self._reducers
        if len(writes) == 1:
            node, update = writes[0]
            for key, value in update.items():
                if reducers[key] is None:
                    values[key] = value
                else:
                    values[key] = self._fields[key].fold(values.get(key, MISSING), [value])
            return
        per_key: dict[str, list[Any]] = {}
        writers: dict[str, list[str]] = {}
        for node, update in writes:
            for key, value in update.items():
                if key in per_key:
                    per_key[key].append(value)
                    writers[key].append(node)
                else:
                    per_key[key] = [value]
                    writers[key] = [node]
        for key, vals in per_key.items():
            if reducers[key] is None:
                if len(vals) > 1:
                    nodes = writers[key]
                    raise InvalidUpdateError(
                        f"State key {key!r} received {len(vals)} writes in step {step} (from "
                        f"nodes {', '.join(repr(n) for n in nodes)}) but has no reducer, so only "
                        f"one write per step is allowed. Give it a reducer, e.g. "
                        f"{key}: Annotated[list, operator.add], or let one node write it."
                    )
                values[key] = vals[0]
            else:
                values[key] = self._fields[key].fold(values.get(key, MISSING), vals)

    async def _route(
        self,
        ran: list[str],
        goto: dict[str, tuple[str | Send, ...]],
        values: dict[str, Any],
        join_seen: list[set[str]],
        run: Run,
    ) -> list[_Pending]:
        pulls: dict[str, list[str]] = {}
        pushes: list[_Pending] = []

        def add(dest: str | Send, source: str, how: str) -> None:
            if isinstance(dest, Send):
                if dest.node not in self.nodes:
                    raise InvalidRouteError(
                        f"{how} sent to unknown node {dest.node!r}. Known nodes: "
                        f"{sorted(self.nodes)}."
                    )
                pushes.append(
                    _Pending(dest.node, (f"send:{source}",), ("push", len(pushes)), dest.arg)
                )
            elif dest == END:
                return
            elif isinstance(dest, str) and dest in self.nodes:
                pulls.setdefault(dest, []).append(source)
            else:
                raise InvalidRouteError(
                    f"{how} routed to {dest!r}, which is not a node of graph {self.name!r}. "
                    f"Expected one of {sorted(self.nodes)}, END, or a Send."
                )

        for node in ran:
            for succ in self._edges.get(node, ()):
                pulls.setdefault(succ, []).append(node)
            for j in self._joins_by_source.get(node, ()):
                starts, end = self._joins[j]
                seen = join_seen[j]
                seen.add(node)
                if seen >= starts:
                    seen.clear()
                    if end != END:
                        pulls.setdefault(end, []).append("join:" + "+".join(sorted(starts)))
            for dest in goto.get(node, ()):
                add(dest, node, f"Command(goto=...) of node {node!r}")
            for branch in self._branches.get(node, ()):
                for dest in await self._call_router(branch, values, run):
                    add(dest, node, f"Router {branch.name!r} of {node!r}")
        out = [_Pending(n, tuple(src), ("pull", n), MISSING) for n, src in sorted(pulls.items())]
        out.extend(pushes)
        return out

    async def _call_router(
        self, branch: Branch, values: dict[str, Any], run: Run
    ) -> list[str | Send]:
        state = self.schema.make_input(values)
        if branch.calling.config is not None:
            result = (
                branch.router(state, run.config)
                if branch.calling.config == "positional"
                else branch.router(state, config=run.config)
            )
        else:
            result = branch.router(state)
        if inspect.isawaitable(result):
            result = await result
        items = result if isinstance(result, list | tuple) else [result]
        out: list[str | Send] = []
        for item in items:
            if isinstance(item, Send) or branch.path_map is None:
                out.append(item)
                continue
            try:
                out.append(branch.path_map[item])
            except (KeyError, TypeError):
                raise InvalidRouteError(
                    f"Router {branch.name!r} of {branch.source!r} returned {item!r}, which is not "
                    f"in its path_map; expected one of {list(branch.path_map)!r}."
                ) from None
        return out


async def _wrapped(call: Callable[[Task], Any], task: Task, pm: Any) -> Any:
    middlewares = [m for m in pm.hook.headwater_wrap_node(task=task) if m is not None]
    if not middlewares:
        return await call(task)
    chain = call
    for middleware in middlewares:  # pluggy returns last-registered first: innermost first
        chain = functools.partial(middleware, chain)
    return await chain(task)


def _check_config(config: Mapping[str, Any] | None) -> Mapping[str, Any]:
    if config is None:
        return _EMPTY
    if not isinstance(config, Mapping):
        raise InvalidInputError(
            f"config must be a mapping like {{'configurable': {{'thread_id': '1'}}}}; got "
            f"{type(config).__name__}: {config!r:.80}."
        )
    limit = config.get("recursion_limit", DEFAULT_RECURSION_LIMIT)
    if type(limit) is not int or limit < 1:
        raise InvalidInputError(
            f"config['recursion_limit'] must be a positive int (supersteps per run, default "
            f"{DEFAULT_RECURSION_LIMIT}); got {limit!r}."
        )
    configurable = config.get("configurable", _EMPTY)
    if not isinstance(configurable, Mapping):
        raise InvalidInputError(
            "config['configurable'] must be a mapping like {'thread_id': '1'}; got "
            f"{configurable!r:.80}."
        )
    return config
