"""W3C trace context on the server: a request's ``traceparent`` becomes its run's parent.

The server does not trace anything itself: it puts the request's ``traceparent`` (and
``tracestate``) headers into the run's ``config["metadata"]``, where a tracing plugin
(``headwater-otel``) finds the parent of the run's spans. The metadata travels with the
run, through the run queue to a worker too, so the worker's spans join the caller's
trace. When ``headwater-otel`` is loaded and tracing, a run handed to the queue also gets
a ``PRODUCER`` span of this server (``enqueue {graph}``), and the worker's spans become
its children: one trace across the server and the worker.

Without a tracing plugin this costs a dictionary look-up per request.
"""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Iterator, Mapping
from typing import Any

import attrs

from ._requests import RunRequest

__all__ = ["TRACE_HEADERS", "handoff", "trace_headers", "with_trace_context"]

TRACE_HEADERS = ("traceparent", "tracestate")
"""The W3C trace-context headers a request may carry (and the metadata keys they become)."""

_TRACEPARENT = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}(-[^\s]*)?")
_MAX = 512
"""Longest ``traceparent`` or ``tracestate`` taken from a request (W3C: 512 for the state)."""


def trace_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The request's trace context: ``traceparent`` if well formed, with ``tracestate``.

    A malformed or oversized ``traceparent`` is ignored, as the W3C recommendation says
    (the run starts a trace of its own); so is a ``tracestate`` without one.

    Example::

        trace_headers({"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"})
    """
    parent = headers.get("traceparent")
    if parent is None:
        return {}
    parent = parent.strip()
    if len(parent) > _MAX or not _TRACEPARENT.fullmatch(parent) or parent.startswith("ff"):
        return {}
    if parent.startswith("00") and len(parent) != 55:  # version 00 has nothing after flags
        return {}
    found = {"traceparent": parent}
    state = headers.get("tracestate")
    if state is not None and 0 < len(state.strip()) <= _MAX and state.isascii():
        found["tracestate"] = state.strip()
    return found


def with_trace_context(request: RunRequest, headers: Mapping[str, str]) -> RunRequest:
    """``request`` with the trace context of ``headers`` in its ``config["metadata"]``.

    A run whose client put a ``traceparent`` in ``config.metadata`` itself keeps it. Any
    route that starts runs calls this with its request's headers.

    Example::

        run = with_trace_context(run_request(body, graphs, limits), request.headers)
        record = await engine.start(run, owner)
    """
    found = trace_headers(headers)
    if not found:
        return request
    metadata = dict(request.config.get("metadata") or {})
    if "traceparent" in metadata:
        return request
    metadata.update(found)
    return attrs.evolve(request, config={**request.config, "metadata": metadata})


@contextlib.contextmanager
def handoff(graph: str, run_id: str, config: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    """The config to enqueue a run with: inside an ``enqueue {graph}`` span of this process
    when ``headwater-otel`` is tracing (the job then carries that span's trace context),
    else ``config`` itself.

    Example::

        with handoff("chat", run_id, request.config) as config:
            await queue.enqueue(RunJob(run_id=run_id, graph="chat", config=config, ...))
    """
    otel = sys.modules.get("headwater_otel")  # loaded as a plugin when installed
    if otel is None or not otel.is_enabled():
        yield config
        return
    metadata = dict(config.get("metadata") or {})
    attributes = {
        "headwater.graph": graph,
        "headwater.run_id": run_id,
        "messaging.operation.type": "send",
        "messaging.system": "headwater",
    }
    with otel.producer_span(f"enqueue {graph}", metadata, attributes) as context:
        for key in TRACE_HEADERS:
            metadata.pop(key, None)
        metadata.update(context)
        yield {**config, "metadata": metadata}
