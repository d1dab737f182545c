"""headwater-server over a real uvicorn on loopback: SSE, runs, WebSocket, auth, limits."""

from __future__ import annotations

import json
import operator
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Annotated, Any, TypedDict

import anyio
import httpx
import pytest
from fixtures.loopback import serving
from headwater_server import create_app, mount
from httpx_ws import connect_ws

from headwater import END, START, StateGraph, get_stream_writer
from headwater.broker import MemoryBroker
from headwater.messages import add_messages
from headwater.testing.fake import FakeChatModel

# -- graphs ---------------------------------------------------------------------------


class Chat(TypedDict):
    messages: Annotated[list[Any], add_messages]


def chat_graph(delay: float = 0.0) -> Any:
    llm = FakeChatModel(["Rivers flow to the sea"], token_delay=delay, cycle=True)

    async def chat_node(state: Chat) -> dict[str, Any]:
        return {"messages": [await llm.ainvoke(state["messages"])]}

    graph = StateGraph(Chat)
    graph.add_node("chat_node", chat_node, tags=["llm"])
    graph.add_edge(START, "chat_node")
    graph.add_edge("chat_node", END)
    return graph.compile(name="chat", checkpointer="memory:")


class Slow(TypedDict):
    steps: Annotated[list[int], operator.add]


CANCELLED: list[str] = []


def slow_graph(steps: int = 40, pause: float = 0.05) -> Any:
    async def tick(state: Slow) -> dict[str, Any]:
        try:
            get_stream_writer()({"at": len(state["steps"])})
            await anyio.sleep(pause)
        except anyio.get_cancelled_exc_class():
            CANCELLED.append("tick")
            raise
        return {"steps": [len(state["steps"])]}

    def again(state: Slow) -> str:
        return "tick" if len(state["steps"]) < steps else END

    graph = StateGraph(Slow)
    graph.add_node("tick", tick)
    graph.add_edge(START, "tick")
    graph.add_conditional_edges("tick", again, ["tick", END])
    return graph.compile(name="slow", checkpointer="memory:")


# -- a real server: fixtures.loopback.serving -------------------------------------------


def frames(lines: Iterator[str]) -> Iterator[dict[str, str]]:
    """Parse an SSE stream into {"id", "event", "data"} frames (comments dropped)."""
    frame: dict[str, str] = {}
    for line in lines:
        if not line:
            if "event" in frame:
                yield frame
            frame = {}
        elif not line.startswith(":"):
            field, _, value = line.partition(": ")
            frame[field] = value
    if "event" in frame:
        yield frame


def sse(client: httpx.Client, method: str, url: str, **kw: Any) -> list[dict[str, str]]:
    with client.stream(method, url, **kw) as response:
        assert response.status_code == 200, response.read()
        return list(frames(response.iter_lines()))


@pytest.fixture
def app_url() -> Iterator[str]:
    with serving(create_app({"chat": chat_graph(), "slow": slow_graph()})) as url:
        yield url


# -- SSE --------------------------------------------------------------------------------


def test_sse_stream_follows_the_spec_contract(app_url: str) -> None:
    with httpx.Client(base_url=app_url, timeout=10) as client:
        with client.stream(
            "POST",
            "/workflow/stream",
            json={"graph": "chat", "thread_id": "t1", "state": {"messages": ["hi"]}},
        ) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            assert response.headers["cache-control"] == "no-cache"
            assert response.headers["x-accel-buffering"] == "no"
            got = list(frames(response.iter_lines()))
    ids = [int(f["id"]) for f in got if "id" in f]
    assert ids == list(range(1, len(ids) + 1))
    tokens = [json.loads(f["data"]) for f in got if f.get("event") == "on_chat_model_stream"]
    assert "".join(t["chunk"]["content"] for t in tokens) == "Rivers flow to the sea"  # spec JS
    meta = tokens[0]["_event"]
    assert meta["name"] == "chat_node" and meta["tags"] == ["llm"]
    assert meta["metadata"]["thread_id"] == "t1" and meta["run_id"]
    ends = [json.loads(f["data"]) for f in got if f.get("event") == "on_chain_end"]
    assert ends[-1]["output"]["messages"][-1]["content"] == "Rivers flow to the sea"  # spec JS
    assert got[-1]["event"] == "end"


