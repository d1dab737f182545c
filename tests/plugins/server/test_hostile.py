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
        serving(create_app(steps_graph(count=20))) as url,
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
        serving(create_app(steps_graph(count=20))) as url,
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
        serving(create_app(steps_graph(count=20))) as url,
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

            def send(i: int, thread: str = thread) -> None:
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
        serving(create_app(steps_graph(db, count=20), broker=redis_url)) as a,
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
