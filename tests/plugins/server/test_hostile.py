"""Issue 13: the server against an attacker and an unlucky operator (real uvicorn on loopback).

Each test here failed on the server before the fix it names: a node that kills the
server, threads taken over by another key, runs interleaving on a thread, malformed
requests answered with a 500 or a cut stream, cross-site requests, streams that never
end.
"""

from __future__ import annotations

import json
import operator
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, TypedDict

import anyio
import httpx
import pytest
from fixtures.loopback import serving
from headwater_server import create_app
from httpx_ws import WebSocketDisconnect, connect_ws

from headwater import END, START, StateGraph, get_stream_writer
from headwater.broker import MemoryBroker
from headwater.messages import add_messages
from headwater.testing.fake import FakeChatModel

# -- graphs ------------------------------------------------------------------------------


class Chat(TypedDict):
    messages: Annotated[list[Any], add_messages]


def chat_graph(checkpointer: str = "memory:", name: str = "chat") -> Any:
    llm = FakeChatModel(["Rivers flow to the sea"], cycle=True)

    async def chat_node(state: Chat) -> dict[str, Any]:
        return {"messages": [await llm.ainvoke(state["messages"])]}

    graph = StateGraph(Chat)
    graph.add_node("chat_node", chat_node)
    graph.add_edge(START, "chat_node")
    graph.add_edge("chat_node", END)
    return graph.compile(name=name, checkpointer=checkpointer)


class Steps(TypedDict):
    steps: Annotated[list[str], operator.add]


def steps_graph(checkpointer: Any = "memory:", pause: float = 0.05, count: int = 6) -> Any:
    """Appends `count` steps named after the run's input tag, pausing between them; a run
    that interleaves with another shows mixed tags."""

    async def step(state: Steps) -> dict[str, Any]:
        tag = state["steps"][-1].split(":")[0] if state["steps"] else "?"
        get_stream_writer()({"step": len(state["steps"])})
        await anyio.sleep(pause)
        return {"steps": [f"{tag}:{len(state['steps'])}"]}

    def again(state: Steps) -> str:
        mine = [s for s in state["steps"] if s.startswith(state["steps"][-1].split(":")[0])]
        return "step" if len(mine) < count else END

    graph = StateGraph(Steps)
    graph.add_node("step", step)
    graph.add_edge(START, "step")
    graph.add_conditional_edges("step", again, ["step", END])
    return graph.compile(name="steps", checkpointer=checkpointer)


def frames(lines: Iterator[str]) -> Iterator[dict[str, str]]:
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


def kinds(events: list[dict[str, str]]) -> list[str]:
    return [e["event"] for e in events]


