"""W3C trace context: a ``traceparent`` (an HTTP header, a queued run's config) becomes the
parent of a run's spans.

A run carries it in its config's metadata, ``config={"metadata": {"traceparent": ...,
"tracestate": ...}}``, which travels wherever the run goes (a run queue, a worker), so the
worker's spans join the caller's trace. A malformed ``traceparent`` is ignored, as the W3C
recommendation says: the run starts a trace of its own.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from headwater.errors import InvalidInputError

__all__ = ["TRACEPARENT", "TRACESTATE", "from_metadata", "parent_context"]

TRACEPARENT = "traceparent"
"""The metadata key (and HTTP header) of the W3C ``traceparent``."""
TRACESTATE = "tracestate"
"""The metadata key (and HTTP header) of the W3C ``tracestate``."""

_log = logging.getLogger("headwater_otel")
_propagator = TraceContextTextMapPropagator()


def parent_context(traceparent: str, tracestate: str | None = None) -> Context | None:
    """The OpenTelemetry context whose span is the remote parent ``traceparent`` names.

    Returns ``None`` for a malformed ``traceparent`` (W3C: ignore it, start a new trace).
    Raises :class:`~headwater.errors.InvalidInputError` when it is not a string at all.

    Example::

        ctx = parent_context("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        tracer.start_span("work", context=ctx)   # a child of that remote span
    """
    if not isinstance(traceparent, str):
        raise InvalidInputError(
            f"traceparent must be a W3C traceparent string such as "
            f"'00-<32 hex trace id>-<16 hex span id>-01'; got {type(traceparent).__name__}: "
            f"{traceparent!r:.80}."
        )
    if tracestate is not None and not isinstance(tracestate, str):
        raise InvalidInputError(
            f"tracestate must be a W3C tracestate string such as 'vendor=value'; got "
            f"{type(tracestate).__name__}: {tracestate!r:.80}."
        )
    carrier = {TRACEPARENT: traceparent[:512]}
    if tracestate:
        carrier[TRACESTATE] = tracestate[:512]
    context = _propagator.extract(carrier, context=Context())
    if not trace.get_current_span(context).get_span_context().is_valid:
        return None
    return context


def from_metadata(metadata: Mapping[str, Any]) -> Context | None:
    """The parent context a run's metadata names (``None``: none, or not a valid one).

    Never raises: a run is not failed by its tracing. A value of the wrong type is logged.
    """
    traceparent = metadata.get(TRACEPARENT)
    if traceparent is None:
        return None
    try:
        context = parent_context(traceparent, metadata.get(TRACESTATE))
    except InvalidInputError as exc:
        _log.warning("headwater-otel: ignoring the run's metadata['traceparent']: %s", exc)
        return None
    if context is None:
        _log.info("headwater-otel: ignoring a malformed traceparent %r", traceparent[:80])
    return context
