"""Stream-mode defaults and shapes as in LangGraph 1.2 (issue 12, item 3).

Every expected value marked "LangGraph 1.2" was recorded by running the same graph with
langgraph 1.2.24 / langchain-core 1.8.3 (/work/lgvenv); the graphs here are their ports.
"""

from __future__ import annotations

import operator
from typing import Annotated, Any, TypedDict

import pytest

from headwater import END, START, Command, MessagesState, StateGraph, interrupt
from headwater.messages import AIMessage, HumanMessage, ToolCall, ToolMessage
from headwater.testing.fake import FakeChatModel
from headwater.tools import ToolNode, tool, tools_condition

pytestmark = pytest.mark.anyio


class S(TypedDict, total=False):
    log: Annotated[list[str], operator.add]
    x: int


def a(state: S) -> dict[str, Any]:
    return {"log": ["a"]}


def empty(state: S) -> dict[str, Any]:
    return {}


def none(state: S) -> None:
    return None


def b(state: S) -> dict[str, Any]:
    return {"x": 1}


def chain(checkpointer: Any = None) -> Any:
    """a → empty (returns {}) → none (returns None) → b → END."""
    g = StateGraph(S)
    for name, fn in (("a", a), ("empty", empty), ("none", none), ("b", b)):
        g.add_node(name, fn)
    g.add_edge(START, "a")
    g.add_edge("a", "empty")
    g.add_edge("empty", "none")
    g.add_edge("none", "b")
    g.add_edge("b", END)
    return g.compile(checkpointer=checkpointer)


async def collect(app: Any, input: Any, config: Any = None, **kwargs: Any) -> list[Any]:
    return [c async for c in app.astream(input, config, **kwargs)]


THREAD = {"configurable": {"thread_id": "t"}}

# -- defaults and the updates / values / debug shapes ----------------------------------------


async def test_the_default_stream_mode_is_updates_with_none_for_nodes_that_wrote_nothing() -> None:
    # LangGraph 1.2, astream() and stream() alike:
    expected = [{"a": {"log": ["a"]}}, {"empty": None}, {"none": None}, {"b": {"x": 1}}]
    assert await collect(chain(), {"log": []}) == expected
    assert list(chain().stream({"log": []})) == expected
    assert await collect(chain(), {"log": []}, stream_mode="updates") == expected


async def test_values_yields_nothing_for_a_superstep_that_wrote_nothing() -> None:
    # LangGraph 1.2: [{'log': []}, {'log': ['a']}, {'log': ['a'], 'x': 1}]
    assert await collect(chain(), {"log": []}, stream_mode="values") == [
        {"log": []},
        {"log": ["a"]},
        {"log": ["a"], "x": 1},
    ]
    g = StateGraph(S)
    g.add_node("empty", empty)
    g.add_node("none", none)
    g.add_edge(START, "empty")
    g.add_edge("empty", "none")
    nothing = g.compile()
    # LangGraph 1.2: [{'log': []}] — and for an input that writes nothing, no chunk at all.
    assert await collect(nothing, {"log": []}, stream_mode="values") == [{"log": []}]
    assert await collect(nothing, {}, stream_mode="values") == []


async def test_parallel_steps_yield_one_values_chunk() -> None:
    g = StateGraph(S)
    g.add_node("a", a)
    g.add_node("empty", empty)
    g.add_edge(START, "a")
    g.add_edge(START, "empty")
    app = g.compile()
    # LangGraph 1.2: values [{'log': []}, {'log': ['a']}]; updates {'a': ...}, {'empty': None}
    assert await collect(app, {"log": []}, stream_mode="values") == [{"log": []}, {"log": ["a"]}]
    updates = await collect(app, {"log": []}, stream_mode="updates")
    assert sorted(updates, key=repr) == sorted([{"a": {"log": ["a"]}}, {"empty": None}], key=repr)


@pytest.mark.parametrize("mode", ["debug", "tasks"])
async def test_a_task_results_result_is_the_update_dict(mode: str) -> None:
    chunks = await collect(chain(), {"log": []}, stream_mode=mode)
    payloads = [c["payload"] if mode == "debug" else c for c in chunks]
    results = [(p["name"], p["result"]) for p in payloads if "result" in p]
    # LangGraph 1.2: the same results ({} for a node that returned {} or None).
    assert results == [("a", {"log": ["a"]}), ("empty", {}), ("none", {}), ("b", {"x": 1})]


# -- resuming starts from the thread's saved state --------------------------------------------


