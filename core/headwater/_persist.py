"""Persistence of a run: the checkpoint writer and the records it saves.

A checkpointed root run writes a :class:`~headwater.checkpoint.Checkpoint` after every
superstep (the state, the tasks due next, join progress) and, while a step runs, each
finished task's :class:`~headwater.checkpoint.PendingWrite`. Each is encoded once, when
saved (a checkpoint re-encodes only the state keys written since the run's previous one),
and handed to the backend as a :class:`~headwater.checkpoint.Record`. With
``durability="sync"`` every write finishes before the run goes on; with ``"async"`` an
ordered background writer takes them in batches (bounded: the steps wait when it falls far
behind) and is flushed when the run ends. The scheduler drives this module; it never
imports the scheduler.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from typing import Any

import anyio
import anyio.lowlevel

from headwater._bus import Emitter
from headwater._state import MISSING
from headwater._types import Send
from headwater.checkpoint import (
    Checkpoint,
    Checkpointer,
    CheckpointTuple,
    Interrupt,
    MemoryCheckpointer,
    PendingTask,
    PendingWrite,
    Record,
    StateSnapshot,
    _CheckpointEncoder,
    _created_at,
    _Deferrer,
    _stamp_ns,
    _Unusual,
)
from headwater.errors import InvalidInputError, SerdeError
from headwater.events import CHECKPOINT
from headwater.runtime import Run, Task

__all__ = ["Outcome", "Pending", "Persist", "graph_emitter", "snapshot", "text_id"]

_ASYNC_BACKLOG = 256
"""Checkpoint writes an ``async`` run may have queued before its steps wait."""


class Pending:
    """A task due in the next step (before it has a :class:`~headwater.runtime.Task`),
    as a checkpoint records it."""

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


class Outcome:
    """What one task produced: its update, its ``Command`` gotos, or its interrupt."""

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


class Persist:
    """Checkpointing for one root run on one thread.

    Example::

        persist = Persist.open(checkpointer, run)   # None: nothing to persist
        latest = await persist.load()
        await persist.save(values, pending, joins, step, "loop", writes)
    """

    def __init__(self, saver: Checkpointer, thread_id: str, run: Run) -> None:
        self.saver = saver
        self.thread_id = thread_id
        self.ns = ""
        self.run = run
        self.emit = graph_emitter(run)
        self.checkpoint_id: str | None = None
        self.durable = run.config.get("durability", "sync") == "sync"
        self._encoder = _CheckpointEncoder()
        # The built-in memory checkpointer (not a subclass that changes how it stores)
        # takes a run's checkpoints unencoded where nothing can change them.
        self._memory = (
            saver
            if isinstance(saver, MemoryCheckpointer)
            and type(saver).aput_records is MemoryCheckpointer.aput_records
            and type(saver)._put_deferred is MemoryCheckpointer._put_deferred
            else None
        )
        self._deferrer = _Deferrer()
        self.immediate = self._memory is not None
        """Checkpoints are stored at once: :meth:`save` never gives the event loop a turn."""
        if self.immediate:
            self.durable = True  # nothing to wait for: "async" writes at once as well
        self._queue: list[Record] = []
        self._wake: anyio.Event | None = None
        self._room: anyio.Event | None = None
        self._writing = False
        self._drained: anyio.Event | None = None
        self._error: BaseException | None = None

    async def _store(self, records: list[Record], *, now: bool = False) -> None:
        """Write now (``durability="sync"``, or ``now``) or hand to the background writer."""
        if self.durable or (now and not self._queue):
            await self.saver.aput_records(records)
            return
        if self._error is not None:
            raise self._error
        self._queue.extend(records)
        if self._wake is not None:
            self._wake.set()  # the writer takes what queued up when the steps next yield
        while len(self._queue) > _ASYNC_BACKLOG and self._error is None:
            self._room = anyio.Event()  # bounded memory: wait for the writer to catch up
            await self._room.wait()

    async def _writer(self) -> None:
        while True:
            if not self._queue:
                if self._drained is not None:
                    self._drained.set()
                self._wake = anyio.Event()
                await self._wake.wait()
                continue
            batch, self._queue = self._queue, []
            if self._room is not None:  # the steps may go on while this batch is written:
                self._room.set()  # at most two backlogs are held, the queue and this batch
            self._writing = True
            try:
                await self.saver.aput_records(batch)
            except Exception as exc:  # surfaced by the next save, or when the run ends
                self._error = exc
                if self._drained is not None:
                    self._drained.set()
                return
            finally:
                self._writing = False

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
                with anyio.CancelScope(shield=True):  # flush: queued and in-flight writes
                    while (self._queue or self._writing) and self._error is None:
                        self._drained = anyio.Event()
                        if self._wake is not None:
                            self._wake.set()
                        await self._drained.wait()
                tg.cancel_scope.cancel()
        if failed is not None:
            raise failed
        if self._error is not None:
            raise self._error

    @classmethod
    def open(cls, saver: Checkpointer | None, run: Run) -> Persist | None:
        """The writer of a root run on a graph with a checkpointer (``None`` otherwise)."""
        if saver is None or run.ns:
            return None  # subgraphs run inside their parent's checkpointed step
        thread_id = (run.config.get("configurable") or {}).get("thread_id")
        if thread_id is None:
            raise InvalidInputError(
                f"Graph {run.graph_name!r} has a checkpointer, so each run needs a thread id: "
                "config={'configurable': {'thread_id': 'my-thread'}}."
            )
        return cls(saver, text_id(thread_id, "thread_id"), run)

    async def load(self) -> CheckpointTuple | None:
        found = await self.saver.aget(self.thread_id, self.ns)
        if found is not None:
            self.checkpoint_id = found.checkpoint.id
        return found

    async def save(
        self,
        values: Mapping[str, Any],
        pending: list[Pending],
        joins: list[set[str]],
        step: int,
        source: str,
        writes: Sequence[tuple[str, Mapping[str, Any]]],
    ) -> None:
        """Checkpoint the state after ``step``: ``writes`` are the step's updates, in order
        (the input's or ``update_state``'s for those sources)."""
        checkpoint_id, now_ns = _stamp_ns()
        for i, p in enumerate(pending):
            p.id = f"{checkpoint_id}/{i}"
        parent_id = self.checkpoint_id
        if len(writes) == 1:
            written: Collection[str] = writes[0][1]
        else:
            written = {key for _, update in writes for key in update}
        checkpoint: Checkpoint | None = None
        memory = self._memory
        if memory is not None:
            try:  # kept unencoded where nothing can change it: see _Deferrer
                deferred = self._deferrer.defer(
                    self.thread_id,
                    self.ns,
                    checkpoint_id,
                    parent_id,
                    step,
                    now_ns,
                    values,
                    [
                        (p.id, p.node, p.triggers, p.path, p.arg is not MISSING, p.arg)
                        for p in pending
                    ],
                    tuple(tuple(sorted(j)) for j in joins) if joins else (),
                    source,
                    dict(writes),
                    self.run.run_id,
                    written,
                )
            except (_Unusual, SerdeError, TypeError, RecursionError):
                checkpoint = self._checkpoint(
                    checkpoint_id, now_ns, parent_id, (values, pending, joins, step, source, writes)
                )
                memory._put_record(Record.of(checkpoint))  # canonical bytes, or error
            else:
                memory._put_deferred(deferred)
        else:
            checkpoint = self._checkpoint(
                checkpoint_id, now_ns, parent_id, (values, pending, joins, step, source, writes)
            )
            # Encoded now, on the loop: what is stored is the state as of this step, even
            # if a later step mutates it, and a value that cannot be stored fails this step.
            record = Record(
                thread_id=self.thread_id,
                ns=self.ns,
                checkpoint_id=checkpoint_id,
                value=checkpoint,
                data=self._encoder.encode(checkpoint, written),
            )
            # A run's input checkpoint is always written before its first step, even with
            # durability="async": a crash can then cost repeated steps, never the run.
            await self._store([record], now=source == "input")
        if checkpoint is None and self.run.bus.subscriptions(CHECKPOINT):
            checkpoint = self._checkpoint(
                checkpoint_id, now_ns, parent_id, (values, pending, joins, step, source, writes)
            )
        self.checkpoint_id = checkpoint_id
        if checkpoint is not None and self.run.bus.subscriptions(CHECKPOINT):
            self.emit.emit(CHECKPOINT, snapshot(checkpoint, ()), "checkpoint")

    def _checkpoint(
        self, checkpoint_id: str, now_ns: int, parent_id: str | None, step_args: tuple[Any, ...]
    ) -> Checkpoint:
        """The checkpoint :meth:`save` was given, as an object (encoded in full, emitted)."""
        values, pending, joins, step, source, writes = step_args
        return Checkpoint(
            id=checkpoint_id,
            thread_id=self.thread_id,
            ns=self.ns,
            parent_id=parent_id,
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
            created_at=_created_at(now_ns),
        )

    async def save_write(self, task: Task, outcome: Outcome) -> None:
        assert self.checkpoint_id is not None
        write = PendingWrite(
            task_id=task.checkpoint_task_id,
            node=task.node,
            update=outcome.update,
            goto=outcome.goto,
            interrupt=outcome.interrupt,
            resume=task.resume,
        )
        record = Record(
            thread_id=self.thread_id, ns=self.ns, checkpoint_id=self.checkpoint_id, value=write
        )
        await self._store([record])


def graph_emitter(run: Run) -> Emitter:
    """The emitter of a (sub)graph run's own events (``on_chain_start`` of the graph,
    ``step_end``, ``checkpoint`` …): named after the graph, with the run's own header."""
    return run.bus.emitter((run.graph_name, run.run_id, run.parent_ids, run.tags, run.metadata))


def snapshot(checkpoint: Checkpoint, writes: tuple[PendingWrite, ...]) -> StateSnapshot:
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


def text_id(value: Any, what: str) -> str:
    """``str(value)`` as a thread or checkpoint id: text any database can store (a lone
    surrogate such as ``"\\ud800"`` cannot be encoded in UTF-8, and would fail in the
    driver, not here)."""
    text = str(value)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInputError(
            f"config['configurable'][{what!r}] must be valid Unicode text; {text!r:.80} holds "
            f"{text[exc.start]!r} at position {exc.start}, a lone surrogate no database "
            "stores. Use another id."
        ) from None
    return text
