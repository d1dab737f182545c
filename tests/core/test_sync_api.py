"""The sync API of a compiled graph works inside a running event loop (issue 12, item 1).

A Jupyter cell, ``python -m asyncio``, an ``async def`` test or an async web handler runs
an event loop on its thread; ``invoke``, ``batch``, ``stream``, ``get_state``,
``get_state_history`` and ``update_state`` must work there, as in LangGraph, with tokens
and events still streaming live. (The real Jupyter kernel: ``tests/e2e/test_notebook.py``.)
Inside a node on the event loop's thread they are refused with the async form instead.
"""

from __future__ import annotations

import contextvars
import re
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from typing import Annotated, Any, TypedDict

import anyio
import pytest

from headwater import END, START, StateGraph
from headwater._sync import in_helper_thread
from headwater.errors import HeadwaterError, InvalidInputError
from headwater.messages import AIMessageChunk, BaseMessage, add_messages
from headwater.models import ChatModel

LIVE_TIMEOUT = 30.0  # a stream that is not live waits this long, then fails


class Count(TypedDict, total=False):
    n: int


def bump(state: Count) -> dict[str, Any]:
    return {"n": state.get("n", 0) + 1}


def counter(checkpointer: Any = None) -> Any:
    graph = StateGraph(Count)
    graph.add_node("bump", bump)
    graph.add_edge(START, "bump")
    graph.add_edge("bump", END)
    return graph.compile(checkpointer=checkpointer)


THREAD = {"configurable": {"thread_id": "t"}}


@pytest.mark.anyio
async def test_every_sync_method_works_in_async_code() -> None:
    app = counter("memory:")
    assert app.invoke({"n": 1}, THREAD) == {"n": 2}
    assert list(app.stream({"n": 5}, THREAD, stream_mode="updates")) == [{"bump": {"n": 6}}]
    assert app.get_state(THREAD).values == {"n": 6}
    assert [s.metadata["source"] for s in app.get_state_history(THREAD)] == [
        "loop",
        "input",
        "loop",
        "input",
    ]
    config = app.update_state(THREAD, {"n": 100})
    assert app.get_state(config).values == {"n": 100}
    configs = [{"configurable": {"thread_id": f"u{i}"}} for i in range(3)]
    assert app.batch([{"n": i} for i in range(3)], configs) == [{"n": 1}, {"n": 2}, {"n": 3}]
    # ... and the same from plain sync code, in a worker thread with no loop.
    assert await anyio.to_thread.run_sync(app.invoke, {"n": 1}, THREAD) == {"n": 2}


class Gated(ChatModel):
    """Streams two tokens; the second only once the consumer has seen the first.

    A stream that delivers tokens only when the run ends never opens the gate.
    """

    provider = "gated"

    def __init__(self, gate: threading.Event) -> None:
        super().__init__(model="gated")
        self.gate = gate

    async def _astream(
        self, messages: list[BaseMessage], **kwargs: Any
    ) -> AsyncIterator[AIMessageChunk]:
        yield AIMessageChunk(content="first")
        opened = await anyio.to_thread.run_sync(self.gate.wait, LIVE_TIMEOUT)
        yield AIMessageChunk(content=" live" if opened else " NOT LIVE")


class Chat(TypedDict):
    messages: Annotated[list[Any], add_messages]


def chat_graph(llm: ChatModel, *, sync_node: bool) -> Any:
    def sync_chat(state: Chat) -> dict[str, Any]:
        return {"messages": [llm.invoke(state["messages"])]}  # sync: tokens stream anyway

    async def async_chat(state: Chat) -> dict[str, Any]:
        return {"messages": [await llm.ainvoke(state["messages"])]}

    graph = StateGraph(Chat)
    graph.add_node("chat", sync_chat if sync_node else async_chat)
    graph.add_edge(START, "chat")
    graph.add_edge("chat", END)
    return graph.compile()