async def test_resuming_a_finished_thread_yields_its_saved_state_alone() -> None:
    app = chain("memory:")
    await app.ainvoke({"log": []}, THREAD)
    # LangGraph 1.2: values [{'log': ['a'], 'x': 1}]; updates and the default [].
    assert await collect(app, None, THREAD, stream_mode="values") == [{"log": ["a"], "x": 1}]
    assert await collect(app, None, THREAD, stream_mode="updates") == []
    assert await collect(app, None, THREAD) == []


async def test_resuming_a_paused_thread_starts_with_its_saved_state() -> None:
    g = StateGraph(S)
    g.add_node("a", a)
    g.add_node("b", b)
    g.add_edge(START, "a")
    g.add_edge("a", "b")
    app = g.compile(checkpointer="memory:", interrupt_before=["b"])
    first = await collect(app, {"log": []}, THREAD, stream_mode="values")
    assert first[:2] == [{"log": []}, {"log": ["a"]}]
    # LangGraph 1.2: [{'log': ['a']}, {'log': ['a'], 'x': 1}]
    assert await collect(app, None, THREAD, stream_mode="values") == [
        {"log": ["a"]},
        {"log": ["a"], "x": 1},
    ]


async def test_resuming_with_a_command_starts_with_the_saved_state_too() -> None:
    def ask(state: MessagesState) -> dict[str, Any]:
        return {"messages": [("ai", f"answer {interrupt('ok?')}")]}

    g = StateGraph(MessagesState)
    g.add_node("ask", ask)
    g.add_edge(START, "ask")
    app = g.compile(checkpointer="memory:")
    await app.ainvoke({"messages": [("user", "x")]}, THREAD)
    chunks = await collect(app, Command(resume="yes"), THREAD, stream_mode="values")
    # LangGraph 1.2: the saved state ([human 'x']), then with the answer appended.
    assert [[m.content for m in c["messages"]] for c in chunks] == [["x"], ["x", "answer yes"]]


# -- messages: node-returned messages, once, whole -------------------------------------------


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


CALL = AIMessage(content="", tool_calls=(ToolCall(name="add", args={"a": 1, "b": 2}, id="c1"),))


def agent_with_handmade_end() -> Any:
    """agent ⇄ tools (ToolNode), then handmade (returns a hand-built AI and human message)."""
    llm = FakeChatModel([CALL, "it is three"])

    async def agent(state: MessagesState) -> dict[str, Any]:
        return {"messages": [await llm.ainvoke(state["messages"])]}

    def handmade(state: MessagesState) -> dict[str, Any]:
        return {
            "messages": [
                AIMessage(content="hand built", id="h1"),
                HumanMessage(content="human too", id="h2"),
            ]
        }

    g = StateGraph(MessagesState)
    g.add_node("agent", agent)
    g.add_node("tools", ToolNode([add]))
    g.add_node("handmade", handmade)
    g.add_edge(START, "agent")
    g.add_conditional_edges("agent", tools_condition, {"tools": "tools", END: "handmade"})
    g.add_edge("tools", "agent")
    g.add_edge("handmade", END)
    return g.compile()


async def test_messages_carries_tool_results_and_hand_built_messages_once_whole() -> None:
    seen = []
    async for message, metadata in agent_with_handmade_end().astream(
        {"messages": [("user", "hi")]}, stream_mode="messages"
    ):
        if message.content or type(message).__name__ != "AIMessageChunk":
            seen.append(
                (type(message).__name__, message.content, metadata["node"], metadata["step"])
            )
    # LangGraph 1.2 (the tool-call chunks have no text): the ToolMessage whole from
    # `tools`, the streamed tokens (not repeated whole), the node-built messages whole.
    assert seen == [
        ("ToolMessage", "3", "tools", 2),
        ("AIMessageChunk", "it", "agent", 3),
        ("AIMessageChunk", " is", "agent", 3),
        ("AIMessageChunk", " three", "agent", 3),
        ("AIMessage", "hand built", "handmade", 4),
        ("HumanMessage", "human too", "handmade", 4),
    ]


