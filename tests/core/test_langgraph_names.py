"""The names LangGraph users import, behaving as they do in LangGraph 1.2 (issue 12, item 5).

Expected values marked "LangGraph 1.2" were recorded by running the same code against
langgraph 1.2.24 / langchain-core 1.8.3.
"""

from __future__ import annotations

import operator
from typing import Annotated, Any, Literal, TypedDict

import attrs
import pytest

import headwater
from headwater import END, START, Command, MessagesState, StateGraph
from headwater.drawing import DrawableGraph, Edge
from headwater.errors import InvalidInputError, InvalidUpdateError
from headwater.messages import (
    AIMessage,
    HumanMessage,
    SystemMessage,
    ToolCall,
    ToolMessage,
    Usage,
    add_messages,
    coerce_message,
)
from headwater.testing.fake import FakeChatModel
from headwater.tools import ToolError, ToolNode, tool, tools_condition

# -- MessagesState ---------------------------------------------------------------------------


def test_messages_state_is_importable_where_langgraph_users_look() -> None:
    assert headwater.MessagesState is MessagesState
    assert headwater.messages.MessagesState is MessagesState


@pytest.mark.anyio
async def test_a_messages_state_graph_appends_messages_and_subclasses_add_keys() -> None:
    class State(MessagesState):
        turns: Annotated[int, operator.add]

    def reply(state: State) -> dict[str, Any]:
        return {"messages": [("ai", f"you said {state['messages'][-1].content}")], "turns": 1}

    graph = StateGraph(State)
    graph.add_node("reply", reply)
    graph.add_edge(START, "reply")
    graph.add_edge("reply", END)
    out = await graph.compile().ainvoke({"messages": [("user", "hi")]})
    assert [(type(m), m.content) for m in out["messages"]] == [
        (HumanMessage, "hi"),
        (AIMessage, "you said hi"),
    ]
    assert out["turns"] == 1
    assert all(m.id for m in out["messages"])  # add_messages gives every message an id


# -- tools_condition beside ToolNode ---------------------------------------------------------

CALL = AIMessage(content="", tool_calls=(ToolCall(name="add", args={"a": 2, "b": 3}, id="c1"),))


def test_tools_condition_routes_on_the_last_message() -> None:
    # LangGraph 1.2: 'tools' / '__end__' for a state dict, a message list or another key.
    assert tools_condition({"messages": [HumanMessage(content="x"), CALL]}) == "tools"
    assert tools_condition({"messages": [AIMessage(content="done")]}) == END == "__end__"
    assert tools_condition([CALL]) == "tools"
    assert tools_condition({"chat": [CALL]}, messages_key="chat") == "tools"

    class Obj:
        messages = (CALL,)

    assert tools_condition(Obj()) == "tools"


