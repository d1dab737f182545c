"""How tracing is switched on and configured: the standard OTEL_* variables, the ``otel``
sink, ``enable()`` / ``disable()``; and what happens when the collector is slow or down."""

from __future__ import annotations

import logging
import socket

import headwater_otel
import pytest
from opentelemetry.sdk.trace import TracerProvider

from headwater.errors import InvalidInputError
from headwater.testing.fake import FakeChatModel
from tests.fixtures.otlp import OtlpReceiver, SpanTree
from tests.plugins.otel._graphs import RAG_TREE, build_busy, build_rag
from tests.plugins.otel.test_spans import one_model_graph

QUESTION = {"messages": ["What is 2 plus 3?"]}


def closed_port_url() -> str:
    """A loopback URL nobody listens on (the port was free a moment ago)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_an_endpoint_in_the_environment_traces_every_run(
    receiver: tuple[OtlpReceiver, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    got, url = receiver
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", url)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "rivers-api")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer%20s3cret")
    build_rag().invoke(QUESTION)  # no config at all
    headwater_otel.disable()  # flushes the provider built from the environment
    tree = SpanTree(got.wait_for(lambda spans: len(spans) >= len(RAG_TREE)))
    assert tree.render() == RAG_TREE
    resource = tree.spans[0].resource
    assert resource["service.name"] == "rivers-api"
    assert resource["deployment.environment"] == "test"
    assert got.headers[0]["authorization"] == "Bearer s3cret"
    assert got.headers[0]["content-type"] == "application/x-protobuf"


def test_the_default_service_name_is_headwater(
    receiver: tuple[OtlpReceiver, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    got, url = receiver
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"{url}/v1/traces")
    one_model_graph(FakeChatModel(["ok"])).invoke({"messages": ["hi"]})
    headwater_otel.disable()
    assert got.wait_for(lambda spans: len(spans) >= 3)[0].resource["service.name"] == "headwater"


def test_the_sampler_comes_from_the_environment(
    receiver: tuple[OtlpReceiver, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    got, url = receiver
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", url)
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    out = build_rag().invoke(QUESTION)
    assert out["messages"][-1].content == "The sum is 5."
    headwater_otel.disable()  # a flush: anything sampled would have been sent by now
    assert got.requests == 0


def test_no_endpoint_means_no_tracing(receiver: tuple[OtlpReceiver, str]) -> None:
    got, _ = receiver
    build_rag().invoke(QUESTION)
    headwater_otel.disable()
    assert got.requests == 0


@pytest.mark.parametrize("env", [{"OTEL_SDK_DISABLED": "true"}, {"OTEL_TRACES_EXPORTER": "none"}])
def test_switches_that_keep_tracing_off(
    receiver: tuple[OtlpReceiver, str], monkeypatch: pytest.MonkeyPatch, env: dict[str, str]
) -> None:
    got, url = receiver
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", url)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    build_rag().invoke(QUESTION)
    if "OTEL_SDK_DISABLED" in env:  # wins over naming the sink too
        build_rag().invoke(QUESTION, {"sinks": ["otel"]})
    headwater_otel.disable()
    assert got.requests == 0


def test_the_otel_sink_traces_one_run_when_tracing_is_not_on_for_all(
    receiver: tuple[OtlpReceiver, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    got, url = receiver
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", url)
    headwater_otel.disable()  # not every run ...
    build_rag().invoke(QUESTION, {"configurable": {"thread_id": "quiet"}})
    build_rag().invoke(QUESTION, {"sinks": ["otel"], "configurable": {"thread_id": "named"}})
    headwater_otel.disable()
    tree = SpanTree(got.wait_for(lambda spans: len(spans) >= len(RAG_TREE)))
    assert tree.render() == RAG_TREE  # ... only the one that names the sink
    assert {s.attributes.get("headwater.thread_id") for s in tree.spans} == {"named"}


@pytest.mark.anyio
async def test_naming_the_sink_while_every_run_is_traced_does_not_trace_it_twice(
    receiver: tuple[OtlpReceiver, str], provider: TracerProvider
) -> None:
    got, _ = receiver
    await build_rag().ainvoke(QUESTION, {"sinks": ["otel"]})
    provider.force_flush()
    tree = SpanTree(got.wait_for(lambda spans: len(spans) >= len(RAG_TREE)))
    assert tree.render() == RAG_TREE


@pytest.mark.parametrize("spec", ["otel:http://elsewhere:4318", "otel:x"])
def test_the_otel_sink_takes_no_target(spec: str) -> None:
    with pytest.raises(InvalidInputError, match="The otel sink takes no target"):
        build_rag().invoke(QUESTION, {"sinks": [spec]})


def test_enable_checks_its_arguments() -> None:
    with pytest.raises(InvalidInputError, match="takes an OpenTelemetry TracerProvider"):
        headwater_otel.enable("http://127.0.0.1:4318")
    with pytest.raises(InvalidInputError, match="capture_content"):
        headwater_otel.enable(capture_content="yes")  # type: ignore[arg-type]


def test_the_content_switch_comes_from_the_environment(
    receiver: tuple[OtlpReceiver, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    got, url = receiver
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", url)
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "true")
    one_model_graph(FakeChatModel(["ok"])).invoke({"messages": ["secret question"]})
    headwater_otel.disable()
    spans = got.wait_for(lambda spans: len(spans) >= 3)
    chat = next(s for s in spans if s.name == "chat fake-model")
    assert "secret question" in chat.attributes["gen_ai.input.messages"]


def test_grpc_is_refused_with_a_clear_log_and_the_run_still_works(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    with caplog.at_level(logging.ERROR, logger="headwater_otel"):
        out = build_rag().invoke(QUESTION)
    assert out["messages"][-1].content == "The sum is 5."
    assert "exports OTLP over HTTP only" in caplog.text


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("OTEL_BSP_MAX_QUEUE_SIZE", "0"),
        ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "0"),
        ("OTEL_BSP_SCHEDULE_DELAY", "-1"),
    ],
)
def test_an_environment_the_sdk_refuses_is_logged_and_fails_no_run(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, name: str, value: str
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", closed_port_url())
    monkeypatch.setenv(name, value)
    with caplog.at_level(logging.ERROR, logger="headwater_otel"):
        for _ in range(2):
            out = build_rag().invoke(QUESTION, {"sinks": ["otel"]})
            assert out["messages"][-1].content == "The sum is 5."
    errors = [r for r in caplog.records if r.name == "headwater_otel"]
    assert len(errors) == 1  # once, not once per run
    assert "cannot set up tracing from the OTEL_* environment" in errors[0].getMessage()


def test_a_collector_that_is_down_fails_no_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", closed_port_url())
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "1")  # export right away: into the void
    monkeypatch.setenv("OTEL_BSP_EXPORT_TIMEOUT", "500")  # the final flush gives up soon
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1")  # and the exporter's retries too
    for _ in range(3):
        out = build_rag().invoke(QUESTION)
        assert out["messages"][-1].content == "The sum is 5."
    headwater_otel.disable()  # returns: the flush is bounded


def test_a_slow_collector_holds_no_run_and_the_span_queue_is_bounded(
    receiver: tuple[OtlpReceiver, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    got, url = receiver
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", url)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "60")
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "8")
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "4")
    got.hold()  # every export now hangs inside the collector
    app = build_busy(200)
    assert app.invoke({"n": 0}) == {"n": 200}  # 202 spans made, none waited for
    got.release()
    headwater_otel.disable()
    spans = got.wait_for(lambda spans: len(spans) >= 1)
    # One batch was on its way, the queue held 8; the other spans were dropped, not kept.
    assert len(spans) <= 4 + 8


def test_disable_stops_tracing_every_run(
    receiver: tuple[OtlpReceiver, str], provider: TracerProvider
) -> None:
    got, _ = receiver
    headwater_otel.disable()
    build_rag().invoke(QUESTION)
    provider.force_flush()
    assert got.requests == 0
