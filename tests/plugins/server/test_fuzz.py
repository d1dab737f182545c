"""Property-based fuzzing of a live server (uvicorn on loopback): random JSON bodies, raw
bytes, headers and WebSocket frames. Whatever arrives, the answer is a 2xx or a JSON 4xx
(never a 500 or a cut stream), the server stays up, and another client's stream,
running all along, is intact."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from headwater_server._requests import RUN_FIELDS
from httpx_ws import connect_ws
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

KEY = "fuzz-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
CANARY_STEPS = 60


APP = (
    textwrap.dedent(
        """
    import operator
    from typing import Annotated, TypedDict

    import anyio
    from headwater import END, START, StateGraph, get_stream_writer
    from headwater_server import create_app

    class Steps(TypedDict):
        steps: Annotated[list[int], operator.add]

    def counting(pause, count):
        async def step(state):
            n = len(state.get("steps") or [])
            get_stream_writer()({"n": n})
            await anyio.sleep(pause)
            return {"steps": [n]}

        def again(state):
            return "step" if len(state.get("steps") or []) < count else END

        graph = StateGraph(Steps)
        graph.add_node("step", step)
        graph.add_edge(START, "step")
        graph.add_conditional_edges("step", again, ["step", END])
        return graph

    graphs = {
        "fast": counting(0.0, 3).compile(name="fast", checkpointer="memory:"),
        "canary": counting(0.05, CANARY_STEPS).compile(name="canary"),
    }
    app = create_app(graphs, api_keys=["KEY"], heartbeat=0.5, first_message_timeout=1.0)
    """
    )
    .replace("CANARY_STEPS", str(CANARY_STEPS))
    .replace("KEY", KEY)
)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    # The server runs in its own process: hypothesis must see no other thread drawing on
    # the `random` module while it generates examples.
    root = tmp_path_factory.mktemp("fuzz")
    (root / "fuzz_app.py").write_text(APP)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "fuzz_app:app", "--host", "127.0.0.1",
         "--port", str(port), "--log-level", "warning"],
        cwd=root, env={**os.environ, "PYTHONPATH": os.pathsep.join([str(root), *sys.path])},
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(f"{url}/graphs", headers=AUTH, timeout=1).raise_for_status()
            break
        except httpx.HTTPError:
            assert server.poll() is None and time.monotonic() < deadline, "no server"
            time.sleep(0.1)
    try:
        with httpx.Client(base_url=url, timeout=10, headers=AUTH) as client:
            yield from _with_canary(url, client)
    finally:
        server.terminate()
        _, errors = server.communicate(timeout=20)
    assert "Traceback" not in errors, errors[-3000:]


def _with_canary(url: str, client: httpx.Client) -> Iterator[dict[str, Any]]:
    """Another client's run, followed all along the fuzzing: it must come out whole."""
    body = {"graph": "canary", "input": {"steps": []}, "stream_mode": "custom",
            "config": {"recursion_limit": 100}}  # fmt: skip
    run = client.post("/runs", json=body).json()["run_id"]
    seen: list[dict[str, str]] = []

    def follow() -> None:
        with (
            httpx.Client(base_url=url, timeout=60, headers=AUTH) as own,
            own.stream("GET", f"/runs/{run}/stream") as response,
        ):
            frame: dict[str, str] = {}
            for line in response.iter_lines():
                if not line:
                    if "event" in frame:
                        seen.append(frame)
                    frame = {}
                elif not line.startswith(":"):
                    field, _, value = line.partition(": ")
                    frame[field] = value

    follower = threading.Thread(target=follow)
    follower.start()
    yield {"url": url, "client": client}
    follower.join(60)
    assert seen and seen[-1]["event"] == "end", seen[-3:]
    customs = [json.loads(f["data"])["n"] for f in seen if f["event"] == "custom"]
    assert customs == list(range(CANARY_STEPS))  # nothing lost, nothing out of order
    assert [int(f["id"]) for f in seen] == list(range(1, len(seen) + 1))