def test_stream_modes_are_named_by_mode(app_url: str) -> None:
    with httpx.Client(base_url=app_url, timeout=10) as client:
        got = sse(
            client,
            "POST",
            "/workflow/stream",
            json={
                "graph": "slow",
                "input": {"steps": list(range(38))},
                "stream_mode": ["updates", "custom"],
            },
        )
    kinds = [f["event"] for f in got]
    assert kinds[:2] == ["custom", "updates"] and kinds[-1] == "end"
    assert json.loads(got[1]["data"]) == {"tick": {"steps": [38]}}


def test_langchain_run_types_filter_the_stream_and_unknown_ones_are_rejected(
    app_url: str,
) -> None:
    with httpx.Client(base_url=app_url, timeout=10) as client:
        body = {"graph": "chat", "input": {"messages": ["hi"]}, "include_types": ["chat_model"]}
        kinds = {f["event"] for f in sse(client, "POST", "/workflow/stream", json=body)}
        assert kinds - {"end"} == {
            "on_chat_model_start",
            "on_chat_model_stream",
            "on_chat_model_end",
        }
        response = client.post("/workflow/stream", json={**body, "include_types": ["tools"]})
        assert response.status_code == 400
        assert response.json()["error"] == "InvalidFilterError"
        assert "Did you mean 'tool'?" in response.json()["detail"]


def test_runs_can_be_joined_late_and_resumed_with_last_event_id(app_url: str) -> None:
    with httpx.Client(base_url=app_url, timeout=10) as client:
        started = client.post("/runs", json={"graph": "chat", "input": {"messages": ["hi"]}})
        assert started.status_code == 202
        run_id = started.json()["run_id"]
        everything = sse(client, "GET", f"/runs/{run_id}/stream")
        assert client.get(f"/runs/{run_id}").json()["status"] == "done"
        cut = int(everything[4]["id"])
        rest = sse(client, "GET", f"/runs/{run_id}/stream", headers={"Last-Event-ID": str(cut)})
        assert rest == everything[5:]  # no gap, no duplicate
        bad = client.get(f"/runs/{run_id}/stream", headers={"Last-Event-ID": "abc"})
        assert bad.status_code == 400 and bad.json()["error"] == "bad_last_event_id"


def test_expired_last_event_id_tells_the_client_to_restart() -> None:
    app = create_app({"chat": chat_graph()}, broker=MemoryBroker(retention=3))
    with serving(app) as url, httpx.Client(base_url=url, timeout=10) as client:
        run_id = client.post("/runs", json={"input": {"messages": ["hi"]}}).json()["run_id"]
        sse(client, "GET", f"/runs/{run_id}/stream")
        late = sse(client, "GET", f"/runs/{run_id}/stream", headers={"Last-Event-ID": "1"})
    assert late[0]["event"] == "error"
    assert json.loads(late[0]["data"])["type"] == "expired"
    assert "restart from the thread's state" in json.loads(late[0]["data"])["message"]


def test_cancel_a_run() -> None:
    CANCELLED.clear()
    # Long ticks, and the cancel sent once a tick has begun: it lands inside the node (a
    # cancel between two ticks would leave nothing for the node to see).
    with (
        serving(create_app({"slow": slow_graph(pause=5.0)})) as url,
        httpx.Client(base_url=url, timeout=10) as client,
    ):
        run_id = client.post("/runs", json={"input": {"steps": []}}).json()["run_id"]
        with client.stream("GET", f"/runs/{run_id}/stream") as response:
            for line in response.iter_lines():
                if line.startswith("event: on_custom_event"):
                    break
        assert client.post(f"/runs/{run_id}/cancel").json()["status"] == "cancelled"
        final = sse(client, "GET", f"/runs/{run_id}/stream")
    assert final[-1]["event"] == "cancelled"
    assert CANCELLED == ["tick"]


