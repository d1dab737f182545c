"""The compiled graph and its bulk-synchronous superstep scheduler.

A run is a sequence of supersteps. Step 0 applies the input. In each following step,
every triggered task (one per triggered node, plus one per ``Send``) runs concurrently
against the same snapshot of the state; their updates are applied together at the end
of the step, in node-name order, through the reducers. Edges from the nodes that ran
then decide the next step's tasks. The run ends when a step triggers nothing.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import inspect
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import anyio.to_thread
import attrs

from headwater import _concurrency
from headwater._graph import Branch, NodeSpec, StateGraph
from headwater._state import MISSING, Schema
from headwater._types import END, START, Command, Send
from headwater.checkpoint import (
    Checkpoint,
    Checkpointer,
    CheckpointTuple,
    Interrupt,
    PendingTask,
    PendingWrite,
    StateSnapshot,
    WriteBatch,
    checkpointer_from_url,
    new_checkpoint_id,
)
from headwater.errors import (
    CheckpointError,
    GraphInterrupt,
    GraphRecursionError,
    InvalidInputError,
    InvalidRouteError,
    InvalidUpdateError,
)
from headwater.events import (
    CHECKPOINT,
    ON_CHAIN_END,
    ON_CHAIN_ERROR,
    ON_CHAIN_START,
    ON_INTERRUPT,
    STEP_END,
    TASK_END,
    TASK_START,
)
from headwater.runtime import Run, Task, current_task
from headwater.sinks import close_sinks, open_sinks

if TYPE_CHECKING:
    from headwater._stream import RunStream

__all__ = ["DEFAULT_RECURSION_LIMIT", "CompiledGraph"]

_ASYNC_BACKLOG = 256
"""Checkpoint writes an ``async`` run may have in flight before its steps wait."""

INTERRUPT_KEY = "__interrupt__"
"""Key under which a paused run's result (and ``updates`` stream) carries its interrupts."""

DEFAULT_RECURSION_LIMIT = 25
"""Supersteps a run may take unless ``config["recursion_limit"]`` says otherwise.

Example::

    app.invoke(state, {"recursion_limit": 4 * DEFAULT_RECURSION_LIMIT})
"""

_EMPTY: Mapping[str, Any] = {}


class _Pending:
    """A task to run in the next step (before it has a :class:`Task`)."""

    __slots__ = ("arg", "id", "node", "path", "triggers")

    def __init__(
        self,
        node: str,
        triggers: tuple[str, ...],
        path: tuple[str | int, ...],
        arg: Any,
        id: str = "",
    ) -> None:
        self.node = node
        self.triggers = triggers
        self.path = path
        self.arg = arg
        self.id = id  # checkpoint task id: stable across a resume


class _Outcome:
    __slots__ = ("goto", "interrupt", "update")

    def __init__(
        self,
        update: Mapping[str, Any] | None,
        goto: tuple[str | Send, ...],
        interrupt: Interrupt | None = None,
    ) -> None:
        self.update = update
        self.goto = goto
        self.interrupt = interrupt


@attrs.define
class _Start:
    """Where a run's loop begins (see ``CompiledGraph._restore``)."""

    values: dict[str, Any]
    update: Mapping[str, Any] | None
    step: int
    pending: list[_Pending] = attrs.field(factory=list)
    joins: list[set[str]] | None = None
    done: dict[str, PendingWrite] = attrs.field(factory=dict)
    answer: Any = None
    checkpoint_id: str | None = None
    persist: _Persist | None = None


