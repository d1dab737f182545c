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
from collections.abc import Sequence

import anyio
import attrs

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
        seconds for the first one. Raises :class:`ExpiredPositionError` when ``after`` is
        older than what the broker still keeps."""

    @abc.abstractmethod
    async def delete(self, run_id: str) -> None:
        """Forget a run's log."""

    def valid_id(self, entry_id: str) -> bool:
        """Whether ``entry_id`` has this broker's id syntax (for Last-Event-ID checks)."""
        return bool(entry_id)

    async def aclose(self) -> None:  # noqa: B027 - optional hook with a default
        """Release connections (default: nothing to do)."""


class MemoryBroker(Broker):
    """Run logs in this process (``memory:``): ids are ``1``, ``2`` …; at least the last
    ``retention`` entries of each run are kept (trimmed in chunks, at most twice that).

    Example::

        broker = MemoryBroker(retention=10_000)
    """

    def __init__(self, retention: int = 10_000) -> None:
        self.retention = retention
        self._logs: dict[str, list[BrokerEntry]] = {}
        self._next: dict[str, int] = {}
        self._changed: dict[str, anyio.Event] = {}

    async def publish(self, run_id: str, event: str, data: str) -> str:
        """Append an entry."""
        number = self._next.get(run_id, 1)
        self._next[run_id] = number + 1
        log = self._logs.setdefault(run_id, [])
        log.append(BrokerEntry(str(number), event, data))
        if len(log) > self.retention * 2:  # trim in chunks: amortised O(1) per entry
            del log[: len(log) - self.retention]
        changed = self._changed.pop(run_id, None)
        if changed is not None:
            changed.set()
        return str(number)

    def valid_id(self, entry_id: str) -> bool:
        """Memory ids are positive integers."""
        return entry_id.isdigit()

    def _after(self, run_id: str, position: int) -> list[BrokerEntry]:
        log = self._logs.get(run_id)
        if not log:
            return []
        first = int(log[0].id)  # ids are consecutive: entry n sits at index n - first
        if position and position < first - 1:
            raise ExpiredPositionError(
                f"Entry {position} of run {run_id!r} is no longer kept (oldest: {first}); "
                "restart from the thread's state."
            )
        return log[max(0, position - first + 1) :]

    async def read(self, run_id: str, after: str | None, *, block: float) -> list[BrokerEntry]:
        """Entries after ``after``, waiting up to ``block`` seconds."""
        position = int(after) if after else 0
        found = self._after(run_id, position)
        if found or block <= 0:
            return found
        changed = self._changed.setdefault(run_id, anyio.Event())
        with anyio.move_on_after(block):
            await changed.wait()
        return self._after(run_id, position)

    async def delete(self, run_id: str) -> None:
        """Forget a run."""
        self._logs.pop(run_id, None)
        self._next.pop(run_id, None)
        changed = self._changed.pop(run_id, None)
        if changed is not None:
            changed.set()


def broker_from_url(url: str, plugin_manager: PluginManager | None = None) -> Broker:
    """Make a broker from a URL through the installed plugins.

    Example::

        broker_from_url("memory:")
        broker_from_url("redis://127.0.0.1:6379/0")   # needs headwater-redis
    """
    pm = plugin_manager or get_plugin_manager()
    broker: Broker = pm.from_url("headwater_brokers", url, error=BrokerError, expected=Broker)
    return broker
