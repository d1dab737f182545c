"""Messages, chat models, tools and retrievers: behaviour through the public API."""

from __future__ import annotations

import contextlib
import json
import re
import threading
from collections.abc import Callable
from typing import Annotated, Any, TypedDict

import anyio
import anyio.lowlevel
import anyio.to_thread
import pytest

import headwater
from headwater import END, START, StateGraph
from headwater.errors import ChatModelError, HeadwaterError, InvalidInputError, InvalidUpdateError
from headwater.messages import (
    AIMessage,
    AIMessageChunk,
    HumanMessage,
    RemoveMessage,
    SystemMessage,
    ToolCall,
    ToolCallChunk,
    ToolMessage,
    Usage,
    add_messages,
    coerce_message,
)
from headwater.models import init_chat_model
from headwater.retrievers import Document, InMemoryRetriever, Retriever
from headwater.testing.conformance import ChatModelConformance, Reply
from headwater.testing.fake import FakeChatModel, ScriptedError, split_tokens
from headwater.tools import ToolError, ToolNode, tool


class Chat(TypedDict):
    messages: Annotated[list[Any], add_messages]


# -- messages ---------------------------------------------------------------------------


def test_chunks_add_up_text_tool_calls_and_usage() -> None:
    parts = [
        AIMessageChunk(content="Hel", id="m1"),
        AIMessageChunk(content="lo"),
        AIMessageChunk(
            tool_call_chunks=(ToolCallChunk(name="add", args='{"a": ', id="c1", index=0),)
        ),
        AIMessageChunk(tool_call_chunks=(ToolCallChunk(args="1}", index=0),)),
        AIMessageChunk(usage=Usage(input_tokens=3, output_tokens=2)),
        AIMessageChunk(usage=Usage(output_tokens=1)),
    ]
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    message = total.to_message()
    assert message == AIMessage(
        content="Hello",
        id="m1",
        tool_calls=(ToolCall(name="add", args={"a": 1}, id="c1"),),
        usage=Usage(input_tokens=3, output_tokens=3),
    )
    assert message.usage is not None and message.usage.total_tokens == 6


def test_tool_call_args_that_are_not_a_json_object_become_invalid_tool_calls() -> None:
    chunk = AIMessageChunk(
        tool_call_chunks=(
            ToolCallChunk(name="f", args='{"a": ', id="x", index=0),
            ToolCallChunk(name="g", args="[1]", id="y", index=1),
            ToolCallChunk(name="h", args='{"b": 2}', id="z", index=2),
        )
    )
    assert [call.name for call in chunk.tool_calls] == ["g", "h"]  # complete JSON so far
    message = chunk.to_message()  # a broken call does not fail the model call
    assert message.tool_calls == (ToolCall(name="h", args={"b": 2}, id="z"),)
    assert [(c.name, c.args, c.id) for c in message.invalid_tool_calls] == [
        ("f", '{"a": ', "x"),
        ("g", "[1]", "y"),
    ]
    first, second = (c.error for c in message.invalid_tool_calls)
    assert re.search(r"Tool call 'f' \(id 'x'\).*not valid JSON.*Expected one JSON object", first)
    assert "a JSON list, not an object" in second
    from headwater import serde

    assert serde.loads(serde.dumps(message)) == message


@pytest.mark.anyio
async def test_tool_node_answers_invalid_tool_calls_with_error_messages() -> None:
    @tool
    def add(a: int, b: int) -> int:
        """Add."""
        return a + b

    message = AIMessageChunk(
        tool_call_chunks=(
            ToolCallChunk(name="add", args='{"a": 1, "b": 2}', id="ok", index=0),
            ToolCallChunk(name="add", args='{"a": 1,', id="bad", index=1),
        )
    ).to_message()
    out = await ToolNode([add])({"messages": [message]})
    assert [(m.tool_call_id, m.status) for m in out["messages"]] == [
        ("ok", "success"),
        ("bad", "error"),
    ]
    assert out["messages"][0].content == "3"
    assert out["messages"][1].content.startswith("Error: ToolError: Tool call 'add' (id 'bad')")
    with pytest.raises(ToolError, match="not valid JSON"):
        await ToolNode([add], handle_errors=False)({"messages": [message]})


