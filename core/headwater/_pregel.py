"""The compiled graph: what ``StateGraph.compile()`` returns, its public face.

Running (``invoke``, ``ainvoke``), streaming (``astream``, ``stream``,
``astream_events``) and thread state (``get_state``, ``get_state_history``,
``update_state``). How a run executes is the scheduler's (:mod:`headwater._scheduler`);
checkpoints are written by :mod:`headwater._persist`; streams are built by
:mod:`headwater._stream`.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from headwater._batch import run_batch
from headwater._config import merge_configs
from headwater._persist import Pending, Persist, snapshot, text_id
from headwater._plugins import PluginManager, get_plugin_manager
from headwater._scheduler import DEFAULT_RECURSION_LIMIT, Scheduler, check_config
from headwater._state import MISSING, Schema
from headwater._stream import RunStream, open_event_stream, open_stream, stream_sync
from headwater._sync import run_sync
from headwater.checkpoint import Checkpointer, StateSnapshot, checkpointer_from_url
from headwater.errors import CheckpointError, InvalidInputError
from headwater.runtime import Run, Task

if TYPE_CHECKING:
    from headwater._graph import StateGraph
    from headwater._nodes import NodeSpec
    from headwater.drawing import DrawableGraph

__all__ = ["DEFAULT_RECURSION_LIMIT", "CompiledGraph"]

T = TypeVar("T")


class CompiledGraph:
    """A validated, runnable graph made by ``StateGraph.compile()``.

    Run it with :meth:`invoke` / :meth:`ainvoke`; stream it with ``astream`` and
    ``astream_events``. A compiled graph can itself be a node of another graph.

    Example::

        app = graph.compile()
        final_state = app.invoke({"text": "hi"})
        final_state = await app.ainvoke({"text": "hi"})
    """

    def __init__(
        self,
        builder: StateGraph,
        *,
        name: str,
        plugin_manager: PluginManager | None = None,
        checkpointer: Checkpointer | str | None = None,
        interrupt_before: Sequence[str] = (),
        interrupt_after: Sequence[str] = (),
    ) -> None:
        self.name = name
        if isinstance(checkpointer, str):
            checkpointer = checkpointer_from_url(checkpointer, plugin_manager)
        elif checkpointer is not None and not isinstance(checkpointer, Checkpointer):
            raise CheckpointError(
                f"checkpointer must be a headwater Checkpointer or a URL such as 'memory:' or "
                f"'sqlite:///app.db'; got {type(checkpointer).__name__}."
            )
        self.checkpointer: Checkpointer | None = checkpointer
        self.schema: Schema = builder.schema
        self.nodes: dict[str, NodeSpec] = dict(builder.nodes)
        self._pm = plugin_manager
        self._config: Mapping[str, Any] | None = None  # bound by with_config()
        # The graph as built, for get_graph(): edges (END included), joins, routers.
        self._shape = (tuple(builder.edges), tuple(builder.joins), tuple(builder.branches))
        self._scheduler = Scheduler(
            name=name,
            schema=self.schema,
            nodes=self.nodes,
            edges=builder.edges,
            joins=builder.joins,
            branches=builder.branches,
            checkpointer=checkpointer,
            interrupt_before=interrupt_before,
            interrupt_after=interrupt_after,
        )

    def __repr__(self) -> str:
        return f"<CompiledGraph {self.name!r} nodes={sorted(self.nodes)}>"

    @property
    def plugin_manager(self) -> PluginManager:
        """The plugin manager this graph runs with (the process-wide one by default).

        Example::

            app.plugin_manager.registrations("headwater_stream_modes")
        """
        return get_plugin_manager() if self._pm is None else self._pm

    def get_graph(
        self, config: Mapping[str, Any] | None = None, *, xray: bool | int = False
    ) -> DrawableGraph:
        """The graph's nodes and edges, to draw: ``draw_mermaid()``, ``draw_ascii()``,
        ``to_json()``. ``xray=True`` expands subgraphs into their nodes (an int: that many
        levels). ``config`` is accepted for LangGraph compatibility and not used.

        Example::

            print(app.get_graph().draw_mermaid())
        """
        from headwater.drawing import graph_of

        return graph_of(self, xray)

    def with_config(self, config: Mapping[str, Any] | None = None, **kwargs: Any) -> CompiledGraph:
        """A copy of this graph whose runs and thread-state calls start from ``config``.

        A call's own config is merged on top: tags add up, ``metadata`` and
        ``configurable`` merge key by key, other keys (``recursion_limit`` …) are replaced.
        Keyword arguments are config keys too.

        Example::

            app_for_ada = app.with_config(configurable={"thread_id": "ada"}, tags=["ui"])
            app_for_ada.invoke({"messages": ["hi"]})
        """
        bound = copy.copy(self)
        bound._config = merge_configs(self._config, config, kwargs)
        return bound

    def with_interrupts(
        self, *, before: Sequence[str] | str = (), after: Sequence[str] | str = ()
    ) -> CompiledGraph:
        """A copy of this graph that also pauses before (after) the nodes named in
        ``before`` (``after``); ``"*"`` names every node. What the graph was compiled with
        still applies. Pausing needs a checkpointer, as with ``compile(interrupt_before=…)``.

        Example::

            paused = app.with_interrupts(before=["tools"])
            await paused.ainvoke(state, config)  # stops before "tools" runs
        """
        chosen: list[frozenset[str]] = []
        for field, names in (("before", before), ("after", after)):
            if names == "*":
                chosen.append(frozenset(self.nodes))
                continue
            if isinstance(names, str) or not all(isinstance(n, str) for n in names):
                raise InvalidInputError(
                    f"with_interrupts({field}=...) takes a list of node names or '*'; "
                    f"got {names!r:.60}."
                )
            unknown = [n for n in names if n not in self.nodes]
            if unknown:
                raise InvalidInputError(
                    f"with_interrupts({field}=...): graph {self.name!r} has no node "
                    f"{unknown[0]!r:.60}; nodes: {sorted(self.nodes)}."
                )
            chosen.append(frozenset(names))
        bound = copy.copy(self)
        scheduler = copy.copy(self._scheduler)
        scheduler._interrupt_before = self._scheduler._interrupt_before | chosen[0]
        scheduler._interrupt_after = self._scheduler._interrupt_after | chosen[1]
        bound._scheduler = scheduler
        return bound

    def _merged(self, config: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
        return config if self._config is None else merge_configs(self._config, config)

    # -- public entry points ----------------------------------------------------------

    def invoke(self, input: Any, config: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Run the graph to completion from sync code and return the final state.

        Works in a Jupyter cell or other code running an event loop too (the run then
        executes on a helper thread with a loop of its own), as in LangGraph.

        Example::

            state = app.invoke({"text": "hi"}, {"recursion_limit": 50})
        """
        return _sync(self, "invoke", functools.partial(self.ainvoke, input, config))

    async def ainvoke(self, input: Any, config: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Run the graph to completion and return the final state (asyncio or trio).

        Example::

            state = await app.ainvoke({"text": "hi"})
        """
        run = self.prepare_run(input, config)
        return await self.execute(run, input)

    def batch(
        self,
        inputs: Sequence[Any],
        config: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        *,
        return_exceptions: bool = False,
    ) -> list[Any]:
        """Sync :meth:`abatch`.

        Example::

            finals = app.batch([{"text": "a"}, {"text": "b"}])
        """
        call = functools.partial(self.abatch, inputs, config, return_exceptions=return_exceptions)
        return _sync(self, "batch", call)

    async def abatch(
        self,
        inputs: Sequence[Any],
        config: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        *,
        return_exceptions: bool = False,
    ) -> list[Any]:
        """Run the graph on several inputs concurrently; final states in input order.

        ``config`` is one config for all runs or a list with one per input;
        ``config["max_concurrency"]`` bounds how many run at once. The first run to fail
        cancels the others and its exception is raised, unless ``return_exceptions=True``,
        which puts each run's exception in its place in the list instead.

        Example::

            finals = await app.abatch([{"text": "a"}, {"text": "b"}], {"max_concurrency": 4})
        """
        return await run_batch(self.ainvoke, inputs, config, return_exceptions)

    def astream(
        self,
        input: Any,
        config: Mapping[str, Any] | None = None,
        *,
        stream_mode: str | Sequence[str] = "updates",
        subgraphs: bool = False,
    ) -> RunStream:
        """Stream a run as it happens, shaped by one or more stream modes.

        ``stream_mode`` defaults to ``"updates"``, as in LangGraph. With one mode, yields
        that mode's chunks; with a list of modes, ``(mode, chunk)``
        tuples in the order they happened; with ``subgraphs=True``, the namespace of the
        (sub)graph comes first: ``(ns, chunk)`` or ``(ns, mode, chunk)``. Modes come from
        plugins (``headwater-streams``: values, updates, messages, custom, debug, tasks).
        Leaving the ``async for`` early cancels the run.

        Example::

            async for chunk in app.astream(state, stream_mode="updates"):
                print(chunk)          # {"node_name": {"key": "new value"}}
        """
        return open_stream(self, input, config, stream_mode, subgraphs)

    def stream(
        self,
        input: Any,
        config: Mapping[str, Any] | None = None,
        *,
        stream_mode: str | Sequence[str] = "updates",
        subgraphs: bool = False,
    ) -> Iterator[Any]:
        """The sync twin of :meth:`astream`: the run executes on an event loop in a thread.

        Example::

            for chunk in app.stream(state, stream_mode="values"):
                print(chunk)
        """
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
        filter_args = {
            "include_names": include_names,
            "include_types": include_types,
            "include_tags": include_tags,
            "exclude_names": exclude_names,
            "exclude_types": exclude_types,
            "exclude_tags": exclude_tags,
        }
        return open_event_stream(self, input, config, version, filter_args, filters)

    # -- thread state -----------------------------------------------------------------

    def _thread(self, config: Mapping[str, Any] | None) -> tuple[Checkpointer, str, str | None]:
        if self.checkpointer is None:
            raise CheckpointError(
                f"Graph {self.name!r} has no checkpointer, so it keeps no thread state; "
                "compile it with checkpointer='memory:' (or sqlite:///…, postgresql://…)."
            )
        config = self._merged(config)
        configurable = (config or {}).get("configurable") or {}
        thread_id = configurable.get("thread_id")
        if thread_id is None:
            raise InvalidInputError(
                "Thread state needs config={'configurable': {'thread_id': ...}}; "
                "no thread_id was given."
            )
        checkpoint_id = configurable.get("checkpoint_id")
        if checkpoint_id is not None:
            checkpoint_id = text_id(checkpoint_id, "checkpoint_id")
        return self.checkpointer, text_id(thread_id, "thread_id"), checkpoint_id

    async def aget_state(self, config: Mapping[str, Any]) -> StateSnapshot:
        """The thread's latest state (or the ``checkpoint_id`` in the config).

        Example::

            snap = await app.aget_state({"configurable": {"thread_id": "t1"}})
            snap.values, snap.next
        """
        saver, thread_id, checkpoint_id = self._thread(config)
        found = await saver.aget(thread_id, "", checkpoint_id)
        if found is None:
            return StateSnapshot(
                values={}, next=(), config=config, metadata={}, created_at="", parent_config=None
            )
        return snapshot(found.checkpoint, found.writes)

    def get_state(self, config: Mapping[str, Any]) -> StateSnapshot:
        """Sync :meth:`aget_state`.

        Example::

            app.get_state({"configurable": {"thread_id": "t1"}}).values
        """
        return _sync(self, "get_state", functools.partial(self.aget_state, config))

    async def aget_state_history(
        self, config: Mapping[str, Any], *, limit: int | None = None
    ) -> list[StateSnapshot]:
        """Every checkpoint of the thread as a snapshot, newest first.

        Example::

            for snap in await app.aget_state_history(config):
                print(snap.metadata["step"], snap.values)
        """
        saver, thread_id, before = self._thread(config)
        checkpoints = await saver.alist(thread_id, "", limit=limit, before=before)
        return [snapshot(c, ()) for c in checkpoints]

    def get_state_history(
        self, config: Mapping[str, Any], *, limit: int | None = None
    ) -> list[StateSnapshot]:
        """Sync :meth:`aget_state_history`.

        Example::

            [s.values for s in app.get_state_history(config)]
        """
        call = functools.partial(self.aget_state_history, config, limit=limit)
        return _sync(self, "get_state_history", call)

    async def aupdate_state(
        self, config: Mapping[str, Any], values: Mapping[str, Any], as_node: str | None = None
    ) -> dict[str, Any]:
        """Write ``values`` into the thread's state through the reducers, as a new checkpoint.

        With ``as_node``, the update counts as that node's output: its edges decide what
        runs next. Without, what was due to run next stays due. Returns the new config.

        Example::

            await app.aupdate_state(config, {"approved": True}, as_node="review")
        """
        saver, thread_id, _ = self._thread(config)
        if as_node is not None and as_node not in self.nodes:
            raise InvalidInputError(
                f"update_state(as_node={as_node!r}): graph {self.name!r} has no such node; "
                f"nodes: {sorted(self.nodes)}."
            )
        update = self.schema.check_update(as_node or "update_state", values)
        self._scheduler.check_storable(update, "update_state(values)")
        run = self.prepare_run(None, config)
        persist = Persist(saver, thread_id, run)
        persist.durable = True  # one write, outside any run: always synchronous
        latest = await persist.load()
        scheduler = self._scheduler
        joins: list[set[str]]
        if latest is None:
            state, joins, step = self.schema.defaults(), scheduler.no_joins(), 0
            pending: list[Pending] = []
        else:
            cp = latest.checkpoint
            state, step = dict(cp.values), cp.step + 1
            joins = [set(j) for j in cp.joins] or scheduler.no_joins()
            pending = [
                Pending(t.node, t.triggers, t.path, t.arg if t.has_arg else MISSING)
                for t in cp.next
            ]
        scheduler.apply(state, [(as_node or "update_state", update)], step)
        if as_node is not None:
            pending = await scheduler.route([as_node], {}, state, joins, run)
        await persist.save(
            state, pending, joins, step, "update", [(as_node or "update_state", update)]
        )
        return {"configurable": {"thread_id": thread_id, "checkpoint_id": persist.checkpoint_id}}

    def update_state(
        self, config: Mapping[str, Any], values: Mapping[str, Any], as_node: str | None = None
    ) -> dict[str, Any]:
        """Sync :meth:`aupdate_state`.

        Example::

            app.update_state(config, {"approved": True})
        """
        call = functools.partial(self.aupdate_state, config, values, as_node)
        return _sync(self, "update_state", call)

    # -- running ----------------------------------------------------------------------

    def prepare_run(
        self,
        input: Any,
        config: Mapping[str, Any] | None,
        *,
        parent: Task | None = None,
    ) -> Run:
        """Make the :class:`Run` record for one execution (subscriptions are added to it)."""
        config = check_config(self._merged(config) if parent is None else config)
        if parent is None:
            run_id = config.get("run_id")
            if run_id is not None and not isinstance(run_id, str):
                raise InvalidInputError(f"config['run_id'] must be a string; got {run_id!r:.40}.")
            return Run(
                graph_name=self.name,
                config=config,
                input=input,
                run_id=run_id,
                plugin_manager=self.plugin_manager,
            )
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
        """Execute ``run`` (from :meth:`prepare_run`): hooks and graph-level events around
        the supersteps; returns the final state."""
        return await self._scheduler.execute(run, input)

    async def run_as_node(self, task: Task, parent_schema: Schema) -> dict[str, Any]:
        """Run as the node of ``task`` in a parent graph (:class:`headwater._nodes.Subgraph`)."""
        node_input = task.input
        if task.path[:1] != ("push",):  # the parent's state: pass on the keys this graph has
            parent_values = parent_schema.coerce_input(node_input, task.node)
            node_input = {k: v for k, v in parent_values.items() if k in self.schema.keys}
        run = self.prepare_run(node_input, task.run.config, parent=task)
        values = await self.execute(run, node_input)
        return {k: v for k, v in values.items() if k in parent_schema.keys}


def _sync(graph: CompiledGraph, method: str, call: Callable[[], Awaitable[T]]) -> T:
    """Run a sync method's async twin (see :mod:`headwater._sync` for where it runs)."""
    return run_sync(
        call,
        what=f"{method}() of graph {graph.name!r}",
        instead=f"In an async node use `await graph.a{method}(...)`.",
    )
