"""Event brokers: carry a run's event log between processes (API servers and workers).

A broker keeps, per run, an ordered log of ``(id, event, data)`` entries: the worker
executing the run publishes, any server instance reads from any position, so a client
can join a run in progress or reconnect with ``Last-Event-ID``. Backends are chosen by
URL through the ``headwater_brokers`` hook: ``memory:`` (built in, one process) and
``redis://…`` (headwater-redis).

Example::

    broker = broker_from_url("redis://127.0.0.1:6379/0")
    entry_id = await broker.publish(run_id, "on_chain_start", '{"input": {}}')
    entries = await broker.read(run_id, after=None, block=1.0)
"""

from __future__ import annotations

import abc
import collections
import time
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from headwater import _backends
from headwater._plugins import PluginManager, get_plugin_manager
from headwater.errors import BrokerError, ExpiredPositionError

__all__ = [
    "Broker",
    "BrokerEntry",
    "BrokerError",
    "ExpiredPositionError",
    "MemoryBroker",
    "broker_from_url",
]


@attrs.frozen
class BrokerEntry:
    """One entry of a run's log: ``id`` (ordered, opaque), SSE ``event`` and JSON ``data``.

    Example::

        BrokerEntry(id="1700000000000-0", event="on_chain_end", data='{"output": {}}')
    """

    id: str
    event: str
    data: str


class Broker(abc.ABC):
    """The interface every broker backend implements.

    Besides runs' logs, a broker keeps the little state that server instances sharing it
    must agree on: small *records* (a run's owner and status, readable by every
    instance) and *claims* (a key held by one value at a time under a lease, e.g. the
    run a thread is busy with). The defaults of those keep them in this process, which
    is right for a broker that is not shared; a shared backend overrides them.

    Example::

        class MyBroker(Broker):
            async def publish(self, run_id, event, data): ...
            async def read(self, run_id, after, *, block): ...
            async def delete(self, run_id): ...
    """

    @abc.abstractmethod
    async def publish(self, run_id: str, event: str, data: str) -> str:
        """Append an entry to the run's log; return its id."""

    async def publish_many(self, run_id: str, entries: Sequence[tuple[str, str]]) -> list[str]:
        """Append ``(event, data)`` entries in order; return their ids.

        The default publishes them one by one; a networked broker overrides it to send
        them in one round trip (publishers batch what a run produced meanwhile).
        """
        return [await self.publish(run_id, event, data) for event, data in entries]

    @abc.abstractmethod
    async def read(self, run_id: str, after: str | None, *, block: float) -> list[BrokerEntry]:
        """Entries after ``after`` (``None``: from the start), waiting up to ``block``
        seconds for the first one. Raises :class:`ExpiredPositionError` when entries
        after ``after`` were dropped (the log was trimmed past it)."""

    @abc.abstractmethod
    async def delete(self, run_id: str) -> None:
        """Forget a run's log."""

    async def last(self, run_id: str) -> BrokerEntry | None:
        """The newest entry of the run's log, or ``None`` (the default reads the whole
        log; backends override it)."""
        entries = await self.read(run_id, None, block=0)
        return entries[-1] if entries else None

    def valid_id(self, entry_id: str) -> bool:
        """Whether ``entry_id`` has this broker's id syntax (for Last-Event-ID checks)."""
        return bool(entry_id)

    # -- records and claims (shared state of the instances using this broker) ---------

    async def put_record(self, key: str, fields: Mapping[str, str], ttl: float) -> None:
        """Store ``fields`` (strings) under ``key`` for ``ttl`` seconds, replacing them."""
        self._local().put_record(key, fields, ttl)

    async def get_record(self, key: str) -> dict[str, str] | None:
        """The fields stored under ``key``, or ``None`` (never stored, or expired)."""
        return self._local().get_record(key)

    async def claim(self, key: str, value: str, ttl: float) -> str | None:
        """Hold ``key`` for ``value`` during ``ttl`` seconds if it is free or already held
        by ``value`` (then its lease is renewed); return ``None`` on success, else the
        value holding it."""
        return self._local().claim(key, value, ttl)

    async def release(self, key: str, value: str) -> None:
        """Free ``key`` if ``value`` holds it."""
        self._local().release(key, value)

    def _local(self) -> _LocalState:
        state: _LocalState | None = getattr(self, "_local_state", None)
        if state is None:
            state = _LocalState()
            self._local_state = state
        return state

    async def aclose(self) -> None:  # noqa: B027 - optional hook with a default
        """Release connections (default: nothing to do)."""