def test_add_messages_appends_replaces_and_removes() -> None:
    first = add_messages([], [HumanMessage(content="hi", id="1"), ("assistant", "hello")])
    assert [type(m) for m in first] == [HumanMessage, AIMessage]
    assert first[1].id is not None  # ids are assigned so later updates can target them
    replaced = add_messages(first, [AIMessage(content="hey", id=first[1].id)])
    assert [m.text for m in replaced] == ["hi", "hey"]
    removed = add_messages(replaced, [RemoveMessage(id="1"), "next"])
    assert [m.text for m in removed] == ["hey", "next"]
    assert add_messages(None, AIMessageChunk(content="x", id="c"))[0] == AIMessage(
        content="x", id="c"
    )
    with pytest.raises(InvalidUpdateError, match="RemoveMessage"):
        add_messages(removed, [RemoveMessage(id="missing")])


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("hi", HumanMessage(content="hi")),
        (("system", "be terse"), SystemMessage(content="be terse")),
        ({"role": "user", "content": "yo"}, HumanMessage(content="yo")),
        (
            {"role": "tool", "content": "4", "tool_call_id": "c"},
            ToolMessage(content="4", tool_call_id="c"),
        ),
    ],
)
def test_coerce_message(value: Any, expected: Any) -> None:
    assert coerce_message(value) == expected


@pytest.mark.parametrize("bad", [42, ("wizard", "x"), {"content": "no role"}])
def test_coerce_message_rejects_with_the_accepted_forms(bad: Any) -> None:
    with pytest.raises(InvalidUpdateError, match="expected a message, a string"):
        coerce_message(bad)


def test_messages_round_trip_through_serde() -> None:
    from headwater import serde

    value = [
        SystemMessage(content="s", id="0"),
        AIMessage(
            content=[{"type": "text", "text": "x"}],
            tool_calls=(ToolCall(name="f", args={}, id="1"),),
        ),
        ToolMessage(content="r", tool_call_id="1", status="error"),
        AIMessageChunk(content="c", tool_call_chunks=(ToolCallChunk(args="{", index=0),)),
    ]
    assert serde.loads(serde.dumps(value)) == value


# -- chat models ------------------------------------------------------------------------


def _graph(node: Callable[..., Any], name: str = "chat_node", **kw: Any) -> headwater.CompiledGraph:
    graph = StateGraph(Chat)
    graph.add_node(name, node, **kw)
    graph.add_edge(START, name)
    graph.add_edge(name, END)
    return graph.compile()


@pytest.mark.anyio
async def test_model_events_carry_node_name_tags_and_provider_metadata() -> None:
    llm = FakeChatModel(["Rivers flow"], tags=["model-tag"])

    async def chat_node(state: Chat) -> dict[str, Any]:
        return {"messages": [await llm.ainvoke(state["messages"])]}

    app = _graph(chat_node, tags=["node-tag"])
    events = [e async for e in app.astream_events({"messages": ["hi"]})]
    model = [e for e in events if e["event"].startswith("on_chat_model")]
    assert [e["event"] for e in model] == [
        "on_chat_model_start",
        "on_chat_model_stream",
        "on_chat_model_stream",
        "on_chat_model_stream",
        "on_chat_model_end",
    ]
    assert {e["name"] for e in model} == {"chat_node"}
    assert all(e["tags"] == ["node-tag", "model-tag"] for e in model)
    assert all(e["metadata"]["ls_provider"] == "fake" for e in model)
    assert all(e["metadata"]["ls_model_name"] == "fake-model" for e in model)
    assert all(e["metadata"]["node"] == "chat_node" for e in model)
    start, end = model[0], model[-1]
    assert (
        start["data"]["messages"]
        == start["data"]["input"]
        == [HumanMessage(content="hi", id=start["data"]["input"][0].id)]
    )
    assert end["data"]["response"] == end["data"]["output"]
    assert end["data"]["response"].content == "Rivers flow"
    assert end["data"]["response"].usage == Usage(input_tokens=1, output_tokens=2)
    node_run = next(
        e for e in events if e["event"] == "on_chain_start" and e["name"] == "chat_node"
    )
    assert start["parent_ids"][-1] == node_run["run_id"]
    assert len({e["run_id"] for e in model}) == 1


@pytest.mark.anyio
async def test_explicit_model_name_wins() -> None:
    llm = FakeChatModel(["x"], name="writer")

    async def node(state: Chat) -> dict[str, Any]:
        return {"messages": [await llm.ainvoke("go")]}

    events = [
        e
        async for e in _graph(node).astream_events(
            {"messages": []}, include_types=["on_chat_model_end"]
        )
    ]
    assert [e["name"] for e in events] == ["writer"]


