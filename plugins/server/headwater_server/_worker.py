"""``headwater worker``: claim queued runs, execute them, publish their events.

A worker claims a run under a lease and renews it by heartbeat. If the lease is lost
(another worker took the run over after this one stalled) or the run's cancellation
was requested, the worker stops the run; a run that does not stop within a third of a
lease (a node stuck in a blocking call) is ended anyway, so a cancel takes effect within
a lease. A worker that claims a run another worker had started (``attempts > 1``)
resumes it from its last checkpoint: it first publishes a ``resumed`` entry
``{"attempt": n}``, and every event of the new attempt carries ``_event.attempt = n`` —
so a UI can drop the partial output of the step that was cut. A run whose workers
stopped ``max_attempts`` times (it kills the process that runs it) is not claimed again:
it ends with an ``error`` event of type ``RunAttemptsExhausted``.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Mapping

import anyio

from headwater import CompiledGraph
from headwater.broker import Broker
from headwater.errors import QueueError
from headwater.queue import RunJob, RunQueue
from headwater.runtime import new_id

from ._metrics import OFF, Metrics
from ._runs import (
    Outcome,
    drive,
    encode_json,
    open_run_stream,
    publish,
    rollback_thread,
    terminal_entry,
)

__all__ = ["end_reaped", "run_job", "work"]


async def run_job(
    job: RunJob,
    graph: CompiledGraph,
    queue: RunQueue,
    broker: Broker,
    worker: str,
    lease: float,
    metrics: Metrics = OFF,
) -> str:
    """Execute one claimed job to its end; returns the final status."""
    configurable = {**(job.config.get("configurable") or {}), "thread_id": job.thread_id}
    config = {**job.config, "configurable": configurable, "run_id": job.run_id}
    input = job.input
    if job.attempts > 1:
        await publish(broker, job.run_id, "resumed", encode_json({"attempt": job.attempts}))
        if graph.checkpointer is not None:
            snapshot = await graph.aget_state({"configurable": {"thread_id": job.thread_id}})
            if snapshot.metadata.get("run_id") == job.run_id:
                if not snapshot.next and not snapshot.interrupts:
                    await queue.finish(job.run_id, worker, "done")
                    await publish(broker, job.run_id, *terminal_entry(job.run_id, Outcome("done")))
                    return "done"
                input = None  # the run had checkpointed: continue from there
    stopped: list[str] = []  # why the worker stopped it: "lease lost" or a cancel reason
    finished = anyio.Event()
    ended: list[str] = []  # the status it was ended with, once

    async def end(outcome: Outcome) -> None:
        if ended:
            return
        with anyio.CancelScope(shield=True):
            if stopped == ["lease lost"]:
                ended.append("lost")  # another worker owns the run now; it publishes the rest
                return
            reason = stopped[0] if stopped else None
            if stopped:
                outcome = Outcome("cancelled")
                if reason == "rollback":
                    await rollback_thread(graph, job.thread_id, job.run_id)
            ended.append(outcome.status)
            metrics.run_finished(job.graph, outcome.status, time.monotonic() - began)
            # The queue first: a client that saw the terminal event finds the run ended.
            await queue.finish(job.run_id, worker, outcome.status, outcome.error)
            entry = terminal_entry(job.run_id, outcome, reason)
            await publish(broker, job.run_id, *entry, must=True)

    began = time.monotonic()
    metrics.run_started(job.graph)
    async with anyio.create_task_group() as tg:

        async def execute() -> None:
            try:
                output = open_run_stream(
                    graph, input, config, job.stream, {"attempt": job.attempts}
                )
                outcome = await drive(broker, job.run_id, output, metrics.tokens(job.graph))
            except Exception as exc:  # the stream could not open (the graph changed)
                outcome = Outcome("error", {"type": type(exc).__name__, "message": str(exc)})
            finally:
                finished.set()
            await end(outcome)

        async def control() -> None:
            while True:
                with anyio.move_on_after(lease / 3):
                    await finished.wait()
                if finished.is_set():
                    return
                try:
                    renewed = await queue.renew(job.run_id, worker, lease)
                except QueueError:
                    continue  # the database is away: try again (the lease may run out)
                if renewed is not None and not renewed.cancel_requested:
                    continue
                stopped.append(
                    "lease lost" if renewed is None else (renewed.cancel_reason or "cancel")
                )
                runner.cancel()
                with anyio.move_on_after(lease / 3):
                    await finished.wait()
                # A node stuck in a blocking call cannot be cancelled: the run ends now all
                # the same; the stuck task finishes in the background.
                await end(Outcome("cancelled"))
                return

        with anyio.CancelScope() as runner:
            tg.start_soon(control)
            await execute()
        if not ended:  # cancelled before it published anything
            await end(Outcome("cancelled"))
        tg.cancel_scope.cancel()
    return ended[0] if ended else "cancelled"


async def end_reaped(job: RunJob, graphs: Mapping[str, CompiledGraph], broker: Broker) -> None:
    """Publish the terminal event of a run the queue ended: a poison run's ``error``, or
    ``cancelled`` for a run whose worker died after its cancellation was requested (undoing
    its writes if a ``rollback`` superseded it)."""
    graph = graphs.get(job.graph)
    if job.status == "cancelled":
        if job.cancel_reason == "rollback" and graph is not None:
            await rollback_thread(graph, job.thread_id, job.run_id)
        outcome = Outcome("cancelled")
    else:
        outcome = Outcome("error", {"type": "RunAttemptsExhausted", "message": job.error})
    await publish(
        broker, job.run_id, *terminal_entry(job.run_id, outcome, job.cancel_reason), must=True
    )


async def work(
    graphs: Mapping[str, CompiledGraph],
    queue: RunQueue,
    broker: Broker,
    *,
    lease: float = 30.0,
    poll: float = 0.5,
    worker: str | None = None,
    max_runs: int | None = None,
    concurrency: int = 1,
    max_attempts: int = 3,
    metrics: Metrics = OFF,
) -> None:
    """Claim and execute runs until cancelled (or ``max_runs`` runs were done).

    ``concurrency`` runs execute at once (each under its own lease): most runs spend
    their time waiting on a model provider, so one process can carry many. A run is
    claimed at most ``max_attempts`` times (a run that kills its worker fails after that).
    ``metrics`` counts the runs, their tokens, claim latency and the queue's depth
    (``headwater worker --metrics-port``).

    Example::

        anyio.run(functools.partial(work, {"chat": app}, queue, broker, concurrency=8))
    """
    if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
        raise ValueError(f"concurrency must be an int >= 1; got {concurrency!r}.")
    if not isinstance(max_attempts, int) or isinstance(max_attempts, bool) or max_attempts < 1:
        raise ValueError(f"max_attempts must be an int >= 1; got {max_attempts!r}.")
    worker = worker or f"{socket.gethostname()}-{new_id()[:8]}"
    claimed = 0
    next_reap = 0.0

    async def reap() -> None:
        nonlocal next_reap
        if time.monotonic() < next_reap:
            return
        next_reap = time.monotonic() + min(lease / 3, 5.0)
        for job in await queue.reap(max_attempts=max_attempts, graphs=graphs):
            await end_reaped(job, graphs, broker)
        if metrics.enabled:
            metrics.queue_depth(await queue.depth())

    async def slot() -> None:
        nonlocal claimed
        while max_runs is None or claimed < max_runs:
            await reap()
            job = await queue.claim(worker, lease, graphs, max_attempts=max_attempts)
            if job is None:
                await anyio.sleep(poll)
                continue
            claimed += 1
            if job.attempts == 1 and job.enqueued_at is not None:
                metrics.claimed(job.graph, time.time() - job.enqueued_at)
            graph = graphs.get(job.graph)
            if graph is None:
                message = f"This worker has no graph {job.graph!r}; it serves {sorted(graphs)}."
                body = {"type": "unknown_graph", "message": message}
                await publish(broker, job.run_id, "error", encode_json(body), must=True)
                await queue.finish(job.run_id, worker, "error", message)
            else:
                await run_job(job, graph, queue, broker, worker, lease, metrics)

    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(slot)
