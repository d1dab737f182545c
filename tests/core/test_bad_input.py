"""Every malformed graph, input, config or node result gets a clear headwater error.

Each test checks the error type from :mod:`headwater.errors` and that the message names
the culprit (node, key, edge) and what was expected. Graph validation messages are one
line each.
"""

from __future__ import annotations

import dataclasses
import itertools
import operator
from typing import Annotated, Any, Literal, TypedDict

import pytest

from headwater import END, START, Command, Send, StateGraph
from headwater.errors import (
    GraphValidationError,
    HeadwaterError,
    InvalidInputError,
    InvalidRouteError,
    InvalidUpdateError,
)


class State(TypedDict):
    topic: str
    notes: Annotated[list[str], operator.add]


def noop(state: State) -> None:
    return None


def graph_with(*names: str) -> StateGraph:
    """Nodes ``names`` chained from START (so they are reachable)."""
    graph = StateGraph(State)
    for name in names:
        graph.add_node(name, noop)
    if names:
        graph.add_edge(START, names[0])
        for a, b in itertools.pairwise(names):
            graph.add_edge(a, b)
    return graph


def invalid(build: Any, *fragments: str) -> str:
    """Run ``build``; it must raise a one-line GraphValidationError naming ``fragments``."""
    with pytest.raises(GraphValidationError) as info:
        build()
    message = str(info.value)
    assert "\n" not in message, message
    assert isinstance(info.value, HeadwaterError) and isinstance(info.value, ValueError)
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


def app_with(node: Any, name: str = "worker") -> Any:
    graph = StateGraph(State)
    graph.add_node(name, node)
    graph.add_edge(START, name)
    return graph.compile(name="g")


# -- graph validation -----------------------------------------------------------------------


def test_edge_to_unknown_node_suggests_the_closest_name() -> None:
    graph = graph_with("summarize", "review")
    graph.add_edge("review", "sumarize")
    invalid(
        graph.compile,
        "Edge 'review' -> 'sumarize'",
        "unknown node 'sumarize'",
        "Did you mean 'summarize'?",
        "Known nodes: review, summarize",
    )


def test_edge_from_unknown_node() -> None:
    graph = graph_with("a")
    graph.add_edge("ghost", "a")
    invalid(graph.compile, "Edge 'ghost' -> 'a'", "starts at unknown node 'ghost'")


def test_edge_from_start_to_unknown_node() -> None:
    graph = StateGraph(State)
    graph.add_edge(START, "nothing")
    invalid(graph.compile, "unknown node 'nothing'", "add_node('nothing', fn)")


def test_no_entry_point() -> None:
    graph = StateGraph(State)
    graph.add_node("lonely", noop)
    invalid(graph.compile, "no entry point", "add_edge(START, 'lonely')")


def test_empty_graph_has_no_entry_point() -> None:
    invalid(StateGraph(State).compile, "no entry point")


def test_unreachable_node() -> None:
    graph = graph_with("a", "b")
    graph.add_node("island", noop)
    graph.add_edge("island", "a")  # edges *from* it do not make it reachable
    invalid(graph.compile, "'island'", "unreachable from START")


def test_node_reached_only_through_an_unannotated_command_is_unreachable() -> None:
    graph = StateGraph(State)
    graph.add_node("a", lambda s: Command(goto="b"))
    graph.add_node("b", noop)
    graph.add_edge(START, "a")
    invalid(graph.compile, "'b'", "unreachable", "Command[Literal['b']]")


def test_node_reached_through_an_annotated_command_is_reachable() -> None:
    def a(state: State) -> Command[Literal["b"]]:
        return Command(goto="b")

    graph = StateGraph(State)
    graph.add_node("a", a)
    graph.add_node("b", noop)
    graph.add_edge(START, "a")
    graph.validate()
    graph.add_node("c", noop)  # add_node(..., destinations=) says the same
    graph.add_node("d", lambda s: Command(goto="c"), destinations=["c"])
    graph.add_edge("b", "d")
    graph.validate()


def test_command_annotation_naming_an_unknown_node() -> None:
    def a(state: State) -> Command[Literal["b", "nope"]]:
        return Command(goto="b")

    graph = StateGraph(State)
    graph.add_node("a", a)
    graph.add_node("b", noop)
    graph.add_edge(START, "a")
    invalid(graph.compile, "Command destinations of node 'a'", "unknown node 'nope'")