async def test_messages_never_repeats_streamed_or_input_messages() -> None:
    quiet = FakeChatModel(["quiet reply"], tags=["nostream"], cycle=True)
    loud = FakeChatModel(["loud reply"], cycle=True)

    async def q(state: MessagesState) -> dict[str, Any]:
        return {"messages": [await quiet.ainvoke(state["messages"])]}

    async def lo(state: MessagesState) -> dict[str, Any]:
        reply = await loud.ainvoke(state["messages"])
        return {"messages": [*state["messages"], reply]}  # the whole list back

    def edited(state: MessagesState) -> dict[str, Any]:
        last = state["messages"][-1]
        return {"messages": [AIMessage(content=last.text + "!", id=last.id)]}  # same id

    g = StateGraph(MessagesState)
    g.add_node("q", q)
    g.add_node("l", lo)
    g.add_node("edited", edited)
    g.add_edge(START, "q")
    g.add_edge("q", "l")
    g.add_edge("l", "edited")
    app = g.compile()
    seen = [
        (metadata["node"], type(m).__name__, m.content)
        async for m, metadata in app.astream({"messages": [("user", "hi")]}, stream_mode="messages")
        if m.content
    ]
    # LangGraph 1.2: the nostream model's reply once whole; the loud tokens; nothing from
    # the whole list handed back, nor from the edit of a message already streamed.
    assert seen == [
        ("q", "AIMessage", "quiet reply"),
        ("l", "AIMessageChunk", "loud"),
        ("l", "AIMessageChunk", " reply"),
    ]
    final = await app.ainvoke({"messages": [("user", "hi")]})
    assert [m.content for m in final["messages"]] == ["hi", "quiet reply", "loud reply!"]


async def test_tool_messages_reach_a_chat_ui_built_on_messages_with_the_nodes_metadata() -> None:
    app = agent_with_handmade_end()
    tool_results = [
        (m, metadata)
        async for m, metadata in app.astream({"messages": ["hi"]}, stream_mode="messages")
        if isinstance(m, ToolMessage)
    ]
    assert len(tool_results) == 1
    message, metadata = tool_results[0]
    assert (message.tool_call_id, message.name, message.content) == ("c1", "add", "3")
    assert metadata["node"] == "tools" and metadata["triggers"] == ["agent"]


# -- astream_events v2: on_chain_stream ------------------------------------------------------


async def streams_of(app: Any, input: Any, config: Any = None) -> list[tuple[str, Any]]:
    return [
        (e["name"], e["data"]["chunk"])
        async for e in app.astream_events(input, config, include_types=["on_chain_stream"])
    ]


async def test_on_chain_stream_per_node_and_on_the_graph() -> None:
    g = StateGraph(S)
    for name, fn in (("a", a), ("none", none), ("b", b)):
        g.add_node(name, fn)
    g.add_edge(START, "a")
    g.add_edge("a", "none")
    g.add_edge("none", "b")
    app = g.compile(name="LangGraph")
    # LangGraph 1.2: each node's output, then {node: update} on the graph.
    assert await streams_of(app, {"log": []}) == [
        ("a", {"log": ["a"]}),
        ("LangGraph", {"a": {"log": ["a"]}}),
        ("none", None),
        ("LangGraph", {"none": None}),
        ("b", {"x": 1}),
        ("LangGraph", {"b": {"x": 1}}),
    ]
    events = [(e["event"], e["name"]) async for e in app.astream_events({"log": []})]
    assert events[:5] == [
        ("on_chain_start", "LangGraph"),
        ("on_chain_start", "a"),
        ("on_chain_stream", "a"),
        ("on_chain_end", "a"),
        ("on_chain_stream", "LangGraph"),
    ]


async def test_on_chain_stream_of_a_command_and_of_an_interrupt() -> None:
    def cmd(state: S) -> Command[Any]:
        return Command(update={"x": 5}, goto="b")

    g = StateGraph(S)
    g.add_node("cmd", cmd, destinations=["b"])
    g.add_node("b", b)
    g.add_edge(START, "cmd")
    streams = await streams_of(g.compile(name="LangGraph"), {"log": []})
    # LangGraph 1.2: the Command itself from the node, its update on the graph.
    assert streams[0] == ("cmd", Command(update={"x": 5}, goto="b"))
    assert streams[1:] == [
        ("LangGraph", {"cmd": {"x": 5}}),
        ("b", {"x": 1}),
        ("LangGraph", {"b": {"x": 1}}),
    ]

    def ask(state: S) -> dict[str, Any]:
        return {"x": interrupt("ok?")}

    g = StateGraph(S)
    g.add_node("a", a)
    g.add_node("ask", ask)
    g.add_edge(START, "a")
    g.add_edge("a", "ask")
    app = g.compile(checkpointer="memory:", name="LangGraph")
    paused = await streams_of(app, {"log": []}, THREAD)
    # LangGraph 1.2: the paused node streams nothing; the graph streams the interrupts.
    assert paused[:2] == [("a", {"log": ["a"]}), ("LangGraph", {"a": {"log": ["a"]}})]
    ((name, chunk),) = paused[2:]
    assert name == "LangGraph" and [i.value for i in chunk["__interrupt__"]] == ["ok?"]
    assert await streams_of(app, Command(resume=3), THREAD) == [
        ("ask", {"x": 3}),
        ("LangGraph", {"ask": {"x": 3}}),
    ]


