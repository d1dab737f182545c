"""The plugin's hooks: the ``otel`` sink, and tracing every run when the environment asks.

Nothing here imports OpenTelemetry: loading the plugin costs no SDK import, and a run
that is not traced pays one look at the environment.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from headwater.hookspecs import hookimpl
from headwater_otel import _settings

if TYPE_CHECKING:
    from headwater.events import Subscription
    from headwater.runtime import Run
    from headwater_otel._sink import OtelSink

__all__ = ["headwater_event_subscribers", "headwater_run_end", "headwater_sinks"]

_traced: dict[str, OtelSink] = {}
"""The sinks of the root runs traced without naming the sink, by run id, until they end."""


def _open_sink(target: str) -> OtelSink:
    from headwater_otel._sink import OtelSink

    return OtelSink(target)


@hookimpl
def headwater_sinks() -> Mapping[str, Any]:
    """Register the ``otel`` sink: ``config={"sinks": ["otel"]}`` traces that run.

    Example::

        app.invoke(state, {"sinks": ["otel"]})
    """
    return {"otel": _open_sink}


@hookimpl
def headwater_event_subscribers(run: Run) -> list[Subscription] | None:
    """Trace every run while an OTLP endpoint is set (or :func:`enable` was called).

    A run that names the ``otel`` sink in its config gets that sink instead (not two).

    Example::

        # OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 python app.py
    """
    if not _settings.auto_enabled() or _settings.names_otel_sink(run.config.get("sinks")):
        return None
    sink = _open_sink("")
    _traced[run.run_id] = sink
    return [sink.subscription()]


@hookimpl
def headwater_run_end(run: Run, error: BaseException | None) -> None:
    """Close the sink of a traced run: any span its events left open ends now.

    Example::

        # called by the scheduler after the run's last event
    """
    if _traced:
        sink = _traced.pop(run.run_id, None)
        if sink is not None:
            sink.close()
