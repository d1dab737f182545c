"""headwater-filters: ``include_*`` / ``exclude_*``, globs, user and plugin filters."""

from __future__ import annotations

import operator
import re
from collections.abc import Mapping
from typing import Annotated, Any, TypedDict

import pytest

import headwater
from headwater import END, START, StateGraph
from headwater.errors import InvalidFilterError
from headwater.events import Event, EventFilter
from headwater.runtime import dispatch_event

pytestmark = pytest.mark.anyio


class S(TypedDict):
    log: Annotated[list[str], operator.add]


INPUT: dict[str, Any] = {"log": []}


def graph(plugin_manager: Any = None) -> headwater.CompiledGraph:
    """fetch_node (tag io) → summarize_node (tags llm, critical) → report → END.

    ``summarize_node`` streams two tokens from a model named ``analyzer``; every node
    writes one custom event.
    """

    async def fetch_node(state: S, *, writer: Any) -> dict[str, Any]:
        writer("fetching")
        return {"log": ["fetch"]}

    async def summarize_node(state: S, *, writer: Any) -> dict[str, Any]:
        writer("summarizing")
        for token in ("a", "b"):
            dispatch_event("on_chat_model_stream", {"chunk": token}, name="analyzer")
        return {"log": ["summary"]}

    def report(state: S, *, writer: Any) -> dict[str, Any]:
        writer("reporting")
        return {"log": ["report"]}

    g = StateGraph(S)
    g.add_node("fetch_node", fetch_node, tags=["io"])
    g.add_node("summarize_node", summarize_node, tags=["llm", "critical"])
    g.add_node("report", report)
    g.add_edge(START, "fetch_node")
    g.add_edge("fetch_node", "summarize_node")
    g.add_edge("summarize_node", "report")
    g.add_edge("report", END)
    return g.compile(name="pipeline", plugin_manager=plugin_manager)


async def seen(app: headwater.CompiledGraph | None = None, **kwargs: Any) -> list[tuple[str, str]]:
    app = app or graph()
    return [(e["event"], e["name"]) async for e in app.astream_events(INPUT, **kwargs)]


@pytest.fixture
async def everything() -> list[tuple[str, str]]:
    return await seen()


# -- the standard filters -----------------------------------------------------------------


async def test_no_filter_sees_everything(everything: list[tuple[str, str]]) -> None:
    assert everything == [
        ("on_chain_start", "pipeline"),
        ("on_chain_start", "fetch_node"),
        ("on_custom_event", "fetch_node"),
        ("on_chain_stream", "fetch_node"),
        ("on_chain_end", "fetch_node"),
        ("on_chain_stream", "pipeline"),
        ("on_chain_start", "summarize_node"),
        ("on_custom_event", "summarize_node"),
        ("on_chat_model_stream", "analyzer"),
        ("on_chat_model_stream", "analyzer"),
        ("on_chain_stream", "summarize_node"),
        ("on_chain_end", "summarize_node"),
        ("on_chain_stream", "pipeline"),
        ("on_chain_start", "report"),
        ("on_custom_event", "report"),
        ("on_chain_stream", "report"),
        ("on_chain_end", "report"),
        ("on_chain_stream", "pipeline"),
        ("on_chain_end", "pipeline"),
    ]


async def test_include_names(everything: list[tuple[str, str]]) -> None:
    assert await seen(include_names=["report", "pipeline"]) == [
        e for e in everything if e[1] in ("report", "pipeline")
    ]
    assert await seen(include_names="report") == [e for e in everything if e[1] == "report"]


async def test_include_types(everything: list[tuple[str, str]]) -> None:
    assert (
        await seen(include_types=["on_chat_model_stream"])
        == [("on_chat_model_stream", "analyzer")] * 2
    )
    assert await seen(include_types=["on_chain_end", "on_custom_event"]) == [
        e for e in everything if e[0] in ("on_chain_end", "on_custom_event")
    ]


async def test_include_tags() -> None:
    events = [e async for e in graph().astream_events(INPUT, include_tags=["critical"])]
    assert {e["metadata"]["node"] for e in events} == {"summarize_node"}
    assert all("critical" in e["tags"] for e in events)
    assert len(events) == 6  # start, custom, 2 tokens, stream, end


async def test_exclude_names_types_and_tags(everything: list[tuple[str, str]]) -> None:
    assert await seen(exclude_names=["analyzer"]) == [e for e in everything if e[1] != "analyzer"]
    assert await seen(exclude_types=["on_custom_event", "on_chat_model_stream"]) == [
        e for e in everything if e[0] not in ("on_custom_event", "on_chat_model_stream")
    ]
    assert await seen(exclude_tags=["llm", "io"]) == [
        e for e in everything if e[1] not in ("fetch_node", "summarize_node", "analyzer")
    ]