# -- disconnects ------------------------------------------------------------------------


def _leave_early(url: str, body: dict[str, Any]) -> None:
    with httpx.Client(base_url=url, timeout=10) as client:
        with client.stream("POST", "/workflow/stream", json=body) as response:
            for line in response.iter_lines():
                if line.startswith("event: on_custom_event"):
                    break  # the client goes away mid-run


def test_client_disconnect_cancels_the_run_by_default() -> None:
    CANCELLED.clear()
    app = create_app({"slow": slow_graph()})
    with serving(app) as url:
        _leave_early(url, {"input": {"steps": []}, "thread_id": "gone"})
        server = app.state.headwater
        deadline = time.monotonic() + 5
        while not all(r.finished for r in server.runs.values()):
            assert time.monotonic() < deadline, "run still going after its client left"
            time.sleep(0.02)
        assert [r.status for r in server.runs.values()] == ["cancelled"]
        assert CANCELLED == ["tick"]


def test_on_disconnect_continue_lets_the_run_finish_and_checkpoint() -> None:
    app = create_app({"slow": slow_graph(steps=5, pause=0.01)}, on_disconnect="continue")
    with serving(app) as url:
        _leave_early(url, {"input": {"steps": []}, "thread_id": "keep"})
        server = app.state.headwater
        record = next(iter(server.runs.values()))
        deadline = time.monotonic() + 5
        while not record.finished:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert record.status == "done"
        with httpx.Client(base_url=url, timeout=10) as client:
            state = client.get("/threads/keep/state").json()
        assert state["values"]["steps"] == [0, 1, 2, 3, 4]


def test_finished_runs_are_evicted_beyond_the_cap() -> None:
    app = create_app({"chat": chat_graph()}, max_runs=3)
    with serving(app) as url, httpx.Client(base_url=url, timeout=10) as client:
        for _ in range(6):
            sse(client, "POST", "/workflow/stream", json={"input": {"messages": ["x"]}})
        assert len(app.state.headwater.runs) <= 4


# -- WebSocket --------------------------------------------------------------------------


def test_websocket_spec_contract_and_cancel(app_url: str) -> None:
    with httpx.Client(base_url=app_url, timeout=10) as client:
        with connect_ws(f"{app_url}/ws/workflow", client) as ws:
            ws.send_text(
                json.dumps({"graph": "chat", "thread_id": "w1", "state": {"messages": ["hi"]}})
            )
            messages = []
            while True:
                message = json.loads(ws.receive_text())
                messages.append(message)
                if message["type"] == "end":
                    break
        tokens = [m for m in messages if m["type"] == "on_chat_model_stream"]
        assert "".join(m["data"]["chunk"]["content"] for m in tokens) == "Rivers flow to the sea"
        assert set(tokens[0]) >= {"type", "name", "data", "run_id", "tags", "metadata"}
        assert tokens[0]["name"] == "chat_node" and tokens[0]["metadata"]["thread_id"] == "w1"

        CANCELLED.clear()
        with connect_ws(f"{app_url}/ws/workflow", client) as ws:
            ws.send_text(json.dumps({"graph": "slow", "state": {"steps": []}}))
            assert json.loads(ws.receive_text())["type"] == "on_chain_start"
            ws.send_text(json.dumps({"type": "cancel"}))
            kinds = []
            while True:
                kinds.append(json.loads(ws.receive_text())["type"])
                if kinds[-1] in ("cancelled", "end"):
                    break
        assert kinds[-1] == "cancelled" and CANCELLED == ["tick"]


def test_websocket_bad_first_message(app_url: str) -> None:
    with (
        httpx.Client(base_url=app_url, timeout=10) as client,
        connect_ws(f"{app_url}/ws/workflow", client) as ws,
    ):
        ws.send_text("not json")
        reply = json.loads(ws.receive_text())
    assert reply == {
        "type": "error",
        "error": "malformed_json",
        "detail": "The first message must be a JSON object.",
    }


