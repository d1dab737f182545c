"""A node can fail its run, never its process (issue 13.2).

``SystemExit`` (``sys.exit()`` in a tool, an argparse error), ``KeyboardInterrupt``,
``GeneratorExit``, a ``CancelledError`` a node raises by itself and a custom
``BaseException`` fail the run they happen in with a :class:`NodeError` naming the node
(the original as ``__cause__``), with an ``on_chain_error`` for the node and the graph and
every start event closed; the event loop and the process go on. Only a real cancellation
of the run (the consumer left, an enclosing cancel scope, a sibling failing) cancels it.
"""

from __future__ import annotations

import argparse
import asyncio
import operator
import sys
from collections.abc import Callable
from typing import Annotated, Any, TypedDict

import anyio
import anyio.lowlevel
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import headwater
from headwater import END, START, RetryPolicy, Send, StateGraph, create_plugin_manager
from headwater.errors import NodeCancelledError, NodeError
from headwater.messages import AIMessage, HumanMessage, ToolCall
from headwater.testing.fake import FakeChatModel, ScriptedError
from headwater.tools import ToolNode, tool


class S(TypedDict):
    n: int
    log: Annotated[list[str], operator.add]


class Custom(BaseException):
    """A BaseException of the user's own."""


def argparse_error() -> BaseException:
    """What ``parser.parse_args()`` raises on bad arguments."""
    parser = argparse.ArgumentParser(prog="tool", exit_on_error=True)
    parser.add_argument("--n", type=int)
    try:
        with open("/dev/null", "w") as sink:
            old, sys.stderr = sys.stderr, sink
            try:
                parser.parse_args(["--n", "x"])
            finally:
                sys.stderr = old
    except BaseException as exc:
        return exc
    raise AssertionError("argparse did not exit")


KINDS: dict[str, Callable[[], BaseException]] = {
    "sys.exit": lambda: SystemExit(3),
    "argparse": argparse_error,
    "KeyboardInterrupt": KeyboardInterrupt,
    "CancelledError": asyncio.CancelledError,
    "GeneratorExit": GeneratorExit,
    "custom": lambda: Custom("mine"),
}


def expected_class(kind: str) -> type[NodeError]:
    return NodeCancelledError if kind == "CancelledError" else NodeError


def boom_graph(
    exc: BaseException,
    *,
    is_async: bool,
    retry: RetryPolicy | None = None,
    pm: headwater.PluginManager | None = None,
) -> tuple[headwater.CompiledGraph, list[int]]:
    """START → ok → boom (raises ``exc``) → END; returns the graph and boom's call count."""
    calls: list[int] = []

    async def ok(state: S) -> dict[str, Any]:
        return {"log": ["ok"]}

    if is_async:

        async def boom(state: S) -> dict[str, Any]:
            calls.append(1)
            await anyio.lowlevel.checkpoint()
            raise exc

    else:

        def boom(state: S) -> dict[str, Any]:  # type: ignore[misc]
            calls.append(1)
            raise exc

    graph = StateGraph(S)
    graph.add_node("ok", ok)
    graph.add_node("boom", boom, retry=retry)
    graph.add_edge(START, "ok")
    graph.add_edge("ok", "boom")
    graph.add_edge("boom", END)
    return graph.compile(name="g", plugin_manager=pm), calls


def healthy() -> headwater.CompiledGraph:
    async def step(state: S) -> dict[str, Any]:
        await anyio.lowlevel.checkpoint()
        return {"n": state["n"] + 1}

    graph = StateGraph(S)
    graph.add_node("step", step)
    graph.add_edge(START, "step")
    graph.add_edge("step", END)
    return graph.compile(name="healthy")


def assert_closed(events: list[dict[str, Any]]) -> None:
    """Every ``*_start`` has exactly one ``*_end`` or ``*_error`` with its run id, after it."""
    opened: dict[str, int] = {}
    closed: dict[str, int] = {}
    for i, event in enumerate(events):
        kind = event["event"]
        if kind.endswith("_start"):
            assert event["run_id"] not in opened, f"two starts for {event['name']}"
            opened[event["run_id"]] = i
        elif kind.endswith(("_end", "_error")) and kind.startswith("on_"):
            run_id = event["run_id"]
            assert run_id in opened, f"{kind} of {event['name']} before its start"
            assert run_id not in closed, f"{event['name']} closed twice"
            closed[run_id] = i
    assert set(opened) == set(closed), [events[i]["name"] for i in opened if i not in closed]