class _Persist:
    """Checkpointing for one root run on one thread."""

    def __init__(self, saver: Checkpointer, thread_id: str, run: Run) -> None:
        self.saver = saver
        self.thread_id = thread_id
        self.ns = ""
        self.run = run
        self.checkpoint_id: str | None = None
        self.durable = run.config.get("durability", "sync") == "sync"
        self._queue: list[Checkpoint | WriteBatch] = []
        self._wake: anyio.Event | None = None
        self._room: anyio.Event | None = None
        self._error: BaseException | None = None

    async def _store(self, item: Checkpoint | WriteBatch, *, now: bool = False) -> None:
        """Write now (``durability="sync"``, or ``now``) or hand to the background writer."""
        if self.durable or (now and not self._queue):
            if isinstance(item, Checkpoint):
                await self.saver.aput(item)
            else:
                await self.saver.aput_writes(
                    item.thread_id, item.ns, item.checkpoint_id, item.writes
                )
            return
        if self._error is not None:
            raise self._error
        self._queue.append(item)
        if self._wake is not None:
            self._wake.set()
        while len(self._queue) > _ASYNC_BACKLOG and self._error is None:
            self._room = anyio.Event()  # bounded memory: wait for the writer to catch up
            await self._room.wait()

    async def _writer(self) -> None:
        while True:
            if not self._queue:
                self._wake = anyio.Event()
                await self._wake.wait()
                continue
            batch, self._queue = self._queue, []
            try:
                await self.saver.aput_batch(batch)
            except Exception as exc:  # surfaced by the next save, or when the run ends
                self._error = exc
            if self._room is not None:
                self._room.set()
            if self._error is not None:
                return

    @contextlib.asynccontextmanager
    async def background(self) -> AsyncIterator[None]:
        """Run the ordered background writer of an ``async`` run; flush it at the end."""
        if self.durable:
            yield
            return
        failed: BaseException | None = None
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._writer)
            try:
                yield
            except BaseException as exc:  # re-raised below as it is, not in an ExceptionGroup
                failed = exc
            finally:
                with anyio.CancelScope(shield=True):
                    while self._queue and self._error is None:
                        await anyio.lowlevel.checkpoint()
                        if self._wake is not None:
                            self._wake.set()
                tg.cancel_scope.cancel()
        if failed is not None:
            raise failed
        if self._error is not None:
            raise self._error

    @classmethod
    def open(cls, graph: CompiledGraph, run: Run) -> _Persist | None:
        saver = graph.checkpointer
        if saver is None or run.ns:
            return None  # subgraphs run inside their parent's checkpointed step
        thread_id = (run.config.get("configurable") or {}).get("thread_id")
        if thread_id is None:
            raise InvalidInputError(
                f"Graph {graph.name!r} has a checkpointer, so each run needs a thread id: "
                "config={'configurable': {'thread_id': 'my-thread'}}."
            )
        return cls(saver, str(thread_id), run)

    async def load(self) -> CheckpointTuple | None:
        found = await self.saver.aget(self.thread_id, self.ns)
        if found is not None:
            self.checkpoint_id = found.checkpoint.id
        return found

    async def save(
        self,
        values: Mapping[str, Any],
        pending: list[_Pending],
        joins: list[set[str]],
        step: int,
        source: str,
        writes: Mapping[str, Any],
    ) -> None:
        checkpoint_id = new_checkpoint_id()
        for i, p in enumerate(pending):
            p.id = f"{checkpoint_id}/{i}"
        checkpoint = Checkpoint(
            id=checkpoint_id,
            thread_id=self.thread_id,
            ns=self.ns,
            parent_id=self.checkpoint_id,
            step=step,
            values=dict(values),
            next=tuple(
                PendingTask(
                    id=p.id,
                    node=p.node,
                    triggers=p.triggers,
                    path=p.path,
                    has_arg=p.arg is not MISSING,
                    arg=None if p.arg is MISSING else p.arg,
                )
                for p in pending
            ),
            joins=tuple(tuple(sorted(j)) for j in joins),
            metadata={
                "source": source,
                "step": step,
                "writes": dict(writes),
                "run_id": self.run.run_id,
            },
            created_at=datetime.datetime.now(datetime.UTC).isoformat(),
        )
        # A run's input checkpoint is always written before its first step, even with
        # durability="async": a crash can then cost repeated steps, never the run itself.
        await self._store(checkpoint, now=source == "input")
        self.checkpoint_id = checkpoint_id
        run = self.run
        subs = run.subscriptions(CHECKPOINT)
        if subs:
            snapshot = _snapshot(checkpoint, ())
            run.emit(
                subs,
                CHECKPOINT,
                "checkpoint",
                run.run_id,
                run.parent_ids,
                run.tags,
                run.metadata,
                snapshot,
            )

    async def save_write(self, task: Task, outcome: _Outcome) -> None:
        assert self.checkpoint_id is not None
        write = PendingWrite(
            task_id=task.checkpoint_task_id,
            node=task.node,
            update=outcome.update,
            goto=outcome.goto,
            interrupt=outcome.interrupt,
            resume=task.resume,
        )
        await self._store(WriteBatch(self.thread_id, self.ns, self.checkpoint_id, (write,)))


