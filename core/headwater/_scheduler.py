"""The superstep scheduler: how a compiled graph's run executes.

A run is a sequence of supersteps. Step 0 applies the input. In each following step,
every triggered task (one per triggered node, plus one per ``Send``) runs concurrently
against the same snapshot of the state; their updates are applied together at the end
of the step, in node-name order, through the reducers. Edges from the nodes that ran
then decide the next step's tasks. The run ends when a step triggers nothing, pauses at
an interrupt, or fails.

Here live the loop, task execution (node calling conventions, sync nodes in worker
threads, ``headwater_wrap_node`` middleware, retries), routing (edges, joins, routers,
``Send`` and ``Command``) and the reducers' application. Checkpointing is
:mod:`headwater._persist`'s; events go out through :mod:`headwater._bus`. The compiled
graph (:mod:`headwater._pregel`) builds a :class:`Scheduler` and calls :meth:`execute`;
this module never imports it.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import anyio
import anyio.lowlevel
import anyio.to_thread
import attrs

from headwater import _concurrency, serde
from headwater._bus import Emitter
from headwater._nodes import Branch, NodeSpec, is_seconds
from headwater._persist import Outcome, Pending, Persist, graph_emitter
from headwater._plugins import PluginManager
from headwater._state import MISSING, Schema
from headwater._types import END, START, Command, Send
from headwater.checkpoint import Checkpoint, Checkpointer, Interrupt, PendingWrite
from headwater.errors import (
    CheckpointError,
    GraphInterrupt,
    GraphRecursionError,
    InvalidInputError,
    InvalidRouteError,
    InvalidUpdateError,
    NodeCancelledError,
    NodeError,
    RunTimeoutError,
    SerdeError,
)
from headwater.events import (
    INTERRUPT,
    ON_CHAIN_END,
    ON_CHAIN_ERROR,
    ON_CHAIN_START,
    ON_CHAIN_STREAM,
    ON_INTERRUPT,
    STEP_END,
    TASK_END,
    TASK_START,
)
from headwater.runtime import Run, Task, current_task
from headwater.sinks import close_sinks, open_sinks

__all__ = ["DEFAULT_RECURSION_LIMIT", "MAX_RECURSION_LIMIT", "Scheduler", "check_config"]

DEFAULT_RECURSION_LIMIT = 10_007
"""Supersteps a run may take unless ``config["recursion_limit"]`` says otherwise.

LangGraph 1.2's default: a long agent loop just runs, while a loop that never ends still
stops (in seconds for nodes that do no I/O).

Example::

    app.invoke(state, {"recursion_limit": 4 * DEFAULT_RECURSION_LIMIT})
"""

MAX_RECURSION_LIMIT = 1_000_000
"""The highest ``config["recursion_limit"]`` accepted: past it, a limit stops nothing (a
looping run would write a checkpoint per step for hours); bound such runs by time with
``config["timeout"]`` instead.

Example::

    app.invoke(state, {"recursion_limit": 10_000, "timeout": 600})
"""

_EMPTY: Mapping[str, Any] = {}


@attrs.define
class Start:
    """Where a run's loop begins (see :meth:`Scheduler._restore`)."""

    values: dict[str, Any]
    update: Mapping[str, Any] | None
    step: int
    pending: list[Pending] = attrs.field(factory=list)
    joins: list[set[str]] | None = None
    done: dict[str, PendingWrite] = attrs.field(factory=dict)
    answer: Any = None
    checkpoint_id: str | None = None
    persist: Persist | None = None


def _task_end(
    node: str, *, update: Any = None, error: BaseException | None = None, interrupt: Any = None
) -> dict[str, Any]:
    """The ``data`` of a ``task_end`` event (see :data:`headwater.events.TASK_END`)."""
    return {"node": node, "update": update, "error": error, "interrupt": interrupt}


