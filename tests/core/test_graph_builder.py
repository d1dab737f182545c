"""The graph builder: schemas, reducers, node signatures, edges, routing and subgraphs.

Every test builds a graph through the public API and checks the final state (and, where
it matters, what the nodes saw). Malformed graphs and inputs are in ``test_bad_input.py``;
step order, errors and the recursion limit in ``test_scheduler.py``.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import itertools
import operator
import random
import threading
from collections.abc import Awaitable, Callable, Mapping
from typing import Annotated, Any, Literal, NotRequired, Required, TypedDict

import anyio
import anyio.lowlevel
import attrs
import pytest

import headwater
from headwater import END, START, Command, Send, StateGraph, get_config, get_stream_writer


class Log(TypedDict):
    text: str
    log: Annotated[list[str], operator.add]


def appender(name: str) -> Any:
    """An async node that appends its own name to ``log``."""

    async def node(state: Mapping[str, Any]) -> dict[str, Any]:
        return {"log": [name]}

    node.__name__ = name
    return node


def chain(*names: str, schema: type[Any] = Log) -> StateGraph:
    graph = StateGraph(schema)
    for name in names:
        graph.add_node(name, appender(name))
    graph.add_edge(START, names[0])
    for a, b in itertools.pairwise(names):
        graph.add_edge(a, b)
    graph.add_edge(names[-1], END)
    return graph


# -- schemas and reducers -----------------------------------------------------------------


@pytest.mark.anyio
async def test_typeddict_keys_without_reducer_take_the_last_write() -> None:
    async def first(state: Log) -> dict[str, Any]:
        return {"text": state["text"] + "-first", "log": ["first"]}

    def second(state: Log) -> dict[str, Any]:
        return {"text": state["text"] + "-second", "log": ["second"]}

    graph = StateGraph(Log)
    graph.add_node("first", first)
    graph.add_node("second", second)
    graph.add_edge(START, "first")
    graph.add_edge("first", "second")
    result = await graph.compile().ainvoke({"text": "in", "log": ["input"]})
    assert result == {"text": "in-first-second", "log": ["input", "first", "second"]}


@pytest.mark.anyio
async def test_input_is_applied_through_the_reducers() -> None:
    seen: list[list[str]] = []

    async def look(state: Log) -> None:
        seen.append(list(state["log"]))

    graph = StateGraph(Log)
    graph.add_node("look", look)
    graph.add_edge(START, "look")
    result = await graph.compile().ainvoke({"log": ["a", "b"]})
    assert seen == [["a", "b"]]
    assert result == {"log": ["a", "b"]}  # a node returning None changes nothing


def merge_dicts(current: dict[str, int], new: dict[str, int]) -> dict[str, int]:
    """A custom reducer: merge, adding up the values of keys present in both."""
    out = dict(current)
    for key, value in new.items():
        out[key] = out.get(key, 0) + value
    return out


class Counts(TypedDict):
    counts: Annotated[dict[str, int], merge_dicts]
    total: Annotated[int, operator.add]


@pytest.mark.anyio
async def test_custom_reducer_combines_input_and_parallel_writes() -> None:
    graph = StateGraph(Counts)
    graph.add_node("x", lambda s: {"counts": {"x": 1, "both": 1}, "total": 1})
    graph.add_node("y", lambda s: {"counts": {"y": 2, "both": 2}, "total": 2})
    graph.add_edge(START, "x")
    graph.add_edge(START, "y")
    result = await graph.compile().ainvoke({"counts": {"both": 10}, "total": 100})
    assert result == {"counts": {"both": 13, "x": 1, "y": 2}, "total": 103}


@dataclasses.dataclass
class DataState:
    n: int
    label: str = "none"
    items: Annotated[list[str], operator.add] = dataclasses.field(default_factory=list)


@pytest.mark.anyio
async def test_dataclass_schema_nodes_receive_an_instance_with_defaults() -> None:
    seen: list[DataState] = []

    async def first(state: DataState) -> dict[str, Any]:
        seen.append(state)
        return {"n": state.n + 1, "items": [state.label]}

    def second(state: DataState) -> dict[str, Any]:
        seen.append(state)
        return {"label": "set", "items": [f"n={state.n}"]}

    graph = StateGraph(DataState)
    graph.add_node("first", first)
    graph.add_node("second", second)
    graph.add_edge(START, "first")
    graph.add_edge("first", "second")
    app = graph.compile()
    result = await app.ainvoke({"n": 1})
    assert result == {"n": 2, "label": "set", "items": ["none", "n=2"]}
    assert [type(s) for s in seen] == [DataState, DataState]
    assert seen[0] == DataState(n=1, label="none", items=[])

    result["items"].append("mutated by the caller")
    again = await app.ainvoke({"n": 1, "items": ["given"]})  # default_factory: fresh per run
    assert again == {"n": 2, "label": "set", "items": ["given", "none", "n=2"]}


@pytest.mark.anyio
async def test_dataclass_instance_is_accepted_as_input() -> None:
    graph = StateGraph(DataState)
    graph.add_node("inc", lambda s: {"n": s.n + 1})
    graph.add_edge(START, "inc")
    result = await graph.compile().ainvoke(DataState(n=5, items=["x"]))
    assert result == {"n": 6, "label": "none", "items": ["x"]}


@attrs.define
class AttrsState:
    count: int = 0
    names: Annotated[list[str], operator.add] = attrs.Factory(list)


@pytest.mark.anyio
async def test_attrs_schema_nodes_receive_an_instance() -> None:
    seen: list[Any] = []

    async def bump(state: AttrsState) -> dict[str, Any]:
        seen.append(state)
        return {"count": state.count + 1, "names": ["bump"]}

    graph = StateGraph(AttrsState)
    graph.add_node("bump", bump)
    graph.add_edge(START, "bump")
    app = graph.compile()
    assert await app.ainvoke({}) == {"count": 1, "names": ["bump"]}
    assert await app.ainvoke({"names": ["in"]}) == {"count": 1, "names": ["in", "bump"]}
    assert seen[0] == AttrsState(count=0, names=[])
    assert isinstance(seen[1], AttrsState) and seen[1].names == ["in"]


def test_sync_invoke_runs_the_graph() -> None:
    assert chain("a", "b").compile().invoke({"text": "t", "log": []}) == {
        "text": "t",
        "log": ["a", "b"],
    }


# -- node signatures ----------------------------------------------------------------------


class Seen(TypedDict):
    log: Annotated[list[str], operator.add]


@pytest.mark.anyio
async def test_node_signatures_state_config_and_writer() -> None:
    checks: dict[str, bool] = {}

    async def async_state(state: Seen) -> dict[str, Any]:
        return {"log": ["async_state"]}

    def sync_state(state: Seen) -> dict[str, Any]:
        return {"log": ["sync_state"]}

    async def async_config(state: Seen, config: Mapping[str, Any]) -> dict[str, Any]:
        checks["async_config"] = (
            config["configurable"] == {"user": "u"}
            and callable(config["streamWriter"])
            and config["streamWriter"] is get_stream_writer()
        )
        return {"log": ["async_config"]}

    def sync_config(state: Seen, config: Mapping[str, Any]) -> dict[str, Any]:
        checks["sync_config"] = (
            config["configurable"] == {"user": "u"}
            and config["streamWriter"] is get_stream_writer()
            and get_config()["configurable"] == {"user": "u"}
        )
        return {"log": ["sync_config"]}

    async def async_writer(state: Seen, *, writer: headwater.StreamWriter) -> dict[str, Any]:
        checks["async_writer"] = isinstance(writer, headwater.StreamWriter) and (
            writer is get_stream_writer()
        )
        writer({"progress": 1})  # nobody streams: a no-op, not an error
        return {"log": ["async_writer"]}

    def sync_writer(state: Seen, *, writer: headwater.StreamWriter) -> dict[str, Any]:
        checks["sync_writer"] = writer is get_stream_writer()
        writer("custom", {"progress": 1})
        return {"log": ["sync_writer"]}

    def config_and_writer(state: Seen, config: Mapping[str, Any], *, writer: Any) -> None:
        checks["config_and_writer"] = config["streamWriter"] is writer is get_stream_writer()

    nodes: list[Any] = [
        async_state,
        sync_state,
        async_config,
        sync_config,
        async_writer,
        sync_writer,
    ]
    graph = StateGraph(Seen)
    for fn in [*nodes, config_and_writer]:
        graph.add_node(fn.__name__, fn)
        graph.add_edge(START, fn.__name__)
    result = await graph.compile().ainvoke({"log": []}, {"configurable": {"user": "u"}})
    assert result == {"log": sorted(fn.__name__ for fn in nodes)}
    assert checks == dict.fromkeys(
        ["async_config", "sync_config", "async_writer", "sync_writer", "config_and_writer"], True
    )


@pytest.mark.anyio
async def test_config_has_configurable_even_when_none_was_given() -> None:
    seen: list[Mapping[str, Any]] = []

    def node(state: Seen, config: Mapping[str, Any]) -> None:
        seen.append(config)

    graph = StateGraph(Seen)
    graph.add_node("node", node)
    graph.add_edge(START, "node")
    await graph.compile().ainvoke({})
    assert seen[0]["configurable"] == {}
    assert callable(seen[0]["streamWriter"])


REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


@pytest.mark.anyio
async def test_sync_nodes_run_in_worker_threads_with_the_context_carried() -> None:
    loop_thread = threading.get_ident()
    seen: dict[str, Any] = {}

    def in_thread(state: Seen) -> dict[str, Any]:
        seen["thread"] = threading.get_ident()
        seen["request_id"] = REQUEST_ID.get()
        seen["configurable"] = get_config()["configurable"]
        seen["writer"] = get_stream_writer()
        return {"log": ["in_thread"]}

    graph = StateGraph(Seen)
    graph.add_node("in_thread", in_thread)
    graph.add_edge(START, "in_thread")
    token = REQUEST_ID.set("req-42")
    try:
        result = await graph.compile().ainvoke({}, {"configurable": {"thread": "t"}})
    finally:
        REQUEST_ID.reset(token)
    assert result == {"log": ["in_thread"]}
    assert seen["thread"] != loop_thread
    assert seen["request_id"] == "req-42"
    assert seen["configurable"] == {"thread": "t"}
    assert isinstance(seen["writer"], headwater.StreamWriter)


@pytest.mark.anyio
async def test_add_node_with_just_a_function_uses_its_name() -> None:
    async def shout(state: Log) -> dict[str, Any]:
        return {"text": state["text"].upper()}

    graph = StateGraph(Log)
    graph.add_node(shout)
    graph.add_edge(START, "shout")
    assert await graph.compile().ainvoke({"text": "hi"}) == {"text": "HI"}


# -- edges --------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_chain_runs_nodes_in_order() -> None:
    result = await chain("one", "two", "three").compile().ainvoke({"log": []})
    assert result == {"log": ["one", "two", "three"]}


def stepper(name: str, steps: dict[str, list[int]]) -> Callable[..., Awaitable[dict[str, Any]]]:
    """A node that records the superstep it ran in (from its config metadata)."""

    async def node(state: Any, config: Mapping[str, Any]) -> dict[str, Any]:
        steps.setdefault(name, []).append(config["metadata"]["step"])
        return {"log": [name]}

    return node


@pytest.mark.anyio
async def test_fan_out_runs_parallel_nodes_in_one_step_on_the_same_snapshot() -> None:
    steps: dict[str, list[int]] = {}
    snapshots: list[list[str]] = []

    def snap(name: str) -> Any:
        async def node(state: Seen) -> dict[str, Any]:
            snapshots.append(list(state["log"]))
            await anyio.lowlevel.checkpoint()
            return await stepper(name, steps)(state, get_config())

        return node

    graph = StateGraph(Seen)
    graph.add_node("root", stepper("root", steps))
    for name in ("left", "middle", "right"):
        graph.add_node(name, snap(name))
        graph.add_edge("root", name)
    graph.add_edge(START, "root")
    result = await graph.compile().ainvoke({"log": []})
    assert result == {"log": ["root", "left", "middle", "right"]}
    assert steps == {"root": [1], "left": [2], "middle": [2], "right": [2]}
    assert snapshots == [["root"]] * 3


@pytest.mark.anyio
async def test_join_edge_waits_for_sources_finishing_in_different_steps() -> None:
    steps: dict[str, list[int]] = {}
    seen_by_join: list[list[str]] = []

    async def join(state: Seen, config: Mapping[str, Any]) -> dict[str, Any]:
        seen_by_join.append(list(state["log"]))
        return await stepper("join", steps)(state, config)

    graph = StateGraph(Seen)
    for name in ("short", "long1", "long2"):
        graph.add_node(name, stepper(name, steps))
    graph.add_node("join", join)
    graph.add_edge(START, "short")
    graph.add_edge(START, "long1")
    graph.add_edge("long1", "long2")
    graph.add_edge(["short", "long2"], "join")
    graph.add_edge("join", END)
    result = await graph.compile().ainvoke({"log": []})
    assert steps == {"short": [1], "long1": [1], "long2": [2], "join": [3]}
    assert seen_by_join == [["long1", "short", "long2"]]
    assert result == {"log": ["long1", "short", "long2", "join"]}


@pytest.mark.anyio
async def test_join_edge_fires_again_in_a_loop() -> None:
    class Loop(TypedDict):
        log: Annotated[list[str], operator.add]
        rounds: Annotated[int, operator.add]

    def again(state: Loop) -> str:
        return "start" if state["rounds"] < 2 else END

    graph = StateGraph(Loop)
    graph.add_node("start", lambda s: {"log": ["start"]})
    graph.add_node("a", lambda s: {"log": ["a"]})
    graph.add_node("b", lambda s: {"log": ["b"]})
    graph.add_node("join", lambda s: {"log": ["join"], "rounds": 1})
    graph.add_edge(START, "start")
    graph.add_edge("start", "a")
    graph.add_edge("start", "b")
    graph.add_edge(["a", "b"], "join")
    graph.add_conditional_edges("join", again, ["start", END])
    result = await graph.compile().ainvoke({})
    assert result == {"log": ["start", "a", "b", "join"] * 2, "rounds": 2}


class Route(TypedDict):
    choice: str
    log: Annotated[list[str], operator.add]


def routed(router: Any, path_map: Any = None, targets: tuple[str, ...] = ("x", "y")) -> Any:
    graph = StateGraph(Route)
    graph.add_node("decide", appender("decide"))
    for name in targets:
        graph.add_node(name, appender(name))
    graph.add_edge(START, "decide")
    graph.add_conditional_edges("decide", router, path_map)
    return graph.compile()


@pytest.mark.anyio
async def test_router_returning_a_name_without_path_map() -> None:
    app = routed(lambda s: s["choice"])
    assert await app.ainvoke({"choice": "y"}) == {"choice": "y", "log": ["decide", "y"]}
    assert await app.ainvoke({"choice": END}) == {"choice": END, "log": ["decide"]}


@pytest.mark.anyio
async def test_router_with_dict_path_map() -> None:
    app = routed(lambda s: s["choice"] == "go", {True: "x", False: END}, targets=("x",))
    assert await app.ainvoke({"choice": "go"}) == {"choice": "go", "log": ["decide", "x"]}
    assert await app.ainvoke({"choice": "stop"}) == {"choice": "stop", "log": ["decide"]}


@pytest.mark.anyio
async def test_router_with_list_path_map_and_list_result() -> None:
    app = routed(lambda s: ["y", "x"], ["x", "y", END])
    assert await app.ainvoke({"choice": ""}) == {"choice": "", "log": ["decide", "x", "y"]}


@pytest.mark.anyio
async def test_async_router_with_config() -> None:
    async def route(state: Route, config: Mapping[str, Any]) -> str:
        await anyio.lowlevel.checkpoint()
        return str(config["configurable"]["go"])

    app = routed(route)
    result = await app.ainvoke({"choice": ""}, {"configurable": {"go": "x"}})
    assert result == {"choice": "", "log": ["decide", "x"]}


@pytest.mark.anyio
async def test_conditional_entry_point() -> None:
    graph = StateGraph(Route)
    graph.add_node("x", appender("x"))
    graph.add_node("y", appender("y"))
    graph.set_conditional_entry_point(lambda s: s["choice"], ["x", "y"])
    assert await graph.compile().ainvoke({"choice": "y"}) == {"choice": "y", "log": ["y"]}


class Fan(TypedDict):
    n: int
    out: Annotated[list[Any], operator.add]


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.anyio
async def test_send_fan_out_merges_in_node_name_then_send_order(seed: int) -> None:
    rng = random.Random(seed)
    delays = {i: rng.random() / 200 for i in range(12)}

    async def work(arg: dict[str, int]) -> dict[str, Any]:
        await anyio.sleep(delays[arg["i"]])  # finish in random order
        return {"out": [arg["i"]]}

    async def alpha(state: Fan) -> dict[str, Any]:
        await anyio.sleep(rng.random() / 200)
        return {"out": ["alpha"]}

    def zeta(state: Fan) -> dict[str, Any]:
        return {"out": ["zeta"]}

    def fan(state: Fan) -> list[Any]:
        return ["zeta", *[Send("work", {"i": i}) for i in range(state["n"])], "alpha"]

    graph = StateGraph(Fan)
    graph.add_node("split", lambda s: None)
    graph.add_node("work", work)
    graph.add_node("alpha", alpha)
    graph.add_node("zeta", zeta)
    graph.add_edge(START, "split")
    graph.add_conditional_edges("split", fan)
    result = await graph.compile().ainvoke({"n": 12, "out": []})
    assert result["out"] == ["alpha", *range(12), "zeta"]


@pytest.mark.anyio
async def test_send_passes_its_argument_instead_of_the_state() -> None:
    seen: list[Any] = []

    def square(arg: Any) -> dict[str, Any]:
        seen.append(arg)
        return {"out": [arg * arg]}

    graph = StateGraph(Fan)
    graph.add_node("square", square)
    graph.add_conditional_edges(START, lambda s: [Send("square", n) for n in range(s["n"])])
    result = await graph.compile().ainvoke({"n": 4})
    assert sorted(seen) == [0, 1, 2, 3]
    assert result == {"n": 4, "out": [0, 1, 4, 9]}


# -- Command --------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_command_updates_and_goes_to_a_node() -> None:
    def decide(state: Route) -> Command[Literal["x", "y"]]:
        return Command(update={"choice": "picked", "log": ["decide"]}, goto=state["choice"])

    graph = StateGraph(Route)
    graph.add_node("decide", decide)
    graph.add_node("x", appender("x"))
    graph.add_node("y", appender("y"))
    graph.add_edge(START, "decide")
    app = graph.compile()
    assert await app.ainvoke({"choice": "y"}) == {"choice": "picked", "log": ["decide", "y"]}
    assert await app.ainvoke({"choice": "x"}) == {"choice": "picked", "log": ["decide", "x"]}


@pytest.mark.anyio
async def test_command_goto_end_stops_and_static_edges_still_apply() -> None:
    async def decide(state: Route) -> Command[Literal["x", "__end__"]]:
        return Command(update={"log": ["decide"]}, goto=END if state["choice"] == "end" else "x")

    graph = StateGraph(Route)
    graph.add_node("decide", decide)
    graph.add_node("x", appender("x"))
    graph.add_node("y", appender("y"))
    graph.add_edge(START, "decide")
    graph.add_edge("decide", "y")  # a static edge runs alongside the Command's goto
    app = graph.compile()
    assert await app.ainvoke({"choice": "end"}) == {"choice": "end", "log": ["decide", "y"]}
    assert await app.ainvoke({"choice": "go"}) == {"choice": "go", "log": ["decide", "x", "y"]}


@pytest.mark.anyio
async def test_command_goto_end_alone_ends_the_run() -> None:
    graph = StateGraph(Route)
    graph.add_node("only", lambda s: Command(update={"log": ["only"]}, goto=END))
    graph.add_edge(START, "only")
    assert await graph.compile().ainvoke({}) == {"log": ["only"]}


@pytest.mark.anyio
async def test_command_goto_send_fans_out() -> None:
    def split(state: Fan) -> Command:
        return Command(update={"out": ["split"]}, goto=[Send("work", i) for i in range(3)])

    graph = StateGraph(Fan)
    graph.add_node("split", split)
    graph.add_node("work", lambda i: {"out": [i * 10]})
    graph.add_edge(START, "split")
    assert await graph.compile().ainvoke({}) == {"out": ["split", 0, 10, 20]}


@pytest.mark.anyio
async def test_command_without_update_only_routes() -> None:
    def hop(state: Route) -> Command[Literal["x"]]:
        return Command(goto="x")

    graph = StateGraph(Route)
    graph.add_node("hop", hop)
    graph.add_node("x", appender("x"))
    graph.add_edge(START, "hop")
    assert await graph.compile().ainvoke({"choice": "c"}) == {"choice": "c", "log": ["x"]}


# -- subgraphs ------------------------------------------------------------------------------


class Inner(TypedDict):
    text: str
    scratch: str


@pytest.mark.anyio
async def test_compiled_graph_as_a_node_merges_its_result_into_the_parent() -> None:
    seen: list[dict[str, Any]] = []

    async def upper(state: Inner) -> dict[str, Any]:
        seen.append(dict(state))
        return {"text": state["text"].upper(), "scratch": "inner only"}

    def exclaim(state: Inner) -> dict[str, Any]:
        return {"text": state["text"] + "!"}

    inner = StateGraph(Inner)
    inner.add_node("upper", upper)
    inner.add_node("exclaim", exclaim)
    inner.add_edge(START, "upper")
    inner.add_edge("upper", "exclaim")

    outer = StateGraph(Log)
    outer.add_node("before", lambda s: {"log": ["before"]})
    outer.add_node("sub", inner.compile(name="inner"))
    outer.add_node("after", lambda s: {"log": [f"after:{s['text']}"]})
    outer.add_edge(START, "before")
    outer.add_edge("before", "sub")
    outer.add_edge("sub", "after")
    result = await outer.compile(name="outer").ainvoke({"text": "hi", "log": []})
    # The subgraph sees only the keys its own schema has, and gives back only the parent's.
    assert seen == [{"text": "hi"}]
    assert result == {"text": "HI!", "log": ["before", "after:HI!"]}


@pytest.mark.anyio
async def test_subgraph_with_the_same_schema_and_a_dataclass_parent() -> None:
    inner = StateGraph(DataState)
    inner.add_node("double", lambda s: {"n": s.n * 2, "items": ["inner"]})
    inner.add_edge(START, "double")

    outer = StateGraph(DataState)
    outer.add_node("sub", inner.compile())
    outer.add_node("last", lambda s: {"label": f"n={s.n}"})
    outer.add_edge(START, "sub")
    outer.add_edge("sub", "last")
    result = await outer.compile().ainvoke({"n": 3})
    assert result == {"n": 6, "label": "n=6", "items": ["inner"]}


class Partial(TypedDict, total=False):
    topic: str
    log: NotRequired[Annotated[list[str], operator.add]]
    count: Required[Annotated[int, operator.add]]


@pytest.mark.anyio
async def test_reducers_inside_required_and_not_required() -> None:
    graph = StateGraph(Partial)
    graph.add_node("p", lambda s: {"log": ["p"], "count": 1})
    graph.add_node("q", lambda s: {"log": ["q"], "count": 2})
    graph.add_edge(START, "p")
    graph.add_edge(START, "q")
    result = await graph.compile().ainvoke({"log": ["in"], "count": 10})
    assert result == {"log": ["in", "p", "q"], "count": 13}


@pytest.mark.anyio
async def test_partials_and_callable_objects_as_nodes() -> None:
    async def scaled(state: Seen, config: Mapping[str, Any], *, factor: int) -> dict[str, Any]:
        return {"log": [f"scaled:{factor * config['configurable']['n']}"]}

    class Greeter:
        def __init__(self) -> None:
            self.writers: list[Any] = []

        async def __call__(self, state: Seen, *, writer: Any) -> dict[str, Any]:
            self.writers.append(writer)
            return {"log": ["greeter"]}

    greeter = Greeter()
    graph = StateGraph(Seen)
    graph.add_node("scaled", functools.partial(scaled, factor=3))
    graph.add_node("greeter", greeter)
    graph.add_edge(START, "scaled")
    graph.add_edge(START, "greeter")
    result = await graph.compile().ainvoke({}, {"configurable": {"n": 2}})
    assert result == {"log": ["greeter", "scaled:6"]}
    assert isinstance(greeter.writers[0], headwater.StreamWriter)


@pytest.mark.anyio
async def test_callable_object_returning_an_annotated_command() -> None:
    class Hop:
        def __call__(self, state: Route) -> Command[Literal["x"]]:
            return Command(update={"log": ["hop"]}, goto="x")

    graph = StateGraph(Route)
    graph.add_node("hop", Hop())
    graph.add_node("x", appender("x"))
    graph.add_edge(START, "hop")
    assert await graph.compile().ainvoke({}) == {"log": ["hop", "x"]}
