"""``headwater worker``: claim queued runs, execute them, publish their events.

A worker claims a run under a lease and renews it by heartbeat. If the lease is lost
(another worker took the run over after this one stalled) or the run's cancellation
was requested, the worker stops the run. A worker that claims a run another worker
had started (``attempts > 1``) resumes it from its last checkpoint: it first publishes
a ``resumed`` entry ``{"attempt": n}``, and every event of the new attempt carries
``_event.attempt = n`` — so a UI can drop the partial output of the step that was cut.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from typing import Any

import anyio

from headwater import CompiledGraph
from headwater.broker import Broker
from headwater.queue import RunJob, RunQueue
from headwater.runtime import new_id

from ._runs import encode_json, publish, publish_stream, wire_entries

__all__ = ["job_stream", "run_job", "work"]

_FILTER_KEYS = (
    "include_names",
    "include_types",
    "include_tags",
    "exclude_names",
    "exclude_types",
    "exclude_tags",
)


def job_stream(
    graph: CompiledGraph, input: Any, config: Mapping[str, Any], spec: Mapping[str, Any]
) -> Any:
    """Open the stream a job asked for: stream modes, or ``astream_events`` with filters."""
    mode = spec.get("stream_mode")
    if mode is not None:
        return graph.astream(input, config, stream_mode=mode)
    filters = {k: spec[k] for k in _FILTER_KEYS if spec.get(k) is not None}
    return graph.astream_events(input, config, filters=spec.get("filters"), **filters)


async def run_job(
    job: RunJob, graph: CompiledGraph, queue: RunQueue, broker: Broker, worker: str, lease: float
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
                    done = encode_json({"run_id": job.run_id, "status": "done"})
                    await publish(broker, job.run_id, "end", done, must=True)
                    await queue.finish(job.run_id, worker, "done")
                    return "done"
                input = None  # the run had checkpointed: continue from there
    status, error = "done", None
    stopped_by: list[str] = []
    with anyio.CancelScope() as scope:

        async def heartbeat() -> None:
            while True:
                await anyio.sleep(lease / 3)
                renewed = await queue.renew(job.run_id, worker, lease)
                if renewed is None:
                    stopped_by.append("lease lost")
                    scope.cancel()
                elif renewed.cancel_requested:
                    stopped_by.append("cancelled")
                    scope.cancel()

        async with anyio.create_task_group() as tg:
            tg.start_soon(heartbeat)
            try:
                stream = job_stream(graph, input, config, job.stream)
                entries = wire_entries(
                    stream, job.stream.get("stream_mode"), {"attempt": job.attempts}
                )
                await publish_stream(broker, job.run_id, entries)
            except Exception as exc:
                status, error = "error", f"{type(exc).__name__}: {exc}"
                with anyio.CancelScope(shield=True):
                    body = {"type": type(exc).__name__, "message": str(exc)}
                    await publish(broker, job.run_id, "error", encode_json(body), must=True)
            tg.cancel_scope.cancel()
    with anyio.CancelScope(shield=True):
        if stopped_by == ["lease lost"]:
            return "lost"  # another worker owns the run now; it publishes the rest
        if stopped_by:
            status = "cancelled"
            cancelled = encode_json({"run_id": job.run_id})
            await publish(broker, job.run_id, "cancelled", cancelled, must=True)
        elif status == "done":
            done = encode_json({"run_id": job.run_id, "status": "done"})
            await publish(broker, job.run_id, "end", done, must=True)
        await queue.finish(job.run_id, worker, status, error)
    return status


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
) -> None:
    """Claim and execute runs until cancelled (or ``max_runs`` runs were done).

    ``concurrency`` runs execute at once (each under its own lease): most runs spend
    their time waiting on a model provider, so one process can carry many.

    Example::

        anyio.run(functools.partial(work, {"chat": app}, queue, broker, concurrency=8))
    """
    if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
        raise ValueError(f"concurrency must be an int >= 1; got {concurrency!r}.")
    worker = worker or f"{socket.gethostname()}-{new_id()[:8]}"
    claimed = 0

    async def slot() -> None:
        nonlocal claimed
        while max_runs is None or claimed < max_runs:
            job = await queue.claim(worker, lease, graphs)  # never another worker's graph
            if job is None:
                await anyio.sleep(poll)
                continue
            claimed += 1
            graph = graphs.get(job.graph)
            if graph is None:
                message = f"This worker has no graph {job.graph!r}; it serves {sorted(graphs)}."
                body = {"type": "unknown_graph", "message": message}
                await publish(broker, job.run_id, "error", encode_json(body), must=True)
                await queue.finish(job.run_id, worker, "error", message)
            else:
                await run_job(job, graph, queue, broker, worker, lease)

    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(slot)
