"""Issue 15: `headwater serve` speaks the LangGraph server protocol, judged by the official
Python client (`langgraph-sdk`) against real uvicorn on loopback."""

from __future__ import annotations

import asyncio
import operator
from collections.abc import Iterator
from typing import Annotated, Any, TypedDict

import httpx
import pytest
from fixtures.loopback import serving
from headwater_server import create_app
from langgraph_sdk import get_client
from langgraph_sdk.client import LangGraphClient

from headwater import END, START, StateGraph, get_stream_writer, interrupt
from headwater.messages import AIMessage, ToolCall, ToolMessage, add_messages
from headwater.testing.fake import FakeChatModel

ALICE = "alice-key"
BOB = "bob-key"


class Chat(TypedDict):
    messages: Annotated[list[Any], add_messages]


def chat_graph() -> Any:
    """A model that calls a tool, then answers with the tool's result."""
    llm = FakeChatModel(
        [
            AIMessage(
                content="", tool_calls=[ToolCall(name="depth", args={"river": "Nile"}, id="c1")]
            ),
            "The Nile is deep",
        ],
        cycle=True,
    )

    async def agent(state: Chat) -> dict[str, Any]:
        return {"messages": [await llm.ainvoke(state["messages"])]}

    def tools(state: Chat) -> dict[str, Any]:
        call = state["messages"][-1].tool_calls[0]
        get_stream_writer()({"tool": call.name})
        return {"messages": [ToolMessage(content="11 m", tool_call_id=call.id)]}

    def route(state: Chat) -> str:
        return "tools" if state["messages"][-1].tool_calls else END

    graph = StateGraph(Chat)
    graph.add_node("agent", agent)
    graph.add_node("tools", tools)
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", route, ["tools", END])
    graph.add_edge("tools", "agent")
    return graph.compile(name="chat", checkpointer="memory:")


class Review(TypedDict):
    draft: str
    verdict: str
    steps: Annotated[list[str], operator.add]


def review_graph() -> Any:
    """Pauses for a human verdict on the draft."""

    def write(state: Review) -> dict[str, Any]:
        return {"draft": f"draft of {state.get('draft') or 'nothing'}", "steps": ["write"]}

    def ask(state: Review) -> dict[str, Any]:
        verdict = interrupt({"question": "Publish?", "draft": state["draft"]})
        return {"verdict": verdict, "steps": ["ask"]}

    graph = StateGraph(Review)
    graph.add_node("write", write)
    graph.add_node("ask", ask)
    graph.add_edge(START, "write")
    graph.add_edge("write", "ask")
    graph.add_edge("ask", END)
    return graph.compile(name="review", checkpointer="memory:")


class Count(TypedDict):
    steps: Annotated[list[int], operator.add]


def slow_graph(count: int = 8, pause: float = 0.1) -> Any:
    async def step(state: Count) -> dict[str, Any]:
        await asyncio.sleep(pause)
        return {"steps": [len(state["steps"])]}

    def again(state: Count) -> str:
        return "step" if len(state["steps"]) < count else END

    graph = StateGraph(Count)
    graph.add_node("step", step)
    graph.add_edge(START, "step")
    graph.add_conditional_edges("step", again, ["step", END])
    return graph.compile(name="slow", checkpointer="memory:")


def nested_graph() -> Any:
    """A graph whose one node is a subgraph."""

    def inner(state: Count) -> dict[str, Any]:
        return {"steps": [len(state["steps"])]}

    sub = StateGraph(Count)
    sub.add_node("inner", inner)
    sub.add_edge(START, "inner")
    sub.add_edge("inner", END)
    outer = StateGraph(Count)
    outer.add_node("sub", sub.compile(name="sub"))
    outer.add_edge(START, "sub")
    outer.add_edge("sub", END)
    return outer.compile(name="nested", checkpointer="memory:")


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    graphs = {
        "chat": chat_graph(),
        "review": review_graph(),
        "slow": slow_graph(),
        "nested": nested_graph(),
    }
    app = create_app(graphs, api_keys=[ALICE, BOB])
    with serving(app) as base:
        yield base


_OPEN: list[LangGraphClient] = []