def assert_fails_with(error: BaseException, kind: str, original: BaseException, node: str) -> None:
    assert type(error) is expected_class(kind), repr(error)
    assert error.node == node  # type: ignore[attr-defined]
    assert error.__cause__ is original
    assert repr(node) in str(error) and type(original).__name__ in str(error)


@pytest.mark.anyio
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("is_async", [True, False], ids=["async", "sync"])
async def test_ainvoke_fails_with_a_node_error_and_the_loop_goes_on(
    kind: str, is_async: bool
) -> None:
    exc = KINDS[kind]()
    app, calls = boom_graph(exc, is_async=is_async)
    with pytest.raises(NodeError) as caught:
        await app.ainvoke({"n": 0, "log": []})
    assert_fails_with(caught.value, kind, exc, "boom")
    assert calls == [1]
    assert (await healthy().ainvoke({"n": 1, "log": []}))["n"] == 2


@pytest.mark.anyio
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("is_async", [True, False], ids=["async", "sync"])
async def test_astream_events_reports_the_error_and_closes_every_start(
    kind: str, is_async: bool
) -> None:
    exc = KINDS[kind]()
    app, _ = boom_graph(exc, is_async=is_async)
    events: list[dict[str, Any]] = []
    with pytest.raises(NodeError) as caught:
        async for event in app.astream_events({"n": 0, "log": []}):
            events.append(event)
    assert_fails_with(caught.value, kind, exc, "boom")
    assert_closed(events)
    errors = [(e["name"], e["data"]["error"]) for e in events if e["event"] == "on_chain_error"]
    assert errors == [("boom", caught.value), ("g", caught.value)]
    assert not any(e["event"] == "on_chain_end" and e["name"] == "g" for e in events)


@pytest.mark.anyio
@pytest.mark.parametrize("kind", KINDS)
async def test_astream_never_ends_as_if_it_succeeded(kind: str) -> None:
    exc = KINDS[kind]()
    app, _ = boom_graph(exc, is_async=True)
    chunks = []
    with pytest.raises(NodeError):
        async for chunk in app.astream({"n": 0, "log": []}, stream_mode=["updates", "tasks"]):
            chunks.append(chunk)
    ends = [c[1] for c in chunks if c[0] == "tasks" and "error" in c[1]]
    assert [e["name"] for e in ends if e["error"] is not None] == ["boom"]


@pytest.mark.parametrize("kind", ["sys.exit", "KeyboardInterrupt", "CancelledError"])
def test_sync_invoke_and_stream_raise_a_node_error(kind: str) -> None:
    exc = KINDS[kind]()
    app, _ = boom_graph(exc, is_async=False)
    with pytest.raises(NodeError) as caught:
        app.invoke({"n": 0, "log": []})
    assert caught.value.__cause__ is exc
    with pytest.raises(NodeError):
        list(app.stream({"n": 0, "log": []}))
    assert healthy().invoke({"n": 0, "log": []})["n"] == 1


@pytest.mark.anyio
@pytest.mark.parametrize("is_async", [True, False], ids=["async", "sync"])
async def test_a_retry_policy_never_retries_them(is_async: bool) -> None:
    policy = RetryPolicy(max_attempts=5, initial_interval=0, retry_on=lambda e: True)
    app, calls = boom_graph(SystemExit(2), is_async=is_async, retry=policy)
    with pytest.raises(NodeError):
        await app.ainvoke({"n": 0, "log": []})
    assert calls == [1]