def _snapshot(checkpoint: Checkpoint, writes: tuple[PendingWrite, ...]) -> StateSnapshot:
    configurable = {"thread_id": checkpoint.thread_id, "checkpoint_id": checkpoint.id}
    parent = (
        {"configurable": {"thread_id": checkpoint.thread_id, "checkpoint_id": checkpoint.parent_id}}
        if checkpoint.parent_id
        else None
    )
    return StateSnapshot(
        values=dict(checkpoint.values),
        next=tuple(t.node for t in checkpoint.next),
        config={"configurable": configurable},
        metadata=dict(checkpoint.metadata),
        created_at=checkpoint.created_at,
        parent_config=parent,
        tasks=checkpoint.next,
        interrupts=tuple(w.interrupt for w in writes if w.interrupt is not None),
    )


def _task_end(
    node: str, *, update: Any = None, error: BaseException | None = None, interrupt: Any = None
) -> dict[str, Any]:
    """The ``data`` of a ``task_end`` event (see :data:`headwater.events.TASK_END`)."""
    return {"node": node, "update": update, "error": error, "interrupt": interrupt}


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
        plugin_manager: Any = None,
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
        self._interrupt_before = frozenset(interrupt_before)
        self._interrupt_after = frozenset(interrupt_after)
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

    # -- thread state -----------------------------------------------------------------

    def _thread(self, config: Mapping[str, Any] | None) -> tuple[Checkpointer, str, str | None]:
        if self.checkpointer is None:
            raise CheckpointError(
                f"Graph {self.name!r} has no checkpointer, so it keeps no thread state; "
                "compile it with checkpointer='memory:' (or sqlite:///…, postgresql://…)."
            )
        configurable = (config or {}).get("configurable") or {}
        thread_id = configurable.get("thread_id")
        if thread_id is None:
            raise InvalidInputError(
                "Thread state needs config={'configurable': {'thread_id': ...}}; "
                "no thread_id was given."
            )
        return self.checkpointer, str(thread_id), configurable.get("checkpoint_id")

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
        return _snapshot(found.checkpoint, found.writes)

    def get_state(self, config: Mapping[str, Any]) -> StateSnapshot:
        """Sync :meth:`aget_state`.

        Example::

            app.get_state({"configurable": {"thread_id": "t1"}}).values
        """
        return anyio.run(self.aget_state, config)

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
        return [_snapshot(c, ()) for c in checkpoints]

    def get_state_history(
        self, config: Mapping[str, Any], *, limit: int | None = None
    ) -> list[StateSnapshot]:
        """Sync :meth:`aget_state_history`.

        Example::

            [s.values for s in app.get_state_history(config)]
        """
        return anyio.run(functools.partial(self.aget_state_history, config, limit=limit))

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
        run = self.prepare_run(None, config)
        persist = _Persist(saver, thread_id, run)
        persist.durable = True  # one write, outside any run: always synchronous
        latest = await persist.load()
        joins: list[set[str]]
        if latest is None:
            state, joins, step = self.schema.defaults(), [set() for _ in self._joins], 0
            pending: list[_Pending] = []
        else:
            cp = latest.checkpoint
            state, step = dict(cp.values), cp.step + 1
            joins = [set(j) for j in cp.joins] or [set() for _ in self._joins]
            pending = [
                _Pending(t.node, t.triggers, t.path, t.arg if t.has_arg else MISSING)
                for t in cp.next
            ]
        self._apply(state, [(as_node or "update_state", update)], step)
        if as_node is not None:
            pending = await self._route([as_node], {}, state, joins, run)
        await persist.save(
            state, pending, joins, step, "update", {as_node or "update_state": update}
        )
        return {"configurable": {"thread_id": thread_id, "checkpoint_id": persist.checkpoint_id}}

    def update_state(
        self, config: Mapping[str, Any], values: Mapping[str, Any], as_node: str | None = None
    ) -> dict[str, Any]:
        """Sync :meth:`aupdate_state`.

        Example::

            app.update_state(config, {"approved": True})
        """
        return anyio.run(functools.partial(self.aupdate_state, config, values, as_node))

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
            run_id = config.get("run_id")
            if run_id is not None and not isinstance(run_id, str):
                raise InvalidInputError(f"config['run_id'] must be a string; got {run_id!r:.40}.")
            run = Run(graph_name=self.name, config=config, input=input, run_id=run_id)
            run.plugin_manager = self.plugin_manager
            return run
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
        pm = run.plugin_manager if run.plugin_manager is not None else self.plugin_manager
        hooks = pm.hook
        specs = run.config.get("sinks") if run.parent is None else None
        sinks = await open_sinks(specs, pm) if specs is not None else []
        try:
            start = await self._restore(run, input)  # bad input fails here, before any event
        except BaseException:
            if sinks:
                with anyio.CancelScope(shield=True):
                    await close_sinks(sinks)
            raise
        error: BaseException | None = None
        header = (self.name, run.run_id, run.parent_ids, run.tags, run.metadata)
        try:
            if run.parent is None:  # a subgraph's run shares its root run's subscribers
                for subscriptions in hooks.headwater_event_subscribers(run=run):
                    for subscription in subscriptions or ():
                        run.subscribe(subscription)
                for sink in sinks:
                    run.subscribe(sink.subscription())
            for result in hooks.headwater_run_start(run=run):
                if inspect.isawaitable(result):
                    await result
            subs = run.subscriptions(ON_CHAIN_START)
            if subs:
                run.emit(subs, ON_CHAIN_START, *header, {"input": input})
            if start.persist is not None:
                async with start.persist.background():
                    values = await self._loop(run, start, pm)
            else:
                values = await self._loop(run, start, pm)
            subs = run.subscriptions(ON_CHAIN_END)
            if subs:
                run.emit(subs, ON_CHAIN_END, *header, {"output": dict(values)})
            return values
        except Exception as exc:
            error = exc
            subs = run.subscriptions(ON_CHAIN_ERROR)
            if subs:
                run.emit(subs, ON_CHAIN_ERROR, *header, {"error": exc})
            raise
        except BaseException as exc:  # cancelled: every start still gets its error event
            error = exc
            subs = run.subscriptions(ON_CHAIN_ERROR)
            if subs:
                run.emit(subs, ON_CHAIN_ERROR, *header, {"error": exc})
            raise
        finally:
            try:
                for result in hooks.headwater_run_end(run=run, error=error):
                    if inspect.isawaitable(result):
                        with anyio.CancelScope(shield=True):
                            await result
            finally:
                if sinks:  # after the run's last event, however it ended
                    with anyio.CancelScope(shield=True):
                        await close_sinks(sinks)

    async def _restore(self, run: Run, input: Any) -> _Start:
        """Where a run starts: fresh input, new input on a thread, or a resume."""
        persist = _Persist.open(self, run)
        resuming = input is None or isinstance(input, Command)
        if isinstance(input, Command) and input.resume is None:
            raise InvalidInputError(
                f"A Command given as the input of graph {self.name!r} must carry resume=..., "
                "the answer to the interrupt that paused the thread."
            )
        if persist is None:
            if resuming:
                raise InvalidInputError(
                    f"Input {input!r:.40} resumes a thread, but graph {self.name!r} has no "
                    "checkpointer. Compile it with checkpointer='memory:' (or sqlite:///…, "
                    "postgresql://…) and pass config={'configurable': {'thread_id': ...}}."
                )
            values = self.schema.defaults()
            update = self.schema.coerce_input(input, self.name)
            return _Start(values=values, update=update, step=0)
        latest = await persist.load()
        if resuming:
            if latest is None:
                raise CheckpointError(
                    f"Thread {persist.thread_id!r} has no checkpoint to resume from (input "
                    f"{input!r:.40}). Start it with an input state first."
                )
            checkpoint = latest.checkpoint
            done = {w.task_id: w for w in latest.writes}
            answer = input.resume if isinstance(input, Command) else None
            if isinstance(input, Command) and not any(w.interrupt for w in done.values()):
                raise InvalidInputError(
                    f"Command(resume=...) was given but thread {persist.thread_id!r} is not "
                    "paused by interrupt(); pass None to continue it, or new input."
                )
            return _Start(
                values=dict(checkpoint.values),
                update=None,
                step=checkpoint.step,
                pending=[
                    _Pending(t.node, t.triggers, t.path, t.arg if t.has_arg else MISSING, t.id)
                    for t in checkpoint.next
                ],
                joins=[set(j) for j in checkpoint.joins] or None,
                done=done,
                answer=answer,
                checkpoint_id=checkpoint.id,
                persist=persist,
            )
        update = self.schema.coerce_input(input, self.name)
        if latest is None:
            return _Start(values=self.schema.defaults(), update=update, step=0, persist=persist)
        checkpoint = latest.checkpoint
        return _Start(
            values=dict(checkpoint.values),
            update=update,
            step=checkpoint.step + 1,
            checkpoint_id=checkpoint.id,
            persist=persist,
        )

    async def _loop(self, run: Run, start: _Start, pm: Any) -> dict[str, Any]:
        limit = run.config.get("recursion_limit", DEFAULT_RECURSION_LIMIT)
        values = start.values
        persist = start.persist
        step = start.step
        wrap = bool(pm.hook.headwater_wrap_node.get_hookimpls())
        step_end_hook = (
            pm.hook.headwater_step_end if pm.hook.headwater_step_end.get_hookimpls() else None
        )
        step_subs = run.subscriptions(STEP_END)
        header = (self.name, run.run_id, run.parent_ids, run.tags, run.metadata)
        join_seen: list[set[str]] = start.joins or [set() for _ in self._joins]
        if start.update is not None:  # new input: step `step` applies it
            self._apply(values, [(START, start.update)], step)
            if step_subs:
                data = {"values": dict(values), "writes": {START: (start.update,)}, "step": step}
                run.emit(step_subs, STEP_END, *header, data)
            pending = await self._route([START], {}, values, join_seen, run)
            if persist is not None:
                await persist.save(values, pending, join_seen, step, "input", {START: start.update})
        else:
            pending = start.pending
        resumed = start.update is None
        done = start.done
        steps_run = 0
        while pending:
            if not resumed and persist is not None and self._interrupt_before:
                hits = [p for p in pending if p.node in self._interrupt_before]
                if hits:
                    return self._pause(run, values, [Interrupt(node=p.node, id=p.id) for p in hits])
            resumed = False
            steps_run += 1
            step += 1
            if steps_run > limit:
                raise GraphRecursionError(
                    f"Graph {self.name!r} reached its recursion limit of {limit} supersteps with "
                    f"node(s) {sorted({p.node for p in pending})} still to run. If it loops on "
                    "purpose, raise the limit: "
                    f"config={{'recursion_limit': {max(limit * 4, 100)}}}; "
                    "otherwise make a conditional edge route to END."
                )
            # A cancelled run (its consumer left) starts no new step, even when the nodes
            # of the last one finished without reaching a checkpoint (e.g. in a thread).
            await anyio.lowlevel.checkpoint_if_cancelled()
            tasks = [self._make_task(p, step, values, run, done, start.answer) for p in pending]
            outcomes = await self._run_step(tasks, wrap, pm, done, persist)
            paused = [o.interrupt for o in outcomes if o.interrupt is not None]
            if paused:
                return self._pause(run, values, paused)
            done = {}
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
            if step_subs:
                per_node: dict[str, tuple[Any, ...]] = {}
                for node, upd in writes:
                    per_node[node] = (*per_node.get(node, ()), upd)
                data = {"values": dict(values), "writes": per_node, "step": step}
                run.emit(step_subs, STEP_END, *header, data)
                if run._valves:
                    await run.relieve()
            pending = await self._route(ran, goto, values, join_seen, run)
            if persist is not None:
                await persist.save(values, pending, join_seen, step, "loop", dict(writes))
            if step_end_hook is not None:
                for result in step_end_hook(run=run, step=step):
                    if inspect.isawaitable(result):
                        await result
            if pending and persist is not None and self._interrupt_after:
                stopped = [n for n in ran if n in self._interrupt_after]
                if stopped:
                    return self._pause(run, values, [Interrupt(node=n) for n in stopped])
        return values

    def _pause(
        self, run: Run, values: dict[str, Any], interrupts: list[Interrupt]
    ) -> dict[str, Any]:
        """End the run paused: report the interrupts; the result carries them too."""
        subs = run.subscriptions(ON_INTERRUPT)
        for item in interrupts:
            if subs:
                data = {"value": item.value, "id": item.id, "node": item.node}
                run.emit(
                    subs,
                    ON_INTERRUPT,
                    item.node,
                    run.run_id,
                    run.parent_ids,
                    run.tags,
                    run.metadata,
                    data,
                )
        subs = run.subscriptions(TASK_END)
        if subs:
            data = _task_end(INTERRUPT_KEY, update=tuple(interrupts))
            run.emit(
                subs,
                TASK_END,
                INTERRUPT_KEY,
                run.run_id,
                run.parent_ids,
                run.tags,
                run.metadata,
                data,
            )
        return {**values, INTERRUPT_KEY: tuple(interrupts)}

    def _make_task(
        self,
        p: _Pending,
        step: int,
        values: dict[str, Any],
        run: Run,
        done: Mapping[str, PendingWrite],
        answer: Any,
    ) -> Task:
        spec = self.nodes[p.node]
        node_input = self.schema.make_input(values) if p.arg is MISSING else p.arg
        task = Task(
            node=p.node,
            step=step,
            input=node_input,
            triggers=p.triggers,
            path=p.path,
            tags=spec.tags,
            metadata=spec.metadata,
            run=run,
        )
        if p.id:
            task.checkpoint_task_id = p.id
            previous = done.get(p.id)
            if previous is not None and previous.interrupt is not None:
                task.resume = (*previous.resume, answer)
        return task

    async def _run_step(
        self,
        tasks: list[Task],
        wrap: bool,
        pm: Any,
        done: Mapping[str, PendingWrite],
        persist: _Persist | None,
    ) -> list[_Outcome]:
        if persist is None and not done:
            if len(tasks) == 1:
                call = functools.partial(self._run_task, tasks[0], wrap, pm)
                return [await _concurrency.run_one(call)]
            results, error = await _concurrency.run_all(
                [functools.partial(self._run_task, t, wrap, pm) for t in tasks]
            )
            if error is not None:
                raise error[1]
            return results
        outcomes: list[_Outcome | None] = [None] * len(tasks)
        todo = []
        for i, task in enumerate(tasks):
            previous = done.get(task.checkpoint_task_id) if task.checkpoint_task_id else None
            if previous is not None and previous.interrupt is None:
                # Finished before the step was cut short: reuse its saved result.
                outcomes[i] = _Outcome(previous.update, previous.goto)
            else:
                todo.append(i)
        run_task = (
            self._run_task if persist is None else functools.partial(self._run_saved, persist)
        )
        if len(todo) == 1:
            i = todo[0]
            if persist is not None and len(tasks) == 1:
                call = functools.partial(self._run_saved, persist, tasks[i], wrap, pm, True)
            else:
                call = functools.partial(run_task, tasks[i], wrap, pm)
            outcomes[i] = await _concurrency.run_one(call)
        elif todo:
            results, error = await _concurrency.run_all(
                [functools.partial(run_task, tasks[i], wrap, pm) for i in todo]
            )
            if error is not None:
                raise error[1]
            for i, result in zip(todo, results, strict=True):
                outcomes[i] = result
        return [o for o in outcomes if o is not None]

    async def _run_saved(
        self, persist: _Persist, task: Task, wrap: bool, pm: Any, alone: bool = False
    ) -> _Outcome:
        outcome = await self._run_task(task, wrap, pm)
        if not alone or outcome.interrupt is not None or task.resume:
            # A step's only task that completed needs no write of its own: the step's
            # checkpoint, written right after, carries its result.
            await persist.save_write(task, outcome)
        return outcome

    async def _run_task(self, task: Task, wrap: bool, pm: Any) -> _Outcome:
        current_task.set(task)
        run = task.run
        streaming = run.streaming
        if streaming:
            task.dispatch(TASK_START, {"input": task.input, "triggers": task.triggers})
            task.dispatch(ON_CHAIN_START, {"input": task.input})
        try:
            call = self._call_node if self.nodes[task.node].retry is None else self._call_retrying
            if wrap:
                out = await _wrapped(call, task, pm)
            else:
                out = await call(task)
            outcome = self._outcome(task.node, out)
        except GraphInterrupt as paused:
            if self.checkpointer is None:
                raise InvalidInputError(
                    f"Node {task.node!r} called interrupt(), which needs a checkpointer to "
                    f"resume from: compile graph {self.name!r} with checkpointer='memory:' "
                    "(or another backend) and run it with a thread_id."
                ) from None
            if streaming:  # the task ends paused: neither an update nor an error
                task.dispatch(TASK_END, _task_end(task.node, interrupt=paused.interrupt))
                task.dispatch(ON_CHAIN_END, {"output": None, "interrupt": paused.interrupt})
            return _Outcome(None, (), paused.interrupt)
        except Exception as exc:
            if streaming:
                task.dispatch(ON_CHAIN_ERROR, {"error": exc})
                task.dispatch(TASK_END, _task_end(task.node, error=exc))
            exc.add_note(
                f"While running node {task.node!r} (step {task.step}) of graph {self.name!r}."
            )
            raise
        except BaseException as exc:  # cancelled (a sibling failed, the consumer left)
            if streaming:
                task.dispatch(ON_CHAIN_ERROR, {"error": exc})
            raise
        if streaming:
            task.dispatch(TASK_END, _task_end(task.node, update=outcome.update))
            task.dispatch(ON_CHAIN_END, {"output": out})
            if run._valves:
                await run.relieve()
        return outcome

    async def _call_retrying(self, task: Task) -> Any:
        """Call the node under its retry policy: again after each retryable failure."""
        policy = self.nodes[task.node].retry
        assert policy is not None
        attempt = 1
        while True:
            try:
                return await self._call_node(task)
            except Exception as exc:
                if attempt >= policy.max_attempts or not policy.should_retry(exc):
                    if attempt > 1:
                        exc.add_note(f"Node {task.node!r} failed {attempt} attempts in all.")
                    raise
            await anyio.sleep(policy.delay(attempt))
            attempt += 1

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
            try:
                return await spec.fn(*args, **kwargs)
            except BaseException as exc:
                _fail_run_not_process(task, exc)
                raise
        fn = functools.partial(spec.fn, **kwargs) if kwargs else spec.fn
        run = task.run
        if not run.streaming:
            try:
                return await anyio.to_thread.run_sync(_sync_node, self.schema, task.node, fn, *args)
            except BaseException as exc:
                _fail_run_not_process(task, exc)
                raise
        run.threads_starting()
        try:
            out = await anyio.to_thread.run_sync(_sync_node, self.schema, task.node, fn, *args)
        except BaseException as exc:
            run.threads_done(raise_errors=False)  # the node's own error is what counts
            _fail_run_not_process(task, exc)
            raise
        run.threads_done()
        return out

    async def _as_node(self, task: Task, parent_schema: Schema) -> dict[str, Any]:
        node_input = task.input
        if task.path[:1] != ("push",):  # the parent's state: pass on the keys this graph has
            parent_values = parent_schema.coerce_input(node_input, task.node)
            node_input = {k: v for k, v in parent_values.items() if k in self.schema.keys}
        run = self.prepare_run(node_input, task.run.config, parent=task)
        values = await self.execute(run, node_input)
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