def client(url: str, key: str = ALICE) -> LangGraphClient:
    """An SDK client (closed when :func:`run` ends)."""
    made = get_client(url=url, api_key=key)
    _OPEN.append(made)
    return made


def run(coro: Any) -> Any:
    """Run a test's coroutine on asyncio (the SDK's loop), closing its clients after."""

    async def main() -> Any:
        try:
            return await coro
        finally:
            while _OPEN:
                await _OPEN.pop().aclose()

    return asyncio.run(main())


HI = {"messages": [{"role": "user", "content": "How deep is the Nile?"}]}


# -- assistants ---------------------------------------------------------------------------


def test_each_graph_is_an_assistant_by_name_or_id(url: str) -> None:
    async def main() -> None:
        c = client(url)
        found = await c.assistants.search(limit=10)
        assert sorted(a["graph_id"] for a in found) == ["chat", "nested", "review", "slow"]
        by_name = await c.assistants.get("chat")
        by_id = await c.assistants.get(by_name["assistant_id"])
        assert by_id == by_name and by_name["graph_id"] == "chat"
        assert [a["graph_id"] for a in await c.assistants.search(graph_id="review")] == ["review"]
        drawn = await c.assistants.get_graph("chat")
        assert {n["id"] for n in drawn["nodes"]} >= {"__start__", "agent", "tools", "__end__"}
        assert {"source": "tools", "target": "agent"} in [
            {"source": e["source"], "target": e["target"]} for e in drawn["edges"]
        ]
        schemas = await c.assistants.get_schemas("review")
        assert set(schemas["state_schema"]["properties"]) == {"draft", "verdict", "steps"}

    run(main())


def test_an_unknown_assistant_is_a_404_naming_the_graphs(url: str) -> None:
    reply = httpx.get(f"{url}/assistants/nope", headers={"x-api-key": ALICE})
    assert reply.status_code == 404
    assert "chat" in reply.json()["detail"]


# -- threads ------------------------------------------------------------------------------


def test_thread_crud_search_and_copy(url: str) -> None:
    async def main() -> None:
        c = client(url)
        tag = f"crud-{id(c)}"
        thread = await c.threads.create(metadata={"user": "ada", "tag": tag})
        assert thread["status"] == "idle" and thread["metadata"]["user"] == "ada"
        same = await c.threads.create(thread_id=thread["thread_id"], if_exists="do_nothing")
        assert same["thread_id"] == thread["thread_id"]
        with pytest.raises(httpx.HTTPStatusError) as exc:
            await c.threads.create(thread_id=thread["thread_id"], if_exists="raise")
        assert exc.value.response.status_code == 409
        await c.runs.wait(thread["thread_id"], "chat", input=HI)
        got = await c.threads.get(thread["thread_id"])
        assert got["values"]["messages"][-1]["content"] == "The Nile is deep"
        updated = await c.threads.update(thread["thread_id"], metadata={"stage": "done"})
        assert updated["metadata"] == {"user": "ada", "tag": tag, "stage": "done"}
        other = await c.threads.create(metadata={"user": "bo", "tag": tag})
        found = await c.threads.search(metadata={"tag": tag, "user": "ada"})
        assert [t["thread_id"] for t in found] == [thread["thread_id"]]
        idle = await c.threads.search(metadata={"tag": tag}, status="idle")
        assert {t["thread_id"] for t in idle} == {thread["thread_id"], other["thread_id"]}
        copy = await c.threads.copy(thread["thread_id"])
        state = await c.threads.get_state(copy["thread_id"])
        assert state["values"]["messages"][-1]["content"] == "The Nile is deep"
        await c.threads.delete(thread["thread_id"])
        for gone in (c.threads.get(thread["thread_id"]), c.threads.get_state(thread["thread_id"])):
            with pytest.raises(httpx.HTTPStatusError) as exc:
                await gone
            assert exc.value.response.status_code == 404
        remaining = await c.threads.search(metadata={"tag": tag})
        assert thread["thread_id"] not in [t["thread_id"] for t in remaining]

    run(main())