@pytest.mark.parametrize("state", [{"messages": []}, {"other": [CALL]}, {}])
def test_tools_condition_without_messages_says_where_it_looked(state: Any) -> None:
    with pytest.raises(ToolError, match="no messages in the state under 'messages'"):
        tools_condition(state)


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def agent_graph(llm: FakeChatModel) -> StateGraph:
    bound = llm.bind_tools([add])

    async def agent(state: MessagesState) -> dict[str, Any]:
        return {"messages": [await bound.ainvoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("agent", agent)
    graph.add_node("tools", ToolNode([add]))
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", tools_condition)
    graph.add_edge("tools", "agent")
    return graph


@pytest.mark.anyio
async def test_an_agent_loop_with_tool_node_and_tools_condition() -> None:
    llm = FakeChatModel([CALL, "It is 5."])
    out = await agent_graph(llm).compile().ainvoke({"messages": ["What is 2 + 3?"]})
    assert [type(m).__name__ for m in out["messages"]] == [
        "HumanMessage",
        "AIMessage",
        "ToolMessage",
        "AIMessage",
    ]
    assert out["messages"][2].content == "5" and out["messages"][2].tool_call_id == "c1"
    assert out["messages"][-1].content == "It is 5."
    assert llm.bound_tools == [add]


# -- add_messages accepts what LangChain's accepts ------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [  # LangGraph 1.2's add_messages([], [value]) gives the same types and fields.
        ("hi", HumanMessage(content="hi")),
        (("user", "hi"), HumanMessage(content="hi")),
        (("human", "hi"), HumanMessage(content="hi")),
        (["user", "hi"], HumanMessage(content="hi")),
        (("ai", "yo"), AIMessage(content="yo")),
        (("assistant", "yo"), AIMessage(content="yo")),
        (("system", "s"), SystemMessage(content="s")),
        (("developer", "d"), SystemMessage(content="d")),
        ({"role": "user", "content": "hi"}, HumanMessage(content="hi")),
        ({"type": "human", "content": "hi"}, HumanMessage(content="hi")),
        (
            {"role": "user", "content": "hi", "id": "m1", "name": "bob", "extra": 1},
            HumanMessage(content="hi", id="m1", name="bob"),
        ),
        (
            {"role": "user", "content": [{"type": "text", "text": "hi"}]},
            HumanMessage(content=[{"type": "text", "text": "hi"}]),
        ),
        (
            {
                "type": "ai",
                "content": "x",
                "tool_calls": [{"name": "f", "args": {"a": 1}, "id": "c1"}],
            },
            AIMessage(content="x", tool_calls=(ToolCall(name="f", args={"a": 1}, id="c1"),)),
        ),
        (
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "f", "arguments": '{"a": 1}'},
                    }
                ],
            },
            AIMessage(content="", tool_calls=(ToolCall(name="f", args={"a": 1}, id="c1"),)),
        ),
        (
            {
                "type": "ai",
                "content": "x",
                "usage_metadata": {"input_tokens": 3, "output_tokens": 4},
            },
            AIMessage(content="x", usage=Usage(input_tokens=3, output_tokens=4)),
        ),
        (
            {"role": "tool", "content": "r", "tool_call_id": "c1"},
            ToolMessage(content="r", tool_call_id="c1"),
        ),
        (
            {"type": "tool", "content": "r", "tool_call_id": "c1", "status": "error"},
            ToolMessage(content="r", tool_call_id="c1", status="error"),
        ),
    ],
)
def test_add_messages_accepts_what_langchain_accepts(value: Any, expected: Any) -> None:
    (message,) = add_messages([], [value])
    assert message.id  # an id is given when there is none, as in LangGraph
    assert message == attrs.evolve(expected, id=expected.id or message.id)


def test_add_messages_takes_a_single_message_like_value_too() -> None:
    # LangGraph 1.2: a right side that is not a list is one message.
    assert add_messages([], "hi")[0].content == "hi"
    (pair,) = add_messages([], ("user", "x"))
    assert (type(pair), pair.content) == (HumanMessage, "x")
    assert type(add_messages([], {"role": "user", "content": "x"})[0]) is HumanMessage


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        (5, "expected a message, a string"),
        (("bogus", "x"), "unknown role 'bogus'"),
        ({"type": "chat", "role": "x", "content": "x"}, "unknown role 'x'"),
        ({"role": "function", "content": "x", "name": "f"}, "use role 'tool'"),
        (("tool", "r"), "needs the 'tool_call_id'"),
        ({"role": "tool", "content": "r"}, "needs the 'tool_call_id'"),
        ({"content": "x"}, "expected a message, a string"),
        ({"role": "user", "content": 42}, "content must be a string or a list"),
        ({"type": "ai", "content": "", "tool_calls": [{"args": {}}]}, "Cannot make a tool call"),
        (
            {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "[1]"}}]},
            "Cannot make a tool call",
        ),
    ],
)
def test_add_messages_rejects_with_what_is_accepted(bad: Any, says: str) -> None:
    with pytest.raises(InvalidUpdateError, match=says):
        add_messages([], [bad])
    with pytest.raises(InvalidUpdateError, match=says):
        coerce_message(bad)


# -- get_graph(): draw_mermaid(), draw_ascii(), to_json() ---------------------------------

# LangGraph 1.2's draw_mermaid() of the same graphs, character for character.
AGENT_MERMAID = (
    "---\nconfig:\n  flowchart:\n    curve: linear\n---\ngraph TD;\n"
    "\t__start__([<p>__start__</p>]):::first\n\tagent(agent)\n\ttools(tools)\n"
    "\t__end__([<p>__end__</p>]):::last\n\t__start__ --> agent;\n\tagent -.-> __end__;\n"
    "\tagent -.-> tools;\n\ttools --> agent;\n\tclassDef default fill:#f2f0ff,line-height:1.2\n"
    "\tclassDef first fill-opacity:0\n\tclassDef last fill:#bfb6fc\n"
)
LABELLED_BARE_MERMAID = (
    "graph TD;\n\t__start__ --> a;\n\t__start__ --> c;\n\ta -. &nbsp;y&nbsp; .-> __end__;\n"
    "\ta -. &nbsp;x&nbsp; .-> b;\n\tb --> __end__;\n\tc --> __end__;\n"
)


class S(TypedDict, total=False):
    x: int


