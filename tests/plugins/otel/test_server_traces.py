"""W3C trace context through the server: a request's ``traceparent`` header becomes the
parent of its run's spans (SSE, background runs, WebSocket), received by a real OTLP/HTTP
receiver from a real uvicorn on loopback."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from headwater_server import create_app
from httpx_ws import connect_ws
from opentelemetry.sdk.trace import TracerProvider

from tests.fixtures.loopback import serving
from tests.fixtures.otlp import OtlpReceiver, ReceivedSpan, SpanTree
from tests.plugins.otel._graphs import RAG_TREE, build_rag, build_rag_served

TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE}-{PARENT}-01"
BODY = {"input": {"messages": ["What is 2 plus 3?"]}}


def _flush(provider: TracerProvider) -> None:
    assert provider.force_flush(10_000)


def _run_trees(receiver: OtlpReceiver, runs: int) -> dict[str, SpanTree]:
    """The received spans by trace id, once ``runs`` complete run trees arrived."""

    def whole(spans: list[ReceivedSpan]) -> bool:
        return sum(s.name == "invoke_workflow rag" for s in spans) >= runs and len(spans) >= (
            runs * len(RAG_TREE)
        )

    spans = receiver.wait_for(whole)
    by_trace: dict[str, list[ReceivedSpan]] = {}
    for span in spans:
        by_trace.setdefault(span.trace_id, []).append(span)
    return {trace: SpanTree(found) for trace, found in by_trace.items()}


def _stream(url: str, headers: dict[str, str], body: dict[str, Any] = BODY) -> list[str]:
    with httpx.stream("POST", f"{url}/workflow/stream", json=body, headers=headers) as response:
        assert response.status_code == 200, response.read()
        return [line for line in response.iter_lines() if line.startswith("event:")]


def test_a_traceparent_header_makes_the_run_a_child_of_the_callers_span(
    receiver: tuple[OtlpReceiver, str], provider: TracerProvider
) -> None:
    got, _ = receiver
    with serving(create_app(build_rag())) as url:
        events = _stream(url, {"traceparent": TRACEPARENT, "tracestate": "vendor=abc"})
    assert events[-1] == "event: end"
    _flush(provider)
    trees = _run_trees(got, 1)
    assert list(trees) == [TRACE]
    tree = trees[TRACE]
    assert tree.render() == RAG_TREE
    root = tree.roots()[0]
    assert root.name == "invoke_workflow rag" and root.parent_id == PARENT


def test_background_runs_and_websockets_take_the_header_too(
    receiver: tuple[OtlpReceiver, str], provider: TracerProvider
) -> None:
    got, _ = receiver
    other = "4bf92f3577b34da6a3ce929d0e0e4736"
    with serving(create_app(build_rag_served())) as url:
        made = httpx.post(f"{url}/runs", json=BODY, headers={"traceparent": TRACEPARENT})
        assert made.status_code == 202, made.text
        run_id = made.json()["run_id"]
        with httpx.stream("GET", f"{url}/runs/{run_id}/stream") as response:
            assert [line for line in response.iter_lines() if line.startswith("event:")][-1] == (
                "event: end"
            )
        socket_parent = f"00-{other}-00f067aa0ba902b7-01"
        with (
            httpx.Client() as client,
            connect_ws(f"{url}/ws/workflow", client, headers={"traceparent": socket_parent}) as ws,
        ):
            ws.send_text(json.dumps(BODY))
            while json.loads(ws.receive_text())["type"] != "end":
                pass
    _flush(provider)
    trees = _run_trees(got, 2)
    assert sorted(trees) == sorted([TRACE, other])
    assert trees[other].roots()[0].parent_id == "00f067aa0ba902b7"
    assert all(tree.render() == RAG_TREE for tree in trees.values())


@pytest.mark.parametrize(
    "header",
    [
        "not-a-traceparent",
        f"00-{TRACE}-{PARENT}-01-extra",  # version 00 ends at the flags
        f"ff-{TRACE}-{PARENT}-01",  # version ff is invalid
        f"00-{TRACE.upper()}-{PARENT}-01",  # hex is lower case
        f"00-{'0' * 32}-{PARENT}-01",  # an all-zero trace id
        "00-" + "a" * 5000,
    ],
)
def test_a_malformed_traceparent_is_ignored_and_the_run_starts_its_own_trace(
    receiver: tuple[OtlpReceiver, str], provider: TracerProvider, header: str
) -> None:
    got, _ = receiver
    with serving(create_app(build_rag())) as url:
        assert _stream(url, {"traceparent": header})[-1] == "event: end"
    _flush(provider)
    trees = _run_trees(got, 1)
    [(trace, tree)] = trees.items()
    assert trace not in (TRACE, "0" * 32)
    assert tree.roots()[0].parent_id == ""
    assert tree.render() == RAG_TREE


def test_a_traceparent_in_the_body_metadata_wins_over_the_header(
    receiver: tuple[OtlpReceiver, str], provider: TracerProvider
) -> None:
    got, _ = receiver
    mine = f"00-{'1' * 32}-{'2' * 16}-01"
    body = {**BODY, "config": {"metadata": {"traceparent": mine}}}
    with serving(create_app(build_rag())) as url:
        assert _stream(url, {"traceparent": TRACEPARENT}, body)[-1] == "event: end"
    _flush(provider)
    assert list(_run_trees(got, 1)) == ["1" * 32]


def test_the_header_reaches_the_runs_metadata_without_any_tracing_plugin() -> None:
    # The server only carries the context; with no tracer it is plain metadata, seen by
    # the graph's events like any other.
    with serving(create_app(build_rag())) as url:
        with httpx.stream(
            "POST",
            f"{url}/workflow/stream",
            json=BODY,
            headers={"traceparent": TRACEPARENT},
        ) as response:
            text = "".join(response.iter_text())
    assert TRACEPARENT in text


def test_agent_protocol_runs_take_the_header_too(
    receiver: tuple[OtlpReceiver, str], provider: TracerProvider
) -> None:
    """The LangGraph protocol's ``POST /runs/wait`` (what ``client.runs.wait`` sends) makes
    its run a child of the caller's span, as the native routes do."""
    got, _ = receiver
    with serving(create_app(build_rag())) as url:
        done = httpx.post(
            f"{url}/runs/wait",
            json={"assistant_id": "rag", **BODY},
            headers={"traceparent": TRACEPARENT},
            timeout=60,
        )
        assert done.status_code == 200, done.text
    _flush(provider)
    trees = _run_trees(got, 1)
    assert list(trees) == [TRACE]
    assert trees[TRACE].render() == RAG_TREE
    assert trees[TRACE].roots()[0].parent_id == PARENT