async def test_globs(everything: list[tuple[str, str]]) -> None:
    assert await seen(include_names=["*_node"]) == [
        e for e in everything if e[1] in ("fetch_node", "summarize_node")
    ]
    assert await seen(include_types=["on_chain_*"]) == [
        e for e in everything if e[0].startswith("on_chain_")
    ]
    assert await seen(exclude_types=["on_chain_*"]) == [
        e for e in everything if not e[0].startswith("on_chain_")
    ]
    assert await seen(include_tags=["crit*"]) == [
        e for e in everything if e[1] in ("summarize_node", "analyzer")
    ]
    assert await seen(include_names=["re?ort"]) == [e for e in everything if e[1] == "report"]
    assert await seen(include_names=["[fr]*"]) == [
        e for e in everything if e[1] in ("fetch_node", "report")
    ]


async def test_a_glob_does_not_match_a_plain_name_partly(
    everything: list[tuple[str, str]],
) -> None:
    assert await seen(include_names=["_node"]) == []
    assert await seen(include_names=["summarize"]) == []


async def test_includes_are_or_ed(everything: list[tuple[str, str]]) -> None:
    got = await seen(include_names=["report"], include_types=["on_chat_model_stream"])
    assert got == [e for e in everything if e[1] == "report" or e[0] == "on_chat_model_stream"]
    got = await seen(include_tags=["io"], include_names=["pipeline"])
    assert got == [e for e in everything if e[1] in ("fetch_node", "pipeline")]


async def test_excludes_are_and_ed_with_includes(everything: list[tuple[str, str]]) -> None:
    got = await seen(include_names=["*_node"], exclude_types=["on_custom_event"])
    assert got == [
        e
        for e in everything
        if e[1] in ("fetch_node", "summarize_node") and e[0] != "on_custom_event"
    ]
    got = await seen(include_types=["on_chain_*"], exclude_names=["pipeline"], exclude_tags=["io"])
    assert got == [
        e
        for e in everything
        if e[0].startswith("on_chain_") and e[1] not in ("pipeline", "fetch_node")
    ]


async def test_include_and_exclude_of_the_same_thing_yields_nothing() -> None:
    assert await seen(include_names=["report"], exclude_names=["report"]) == []
    assert await seen(include_types=["on_chain_end"], exclude_types=["on_chain_*"]) == []


async def test_node_filters_select_by_the_node_events_come_from(
    everything: list[tuple[str, str]],
) -> None:
    got = await seen(filters=[("include_nodes", ["summarize_node"])])
    # the node's own events and its model's tokens
    assert got == [e for e in everything if e[1] in ("summarize_node", "analyzer")]
    got = await seen(filters=[("exclude_nodes", ["*_node"])])
    assert got == [e for e in everything if e[1] in ("report", "pipeline")]


async def test_filter_arguments_take_any_sequence_of_strings() -> None:
    assert await seen(include_names=("report",)) == await seen(include_names=["report"])
    assert await seen(include_names=frozenset({"report"})) == await seen(include_names="report")


@pytest.mark.parametrize(
    ("kwargs", "shown"),
    [
        ({"include_names": 5}, "include_names takes a list of names or glob patterns"),
        ({"exclude_types": [1, 2]}, "exclude_types takes a list"),
        ({"include_tags": {"a": 1}}, "got dict"),
        ({"filters": [("include_nodes", 3)]}, "include_nodes takes a list"),
    ],
)
async def test_bad_filter_arguments(kwargs: dict[str, Any], shown: str) -> None:
    with pytest.raises(InvalidFilterError, match=shown):
        graph().astream_events(INPUT, **kwargs)


# -- user filters ---------------------------------------------------------------------------


async def test_a_callable_filter_receives_events(everything: list[tuple[str, str]]) -> None:
    received: list[Event] = []

    def only_tokens(event: Event) -> bool:
        received.append(event)
        return event.event == "on_chat_model_stream"

    got = await seen(filters=[only_tokens])
    assert got == [("on_chat_model_stream", "analyzer")] * 2
    assert all(isinstance(e, Event) for e in received)
    assert [(e.event, e.name) for e in received] == everything
    seqs = [e.seq for e in received]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


async def test_a_single_callable_or_event_filter_need_not_be_in_a_list() -> None:
    def tokens(event: Event) -> bool:
        return event.event == "on_chat_model_stream"

    assert len(await seen(filters=tokens)) == 2  # type: ignore[arg-type]
    custom_only = EventFilter(kinds=frozenset({"on_custom_event"}))
    assert len(await seen(filters=custom_only)) == 3  # type: ignore[arg-type]