def wait_for(condition: Any, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


# -- 2. a node cannot kill the server ----------------------------------------------------


class N(TypedDict):
    n: int


def exiting_graph(how: str) -> Any:
    class Custom(BaseException):
        pass

    def sync_exit(state: N) -> dict[str, int]:
        sys.exit(3)

    async def async_exit(state: N) -> dict[str, int]:
        sys.exit("argparse says no")

    def interrupt(state: N) -> dict[str, int]:
        raise KeyboardInterrupt

    async def custom(state: N) -> dict[str, int]:
        raise Custom("mine")

    fn = {"sync_exit": sync_exit, "async_exit": async_exit, "kbd": interrupt, "custom": custom}
    graph = StateGraph(N)
    graph.add_node("boom", fn[how])
    graph.add_edge(START, "boom")
    graph.add_edge("boom", END)
    return graph.compile(name="boom")


@pytest.mark.parametrize("how", ["sync_exit", "async_exit", "kbd", "custom"])
def test_a_node_exiting_fails_its_run_and_the_server_goes_on(how: str) -> None:
    app = create_app({"boom": exiting_graph(how), "chat": chat_graph()})
    with serving(app) as url, httpx.Client(base_url=url, timeout=20) as client:
        got = sse(client, "POST", "/workflow/stream", json={"graph": "boom", "input": {"n": 1}})
        assert got[-1]["event"] == "error"
        error = json.loads(got[-1]["data"])
        expected = {"sync_exit": "SystemExit", "async_exit": "SystemExit", "kbd": "Keyboard"}
        assert expected.get(how, "Custom") in error["message"]
        run = client.post("/runs", json={"graph": "boom", "input": {"n": 1}}).json()
        wait_for(lambda: client.get(f"/runs/{run['run_id']}").json()["status"] == "error")
        # ...and the process serves on: other runs, other requests.
        assert client.get("/graphs").status_code == 200
        ok = sse(
            client,
            "POST",
            "/workflow/stream",
            json={"graph": "chat", "input": {"messages": ["hi"]}},
        )
        assert ok[-1]["event"] == "end"


# -- 1. durable thread ownership ---------------------------------------------------------

ALICE = {"Authorization": "Bearer alice-key"}
BOB = {"Authorization": "Bearer bob-key"}
KEYS = ["alice-key", "bob-key"]


def _take_over_attempts(client: httpx.Client, thread: str) -> list[int]:
    """Every way bob could reach alice's thread; all must be 404."""
    return [
        client.post("/threads", headers=BOB, json={"thread_id": thread}).status_code,
        client.get(f"/threads/{thread}/state", headers=BOB).status_code,
        client.get(f"/threads/{thread}/history", headers=BOB).status_code,
        client.post(
            "/runs", headers=BOB, json={"thread_id": thread, "input": {"messages": ["x"]}}
        ).status_code,
        client.post(
            "/workflow/stream", headers=BOB, json={"thread_id": thread, "input": {"messages": []}}
        ).status_code,
        client.post(
            "/runs",
            headers=BOB,
            json={"config": {"configurable": {"thread_id": thread}}, "input": {"messages": []}},
        ).status_code,
    ]


def test_thread_ownership_survives_a_restart(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'threads.db'}"
    with (
        serving(create_app(chat_graph(db), api_keys=KEYS)) as url,
        httpx.Client(base_url=url, timeout=10) as client,
    ):
        thread = client.post("/threads", headers=ALICE, json={}).json()["thread_id"]
        body = {"thread_id": thread, "input": {"messages": ["hi"]}}
        assert (
            sse(client, "POST", "/workflow/stream", headers=ALICE, json=body)[-1]["event"] == "end"
        )
    # The server restarts: nothing of the first process's memory is left.
    with (
        serving(create_app(chat_graph(db), api_keys=KEYS)) as url,
        httpx.Client(base_url=url, timeout=10) as client,
    ):
        assert _take_over_attempts(client, thread) == [404] * 6
        state = client.get(f"/threads/{thread}/state", headers=ALICE)
        assert state.status_code == 200
        assert [m["content"] for m in state.json()["values"]["messages"]] == [
            "hi",
            "Rivers flow to the sea",
        ]
        again = {"thread_id": thread, "input": {"messages": ["more"]}}
        assert (
            sse(client, "POST", "/workflow/stream", headers=ALICE, json=again)[-1]["event"] == "end"
        )


def test_thread_ownership_is_shared_by_instances(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'shared.db'}"
    with (
        serving(create_app(chat_graph(db), api_keys=KEYS)) as a,
        serving(create_app(chat_graph(db), api_keys=KEYS)) as b,
        httpx.Client(timeout=10) as client,
    ):
        thread = client.post(f"{a}/threads", headers=ALICE, json={}).json()["thread_id"]
        client.base_url = httpx.URL(b)
        assert _take_over_attempts(client, thread) == [404] * 6
        assert client.get(f"/threads/{thread}/state", headers=ALICE).status_code == 200


def test_a_thread_with_state_but_no_owner_is_nobodys_with_api_keys(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'scripted.db'}"
    graph = chat_graph(db)
    graph.invoke({"messages": ["written by a script"]}, {"configurable": {"thread_id": "t-old"}})
    with (
        serving(create_app(graph, api_keys=KEYS)) as url,
        httpx.Client(base_url=url, timeout=10) as client,
    ):
        for who in (ALICE, BOB):
            assert (
                client.post("/threads", headers=who, json={"thread_id": "t-old"}).status_code == 404
            )
            assert client.get("/threads/t-old/state", headers=who).status_code == 404
    with serving(create_app(graph)) as url, httpx.Client(base_url=url, timeout=10) as client:
        assert client.get("/threads/t-old/state").status_code == 200  # an open server: anyone


def test_owner_records_are_out_of_every_clients_reach(tmp_path: Path) -> None:
    app = create_app(chat_graph(f"sqlite:///{tmp_path / 'o.db'}"), api_keys=KEYS)
    with serving(app) as url, httpx.Client(base_url=url, timeout=10) as client:
        thread = client.post("/threads", headers=ALICE, json={}).json()["thread_id"]
        record = "\x1fowner:" + thread
        path = "/threads/%1Fowner%3A" + thread + "/state"
        assert client.get(path, headers=ALICE).status_code == 400
        reply = client.post("/threads", headers=ALICE, json={"thread_id": record})
        assert reply.status_code == 400 and reply.json()["error"] == "bad_thread_id"


def test_runs_belong_to_their_key_on_every_instance() -> None:
    from headwater.testing.services import service_url

    redis_url = service_url("HEADWATER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0", _redis_ping)
    graph = steps_graph()
    with (
        serving(create_app(graph, api_keys=KEYS, broker=redis_url)) as a,
        serving(create_app(graph, api_keys=KEYS, broker=redis_url)) as b,
        httpx.Client(timeout=10) as client,
    ):
        run = client.post(f"{a}/runs", headers=ALICE, json={"input": {"steps": ["r:0"]}}).json()
        for path in ("", "/stream"):
            assert client.get(f"{b}/runs/{run['run_id']}{path}", headers=BOB).status_code == 404
        assert client.post(f"{b}/runs/{run['run_id']}/cancel", headers=BOB).status_code == 404
        events = sse(client, "GET", f"{b}/runs/{run['run_id']}/stream", headers=ALICE)
        assert events[-1]["event"] == "end"
        assert client.get(f"{b}/runs/{run['run_id']}", headers=ALICE).json()["status"] == "done"


def _redis_ping(url: str) -> None:
    import redis

    redis.Redis.from_url(url, socket_connect_timeout=3).ping()


# -- 4. multitask strategies: no interleaving on a thread ----------------------------------


def tags(state: dict[str, Any]) -> list[str]:
    return [s.split(":")[0] for s in state["values"]["steps"]]


def blocks(sequence: list[str]) -> list[str]:
    """The runs' tags in the order their blocks appear; a tag seen twice interleaved."""
    out: list[str] = []
    for tag in sequence:
        if not out or out[-1] != tag:
            assert tag not in out, f"runs interleaved on the thread: {sequence}"
            out.append(tag)
    return out


def start(client: httpx.Client, url: str, tag: str, thread: str, **body: Any) -> httpx.Response:
    return client.post(
        f"{url}/runs", json={"thread_id": thread, "input": {"steps": [f"{tag}:start"]}, **body}
    )


def test_a_second_run_on_a_busy_thread_is_rejected_by_default() -> None:
    with (
        serving(create_app(steps_graph(pause=0.1, count=20))) as url,
        httpx.Client(timeout=20) as client,
    ):
        first = start(client, url, "A", "busy").json()
        second = start(client, url, "B", "busy")
        assert second.status_code == 409
        assert second.json()["error"] == "thread_busy"
        assert first["run_id"] in second.json()["detail"]
        assert sse(client, "GET", f"{url}/runs/{first['run_id']}/stream")[-1]["event"] == "end"
        assert start(client, url, "C", "busy").status_code == 202  # free again


def test_enqueued_runs_run_one_after_the_other_in_order() -> None:
    with serving(create_app(steps_graph())) as url, httpx.Client(timeout=20) as client:
        runs = [start(client, url, tag, "line", multitask_strategy="enqueue") for tag in "ABC"]
        assert [r.status_code for r in runs] == [202] * 3
        assert [r.json()["status"] for r in runs[1:]] == ["queued", "queued"]
        for run in runs:
            assert (
                sse(client, "GET", f"{url}/runs/{run.json()['run_id']}/stream")[-1]["event"]
                == "end"
            )
        state = client.get(f"{url}/threads/line/state").json()
        assert blocks(tags(state)) == ["A", "B", "C"]


def test_interrupt_stops_the_running_run_and_keeps_its_progress() -> None:
    with (
        serving(create_app(steps_graph(pause=0.1, count=20))) as url,
        httpx.Client(timeout=20) as client,
    ):
        first = start(client, url, "A", "cut").json()
        with client.stream("GET", f"{url}/runs/{first['run_id']}/stream") as response:
            for frame in frames(response.iter_lines()):
                if frame["event"] == "on_custom_event" and json.loads(frame["data"])["step"] >= 3:
                    break
        second = start(client, url, "B", "cut", multitask_strategy="interrupt")
        assert second.status_code == 202
        old = sse(client, "GET", f"{url}/runs/{first['run_id']}/stream")
        assert old[-1]["event"] == "cancelled"
        assert json.loads(old[-1]["data"])["reason"] == "interrupt"
        assert client.get(f"{url}/runs/{first['run_id']}").json()["status"] == "cancelled"
        new = sse(client, "GET", f"{url}/runs/{second.json()['run_id']}/stream")
        assert new[-1]["event"] == "end"
        sequence = tags(client.get(f"{url}/threads/cut/state").json())
        assert blocks(sequence) == ["A", "B"]
        assert 3 <= sequence.count("A") < 21  # A's steps so far were kept


def test_rollback_stops_the_running_run_and_undoes_its_writes() -> None:
    with (
        serving(create_app(steps_graph(pause=0.1, count=20))) as url,
        httpx.Client(timeout=20) as client,
    ):
        fast = start(client, url, "Z", "undo", timeout=30).json()
        assert sse(client, "GET", f"{url}/runs/{fast['run_id']}/stream")[-1]["event"] == "end"
        before = client.get(f"{url}/threads/undo/state").json()["values"]
        first = start(client, url, "A", "undo").json()
        with client.stream("GET", f"{url}/runs/{first['run_id']}/stream") as response:
            for frame in frames(response.iter_lines()):
                if frame["event"] == "on_custom_event":
                    break
        second = start(client, url, "B", "undo", multitask_strategy="rollback").json()
        old = sse(client, "GET", f"{url}/runs/{first['run_id']}/stream")
        assert json.loads(old[-1]["data"])["reason"] == "rollback"
        assert sse(client, "GET", f"{url}/runs/{second['run_id']}/stream")[-1]["event"] == "end"
        sequence = tags(client.get(f"{url}/threads/undo/state").json())
        assert blocks(sequence) == ["Z", "B"]  # nothing of A is left
        assert sequence[: len(before["steps"])] == ["Z"] * len(before["steps"])


def test_concurrent_messages_to_one_thread_are_never_lost() -> None:
    # Before: concurrent runs on a thread interleaved, and one client's message was lost
    # in 3 of 10 trials. Enqueued, every message lands, each run seeing the one before.
    with serving(create_app(chat_graph())) as url, httpx.Client(timeout=30) as client:
        for trial in range(3):
            thread = f"race-{trial}"
            replies: list[int] = []

            def send(i: int, thread: str = thread, replies: list[int] = replies) -> None:
                body = {
                    "thread_id": thread,
                    "input": {"messages": [f"message {i}"]},
                    "multitask_strategy": "enqueue",
                }
                with httpx.Client(base_url=url, timeout=30) as own:
                    replies.append(len(sse(own, "POST", "/workflow/stream", json=body)))

            senders = [threading.Thread(target=send, args=(i,)) for i in range(6)]
            for t in senders:
                t.start()
            for t in senders:
                t.join(30)
            assert len(replies) == 6
            messages = client.get(f"{url}/threads/{thread}/state").json()["values"]["messages"]
            sent = sorted(m["content"] for m in messages if m["type"] == "human")
            assert sent == sorted(f"message {i}" for i in range(6))
            kinds_ = [m["type"] for m in messages]
            assert kinds_ == ["human", "ai"] * 6  # each run answered before the next began


def test_multitask_strategies_hold_across_instances(tmp_path: Path) -> None:
    from headwater.testing.services import service_url

    redis_url = service_url("HEADWATER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0", _redis_ping)
    db = f"sqlite:///{tmp_path / 'both.db'}"
    thread = f"across-{time.monotonic_ns()}"
    with (
        serving(create_app(steps_graph(db, pause=0.2, count=20), broker=redis_url)) as a,
        serving(create_app(steps_graph(db, count=4), broker=redis_url)) as b,
        httpx.Client(timeout=30) as client,
    ):
        first = start(client, a, "A", thread).json()
        refused = start(client, b, "B", thread)
        assert refused.status_code == 409 and first["run_id"] in refused.json()["detail"]
        second = start(client, b, "C", thread, multitask_strategy="interrupt")
        assert second.status_code == 202 and second.json()["status"] == "queued"
        old = sse(client, "GET", f"{b}/runs/{first['run_id']}/stream")
        assert old[-1]["event"] == "cancelled"
        assert json.loads(old[-1]["data"])["reason"] == "interrupt"
        new = sse(client, "GET", f"{a}/runs/{second.json()['run_id']}/stream")
        assert new[-1]["event"] == "end"
        assert blocks(tags(client.get(f"{b}/threads/{thread}/state").json())) == ["A", "C"]


# -- 9. every malformed request is a JSON 4xx naming the field -------------------------------


@pytest.fixture(scope="module")
def open_url() -> Iterator[str]:
    app = create_app({"chat": chat_graph(), "steps": steps_graph()})
    with serving(app) as url:
        yield url


DEEP = "[" * 3000 + "]" * 3000
NESTED = {"input": {"messages": [json.loads("[" * 150 + "]" * 150)]}}


@pytest.mark.parametrize(
    ("body", "status", "error", "named"),
    [
        ({"graph": "chat", "config": {"configurable": [1]}}, 400, "bad_config", "configurable"),
        ({"graph": "chat", "config": {"configurable": "t1"}}, 400, "bad_config", "configurable"),
        ({"graph": "chat", "config": {"tags": "llm"}}, 400, "bad_config", "config.tags"),
        ({"graph": "chat", "config": {"tags": [1, 2]}}, 400, "bad_config", "config.tags"),
        ({"graph": "chat", "config": {"metadata": [1]}}, 400, "bad_config", "config.metadata"),
        ({"graph": "chat", "config": []}, 400, "bad_config", "config"),
        ({"graph": "chat", "config": {"recursion_limit": 10**18}}, 400, "bad_config", "10007"),
        ({"graph": "chat", "config": {"recursion_limit": True}}, 400, "bad_config", "recursion"),
        ({"graph": "chat", "inputs": {}}, 400, "unknown_field", "'input'"),
        ({"graph": "chat", "include_typez": []}, 400, "unknown_field", "include_types"),
        ({"graph": ["chat"]}, 404, "unknown_graph", "graphs"),
        ({"graph": "chat", "thread_id": "a\nb"}, 400, "bad_thread_id", "thread_id"),
        ({"graph": "chat", "thread_id": "x" * 201}, 400, "bad_thread_id", "thread_id"),
        ({"graph": "chat", "multitask_strategy": "later"}, 400, "bad_multitask_strategy", "reject"),
        ({"graph": "chat", "timeout": -1}, 400, "bad_timeout", "timeout"),
        ({"graph": "chat", "timeout": "1"}, 400, "bad_timeout", "timeout"),
        ({"graph": "chat", "stream_mode": []}, 400, "UnknownStreamModeError", "stream_mode"),
        ({"graph": "chat", "input": {"a": 1}, "state": {}}, 400, "bad_request", "not both"),
        ({"graph": "chat", **NESTED}, 400, "too_deep", "100 levels"),
        (DEEP, 400, "too_deep", "levels"),
        ('{"graph": "chat", "input": {"messages": ["\\ud800"]}}', 400, "bad_string", "messages"),
        ('{"graph": "chat", "thread_id": "\\udfff"}', 400, "bad_string", "thread_id"),
        (b'{"graph": "chat", "input": "\xff\xfe"}', 400, "malformed_json", "not valid JSON"),
    ],
)
def test_a_malformed_run_request_is_a_json_4xx_naming_the_field(
    open_url: str, body: Any, status: int, error: str, named: str
) -> None:
    content = body if isinstance(body, bytes | str) else json.dumps(body)
    with httpx.Client(base_url=open_url, timeout=10) as client:
        for path in ("/workflow/stream", "/runs"):
            reply = client.post(path, content=content, headers={"content-type": "application/json"})
            assert reply.status_code == status, reply.text
            assert reply.json()["error"] == error
            assert named in reply.json()["detail"]
        assert client.get("/graphs").status_code == 200


@pytest.mark.parametrize(
    "key",
    [
        "ключ".encode(),  # UTF-8 bytes in a header (read as latin-1 text)
        b"\xff\xfe\xfd",
        "alice-key\u00e9".encode("latin-1"),
    ],
)
def test_non_ascii_api_keys_are_401_not_500(key: bytes) -> None:
    app = create_app(chat_graph(), api_keys=["alice-key", "sch\u00fcssel"])
    with serving(app) as url, httpx.Client(base_url=url, timeout=10) as client:
        reply = client.get("/graphs", headers={"Authorization": b"Bearer " + key})
        assert reply.status_code == 401 and reply.json()["error"] == "unauthorized"
        for query in ("?api_key=%D0%BA%D0%BB", "?api_key=%ED%A0%80", "?api_key=%FF"):
            assert client.get("/graphs" + query).status_code == 401
        assert client.get("/graphs?api_key=sch%C3%BCssel").status_code == 200  # UTF-8 works


@pytest.mark.parametrize(
    "last", ["abc", "-1", "1.5", "\u0661", "9" * 40, "1-2", "7 8", "0x1", "\u00b2"]
)
def test_odd_last_event_ids_are_400(open_url: str, last: str) -> None:
    with httpx.Client(base_url=open_url, timeout=10) as client:
        run = client.post("/runs", json={"graph": "chat", "input": {"messages": ["hi"]}}).json()
        reply = client.get(f"/runs/{run['run_id']}/stream", params={"last_event_id": last})
        assert reply.status_code == 400 and reply.json()["error"] == "bad_last_event_id"
        header = client.get(
            f"/runs/{run['run_id']}/stream", headers={"Last-Event-ID": last.encode()}
        )
        assert header.status_code == 400


@pytest.mark.parametrize("limit", ["0", "-3", "1001", "ten", "\u00b2", "\u0661"])
def test_a_bad_history_limit_is_400(open_url: str, limit: str) -> None:
    with httpx.Client(base_url=open_url, timeout=10) as client:
        thread = client.post("/threads", json={}).json()["thread_id"]
        reply = client.get(f"/threads/{thread}/history", params={"graph": "chat", "limit": limit})
        assert reply.status_code == 400 and reply.json()["error"] == "bad_limit"


def test_other_endpoints_refuse_unknown_fields(open_url: str) -> None:
    with httpx.Client(base_url=open_url, timeout=10) as client:
        reply = client.post("/threads", json={"thread_id": "t", "metadta": {}})
        assert reply.status_code == 400 and "'metadta'" in reply.json()["detail"]
        assert client.post("/threads", json=[1]).status_code == 400
        run = client.post("/runs", json={"graph": "chat", "input": {"messages": ["x"]}}).json()
        reply = client.post(f"/runs/{run['run_id']}/cancel", json={"force": True})
        assert reply.status_code == 400


def test_deep_websocket_frames_are_refused_and_the_run_still_cancels(open_url: str) -> None:
    with httpx.Client(base_url=open_url, timeout=20) as client:
        with connect_ws(f"{open_url}/ws/workflow", client) as ws:
            ws.send_text(DEEP)
            reply = json.loads(ws.receive_text())
        assert reply["type"] == "error" and reply["error"] == "too_deep"

        with connect_ws(f"{open_url}/ws/workflow", client) as ws:
            ws.send_text(json.dumps({"graph": "steps", "input": {"steps": ["w:0"]}}))
            assert json.loads(ws.receive_text())["type"] == "on_chain_start"
            for frame in (DEEP, '"\\ud800"', "x" * 2_000_000, "[]", '{"type": 5}'):
                ws.send_text(frame)  # ignored, whatever it is
            ws.send_text(json.dumps({"type": "cancel"}))
            seen = []
            with pytest.raises(WebSocketDisconnect):
                while True:
                    seen.append(json.loads(ws.receive_text())["type"])
        assert seen[-1] == "cancelled"
        assert client.get("/graphs").status_code == 200


def test_a_websocket_client_leaving_after_a_deep_frame_cancels_its_run() -> None:
    app = create_app({"steps": steps_graph(pause=0.1, count=20)})
    with serving(app) as url, httpx.Client(timeout=20) as client:
        with connect_ws(f"{url}/ws/workflow", client) as ws:
            ws.send_text(json.dumps({"input": {"steps": ["w:0"]}}))
            assert json.loads(ws.receive_text())["type"] == "on_chain_start"
            ws.send_text(DEEP)
        runs = app.state.headwater.runs
        wait_for(lambda: all(r.finished for r in runs.values()))
        assert [r.status for r in runs.values()] == ["cancelled"]


# -- 5. cross-site requests --------------------------------------------------------------


def test_non_json_bodies_are_refused(open_url: str) -> None:
    body = json.dumps({"graph": "chat", "input": {"messages": ["hi"]}})
    with httpx.Client(base_url=open_url, timeout=10) as client:
        for kind in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
            for path in ("/runs", "/workflow/stream", "/threads"):
                reply = client.post(path, content=body, headers={"content-type": kind})
                assert reply.status_code == 415, (path, kind)
                assert reply.json()["error"] == "unsupported_media_type"
        assert client.post("/runs", content=body).status_code == 415  # no type at all
        run = client.post("/runs", json=json.loads(body)).json()["run_id"]
        cancel = f"/runs/{run}/cancel"
        assert client.post(cancel, headers={"content-type": "text/plain"}).status_code == 415
        assert client.post(cancel).status_code == 200  # no body, no type: not a browser form
        reply = client.post(
            "/runs", content=body, headers={"content-type": "application/json; charset=utf-8"}
        )
        assert reply.status_code == 202


def test_other_sites_cannot_post_or_open_websockets(open_url: str) -> None:
    body = {"graph": "chat", "input": {"messages": ["hi"]}}
    with httpx.Client(base_url=open_url, timeout=10) as client:
        evil = {"Origin": "https://evil.example"}
        for path in ("/runs", "/workflow/stream", "/threads"):
            reply = client.post(path, json=body if path != "/threads" else {}, headers=evil)
            assert reply.status_code == 403 and reply.json()["error"] == "forbidden_origin"
        assert client.post("/runs", json=body, headers={"Origin": "null"}).status_code == 403
        same = {"Origin": open_url}
        assert client.post("/runs", json=body, headers=same).status_code == 202
        assert client.get("/graphs", headers=evil).status_code == 200  # reads are not CSRF
        with pytest.raises(Exception):  # noqa: B017 - the handshake is refused (403)
            with connect_ws(f"{open_url}/ws/workflow", client, headers=evil):
                pass
        with connect_ws(f"{open_url}/ws/workflow", client, headers=same) as ws:
            ws.send_text(json.dumps(body))
            assert json.loads(ws.receive_text())["type"] == "on_chain_start"


def test_allowed_origins_get_cors() -> None:
    app = create_app(chat_graph(), allowed_origins=["https://app.example"])
    ok = {"Origin": "https://app.example"}
    with serving(app) as url, httpx.Client(base_url=url, timeout=10) as client:
        body = {"input": {"messages": ["hi"]}}
        reply = client.post("/runs", json=body, headers=ok)
        assert reply.status_code == 202
        assert reply.headers["access-control-allow-origin"] == "https://app.example"
        preflight = client.options(
            "/runs",
            headers={**ok, "Access-Control-Request-Method": "POST",
                     "Access-Control-Request-Headers": "content-type,authorization"},
        )  # fmt: skip
        assert preflight.status_code == 200
        assert "POST" in preflight.headers["access-control-allow-methods"]
        other = client.post("/runs", json=body, headers={"Origin": "https://evil.example"})
        assert other.status_code == 403 and "access-control-allow-origin" not in other.headers


# -- 7. runs without end ---------------------------------------------------------------------


def test_a_run_timeout_stops_a_looping_run_with_a_clear_error() -> None:
    class Loop(TypedDict):
        n: int

    async def spin(state: Loop) -> dict[str, int]:
        await anyio.sleep(0.05)
        return {"n": state["n"] + 1}

    graph = StateGraph(Loop)
    graph.add_node("spin", spin)
    graph.add_edge(START, "spin")
    graph.add_conditional_edges("spin", lambda s: "spin", ["spin"])
    app = create_app(graph.compile(name="loop"), max_run_timeout=60, max_recursion_limit=1000)
    with serving(app) as url, httpx.Client(base_url=url, timeout=20) as client:
        body = {"input": {"n": 0}, "timeout": 0.5, "config": {"recursion_limit": 1000}}
        got = sse(client, "POST", "/workflow/stream", json=body)
        assert got[-1]["event"] == "error"
        error = json.loads(got[-1]["data"])
        assert error["type"] == "RunTimeoutError" and "timeout of 0.5" in error["message"]
        too_long = client.post("/runs", json={**body, "timeout": 61})
        assert too_long.status_code == 400 and "maximum of 60 s" in too_long.json()["detail"]
        higher = client.post("/runs", json={**body, "config": {"recursion_limit": 1001}})
        assert higher.status_code == 400


def test_history_has_a_default_limit() -> None:
    with serving(create_app(chat_graph())) as url, httpx.Client(base_url=url, timeout=20) as c:
        for _ in range(8):
            body = {"thread_id": "long", "input": {"messages": ["again"]}}
            assert sse(c, "POST", "/workflow/stream", json=body)[-1]["event"] == "end"
        assert len(c.get("/threads/long/history").json()) == 10  # of 16 checkpoints
        assert len(c.get("/threads/long/history?limit=14").json()) == 14


# -- 8. streams that end ---------------------------------------------------------------------


def test_reconnecting_at_or_after_the_end_gets_the_terminal_event_again(open_url: str) -> None:
    with httpx.Client(base_url=open_url, timeout=httpx.Timeout(10, read=5)) as client:
        run = client.post("/runs", json={"graph": "chat", "input": {"messages": ["hi"]}}).json()
        everything = sse(client, "GET", f"/runs/{run['run_id']}/stream")
        last = everything[-1]
        assert last["event"] == "end"
        for after in (last["id"], str(int(last["id"]) + 1000)):
            again = sse(client, "GET", f"/runs/{run['run_id']}/stream",
                        headers={"Last-Event-ID": after})  # fmt: skip
            assert again == [last]  # and the stream closed (no read timeout)


def test_redis_reconnects_continue_on_another_instance_and_0_0_is_the_start() -> None:
    from headwater.testing.services import service_url

    redis_url = service_url("HEADWATER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0", _redis_ping)
    graph = steps_graph(count=8)
    with (
        serving(create_app(graph, broker=redis_url)) as a,
        serving(create_app(graph, broker=redis_url)) as b,
        httpx.Client(timeout=httpx.Timeout(20, read=10)) as client,
    ):
        run = client.post(f"{a}/runs", json={"input": {"steps": ["r:0"]}}).json()["run_id"]
        seen: list[dict[str, str]] = []
        with client.stream("GET", f"{a}/runs/{run}/stream") as response:
            for frame in frames(response.iter_lines()):
                seen.append(frame)
                if len(seen) == 5:
                    break  # the connection drops mid-run
        rest = sse(
            client, "GET", f"{b}/runs/{run}/stream", headers={"Last-Event-ID": seen[-1]["id"]}
        )
        everything = sse(client, "GET", f"{b}/runs/{run}/stream")
        assert seen + rest == everything and rest[-1]["event"] == "end"
        from_zero = sse(client, "GET", f"{b}/runs/{run}/stream", headers={"Last-Event-ID": "0-0"})
        assert from_zero == everything  # the start of the log, not "expired"
        at_end = sse(client, "GET", f"{a}/runs/{run}/stream",
                     headers={"Last-Event-ID": everything[-1]["id"]})  # fmt: skip
        assert at_end == [everything[-1]]


# -- 6. bounded memory -----------------------------------------------------------------------


def test_finished_runs_logs_stay_within_the_brokers_byte_bound() -> None:
    broker = MemoryBroker(max_bytes=2 * 2**20, max_run_bytes=2**20)
    llm_tokens = ["tok "] * 3000

    class Talk(TypedDict):
        messages: Annotated[list[Any], add_messages]

    llm = FakeChatModel(["".join(llm_tokens)], cycle=True)

    async def talk(state: Talk) -> dict[str, Any]:
        return {"messages": [await llm.ainvoke(state["messages"])]}

    graph = StateGraph(Talk)
    graph.add_node("talk", talk)
    graph.add_edge(START, "talk")
    app = create_app(graph.compile(name="talk"), broker=broker)
    with serving(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        for _ in range(12):  # each run's log is ~1.5 MB of token events
            assert sse(client, "POST", "/workflow/stream", json={"input": {"messages": ["x"]}})
        assert broker.total_bytes <= 2 * 2**20


def test_thread_owner_cache_is_bounded(open_url: str) -> None:
    app = create_app(chat_graph())
    engine = app.state.headwater
    engine.owners.cache_size = 50
    with serving(app) as url, httpx.Client(base_url=url, timeout=10) as client:
        for _ in range(120):
            assert client.post("/threads", json={}).status_code == 201
        assert len(engine.owners._cache) <= 50
        assert len(engine.broker._local().claims) <= 1  # no thread is busy


def test_runs_held_at_once_are_bounded() -> None:
    app = create_app(steps_graph(pause=0.2, count=20), max_active_runs=2)
    with serving(app) as url, httpx.Client(timeout=20) as client:
        first, second = (start(client, url, tag, f"cap-{tag}").json() for tag in "AB")
        third = start(client, url, "C", "cap-C")
        assert third.status_code == 503 and third.json()["error"] == "too_many_runs"
        for run in (first, second):
            assert sse(client, "GET", f"{url}/runs/{run['run_id']}/stream")[-1]["event"] == "end"
        assert start(client, url, "D", "cap-D").status_code == 202
