"""Checkpoints: what a run saves after every superstep, and the backends that keep them.

A :class:`Checkpoint` holds a thread's state after a step plus what runs next (pending
tasks, join progress). While a step runs, each finished task's result is saved as a
:class:`PendingWrite`, so after a crash the step resumes without re-running tasks that
had finished. Backends implement :class:`Checkpointer` (all async) and store records in
headwater's serde JSON — never pickle; a record that does not decode raises
:class:`~headwater.errors.CheckpointError` naming the thread and checkpoint.

Backends are chosen by URL through the ``headwater_checkpointers`` hook:
``memory:`` (built in), ``sqlite:///app.db`` (headwater-sqlite),
``postgresql://…`` (headwater-postgres).

Example::

    app = graph.compile(checkpointer="memory:")
    config = {"configurable": {"thread_id": "t1"}}
    app.invoke({"n": 1}, config)
    app.get_state(config).values
"""

from __future__ import annotations

import abc
import itertools
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from headwater import serde
from headwater._ids import new_id
from headwater._plugins import PluginManager, get_plugin_manager
from headwater.errors import CheckpointError, SerdeError

__all__ = [
    "Checkpoint",
    "CheckpointTuple",
    "Checkpointer",
    "Interrupt",
    "MemoryCheckpointer",
    "PendingTask",
    "PendingWrite",
    "StateSnapshot",
    "WriteBatch",
    "checkpointer_from_url",
    "new_checkpoint_id",
]


@attrs.frozen(kw_only=True)
class PendingTask:
    """A task a checkpoint says runs next: ``node``, what triggered it, and its ``id``.

    ``arg`` is the ``Send`` argument (``has_arg``) or unused for a task reading the state.

    Example::

        PendingTask(id="c1/0", node="agent", triggers=("__start__",), path=("pull", "agent"))
    """

    id: str
    node: str
    triggers: tuple[str, ...] = ()
    path: tuple[str | int, ...] = ()
    has_arg: bool = False
    arg: Any = None


@attrs.frozen(kw_only=True)
class Interrupt:
    """A pause requested by ``interrupt(value)`` or by ``interrupt_before/after``.

    Example::

        Interrupt(value="Approve the plan?", id="c1/0:0", node="review")
    """

    value: Any = None
    id: str = ""
    node: str = ""


@attrs.frozen(kw_only=True)
class PendingWrite:
    """The saved result of one finished (or interrupted) task of an unfinished step.

    Example::

        PendingWrite(task_id="c1/0", node="agent", update={"n": 2})
    """

    task_id: str
    node: str
    update: Mapping[str, Any] | None = None
    goto: tuple[Any, ...] = ()
    interrupt: Interrupt | None = None
    resume: tuple[Any, ...] = ()


@attrs.frozen(kw_only=True)
class Checkpoint:
    """A thread's state after one superstep, and what runs next.

    Example::

        checkpoint.values       # the state
        checkpoint.next         # PendingTask records
        checkpoint.metadata     # {"source": "loop", "step": 3, ...}
    """

    id: str
    thread_id: str
    ns: str = ""
    parent_id: str | None = None
    step: int = 0
    values: Mapping[str, Any] = attrs.field(factory=dict)
    next: tuple[PendingTask, ...] = ()
    joins: tuple[tuple[str, ...], ...] = ()
    metadata: Mapping[str, Any] = attrs.field(factory=dict)
    created_at: str = ""


@attrs.frozen
class CheckpointTuple:
    """A checkpoint with the pending writes saved against it.

    Example::

        found = await saver.aget("thread-1")
        found.checkpoint.values, found.writes
    """

    checkpoint: Checkpoint
    writes: tuple[PendingWrite, ...] = ()


@attrs.frozen(kw_only=True)
class StateSnapshot:
    """What ``get_state`` returns: a thread's state at one checkpoint.

    Example::

        snap = app.get_state({"configurable": {"thread_id": "t1"}})
        snap.values, snap.next, snap.interrupts
    """

    values: Mapping[str, Any]
    next: tuple[str, ...]
    config: Mapping[str, Any]
    metadata: Mapping[str, Any]
    created_at: str
    parent_config: Mapping[str, Any] | None
    tasks: tuple[PendingTask, ...] = ()
    interrupts: tuple[Interrupt, ...] = ()