@pytest.mark.anyio
@pytest.mark.parametrize("is_async", [True, False], ids=["async", "sync"])
async def test_a_tool_calling_sys_exit_fails_the_tool_node_not_the_process(
    is_async: bool,
) -> None:
    if is_async:

        @tool
        async def parse(text: str) -> str:
            """Parse arguments."""
            await anyio.lowlevel.checkpoint()
            sys.exit("usage: parse TEXT")

    else:

        @tool
        def parse(text: str) -> str:
            """Parse arguments."""
            sys.exit("usage: parse TEXT")

    @tool
    async def slow(text: str) -> str:
        """A sibling call, cancelled when the other fails."""
        await anyio.sleep(30)
        return text

    class M(TypedDict):
        messages: Annotated[list[Any], operator.add]

    graph = StateGraph(M)
    graph.add_node("tools", ToolNode([parse, slow]))  # handle_errors=True: still fails
    graph.add_edge(START, "tools")
    graph.add_edge("tools", END)
    app = graph.compile(name="agent")
    calls = (
        ToolCall(name="slow", args={"text": "a"}, id="1"),
        ToolCall(name="parse", args={"text": "b"}, id="2"),
    )
    state = {"messages": [HumanMessage(content="go"), AIMessage(content="", tool_calls=calls)]}
    events: list[dict[str, Any]] = []
    with anyio.fail_after(20), pytest.raises(NodeError) as caught:
        async for event in app.astream_events(state):
            events.append(event)
    assert caught.value.node == "tools"
    assert isinstance(caught.value.__cause__, SystemExit)
    assert_closed(events)
    tool_events = {(e["name"], e["event"]) for e in events if "tool" in e["event"]}
    assert ("parse", "on_tool_error") in tool_events and ("slow", "on_tool_error") in tool_events


@pytest.mark.anyio
async def test_a_chat_model_raising_keyboard_interrupt_in_a_batch() -> None:
    llm = FakeChatModel(
        ["one two", ScriptedError(KeyboardInterrupt(), after=1, partial="x y")],
        token_delay=0.001,
    )

    async def chat(state: S) -> dict[str, Any]:
        await llm.abatch(["a", "b"])  # the failing call runs in a task of its own
        return {}

    graph = StateGraph(S)
    graph.add_node("chat", chat)
    graph.add_edge(START, "chat")
    graph.add_edge("chat", END)
    events: list[dict[str, Any]] = []
    with pytest.raises(NodeError) as caught:
        async for event in graph.compile().astream_events({"n": 0, "log": []}):
            events.append(event)
    assert caught.value.node == "chat"
    assert isinstance(caught.value.__cause__, KeyboardInterrupt)
    assert_closed(events)
    assert any(e["event"] == "on_chat_model_error" for e in events)


@pytest.mark.anyio
async def test_a_send_sibling_raising_cancels_the_others_and_closes_them() -> None:
    async def fan(state: S) -> dict[str, Any]:
        return {}

    async def work(arg: int) -> dict[str, Any]:
        if arg == 2:
            await anyio.sleep(0.01)
            raise Custom("third")
        await anyio.sleep(30)
        return {"log": [str(arg)]}

    graph = StateGraph(S)
    graph.add_node("fan", fan)
    graph.add_node("work", work)
    graph.add_edge(START, "fan")
    graph.add_conditional_edges("fan", lambda s: [Send("work", i) for i in range(4)])
    graph.add_edge("work", END)
    events: list[dict[str, Any]] = []
    with anyio.fail_after(20), pytest.raises(NodeError) as caught:
        async for event in graph.compile().astream_events({"n": 0, "log": []}):
            events.append(event)
    assert caught.value.node == "work" and isinstance(caught.value.__cause__, Custom)
    assert_closed(events)
    errors = [e for e in events if e["event"] == "on_chain_error" and e["name"] == "work"]
    assert len(errors) == 4  # one failed, three cancelled: each start closed