@pytest.mark.parametrize("name", [START, END])
def test_reserved_node_names(name: str) -> None:
    invalid(lambda: StateGraph(State).add_node(name, noop), repr(name), "reserved")


@pytest.mark.parametrize("name", ["a|b", "sub:graph"])
def test_node_names_with_namespace_separators(name: str) -> None:
    invalid(lambda: StateGraph(State).add_node(name, noop), repr(name), "reserved character")


@pytest.mark.parametrize("name", ["", 42])
def test_node_name_must_be_a_non_empty_string(name: Any) -> None:
    invalid(lambda: StateGraph(State).add_node(name, noop), "non-empty string", repr(name))


def test_duplicate_node_name() -> None:
    graph = StateGraph(State)
    graph.add_node("twice", noop)
    invalid(lambda: graph.add_node("twice", noop), "'twice'", "already in the graph", "unique")


@pytest.mark.parametrize("fn", [42, "noop", None])
def test_non_callable_node(fn: Any) -> None:
    invalid(lambda: StateGraph(State).add_node("n", fn), "Node 'n'", "needs a callable")


def test_node_with_no_parameter() -> None:
    invalid(
        lambda: StateGraph(State).add_node("n", lambda: {}),
        "Node 'n'",
        "no positional parameter",
        "fn(state)",
    )


def test_node_with_an_unknown_required_keyword() -> None:
    def node(state: State, *, tools: Any) -> None:
        return None

    invalid(lambda: StateGraph(State).add_node("n", node), "Node 'n'", "['tools']", "writer")


def test_non_callable_reducer() -> None:
    class Bad(TypedDict):
        items: Annotated[list[str], 42]

    invalid(lambda: StateGraph(Bad), "'items'", "Bad", "42", "not a callable reducer")


@pytest.mark.parametrize("schema", [{"topic": str}, "State", 42, None])
def test_schema_that_is_not_a_class(schema: Any) -> None:
    invalid(lambda: StateGraph(schema), "state schema class", "TypedDict")


class Plain:
    topic: str


@pytest.mark.parametrize("schema", [Plain, int, dict])
def test_schema_class_that_is_not_typeddict_attrs_or_dataclass(schema: type) -> None:
    invalid(lambda: StateGraph(schema), schema.__name__, "TypedDict, attrs class or dataclass")


def test_schema_without_keys() -> None:
    class Empty(TypedDict):
        pass

    invalid(lambda: StateGraph(Empty), "Empty", "no keys")


def test_path_map_pointing_to_unknown_node() -> None:
    graph = graph_with("a", "b")
    graph.add_conditional_edges("a", lambda s: "go", {"go": "b", "stop": "c"})
    invalid(graph.compile, "Conditional edge from 'a'", "path_map", "unknown node 'c'")


def test_path_map_given_as_a_string() -> None:
    graph = graph_with("a")
    invalid(lambda: graph.add_conditional_edges("a", noop, "a"), "path_map", "'a'", "list")


def test_conditional_edge_from_unknown_node() -> None:
    graph = graph_with("a")
    graph.add_conditional_edges("ghost", lambda s: "a")
    invalid(graph.compile, "Conditional edge from 'ghost'", "unknown node 'ghost'")


def test_non_callable_router() -> None:
    graph = graph_with("a")
    invalid(lambda: graph.add_conditional_edges("a", "b"), "Router", "'a'", "callable")  # type: ignore[arg-type]


def test_join_edge_with_unknown_source() -> None:
    graph = graph_with("a", "b")
    graph.add_node("c", noop)
    graph.add_edge(["a", "gohst", "b"], "c")
    invalid(graph.compile, "Join edge ['a', 'gohst', 'b'] -> 'c'", "unknown node 'gohst'")


def test_join_edge_to_unknown_node() -> None:
    graph = graph_with("a", "b")
    graph.add_edge(["a", "b"], "d")
    invalid(graph.compile, "Join edge", "points to unknown node 'd'")


def test_join_edge_from_start_or_end() -> None:
    graph = graph_with("a", "b")
    invalid(lambda: graph.add_edge([START, "a"], "b"), "Join edge", "START or END")
    invalid(lambda: graph.add_edge([], "b"), "Join edge into 'b'", "non-empty list")


def test_edges_to_start_and_from_end() -> None:
    graph = graph_with("a")
    invalid(lambda: graph.add_edge("a", START), "START cannot be an edge's end")
    invalid(lambda: graph.add_edge(END, "a"), "END cannot be an edge's start")