class Scheduler:
    """Executes runs of one compiled graph: its nodes, edges, joins, routers and reducers.

    Example::

        scheduler = Scheduler(name="chat", schema=schema, nodes=nodes, edges=edges,
                              joins=joins, branches=branches, checkpointer=None)
        values = await scheduler.execute(run, {"messages": ["hi"]})
    """

    def __init__(
        self,
        *,
        name: str,
        schema: Schema,
        nodes: Mapping[str, NodeSpec],
        edges: Iterable[tuple[str, str]],
        joins: Iterable[tuple[Iterable[str], str]],
        branches: Iterable[Branch],
        checkpointer: Checkpointer | None,
        interrupt_before: Iterable[str] = (),
        interrupt_after: Iterable[str] = (),
    ) -> None:
        self.name = name
        self.schema = schema
        self.nodes = nodes
        self.checkpointer = checkpointer
        self._interrupt_before = frozenset(interrupt_before)
        self._interrupt_after = frozenset(interrupt_after)
        successors: dict[str, list[str]] = {}
        for start, end in edges:
            if end != END:
                successors.setdefault(start, []).append(end)
        self._edges: dict[str, tuple[str, ...]] = {k: tuple(v) for k, v in successors.items()}
        self._joins: list[tuple[frozenset[str], str]] = [
            (frozenset(starts), end) for starts, end in joins
        ]
        joins_by_source: dict[str, list[int]] = {}
        for i, (starts, _) in enumerate(self._joins):
            for s in starts:
                joins_by_source.setdefault(s, []).append(i)
        self._joins_by_source = {k: tuple(v) for k, v in joins_by_source.items()}
        by_source: dict[str, list[Branch]] = {}
        for b in branches:
            by_source.setdefault(b.source, []).append(b)
        self._branches = {k: tuple(v) for k, v in by_source.items()}
        self._calls: dict[str, Callable[[Task], Any]] = {
            name: (
                self._call_retrying
                if spec.retry is not None
                else _plain_call(spec) or self._call_node
                if spec.timeout is None
                else self._call_timed
            )
            for name, spec in nodes.items()
        }
        # The tasks due after a node that only has plain edges (no join, no router): the
        # same every time, so worked out once (as route() would) and shared.
        self._next_of: dict[str, tuple[tuple[str, tuple[str, ...], tuple[str, str]], ...]] = {}
        for node in (START, *nodes):
            if node in self._joins_by_source or node in self._branches:
                continue
            pulls: dict[str, list[str]] = {}
            for succ in self._edges.get(node, ()):
                pulls.setdefault(succ, []).append(node)
            self._next_of[node] = tuple(
                (n, tuple(src), ("pull", n)) for n, src in sorted(pulls.items())
            )
        self._reducers = {k: f.reducer for k, f in self.schema.fields.items()}
        self._fields = self.schema.fields

    def no_joins(self) -> list[set[str]]:
        """Join progress before any node ran: one empty set per join."""
        return [set() for _ in self._joins]

    async def execute(self, run: Run, input: Any) -> dict[str, Any]:
        """Execute ``run`` with hooks and graph-level events around the supersteps.

        Whatever escapes it is an ``Exception`` or a real cancellation (see
        :meth:`_failure`): a hook or a sink raising ``SystemExit`` fails the run too."""
        try:
            return await self._execute(run, input)
        except BaseException as exc:
            failure = self._failure(exc, None)
            if failure is exc:
                raise
            raise failure from exc

    async def _execute(self, run: Run, input: Any) -> dict[str, Any]:
        pm = run.plugin_manager
        hooks = pm.hook
        specs = run.config.get("sinks") if run.parent is None else None
        sinks = await open_sinks(specs, pm) if specs is not None else []
        timeout = run.config.get("timeout") if run.parent is None else None
        deadline = math.inf if timeout is None else anyio.current_time() + timeout
        try:
            start = await self._restore(run, input)  # bad input fails here, before any event
        except BaseException as exc:
            if sinks:
                with anyio.CancelScope(shield=True):
                    await close_sinks(sinks)
            failure = self._failure(exc, None)
            if failure is exc:
                raise
            raise failure from exc
        error: BaseException | None = None
        bus = run.bus
        emit = graph_emitter(run)
        try:
            if run.parent is None:  # a subgraph's run shares its root run's subscribers
                for subscriptions in hooks.headwater_event_subscribers(run=run):
                    for subscription in subscriptions or ():
                        bus.subscribe(subscription)
                for sink in sinks:
                    bus.subscribe(sink.subscription())
            for result in hooks.headwater_run_start(run=run):
                if inspect.isawaitable(result):
                    await result
            if bus.streaming:
                emit.emit(ON_CHAIN_START, {"input": input})
            if start.persist is not None:
                async with start.persist.background():
                    values = await self._timed_loop(run, start, pm, emit, deadline)
            else:
                values = await self._timed_loop(run, start, pm, emit, deadline)
            if bus.streaming:
                emit.emit(ON_CHAIN_END, {"output": dict(values)})
            return values
        except BaseException as exc:  # cancelled too: every start still gets its error event
            error = self._failure(exc, None)
            if bus.streaming:
                emit.emit(ON_CHAIN_ERROR, {"error": error})
            if error is exc:
                raise
            raise error from exc
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

    def _check_resumable(self, thread_id: str, checkpoint: Checkpoint) -> None:
        """The thread's pending tasks and join progress fit this graph (it may have changed
        since the checkpoint was written: a new deploy renamed or removed a node)."""
        missing = sorted({t.node for t in checkpoint.next} - self.nodes.keys())
        if missing:
            raise CheckpointError(
                f"Thread {thread_id!r} cannot be resumed: its checkpoint {checkpoint.id!r} "
                f"has node(s) {missing} due to run next, and graph {self.name!r} has no such "
                f"node (it changed since; its nodes: {sorted(self.nodes)}). Add the node back, "
                "write the thread's next step with update_state(config, values, as_node=...), "
                "or start the thread again with new input."
            )
        if checkpoint.joins and len(checkpoint.joins) != len(self._joins):
            raise CheckpointError(
                f"Thread {thread_id!r} cannot be resumed: its checkpoint {checkpoint.id!r} "
                f"tracks {len(checkpoint.joins)} join edge(s), and graph {self.name!r} has "
                f"{len(self._joins)} (it changed since). Start the thread again with new input."
            )

    def check_storable(self, value: Any, what: str) -> Any:
        """``value`` if a checkpoint can hold it (not nested past ``serde.MAX_DEPTH``)."""
        try:
            serde.check_depth(value)
        except SerdeError as exc:
            raise InvalidInputError(
                f"{what} of graph {self.name!r} cannot be checkpointed: {exc}"
            ) from None
        return value

    async def _timed_loop(
        self, run: Run, start: Start, pm: PluginManager, emit: Emitter, deadline: float
    ) -> dict[str, Any]:
        """The loop, cancelled at ``deadline`` (``config["timeout"]``) with a
        :class:`RunTimeoutError`; finished steps stay checkpointed."""
        if deadline == math.inf:
            return await self._loop(run, start, pm, emit)
        with anyio.CancelScope(deadline=deadline):
            return await self._loop(run, start, pm, emit)
        timeout = run.config["timeout"]
        resume = (
            " The thread keeps the state of its last finished step: continue it with "
            "invoke(None, config)."
            if start.persist is not None
            else ""
        )
        raise RunTimeoutError(
            f"Run of graph {self.name!r} took longer than its timeout of {timeout:g}s "
            f"(config['timeout']) and was cancelled.{resume} Raise the timeout if the work "
            "needs longer.",
            timeout=timeout,
        )

    def _failure(
        self, exc: BaseException, task: Task | None, where: str | None = None
    ) -> BaseException:
        """What a run fails with when ``exc`` escapes ``task`` (or a router ``where``, or
        the run itself): an ``Exception`` or a real cancellation as it is; any other
        ``BaseException`` (``SystemExit``, ``KeyboardInterrupt``, ``GeneratorExit``, a
        ``CancelledError`` raised with no cancellation pending, a custom one) as a
        :class:`NodeError`, so it fails this run and never the event loop or the process."""
        if isinstance(exc, Exception):
            return exc
        cancelled = isinstance(exc, anyio.get_cancelled_exc_class())
        if cancelled and _concurrency.cancel_pending():
            return exc
        name = type(exc).__name__
        shown = f"{name}({', '.join(repr(a) for a in exc.args)})"
        node = None if task is None else task.node
        if task is not None:
            where = f"Node {task.node!r} (step {task.step}) of graph {self.name!r}"
        elif where is None:
            where = f"Graph {self.name!r}, outside its nodes (in a reducer or a hook),"
        if cancelled or name in ("CancelledError", "Cancelled"):  # also asyncio's on trio
            return NodeCancelledError(
                f"{where} raised {shown} while nothing was cancelling the run: a node's "
                f"own {name} fails its run like any error (only a real cancellation of the "
                "run cancels it).",
                node=node,
            )
        hint = " (sys.exit() or an argparse error?)" if isinstance(exc, SystemExit) else ""
        return NodeError(
            f"{where} raised {shown}{hint}: a node's {name} fails its run, not the process.",
            node=node,
        )

    async def _restore(self, run: Run, input: Any) -> Start:
        """Where a run starts: fresh input, new input on a thread, or a resume."""
        persist = Persist.open(self.checkpointer, run)
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
            return Start(values=values, update=update, step=0)
        if not resuming:
            update = self.check_storable(self.schema.coerce_input(input, self.name), "Input")
        elif isinstance(input, Command):
            self.check_storable(input.resume, "Command(resume=...)")
        latest = await persist.load()
        if resuming:
            if latest is None:
                raise CheckpointError(
                    f"Thread {persist.thread_id!r} has no checkpoint to resume from (input "
                    f"{input!r:.40}). Start it with an input state first."
                )
            checkpoint = latest.checkpoint
            self._check_resumable(persist.thread_id, checkpoint)
            done = {w.task_id: w for w in latest.writes}
            answer = input.resume if isinstance(input, Command) else None
            if isinstance(input, Command) and not any(w.interrupt for w in done.values()):
                raise InvalidInputError(
                    f"Command(resume=...) was given but thread {persist.thread_id!r} is not "
                    "paused by interrupt(); pass None to continue it, or new input."
                )
            return Start(
                values=dict(checkpoint.values),
                update=None,
                step=checkpoint.step,
                pending=[
                    Pending(t.node, t.triggers, t.path, t.arg if t.has_arg else MISSING, t.id)
                    for t in checkpoint.next
                ],
                joins=[set(j) for j in checkpoint.joins] or None,
                done=done,
                answer=answer,
                checkpoint_id=checkpoint.id,
                persist=persist,
            )
        if latest is None:
            return Start(values=self.schema.defaults(), update=update, step=0, persist=persist)
        checkpoint = latest.checkpoint
        return Start(
            values=dict(checkpoint.values),
            update=update,
            step=checkpoint.step + 1,
            checkpoint_id=checkpoint.id,
            persist=persist,
        )

    async def _loop(
        self, run: Run, start: Start, pm: PluginManager, emit: Emitter
    ) -> dict[str, Any]:
        limit = run.config.get("recursion_limit", DEFAULT_RECURSION_LIMIT)
        values = start.values
        persist = start.persist
        step = start.step
        wrap = bool(pm.hook.headwater_wrap_node.get_hookimpls())
        step_end_hook = (
            pm.hook.headwater_step_end if pm.hook.headwater_step_end.get_hookimpls() else None
        )
        bus = run.bus
        step_subs = bus.subscriptions(STEP_END)
        join_seen: list[set[str]] = start.joins or self.no_joins()
        if start.update is not None:  # new input: step `step` applies it
            self.apply(values, [(START, start.update)], step)
            if step_subs:
                wrote = {START: (start.update,)} if start.update else {}
                emit.emit(STEP_END, {"values": dict(values), "writes": wrote, "step": step})
            pending = await self.route([START], {}, values, join_seen, run)
            if persist is not None:
                await persist.save(
                    values, pending, join_seen, step, "input", [(START, start.update)]
                )
        else:  # a resume: the run starts from the thread's saved state (writes: None)
            pending = start.pending
            if step_subs:
                emit.emit(STEP_END, {"values": dict(values), "writes": None, "step": step})
        resumed = start.update is None
        done = start.done
        waited = True
        # Steps that may give the event loop a turn outside their tasks: a checkpoint
        # written to a database, step_end hooks, a bounded stream's back-pressure, routers.
        slow_steps = (
            (persist is not None and not persist.immediate)
            or step_end_hook is not None
            or bool(step_subs)
            or bool(self._branches)
        )
        timed = run.config.get("timeout") is not None  # the run's, or its parent run's
        steps_run = 0
        while pending:
            if not resumed and persist is not None and self._interrupt_before:
                hits = [p for p in pending if p.node in self._interrupt_before]
                if hits:
                    hit = [Interrupt(node=p.node, id=p.id) for p in hits]
                    return self._pause(emit, values, hit)
            resumed = False
            steps_run += 1
            step += 1
            if steps_run > limit:
                higher = min(max(limit * 4, 100), MAX_RECURSION_LIMIT)
                raise GraphRecursionError(
                    f"Graph {self.name!r} reached its recursion limit of {limit} supersteps with "
                    f"node(s) {sorted({p.node for p in pending})} still to run. If it loops on "
                    "purpose, raise the limit: "
                    f"config={{'recursion_limit': {higher}}}; "
                    "otherwise make a conditional edge route to END."
                )
            # A cancelled run (its consumer left) starts no new step, even when the nodes
            # of the last one finished without reaching a checkpoint (e.g. in a thread).
            # Only code that runs while the loop waits can cancel it: when the last step
            # never gave the event loop a turn, nothing could have.
            if waited:
                await anyio.lowlevel.checkpoint_if_cancelled()
            if len(pending) == 1 and not done:  # one task, nothing saved from before
                task = self._make_task(pending[0], step, values, run, done, None, timed)
                tasks = [task]
                outcome, waited = await _concurrency.run_one_noting(
                    functools.partial(self._run_task, task, wrap, pm)
                )
                if persist is not None and (outcome.interrupt is not None or task.resume):
                    await persist.save_write(task, outcome)
                    waited = True
                outcomes = [outcome]
            else:
                tasks = [
                    self._make_task(p, step, values, run, done, start.answer, timed)
                    for p in pending
                ]
                outcomes = await self._run_step(tasks, wrap, pm, done, persist)
                waited = True
            if slow_steps:
                waited = True
            paused = [o.interrupt for o in outcomes if o.interrupt is not None]
            if paused:
                return self._pause(emit, values, paused, step=step)
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
            self.apply(values, writes, step)
            if step_subs:
                per_node: dict[str, tuple[Any, ...]] = {}
                for node, upd in writes:
                    per_node[node] = (*per_node.get(node, ()), upd)
                data = {"values": dict(values), "writes": per_node, "step": step}
                emit.emit(STEP_END, data)
                waiting = bus.pressure()
                if waiting is not None:
                    await waiting
            pending = await self.route(ran, goto, values, join_seen, run)
            if persist is not None:
                await persist.save(values, pending, join_seen, step, "loop", writes)
            if step_end_hook is not None:
                for result in step_end_hook(run=run, step=step):
                    if inspect.isawaitable(result):
                        await result
            if pending and persist is not None and self._interrupt_after:
                stopped = [n for n in ran if n in self._interrupt_after]
                if stopped:
                    return self._pause(emit, values, [Interrupt(node=n) for n in stopped])
        return values

    def _pause(
        self,
        emit: Emitter,
        values: dict[str, Any],
        interrupts: list[Interrupt],
        *,
        step: int | None = None,
    ) -> dict[str, Any]:
        """End the run paused: report the interrupts; the result carries them too.

        ``step`` is given for a pause by ``interrupt()`` in that step: the ``values`` mode
        then ends with the state and the interrupts, as LangGraph's does.
        """
        paused = {**values, INTERRUPT: tuple(interrupts)}
        if emit.bus.streaming:
            for item in interrupts:
                data = {"value": item.value, "id": item.id, "node": item.node}
                emit.emit(ON_INTERRUPT, data, item.node)
            data = _task_end(INTERRUPT, update=tuple(interrupts))
            emit.emit(TASK_END, data, INTERRUPT)
            if step is not None:
                emit.emit(STEP_END, {"values": paused, "writes": None, "step": step})
            if emit.bus.ns == ():  # only the root graph streams {node: update} as itself
                emit.emit(ON_CHAIN_STREAM, {"chunk": {INTERRUPT: tuple(interrupts)}})
        return paused

    def _make_task(
        self,
        p: Pending,
        step: int,
        values: dict[str, Any],
        run: Run,
        done: Mapping[str, PendingWrite],
        answer: Any,
        timed: bool,
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
        if timed or spec.timeout is not None:
            task.timed = True
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
        pm: PluginManager,
        done: Mapping[str, PendingWrite],
        persist: Persist | None,
    ) -> list[Outcome]:
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
        outcomes: list[Outcome | None] = [None] * len(tasks)
        todo = []
        for i, task in enumerate(tasks):
            previous = done.get(task.checkpoint_task_id) if task.checkpoint_task_id else None
            if previous is not None and previous.interrupt is None:
                # Finished before the step was cut short: reuse its saved result.
                outcomes[i] = Outcome(previous.update, previous.goto)
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
        self, persist: Persist, task: Task, wrap: bool, pm: PluginManager, alone: bool = False
    ) -> Outcome:
        outcome = await self._run_task(task, wrap, pm)
        if not alone or outcome.interrupt is not None or task.resume:
            # A step's only task that completed needs no write of its own: the step's
            # checkpoint, written right after, carries its result.
            await persist.save_write(task, outcome)
        return outcome

    async def _run_task(self, task: Task, wrap: bool, pm: PluginManager) -> Outcome:
        current_task.set(task)
        run = task.run
        streaming = run.bus.streaming
        if streaming:
            emit = task.emitter
            wanted = run.bus.wanted  # the data of an event nobody wants is not even built
            if TASK_START in wanted:
                emit.emit(TASK_START, {"input": task.input, "triggers": task.triggers})
            if ON_CHAIN_START in wanted:
                emit.emit(ON_CHAIN_START, {"input": task.input})
        try:
            call = self._calls[task.node]
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
                emit.emit(TASK_END, _task_end(task.node, interrupt=paused.interrupt))
                emit.emit(ON_CHAIN_END, {"output": None, "interrupt": paused.interrupt})
            return Outcome(None, (), paused.interrupt)
        except Exception as exc:
            if streaming:
                emit.emit(ON_CHAIN_ERROR, {"error": exc})
                emit.emit(TASK_END, _task_end(task.node, error=exc))
            exc.add_note(
                f"While running node {task.node!r} (step {task.step}) of graph {self.name!r}."
            )
            raise
        except BaseException as exc:
            failure = self._failure(exc, task)
            if failure is exc:  # cancelled (a sibling failed, the consumer left, a timeout)
                if streaming:
                    emit.emit(ON_CHAIN_ERROR, {"error": exc})
                raise
            if streaming:  # the node's SystemExit, its own CancelledError ...: it failed
                emit.emit(ON_CHAIN_ERROR, {"error": failure})
                emit.emit(TASK_END, _task_end(task.node, error=failure))
            raise failure from exc
        if streaming:
            # As LangGraph: the node's output, then (on the root graph) {node: update}.
            if ON_CHAIN_STREAM in wanted:
                emit.emit(ON_CHAIN_STREAM, {"chunk": out})
            if TASK_END in wanted:
                emit.emit(TASK_END, _task_end(task.node, update=outcome.update))
            if ON_CHAIN_END in wanted:
                emit.emit(ON_CHAIN_END, {"output": out})
            if run.parent is None and ON_CHAIN_STREAM in wanted:
                chunk = {task.node: outcome.update or None}
                graph_emitter(run).emit(ON_CHAIN_STREAM, {"chunk": chunk})
            waiting = run.bus.pressure()
            if waiting is not None:
                await waiting
        return outcome

    async def _call_retrying(self, task: Task) -> Any:
        """Call the node under its retry policy: again after each retryable failure."""
        spec = self.nodes[task.node]
        policy = spec.retry
        assert policy is not None
        call = self._call_node if spec.timeout is None else self._call_timed
        attempt = 1
        while True:
            try:
                return await call(task)
            except Exception as exc:  # never a BaseException: SystemExit is not retried
                if attempt >= policy.max_attempts or not policy.should_retry(exc):
                    if attempt > 1:
                        exc.add_note(f"Node {task.node!r} failed {attempt} attempts in all.")
                    raise
            await anyio.sleep(policy.delay(attempt))
            attempt += 1

    async def _call_timed(self, task: Task) -> Any:
        """One attempt of a node with ``add_node(..., timeout=...)``: cancelled at its
        deadline (a sync node's thread is abandoned), then a :class:`RunTimeoutError`."""
        timeout = self.nodes[task.node].timeout
        assert timeout is not None
        with anyio.CancelScope(deadline=anyio.current_time() + timeout):
            return await self._call_node(task)
        raise RunTimeoutError(
            f"Node {task.node!r} (step {task.step}) of graph {self.name!r} took longer than "
            f"its timeout of {timeout:g}s (add_node(..., timeout=...)) and was cancelled. "
            "Raise the timeout if the work needs longer, or give the node a RetryPolicy to "
            "try again.",
            timeout=timeout,
            node=task.node,
        )

    async def _call_node(self, task: Task) -> Any:
        spec = self.nodes[task.node]
        if spec.subgraph is not None:
            return await spec.subgraph.run_as_node(task, self.schema)
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
        bus = task.run.bus
        if calling.is_async:
            return await bus.paced(spec.fn(*args, **kwargs))  # held back at its own awaits
        fn = functools.partial(spec.fn, **kwargs) if kwargs else spec.fn
        try:
            if task.timed:  # a timeout may abandon it
                return await _concurrency.abandonable(
                    bus, _sync_node, self.schema, task.node, fn, *args
                )
            if not bus.streaming:
                return await anyio.to_thread.run_sync(_sync_node, self.schema, task.node, fn, *args)
            bus.threads_starting()
            try:
                out = await anyio.to_thread.run_sync(_sync_node, self.schema, task.node, fn, *args)
            except BaseException:
                bus.threads_done(raise_errors=False)  # the node's own error is what counts
                raise
            bus.threads_done()
            return out
        except _concurrency.Carried as carried:  # the thread's SystemExit, GeneratorExit …
            raise carried.exc from None

    def _outcome(self, node: str, out: Any) -> Outcome:
        if out is None:
            return Outcome(None, ())
        if type(out) is dict and out.keys() <= self.schema.keys:  # the common case
            return Outcome(out, ())
        if type(out) is dict or isinstance(out, Mapping):
            return Outcome(self.schema.check_update(node, out), ())
        if isinstance(out, Command):
            update = self.schema.check_update(node, out.update) if out.update is not None else None
            return Outcome(update, out.goto)
        self.schema.check_update(node, out)  # raises with the right message
        raise AssertionError("unreachable")

    def apply(
        self, values: dict[str, Any], writes: list[tuple[str, Mapping[str, Any]]], step: int
    ) -> None:
        """Apply one step's ``(node, update)`` writes to ``values`` through the reducers."""
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

    async def route(
        self,
        ran: list[str],
        goto: dict[str, tuple[str | Send, ...]],
        values: dict[str, Any],
        join_seen: list[set[str]],
        run: Run,
    ) -> list[Pending]:
        """The tasks due after ``ran``: edges, joins, ``Command`` gotos and routers."""
        if len(ran) == 1 and not goto:
            plain = self._next_of.get(ran[0])
            if plain is not None:
                return [Pending(n, triggers, path, MISSING) for n, triggers, path in plain]
        pulls: dict[str, list[str]] = {}
        pushes: list[Pending] = []
        sent: dict[str, tuple[str]] = {}

        def add(dest: str | Send, source: str, how: str) -> None:
            if type(dest) is Send or isinstance(dest, Send):
                if dest.node not in self.nodes:
                    raise InvalidRouteError(
                        f"{how} sent to unknown node {dest.node!r}. Known nodes: "
                        f"{sorted(self.nodes)}."
                    )
                triggers = sent.get(source)
                if triggers is None:
                    triggers = sent[source] = (f"send:{source}",)
                pushes.append(Pending(dest.node, triggers, ("push", len(pushes)), dest.arg))
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
            gotos = goto.get(node, ())
            if gotos:
                how = f"Command(goto=...) of node {node!r}"
                for dest in gotos:
                    add(dest, node, how)
            for branch in self._branches.get(node, ()):
                dests = await self._call_router(branch, values, run)
                if dests:
                    how = f"Router {branch.name!r} of {node!r}"
                    for dest in dests:
                        add(dest, node, how)
        out = [Pending(n, tuple(src), ("pull", n), MISSING) for n, src in sorted(pulls.items())]
        out.extend(pushes)
        return out

    async def _call_router(
        self, branch: Branch, values: dict[str, Any], run: Run
    ) -> list[str | Send]:
        state = self.schema.make_input(values)
        try:
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
        except BaseException as exc:
            where = f"Router {branch.name!r} of node {branch.source!r} in graph {self.name!r}"
            failure = self._failure(exc, None, where)
            if failure is exc:
                raise
            raise failure from exc
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