@pytest.mark.anyio
async def test_in_a_subgraph_the_inner_node_is_named() -> None:
    inner, _ = boom_graph(SystemExit(1), is_async=True)
    outer = StateGraph(S)
    outer.add_node("sub", inner)
    outer.add_edge(START, "sub")
    outer.add_edge("sub", END)
    events: list[dict[str, Any]] = []
    with pytest.raises(NodeError) as caught:
        async for event in outer.compile(name="outer").astream_events({"n": 0, "log": []}):
            events.append(event)
    assert caught.value.node == "boom"
    assert any("'sub'" in note for note in caught.value.__notes__)  # where, in the parent
    assert_closed(events)
    errors = [e["name"] for e in events if e["event"] == "on_chain_error"]
    assert errors == ["boom", "g", "sub", "outer"]


@pytest.mark.anyio
async def test_a_router_raising_system_exit_is_named() -> None:
    async def a(state: S) -> dict[str, Any]:
        return {}

    def route(state: S) -> str:
        raise SystemExit("no route")

    graph = StateGraph(S)
    graph.add_node("a", a)
    graph.add_edge(START, "a")
    graph.add_conditional_edges("a", route)
    with pytest.raises(NodeError, match=r"Router 'route' of node 'a'.*SystemExit"):
        await graph.compile().ainvoke({"n": 0, "log": []})


@pytest.mark.anyio
async def test_wrap_node_middleware_raising_or_seeing_it() -> None:
    seen: list[str] = []

    async def observe(call_next: Any, task: Any) -> Any:
        try:
            return await call_next(task)
        except BaseException as exc:
            seen.append(type(exc).__name__)
            raise

    async def exiting(call_next: Any, task: Any) -> Any:
        if task.node == "ok":
            sys.exit(4)
        return await call_next(task)

    class Plugin:
        @headwater.hookimpl
        def headwater_wrap_node(self, task: Any) -> Any:
            return observe

    class Exiting:
        @headwater.hookimpl
        def headwater_wrap_node(self, task: Any) -> Any:
            return exiting

    pm = create_plugin_manager(autoload=False, plugins=[Plugin()])
    app, _ = boom_graph(KeyboardInterrupt(), is_async=True, pm=pm)
    with pytest.raises(NodeError):
        await app.ainvoke({"n": 0, "log": []})
    assert seen == ["KeyboardInterrupt"]  # a middleware sees the node's own exception

    pm = create_plugin_manager(autoload=False, plugins=[Exiting()])
    app, _ = boom_graph(KeyboardInterrupt(), is_async=True, pm=pm)
    with pytest.raises(NodeError) as caught:
        await app.ainvoke({"n": 0, "log": []})
    assert caught.value.node == "ok" and isinstance(caught.value.__cause__, SystemExit)


@pytest.mark.anyio
async def test_a_retriever_raising_system_exit() -> None:
    from headwater.retrievers import Document, Retriever

    class Exiting(Retriever):
        async def _aretrieve(self, query: str) -> list[Document]:
            await anyio.lowlevel.checkpoint()
            raise SystemExit("index missing")

    async def search(state: S) -> dict[str, Any]:
        await Exiting().ainvoke("rivers")
        return {}

    graph = StateGraph(S)
    graph.add_node("search", search)
    graph.add_edge(START, "search")
    graph.add_edge("search", END)
    events: list[dict[str, Any]] = []
    with pytest.raises(NodeError) as caught:
        async for event in graph.compile().astream_events({"n": 0, "log": []}):
            events.append(event)
    assert caught.value.node == "search"
    assert_closed(events)
    assert any(e["event"] == "on_retriever_error" for e in events)


@pytest.mark.anyio
async def test_a_hook_raising_system_exit_fails_the_run_not_the_process() -> None:
    class Exiting:
        @headwater.hookimpl
        def headwater_run_end(self, run: Any, error: Any) -> None:
            sys.exit("hook")

    pm = create_plugin_manager(plugins=[Exiting()])
    graph = StateGraph(S)
    graph.add_node("step", lambda state: {"n": 1})
    graph.add_edge(START, "step")
    graph.add_edge("step", END)
    app = graph.compile(plugin_manager=pm)
    with pytest.raises(NodeError, match="outside its nodes") as caught:
        await app.ainvoke({"n": 0, "log": []})
    assert caught.value.node is None
    with pytest.raises(NodeError):
        async for _ in app.astream({"n": 0, "log": []}):
            pass