async def test_a_subgraph_streams_its_nodes_but_only_the_root_streams_as_a_graph() -> None:
    inner = StateGraph(S)
    inner.add_node("inner", b)
    inner.add_edge(START, "inner")
    outer = StateGraph(S)
    outer.add_node("sub", inner.compile(name="LangGraph"))
    outer.add_edge(START, "sub")
    # LangGraph 1.2: the inner node, the subgraph node's output, the root's update.
    assert await streams_of(outer.compile(name="LangGraph"), {"log": []}) == [
        ("inner", {"x": 1}),
        ("sub", {"log": [], "x": 1}),
        ("LangGraph", {"sub": {"log": [], "x": 1}}),
    ]


@pytest.mark.parametrize("subgraphs", [False, True])
async def test_a_message_a_subgraph_node_returns_comes_once(subgraphs: bool) -> None:
    def hand(state: MessagesState) -> dict[str, Any]:
        return {
            "messages": [AIMessage(content="no id"), ToolMessage(content="r", tool_call_id="c")]
        }

    inner = StateGraph(MessagesState)
    inner.add_node("hand", hand)
    inner.add_edge(START, "hand")
    outer = StateGraph(MessagesState)
    outer.add_node("sub", inner.compile())
    outer.add_edge(START, "sub")
    chunks = [
        c
        async for c in outer.compile().astream(
            {"messages": [("user", "x")]}, stream_mode="messages", subgraphs=subgraphs
        )
    ]
    pairs = [c[1] for c in chunks] if subgraphs else chunks
    # LangGraph 1.2: each once, with an id (its own: the state's copy gets another).
    assert [(m.content, m.id is not None) for m, _ in pairs] == [("no id", True), ("r", True)]


async def test_values_ends_with_the_interrupts_of_a_pause_by_interrupt() -> None:
    def ask(state: S) -> dict[str, Any]:
        return {"x": interrupt("ok?")}

    g = StateGraph(S)
    g.add_node("a", a)
    g.add_node("ask", ask)
    g.add_edge(START, "a")
    g.add_edge("a", "ask")
    app = g.compile(checkpointer="memory:")
    chunks = await collect(app, {"log": []}, THREAD, stream_mode="values")
    # LangGraph 1.2: [{'log': []}, {'log': ['a']}, {'log': ['a'], '__interrupt__': (...)}]
    assert chunks[:2] == [{"log": []}, {"log": ["a"]}]
    assert set(chunks[2]) == {"log", "__interrupt__"}
    assert [i.value for i in chunks[2]["__interrupt__"]] == ["ok?"]
    # LangGraph 1.2, resumed: [{'log': ['a']}, {'log': ['a'], 'x': 5}]
    resumed = await collect(app, Command(resume=5), THREAD, stream_mode="values")
    assert resumed == [{"log": ["a"]}, {"log": ["a"], "x": 5}]


async def test_messages_chunks_carry_the_id_of_the_message_they_build() -> None:
    # LangGraph 1.2 (langchain-core): every chunk of one model call has the call's id
    # ("lc_run--<run id>"), and the message the node returns has it too. Chat front ends
    # (useStream) join the chunks by that id; without it they show nothing until the end.
    chunks = []
    final: dict[str, Any] = {}
    async for mode, item in agent_with_handmade_end().astream(
        {"messages": [("user", "hi")]}, stream_mode=["messages", "values"]
    ):
        if mode == "values":
            final = item
        elif type(item[0]).__name__ == "AIMessageChunk":
            chunks.append(item[0])
    assert chunks and all(m.id is not None for m in chunks)
    ids = list(dict.fromkeys(m.id for m in chunks))  # one per call, in order
    replies = [m for m in final["messages"] if type(m).__name__ == "AIMessage"][:2]
    assert ids == [m.id for m in replies]  # the tool call, then the answer
    assert [m.text for m in replies] == ["", "it is three"]
    assert "".join(c.text for c in chunks if c.id == ids[1]) == "it is three"