@pytest.mark.anyio
async def test_sync_invoke_in_a_sync_node_streams_live() -> None:
    release = threading.Event()
    seen_first = anyio.Event()

    class Gated(FakeChatModel):
        async def _token(self, token: Any, call_id: str | None = None) -> AIMessageChunk:
            if token.strip() == "last":
                await anyio.to_thread.run_sync(release.wait)
            return await super()._token(token, call_id)

    llm = Gated(["first middle last"])

    def chat_node(state: Chat) -> dict[str, Any]:
        return {"messages": [llm.invoke(state["messages"])]}  # sync call, in a worker thread

    tokens: list[str] = []
    async for event in _graph(chat_node).astream_events({"messages": ["hi"]}):
        if event["event"] == "on_chat_model_stream":
            tokens.append(event["data"]["chunk"].content)
            if tokens == ["first"]:
                seen_first.set()
                release.set()  # the model may finish only after we saw its first token live
    assert seen_first.is_set()
    assert "".join(tokens) == "first middle last"


@pytest.mark.anyio
async def test_parallel_models_interleave_but_keep_their_own_order() -> None:
    fast = FakeChatModel(["a b c d"], token_delay=0.001)
    slow = FakeChatModel(["w x y z"], token_delay=0.0015)

    async def one(state: Chat) -> dict[str, Any]:
        return {"messages": [await fast.ainvoke("go")]}

    async def two(state: Chat) -> dict[str, Any]:
        return {"messages": [await slow.ainvoke("go")]}

    graph = StateGraph(Chat)
    graph.add_node("one", one)
    graph.add_node("two", two)
    graph.add_edge(START, "one")
    graph.add_edge(START, "two")
    outputs: dict[str, str] = {}
    order: list[str] = []
    async for event in graph.compile().astream_events(
        {"messages": []}, include_types=["on_chat_model_stream"]
    ):
        outputs[event["name"]] = outputs.get(event["name"], "") + event["data"]["chunk"].content
        order.append(event["name"])
    assert outputs == {"one": "a b c d", "two": "w x y z"}
    assert order != sorted(order)  # the two streams interleaved


@pytest.mark.anyio
async def test_messages_mode_yields_each_chunk_once_and_respects_nostream() -> None:
    talk = FakeChatModel(["Hi there"])
    quiet = FakeChatModel(["secret"], tags=["nostream"])

    async def node(state: Chat) -> dict[str, Any]:
        return {"messages": [await talk.ainvoke("go"), await quiet.ainvoke("go")]}

    chunks = [c async for c in _graph(node).astream({"messages": []}, stream_mode="messages")]
    texts = [chunk.content for chunk, _ in chunks if chunk.content]
    # The streamed reply is not repeated; the nostream model's reply, which the node
    # returns, comes once, whole, when the node ends (as in LangGraph 1.2).
    assert texts == ["Hi", " there", "secret"]
    assert type(chunks[-1][0]) is AIMessage
    assert all(meta["node"] == "chat_node" for _, meta in chunks)


@pytest.mark.anyio
async def test_model_error_event_then_the_exception() -> None:
    llm = FakeChatModel(
        [ScriptedError(TimeoutError("upstream slow"), after=1, partial="partial words")]
    )

    async def node(state: Chat) -> dict[str, Any]:
        return {"messages": [await llm.ainvoke("go")]}

    seen: list[str] = []
    with pytest.raises(TimeoutError, match="upstream slow"):
        async for event in _graph(node).astream_events({"messages": []}):
            seen.append(event["event"])
    assert seen[-4:] == [
        "on_chat_model_stream",
        "on_chat_model_error",
        "on_chain_error",
        "on_chain_error",
    ]


def test_model_outside_a_run_and_sync_stream() -> None:
    llm = FakeChatModel(["one two"], cycle=True)
    assert llm.invoke("hi").content == "one two"
    assert [c.content for c in llm.stream("hi") if c.content] == ["one", " two"]
    assert [m.content for m in llm.batch(["a", "b"])] == ["one two", "one two"]
    assert len(llm.calls) == 4


def test_fake_model_scripts_run_out_clearly() -> None:
    llm = FakeChatModel(["only one"])
    llm.invoke("a")
    with pytest.raises(HeadwaterError, match="ran out of scripted responses"):
        llm.invoke("b")
    assert split_tokens("Hello big  world") == ["Hello", " big", "  world"]


