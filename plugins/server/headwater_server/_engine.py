"""The run engine: starting, queueing, cancelling and following runs, with their owners.

Protocol-independent: the HTTP edge (``_app``) turns requests into
:class:`~._requests.RunRequest` and calls the engine; another protocol can be mounted on
the same engine. The engine executes runs in this process, or — with a run queue —
enqueues them for ``headwater worker`` processes; either way each run's events go to a
broker log that any instance can follow.

Shared state lives where every instance sees it: thread owners beside the threads (the
checkpointer), runs in the queue or in the broker's records, which run a thread is busy
with in the queue or in a broker claim. Nothing a request adds to this process's memory
is unbounded.
"""

from __future__ import annotations

import collections
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import anyio
import anyio.abc
import attrs

from headwater import CompiledGraph
from headwater.broker import Broker, BrokerEntry, MemoryBroker
from headwater.checkpoint import Checkpointer
from headwater.errors import HeadwaterError
from headwater.queue import RunJob, RunQueue, ThreadBusyError
from headwater.runtime import new_id

from ._metrics import OFF, Metrics
from ._requests import ApiError, Limits, RunRequest
from ._runs import (
    TERMINAL,
    Outcome,
    drive,
    encode_json,
    open_run_stream,
    publish,
    rollback_thread,
    terminal_entry,
)
from ._threads import ThreadOwners
from ._tracing import handoff

__all__ = ["Engine", "RunInfo", "RunRecord"]

_RECORD_TTL = 24 * 3600.0
"""Seconds a run's record stays in a shared broker after its last update."""


@attrs.define(eq=False)
class RunRecord:
    """A run started by this process: its status and cancel scope."""

    graph: str
    thread_id: str | None
    owner: str
    run_id: str = attrs.field(factory=new_id)
    status: str = "pending"  # pending | queued | running | done | error | cancelled
    error: str | None = None
    reason: str | None = None  # why it was cancelled: cancel, interrupt, rollback …
    multitask: str = "reject"
    scope: anyio.CancelScope | None = None
    done: anyio.Event = attrs.field(factory=anyio.Event)

    @property
    def finished(self) -> bool:
        """Whether the run has ended (successfully or not)."""
        return self.status in ("done", "error", "cancelled")

    def cancel(self, reason: str = "cancel") -> None:
        """Cancel the run (no-op once finished); ``reason`` is reported with it."""
        if self.finished:
            return
        if self.reason is None:
            self.reason = reason
        if self.scope is not None:
            self.scope.cancel()


@attrs.frozen(kw_only=True)
class RunInfo:
    """What any instance knows of a run."""

    run_id: str
    graph: str
    thread_id: str | None
    owner: str
    status: str
    error: str | None = None
    reason: str | None = None
    alive_until: float | None = None  # a run executed by a server instance: its heartbeat


