"""What switches tracing on and what it records: the ``OTEL_*`` environment and ``enable()``.

A module of its own that imports no OpenTelemetry package: the plugin's hooks ask it, once
per run, whether to trace, and loading the plugin (which every process using headwater
does) must stay cheap.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = [
    "CAPTURE_CONTENT_ENV",
    "ENDPOINT_ENVS",
    "EXPORTER_ENV",
    "SDK_DISABLED_ENV",
    "STATE",
    "auto_enabled",
    "capture_content",
    "names_otel_sink",
    "reread_environment",
    "sdk_disabled",
]

ENDPOINT_ENVS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
"""Setting either one switches tracing on for every run (the OTLP/HTTP collector's URL)."""

EXPORTER_ENV = "OTEL_TRACES_EXPORTER"
"""``otlp`` (the default), ``console`` or ``none``; set to anything but ``none`` it also
switches tracing on."""

SDK_DISABLED_ENV = "OTEL_SDK_DISABLED"
"""``true`` switches every span off, whatever else is set."""

CAPTURE_CONTENT_ENV = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
"""``true`` records message contents, tool arguments and results, retrieval queries and
documents on the spans (off by default, as the GenAI conventions advise)."""

_TRUE = frozenset({"true", "1", "yes", "on", "span_only", "span_and_event"})


class _State:
    """What :func:`headwater_otel.enable` set; ``None`` fields follow the environment."""

    __slots__ = ("capture_content", "enabled", "provider")

    def __init__(self) -> None:
        self.enabled: bool | None = None
        self.provider: Any = None
        self.capture_content: bool | None = None


STATE = _State()


def sdk_disabled() -> bool:
    """Whether ``OTEL_SDK_DISABLED=true``."""
    return os.environ.get(SDK_DISABLED_ENV, "").strip().lower() == "true"


_from_environment: bool | None = None
"""What the environment said, read once (looking up four variables costs microseconds,
too much for every run of a process that is not traced)."""


def auto_enabled() -> bool:
    """Whether every run is traced (without naming the ``otel`` sink in its config).

    Off under ``OTEL_SDK_DISABLED=true``; else as :func:`headwater_otel.enable` /
    ``disable`` said; else on when an OTLP endpoint is set or ``OTEL_TRACES_EXPORTER``
    names an exporter (``none`` keeps it off). The environment is read on the first run
    (as the SDK reads it once, when its exporter is built); :func:`reread_environment`
    reads it again.
    """
    global _from_environment
    enabled = STATE.enabled
    if enabled is not None:
        return enabled and not sdk_disabled()
    if _from_environment is None:
        environ = os.environ
        exporter = environ.get(EXPORTER_ENV, "").strip().lower()
        _from_environment = (
            exporter != "none"
            and not sdk_disabled()
            and bool(exporter or environ.get(ENDPOINT_ENVS[0]) or environ.get(ENDPOINT_ENVS[1]))
        )
    return _from_environment


def reread_environment() -> None:
    """Forget what the environment said: the next run reads it again."""
    global _from_environment
    _from_environment = None


def capture_content() -> bool:
    """Whether message contents go on the spans (``enable(capture_content=...)`` first)."""
    if STATE.capture_content is not None:
        return STATE.capture_content
    return os.environ.get(CAPTURE_CONTENT_ENV, "").strip().lower() in _TRUE


def names_otel_sink(specs: Any) -> bool:
    """Whether a run's ``config["sinks"]`` names the ``otel`` sink itself."""
    if not isinstance(specs, list | tuple):
        return False
    return any(isinstance(s, str) and s.partition(":")[0] == "otel" for s in specs)
