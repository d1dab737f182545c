"""A run handed to another process (a run queue): a ``PRODUCER`` span here, whose trace
context the run carries, so the spans of the process that executes it join this trace."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from headwater_otel._context import TRACEPARENT, from_metadata
from headwater_otel._provider import resolve_provider

__all__ = ["producer_span"]

_propagator = TraceContextTextMapPropagator()


@contextlib.contextmanager
def producer_span(
    name: str, metadata: Mapping[str, Any], attributes: Mapping[str, Any] | None = None
) -> Iterator[dict[str, str]]:
    """Open a ``PRODUCER`` span ``name`` (a child of ``metadata``'s ``traceparent``, else
    of the current span) and yield its W3C trace context, ``{"traceparent": ...}``.

    An exception in the block marks the span as failed and goes on.
    """
    from headwater_otel._sink import _VERSION

    tracer = resolve_provider().get_tracer("headwater", _VERSION)
    parent = from_metadata(metadata) if TRACEPARENT in metadata else None
    span = tracer.start_span(
        name, context=parent, kind=SpanKind.PRODUCER, attributes=dict(attributes or {})
    )
    carrier: dict[str, str] = {}
    _propagator.inject(carrier, context=trace.set_span_in_context(span, parent))
    try:
        yield carrier
    except BaseException as exc:
        span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"[:200]))
        span.set_attribute("error.type", type(exc).__name__)
        raise
    finally:
        span.end()
