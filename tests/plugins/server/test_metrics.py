"""Prometheus metrics on ``GET /metrics``, read by a real uvicorn on loopback and parsed
with prometheus-client's own text parser: counts match the runs made."""

from __future__ import annotations

import json
from typing import Any, TypedDict

import httpx
import pytest
from headwater_server import create_app
from httpx_ws import connect_ws
from prometheus_client.parser import text_string_to_metric_families

from headwater import END, START, StateGraph
from tests.fixtures.loopback import serving
from tests.plugins.server.test_server import chat_graph

KEY = {"Authorization": "Bearer k1"}


class Question(TypedDict, total=False):
    question: str
    fail: bool


def failing_graph() -> Any:
    async def boom(state: Question) -> dict[str, Any]:
        raise ValueError("no answer")

    graph = StateGraph(Question)
    graph.add_node("boom", boom)
    graph.add_edge(START, "boom")
    graph.add_edge("boom", END)
    return graph.compile(name="failing")


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition: ``(name, sorted labels) -> value``."""
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(found: dict[Any, float], name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def sse_events(url: str, body: dict[str, Any]) -> list[str]:
    with httpx.stream("POST", f"{url}/workflow/stream", json=body, headers=KEY) as response:
        assert response.status_code == 200, response.read()
        return [line[7:] for line in response.iter_lines() if line.startswith("event: ")]


def test_metrics_count_the_runs_tokens_and_clients() -> None:
    app = create_app(
        {"chat": chat_graph(), "failing": failing_graph()}, api_keys=["k1"], metrics=True
    )
    with serving(app) as url:
        tokens = 0
        for _ in range(3):
            events = sse_events(url, {"graph": "chat", "input": {"messages": ["hi"]}})
            assert events[-1] == "end"
            tokens += events.count("on_chat_model_stream")
        messages = sse_events(
            url, {"graph": "chat", "input": {"messages": ["hi"]}, "stream_mode": "messages"}
        )
        tokens += messages.count("messages")
        assert sse_events(url, {"graph": "failing", "input": {"question": "?"}})[-1] == "error"
        with (
            httpx.Client() as client,
            connect_ws(f"{url}/ws/workflow", client, headers=dict(KEY)) as ws,  # it adds to them
        ):
            ws.send_text(json.dumps({"graph": "chat", "state": {"messages": ["hi"]}}))
            while True:
                message = json.loads(ws.receive_text())
                tokens += message["type"] == "on_chat_model_stream"
                if message["type"] == "end":
                    break
        response = httpx.get(f"{url}/metrics", headers=KEY)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    found = samples(response.text)
    assert tokens > 10
    assert value(found, "headwater_runs_started_total", graph="chat") == 5
    assert value(found, "headwater_runs_started_total", graph="failing") == 1
    assert value(found, "headwater_runs_finished_total", graph="chat", status="done") == 5
    assert value(found, "headwater_runs_finished_total", graph="failing", status="error") == 1
    assert value(found, "headwater_runs_failed_total", graph="failing") == 1
    assert value(found, "headwater_runs_failed_total", graph="chat") == 0
    assert value(found, "headwater_run_duration_seconds_count", graph="chat") == 5
    assert value(found, "headwater_time_to_first_token_seconds_count", graph="chat") == 5
    assert value(found, "headwater_time_to_first_token_seconds_count", graph="failing") == 0
    assert value(found, "headwater_tokens_streamed_total", graph="chat") == tokens
    assert value(found, "headwater_clients_connected", transport="sse") == 0  # all gone
    assert value(found, "headwater_clients_connected", transport="websocket") == 0
    assert value(found, "headwater_info", role="server") == 1


def test_connected_clients_are_counted_while_they_follow_a_run() -> None:
    from tests.plugins.server.test_server import slow_graph

    app = create_app({"slow": slow_graph(steps=200, pause=0.05)}, metrics=True)
    with serving(app) as url:
        with httpx.stream(
            "POST", f"{url}/workflow/stream", json={"input": {"steps": []}, "stream_mode": "custom"}
        ) as response:
            lines = response.iter_lines()
            while not next(lines).startswith("event: custom"):
                pass  # the run streams: its client is connected
            found = samples(httpx.get(f"{url}/metrics").text)
            assert value(found, "headwater_clients_connected", transport="sse") == 1
            assert value(found, "headwater_runs_started_total", graph="slow") == 1
            assert value(found, "headwater_runs_finished_total", graph="slow", status="done") == 0
        # The client went away: its run is cancelled, and it is no longer counted.
        for _ in range(200):
            found = samples(httpx.get(f"{url}/metrics").text)
            if value(found, "headwater_runs_finished_total", graph="slow", status="cancelled"):
                break
        assert value(found, "headwater_runs_finished_total", graph="slow", status="cancelled") == 1
        assert value(found, "headwater_clients_connected", transport="sse") == 0


def test_metrics_are_behind_the_api_key() -> None:
    with serving(create_app(chat_graph(), api_keys=["k1"], metrics=True)) as url:
        refused = httpx.get(f"{url}/metrics")
        wrong = httpx.get(f"{url}/metrics", headers={"Authorization": "Bearer nope"})
        allowed = httpx.get(f"{url}/metrics", headers=KEY)
    assert refused.status_code == wrong.status_code == 401
    assert refused.json()["error"] == "unauthorized"
    assert allowed.status_code == 200 and "headwater_runs_started_total" in allowed.text


def test_metrics_are_off_unless_switched_on() -> None:
    with serving(create_app(chat_graph())) as url:
        assert sse_events_open(url)[-1] == "end"
        response = httpx.get(f"{url}/metrics")
    assert response.status_code == 404
    body = response.json()
    assert body["error"] == "metrics_off"
    assert "metrics=True" in body["detail"] and "--metrics" in body["detail"]


def sse_events_open(url: str) -> list[str]:
    with httpx.stream("POST", f"{url}/workflow/stream", json={"input": {"messages": ["hi"]}}) as r:
        return [line[7:] for line in r.iter_lines() if line.startswith("event: ")]


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_metrics_take_only_get(method: str) -> None:
    with serving(create_app(chat_graph(), metrics=True)) as url:
        response = httpx.request(method, f"{url}/metrics")
    assert response.status_code == 405
    assert response.json()["error"] == "method_not_allowed"


def test_create_app_refuses_a_metrics_value_it_does_not_know() -> None:
    with pytest.raises(ValueError, match="metrics must be True, False or a Metrics"):
        create_app(chat_graph(), metrics="yes")  # type: ignore[arg-type]


def test_agent_protocol_runs_count_too() -> None:
    """A run through the LangGraph protocol routes counts as a run, its ``messages-tuple``
    chunks as tokens and its follower as a connected client, as native runs do."""
    app = create_app({"chat": chat_graph()}, api_keys=["k1"], metrics=True)
    with serving(app) as url:
        body = {"assistant_id": "chat", "input": {"messages": ["hi"]}}
        with httpx.stream(
            "POST",
            f"{url}/runs/stream",
            json={**body, "stream_mode": "messages-tuple"},
            headers={"x-api-key": "k1"},
        ) as response:
            assert response.status_code == 200, response.read()
            events = [line[7:] for line in response.iter_lines() if line.startswith("event: ")]
        response = httpx.get(f"{url}/metrics", headers=KEY)
    found = samples(response.text)
    assert events[0] == "metadata"
    assert events.count("messages") > 3
    assert value(found, "headwater_runs_started_total", graph="chat") == 1
    assert value(found, "headwater_runs_finished_total", graph="chat", status="done") == 1
    assert value(found, "headwater_tokens_streamed_total", graph="chat") == events.count("messages")
    assert value(found, "headwater_clients_connected", transport="sse") == 0