def noop(state: Any) -> dict[str, Any]:
    return {}


def test_get_graph_draws_mermaid_as_langgraph_does() -> None:
    view = agent_graph(FakeChatModel(["x"])).compile().get_graph()
    assert isinstance(view, DrawableGraph)
    assert list(view.nodes) == ["__start__", "agent", "tools", "__end__"]
    assert view.draw_mermaid() == AGENT_MERMAID
    assert view.to_json()["edges"] == [  # LangGraph 1.2's to_json() edges
        {"source": "__start__", "target": "agent"},
        {"source": "agent", "target": "__end__", "conditional": True},
        {"source": "agent", "target": "tools", "conditional": True},
        {"source": "tools", "target": "agent"},
    ]

    def route(state: S) -> str:
        return "b"

    graph = StateGraph(S)
    for name in "abc":
        graph.add_node(name, noop)
    graph.add_edge(START, "a")
    graph.add_edge(START, "c")
    graph.add_conditional_edges("a", route, {"x": "b", "y": END})
    graph.add_edge(["b", "c"], END)
    assert graph.compile().get_graph().draw_mermaid(with_styles=False) == LABELLED_BARE_MERMAID


def test_router_destinations_come_from_path_map_literal_or_everywhere() -> None:
    def typed(state: S) -> Literal["b", "__end__"]:
        return "b"

    def untyped(state: S) -> str:
        return "b"

    def edges(router: Any, path_map: Any = None) -> set[tuple[str, str, bool]]:
        graph = StateGraph(S)
        graph.add_node("a", noop)
        graph.add_node("b", noop)
        graph.add_edge(START, "a")
        graph.add_conditional_edges("a", router, path_map)
        graph.add_edge("b", END)
        view = graph.compile().get_graph()
        return {(e.source, e.target, e.conditional) for e in view.edges if e.source == "a"}

    assert edges(typed) == {("a", "b", True), ("a", "__end__", True)}
    assert edges(untyped, ["b"]) == {("a", "b", True)}
    assert edges(untyped) == {("a", "a", True), ("a", "b", True), ("a", "__end__", True)}


def test_command_destinations_are_conditional_edges() -> None:
    def jump(state: S) -> Command[Literal["b"]]:
        return Command(goto="b")

    graph = StateGraph(S)
    graph.add_node("a", jump)
    graph.add_node("b", noop)
    graph.add_edge(START, "a")
    graph.add_edge("b", END)
    assert Edge("a", "b", conditional=True) in graph.compile().get_graph().edges


def sub_and_parent() -> Any:
    inner = StateGraph(S)
    inner.add_node("inner1", noop)
    inner.add_node("inner2", noop)
    inner.add_edge(START, "inner1")
    inner.add_edge("inner1", "inner2")
    inner.add_edge("inner2", END)
    outer = StateGraph(S)
    outer.add_node("pre", noop)
    outer.add_node("sub", inner.compile())
    outer.add_edge(START, "pre")
    outer.add_edge("pre", "sub")
    outer.add_edge("sub", END)
    return outer.compile()


def test_xray_expands_subgraphs_as_langgraph_does() -> None:
    app = sub_and_parent()
    assert list(app.get_graph().nodes) == ["__start__", "pre", "sub", "__end__"]
    view = app.get_graph(xray=True)
    # LangGraph 1.2: the same ids and edges (its node order puts __end__ before the inner ones).
    assert sorted(view.nodes) == ["__end__", "__start__", "pre", "sub:inner1", "sub:inner2"]
    assert [(e.source, e.target) for e in view.edges] == [
        ("__start__", "pre"),
        ("pre", "sub:inner1"),
        ("sub:inner1", "sub:inner2"),
        ("sub:inner2", "__end__"),
    ]
    mermaid = view.draw_mermaid()
    assert "\tsubgraph sub\n\tsub\\3ainner1(inner1)\n\tsub\\3ainner2(inner2)\n" in mermaid
    assert "\tsub\\3ainner1 --> sub\\3ainner2;\n\tend\n" in mermaid
    assert app.get_graph(xray=0) == app.get_graph()
    with pytest.raises(TypeError, match="xray must be a bool or an int"):
        app.get_graph(xray="yes")  # type: ignore[arg-type]