class _LocalState:
    """Records and claims in one process, bounded: the oldest go first past ``limit``."""

    def __init__(self, limit: int = 100_000) -> None:
        self.limit = limit
        self.records: collections.OrderedDict[str, tuple[float, dict[str, str]]] = (
            collections.OrderedDict()
        )
        self.claims: collections.OrderedDict[str, tuple[float, str]] = collections.OrderedDict()

    def _trim(self, table: collections.OrderedDict[str, Any]) -> None:
        now = time.monotonic()
        while table:
            key, item = next(iter(table.items()))
            if len(table) > self.limit or item[0] <= now:
                del table[key]
            else:
                break

    def put_record(self, key: str, fields: Mapping[str, str], ttl: float) -> None:
        self.records.pop(key, None)
        self.records[key] = (time.monotonic() + ttl, dict(fields))
        self._trim(self.records)

    def get_record(self, key: str) -> dict[str, str] | None:
        item = self.records.get(key)
        if item is None or item[0] <= time.monotonic():
            return None
        return dict(item[1])

    def claim(self, key: str, value: str, ttl: float) -> str | None:
        now = time.monotonic()
        held = self.claims.get(key)
        if held is not None and held[0] > now and held[1] != value:
            return held[1]
        self.claims.pop(key, None)
        self.claims[key] = (now + ttl, value)
        self._trim(self.claims)
        return None

    def release(self, key: str, value: str) -> None:
        held = self.claims.get(key)
        if held is not None and held[1] == value:
            del self.claims[key]


_ENTRY_OVERHEAD = 120
"""Bytes an entry costs beyond its text (the object, its id, the list slot)."""


class _Log:
    __slots__ = ("bytes", "entries", "next", "written")

    def __init__(self) -> None:
        self.entries: list[BrokerEntry] = []
        self.next = 1
        self.bytes = 0
        self.written = 0.0