class Engine:
    """Runs of ``graphs``, executed here or through ``queue``, logged in ``broker``."""

    def __init__(
        self,
        graphs: Mapping[str, CompiledGraph],
        *,
        broker: Broker,
        queue: RunQueue | None,
        limits: Limits,
        heartbeat: float = 15.0,
        max_runs: int = 1000,
        lease: float = 30.0,
        max_active_runs: int = 1000,
        metrics: Metrics = OFF,
    ) -> None:
        self.graphs = dict(graphs)
        self.metrics = metrics
        """What this engine reports (``run_started``, ``run_finished``, ``client`` …):
        Prometheus metrics, or :data:`._metrics.OFF`."""
        self.broker = broker
        self.queue = queue
        self.limits = limits
        self.heartbeat = heartbeat
        self.max_runs = max_runs
        self.lease = lease
        self.max_active_runs = max_active_runs
        self._active = 0
        self.shared = not isinstance(broker, MemoryBroker)
        savers: list[Checkpointer] = []
        for graph in self.graphs.values():
            if graph.checkpointer is not None and all(graph.checkpointer is not s for s in savers):
                savers.append(graph.checkpointer)
        self.owners = ThreadOwners(savers, broker)
        self.runs: dict[str, RunRecord] = {}
        self.tg: anyio.abc.TaskGroup | None = None
        self.closing = False
        self._followers: set[anyio.CancelScope] = set()
        self._waiting: dict[str, collections.deque[RunRecord]] = {}
        self._turn: dict[str, anyio.Event] = {}
        self._next_reap = 0.0
        self._stop: anyio.Event | None = None

    # -- threads ---------------------------------------------------------------------

    async def claim_thread(self, thread_id: str | None, owner: str) -> str:
        """A thread for ``owner``: a new one, or ``thread_id`` if it is theirs or unused."""
        thread_id = thread_id or new_id()
        if not await self.owners.claim(thread_id, owner):
            raise ApiError(404, "unknown_thread", f"Thread {thread_id!r} not found.")
        return thread_id

    async def check_thread(self, thread_id: str, owner: str) -> str:
        """``thread_id`` if ``owner`` owns it (404 otherwise)."""
        if await self.owners.owner_of(thread_id) != owner:
            raise ApiError(404, "unknown_thread", f"Thread {thread_id!r} not found.")
        return thread_id

    # -- starting runs ---------------------------------------------------------------

    def _open(self, request: RunRequest, record: RunRecord) -> Any:
        graph = self.graphs[request.graph]
        try:
            if request.input is not None:
                graph.schema.coerce_input(request.input, request.graph)
            return open_run_stream(
                graph, request.input, self._config(request, record), request.stream_spec()
            )
        except HeadwaterError as exc:
            raise ApiError(400, type(exc).__name__, str(exc)) from None

    def _config(self, request: RunRequest, record: RunRecord) -> dict[str, Any]:
        config = dict(request.config)
        configurable = dict(config.get("configurable") or {})
        if record.thread_id is not None:
            configurable["thread_id"] = record.thread_id
        config["configurable"] = configurable
        config["run_id"] = record.run_id
        return config

    async def start(self, request: RunRequest, owner: str) -> RunRecord:
        """Validate and start (or enqueue) a run for ``owner``; 409 if its thread is busy
        and the multitask strategy is ``reject``."""
        graph = self.graphs[request.graph]
        thread_id = request.thread_id
        if thread_id is not None or graph.checkpointer is not None or self.queue is not None:
            thread_id = await self.claim_thread(thread_id, owner)
        record = RunRecord(
            graph=request.graph,
            thread_id=thread_id,
            owner=owner,
            multitask=request.multitask,
        )
        stream = self._open(request, record)  # a bad mode, filter or input: 400 now
        if self.queue is not None:  # a worker executes it; this server only streams
            del stream  # never started: dropping it releases it
            await self._enqueue(request, record)
            return record
        if self.closing:
            raise ApiError(503, "shutting_down", "The server is shutting down; retry elsewhere.")
        if self._active >= self.max_active_runs:
            raise ApiError(
                503,
                "too_many_runs",
                f"This server is running or holding {self._active} runs, its maximum "
                "(max_active_runs); retry later.",
            )
        await self._admit(record)
        self._active += 1
        self.runs[record.run_id] = record
        await self._put_record(record)
        assert self.tg is not None, "the app's lifespan has not started"
        await self.tg.start(self._execute, record, stream, request.stream_spec())
        return record

    async def _enqueue(self, request: RunRequest, record: RunRecord) -> None:
        assert self.queue is not None and record.thread_id is not None
        # Inside a span of this server when it traces: the worker's spans are its children.
        with handoff(record.graph, record.run_id, request.config) as config:
            job = RunJob(
                run_id=record.run_id,
                graph=record.graph,
                thread_id=record.thread_id,
                input=request.input,
                config=dict(config),
                stream=request.stream_spec(),
                owner=record.owner,
            )
            try:
                superseded = await self.queue.enqueue(job, multitask=request.multitask)
            except ThreadBusyError as busy:
                raise _busy(record.thread_id, busy.run_ids[0]) from None
        self.metrics.run_enqueued(record.graph)
        for old in superseded:
            if old.status == "cancelled" and old.worker is None:  # was queued: ends now
                entry = terminal_entry(old.run_id, Outcome("cancelled"), old.cancel_reason)
                await publish(self.broker, old.run_id, *entry, must=True)
        record.status = "queued"

    async def _admit(self, record: RunRecord) -> None:
        """Make ``record`` the run its thread is busy with, or queue it behind (per its
        multitask strategy), or refuse it."""
        thread_id = record.thread_id
        if thread_id is None:
            return
        waiting = self._waiting.get(thread_id)
        holder = None
        if not waiting:
            holder = await self.broker.claim(f"thread:{thread_id}", record.run_id, self.lease)
            if holder is None:
                return  # the thread is ours
        if record.multitask == "reject":
            busy = holder if holder is not None else waiting[0].run_id  # type: ignore[index]
            raise _busy(thread_id, busy)
        if record.multitask in ("interrupt", "rollback"):
            for queued in list(waiting or ()):
                queued.cancel(record.multitask)
            if holder is None:  # who runs now, behind the line we just cancelled?
                holder = await self.broker.claim(f"thread:{thread_id}", record.run_id, self.lease)
            if holder is not None:
                await self._request_cancel(holder, record.multitask)
        record.status = "queued"
        self._waiting.setdefault(thread_id, collections.deque()).append(record)

    async def _request_cancel(self, run_id: str, reason: str) -> None:
        local = self.runs.get(run_id)
        if local is not None:
            local.cancel(reason)
        elif self.shared:
            await self.broker.put_record(f"cancel:{run_id}", {"reason": reason}, self.lease * 4)

    async def _wait_turn(self, record: RunRecord) -> None:
        """Wait until ``record`` is first in line on its thread and holds the thread."""
        assert record.thread_id is not None
        thread_id = record.thread_id
        line = self._waiting[thread_id]
        try:
            while True:
                if line and line[0] is record:
                    key = f"thread:{thread_id}"
                    if await self.broker.claim(key, record.run_id, self.lease) is None:
                        return
                turn = self._turn.setdefault(thread_id, anyio.Event())
                with anyio.move_on_after(0.25 if self.shared else 1.0):
                    await turn.wait()
        finally:
            if record in line:
                line.remove(record)
            if not line:
                self._waiting.pop(thread_id, None)
            self._wake(thread_id)

    def _wake(self, thread_id: str) -> None:
        turn = self._turn.pop(thread_id, None)
        if turn is not None:
            turn.set()

    # -- executing runs ----------------------------------------------------------------

    async def _execute(
        self,
        record: RunRecord,
        stream: Any,
        spec: Mapping[str, Any],
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        outcome: Outcome | None = None
        started = False
        began = 0.0
        try:
            with anyio.CancelScope() as scope:
                record.scope = scope
                if record.reason is not None:
                    scope.cancel()
                task_status.started()
                if record.status == "queued":
                    await self._wait_turn(record)
                record.status = "running"
                started = True
                began = time.monotonic()
                self.metrics.run_started(record.graph)
                await self._put_record(record)
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._keep_alive, record)
                    try:
                        count = self.metrics.tokens(record.graph)
                        outcome = await drive(self.broker, record.run_id, stream, count)
                    except Exception as exc:  # the broker or the engine, not the run
                        outcome = Outcome(
                            "error", {"type": type(exc).__name__, "message": str(exc)}
                        )
                    finally:
                        tg.cancel_scope.cancel()
        except Exception as exc:  # waiting for the thread failed (the broker is down)
            outcome = Outcome("error", {"type": type(exc).__name__, "message": str(exc)})
        finally:
            self._active -= 1
            with anyio.CancelScope(shield=True):
                if outcome is None:  # cancelled: by a client, a newer run, or shutdown
                    outcome = Outcome("cancelled")
                    record.reason = record.reason or "shutdown"
                if not started:
                    await _close(stream)
                else:
                    self.metrics.run_finished(
                        record.graph, outcome.status, time.monotonic() - began
                    )
                try:
                    await self._end(record, outcome)
                except Exception:  # the broker is gone: the followers' probes end them
                    record.status, record.error = outcome.status, outcome.error
                    record.done.set()

    async def _end(self, record: RunRecord, outcome: Outcome) -> None:
        graph = self.graphs[record.graph]
        if (
            outcome.status == "cancelled"
            and record.reason == "rollback"
            and record.thread_id is not None
            and record.status == "running"
        ):
            await rollback_thread(graph, record.thread_id, record.run_id)
        # Status and thread first: a client that saw the terminal event finds the run
        # ended and its thread free.
        record.status, record.error = outcome.status, outcome.error
        await self._put_record(record)
        if record.thread_id is not None:
            await self.broker.release(f"thread:{record.thread_id}", record.run_id)
            self._wake(record.thread_id)
        event, data = terminal_entry(record.run_id, outcome, record.reason)
        await publish(self.broker, record.run_id, event, data, must=True)
        record.done.set()
        self._evict()

    async def _keep_alive(self, record: RunRecord) -> None:
        """Renew the run's hold on its thread and its record; see cancel requests made
        on other instances."""
        interval = min(self.lease / 3, 1.0) if self.shared else self.lease / 3
        while True:
            await anyio.sleep(interval)
            if record.thread_id is not None:
                await self.broker.claim(f"thread:{record.thread_id}", record.run_id, self.lease)
            if self.shared:
                asked = await self.broker.get_record(f"cancel:{record.run_id}")
                if asked is not None:
                    record.cancel(asked.get("reason") or "cancel")
                await self._put_record(record)

    async def _put_record(self, record: RunRecord) -> None:
        if not self.shared:
            return
        fields = {
            "graph": record.graph,
            "thread_id": record.thread_id or "",
            "owner": record.owner,
            "status": record.status,
            "error": record.error or "",
            "reason": record.reason or "",
            "alive_until": "" if record.finished else repr(time.time() + self.lease),
        }
        await self.broker.put_record(f"run:{record.run_id}", fields, _RECORD_TTL)

    def _evict(self) -> None:
        """Forget the oldest finished runs beyond ``max_runs`` (memory stays bounded)."""
        excess = len(self.runs) - self.max_runs
        if excess <= 0:
            return
        for run_id in [r for r, record in self.runs.items() if record.finished][:excess]:
            del self.runs[run_id]
            if self.tg is not None and not self.shared:
                self.tg.start_soon(self.broker.delete, run_id)  # its log goes too

    # -- runs anywhere -----------------------------------------------------------------

    async def info(self, run_id: str, owner: str) -> RunInfo:
        """What is known of a run ``owner`` started (404 for anyone else's)."""
        found = await self._info(run_id)
        if found is None or found.owner != owner:
            raise ApiError(404, "unknown_run", f"Run {run_id!r:.80} not found.")
        return found

    async def _info(self, run_id: str) -> RunInfo | None:
        record = self.runs.get(run_id)
        if record is not None:
            return RunInfo(
                run_id=run_id,
                graph=record.graph,
                thread_id=record.thread_id,
                owner=record.owner,
                status=record.status,
                error=record.error,
                reason=record.reason,
            )
        if self.queue is not None:
            job = await self.queue.get(run_id)
            if job is None:
                return None
            return RunInfo(
                run_id=run_id,
                graph=job.graph,
                thread_id=job.thread_id,
                owner=job.owner or "",
                status=job.status,
                error=job.error,
                reason=job.cancel_reason if job.status == "cancelled" else None,
            )
        if self.shared:
            fields = await self.broker.get_record(f"run:{run_id}")
            if fields is None:
                return None
            alive = fields.get("alive_until")
            return RunInfo(
                run_id=run_id,
                graph=fields.get("graph", ""),
                thread_id=fields.get("thread_id") or None,
                owner=fields.get("owner", ""),
                status=fields.get("status", "running"),
                error=fields.get("error") or None,
                reason=fields.get("reason") or None,
                alive_until=float(alive) if alive else None,
            )
        return None

    async def cancel(self, run_id: str, owner: str, reason: str = "cancel") -> str:
        """Cancel a run (here, on another instance, or on a worker); its status after at
        most a few seconds. ``reason`` ``"rollback"`` also undoes what it wrote."""
        info = await self.info(run_id, owner)
        record = self.runs.get(run_id)
        if record is not None:
            record.cancel(reason)
            with anyio.move_on_after(5):
                await record.done.wait()
            return record.status
        if info.status in ("done", "error", "cancelled"):
            return info.status
        if self.queue is not None:
            job = await self.queue.cancel(run_id, reason)
            if job is not None and job.status == "cancelled" and job.worker is None:
                entry = terminal_entry(run_id, Outcome("cancelled"), job.cancel_reason)
                await publish(self.broker, run_id, *entry, must=True)
        elif self.shared:
            await self.broker.put_record(f"cancel:{run_id}", {"reason": reason}, self.lease * 4)
        for _ in range(50):
            status = await self.ended(run_id)
            if status is not None:
                return status
            await anyio.sleep(0.1)
        found = await self._info(run_id)
        return found.status if found is not None else "unknown"

    async def ended(self, run_id: str) -> str | None:
        """The final status of a run that has ended, else ``None``. A run whose executor
        stopped without ending it (a dead worker's cancelled run, a crashed instance) is
        ended here."""
        if self.queue is not None and time.monotonic() >= self._next_reap:
            self._next_reap = time.monotonic() + 1.0
            for job in await self.queue.reap():  # cancelled runs of dead workers end
                await self.end_reaped(job)
        found = await self._info(run_id)
        if found is None:
            return None
        if found.status in ("done", "error", "cancelled"):
            return found.status
        if found.alive_until is not None and found.alive_until < time.time():
            return "error"  # the instance executing it stopped renewing it
        return None

    async def end_reaped(self, job: RunJob) -> None:
        """Publish the terminal event of a run the queue ended (and undo its writes if a
        ``rollback`` superseded it)."""
        graph = self.graphs.get(job.graph)
        if job.status == "cancelled" and job.cancel_reason == "rollback" and graph is not None:
            await rollback_thread(graph, job.thread_id, job.run_id)
        if job.status == "cancelled":
            outcome = Outcome("cancelled")
        else:
            outcome = Outcome("error", {"type": "RunAttemptsExhausted", "message": job.error})
        entry = terminal_entry(job.run_id, outcome, job.cancel_reason)
        await publish(self.broker, job.run_id, *entry, must=True)

    # -- following runs ------------------------------------------------------------------

    async def follow(self, run_id: str, after: str | None) -> AsyncIterator[list[BrokerEntry]]:
        """Yield the run's entries after ``after`` in batches as they come (``[]``: a
        heartbeat), ending with its terminal entry.

        A client reconnecting at or after the end of a finished run gets its terminal
        entry again. If the log stays quiet and the run has ended (its terminal entry was
        lost with a broker restart, or its executor died), a terminal entry is made up so
        the follower does not wait forever. On shutdown the stream ends without one (the
        client reconnects elsewhere).
        """
        with anyio.CancelScope() as scope:
            self._followers.add(scope)
            try:
                position = after
                if after is not None:
                    entries = await self.broker.read(run_id, after, block=0)
                    if not entries:
                        last = await self.broker.last(run_id)
                        if last is not None and last.event in TERMINAL:
                            yield [last]  # EventSource reconnects after `end` with its id
                            return
                while True:
                    entries = await self.broker.read(run_id, position, block=self.heartbeat)
                    self.metrics.delivered(entries)
                    if not entries:
                        status = await self.ended(run_id)
                        if status is not None:
                            entries = await self.broker.read(run_id, position, block=0)
                            if not entries:
                                yield [_made_up(run_id, status)]
                                return
                        else:
                            yield []
                            continue
                    for i, entry in enumerate(entries):
                        if entry.event in TERMINAL:
                            yield entries[: i + 1]
                            return
                    position = entries[-1].id
                    yield entries
            finally:
                self._followers.discard(scope)

    # -- lifespan ----------------------------------------------------------------------

    async def watch(self) -> None:
        """Run in the lifespan's task group: shut down when :meth:`request_shutdown` is
        called (from a signal handler, say)."""
        self._stop = anyio.Event()
        await self._stop.wait()
        await self.shutdown()

    def request_shutdown(self) -> None:
        """Ask for :meth:`shutdown` from outside any task (a signal handler on the loop)."""
        if self._stop is not None:
            self._stop.set()

    async def shutdown(self) -> None:
        """Stop: cancel this process's runs (their followers get ``cancelled``), then end
        every remaining follower's stream."""
        self.closing = True
        for record in list(self.runs.values()):
            record.cancel("shutdown")
        with anyio.move_on_after(5):
            for record in list(self.runs.values()):
                await record.done.wait()
        await anyio.sleep(0.05)  # let followers pass the terminal entries on
        for scope in list(self._followers):
            scope.cancel()


def _busy(thread_id: str, run_id: str) -> ApiError:
    return ApiError(
        409,
        "thread_busy",
        f"Thread {thread_id!r} is busy with run {run_id!r}. Wait for it to end, cancel it, "
        "or send multitask_strategy 'enqueue', 'interrupt' or 'rollback'.",
    )


def _made_up(run_id: str, status: str) -> BrokerEntry:
    if status == "done":
        return BrokerEntry("", "end", encode_json({"run_id": run_id, "status": "done"}))
    if status == "cancelled":
        return BrokerEntry("", "cancelled", encode_json({"run_id": run_id, "synthesised": True}))
    body = {
        "type": "RunLost",
        "message": f"Run {run_id!r} ended without its last events (its worker or server "
        "stopped, or the broker lost them); reload the thread's state.",
        "synthesised": True,
    }
    return BrokerEntry("", "error", encode_json(body))


async def _close(stream: Any) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()