async def test_user_filters_and_with_the_keyword_filters(
    everything: list[tuple[str, str]],
) -> None:
    def not_summary(event: Event) -> bool:
        return event.name != "summarize_node"

    got = await seen(include_names=["*_node"], filters=[not_summary])
    assert got == [e for e in everything if e[1] == "fetch_node"]


async def test_an_event_filter_object_with_all_three_stages(
    everything: list[tuple[str, str]],
) -> None:
    f = EventFilter(
        kinds=frozenset({"on_chain_start", "on_chain_end"}),
        accept=lambda kind, name, tags, md: "node" in md,
        predicate=lambda e: e.event == "on_chain_end",
    )
    got = await seen(filters=[f])
    assert got == [("on_chain_end", n) for n in ("fetch_node", "summarize_node", "report")]


async def test_a_named_filter_from_a_plugin() -> None:
    made_with: list[Any] = []

    class TokensFrom:
        @headwater.hookimpl
        def headwater_event_filters(self) -> Mapping[str, Any]:
            def tokens_from(model: Any) -> EventFilter:
                made_with.append(model)
                return EventFilter(
                    kinds=frozenset({"on_chat_model_stream"}),
                    accept=lambda kind, name, tags, md: model is None or name == model,
                )

            return {"tokens_from": tokens_from}

    pm = headwater.create_plugin_manager(plugins=[TokensFrom()])
    app = graph(plugin_manager=pm)
    assert (
        await seen(app, filters=[("tokens_from", "analyzer")])
        == [("on_chat_model_stream", "analyzer")] * 2
    )
    assert await seen(app, filters=[("tokens_from", "other")]) == []
    assert await seen(app, filters=["tokens_from"]) == [("on_chat_model_stream", "analyzer")] * 2
    assert made_with == ["analyzer", "other", None]
    # autoload=True keeps the standard filters beside the plugin's
    assert len(await seen(app, include_names=["report"])) == 4
    with pytest.raises(InvalidFilterError, match="unknown filter 'tokens_from'"):
        graph().astream_events(INPUT, filters=["tokens_from"])  # not on the default manager


async def test_a_broken_filter_factory_is_named() -> None:
    class Broken:
        @headwater.hookimpl
        def headwater_event_filters(self) -> Mapping[str, Any]:
            return {"broken": lambda arg: "not a filter"}

    app = graph(plugin_manager=headwater.create_plugin_manager(plugins=[Broken()]))
    with pytest.raises(InvalidFilterError, match=r"Filter 'broken' is broken.*returned str"):
        app.astream_events(INPUT, filters=["broken"])


async def test_without_the_filters_plugin_the_keyword_filters_say_what_to_install() -> None:
    import headwater_streams

    pm = headwater.create_plugin_manager(autoload=False, plugins=[headwater_streams])
    app = graph(plugin_manager=pm)
    with pytest.raises(InvalidFilterError, match=r"\(none\). Install headwater-filters"):
        app.astream_events(INPUT, include_names=["report"])
    assert len(await seen(app)) == 19  # no filter asked for: works without the plugin


def test_the_standard_filters_are_registered_by_the_filters_plugin() -> None:
    registry = headwater.create_plugin_manager().registrations("headwater_event_filters")
    assert {
        "include_names",
        "include_types",
        "include_tags",
        "include_nodes",
        "exclude_names",
        "exclude_types",
        "exclude_tags",
        "exclude_nodes",
    } <= set(registry)


# -- LangChain's run types in include_types / exclude_types ---------------------------------


def agent_with_a_tool() -> headwater.CompiledGraph:
    """agent (a model call and a custom event) → tools (one tool call) → agent → END, as
    the LangGraph 1.2 agent these expectations were recorded from."""
    from headwater.messages import AIMessage, ToolCall
    from headwater.testing.fake import FakeChatModel
    from headwater.tools import ToolNode, tool, tools_condition

    @tool
    def add(a: int, b: int) -> int:
        """Add."""
        return a + b

    call = AIMessage(content="", tool_calls=(ToolCall(name="add", args={"a": 1, "b": 2}, id="c1"),))
    llm = FakeChatModel([call, "three"], name="model")

    async def agent(state: headwater.MessagesState, *, writer: Any) -> dict[str, Any]:
        writer({"progress": 1})
        return {"messages": [await llm.ainvoke(state["messages"])]}

    g = StateGraph(headwater.MessagesState)
    g.add_node("agent", agent)
    g.add_node("tools", ToolNode([add]))
    g.add_edge(START, "agent")
    g.add_conditional_edges("agent", tools_condition)
    g.add_edge("tools", "agent")
    return g.compile(name="agent_graph")