def test_init_chat_model_unknown_provider_suggests_and_names_the_plugin() -> None:
    with pytest.raises(
        InvalidInputError, match=r"Did you mean 'openai'.*pip install headwater-openai"
    ):
        init_chat_model("opanai:gpt-4o-mini")
    with pytest.raises(InvalidInputError, match="provider:model"):
        init_chat_model("gpt-4o")
    with pytest.raises(InvalidInputError, match="takes a message, a string or a list"):
        FakeChatModel(["x"]).invoke(42)


def test_init_chat_model_through_a_registered_provider() -> None:
    class Provider:
        @headwater.hookimpl
        def headwater_chat_models(self) -> dict[str, Any]:
            return {"fake": lambda model, **kw: FakeChatModel(["ok"], model=model, **kw)}

    pm = headwater.create_plugin_manager(autoload=False, plugins=[Provider()])
    llm = init_chat_model("fake:tiny", plugin_manager=pm, name="n")
    assert isinstance(llm, FakeChatModel) and llm.model == "tiny" and llm.name == "n"


# -- tools ------------------------------------------------------------------------------


@tool
def add(a: int, b: int = 0) -> int:
    """Add two integers."""
    return a + b


@tool(name="lookup")
async def find(query: str) -> dict[str, Any]:
    """Look something up."""
    await anyio.lowlevel.checkpoint()
    return {"query": query, "hits": 2}


def test_tool_schema_from_signature() -> None:
    assert add.schema == {
        "name": "add",
        "description": "Add two integers.",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a"],
        },
    }
    assert find.name == "lookup"


def test_tool_bad_arguments_are_named() -> None:
    with pytest.raises(ToolError, match=r"missing required argument\(s\) \['a'\]"):
        add.invoke({"b": 1})
    with pytest.raises(ToolError, match=r"unknown argument\(s\) \['c'\]"):
        add.invoke({"a": 1, "c": 2})
    with pytest.raises(ToolError, match="takes a mapping"):
        add.invoke([1, 2])


@pytest.mark.anyio
async def test_tool_node_runs_calls_concurrently_and_reports_errors_as_messages() -> None:
    agent = FakeChatModel(
        [
            AIMessage(
                content="let me check",
                tool_calls=(
                    ToolCall(name="add", args={"a": 2, "b": 3}, id="c1"),
                    ToolCall(name="lookup", args={"query": "rivers"}, id="c2"),
                    ToolCall(name="nope", args={}, id="c3"),
                ),
            )
        ]
    )

    async def agent_node(state: Chat) -> dict[str, Any]:
        return {"messages": [await agent.ainvoke(state["messages"])]}

    graph = StateGraph(Chat)
    graph.add_node("agent", agent_node)
    graph.add_node("tools", ToolNode([add, find]))
    graph.add_edge(START, "agent")
    graph.add_edge("agent", "tools")
    app = graph.compile()
    events = [
        e async for e in app.astream_events({"messages": ["hi"]}, include_types=["on_tool_*"])
    ]
    started = [e["name"] for e in events if e["event"] == "on_tool_start"]
    assert sorted(started) == ["add", "lookup"]  # concurrent: trio randomises start order
    starts = {e["name"]: e["data"]["input"] for e in events if e["event"] == "on_tool_start"}
    assert starts == {"add": {"a": 2, "b": 3}, "lookup": {"query": "rivers"}}
    ends = {e["name"]: e["data"]["output"] for e in events if e["event"] == "on_tool_end"}
    # Called by ToolNode with a tool call, a tool's end carries its ToolMessage (LangChain's).
    assert {name: (m.content, m.tool_call_id) for name, m in ends.items()} == {
        "add": ("5", "c1"),
        "lookup": ('{"query": "rivers", "hits": 2}', "c2"),
    }
    agent.cycle = True
    result = await app.ainvoke({"messages": ["hi"]})
    replies = [m for m in result["messages"] if isinstance(m, ToolMessage)]
    assert [(m.tool_call_id, m.content, m.status) for m in replies[:2]] == [
        ("c1", "5", "success"),
        ("c2", json.dumps({"query": "rivers", "hits": 2}), "success"),
    ]
    assert replies[2].status == "error" and "Unknown tool 'nope'" in replies[2].text