# -- security and bad input -------------------------------------------------------------


def test_api_keys_and_thread_ownership() -> None:
    app = create_app({"chat": chat_graph()}, api_keys=["alice-key", "bob-key"])
    alice = {"Authorization": "Bearer alice-key"}
    bob = {"Authorization": "Bearer bob-key"}
    with serving(app) as url, httpx.Client(base_url=url, timeout=10) as client:
        assert client.get("/graphs").status_code == 401
        assert client.get("/graphs", headers={"Authorization": "Bearer wrong"}).status_code == 401
        thread = client.post("/threads", headers=alice, json={}).json()["thread_id"]
        sse(
            client,
            "POST",
            "/workflow/stream",
            headers=alice,
            json={"thread_id": thread, "input": {"messages": ["hi"]}},
        )
        assert client.get(f"/threads/{thread}/state", headers=alice).status_code == 200
        assert client.get(f"/threads/{thread}/state", headers=bob).status_code == 404
        taken = client.post(
            "/workflow/stream",
            headers=bob,
            json={"thread_id": thread, "input": {"messages": ["x"]}},
        )
        assert taken.status_code == 404
        run = client.post("/runs", headers=alice, json={"input": {"messages": ["hi"]}}).json()[
            "run_id"
        ]
        assert client.get(f"/runs/{run}", headers=bob).status_code == 404
        history = client.get(f"/threads/{thread}/history", headers=alice).json()
        assert [h["metadata"]["source"] for h in history] == ["loop", "input"]


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        (b"{nope", 400, "malformed_json"),
        (b"[1, 2]", 400, "bad_request"),
        (json.dumps({"graph": "missing"}).encode(), 404, "unknown_graph"),
        (
            json.dumps({"graph": "chat", "stream_mode": "valuez"}).encode(),
            400,
            "UnknownStreamModeError",
        ),
        (json.dumps({"graph": "chat", "stream_mode": 5}).encode(), 400, "UnknownStreamModeError"),
        (
            json.dumps({"graph": "chat", "filters": ["no_such_filter"]}).encode(),
            400,
            "InvalidFilterError",
        ),
        (json.dumps({"graph": "chat", "include_names": 5}).encode(), 400, "InvalidFilterError"),
        (json.dumps({"graph": "chat", "input": {"bogus": 1}}).encode(), 400, "InvalidInputError"),
        (json.dumps({"graph": "chat", "config": {"callbacks": []}}).encode(), 400, "bad_config"),
        (json.dumps({"graph": "chat", "thread_id": 7}).encode(), 400, "bad_thread_id"),
        (b"x" * 2_000_000, 413, "body_too_large"),
    ],
)
def test_bad_requests_get_json_errors_and_the_server_stays_up(
    app_url: str, body: bytes, status: int, error: str
) -> None:
    with httpx.Client(base_url=app_url, timeout=10) as client:
        response = client.post(
            "/workflow/stream", content=body, headers={"content-type": "application/json"}
        )
        assert response.status_code == status
        assert response.json()["error"] == error and response.json()["detail"]
        assert client.get("/graphs").status_code == 200


def test_openapi_and_index(app_url: str) -> None:
    with httpx.Client(base_url=app_url, timeout=10) as client:
        schema = client.get("/openapi.json").json()
        assert {"/workflow/stream", "/runs", "/runs/{run_id}/stream"} <= set(schema["paths"])
        page = client.get("/")
        assert page.status_code == 200 and "EventSource" in page.text


# -- CLI --------------------------------------------------------------------------------


def test_headwater_run_renders_the_stream() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "headwater", "run", "headwater_server._demo:build_demo",
         "--input", json.dumps({"question": "Where do rivers flow?"})],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "✓ router" in done.stdout and "✓ summarise" in done.stdout
    assert "Rivers begin in mountains" in done.stdout  # tokens rendered inline
    assert '"summary": "In short: rivers run from the hills to the sea."' in done.stdout
    assert done.stderr.startswith("thread: ")


