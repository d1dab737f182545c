"""Fixtures of the otel tests: a loopback OTLP receiver and clean tracing settings."""

from __future__ import annotations

from collections.abc import Iterator

import headwater_otel
import pytest
from headwater_otel import _provider, _settings
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from tests.fixtures.otlp import OtlpReceiver, receiving

OTEL_ENV = (
    "OTEL_SDK_DISABLED",
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TIMEOUT",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    "OTEL_BSP_MAX_QUEUE_SIZE",
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
    "OTEL_BSP_SCHEDULE_DELAY",
    "OTEL_BSP_EXPORT_TIMEOUT",
    "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT",
)


@pytest.fixture(autouse=True)
def clean_tracing(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No OTEL_* variable and no enable()/disable() leaks into or out of a test."""
    for name in OTEL_ENV:
        monkeypatch.delenv(name, raising=False)
    state = _settings.STATE
    saved = (state.enabled, state.provider, state.capture_content)
    state.enabled = state.provider = state.capture_content = None
    _settings.reread_environment()  # the test's own OTEL_* variables are read at its first run
    try:
        yield
    finally:
        _provider.shutdown_built()
        state.enabled, state.provider, state.capture_content = saved
        _settings.reread_environment()


@pytest.fixture
def receiver() -> Iterator[tuple[OtlpReceiver, str]]:
    """A real OTLP/HTTP receiver on a free loopback port: ``(receiver, base_url)``."""
    with receiving() as pair:
        yield pair


@pytest.fixture
def provider(receiver: tuple[OtlpReceiver, str]) -> Iterator[TracerProvider]:
    """A TracerProvider exporting over OTLP/HTTP to the receiver, and tracing every run."""
    _, url = receiver
    made = TracerProvider(
        resource=Resource.create({"service.name": "otel-tests"}), shutdown_on_exit=False
    )
    made.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{url}/v1/traces")))
    headwater_otel.enable(made)
    try:
        yield made
    finally:
        made.shutdown()