@pytest.mark.anyio
async def test_tool_node_needs_an_ai_message() -> None:
    graph = StateGraph(Chat)
    graph.add_node("tools", ToolNode([add]))
    graph.add_edge(START, "tools")
    with pytest.raises(ToolError, match="needs the last message"):
        await graph.compile().ainvoke({"messages": ["hi"]})


# -- retrievers -------------------------------------------------------------------------


def test_bm25_ranks_and_cuts_at_k() -> None:
    texts = [
        "rivers flow downhill to the sea",
        "mountains rise where plates collide",
        "the river delta meets the sea",
        "deserts are dry",
    ]
    retriever = InMemoryRetriever.from_texts(texts, [{"i": i} for i in range(4)], k=2)
    docs = retriever.invoke("where does the river meet the sea")
    assert [d.metadata["i"] for d in docs] == [2, 0]
    assert retriever.invoke("volcano") == []
    with pytest.raises(InvalidInputError, match="k must be at least 1"):
        InMemoryRetriever([], k=0)


@pytest.mark.anyio
async def test_retriever_events() -> None:
    retriever = InMemoryRetriever([Document(page_content="rivers flow", id="r")], k=1)

    async def search(state: Chat) -> dict[str, Any]:
        docs = await retriever.ainvoke("rivers")
        return {"messages": [AIMessage(content=docs[0].page_content)]}

    events = [
        e
        async for e in _graph(search, name="search").astream_events(
            {"messages": []}, include_types=["on_retriever_*"]
        )
    ]
    assert [e["event"] for e in events] == ["on_retriever_start", "on_retriever_end"]
    assert events[0]["data"] == {"query": "rivers", "input": "rivers"}
    assert (
        events[1]["data"]["documents"]
        == events[1]["data"]["output"]
        == [Document(page_content="rivers flow", id="r")]
    )
    with pytest.raises(InvalidInputError, match="query string"):
        await retriever.ainvoke(5)  # type: ignore[arg-type]


# -- the pytest plugin's fixtures -------------------------------------------------------


@pytest.mark.anyio
async def test_fixtures_for_users(
    fake_chat_model: Callable[..., FakeChatModel],
    collect_events: Callable[..., Any],
    collect_stream: Callable[..., Any],
) -> None:
    llm = fake_chat_model(["Hi there"], cycle=True)

    async def chat_node(state: Chat) -> dict[str, Any]:
        return {"messages": [await llm.ainvoke(state["messages"])]}

    app = _graph(chat_node)
    events = await collect_events(
        app, {"messages": ["hello"]}, include_types=["on_chat_model_stream"]
    )
    assert "".join(e["data"]["chunk"].content for e in events) == "Hi there"
    chunks = await collect_stream(app, {"messages": ["hello"]}, stream_mode="updates")
    assert chunks[0]["chat_node"]["messages"][0].content == "Hi there"


@pytest.mark.anyio
async def test_a_model_left_early_or_cancelled_still_ends_its_events() -> None:
    llm = FakeChatModel(["one two three four"], token_delay=0.01, cycle=True)

    async def node(state: Chat) -> dict[str, Any]:
        async with contextlib.aclosing(llm.astream("go")) as stream:
            async for _chunk in stream:
                break  # the node stops reading the model's stream after one chunk
        with anyio.move_on_after(0.015):
            await llm.ainvoke("again")  # cancelled mid-stream
        return {"messages": [AIMessage(content="done")]}

    events = [
        e
        async for e in _graph(node).astream_events(
            {"messages": []}, include_types=["on_chat_model_*"]
        )
    ]
    kinds = [e["event"] for e in events if e["event"] != "on_chat_model_stream"]
    assert kinds == [
        "on_chat_model_start",
        "on_chat_model_error",
        "on_chat_model_start",
        "on_chat_model_error",
    ]


# -- sync entry points: invoke/batch from sync nodes, plain code and the loop -------------


class Plain(TypedDict):
    out: Any


class Exploding(Retriever):
    def __init__(self) -> None:
        self.calls = 0

    async def _aretrieve(self, query: str) -> list[Document]:
        self.calls += 1
        raise RuntimeError("index offline")


