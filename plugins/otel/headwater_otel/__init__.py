"""headwater-otel: OpenTelemetry traces of headwater runs, exported over OTLP/HTTP.

One span per graph run, node, chat-model call, tool call and retriever call, nested as
they ran, with headwater's metadata (node, step, thread id, checkpoint namespace) as
attributes; model, tool and retriever spans follow the OpenTelemetry GenAI semantic
conventions (``chat {model}``, ``execute_tool {name}``, ``retrieval {name}``, token usage,
time to first token). Message contents are recorded only when switched on.

Switched on for every run by an OTLP endpoint in the environment, or for one run by
naming the sink::

    OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 headwater run app:graph

    app.invoke(state, {"sinks": ["otel"]})

Configured by the standard ``OTEL_*`` variables (endpoint, headers, service name,
sampler, batch sizes). An application that sets up OpenTelemetry itself passes its
provider instead, or has headwater use its global one.

Example::

    import headwater_otel

    headwater_otel.enable(provider, capture_content=True)   # every run, into `provider`
    app.invoke({"messages": ["hi"]})
    headwater_otel.disable()
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from headwater_otel import _settings
from headwater_otel._hooks import (
    headwater_event_subscribers,
    headwater_run_end,
    headwater_sinks,
)

if TYPE_CHECKING:
    from collections.abc import Mapping
    from contextlib import AbstractContextManager

    from opentelemetry.context import Context

    from headwater_otel._sink import OtelSink

__all__ = [
    "OtelSink",
    "disable",
    "enable",
    "headwater_event_subscribers",
    "headwater_run_end",
    "headwater_sinks",
    "is_enabled",
    "parent_context",
    "producer_span",
]


# OpenTelemetry's SDK is imported on first use: loading the plugin, which every process
# using headwater does, must not pay for it.
def __getattr__(name: str) -> Any:
    if name == "OtelSink":
        from headwater_otel._sink import OtelSink

        return OtelSink
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def enable(tracer_provider: Any = None, *, capture_content: bool | None = None) -> None:
    """Trace every run from now on, into ``tracer_provider`` if given.

    Without a provider, spans go to the application's global TracerProvider if it set
    one, else to one built from the ``OTEL_*`` environment variables. ``capture_content``
    records message contents, tool arguments and results, retrieval queries and documents
    (``None``: as ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT`` says; off by
    default). ``OTEL_SDK_DISABLED=true`` still wins.

    Example::

        from opentelemetry.sdk.trace import TracerProvider

        headwater_otel.enable(TracerProvider(), capture_content=False)
    """
    if tracer_provider is not None and not callable(getattr(tracer_provider, "get_tracer", None)):
        from headwater.errors import InvalidInputError

        raise InvalidInputError(
            f"enable() takes an OpenTelemetry TracerProvider (something with get_tracer()); "
            f"got {type(tracer_provider).__name__}: {tracer_provider!r:.80}."
        )
    if capture_content is not None and not isinstance(capture_content, bool):
        from headwater.errors import InvalidInputError

        raise InvalidInputError(
            f"enable(capture_content=...) takes True, False or None; got "
            f"{type(capture_content).__name__}: {capture_content!r:.80}."
        )
    state = _settings.STATE
    state.provider = tracer_provider
    state.capture_content = capture_content
    state.enabled = True


def disable() -> None:
    """Stop tracing runs automatically, whatever the environment says.

    Runs that name the ``otel`` sink are still traced (into the application's global
    TracerProvider, or one built from the environment). The provider headwater built from
    the environment, if any, is flushed and shut down (the next traced run builds a new
    one, from the environment as it is then).

    Example::

        headwater_otel.disable()
    """
    state = _settings.STATE
    state.enabled = False
    state.provider = None
    state.capture_content = None
    import sys

    provider_module = sys.modules.get("headwater_otel._provider")
    if provider_module is not None:
        provider_module.shutdown_built()


def parent_context(traceparent: str, tracestate: str | None = None) -> Context | None:
    """The OpenTelemetry context of the remote span a W3C ``traceparent`` names.

    ``None`` for a malformed one (W3C: ignore it and start a new trace); a value that is
    not a string is an :class:`~headwater.errors.InvalidInputError`. A run whose config
    carries ``{"metadata": {"traceparent": ...}}`` gets its parent this way, which is how
    a server request's trace continues in the run, also on a worker behind a queue.

    Example::

        ctx = headwater_otel.parent_context(request.headers["traceparent"])
    """
    from headwater_otel._context import parent_context as parse

    return parse(traceparent, tracestate)


def is_enabled() -> bool:
    """Whether every run of this process is traced (:func:`enable`, or an OTLP endpoint in
    the environment; never under ``OTEL_SDK_DISABLED=true``).

    Example::

        if headwater_otel.is_enabled():
            print("runs are traced")
    """
    return _settings.auto_enabled()


def producer_span(
    name: str, metadata: Mapping[str, Any], attributes: Mapping[str, Any] | None = None
) -> AbstractContextManager[dict[str, str]]:
    """A ``PRODUCER`` span for a run handed to another process, yielding its W3C trace
    context to send along (``{"traceparent": ...}``).

    The span is a child of ``metadata``'s ``traceparent`` if it has one, else of the
    current span. Put what it yields in the run's ``config["metadata"]``: the spans of the
    process that executes the run become the span's children, in the same trace.
    ``headwater serve --queue`` does this for every run it enqueues.

    Example::

        with headwater_otel.producer_span("enqueue chat", {}) as context:
            job = RunJob(..., config={"metadata": context})
            await queue.enqueue(job)
    """
    from headwater_otel._handoff import producer_span as open_span

    return open_span(name, metadata, attributes)