@pytest.mark.anyio
@pytest.mark.parametrize("sync_node", [False, True], ids=["async-node", "sync-node"])
async def test_sync_stream_in_async_code_delivers_tokens_live(sync_node: bool) -> None:
    gate = threading.Event()
    app = chat_graph(Gated(gate), sync_node=sync_node)
    tokens = []
    for chunk, metadata in app.stream({"messages": ["hi"]}, stream_mode="messages"):
        tokens.append(chunk.content)
        assert metadata["node"] == "chat"
        gate.set()  # the first token arrived while the model was still generating
    assert tokens == ["first", " live"]


@pytest.mark.anyio
async def test_sync_invoke_in_async_code_runs_nodes_with_the_callers_context() -> None:
    marker: contextvars.ContextVar[str] = contextvars.ContextVar("marker", default="unset")
    marker.set("from the caller")
    seen = []

    def look(state: Count) -> dict[str, Any]:
        seen.append((marker.get(), threading.current_thread().name))
        return {"n": 1}

    graph = StateGraph(Count)
    graph.add_node("look", look)
    graph.add_edge(START, "look")
    graph.add_edge("look", END)
    assert graph.compile().invoke({}) == {"n": 1}
    assert seen[0][0] == "from the caller"


@pytest.mark.anyio
@pytest.mark.parametrize(
    "method", ["invoke", "batch", "stream", "get_state", "get_state_history", "update_state"]
)
async def test_sync_calls_in_an_async_node_are_refused_with_the_async_form(method: str) -> None:
    inner = counter("memory:")
    calls = {
        "invoke": lambda: inner.invoke({"n": 1}, THREAD),
        "batch": lambda: inner.batch([{"n": 1}], THREAD),
        "stream": lambda: list(inner.stream({"n": 1}, THREAD)),
        "get_state": lambda: inner.get_state(THREAD),
        "get_state_history": lambda: inner.get_state_history(THREAD),
        "update_state": lambda: inner.update_state(THREAD, {"n": 1}),
    }

    async def node(state: Count) -> dict[str, Any]:
        calls[method]()
        return {}

    graph = StateGraph(Count)
    graph.add_node("node", node)
    graph.add_edge(START, "node")
    hint = "astream" if method == "stream" else f"await graph.a{method}("
    with pytest.raises(
        HeadwaterError, match=f"in a node on the event loop thread.*{re.escape(hint)}"
    ):
        await graph.compile().ainvoke({})


@pytest.mark.anyio
async def test_a_sync_node_may_call_another_graphs_sync_api() -> None:
    inner = counter()

    def outer_node(state: Count) -> dict[str, Any]:
        return {"n": inner.invoke({"n": state.get("n", 0)})["n"] * 10}

    graph = StateGraph(Count)
    graph.add_node("outer", outer_node)
    graph.add_edge(START, "outer")
    assert await graph.compile().ainvoke({"n": 1}) == {"n": 20}


@pytest.mark.anyio
async def test_errors_of_a_sync_call_in_async_code_propagate_as_they_are() -> None:
    app = counter()
    with pytest.raises(InvalidInputError, match="must be a mapping"):
        app.invoke([1, 2])

    def broken(state: Count) -> dict[str, Any]:
        raise KeyError("missing")

    graph = StateGraph(Count)
    graph.add_node("broken", broken)
    graph.add_edge(START, "broken")
    with pytest.raises(KeyError, match="missing"):
        graph.compile().invoke({})


# -- batch ----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_abatch_keeps_order_bounds_concurrency_and_can_return_exceptions() -> None:
    running = 0
    most = 0

    async def slow(state: Count) -> dict[str, Any]:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await anyio.sleep(0.01 * (5 - state["n"]))
        running -= 1
        if state["n"] == 3:
            raise ValueError("three")
        return {"n": state["n"] * 2}

    graph = StateGraph(Count)
    graph.add_node("slow", slow)
    graph.add_edge(START, "slow")
    app = graph.compile()
    out = await app.abatch(
        [{"n": i} for i in range(5)], {"max_concurrency": 2}, return_exceptions=True
    )
    assert out[:3] == [{"n": 0}, {"n": 2}, {"n": 4}] and out[4] == {"n": 8}
    assert isinstance(out[3], ValueError)
    assert most == 2
    with pytest.raises(ValueError, match="three"):
        await app.abatch([{"n": i} for i in range(5)])