def test_another_keys_threads_are_not_found(url: str) -> None:
    async def main() -> None:
        mine = await client(url).threads.create()
        bob = client(url, BOB)
        for call in (
            bob.threads.get(mine["thread_id"]),
            bob.threads.get_state(mine["thread_id"]),
            bob.threads.update(mine["thread_id"], metadata={"x": 1}),
            bob.threads.delete(mine["thread_id"]),
            bob.runs.wait(mine["thread_id"], "chat", input=HI),
            bob.runs.list(mine["thread_id"]),
        ):
            with pytest.raises(httpx.HTTPStatusError) as exc:
                await call
            assert exc.value.response.status_code == 404
        assert mine["thread_id"] not in [t["thread_id"] for t in await bob.threads.search()]

    run(main())


def test_state_update_as_node_and_history(url: str) -> None:
    async def main() -> None:
        c = client(url)
        thread = await c.threads.create(graph_id="review")
        await c.threads.update_state(thread["thread_id"], {"draft": "rivers"}, as_node="write")
        state = await c.threads.get_state(thread["thread_id"])
        assert state["values"]["draft"] == "rivers" and state["next"] == ["ask"]
        history = await c.threads.get_history(thread["thread_id"], limit=5)
        assert history[0]["checkpoint"]["checkpoint_id"] == state["checkpoint"]["checkpoint_id"]
        older = await c.threads.get_state(
            thread["thread_id"], checkpoint_id=history[-1]["checkpoint"]["checkpoint_id"]
        )
        assert older["checkpoint"] == history[-1]["checkpoint"]

    run(main())


# -- runs ---------------------------------------------------------------------------------


def test_stream_every_mode_with_metadata_first(url: str) -> None:
    async def main() -> None:
        c = client(url)
        thread = await c.threads.create()
        modes = ["values", "updates", "messages-tuple", "custom", "debug", "tasks", "checkpoints"]
        parts = [
            p async for p in c.runs.stream(thread["thread_id"], "chat", input=HI, stream_mode=modes)
        ]
        assert parts[0].event == "metadata" and parts[0].data["run_id"]
        events = {p.event for p in parts}
        assert events == {"metadata", "values", "updates", "messages", "custom", "debug",
                          "tasks", "checkpoints"}  # fmt: skip
        tokens = [p.data[0]["content"] for p in parts if p.event == "messages"]
        assert "".join(t for t in tokens if isinstance(t, str)).endswith("The Nile is deep")
        assert any(p.data == {"tool": "depth"} for p in parts if p.event == "custom")
        last = [p for p in parts if p.event == "values"][-1]
        assert last.data["messages"][-1]["content"] == "The Nile is deep"
        runs = await c.runs.list(thread["thread_id"])
        assert runs[0]["run_id"] == parts[0].data["run_id"] and runs[0]["status"] == "success"

    run(main())


def test_stateless_stream_and_wait(url: str) -> None:
    async def main() -> None:
        c = client(url)
        parts = [p async for p in c.runs.stream(None, "chat", input=HI, stream_mode="updates")]
        assert parts[0].event == "metadata"
        assert [next(iter(p.data)) for p in parts[1:]] == ["agent", "tools", "agent"]
        values = await c.runs.wait(None, "chat", input=HI)
        assert values["messages"][-1]["content"] == "The Nile is deep"

    run(main())


def test_legacy_messages_mode_sends_partial_and_complete(url: str) -> None:
    async def main() -> None:
        c = client(url)
        parts = [p async for p in c.runs.stream(None, "chat", input=HI, stream_mode="messages")]
        names = {p.event for p in parts}
        assert {"messages/metadata", "messages/partial", "messages/complete"} <= names
        partial = [p.data[0]["content"] for p in parts if p.event == "messages/partial"]
        assert "The Nile is deep" in partial

    run(main())


def test_human_in_the_loop_interrupt_and_resume(url: str) -> None:
    async def main() -> None:
        c = client(url)
        thread = await c.threads.create()
        parts = [
            p
            async for p in c.runs.stream(
                thread["thread_id"], "review", input={"draft": "rivers"}, stream_mode="updates"
            )
        ]
        assert "__interrupt__" in parts[-1].data
        state = await c.threads.get_state(thread["thread_id"])
        assert state["next"] == ["ask"]
        assert state["interrupts"][0]["value"]["question"] == "Publish?"
        assert state["tasks"][0]["interrupts"][0]["value"]["draft"] == "draft of rivers"
        got = await c.threads.get(thread["thread_id"])
        assert got["status"] == "interrupted"
        assert next(iter(got["interrupts"].values()))[0]["value"]["question"] == "Publish?"
        values = await c.runs.wait(thread["thread_id"], "review", command={"resume": "yes"})
        assert values["verdict"] == "yes" and values["steps"] == ["write", "ask"]
        assert (await c.threads.get(thread["thread_id"]))["status"] == "idle"

    run(main())