_ids = itertools.count()
_id_lock = threading.Lock()
_last_ns = 0


def new_checkpoint_id() -> str:
    """A new checkpoint id; ids sort in creation order (time, then a counter).

    Example::

        a, b = new_checkpoint_id(), new_checkpoint_id()
        assert a < b
    """
    global _last_ns
    with _id_lock:
        now = max(time.time_ns(), _last_ns + 1)
        _last_ns = now
    return f"{now:020d}-{new_id()[:8]}"


class Checkpointer(abc.ABC):
    """The interface every checkpoint backend implements (all methods async).

    Run ``headwater.testing.checkpointer_conformance`` against a new backend.

    Example::

        class MyCheckpointer(Checkpointer):
            async def aput(self, checkpoint): ...
            async def aput_writes(self, thread_id, ns, checkpoint_id, writes): ...
            async def aget(self, thread_id, ns="", checkpoint_id=None): ...
            async def alist(self, thread_id, ns="", *, limit=None, before=None): ...
            async def adelete_thread(self, thread_id): ...
    """

    @abc.abstractmethod
    async def aput(self, checkpoint: Checkpoint) -> None:
        """Save a checkpoint (ids are unique; saving one twice is an error)."""

    @abc.abstractmethod
    async def aput_writes(
        self, thread_id: str, ns: str, checkpoint_id: str, writes: Sequence[PendingWrite]
    ) -> None:
        """Save results of tasks of the step after ``checkpoint_id`` (later ones win per task)."""

    @abc.abstractmethod
    async def aget(
        self, thread_id: str, ns: str = "", checkpoint_id: str | None = None
    ) -> CheckpointTuple | None:
        """The latest checkpoint of a thread (or the given one) with its pending writes."""

    @abc.abstractmethod
    async def alist(
        self, thread_id: str, ns: str = "", *, limit: int | None = None, before: str | None = None
    ) -> list[Checkpoint]:
        """A thread's checkpoints, newest first (only those older than ``before``)."""

    @abc.abstractmethod
    async def adelete_thread(self, thread_id: str) -> None:
        """Delete every checkpoint and write of a thread."""

    async def aput_batch(self, items: Sequence[Checkpoint | WriteBatch]) -> None:
        """Save several checkpoints and write batches, in order.

        Used by ``durability="async"`` runs; a backend overrides it to write a batch in
        one transaction (the default saves them one by one).
        """
        for item in items:
            if isinstance(item, Checkpoint):
                await self.aput(item)
            else:
                await self.aput_writes(item.thread_id, item.ns, item.checkpoint_id, item.writes)

    async def aclose(self) -> None:  # noqa: B027 - optional hook with a default
        """Release connections (default: nothing to do)."""


@attrs.frozen
class WriteBatch:
    """Pending writes for one checkpoint, as :meth:`Checkpointer.aput_batch` receives them.

    Example::

        WriteBatch("t1", "", checkpoint_id, (PendingWrite(task_id="c/0", node="a"),))
    """

    thread_id: str
    ns: str
    checkpoint_id: str
    writes: tuple[PendingWrite, ...]


def encode_record(value: Any) -> bytes:
    """Serialise a checkpoint or write for storage, stamped with the format version.

    Raises :class:`~headwater.errors.SerdeError` naming the key and type of a value that
    cannot be stored — before anything is written.
    """
    return serde.dumps({"headwater": serde.FORMAT_VERSION, "record": value})


