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

__all__ = [
    "MULTITASK_STRATEGIES",
    "QueueError",
    "RunJob",
    "RunQueue",
    "ThreadBusyError",
    "queue_from_url",
]

MULTITASK_STRATEGIES = ("reject", "enqueue", "interrupt", "rollback")
"""What a new run does when its thread is busy with another (LangGraph's names):
``reject`` it, ``enqueue`` it after the others, ``interrupt`` the others (their
progress stays) or ``rollback`` them (their progress is undone), then run."""


class ThreadBusyError(QueueError):
    """A run was refused (multitask strategy ``reject``): its thread is busy.

    ``run_ids`` are the runs the thread is busy with.

    Example::

        try:
            await queue.enqueue(job)
        except ThreadBusyError as busy:
            print("thread busy with", busy.run_ids)
    """

    def __init__(self, thread_id: str, run_ids: list[str]) -> None:
        super().__init__(
            f"Thread {thread_id!r} is busy with run {run_ids[0]!r}; wait for it to end, "
            "cancel it, or start the run with multitask_strategy 'enqueue', 'interrupt' or "
            "'rollback'."
        )
        self.thread_id = thread_id
        self.run_ids = run_ids


@attrs.frozen(kw_only=True)
class RunJob:
    """One queued run: what to run, for whom, and how far it got.

    ``input`` and ``config`` are plain JSON data (as the client sent them); ``attempts``
    counts claims (a run taken over after a worker died has ``attempts > 1``);
    ``cancel_reason`` says why a cancellation was requested: ``cancel`` (a client asked),
    ``interrupt`` or ``rollback`` (a newer run on the thread superseded it).

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
    cancel_reason: str | None = None
    enqueued_at: float | None = None
    """When the run was enqueued (seconds since the epoch, the queue's clock), if the
    queue keeps it: a worker's claim latency is measured from it."""


class RunQueue(abc.ABC):
    """The interface every run-queue backend implements (all async).

    A queue keeps at most one run of a thread ``running`` at a time, and starts a
    thread's queued runs in the order they were enqueued.

    Example::

        class MyQueue(RunQueue):
            async def enqueue(self, job, *, multitask="reject"): ...
            async def claim(self, worker, lease, graphs=None, *, max_attempts=3): ...
            async def reap(self, *, max_attempts=None, graphs=None): ...
            async def renew(self, run_id, worker, lease): ...
            async def finish(self, run_id, worker, status, error=None): ...
            async def cancel(self, run_id, reason="cancel"): ...
            async def get(self, run_id): ...
    """

    @abc.abstractmethod
    async def enqueue(self, job: RunJob, *, multitask: str = "reject") -> list[RunJob]:
        """Add a run (status ``queued``) under a multitask strategy (one of
        :data:`MULTITASK_STRATEGIES`) and return the runs of its thread it superseded.

        ``reject`` raises :class:`ThreadBusyError` if the thread has a queued or running
        run; ``enqueue`` adds it behind them; ``interrupt`` and ``rollback`` request the
        cancellation of all of them (``cancel_reason`` says which) — a queued one is
        cancelled at once — and the new run starts once they have ended.
        """

    @abc.abstractmethod
    async def claim(
        self,
        worker: str,
        lease: float,
        graphs: Collection[str] | None = None,
        *,
        max_attempts: int = 3,
    ) -> RunJob | None:
        """Take the oldest startable run, or a running one whose lease expired (with
        fewer than ``max_attempts`` claims and no cancellation requested); ``None`` if none.

        A queued run is startable once no other run of its thread is running or was
        queued before it. With ``graphs``, only a run of one of those graphs: workers
        serving different graphs share one queue without taking each other's runs.
        """

    @abc.abstractmethod
    async def reap(
        self, *, max_attempts: int | None = None, graphs: Collection[str] | None = None
    ) -> list[RunJob]:
        """End the runs whose lease expired and that must not be claimed again: those
        whose cancellation was requested (status ``cancelled``) and, with
        ``max_attempts``, those claimed that many times (status ``error``, a poison run
        that stops every worker that takes it). Return them, so the caller publishes
        their terminal events."""

    @abc.abstractmethod
    async def renew(self, run_id: str, worker: str, lease: float) -> RunJob | None:
        """Extend ``worker``'s lease; ``None`` if the lease was lost to another worker."""

    @abc.abstractmethod
    async def finish(self, run_id: str, worker: str, status: str, error: str | None = None) -> None:
        """Record the end of a run claimed by ``worker``."""

    @abc.abstractmethod
    async def cancel(self, run_id: str, reason: str = "cancel") -> RunJob | None:
        """Ask for a run to be cancelled (a queued run is cancelled at once); return its
        record after the request, or ``None`` if there is no such run."""

    @abc.abstractmethod
    async def get(self, run_id: str) -> RunJob | None:
        """A run's current record."""

    async def depth(self) -> int | None:
        """How many runs wait to be claimed (status ``queued``); ``None`` if this queue
        cannot tell (the default). Read by the metrics of servers and workers.

        Example::

            waiting = await queue.depth()
        """
        return None

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