class MemoryBroker(Broker):
    """Run logs in this process (``memory:``): ids are ``1``, ``2`` ….

    Memory is bounded three ways: each run keeps at least its last ``retention`` entries
    (trimmed in chunks, at most twice that) and at most ``max_run_bytes`` of them; all
    logs together hold at most ``max_bytes`` (the logs written longest ago are dropped
    first, so finished runs go before running ones); and a log is dropped ``ttl``
    seconds after its last write. A reader asking for dropped entries gets
    :class:`ExpiredPositionError`.

    Example::

        broker = MemoryBroker(retention=10_000, max_bytes=256 * 2**20, ttl=3600)
    """

    def __init__(
        self,
        retention: int = 10_000,
        *,
        max_run_bytes: int = 16 * 2**20,
        max_bytes: int = 256 * 2**20,
        ttl: float = 3600.0,
    ) -> None:
        for name, value in (
            ("retention", retention),
            ("max_run_bytes", max_run_bytes),
            ("max_bytes", max_bytes),
        ):
            if type(value) is not int or value < 1:
                raise BrokerError(f"MemoryBroker {name} must be a positive int; got {value!r}.")
        if not (isinstance(ttl, int | float) and ttl > 0):
            raise BrokerError(f"MemoryBroker ttl must be > 0 seconds; got {ttl!r}.")
        self.retention = retention
        self.max_run_bytes = max_run_bytes
        self.max_bytes = max_bytes
        self.ttl = float(ttl)
        self._logs: collections.OrderedDict[str, _Log] = collections.OrderedDict()
        self._bytes = 0
        # Reads waiting for a run's next entries, a one-shot wake-up each (see _backends:
        # on asyncio a future and a timer handle, no cancel scope per read).
        self._waiters: dict[str, set[Any]] = {}
        self._gone: dict[str, int] = {}  # dropped logs: readers learn their entries are gone

    @property
    def total_bytes(self) -> int:
        """The (estimated) bytes every log holds together."""
        return self._bytes

    async def publish(self, run_id: str, event: str, data: str) -> str:
        """Append an entry."""
        return self._append(run_id, [(event, data)])[0]

    async def publish_many(self, run_id: str, entries: Sequence[tuple[str, str]]) -> list[str]:
        """Append entries."""
        return self._append(run_id, entries) if entries else []

    def _append(self, run_id: str, items: Sequence[tuple[str, str]]) -> list[str]:
        now = time.monotonic()
        log = self._logs.pop(run_id, None)
        if log is None:
            log = _Log()
        self._logs[run_id] = log  # the most recently written log goes last
        ids = []
        added = 0
        for event, data in items:
            entry_id = str(log.next)
            log.next += 1
            log.entries.append(BrokerEntry(entry_id, event, data))
            added += len(event) + len(data) + _ENTRY_OVERHEAD
            ids.append(entry_id)
        log.bytes += added
        self._bytes += added
        log.written = now
        entries = log.entries
        if len(entries) > self.retention * 2 or log.bytes > self.max_run_bytes:
            self._trim_log(log)
        self._evict(now, keep=run_id)
        self._wake(run_id)
        return ids

    def _wake(self, run_id: str) -> None:
        """Wake every reader waiting for ``run_id``'s log to change."""
        if self._waiters:
            waiters = self._waiters.pop(run_id, None)
            if waiters is not None:
                for handle in waiters:
                    _backends.wake(handle)

    def _trim_log(self, log: _Log) -> None:
        """Drop the oldest entries down to ``retention`` and to half of ``max_run_bytes``
        (in chunks: amortised O(1) per entry)."""
        entries = log.entries
        cut = max(0, len(entries) - self.retention)
        dropped = sum(len(e.event) + len(e.data) + _ENTRY_OVERHEAD for e in entries[:cut])
        size = log.bytes - dropped
        target = self.max_run_bytes // 2
        while size > target and cut < len(entries) - 1:
            e = entries[cut]
            size -= len(e.event) + len(e.data) + _ENTRY_OVERHEAD
            cut += 1
        del entries[:cut]
        self._bytes -= log.bytes - size
        log.bytes = size

    def _evict(self, now: float, keep: str | None = None) -> None:
        """Drop logs past their ``ttl``, then the least recently written past ``max_bytes``."""
        logs = self._logs
        while logs:
            run_id, log = next(iter(logs.items()))
            if run_id == keep:
                break
            if log.written + self.ttl > now and self._bytes <= self.max_bytes:
                break
            self._drop(run_id)

    def _drop(self, run_id: str) -> None:
        log = self._logs.pop(run_id, None)
        if log is not None:
            self._bytes -= log.bytes
            self._gone[run_id] = log.next
            while len(self._gone) > 10_000:
                del self._gone[next(iter(self._gone))]
        self._wake(run_id)

    def valid_id(self, entry_id: str) -> bool:
        """Memory ids are positive integers (ASCII digits, at most 18)."""
        return 0 < len(entry_id) <= 18 and entry_id.isascii() and entry_id.isdigit()

    def _after(self, run_id: str, position: int | None) -> list[BrokerEntry]:
        """Entries after ``position`` (``None``: all that are kept)."""
        log = self._logs.get(run_id)
        if log is None or not log.entries:
            gone = self._gone.get(run_id)
            if gone is not None and position is not None and position < gone - 1:
                raise ExpiredPositionError(
                    f"The log of run {run_id!r} is no longer kept (dropped after its ttl or "
                    "to bound memory); restart from the thread's state."
                )
            return []
        entries = log.entries
        first = int(entries[0].id)  # ids are consecutive: entry n sits at index n - first
        if position is None:
            return entries[:]
        if position < first - 1:
            raise ExpiredPositionError(
                f"Entry {position} of run {run_id!r} is no longer kept (oldest: {first}); "
                "restart from the thread's state."
            )
        return entries[max(0, position - first + 1) :]

    async def read(self, run_id: str, after: str | None, *, block: float) -> list[BrokerEntry]:
        """Entries after ``after``, waiting up to ``block`` seconds."""
        position = int(after) if after else None
        self._evict(time.monotonic())
        found = self._after(run_id, position)
        if found or block <= 0:
            return found
        await self._wait(run_id, block)
        return self._after(run_id, position)

    @property
    def waiting(self) -> int:
        """How many reads are waiting for new entries (of any run): a read that timed out
        or was cancelled no longer counts.

        Example::

            assert broker.waiting == 0  # nobody is following a run
        """
        return sum(map(len, self._waiters.values()))

    async def _wait(self, run_id: str, block: float) -> None:
        """Wait until ``run_id``'s log changes or ``block`` seconds have passed."""
        handle = _backends.wakeup(_backends.running_loop())
        waiters = self._waiters.get(run_id)
        if waiters is None:
            waiters = self._waiters[run_id] = set()
        waiters.add(handle)
        try:
            await _backends.sleep_on_for(handle, block)
        finally:
            waiters.discard(handle)  # still there after a timeout or a cancellation
            if not waiters and self._waiters.get(run_id) is waiters:
                del self._waiters[run_id]

    async def last(self, run_id: str) -> BrokerEntry | None:
        """The newest entry."""
        log = self._logs.get(run_id)
        return log.entries[-1] if log is not None and log.entries else None

    async def delete(self, run_id: str) -> None:
        """Forget a run."""
        log = self._logs.pop(run_id, None)
        if log is not None:
            self._bytes -= log.bytes
        self._wake(run_id)


def broker_from_url(url: str, plugin_manager: PluginManager | None = None) -> Broker:
    """Make a broker from a URL through the installed plugins.

    Example::

        broker_from_url("memory:")
        broker_from_url("redis://127.0.0.1:6379/0")   # needs headwater-redis
    """
    pm = plugin_manager or get_plugin_manager()
    broker: Broker = pm.from_url("headwater_brokers", url, error=BrokerError, expected=Broker)
    return broker