def _sync_node(schema: Schema, node: str, fn: Callable[..., Any], *args: Any) -> Any:
    """Call a sync node in its worker thread; a coroutine it returns is reported here
    (trio would refuse it with a confusing TypeError, asyncio would pass it on)."""
    out = fn(*args)
    if inspect.iscoroutine(out):
        schema.check_update(node, out)  # raises InvalidUpdateError: make the node async
    return out


async def _wrapped(call: Callable[[Task], Any], task: Task, pm: Any) -> Any:
    middlewares = [m for m in pm.hook.headwater_wrap_node(task=task) if m is not None]
    if not middlewares:
        return await call(task)
    chain = call
    for middleware in middlewares:  # pluggy returns last-registered first: innermost first
        chain = functools.partial(middleware, chain)
    return await chain(task)


def _fail_run_not_process(task: Task, exc: BaseException) -> None:
    """A node's ``SystemExit``, ``KeyboardInterrupt`` or other ``BaseException`` fails its
    run as an ordinary error: escaping a task, it would stop the event loop and every
    other run of the process (a served graph's ``sys.exit()`` took the server down).
    Cancellation and ``GeneratorExit`` (closing the coroutine) pass through unchanged."""
    if isinstance(exc, Exception | GeneratorExit | anyio.get_cancelled_exc_class()):
        return
    name = type(exc).__name__
    raise RuntimeError(
        f"Node {task.node!r} raised {name}({', '.join(map(repr, exc.args))}): a node's "
        f"{name} fails its run, not the process."
    ) from exc


def _check_config(config: Mapping[str, Any] | None) -> Mapping[str, Any]:
    if config is None:
        config = _EMPTY
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
    durability = config.get("durability", "sync")
    if durability not in ("sync", "async"):
        raise InvalidInputError(
            f"config['durability'] must be 'sync' (every checkpoint write finishes before the "
            f"next step) or 'async' (written in the background, flushed when the run ends); "
            f"got {durability!r:.40}."
        )
    configurable = config.get("configurable", _EMPTY)
    if not isinstance(configurable, Mapping):
        raise InvalidInputError(
            "config['configurable'] must be a mapping like {'thread_id': '1'}; got "
            f"{configurable!r:.80}."
        )
    if configurable is _EMPTY:  # nodes and routers may read config["configurable"] freely
        return {**config, "configurable": {}}
    return config