def test_wait_returns_the_interrupt(url: str) -> None:
    async def main() -> None:
        c = client(url)
        thread = await c.threads.create()
        values = await c.runs.wait(thread["thread_id"], "review", input={"draft": "x"})
        assert values["__interrupt__"][0]["value"]["question"] == "Publish?"

    run(main())


def test_background_run_join_and_join_stream(url: str) -> None:
    async def main() -> None:
        c = client(url)
        thread = await c.threads.create()
        created = await c.runs.create(thread["thread_id"], "slow", input={"steps": []})
        assert created["status"] in ("pending", "running")
        parts = [p async for p in c.runs.join_stream(thread["thread_id"], created["run_id"])]
        assert parts[0].event == "metadata"
        assert parts[-1].data["steps"] == list(range(8))
        values = await c.runs.join(thread["thread_id"], created["run_id"])
        assert values["steps"] == list(range(8))
        got = await c.runs.get(thread["thread_id"], created["run_id"])
        assert got["status"] == "success"
        # Reconnecting after an event replays only what came after it.
        middle = parts[3]
        rest = [
            p
            async for p in c.runs.join_stream(
                thread["thread_id"], created["run_id"], last_event_id=middle.id
            )
        ]
        assert [p.data for p in rest] == [p.data for p in parts[4:]]
        await c.runs.delete(thread["thread_id"], created["run_id"])
        assert await c.runs.list(thread["thread_id"]) == []

    run(main())


def test_cancel_a_background_run(url: str) -> None:
    async def main() -> None:
        c = client(url)
        thread = await c.threads.create()
        created = await c.runs.create(thread["thread_id"], "slow", input={"steps": []})
        await c.runs.cancel(thread["thread_id"], created["run_id"], wait=True)
        got = await c.runs.get(thread["thread_id"], created["run_id"])
        assert got["status"] == "interrupted"

    run(main())


def test_cancel_with_rollback_undoes_the_runs_writes(url: str) -> None:
    async def main() -> None:
        c = client(url)
        thread = await c.threads.create(graph_id="slow")
        await c.threads.update_state(thread["thread_id"], {"steps": [-1]})
        before = await c.threads.get_state(thread["thread_id"])
        created = await c.runs.create(thread["thread_id"], "slow", input={"steps": []})
        stream = c.runs.join_stream(thread["thread_id"], created["run_id"])
        seen = [(await anext(stream)).event for _ in range(3)]  # it has written something
        assert seen == ["metadata", "values", "values"]
        await c.runs.cancel(thread["thread_id"], created["run_id"], wait=True, action="rollback")
        await stream.aclose()
        after = await c.threads.get_state(thread["thread_id"])
        assert after["values"] == before["values"]

    run(main())


def test_multitask_enqueue_runs_one_after_the_other(url: str) -> None:
    async def main() -> None:
        c = client(url)
        thread = await c.threads.create()
        first = await c.runs.create(thread["thread_id"], "slow", input={"steps": []})
        second = await c.runs.create(
            thread["thread_id"], "slow", input={"steps": [100]}, multitask_strategy="enqueue"
        )
        await c.runs.join(thread["thread_id"], first["run_id"])
        values = await c.runs.join(thread["thread_id"], second["run_id"])
        assert values["steps"][:1] == [100] or 100 in values["steps"]
        with pytest.raises(httpx.HTTPStatusError) as exc:
            await c.runs.create(thread["thread_id"], "slow", input={"steps": []})
            await c.runs.create(
                thread["thread_id"], "slow", input={"steps": []}, multitask_strategy="reject"
            )
        assert exc.value.response.status_code == 409

    run(main())