def test_draw_ascii_draws_boxes_in_layers_with_no_extra_package() -> None:
    graph = StateGraph(S)
    graph.add_node("first", noop)
    graph.add_node("second", noop)
    graph.add_edge(START, "first")
    graph.add_edge("first", "second")
    graph.add_edge("second", END)
    assert graph.compile().get_graph().draw_ascii() == "\n".join(
        [
            "+-----------+",
            "| __start__ |",
            "+-----------+",
            "      *",
            "      *",
            "      *",
            "      *",
            "  +-------+",
            "  | first |",
            "  +-------+",
            "      *",
            "      *",
            "      *",
            "      *",
            " +--------+",
            " | second |",
            " +--------+",
            "      *",
            "      *",
            "      *",
            "      *",
            " +---------+",
            " | __end__ |",
            " +---------+",
        ]
    )
    art = agent_graph(FakeChatModel(["x"])).compile().get_graph().draw_ascii()
    for name in ("__start__", "agent", "tools", "__end__"):
        assert f"| {name} |" in art
    assert "." in art.replace("| ", "")  # the conditional edges are dotted


# -- with_config ------------------------------------------------------------------------


@pytest.mark.anyio
async def test_with_config_binds_config_that_calls_merge_onto() -> None:
    seen: list[dict[str, Any]] = []

    def look(state: S, config: dict[str, Any]) -> dict[str, Any]:
        seen.append(
            {
                "tags": list(config.get("tags") or []),
                "limit": config.get("recursion_limit"),
                "configurable": dict(config["configurable"]),
                "who": config["metadata"].get("who"),
                "other": config["metadata"].get("other"),
            }
        )
        return {}

    graph = StateGraph(S)
    graph.add_node("look", look)
    graph.add_edge(START, "look")
    graph.add_edge("look", END)
    app = graph.compile()
    bound = app.with_config(
        {"tags": ["t1"], "metadata": {"who": "me"}, "configurable": {"k": 1}, "recursion_limit": 7}
    )
    assert bound is not app and app._config is None
    await bound.ainvoke({"x": 1})
    await bound.ainvoke(
        {"x": 1},
        {"tags": ["t2"], "metadata": {"other": 2}, "configurable": {"k2": 2}, "recursion_limit": 9},
    )
    await bound.with_config(tags=["t3"], configurable={"k": 5}).ainvoke({"x": 1})
    await app.ainvoke({"x": 1})
    # LangGraph 1.2 gives the node the same tags, limit, configurable and metadata.
    assert seen == [
        {"tags": ["t1"], "limit": 7, "configurable": {"k": 1}, "who": "me", "other": None},
        {
            "tags": ["t1", "t2"],
            "limit": 9,
            "configurable": {"k": 1, "k2": 2},
            "who": "me",
            "other": 2,
        },
        {"tags": ["t1", "t3"], "limit": 7, "configurable": {"k": 5}, "who": "me", "other": None},
        {"tags": [], "limit": None, "configurable": {}, "who": None, "other": None},
    ]
    events = [e async for e in bound.astream_events({"x": 1})]
    assert all("t1" in e["tags"] for e in events)


@pytest.mark.anyio
async def test_with_config_binds_a_thread_for_runs_and_thread_state() -> None:
    graph = StateGraph(S)
    graph.add_node("a", noop)
    graph.add_edge(START, "a")
    graph.add_edge("a", END)
    ada = graph.compile(checkpointer="memory:").with_config(configurable={"thread_id": "ada"})
    await ada.ainvoke({"x": 3})
    assert (await ada.aget_state({})).values == {"x": 3}
    assert ada.get_state({}).values == {"x": 3}  # the sync form, in async code too
    assert len(await ada.aget_state_history({})) == 2


def test_with_config_rejects_what_is_not_a_config() -> None:
    graph = StateGraph(S)
    graph.add_node("a", noop)
    graph.add_edge(START, "a")
    app = graph.compile()
    with pytest.raises(InvalidInputError, match="config must be a mapping"):
        app.with_config(42)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="recursion_limit"):
        app.with_config(recursion_limit="many").invoke({})


# -- message conveniences LangGraph code uses ----------------------------------------------


def test_tool_calls_read_like_langchains_dicts() -> None:
    call = ToolCall(name="add", args={"a": 2}, id="c1")
    assert (call["name"], call["args"], call["id"], call["type"]) == (
        "add",
        {"a": 2},
        "c1",
        "tool_call",
    )
    assert call.get("id") == "c1" and call.get("missing", "x") == "x"
    with pytest.raises(KeyError):
        call["missing"]


def test_usage_metadata_is_langchains_dict() -> None:
    assert AIMessage(content="x", usage=Usage(input_tokens=1, output_tokens=2)).usage_metadata == {
        "input_tokens": 1,
        "output_tokens": 2,
        "total_tokens": 3,
    }
    assert AIMessage(content="x").usage_metadata is None


