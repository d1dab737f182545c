"""Run queues: API servers enqueue runs, worker processes claim and execute them.

A worker holds a run under a *lease* that it renews by heartbeat; a worker that dies
stops renewing, its lease expires, and another worker claims the run and resumes it
from the last checkpoint. Backends are chosen by URL through ``headwater_run_queues``:
``postgresql://…`` (headwater-postgres).

Example::

    queue = queue_from_url("postgresql://postgres@127.0.0.1:5432/test")
    await queue.enqueue(RunJob(run_id=new_id(), graph="chat", thread_id="t1", input={...}))
    job = await queue.claim("worker-1", lease=30)
"""

from __future__ import annotations

import abc
from collections.abc import Collection, Mapping
from typing import Any

import attrs

from headwater._plugins import PluginManager, get_plugin_manager
from headwater.errors import QueueError

__all__ = ["QueueError", "RunJob", "RunQueue", "queue_from_url"]


@attrs.frozen(kw_only=True)
class RunJob:
    """One queued run: what to run, for whom, and how far it got.

    ``input`` and ``config`` are plain JSON data (as the client sent them); ``attempts``
    counts claims (a run taken over after a worker died has ``attempts > 1``).

    Example::

        RunJob(run_id="r1", graph="chat", thread_id="t1", input={"messages": ["hi"]})
    """

    run_id: str
    graph: str
    thread_id: str
    input: Any = None
    config: Mapping[str, Any] = attrs.field(factory=dict)
    stream: Mapping[str, Any] = attrs.field(factory=dict)
    owner: str | None = None
    status: str = "queued"  # queued | running | done | error | cancelled
    attempts: int = 0
    worker: str | None = None
    error: str | None = None
    cancel_requested: bool = False


class RunQueue(abc.ABC):
    """The interface every run-queue backend implements (all async).

    Example::

        class MyQueue(RunQueue):
            async def enqueue(self, job): ...
            async def claim(self, worker, lease, graphs=None): ...
            async def renew(self, run_id, worker, lease): ...
            async def finish(self, run_id, worker, status, error=None): ...
            async def cancel(self, run_id): ...
            async def get(self, run_id): ...
            async def thread_owner(self, thread_id): ...
    """

    @abc.abstractmethod
    async def enqueue(self, job: RunJob) -> None:
        """Add a run (status ``queued``)."""

    @abc.abstractmethod
    async def claim(
        self, worker: str, lease: float, graphs: Collection[str] | None = None
    ) -> RunJob | None:
        """Take the oldest queued run, or a running one whose lease expired; ``None`` if none.

        With ``graphs``, only a run of one of those graphs: workers serving different
        graphs share one queue without taking each other's runs.
        """

    @abc.abstractmethod
    async def renew(self, run_id: str, worker: str, lease: float) -> RunJob | None:
        """Extend ``worker``'s lease; ``None`` if the lease was lost to another worker."""

    @abc.abstractmethod
    async def finish(self, run_id: str, worker: str, status: str, error: str | None = None) -> None:
        """Record the end of a run claimed by ``worker``."""

    @abc.abstractmethod
    async def cancel(self, run_id: str) -> None:
        """Ask for a run to be cancelled (a queued run is cancelled at once)."""

    @abc.abstractmethod
    async def get(self, run_id: str) -> RunJob | None:
        """A run's current record."""

    @abc.abstractmethod
    async def thread_owner(self, thread_id: str) -> tuple[bool, str | None]:
        """``(known, owner)``: whether any run used the thread, and the owner of its runs."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook with a default
        """Release connections."""


def queue_from_url(url: str, plugin_manager: PluginManager | None = None) -> RunQueue:
    """Make a run queue from a URL through the installed plugins.

    Example::

        queue_from_url("postgresql://postgres@127.0.0.1:5432/test")
    """
    pm = plugin_manager or get_plugin_manager()
    queue: RunQueue = pm.from_url("headwater_run_queues", url, error=QueueError, expected=RunQueue)
    return queue