def test_if_not_exists_create_and_reject(url: str) -> None:
    async def main() -> None:
        c = client(url)
        with pytest.raises(httpx.HTTPStatusError) as exc:
            await c.runs.wait("never-made", "chat", input=HI)
        assert exc.value.response.status_code == 404
        values = await c.runs.wait("made-now", "chat", input=HI, if_not_exists="create")
        assert values["messages"][-1]["content"] == "The Nile is deep"

    run(main())


def test_a_failing_run_streams_an_error_event(url: str) -> None:
    async def main() -> None:
        c = client(url)
        parts = [
            p
            async for p in c.runs.stream(None, "chat", input={"messages": 42}, stream_mode="values")
        ]
        assert parts[-1].event == "error"
        assert parts[-1].data["error"] and parts[-1].data["message"]

    run(main())


def test_interrupt_before_and_after_per_run(url: str) -> None:
    async def main() -> None:
        c = client(url)
        thread = await c.threads.create()
        values = await c.runs.wait(
            thread["thread_id"], "chat", input=HI, interrupt_before=["tools"]
        )
        assert values["messages"][-1]["tool_calls"][0]["name"] == "depth"
        state = await c.threads.get_state(thread["thread_id"])
        assert state["next"] == ["tools"]
        assert (await c.threads.get(thread["thread_id"]))["status"] == "interrupted"
        after = await c.runs.wait(thread["thread_id"], "chat", input=None, interrupt_after="*")
        assert after["messages"][-1]["type"] == "tool"
        done = await c.runs.wait(thread["thread_id"], "chat", input=None)
        assert done["messages"][-1]["content"] == "The Nile is deep"
        with pytest.raises(httpx.HTTPStatusError) as exc:
            await c.runs.wait(thread["thread_id"], "chat", input=HI, interrupt_before=["nope"])
        assert exc.value.response.status_code == 400

    run(main())


def test_a_run_may_name_the_latest_checkpoint_only(url: str) -> None:
    async def main() -> None:
        c = client(url)
        thread = await c.threads.create()
        await c.runs.wait(thread["thread_id"], "chat", input=HI)
        history = await c.threads.get_history(thread["thread_id"], limit=2)
        latest, older = (h["checkpoint"] for h in history)
        values = await c.runs.wait(thread["thread_id"], "chat", input=HI, checkpoint=latest)
        assert len(values["messages"]) == 8
        with pytest.raises(httpx.HTTPStatusError) as exc:
            await c.runs.wait(thread["thread_id"], "chat", input=HI, checkpoint=older)
        assert exc.value.response.status_code == 501
        assert "checkpoint" in exc.value.response.json()["detail"]

    run(main())


def test_events_mode_streams_astream_events(url: str) -> None:
    async def main() -> None:
        c = client(url)
        parts = [p async for p in c.runs.stream(None, "chat", input=HI, stream_mode="events")]
        kinds = [p.data["event"] for p in parts if p.event == "events"]
        assert kinds[0] == "on_chain_start" and "on_chat_model_stream" in kinds
        tokens = [
            p.data["data"]["chunk"]["content"]
            for p in parts
            if p.event == "events" and p.data["event"] == "on_chat_model_stream"
        ]
        assert "".join(tokens).endswith("The Nile is deep")

    run(main())


def test_stream_subgraphs_names_the_namespace(url: str) -> None:
    async def main() -> None:
        c = client(url)
        plain_parts = [
            p.event
            async for p in c.runs.stream(None, "nested", input={"steps": []}, stream_mode="updates")
        ]
        assert plain_parts == ["metadata", "updates"]
        parts = [
            p
            async for p in c.runs.stream(
                None, "nested", input={"steps": []}, stream_mode="updates", stream_subgraphs=True
            )
        ]
        inner = [p for p in parts if p.event.startswith("updates|sub:")]
        assert [p.data for p in inner] == [{"inner": {"steps": [0]}}]
        assert parts[-1].event == "updates" and parts[-1].data == {"sub": {"steps": [0]}}

    run(main())