def test_interrupt_before_unknown_node() -> None:
    graph = graph_with("review")
    invalid(
        lambda: graph.compile(interrupt_before=["reveiw"]),
        "interrupt_before",
        "'reveiw'",
        "Did you mean 'review'?",
    )


# -- run input and config -------------------------------------------------------------------


APP = graph_with("a").compile(name="g")


@pytest.mark.parametrize("value", [[("topic", "x")], "topic", 42])
@pytest.mark.anyio
async def test_input_that_is_not_a_mapping(value: Any) -> None:
    with pytest.raises(InvalidInputError) as info:
        await APP.ainvoke(value)
    message = str(info.value)
    assert "Input of graph 'g' must be a mapping" in message
    assert "'notes': ..., 'topic': ..." in message
    assert type(value).__name__ in message


@pytest.mark.anyio
async def test_input_with_unknown_key() -> None:
    with pytest.raises(InvalidInputError) as info:
        await APP.ainvoke({"topic": "x", "topics": "y"})
    message = str(info.value)
    assert "unknown key(s) ['topics']" in message
    assert "did you mean 'topic'" in message
    assert "['notes', 'topic']" in message


@pytest.mark.anyio
async def test_dataclass_state_missing_a_required_field() -> None:
    @dataclasses.dataclass
    class Needs:
        question: str
        answer: str = ""

    graph = StateGraph(Needs)
    graph.add_node("answer", lambda s: {"answer": s.question.upper()})
    graph.add_edge(START, "answer")
    app = graph.compile()
    assert await app.ainvoke({"question": "q"}) == {"question": "q", "answer": "Q"}
    with pytest.raises(InvalidInputError) as info:
        await app.ainvoke({"answer": "a"})
    assert "required field(s) ['question']" in str(info.value)
    assert "Needs" in str(info.value) and "input" in str(info.value)


@pytest.mark.parametrize("config", [["recursion_limit", 5], "config", 3])
@pytest.mark.anyio
async def test_config_that_is_not_a_mapping(config: Any) -> None:
    with pytest.raises(InvalidInputError, match="config must be a mapping") as info:
        await APP.ainvoke({}, config)
    assert type(config).__name__ in str(info.value)


@pytest.mark.parametrize("limit", [0, -1, "x", 2.5, True, None, 10**18, 1_000_001])
@pytest.mark.anyio
async def test_bad_recursion_limit(limit: Any) -> None:
    with pytest.raises(InvalidInputError) as info:
        await APP.ainvoke({}, {"recursion_limit": limit})
    message = str(info.value)
    assert "config['recursion_limit'] must be an int from 1 to 1_000_000" in message
    assert repr(limit) in message
    assert "config['timeout']" in message  # the way to let long loops run: bound them by time


@pytest.mark.anyio
async def test_configurable_that_is_not_a_mapping() -> None:
    with pytest.raises(InvalidInputError, match=r"config\['configurable'\] must be a mapping"):
        await APP.ainvoke({}, {"configurable": "thread-1"})


# -- node results -------------------------------------------------------------------------


@pytest.mark.parametrize("returned", [42, ["topic", "x"], "topic", ("topic", "x")])
@pytest.mark.anyio
async def test_node_returning_a_non_mapping(returned: Any) -> None:
    with pytest.raises(InvalidUpdateError) as info:
        await app_with(lambda s: returned, name="writer_node").ainvoke({})
    message = str(info.value)
    assert "Node 'writer_node' returned " + type(returned).__name__ in message
    assert "expected a mapping of state keys" in message
    assert any("'writer_node'" in n for n in info.value.__notes__)


@pytest.mark.anyio
async def test_node_returning_an_unknown_key() -> None:
    async def node(state: State) -> dict[str, Any]:
        return {"topic": "t", "note": ["typo"]}

    with pytest.raises(InvalidUpdateError) as info:
        await app_with(node, name="scribe").ainvoke({})
    message = str(info.value)
    assert "Node 'scribe' returned unknown state key(s) ['note']" in message
    assert "did you mean 'notes'" in message
    assert "['notes', 'topic']" in message


@pytest.mark.anyio
async def test_command_update_with_unknown_key() -> None:
    with pytest.raises(InvalidUpdateError, match=r"Node 'cmd' returned unknown state key\(s\)"):
        await app_with(lambda s: Command(update={"nope": 1}), name="cmd").ainvoke({})