def decode_record(data: bytes | str, thread_id: str, checkpoint_id: str, expected: type) -> Any:
    """Read back a stored record; anything unexpected is a CheckpointError (fail closed)."""
    where = f"Checkpoint {checkpoint_id!r} of thread {thread_id!r}"
    try:
        envelope = serde.loads(data)
        version = envelope.get("headwater") if isinstance(envelope, dict) else None
        if isinstance(version, int) and version > serde.FORMAT_VERSION:
            raise CheckpointError(
                f"{where} was written in headwater format version {version}, newer than this "
                f"headwater's ({serde.FORMAT_VERSION}); upgrade headwater-core to read it."
            )
        if version != serde.FORMAT_VERSION or "record" not in envelope:
            raise SerdeError("the record has no headwater format version")
        value = envelope["record"]
    except SerdeError as exc:
        raise CheckpointError(
            f"{where} cannot be read: {exc} It was not written by headwater or is corrupted; "
            "nothing was executed. Delete the thread or restore the record from a backup."
        ) from exc
    if not isinstance(value, expected):
        raise CheckpointError(
            f"{where} holds a {type(value).__name__}, not a {expected.__name__}; the record is "
            "corrupted."
        )
    return value


class MemoryCheckpointer(Checkpointer):
    """Checkpoints in this process's memory (``memory:``): tests and short-lived apps.

    Records are stored serialised, exactly as a database would hold them, so nothing
    shares mutable state with a running graph.

    Example::

        app = graph.compile(checkpointer=MemoryCheckpointer())
    """

    def __init__(self) -> None:
        self._checkpoints: dict[tuple[str, str], dict[str, bytes]] = {}
        self._writes: dict[tuple[str, str, str], dict[str, bytes]] = {}

    async def aput(self, checkpoint: Checkpoint) -> None:
        """Save a checkpoint."""
        rows = self._checkpoints.setdefault((checkpoint.thread_id, checkpoint.ns), {})
        if checkpoint.id in rows:
            raise CheckpointError(
                f"Checkpoint {checkpoint.id!r} of thread {checkpoint.thread_id!r} already exists."
            )
        rows[checkpoint.id] = encode_record(checkpoint)

    async def aput_writes(
        self, thread_id: str, ns: str, checkpoint_id: str, writes: Sequence[PendingWrite]
    ) -> None:
        """Save pending writes of the step after ``checkpoint_id``."""
        rows = self._writes.setdefault((thread_id, ns, checkpoint_id), {})
        for write in writes:
            rows[write.task_id] = encode_record(write)

    async def aget(
        self, thread_id: str, ns: str = "", checkpoint_id: str | None = None
    ) -> CheckpointTuple | None:
        """The latest (or given) checkpoint with its writes."""
        rows = self._checkpoints.get((thread_id, ns))
        if not rows:
            return None
        if checkpoint_id is None:
            checkpoint_id = max(rows)
        elif checkpoint_id not in rows:
            return None
        checkpoint = decode_record(rows[checkpoint_id], thread_id, checkpoint_id, Checkpoint)
        writes = tuple(
            decode_record(data, thread_id, checkpoint_id, PendingWrite)
            for _, data in sorted(self._writes.get((thread_id, ns, checkpoint_id), {}).items())
        )
        return CheckpointTuple(checkpoint, writes)

    async def alist(
        self, thread_id: str, ns: str = "", *, limit: int | None = None, before: str | None = None
    ) -> list[Checkpoint]:
        """Checkpoints newest first."""
        rows = self._checkpoints.get((thread_id, ns), {})
        ids = sorted((i for i in rows if before is None or i < before), reverse=True)
        if limit is not None:
            ids = ids[:limit]
        return [decode_record(rows[i], thread_id, i, Checkpoint) for i in ids]

    async def adelete_thread(self, thread_id: str) -> None:
        """Forget a thread."""
        for key in [k for k in self._checkpoints if k[0] == thread_id]:
            del self._checkpoints[key]
        for wkey in [k for k in self._writes if k[0] == thread_id]:
            del self._writes[wkey]


def checkpointer_from_url(url: str, plugin_manager: PluginManager | None = None) -> Checkpointer:
    """Make a checkpointer from a URL through the installed plugins.

    Example::

        checkpointer_from_url("memory:")
        checkpointer_from_url("sqlite:///app.db")     # needs headwater-sqlite
    """
    pm = plugin_manager or get_plugin_manager()
    saver: Checkpointer = pm.from_url(
        "headwater_checkpointers", url, error=CheckpointError, expected=Checkpointer
    )
    return saver