def test_on_disconnect_cancel_stops_the_run(url: str) -> None:
    async def main() -> None:
        c = client(url)
        thread = await c.threads.create()
        stream = c.runs.stream(
            thread["thread_id"], "slow", input={"steps": []}, on_disconnect="cancel"
        )
        first = await anext(stream)
        await stream.aclose()  # the client goes away after the metadata event
        run_id = first.data["run_id"]
        for _ in range(100):
            got = await c.runs.get(thread["thread_id"], run_id)
            if got["status"] != "running" and got["status"] != "pending":
                break
            await asyncio.sleep(0.1)
        assert got["status"] == "interrupted"
        state = await c.threads.get_state(thread["thread_id"])
        assert len(state["values"].get("steps", [])) < 8

    run(main())


# -- hostile input ------------------------------------------------------------------------

KEY = {"x-api-key": ALICE}


@pytest.mark.parametrize(
    ("method", "path", "body", "words"),
    [
        ("POST", "/threads", {"metadata": "x"}, ["metadata", "object"]),
        ("POST", "/threads", {"if_exists": "sometimes"}, ["if_exists", "raise"]),
        ("POST", "/threads", {"thread_id": 7}, ["thread_id"]),
        ("POST", "/threads", {"colour": 1}, ["colour", "accepted"]),
        ("POST", "/threads/search", {"limit": "ten"}, ["limit"]),
        ("POST", "/threads/search", {"status": "asleep"}, ["status", "idle"]),
        ("POST", "/threads/search", {"ids": "t1"}, ["ids", "list"]),
        ("POST", "/threads/search", {"sort_by": "colour"}, ["sort_by"]),
        ("POST", "/assistants/search", {"limit": -1}, ["limit"]),
        ("POST", "/assistants/search", {"colour": 1}, ["colour"]),
        ("POST", "/runs/wait", {"assistant_id": "chat", "stream_mode": "loud"}, ["stream_mode"]),
        ("POST", "/runs/wait", {"assistant_id": "chat", "colour": 1}, ["colour", "accepted"]),
        ("POST", "/runs/wait", {"assistant_id": "chat", "config": []}, ["config"]),
        ("POST", "/runs/wait", {"assistant_id": "chat", "metadata": 3}, ["metadata"]),
        ("POST", "/runs/wait", {"assistant_id": "chat", "command": {"jump": 1}}, ["jump"]),
        ("POST", "/runs/wait", {"assistant_id": "chat", "on_disconnect": "x"}, ["on_disconnect"]),
        (
            "POST",
            "/runs/stream",
            {"assistant_id": "chat", "multitask_strategy": "x"},
            ["multitask_strategy"],
        ),
        (
            "POST",
            "/runs/stream",
            {"assistant_id": "chat", "stream_subgraphs": "yes"},
            ["stream_subgraphs"],
        ),
        ("POST", "/runs/stream", {"assistant_id": "chat", "if_not_exists": "x"}, ["if_not_exists"]),
        ("POST", "/runs/stream", {"assistant_id": 5}, ["assistant_id"]),
        ("POST", "/runs/stream", [1, 2], ["object"]),
    ],
)
def test_bad_requests_are_4xx_naming_the_field(
    url: str, method: str, path: str, body: Any, words: list[str]
) -> None:
    reply = httpx.request(method, url + path, json=body, headers=KEY, timeout=10)
    assert 400 <= reply.status_code < 500, reply.text
    detail = reply.json()["detail"]
    assert all(w in detail for w in words), detail


def test_no_key_or_a_wrong_key_is_401(url: str) -> None:
    assert httpx.post(f"{url}/threads/search", json={}).status_code == 401
    wrong = httpx.post(f"{url}/threads/search", json={}, headers={"x-api-key": "nope"})
    assert wrong.status_code == 401 and "x-api-key" in wrong.json()["detail"]


def test_a_huge_body_is_413(url: str) -> None:
    big = {"assistant_id": "chat", "input": {"messages": ["x" * 2_000_000]}}
    reply = httpx.post(f"{url}/runs/wait", json=big, headers=KEY, timeout=30)
    assert reply.status_code == 413