def test_pretty_print_prints_as_langchain_does(capsys: pytest.CaptureFixture[str]) -> None:
    # LangChain 1.8's pretty_repr() of the same messages, character for character.
    reply = AIMessage(
        content="hi there", name="bot", tool_calls=(ToolCall(name="add", args={"a": 1}, id="c1"),)
    )
    assert reply.pretty_repr() == (
        "================================== Ai Message ==================================\n"
        "Name: bot\n\nhi there\nTool Calls:\n  add (c1)\n Call ID: c1\n  Args:\n    a: 1"
    )
    assert HumanMessage(content="hi").pretty_repr() == (
        "================================ Human Message =================================\n\nhi"
    )
    assert ToolMessage(content="5", tool_call_id="c1", name="add").pretty_repr() == (
        "================================= Tool Message =================================\n"
        "Name: add\n\n5"
    )
    assert AIMessage(content="").pretty_repr() == "=" * 34 + " Ai Message " + "=" * 34
    SystemMessage(content="s").pretty_print()
    assert capsys.readouterr().out == (
        "================================ System Message ================================\n\ns\n"
    )


def test_remove_all_messages_clears_the_list_as_in_langgraph() -> None:
    from headwater.messages import REMOVE_ALL_MESSAGES, RemoveMessage

    assert REMOVE_ALL_MESSAGES == "__remove_all__"  # LangGraph 1.2's value
    a, b, c, d = (HumanMessage(content=x, id=x) for x in "abcd")
    clear = RemoveMessage(id=REMOVE_ALL_MESSAGES)
    # LangGraph 1.2: ['c'], [], ['d'] for the same three updates.
    assert [m.content for m in add_messages([a, b], [clear, c])] == ["c"]
    assert add_messages([a, b], [c, clear]) == []
    assert [m.content for m in add_messages([a, b], [c, clear, d])] == ["d"]


def test_an_ai_message_takes_tool_calls_as_langchains_dicts() -> None:
    langchain_style = AIMessage(
        content="", tool_calls=[{"name": "add", "args": {"a": 1}, "id": "c1", "type": "tool_call"}]
    )
    openai_style = AIMessage(
        content="",
        tool_calls=[
            {"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1}'}}
        ],
    )
    expected = (ToolCall(name="add", args={"a": 1}, id="c1"),)
    assert langchain_style.tool_calls == openai_style.tool_calls == expected
    with pytest.raises(InvalidUpdateError, match="must be a list of tool calls"):
        AIMessage(content="", tool_calls="add")


# -- langgraph_* event metadata ----------------------------------------------------------------


class _Fan(TypedDict):
    x: Annotated[list[int], operator.add]


@pytest.mark.anyio
async def test_langgraph_metadata_keys_as_langgraph_fills_them() -> None:
    """Edges, a join and a ``Send``: the ``langgraph_*`` keys a LangGraph 1.2 run of the same
    graph gives (recorded), each task's ``langgraph_checkpoint_ns`` its own ``node:id``."""
    from headwater import Send

    graph = StateGraph(_Fan)
    graph.add_node("a", lambda s: {"x": [1]})
    graph.add_node("b", lambda s: {"x": [2]})
    graph.add_node("c", lambda s: {"x": [3]})
    graph.add_edge(START, "a")
    graph.add_edge("a", "b")
    graph.add_conditional_edges("b", lambda s: [Send("c", {"x": [9]})], ["c"])
    graph.add_edge(["a", "b"], "c")
    seen = {}
    async for event in graph.compile().astream_events({"x": []}, include_types=["chain"]):
        if event["event"] == "on_chain_start" and event["name"] in ("a", "b", "c"):
            meta = event["metadata"]
            key = (event["name"], meta["langgraph_path"][0])
            seen[key] = meta
            assert meta["langgraph_checkpoint_ns"] == f"{event['name']}:{event['run_id']}"
            assert meta["langgraph_node"] == event["name"]
    assert {
        k: (m["langgraph_step"], m["langgraph_triggers"], m["langgraph_path"])
        for k, m in seen.items()
    } == {
        ("a", "__pregel_pull"): (1, ["branch:to:a"], ["__pregel_pull", "a"]),
        ("b", "__pregel_pull"): (2, ["branch:to:b"], ["__pregel_pull", "b"]),
        ("c", "__pregel_pull"): (3, ["join:a+b:c"], ["__pregel_pull", "c"]),
        ("c", "__pregel_push"): (3, ["__pregel_push"], ["__pregel_push", 0, False]),
    }