def _plain_call(spec: NodeSpec) -> Callable[[Task], Any] | None:
    """What :meth:`Scheduler._call_node` does for an ``async def`` node that takes only
    its input (no config, no writer, not a subgraph), without its frame; else ``None``."""
    calling = spec.calling
    if spec.subgraph is not None or not calling.is_async or calling.config is not None:
        return None
    if calling.writer:
        return None
    fn = spec.fn

    def call(task: Task) -> Any:
        return fn(task.input)

    return call


def _sync_node(schema: Schema, node: str, fn: Callable[..., Any], *args: Any) -> Any:
    """Call a sync node in its worker thread; a coroutine it returns is reported here
    (trio would refuse it with a confusing TypeError, asyncio would pass it on)."""
    out = _concurrency.carry(fn, *args)
    if inspect.iscoroutine(out):
        schema.check_update(node, out)  # raises InvalidUpdateError: make the node async
    return out


async def _wrapped(call: Callable[[Task], Any], task: Task, pm: PluginManager) -> Any:
    middlewares = [m for m in pm.hook.headwater_wrap_node(task=task) if m is not None]
    if not middlewares:
        return await call(task)
    chain = call
    for middleware in middlewares:  # pluggy returns last-registered first: innermost first
        chain = functools.partial(middleware, chain)
    return await chain(task)


def check_config(config: Mapping[str, Any] | None) -> Mapping[str, Any]:
    if config is None:
        config = _EMPTY
    if not isinstance(config, Mapping):
        raise InvalidInputError(
            f"config must be a mapping like {{'configurable': {{'thread_id': '1'}}}}; got "
            f"{type(config).__name__}: {config!r:.80}."
        )
    limit = config.get("recursion_limit", DEFAULT_RECURSION_LIMIT)
    if type(limit) is not int or not 1 <= limit <= MAX_RECURSION_LIMIT:
        raise InvalidInputError(
            f"config['recursion_limit'] must be an int from 1 to {MAX_RECURSION_LIMIT:_} "
            f"(supersteps per run, default {DEFAULT_RECURSION_LIMIT}); got {limit!r:.40}. "
            "To let a long-looping run go on, bound it by time with config['timeout']."
        )
    timeout = config.get("timeout")
    if timeout is not None and not is_seconds(timeout):
        raise InvalidInputError(
            f"config['timeout'] must be a positive, finite number of seconds (the whole run), "
            f"or None; got {type(timeout).__name__}: {timeout!r:.40}."
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