def test_headwater_run_errors_are_readable() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "headwater", "run", "headwater_server._demo:build_demo",
         "--input", '{"nope": 1}'],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1
    assert "error: Input of graph 'demo' has unknown key(s) ['nope']" in done.stderr
    assert "Traceback" not in done.stderr


def test_headwater_run_filters_by_run_type() -> None:
    command = [sys.executable, "-m", "headwater", "run", "headwater_server._demo:build_demo",
               "--input", json.dumps({"question": "Where do rivers flow?"})]  # fmt: skip
    done = subprocess.run(
        [*command, "--include-types", "chat_model"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "Rivers begin in mountains" in done.stdout  # tokens, but no node lines
    assert "✓" not in done.stdout and '"summary"' not in done.stdout
    bad = subprocess.run(
        [*command, "--exclude-types", "tools"], capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 1
    assert "error: exclude_types got 'tools', which matches no event." in bad.stderr


def test_mount_into_an_existing_app() -> None:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def hello(request: Any) -> PlainTextResponse:
        return PlainTextResponse("hello from the host app")

    host = Starlette(routes=[Route("/hello", hello)])
    mount(host, "/hw", {"chat": chat_graph()})
    with serving(host) as url, httpx.Client(base_url=url, timeout=10) as client:
        assert client.get("/hello").text == "hello from the host app"
        assert client.get("/hw/graphs").json()[0]["name"] == "chat"
        got = sse(client, "POST", "/hw/workflow/stream", json={"input": {"messages": ["hi"]}})
        assert got[-1]["event"] == "end"
        run = client.post("/hw/runs", json={"input": {"messages": ["hi"]}}).json()["run_id"]
        assert sse(client, "GET", f"/hw/runs/{run}/stream")[-1]["event"] == "end"


BURST = 200_000


def burst_app(n: int, *, pace: bool) -> Any:
    class Burst(TypedDict):
        n: int

    async def burst(state: Burst, *, writer: Any) -> dict[str, int]:
        for i in range(n):
            if pace:
                await writer.awrite({"i": i})  # waits only while the publisher is behind
            else:
                writer({"i": i})  # never awaits
        return {"n": n}

    graph = StateGraph(Burst)
    graph.add_node("burst", burst)
    graph.add_edge(START, "burst")
    return create_app({"burst": graph.compile()})


def test_a_burst_of_events_streams_while_the_node_writes_it() -> None:
    app = burst_app(BURST, pace=True)
    with serving(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        body = {"graph": "burst", "state": {"n": 0}, "stream_mode": "custom"}
        with client.stream("POST", "/workflow/stream", json=body) as response:
            lines = response.iter_lines()
            for line in lines:
                if line.startswith("event: custom"):
                    break
            runs = list(app.state.headwater.runs.values())
            assert [r.status for r in runs] == ["running"]  # the first event came mid-run
            count = 1 + sum(line.startswith("event: custom") for line in lines)
    assert count == BURST


def test_a_node_that_never_awaits_streams_every_event_up_to_the_bound_then_fails_clearly() -> None:
    body = {"graph": "burst", "state": {"n": 0}, "stream_mode": "custom"}
    with serving(burst_app(60_000, pace=False)) as url, httpx.Client(base_url=url) as client:
        events = sse(client, "POST", "/workflow/stream", json=body)
        assert [e["event"] for e in events].count("custom") == 60_000
        assert events[-1]["event"] == "end"
    with serving(burst_app(BURST, pace=False)) as url, httpx.Client(base_url=url) as client:
        events = sse(client, "POST", "/workflow/stream", json=body)
        error = json.loads(events[-1]["data"])
        assert events[-1]["event"] == "error" and error["type"] == "StreamWriterError"
        assert "await writer.awrite(payload)" in error["message"]
        assert [e["event"] for e in events].count("custom") < 70 * 1024  # bounded