@pytest.mark.anyio
async def test_two_parallel_writes_to_a_key_without_reducer() -> None:
    graph = StateGraph(State)
    graph.add_node("left", lambda s: {"topic": "L", "notes": ["l"]})
    graph.add_node("right", lambda s: {"topic": "R", "notes": ["r"]})
    graph.add_edge(START, "left")
    graph.add_edge(START, "right")
    with pytest.raises(InvalidUpdateError) as info:
        await graph.compile().ainvoke({})
    message = str(info.value)
    assert "State key 'topic'" in message
    assert "'left'" in message and "'right'" in message
    assert "no reducer" in message and "Annotated" in message


@pytest.mark.anyio
async def test_two_send_tasks_writing_a_key_without_reducer() -> None:
    graph = StateGraph(State)
    graph.add_node("w", lambda arg: {"topic": arg})
    graph.add_conditional_edges(START, lambda s: [Send("w", "a"), Send("w", "b")])
    with pytest.raises(InvalidUpdateError, match=r"State key 'topic' received 2 writes .*'w', 'w'"):
        await graph.compile().ainvoke({})


@pytest.mark.anyio
async def test_reducer_failing_on_a_bad_value_names_the_key() -> None:
    with pytest.raises(TypeError) as info:
        await app_with(lambda s: {"notes": "not a list"}).ainvoke({"notes": ["x"]})
    assert any("state key 'notes'" in n and "add" in n for n in info.value.__notes__)


# -- routing ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_router_returning_an_unknown_node() -> None:
    def pick(state: State) -> str:
        return "elsewhere"

    graph = graph_with("a", "b")
    graph.add_conditional_edges("a", pick)
    with pytest.raises(InvalidRouteError) as info:
        await graph.compile(name="g").ainvoke({})
    message = str(info.value)
    assert "Router 'pick' of 'a'" in message
    assert "'elsewhere'" in message
    assert "['a', 'b'], END, or a Send" in message


@pytest.mark.anyio
async def test_router_returning_a_value_missing_from_its_path_map() -> None:
    graph = graph_with("a", "b")
    graph.add_conditional_edges("a", lambda s: "maybe", {"yes": "b", "no": END})
    with pytest.raises(InvalidRouteError) as info:
        await graph.compile().ainvoke({})
    assert "'maybe'" in str(info.value) and "['yes', 'no']" in str(info.value)


@pytest.mark.anyio
async def test_send_to_unknown_node() -> None:
    graph = graph_with("a")
    graph.add_conditional_edges("a", lambda s: [Send("a", {}), Send("missing", {})])
    with pytest.raises(InvalidRouteError) as info:
        await graph.compile().ainvoke({})
    message = str(info.value)
    assert "unknown node 'missing'" in message and "['a']" in message


@pytest.mark.anyio
async def test_command_goto_unknown_node() -> None:
    def jump(state: State) -> Command:
        return Command(goto="nowhere")

    with pytest.raises(InvalidRouteError) as info:
        await app_with(jump, name="jump").ainvoke({})
    message = str(info.value)
    assert "Command(goto=...) of node 'jump'" in message
    assert "'nowhere'" in message and "graph 'g'" in message


@pytest.mark.anyio
async def test_command_goto_send_to_unknown_node() -> None:
    def jump(state: State) -> Command:
        return Command(goto=Send("nowhere", {}))

    with pytest.raises(InvalidRouteError, match="unknown node 'nowhere'"):
        await app_with(jump, name="jump").ainvoke({})


@pytest.mark.anyio
async def test_routing_errors_are_headwater_errors() -> None:
    graph = graph_with("a")
    graph.add_conditional_edges("a", lambda s: 42)
    with pytest.raises(HeadwaterError, match="42"):
        await graph.compile().ainvoke({})


@pytest.mark.anyio
async def test_sync_node_returning_a_coroutine() -> None:
    async def fetch(state: State) -> dict[str, Any]:
        return {"topic": "t"}

    with pytest.raises(InvalidUpdateError) as info:
        await app_with(lambda s: fetch(s), name="forgot").ainvoke({})
    message = str(info.value)
    assert "Node 'forgot' returned an awaitable" in message and "async def" in message


@pytest.mark.anyio
async def test_none_input_without_a_checkpointer() -> None:
    with pytest.raises(InvalidInputError) as info:
        await APP.ainvoke(None)
    assert "graph 'g' has no checkpointer" in str(info.value)
    assert "thread_id" in str(info.value)