def failing_call(kind: str) -> tuple[Callable[[], Any], Callable[[], int]]:
    """A sync call that raises RuntimeError, and a count of how often it really ran."""
    llm = FakeChatModel([ScriptedError(RuntimeError("rate limited"), after=1, partial="a b")])
    tool_calls: list[int] = []

    @tool
    def flaky(n: int) -> int:
        """Fail."""
        tool_calls.append(n)
        raise RuntimeError("tool down")

    retriever = Exploding()
    return {
        "model": (lambda: llm.invoke("hi"), lambda: len(llm.calls)),
        "model-batch": (lambda: llm.batch(["hi"]), lambda: len(llm.calls)),
        "tool": (lambda: flaky.invoke({"n": 1}), lambda: len(tool_calls)),
        "retriever": (lambda: retriever.invoke("q"), lambda: retriever.calls),
    }[kind]


FAILS = r"rate limited|tool down|index offline"


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["model", "model-batch", "tool", "retriever"])
async def test_a_sync_call_that_raises_runtime_error_runs_once_and_raises_it(kind: str) -> None:
    # RuntimeError is also what anyio raises outside a worker thread; the sync bridge must
    # not mistake the call's own RuntimeError for that and run the call a second time.
    call, count = failing_call(kind)

    def node(state: Plain) -> dict[str, Any]:
        return {"out": call()}

    graph = StateGraph(Plain)
    graph.add_node("node", node)
    graph.add_edge(START, "node")
    with pytest.raises(RuntimeError, match=FAILS):
        await graph.compile().ainvoke({"out": None})
    assert count() == 1


@pytest.mark.parametrize("kind", ["model", "model-batch", "tool", "retriever"])
def test_the_same_from_plain_sync_code_with_no_loop(kind: str) -> None:
    call, count = failing_call(kind)
    with pytest.raises(RuntimeError, match=FAILS):
        call()
    assert count() == 1


def sync_calls() -> dict[str, tuple[Callable[[], Any], str]]:
    @tool
    def add(a: int, b: int) -> int:
        """Add."""
        return a + b

    return {
        "model": (lambda: FakeChatModel(["x"]).invoke("hi"), "await llm.ainvoke"),
        "model-stream": (lambda: list(FakeChatModel(["x"]).stream("hi")), "llm.astream"),
        "tool": (lambda: add.invoke({"a": 1, "b": 2}), "await tool.ainvoke"),
        "retriever": (
            lambda: InMemoryRetriever.from_texts(["x"]).invoke("x"),
            "await retriever.ainvoke",
        ),
    }


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["model", "model-stream", "tool", "retriever"])
async def test_sync_invoke_in_an_async_node_is_refused_with_the_async_form(kind: str) -> None:
    call, hint = sync_calls()[kind]

    async def node(state: Plain) -> dict[str, Any]:
        call()
        return {}

    graph = StateGraph(Plain)
    graph.add_node("node", node)
    graph.add_edge(START, "node")
    with pytest.raises(
        HeadwaterError, match=f"in a node on the event loop thread.*{re.escape(hint)}"
    ):
        await graph.compile().ainvoke({"out": None})


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["model", "model-stream", "tool", "retriever"])
async def test_sync_invoke_in_async_code_outside_a_run_works_as_in_langchain(kind: str) -> None:
    # A Jupyter cell, `python -m asyncio`, an async test: the call runs on a helper thread.
    call, _ = sync_calls()[kind]
    assert call()


@pytest.mark.anyio
async def test_messages_given_twice_are_a_clear_error() -> None:
    llm = FakeChatModel(["x"])
    with pytest.raises(InvalidInputError, match=r"messages twice.*llm\.invoke\(messages\)"):
        await llm.ainvoke("hi", messages=["a"])
    assert llm.calls == []  # refused before the model was called


class TestFakeChatModelConformance(ChatModelConformance):
    """The scripted fake behaves as the adapters' conformance suite requires."""

    def make_model(self, replies: list[Reply]) -> FakeChatModel:
        script: list[Any] = []
        for reply in replies:
            if reply.cut_after is not None:
                error = ChatModelError("the connection was cut")
                partial = "".join(reply.tokens)
                script.append(ScriptedError(error, after=reply.cut_after, partial=partial))
            elif reply.tool_calls:
                script.append(
                    [
                        AIMessageChunk(
                            tool_call_chunks=(ToolCallChunk(name=name, args=args, id=id_, index=i),)
                        )
                        for i, (id_, name, args) in enumerate(reply.tool_calls)
                    ]
                )
            else:
                script.append(list(reply.tokens))
        return FakeChatModel(script)