# -- real cancellations stay cancellations -----------------------------------------------


@pytest.mark.anyio
async def test_an_enclosing_cancel_scope_cancels_the_run_not_fails_it() -> None:
    reraised: list[str] = []

    async def slow(state: S) -> dict[str, Any]:
        try:
            await anyio.sleep(30)
        except anyio.get_cancelled_exc_class():
            reraised.append("cancelled")
            raise
        return {}

    graph = StateGraph(S)
    graph.add_node("slow", slow)
    graph.add_edge(START, "slow")
    graph.add_edge("slow", END)
    with anyio.move_on_after(0.05) as scope:
        await graph.compile().ainvoke({"n": 0, "log": []})
    assert scope.cancelled_caught and reraised == ["cancelled"]


@pytest.mark.anyio
async def test_leaving_the_stream_while_a_node_reraises_the_cancel_is_no_error() -> None:
    async def slow(state: S, *, writer: Any) -> dict[str, Any]:
        writer("ready")
        try:
            await anyio.sleep(30)
        except BaseException as exc:
            raise exc  # re-raised by hand: still the run's real cancellation
        return {}

    graph = StateGraph(S)
    graph.add_node("slow", slow)
    graph.add_edge(START, "slow")
    graph.add_edge("slow", END)
    stream = graph.compile().astream_events({"n": 0, "log": []})
    async for event in stream:
        if event["event"] == "on_custom_event":
            break
    with anyio.fail_after(10):
        await stream.aclose()  # no NodeCancelledError surfaces, no hang


# -- property: any BaseException, anywhere ------------------------------------------------

BASE_EXCEPTIONS = st.sampled_from(
    [
        lambda: SystemExit(1),
        KeyboardInterrupt,
        asyncio.CancelledError,
        GeneratorExit,
        lambda: Custom("x"),
        lambda: type("Other", (BaseException,), {})(),
    ]
)


@settings(max_examples=40, deadline=None, database=None)
@given(
    width=st.integers(1, 4),
    depth=st.integers(1, 3),
    culprit=st.tuples(st.integers(0, 2), st.integers(0, 3)),
    make=BASE_EXCEPTIONS,
    when=st.sampled_from(["before-await", "after-await", "sync"]),
    backend=st.sampled_from(["asyncio", "trio"]),
)
def test_any_base_exception_anywhere_fails_the_run_and_closes_every_start(
    width: int,
    depth: int,
    culprit: tuple[int, int],
    make: Callable[[], BaseException],
    when: str,
    backend: str,
) -> None:
    """Layers of ``width`` parallel nodes, ``depth`` deep; one node raises."""
    level, index = culprit[0] % depth, culprit[1] % width
    bad = f"n{level}_{index}"
    exc = make()

    def node(name: str) -> Callable[..., Any]:
        if name == bad and when == "sync":

            def sync(state: S) -> dict[str, Any]:
                raise exc

            return sync

        async def run(state: S) -> dict[str, Any]:
            if name == bad and when == "before-await":
                raise exc
            await anyio.lowlevel.checkpoint()
            if name == bad:
                raise exc
            return {"log": [name]}

        return run

    graph = StateGraph(S)
    previous = [START]
    for lvl in range(depth):
        names = [f"n{lvl}_{i}" for i in range(width)]
        for name in names:
            graph.add_node(name, node(name))
        for name in names:
            if len(previous) == 1:
                graph.add_edge(previous[0], name)
            else:
                graph.add_edge(previous, name)
        previous = names
    for name in previous:
        graph.add_edge(name, END)
    app = graph.compile(name="g")

    async def main() -> None:
        events: list[dict[str, Any]] = []
        with pytest.raises(NodeError) as caught:
            async for event in app.astream_events({"n": 0, "log": []}):
                events.append(event)
        assert caught.value.node == bad and caught.value.__cause__ is exc
        assert_closed(events)
        assert events[-1]["event"] == "on_chain_error" and events[-1]["name"] == "g"
        assert (await healthy().ainvoke({"n": 0, "log": []}))["n"] == 1

    anyio.run(main, backend=backend)
