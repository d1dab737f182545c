"""Which TracerProvider headwater's spans go to, and the one it builds from ``OTEL_*``.

In order: the provider given to :func:`headwater_otel.enable`; else the application's
global provider, when it set one (``opentelemetry-instrument``, or its own setup); else
one built here from the standard environment variables and kept for the process. The
built provider is never made global: the application's own OpenTelemetry setup stays its
business.

The built provider exports in a background thread through a bounded queue
(``OTEL_BSP_MAX_QUEUE_SIZE``, 2048 spans by default: when the collector is down or slow,
the oldest spans are dropped, the runs never wait). At interpreter exit it flushes what
is left for at most ``OTEL_BSP_EXPORT_TIMEOUT`` milliseconds (default here 3000), so a
short ``headwater run`` delivers its spans and a dead collector cannot hold the exit.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

from headwater_otel._settings import EXPORTER_ENV, STATE

__all__ = ["built_provider", "exit_timeout", "resolve_provider", "shutdown_built"]

_log = logging.getLogger("headwater_otel")

_SERVICE_NAME = "headwater"
"""``service.name`` unless ``OTEL_SERVICE_NAME`` or ``OTEL_RESOURCE_ATTRIBUTES`` names one."""

_EXIT_TIMEOUT_MS = 3000

_lock = threading.Lock()
_built: TracerProvider | trace.NoOpTracerProvider | None = None


def resolve_provider() -> Any:
    """The TracerProvider a run's spans go to (see the module docstring for the order)."""
    if STATE.provider is not None:
        return STATE.provider
    current = trace.get_tracer_provider()
    if not isinstance(current, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
        return current
    return built_provider()


def built_provider() -> TracerProvider | trace.NoOpTracerProvider:
    """The provider built from the environment (made on first use, once per process).

    An environment the SDK refuses (``OTEL_BSP_MAX_QUEUE_SIZE=abc``) is logged as an error
    naming the problem, and runs go on untraced: tracing never fails a run.
    """
    global _built
    if _built is not None:
        return _built
    with _lock:
        if _built is None:
            try:
                made = _build()
            except Exception as exc:
                _log.error(
                    "headwater-otel: cannot set up tracing from the OTEL_* environment "
                    "variables (%s: %s); runs go on untraced until it is fixed.",
                    type(exc).__name__,
                    exc,
                )
                _built = trace.NoOpTracerProvider()
            else:
                _built = made
                atexit.register(_shutdown_at_exit, made)
    return _built


def shutdown_built() -> None:
    """Flush and shut down the provider built from the environment, if any (``disable()``)."""
    global _built
    with _lock:
        provider, _built = _built, None
    if isinstance(provider, TracerProvider):
        _bounded_shutdown(provider)


def exit_timeout() -> float:
    """Seconds the exit flush may take: ``OTEL_BSP_EXPORT_TIMEOUT`` (ms), default 3 s."""
    raw = os.environ.get("OTEL_BSP_EXPORT_TIMEOUT", "").strip()
    try:
        millis = float(raw) if raw else _EXIT_TIMEOUT_MS
    except ValueError:
        _log.warning("OTEL_BSP_EXPORT_TIMEOUT=%r is not a number of milliseconds; using 3000", raw)
        millis = _EXIT_TIMEOUT_MS
    return max(millis, 0.0) / 1000


def _build() -> TracerProvider:
    environ = os.environ
    named = bool(environ.get("OTEL_SERVICE_NAME")) or "service.name=" in environ.get(
        "OTEL_RESOURCE_ATTRIBUTES", ""
    )
    resource = Resource.create({} if named else {"service.name": _SERVICE_NAME})
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)  # sampler: OTEL_*
    for name in _exporter_names():
        exporter: Any
        if name == "otlp":
            exporter = _otlp_exporter()
            if exporter is None:
                continue
        elif name == "console":
            exporter = ConsoleSpanExporter()
        else:
            _log.warning(
                "%s=%s: headwater-otel exports 'otlp' (OTLP over HTTP) or 'console'; "
                "ignoring %r. For another exporter, set up a TracerProvider yourself and "
                "pass it to headwater_otel.enable(provider).",
                EXPORTER_ENV,
                environ.get(EXPORTER_ENV),
                name,
            )
            continue
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def _exporter_names() -> list[str]:
    raw = os.environ.get(EXPORTER_ENV, "").strip().lower()
    names = [n.strip() for n in raw.split(",") if n.strip()] or ["otlp"]
    return [n for n in names if n != "none"]


def _otlp_exporter() -> Any:
    environ = os.environ
    protocol = (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    if protocol != "http/protobuf":
        _log.error(
            "OTEL_EXPORTER_OTLP_PROTOCOL=%s: headwater-otel exports OTLP over HTTP only "
            "(http/protobuf, port 4318). Point OTEL_EXPORTER_OTLP_ENDPOINT at the collector's "
            "HTTP port, or set up a TracerProvider with a gRPC exporter yourself and pass it "
            "to headwater_otel.enable(provider). No spans will be exported.",
            protocol,
        )
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()  # endpoint, headers, timeout, compression: OTEL_EXPORTER_OTLP_*


def _bounded_shutdown(provider: TracerProvider) -> None:
    """Shut ``provider`` down, waiting at most :func:`exit_timeout` for the last export."""
    worker = threading.Thread(target=provider.shutdown, name="headwater-otel-shutdown", daemon=True)
    worker.start()
    worker.join(exit_timeout())
    if worker.is_alive():
        _log.warning(
            "headwater-otel: the span exporter did not finish within %.1f s "
            "(OTEL_BSP_EXPORT_TIMEOUT); the spans still queued are dropped.",
            exit_timeout(),
        )


def _shutdown_at_exit(provider: TracerProvider) -> None:
    if _built is provider:
        _bounded_shutdown(provider)