@pytest.mark.parametrize(
    ("inputs", "config", "says"),
    [
        ({"n": 1}, None, "takes a list of inputs"),
        ([{"n": 1}], [None, None], "1 input\\(s\\) but 2 config"),
        ([{"n": 1}], 42, "one config \\(a mapping\\) or a list"),
        ([{"n": 1}], {"max_concurrency": 0}, "max_concurrency"),
    ],
)
def test_batch_rejects_bad_arguments_clearly(inputs: Any, config: Any, says: str) -> None:
    with pytest.raises(InvalidInputError, match=says):
        counter().batch(inputs, config)


# -- the helper thread ---------------------------------------------------------------------


def test_interrupting_the_wait_cancels_the_work() -> None:
    started = threading.Event()
    finished = []

    async def forever() -> None:
        try:
            started.set()
            await anyio.sleep_forever()
        finally:
            finished.append("cancelled")

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    def fire_when_started() -> None:
        started.wait(LIVE_TIMEOUT)
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGUSR1)

    previous = signal.signal(signal.SIGUSR1, interrupt)
    try:
        threading.Thread(target=fire_when_started, daemon=True).start()
        with pytest.raises(KeyboardInterrupt):
            in_helper_thread(forever)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert finished == ["cancelled"]


ASYNCIO_REPL = """
from typing import TypedDict
from headwater import END, START, StateGraph
class S(TypedDict):
    n: int

g = StateGraph(S)
g.add_node("double", lambda s: {"n": s["n"] * 2})
g.add_edge(START, "double")
app = g.compile()
print("invoke", app.invoke({"n": 21}))
print("stream", list(app.stream({"n": 2}, stream_mode="updates")))
print("await", await app.ainvoke({"n": 1}))
"""


def test_python_dash_m_asyncio_repl() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "asyncio"],
        input=ASYNCIO_REPL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = done.stdout + done.stderr
    assert "invoke {'n': 42}" in out, out
    assert "stream [{'double': {'n': 4}}]" in out, out
    assert "await {'n': 2}" in out, out
    assert "Traceback" not in out, out


def test_stream_raises_the_error_of_a_run_that_fails_after_its_last_chunk() -> None:
    # The run's error used to be dropped when the last batch and the end were taken at once.
    class Flow(TypedDict):
        n: int

    async def first(state: Flow) -> dict[str, int]:
        return {"n": 1}

    async def second(state: Flow) -> dict[str, int]:
        raise ValueError("boom")

    g = StateGraph(Flow)
    g.add_node("first", first)
    g.add_node("second", second)
    g.add_edge(START, "first")
    g.add_edge("first", "second")
    app = g.compile()
    for _ in range(5):
        seen: list[Any] = []
        with pytest.raises(ValueError, match="boom"):
            seen.extend(app.stream({"n": 0}, stream_mode="updates"))
        assert seen == [{"first": {"n": 1}}]


def test_sync_stream_of_the_events_mode_gives_the_same_dicts_as_astream() -> None:
    """Sync stream() takes whole queued batches: each item is finished as astream's are."""
    from fixtures.graphs import chat_graph

    from headwater.testing.fake import FakeChatModel

    app = chat_graph(FakeChatModel([" ".join(f"t{i}" for i in range(3000))], cycle=True))

    def shape(item: Any) -> Any:
        assert isinstance(item, dict), item
        return (item["event"], item["name"], item["data"].get("chunk", None) is not None)

    sync_items = [shape(i) for i in app.stream({"messages": ["go"]}, stream_mode="events")]

    async def collect() -> list[Any]:
        return [shape(i) async for i in app.astream({"messages": ["go"]}, stream_mode="events")]

    assert sync_items == anyio.run(collect)
    assert sum(kind == "on_chat_model_stream" for kind, _, _ in sync_items) > 3000