def check(response: httpx.Response) -> None:
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"error", "detail"} and body["detail"]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=12,
)
plausible = {
    "graph": st.sampled_from(["fast", "canary", "nope"]) | json_values,
    "input": st.fixed_dictionaries({"steps": st.lists(st.integers(), max_size=2)}) | json_values,
    "thread_id": st.sampled_from(["t1", "t2"]) | json_values,
    "stream_mode": st.sampled_from(["values", "updates", "custom", ["custom", "values"], "x"])
    | json_values,
    "multitask_strategy": st.sampled_from(["reject", "enqueue", "interrupt", "rollback"])
    | json_values,
    "config": st.fixed_dictionaries(
        {},
        optional={
            "recursion_limit": st.integers(-5, 2000) | json_values,
            "tags": st.lists(st.text(max_size=5), max_size=3) | json_values,
            "metadata": json_values,
            "configurable": json_values,
        },
    )
    | json_values,
    "timeout": st.floats(allow_nan=False) | json_values,
}
run_bodies = st.fixed_dictionaries(
    {}, optional={k: plausible.get(k, json_values) for k in RUN_FIELDS}
) | st.dictionaries(st.sampled_from(RUN_FIELDS) | st.text(max_size=8), json_values, max_size=4)
raw_bodies = (
    st.binary(max_size=64)
    | st.integers(1, 3000).map(lambda n: ("[" * n + "]" * n).encode())
    | st.text(max_size=40).map(lambda t: json.dumps(t).replace("a", "\\ud800").encode())
)
header_text = st.text(
    st.characters(min_codepoint=32, max_codepoint=255, exclude_characters="\x7f"), max_size=30
).map(str.strip)
content_types = (
    st.sampled_from(
        [
            "application/json",
            "application/json; charset=utf-8",
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data",
            "application/vnd.x+json",
        ]
    )
    | header_text
)
ids = st.sampled_from(["t1", "t2", "%1Fowner%3At1", "x" * 300, "../graphs"]) | st.text(
    st.characters(min_codepoint=48, max_codepoint=122), min_size=1, max_size=12
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=run_bodies, path=st.sampled_from(["/runs", "/workflow/stream"]))
def test_random_run_requests(live: dict[str, Any], body: dict[str, Any], path: str) -> None:
    client: httpx.Client = live["client"]
    with client.stream(
        "POST", path, content=json.dumps(body), headers={"content-type": "application/json"}
    ) as response:
        if response.status_code == 200:  # an SSE stream: read it to its end
            lines = list(response.iter_lines())
            events = [line for line in lines if line.startswith("event: ")]
            assert events and events[-1] in ("event: end", "event: error", "event: cancelled"), (
                lines[-5:]
            )
        else:
            response.read()
            check(response)
    assert client.get("/graphs").status_code == 200


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    raw=raw_bodies,
    kind=content_types,
    origin=st.none() | st.sampled_from(["https://evil.example", "null"]) | header_text,
    key=st.sampled_from([KEY, "wrong", ""]) | header_text,
    path=st.sampled_from(["/runs", "/workflow/stream", "/threads"]),
)
def test_random_bytes_and_headers(
    live: dict[str, Any], raw: bytes, kind: str, origin: str | None, key: str, path: str
) -> None:
    client: httpx.Client = live["client"]
    headers = {
        "content-type": kind.encode("latin-1"),
        "authorization": f"Bearer {key}".strip().encode("latin-1"),
    }
    if origin:
        headers["origin"] = origin.encode("latin-1")
    response = client.post(path, content=raw, headers=headers)
    check(response)
    assert client.get("/graphs").status_code == 200


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    method=st.sampled_from(["GET", "POST"]),
    template=st.sampled_from(
        [
            "/threads/{}/state",
            "/threads/{}/history",
            "/runs/{}",
            "/runs/{}/stream",
            "/runs/{}/cancel",
        ]
    ),
    ident=ids,
    query=st.dictionaries(
        st.sampled_from(["graph", "limit", "last_event_id", "api_key"]), header_text, max_size=3
    ),
    last=st.none() | header_text,
)
def test_random_ids_and_queries(
    live: dict[str, Any],
    method: str,
    template: str,
    ident: str,
    query: dict[str, str],
    last: str | None,
) -> None:
    client: httpx.Client = live["client"]
    headers = {"last-event-id": last.encode("latin-1")} if last else {}
    with httpx.Client(base_url=live["url"], timeout=httpx.Timeout(10, read=3), headers=AUTH) as own:
        try:
            with own.stream(
                method, template.format(ident), params=query, headers=headers
            ) as response:
                if response.status_code == 200 and "event-stream" in response.headers.get(
                    "content-type", ""
                ):
                    for line in response.iter_lines():
                        if line.startswith("event: ") and line[7:] in ("end", "error", "cancelled"):
                            break
                else:
                    response.read()
                    check(response)
        except httpx.ReadTimeout:
            pass  # a live run's stream: it keeps going, which is right
    assert client.get("/graphs").status_code == 200


frames = st.lists(
    st.one_of(
        json_values.map(json.dumps),
        run_bodies.map(json.dumps),
        st.just(json.dumps({"type": "cancel"})),
        st.integers(1, 2500).map(lambda n: "[" * n + "]" * n),
        st.binary(max_size=20),
        st.text(max_size=20),
    ),
    min_size=0,
    max_size=4,
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(messages=frames)
def test_random_websocket_frames(live: dict[str, Any], messages: list[Any]) -> None:
    client: httpx.Client = live["client"]
    with httpx.Client(timeout=5, headers=AUTH) as own:
        try:
            with connect_ws(
                f"{live['url']}/ws/workflow", own, keepalive_ping_interval_seconds=None
            ) as ws:
                for message in messages:
                    if isinstance(message, bytes):
                        ws.send_bytes(message)
                    else:
                        ws.send_text(message)
                for _ in range(200):
                    reply = json.loads(ws.receive_text(timeout=3))
                    assert "type" in reply
                    if reply["type"] in ("end", "error", "cancelled"):
                        break
        except Exception as exc:  # the server closed the socket (while the client still
            # sent: wsproto's LocalProtocolError), or a receive timed out
            assert type(exc).__name__ in (
                "WebSocketDisconnect", "TimeoutError", "Empty", "WebSocketNetworkError",
                "LocalProtocolError",
            ), repr(exc)  # fmt: skip
    assert client.get("/graphs").status_code == 200