async def kinds_and_names(**kwargs: Any) -> set[tuple[str, str]]:
    app = agent_with_a_tool()
    return {
        (e["event"], e["name"]) async for e in app.astream_events({"messages": ["hi"]}, **kwargs)
    }


async def test_include_types_tool_keeps_tool_events() -> None:
    # LangGraph 1.2: {('on_tool_start', 'add'), ('on_tool_end', 'add')}
    assert await kinds_and_names(include_types=["tool"]) == {
        ("on_tool_start", "add"),
        ("on_tool_end", "add"),
    }


async def test_include_types_chain_keeps_the_graph_and_its_nodes() -> None:
    # LangGraph 1.2 also has its routers' chain events (headwater does not trace routers).
    assert await kinds_and_names(include_types=["chain"]) == {
        (kind, name)
        for kind in ("on_chain_start", "on_chain_stream", "on_chain_end")
        for name in ("agent_graph", "agent", "tools")
    }


async def test_exclude_types_chain_drops_graph_and_node_events() -> None:
    # LangGraph 1.2: custom events, chat-model and tool events remain.
    kept = await kinds_and_names(exclude_types=["chain"])
    assert {kind for kind, _ in kept} == {
        "on_custom_event",
        "on_chat_model_start",
        "on_chat_model_stream",
        "on_chat_model_end",
        "on_tool_start",
        "on_tool_end",
    }


async def test_run_types_and_event_patterns_mix_and_combine_with_names() -> None:
    assert {k for k, _ in await kinds_and_names(include_types=["chat_model"])} == {
        "on_chat_model_start",
        "on_chat_model_stream",
        "on_chat_model_end",
    }
    assert {k for k, _ in await kinds_and_names(exclude_types=["chat_model", "tool"])} == {
        "on_chain_start",
        "on_chain_stream",
        "on_chain_end",
        "on_custom_event",
    }
    mixed = await kinds_and_names(include_types=["tool", "on_chat_model_end"])
    assert {k for k, _ in mixed} == {"on_tool_start", "on_tool_end", "on_chat_model_end"}
    # LangGraph 1.2: any include matches — the tool's events plus everything named 'agent'.
    union = await kinds_and_names(include_types=["tool"], include_names=["agent"])
    assert ("on_tool_start", "add") in union and ("on_chain_start", "agent") in union
    assert {n for _, n in union} == {"add", "agent"}


async def test_interrupts_are_chain_events() -> None:
    from headwater import interrupt

    def ask(state: S) -> dict[str, Any]:
        return {"log": [interrupt("ok?")]}

    g = StateGraph(S)
    g.add_node("ask", ask)
    g.add_edge(START, "ask")
    app = g.compile(checkpointer="memory:")
    config = {"configurable": {"thread_id": "t"}}
    chain = [e["event"] async for e in app.astream_events(INPUT, config, include_types=["chain"])]
    assert "on_interrupt" in chain
    others = [e["event"] async for e in app.astream_events(INPUT, config, exclude_types=["chain"])]
    assert others == []


async def test_langchains_other_run_types_are_accepted() -> None:
    for run_type in ("llm", "prompt", "parser", "retriever"):
        assert await kinds_and_names(include_types=[run_type]) == set()  # none emitted here


@pytest.mark.parametrize(
    ("arg", "says"),
    [
        (["tools"], "got 'tools', which matches no event. Did you mean 'tool'?"),
        (["on_tol_*"], "got 'on_tol_*', which matches no event. Did you mean 'on_tool_*'?"),
        (["custom"], "Did you mean 'on_custom_*'?"),
        (["tool", "chian"], "got 'chian'"),
        ([42], "takes a list of names or glob patterns"),
    ],
)
@pytest.mark.parametrize("argument", ["include_types", "exclude_types"])
async def test_a_type_that_matches_nothing_is_an_error_before_the_run(
    argument: str, arg: list[Any], says: str
) -> None:
    started = []

    def node(state: S) -> dict[str, Any]:
        started.append(True)
        return {}

    g = StateGraph(S)
    g.add_node("node", node)
    g.add_edge(START, "node")
    app = g.compile()
    with pytest.raises(InvalidFilterError, match=re.escape(says)) as info:
        app.astream_events(INPUT, **{argument: arg})  # raised here: nothing iterated
    if "matches no event" in says:
        message = str(info.value)
        assert "chain, chat_model, llm, tool, retriever, prompt, parser" in message
        assert "on_tool_start" in message  # the event types it could have named
    with pytest.raises(InvalidFilterError):
        app.astream_events(INPUT, filters=[(argument, arg)])
    assert started == []
