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
import datetime
import json.encoder
import os
import queue
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from random import getrandbits
from typing import Any, ClassVar, Generic, TypeVar

import anyio
import anyio.lowlevel
import attrs

from headwater import serde
from headwater._plugins import PluginManager, get_plugin_manager
from headwater.errors import CheckpointError, SerdeError

__all__ = [
    "Checkpoint",
    "CheckpointTuple",
    "Checkpointer",
    "DatabaseThread",
    "Interrupt",
    "MemoryCheckpointer",
    "PendingTask",
    "PendingWrite",
    "Record",
    "StateSnapshot",
    "WriteBatch",
    "checkpointer_from_url",
    "new_checkpoint_id",
    "records_of",
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


_id_lock = threading.Lock()
_last_ns = 0
_second: tuple[int, str] = (-1, "")


def _created_at(now_ns: int) -> str:
    """``datetime.isoformat()`` of a ``time_ns()`` reading in UTC, the date part made once
    a second (1.2 µs a checkpoint otherwise)."""
    global _second
    seconds, micros = divmod(now_ns // 1000, 1_000_000)
    if _second[0] != seconds:
        day = datetime.datetime.fromtimestamp(seconds, datetime.UTC).replace(tzinfo=None)
        _second = (seconds, day.isoformat())
    return f"{_second[1]}.{micros:06d}+00:00" if micros else f"{_second[1]}+00:00"


def _stamp_ns() -> tuple[str, int]:
    """A new checkpoint id and the clock reading it was made from (ns since the epoch)."""
    global _last_ns
    with _id_lock:
        now = time.time_ns()
        if now <= _last_ns:
            now = _last_ns + 1
        _last_ns = now
    return f"{now:020d}-{getrandbits(32):08x}", now


def _stamp() -> tuple[str, str]:
    """A new checkpoint id and its creation time, from one clock reading."""
    checkpoint_id, now = _stamp_ns()
    return checkpoint_id, _created_at(now)


def new_checkpoint_id() -> str:
    """A new checkpoint id; ids sort in creation order (time, then a counter).

    Example::

        a, b = new_checkpoint_id(), new_checkpoint_id()
        assert a < b
    """
    return _stamp()[0]


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

    async def aput_records(self, records: Sequence[Record]) -> None:
        """Save checkpoints and pending writes already encoded, in order.

        This is what runs call: ``durability="sync"`` once per checkpoint or write batch,
        ``"async"`` with whatever queued up. ``record.data`` holds exactly what
        :func:`encode_record` returns for ``record.value``, so a backend stores it without
        encoding again, in one transaction if it can. The default hands the values to
        :meth:`aput_batch` (which encodes them again).
        """
        items: list[Checkpoint | WriteBatch] = []
        for record in records:
            value = record.value
            if isinstance(value, Checkpoint):
                items.append(value)
                continue
            last = items[-1] if items else None
            if isinstance(last, WriteBatch) and (last.thread_id, last.ns, last.checkpoint_id) == (
                record.thread_id,
                record.ns,
                record.checkpoint_id,
            ):
                items[-1] = WriteBatch(
                    last.thread_id, last.ns, last.checkpoint_id, (*last.writes, value)
                )
            else:
                items.append(
                    WriteBatch(record.thread_id, record.ns, record.checkpoint_id, (value,))
                )
        await self.aput_batch(items)

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


def _encoded(self: Record) -> bytes:
    return encode_record(self.value)


@attrs.frozen(kw_only=True)
class Record:
    """A checkpoint or one pending write with its stored bytes, as
    :meth:`Checkpointer.aput_records` receives it.

    ``checkpoint_id`` is the checkpoint's own id, or for a write the checkpoint it belongs
    to; ``data`` is :func:`encode_record` of ``value`` (computed when not given).

    Example::

        Record(thread_id="t1", ns="", checkpoint_id=checkpoint.id, value=checkpoint)
    """

    thread_id: str
    ns: str
    checkpoint_id: str
    value: Checkpoint | PendingWrite
    data: bytes = attrs.field(default=attrs.Factory(_encoded, takes_self=True), repr=False)

    @classmethod
    def of(cls, checkpoint: Checkpoint) -> Record:
        """The record of a checkpoint.

        Example::

            Record.of(checkpoint).data == encode_record(checkpoint)
        """
        return cls(
            thread_id=checkpoint.thread_id,
            ns=checkpoint.ns,
            checkpoint_id=checkpoint.id,
            value=checkpoint,
        )

    @classmethod
    def writes(cls, batch: WriteBatch) -> list[Record]:
        """The records of a batch of pending writes.

        Example::

            Record.writes(WriteBatch("t1", "", checkpoint_id, (write,)))
        """
        return [
            cls(thread_id=batch.thread_id, ns=batch.ns, checkpoint_id=batch.checkpoint_id, value=w)
            for w in batch.writes
        ]


def records_of(items: Sequence[Checkpoint | WriteBatch]) -> list[Record]:
    """The records of what :meth:`Checkpointer.aput_batch` receives, in order: a backend
    that implements :meth:`Checkpointer.aput_records` can serve ``aput_batch`` with it.

    Example::

        async def aput_batch(self, items):
            await self.aput_records(records_of(items))
    """
    out: list[Record] = []
    for item in items:
        if isinstance(item, Checkpoint):
            out.append(Record.of(item))
        else:
            out.extend(Record.writes(item))
    return out


def encode_record(value: Any) -> bytes:
    """Serialise a checkpoint or write for storage, stamped with the format version.

    Raises :class:`~headwater.errors.SerdeError` naming the key and type of a value that
    cannot be stored — before anything is written.
    """
    return serde.dumps({"headwater": serde.FORMAT_VERSION, "record": value})


_quote_str: Callable[[str], str] = json.encoder.encode_basestring_ascii
"""A str as JSON with ``ensure_ascii``, as every serde dump writes it."""


class _Unusual(Exception):
    """Something the fast path does not handle; the whole record is encoded instead."""


_HEAD = ("id", "thread_id", "ns", "parent_id", "step")
_TAIL = ("next", "joins", "metadata", "created_at")
_TASK = ("id", "node", "triggers", "path", "has_arg", "arg")
if (
    tuple(f.name for f in attrs.fields(Checkpoint)) != (*_HEAD, "values", *_TAIL)
    or tuple(f.name for f in attrs.fields(PendingTask)) != _TASK
):
    raise ImportError("Checkpoint's or PendingTask's fields changed: update _CheckpointEncoder.")


_SHARED_LIMIT = 4096


def _names(items: tuple[Any, ...]) -> str:
    """A tuple of strs and ints, as serde and JSON write it."""
    parts = []
    for item in items:
        kind = type(item)
        if kind is str:
            parts.append(_quote_str(item))
        elif kind is int:
            parts.append(str(item))
        else:
            raise _Unusual
    return f'{{"__type__":"tuple","items":[{",".join(parts)}]}}'


class _CheckpointEncoder:
    """:func:`encode_record` for the successive checkpoints of one run, re-encoding only
    what changed.

    A state key's JSON is kept from the previous checkpoint when the key was not written
    since (``written``) and still holds the very same object; a pending task's JSON (all
    but its id) is kept per node, triggers and path; the rest is encoded afresh. The bytes
    are exactly ``encode_record``'s (anything unusual takes ``encode_record`` itself). As
    in LangGraph, a checkpoint therefore records each key as last written: a node that
    mutates a state value in place without returning it changes no checkpoint.
    """

    __slots__ = ("_keys",)

    # A task's JSON but its id depends only on its node, triggers and path: the same for
    # every run of a graph, so these are shared (bounded: cleared when they grow large).
    _tasks: ClassVar[dict[tuple[Any, ...], str]] = {}
    _joins: ClassVar[dict[tuple[tuple[str, ...], ...], str]] = {}

    def __init__(self) -> None:
        self._keys: dict[Any, tuple[Any, str]] = {}

    def encode(self, checkpoint: Checkpoint, written: Collection[str]) -> bytes:
        """The bytes of ``checkpoint``; ``written``: the state keys written since the last
        call (all of them, the first time)."""
        text, encode, quote = serde._json_text, serde._encode_in, _quote_str
        # Each part is encoded at the depth it has in the whole record (serde.MAX_DEPTH):
        # {"headwater", "record": Checkpoint{"values": {key: 4, "next": tuple[task: 5] …
        try:  # a str that is not one raises TypeError in quote(): the slow path
            keys = self._keys
            values = []
            for key, value in checkpoint.values.items():
                known = keys.get(key)
                if known is None or known[0] is not value or key in written:
                    if key == serde.TAG:
                        raise _Unusual
                    known = keys[key] = (value, f"{quote(key)}:{text(encode(value, 4))}")
                values.append(known[1])
            tasks = []
            for task in checkpoint.next:
                if type(task) is not PendingTask:
                    raise _Unusual
                if task.has_arg or task.arg is not None:
                    tasks.append(text(encode(task, 5)))
                    continue
                shape = (task.node, task.triggers, task.path)
                rest = self._tasks.get(shape)
                if rest is None:
                    if len(self._tasks) > _SHARED_LIMIT:
                        self._tasks.clear()
                    rest = self._tasks[shape] = (
                        f'"node":{quote(task.node)},"triggers":{_names(task.triggers)},'
                        f'"path":{_names(task.path)},"has_arg":false,"arg":null}}'
                    )
                tasks.append(f'{{"__type__":"PendingTask","id":{quote(task.id)},{rest}')
            joins = self._joins.get(checkpoint.joins)
            if joins is None:
                if len(self._joins) > _SHARED_LIMIT:
                    self._joins.clear()
                joins = self._joins[checkpoint.joins] = text(encode(checkpoint.joins, 3))
            step, parent = checkpoint.step, checkpoint.parent_id
            if type(step) is not int:
                raise _Unusual
            data = (
                f'{{"headwater":{serde.FORMAT_VERSION},"record":{{"__type__":"Checkpoint",'
                f'"id":{quote(checkpoint.id)},"thread_id":{quote(checkpoint.thread_id)},'
                f'"ns":{quote(checkpoint.ns)},'
                f'"parent_id":{"null" if parent is None else quote(parent)},"step":{step},'
                f'"values":{{{",".join(values)}}},'
                f'"next":{{"__type__":"tuple","items":[{",".join(tasks)}]}},"joins":{joins},'
                f'"metadata":{text(encode(checkpoint.metadata, 3))},'
                f'"created_at":{quote(checkpoint.created_at)}}}}}'
            )
        except (_Unusual, SerdeError, TypeError, RecursionError):
            return encode_record(checkpoint)  # the canonical form, or the canonical error
        return data.encode()


@attrs.define(slots=True, eq=False)
class _Deferred:
    """A checkpoint that :class:`MemoryCheckpointer` keeps without encoding it yet.

    Every part that could change after the step (a list, a dict, a message …) is already
    JSON text, made when saved; what is kept as an object is immutable and always
    storable (``str``, ``bool``, ``None``, an ``int`` of up to 63 bits). :meth:`data`
    gives exactly :func:`encode_record`'s bytes of the checkpoint as it was when saved.
    """

    thread_id: str
    ns: str
    checkpoint_id: str
    parent_id: str | None
    step: int
    now_ns: int
    values: list[tuple[str, tuple[Any, str | None]]]
    tasks: list[tuple[str, str] | str]
    joins: str
    source: str
    writes: list[tuple[str, str | tuple[tuple[str, Any], ...]]]
    run_json: str

    def data(self) -> bytes:
        """The stored bytes: what :func:`encode_record` gave for the checkpoint when saved."""
        text, quote = serde._json_text, _quote_str
        values = ",".join(
            f"{quote(key)}:{text(value)}" if piece is None else piece
            for key, (value, piece) in self.values
        )
        tasks = ",".join(
            task
            if type(task) is str
            else f'{{"__type__":"PendingTask","id":{quote(task[0])},{task[1]}'
            for task in self.tasks
        )
        writes = ",".join(
            f"{quote(node)}:{update}"
            if isinstance(update, str)
            else f"{quote(node)}:{{{','.join(f'{quote(k)}:{text(v)}' for k, v in update)}}}"
            for node, update in self.writes
        )
        parent = self.parent_id
        return (
            f'{{"headwater":{serde.FORMAT_VERSION},"record":{{"__type__":"Checkpoint",'
            f'"id":{quote(self.checkpoint_id)},"thread_id":{quote(self.thread_id)},'
            f'"ns":{quote(self.ns)},'
            f'"parent_id":{"null" if parent is None else quote(parent)},"step":{self.step},'
            f'"values":{{{values}}},'
            f'"next":{{"__type__":"tuple","items":[{tasks}]}},"joins":{self.joins},'
            f'"metadata":{{"source":{quote(self.source)},"step":{self.step},'
            f'"writes":{{{writes}}},"run_id":{self.run_json}}},'
            f'"created_at":{quote(_created_at(self.now_ns))}}}}}'
        ).encode()


_BIG = 1 << 63


class _Deferrer:
    """The :class:`_Deferred` checkpoints of one run on a :class:`MemoryCheckpointer`:
    each changed state key is encoded now unless its value is immutable (as
    :class:`_CheckpointEncoder` does, a key not written since keeps its last form)."""

    __slots__ = ("_keys", "_run_id")

    def __init__(self) -> None:
        self._keys: dict[Any, tuple[Any, str | None]] = {}
        self._run_id: tuple[Any, str] = (_Unusual, "")

    def defer(
        self,
        thread_id: str,
        ns: str,
        checkpoint_id: str,
        parent_id: str | None,
        step: int,
        now_ns: int,
        values: Mapping[str, Any],
        tasks: Sequence[tuple[str, str, tuple[str, ...], tuple[str | int, ...], bool, Any]],
        joins: tuple[tuple[str, ...], ...],
        source: str,
        writes: Mapping[str, Mapping[str, Any]],
        run_id: Any,
        written: Collection[str],
    ) -> _Deferred:
        """The checkpoint with these fields (metadata ``{"source", "step", "writes",
        "run_id"}``); raises on anything the fast path does not take (the caller then
        encodes the checkpoint in full, which gives the canonical bytes or error)."""
        text, encode, quote = serde._json_text, serde._encode_in, _quote_str
        keys = self._keys
        parts = []
        for key, value in values.items():
            known = keys.get(key)
            if known is None or known[0] is not value or key in written:
                if type(key) is not str or key == serde.TAG:
                    raise _Unusual
                kind = type(value)
                if (
                    kind is str
                    or kind is bool
                    or value is None
                    or (kind is int and -_BIG < value < _BIG)
                ):
                    known = keys[key] = (value, None)
                else:
                    known = keys[key] = (value, f"{quote(key)}:{text(encode(value, 4))}")
            parts.append((key, known))
        shared = _CheckpointEncoder._tasks
        pieces: list[tuple[str, str] | str] = []
        for task_id, node, triggers, path, has_arg, arg in tasks:
            if has_arg:
                task = PendingTask(
                    id=task_id, node=node, triggers=triggers, path=path, has_arg=True, arg=arg
                )
                pieces.append(text(encode(task, 5)))
                continue
            shape = (node, triggers, path)
            rest = shared.get(shape)
            if rest is None:
                if len(shared) > _SHARED_LIMIT:
                    shared.clear()
                rest = shared[shape] = (
                    f'"node":{quote(node)},"triggers":{_names(triggers)},'
                    f'"path":{_names(path)},"has_arg":false,"arg":null}}'
                )
            pieces.append((task_id, rest))
        shared_joins = _CheckpointEncoder._joins
        joined = shared_joins.get(joins)
        if joined is None:
            if len(shared_joins) > _SHARED_LIMIT:
                shared_joins.clear()
            joined = shared_joins[joins] = text(encode(joins, 3))
        frozen: list[tuple[str, str | tuple[tuple[str, Any], ...]]] = []
        for node, update in writes.items():
            if type(node) is not str or node == serde.TAG:
                raise _Unusual
            items = tuple(update.items()) if type(update) is dict else None
            if items is not None:
                for k, v in items:
                    kind = type(v)
                    if (
                        type(k) is not str
                        or k == serde.TAG
                        or not (
                            kind is str
                            or kind is bool
                            or v is None
                            or (kind is int and -_BIG < v < _BIG)
                        )
                    ):
                        items = None
                        break
            frozen.append((node, text(encode(update, 5)) if items is None else items))
        if type(step) is not int or type(source) is not str:
            raise _Unusual
        if self._run_id[0] is not run_id:
            self._run_id = (run_id, text(encode(run_id, 4)))
        return _Deferred(
            thread_id,
            ns,
            checkpoint_id,
            parent_id,
            step,
            now_ns,
            parts,
            pieces,
            joined,
            source,
            frozen,
            self._run_id[1],
        )


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

    Records are kept as a database would hold them, so nothing shares mutable state with
    a running graph: a run's checkpoint keeps each changed state value as its JSON, made
    when the step is saved, and only immutable values (``str``, ``bool``, ``None``, small
    ``int``) as they are, turned into the same bytes when read. What is read back is
    always decoded from those bytes.

    Example::

        app = graph.compile(checkpointer=MemoryCheckpointer())
    """

    def __init__(self) -> None:
        self._checkpoints: dict[tuple[str, str], dict[str, bytes | _Deferred]] = {}
        self._writes: dict[tuple[str, str, str], dict[str, bytes]] = {}

    def _exists(self, thread_id: str, ns: str, checkpoint_id: str) -> None:
        rows = self._checkpoints.get((thread_id, ns))
        if rows is not None and checkpoint_id in rows:
            raise CheckpointError(
                f"Checkpoint {checkpoint_id!r} of thread {thread_id!r} already exists."
            )

    def _put_deferred(self, checkpoint: _Deferred) -> None:
        """Save a run's checkpoint, encoded when read (see :class:`_Deferrer`)."""
        key = (checkpoint.thread_id, checkpoint.ns)
        rows = self._checkpoints.get(key)
        if rows is None:
            rows = self._checkpoints[key] = {}
        elif checkpoint.checkpoint_id in rows:
            self._exists(checkpoint.thread_id, checkpoint.ns, checkpoint.checkpoint_id)
        rows[checkpoint.checkpoint_id] = checkpoint

    def _put_record(self, record: Record) -> None:
        """Save one record at once (what :meth:`aput_records` does, without awaiting)."""
        self._exists(record.thread_id, record.ns, record.checkpoint_id)
        self._checkpoints.setdefault((record.thread_id, record.ns), {})[record.checkpoint_id] = (
            record.data
        )

    def _data(self, rows: dict[str, bytes | _Deferred], checkpoint_id: str) -> bytes:
        data = rows[checkpoint_id]
        if type(data) is _Deferred:
            data = rows[checkpoint_id] = data.data()  # encoded once, on first read
        return data  # type: ignore[return-value]

    async def aput(self, checkpoint: Checkpoint) -> None:
        """Save a checkpoint."""
        await self.aput_records([Record.of(checkpoint)])

    async def aput_writes(
        self, thread_id: str, ns: str, checkpoint_id: str, writes: Sequence[PendingWrite]
    ) -> None:
        """Save pending writes of the step after ``checkpoint_id``."""
        await self.aput_records(
            Record.writes(WriteBatch(thread_id, ns, checkpoint_id, tuple(writes)))
        )

    async def aput_batch(self, items: Sequence[Checkpoint | WriteBatch]) -> None:
        """Save checkpoints and write batches, in order."""
        await self.aput_records(records_of(items))

    async def aput_records(self, records: Sequence[Record]) -> None:
        """Save encoded checkpoints and writes, in order (all or none)."""
        for record in records:  # check first: nothing is half-saved
            if isinstance(record.value, Checkpoint):
                self._exists(record.thread_id, record.ns, record.checkpoint_id)
        for record in records:
            value = record.value
            if isinstance(value, Checkpoint):
                key = (record.thread_id, record.ns)
                self._checkpoints.setdefault(key, {})[record.checkpoint_id] = record.data
            else:
                wkey = (record.thread_id, record.ns, record.checkpoint_id)
                self._writes.setdefault(wkey, {})[value.task_id] = record.data

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
        data = self._data(rows, checkpoint_id)
        checkpoint = decode_record(data, thread_id, checkpoint_id, Checkpoint)
        writes = tuple(
            decode_record(row, thread_id, checkpoint_id, PendingWrite)
            for _, row in sorted(self._writes.get((thread_id, ns, checkpoint_id), {}).items())
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
        return [decode_record(self._data(rows, i), thread_id, i, Checkpoint) for i in ids]

    async def adelete_thread(self, thread_id: str) -> None:
        """Forget a thread."""
        for key in [k for k in self._checkpoints if k[0] == thread_id]:
            del self._checkpoints[key]
        for wkey in [k for k in self._writes if k[0] == thread_id]:
            del self._writes[wkey]


T = TypeVar("T")
_IDLE_SECONDS = 5.0
"""How long a :class:`DatabaseThread` waits for work before it ends (it restarts on demand)."""


class _Call(Generic[T]):
    """One request to a :class:`DatabaseThread`: a call, or records to commit."""

    __slots__ = ("done", "error", "fn", "records", "result", "token")

    def __init__(self, fn: Callable[[], T] | None, records: Sequence[Record] | None) -> None:
        self.fn = fn
        self.records = records
        self.token = anyio.lowlevel.current_token()
        self.done = anyio.Event()
        self.result: T | None = None
        self.error: BaseException | None = None


def _wake(events: list[anyio.Event]) -> None:
    for event in events:
        event.set()


class DatabaseThread:
    """One long-lived thread that runs a blocking database driver for async callers.

    Handing each query to a fresh worker (``anyio.to_thread.run_sync``) costs 40-140 µs
    on a busy machine, more than a SQLite commit; a thread that stays, woken through a
    queue, costs a fraction of it. Requests run in order. Commits that queue up while the
    thread is busy are made together (``commit`` receives all their records: one
    transaction, one flush); if that fails, each caller's records are committed again on
    their own, so that one bad record fails only its caller. ``commit`` must therefore be
    all-or-nothing. A cancelled caller still waits for its request to finish (as with
    ``anyio.to_thread``): a commit that was handed over is seen to its end.

    The queue holds at most one request per waiting caller. The thread starts on first
    use (again in a forked child), ends after a few idle seconds (so that it keeps no
    dropped backend alive) and restarts on demand; :meth:`aclose` stops it for good.

    Example::

        thread = DatabaseThread(commit_records, name="headwater-sqlite")
        await thread.commit(records)
        rows = await thread.call(lambda: db.execute("SELECT 1").fetchall())
        await thread.aclose()
    """

    def __init__(
        self, commit: Callable[[Sequence[Record]], None], *, name: str = "headwater-db"
    ) -> None:
        self._commit = commit
        self._name = name
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[_Call[Any] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._closed = False

    def _submit(self, request: _Call[Any] | None) -> None:
        with self._lock:
            if self._closed:
                raise CheckpointError(f"{self._name} is closed.")
            if self._thread is None or self._pid != os.getpid():
                if self._pid != os.getpid():  # a forked child: the parent's queue and
                    self._queue = queue.SimpleQueue()  # thread are not this process's
                self._pid = os.getpid()
                self._thread = threading.Thread(
                    target=self._main, args=(self._queue,), name=self._name, daemon=True
                )
                self._thread.start()
            if request is None:
                self._closed = True
            self._queue.put(request)

    async def _wait(self, request: _Call[T]) -> T:
        self._submit(request)
        try:
            await request.done.wait()
        except BaseException as exc:
            if not isinstance(exc, anyio.get_cancelled_exc_class()):
                raise
            with anyio.CancelScope(shield=True):  # cancelled: still see it to its end
                await request.done.wait()
            raise
        if request.error is not None:
            raise request.error
        return request.result  # type: ignore[return-value]

    async def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn()`` on the thread; return its result or raise its exception."""
        return await self._wait(_Call(fn, None))

    async def commit(self, records: Sequence[Record]) -> None:
        """Commit ``records`` (with any others queued meanwhile); return once durable."""
        await self._wait(_Call(None, records))

    def post(self, fn: Callable[[], object]) -> None:
        """Run ``fn()`` on the thread when its turn comes, without waiting (its result and
        any exception are dropped): housekeeping such as a WAL checkpoint."""
        self._submit(_Call(fn, None))

    async def aclose(self) -> None:
        """Finish what is queued, then stop the thread (later calls fail)."""
        with self._lock:
            if self._closed or self._thread is None:
                self._closed = True
                return
        last: _Call[None] = _Call(lambda: None, None)
        self._submit(last)
        self._submit(None)
        with anyio.CancelScope(shield=True):
            await last.done.wait()

    def _main(self, requests: queue.SimpleQueue[_Call[Any] | None]) -> None:
        while True:
            try:
                first = requests.get(timeout=_IDLE_SECONDS)
            except queue.Empty:
                with self._lock:
                    if requests.empty():  # idle: end, so that nothing keeps a dropped
                        self._thread = None  # backend alive; the next request starts one
                        return
                continue
            batch = [first]
            while True:  # and whatever queued up meanwhile
                try:
                    batch.append(requests.get_nowait())
                except queue.Empty:
                    break
            start = 0
            while start < len(batch):
                request = batch[start]
                if request is None:
                    return
                end = start + 1
                if request.records is not None:
                    while end < len(batch):
                        nxt = batch[end]
                        if nxt is None or nxt.records is None:
                            break
                        end += 1
                    self._commit_group(batch[start:end])  # type: ignore[arg-type]
                else:
                    try:
                        request.result = request.fn()  # type: ignore[misc]
                    except BaseException as exc:  # handed to the caller
                        request.error = exc
                self._notify(batch[start:end])  # type: ignore[arg-type]
                start = end

    def _commit_group(self, group: list[_Call[Any]]) -> None:
        if len(group) == 1:
            try:
                self._commit(group[0].records or ())
            except BaseException as exc:
                group[0].error = exc
            return
        try:
            self._commit([r for request in group for r in request.records or ()])
        except BaseException:
            for request in group:  # find whose records failed
                try:
                    self._commit(request.records or ())
                except BaseException as alone:
                    request.error = alone

    @staticmethod
    def _notify(requests: list[_Call[Any]]) -> None:
        if len(requests) == 1:
            token = requests[0].token
            groups = [(token, [requests[0].done])]
        else:
            by_loop: dict[int, tuple[Any, list[anyio.Event]]] = {}
            for request in requests:
                token = request.token
                by_loop.setdefault(id(token.native_token), (token, []))[1].append(request.done)
            groups = list(by_loop.values())
        for token, events in groups:
            try:
                token.backend_class.run_sync_soon(_wake, (events,), token.native_token)
            except Exception:  # the caller's event loop is gone: nobody waits any more
                pass


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