def test_another_keys_runs_are_not_found(url: str) -> None:
    thread = httpx.post(f"{url}/threads", json={}, headers=KEY).json()["thread_id"]
    run = httpx.post(
        f"{url}/threads/{thread}/runs", json={"assistant_id": "slow"}, headers=KEY
    ).json()
    bob = {"x-api-key": BOB}
    base = f"{url}/threads/{thread}/runs/{run['run_id']}"
    for method, path in [
        ("GET", base),
        ("GET", base + "/join"),
        ("GET", base + "/stream"),
        ("POST", base + "/cancel"),
        ("DELETE", base),
        ("POST", f"{url}/threads/{thread}/history"),
        ("POST", f"{url}/threads/{thread}/copy"),
        ("POST", f"{url}/threads/{thread}/state"),
    ]:
        reply = httpx.request(method, path, headers=bob, timeout=10)
        assert reply.status_code == 404, (method, path, reply.text)
    # A run id under another of Alice's threads is not found either.
    other = httpx.post(f"{url}/threads", json={}, headers=KEY).json()["thread_id"]
    wrong = httpx.get(f"{url}/threads/{other}/runs/{run['run_id']}", headers=KEY)
    assert wrong.status_code == 404
    assert httpx.get(base + "/join", headers=KEY, timeout=30).status_code == 200


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/assistants"),
        ("PATCH", "/assistants/chat"),
        ("DELETE", "/assistants/chat"),
        ("POST", "/threads/prune"),
        ("POST", "/runs/batch"),
        ("POST", "/runs/crons"),
        ("POST", "/store/items/search"),
    ],
)
def test_unsupported_routes_are_501_naming_themselves(url: str, method: str, path: str) -> None:
    reply = httpx.request(method, url + path, json={}, headers=KEY)
    assert reply.status_code == 501
    assert reply.json()["error"] == "not_implemented"
    assert path.split("/")[1] in reply.json()["detail"]


def test_unsupported_run_fields_are_501_naming_them(url: str) -> None:
    for field, value in [("webhook", "http://x"), ("after_seconds", 5), ("checkpoint_id", "c")]:
        reply = httpx.post(
            f"{url}/runs/wait", json={"assistant_id": "chat", field: value}, headers=KEY
        )
        assert reply.status_code == 501 and field in reply.json()["detail"]


def test_a_bad_last_event_id_is_400(url: str) -> None:
    thread = httpx.post(f"{url}/threads", json={}, headers=KEY).json()["thread_id"]
    run = httpx.post(
        f"{url}/threads/{thread}/runs", json={"assistant_id": "slow"}, headers=KEY
    ).json()
    reply = httpx.get(
        f"{url}/threads/{thread}/runs/{run['run_id']}/stream",
        headers={**KEY, "Last-Event-ID": "not-an-id"},
    )
    assert reply.status_code == 400 and "Last-Event-ID" in reply.json()["detail"]


# -- durability ---------------------------------------------------------------------------


def test_threads_and_runs_survive_a_restart_on_sqlite(tmp_path: Any) -> None:
    db = f"sqlite:///{tmp_path / 'threads.db'}"

    def app() -> Any:
        graph = StateGraph(Review)
        graph.add_node("ask", lambda s: {"verdict": interrupt("ok?")})
        graph.add_edge(START, "ask")
        graph.add_edge("ask", END)
        return create_app({"review": graph.compile(name="review", checkpointer=db)},
                          api_keys=[ALICE, BOB])  # fmt: skip

    async def before(url: str) -> tuple[str, str]:
        c = client(url)
        thread = await c.threads.create(metadata={"user": "ada"})
        run_ = await c.runs.create(thread["thread_id"], "review", input={"draft": "d"})
        await c.runs.join(thread["thread_id"], run_["run_id"])
        return thread["thread_id"], run_["run_id"]

    with serving(app()) as first:
        thread_id, run_id = run(before(first))

    async def after(url: str) -> None:
        c = client(url)
        got = await c.threads.get(thread_id)
        assert got["metadata"] == {"user": "ada"} and got["status"] == "interrupted"
        assert [t["thread_id"] for t in await c.threads.search(metadata={"user": "ada"})] == [
            thread_id
        ]
        assert [r["run_id"] for r in await c.runs.list(thread_id)] == [run_id]
        with pytest.raises(httpx.HTTPStatusError) as exc:
            await client(url, BOB).threads.get(thread_id)
        assert exc.value.response.status_code == 404
        done = await c.runs.wait(thread_id, "review", command={"resume": "yes"})
        assert done["verdict"] == "yes"

    with serving(app()) as second:
        run(after(second))
