"""The event bus through its public faces: ``astream_events`` v2, stream writers, bad
input, events that nobody wants never being built, and bounded memory (backpressure)."""

from __future__ import annotations

import gc
import itertools
import operator
import threading
import tracemalloc
from collections.abc import Awaitable, Callable, Mapping
from typing import Annotated, Any, TypedDict

import anyio
import anyio.lowlevel
import pytest

import headwater
import headwater._bus
import headwater._stream
from headwater import END, START, Send, StateGraph, get_config, get_stream_writer
from headwater.errors import (
    HeadwaterError,
    InvalidFilterError,
    StreamWriterError,
    UnknownStreamModeError,
    UnsupportedVersionError,
)
from headwater.events import ON_CUSTOM_EVENT, PUBLIC_KINDS, Event, StreamMode
from headwater.messages import AIMessageChunk
from headwater.models import ChatModel
from headwater.runtime import dispatch_event

pytestmark = pytest.mark.anyio


class S(TypedDict):
    n: int
    log: Annotated[list[str], operator.add]


INPUT: dict[str, Any] = {"n": 1, "log": []}
KEYS = {"event", "name", "run_id", "parent_ids", "tags", "metadata", "data"}


def build(
    *nodes: tuple[str, Callable[..., Any]] | tuple[str, Callable[..., Any], dict[str, Any]],
    name: str = "g",
) -> headwater.CompiledGraph:
    """A chain of ``nodes`` in order (each ``(name, fn)`` or ``(name, fn, add_node kwargs)``)."""
    g = StateGraph(S)
    previous = START
    for spec in nodes:
        node, fn = spec[0], spec[1]
        kwargs: dict[str, Any] = spec[2] if len(spec) == 3 else {}  # type: ignore[misc]
        g.add_node(node, fn, **kwargs)
        g.add_edge(previous, node)
        previous = node
    g.add_edge(previous, END)
    return g.compile(name=name)


def rich_graph() -> headwater.CompiledGraph:
    """prep (async, writes) → work (sync in a thread, tagged) ‖ w x2 (Send) → END."""

    async def prep(state: S, *, writer: Any) -> dict[str, Any]:
        writer({"progress": 0.5})
        return {"n": state["n"] + 1, "log": ["prep"]}

    def work(state: S, config: Mapping[str, Any]) -> dict[str, Any]:
        config["streamWriter"]({"from": "work"})
        dispatch_event("on_chat_model_stream", {"chunk": "tok"})
        return {"log": ["work"]}

    async def w(arg: int) -> dict[str, Any]:
        get_stream_writer()({"from": f"w{arg}"})
        return {"log": [f"w{arg}"]}

    g = StateGraph(S)
    g.add_node("prep", prep, metadata={"team": "data"})
    g.add_node("work", work, tags=["critical", "heavy"])
    g.add_node("w", w)
    g.add_edge(START, "prep")
    g.add_edge("prep", "work")
    g.add_conditional_edges("prep", lambda s: [Send("w", 1), Send("w", 2)])
    g.add_edge("work", END)
    g.add_edge("w", END)
    return g.compile(name="rich")


async def events_of(
    app: headwater.CompiledGraph, *args: Any, **kwargs: Any
) -> list[dict[str, Any]]:
    return [event async for event in app.astream_events(*args, **kwargs)]


def assert_well_nested(events: list[dict[str, Any]]) -> None:
    """Every *_start has exactly one *_end or *_error with its run_id, after it, and every
    event's parent_ids are the runs open around it, outermost first."""
    open_runs: dict[str, list[str]] = {}  # run_id -> its parent_ids
    closed: set[str] = set()
    for e in events:
        kind, run_id, parents = e["event"], e["run_id"], e["parent_ids"]
        for i, parent in enumerate(parents):
            assert parent in open_runs, f"{kind} {e['name']}: parent {parent} is not open"
            assert open_runs[parent] == parents[:i], f"{kind} {e['name']}: bad nesting"
        if kind.endswith("_start"):
            assert run_id not in open_runs and run_id not in closed, f"{run_id} started twice"
            open_runs[run_id] = parents
        elif kind.endswith(("_end", "_error")):
            assert open_runs.pop(run_id) == parents, f"{kind} {e['name']} ends an unknown run"
            closed.add(run_id)
        else:
            assert run_id in open_runs, f"{kind} {e['name']} outside its run"
    assert not open_runs, f"never ended: {open_runs}"


# -- astream_events: shape ----------------------------------------------------------------


async def test_events_are_dicts_of_the_v2_shape() -> None:
    events = await events_of(rich_graph(), INPUT, version="v2")
    assert events
    for e in events:
        assert set(e) == KEYS
        assert isinstance(e["event"], str) and e["event"].startswith("on_")
        assert isinstance(e["name"], str) and e["name"]
        assert isinstance(e["run_id"], str) and len(e["run_id"]) == 36
        assert isinstance(e["parent_ids"], list)
        assert isinstance(e["tags"], list)
        assert isinstance(e["metadata"], dict)
        assert e["event"] in PUBLIC_KINDS  # never the bus-internal task_*/step_end kinds
    default = await events_of(rich_graph(), INPUT)  # v2 is the default
    assert len(default) == len(events)
    assert {e["event"] for e in default} == {e["event"] for e in events}


async def test_graph_start_and_end_carry_input_and_output() -> None:
    app = rich_graph()
    stream = app.astream_events(INPUT)
    events = [e async for e in stream]
    first, last = events[0], events[-1]
    assert (first["event"], first["name"], first["data"]) == (
        "on_chain_start",
        "rich",
        {"input": INPUT},
    )
    final = await app.ainvoke(INPUT)
    assert (last["event"], last["name"], last["data"]) == (
        "on_chain_end",
        "rich",
        {"output": final},
    )
    assert first["run_id"] == last["run_id"] == stream.run_id
    assert first["parent_ids"] == last["parent_ids"] == []


async def test_graph_run_id_can_be_given_in_the_config() -> None:
    run_id = "00000000-0000-4000-8000-000000000001"
    events = await events_of(rich_graph(), INPUT, {"run_id": run_id})
    assert events[0]["run_id"] == run_id
    inside = [e for e in events if e["name"] != "rich"]  # the graph's own: no parent
    assert inside and all(e["parent_ids"][:1] == [run_id] for e in inside)
    assert all(e["run_id"] == run_id for e in events if e["name"] == "rich")


async def test_each_node_run_has_start_and_end_with_input_and_output() -> None:
    events = await events_of(rich_graph(), INPUT)
    nodes = [e for e in events if e["event"] in ("on_chain_start", "on_chain_end")][1:-1]
    by_run: dict[str, list[dict[str, Any]]] = {}
    for e in nodes:
        by_run.setdefault(e["run_id"], []).append(e)
    pairs = sorted(
        ((s["name"], repr(s["data"]["input"]), e["data"]["output"]) for s, e in by_run.values()),
        key=repr,
    )
    assert pairs == sorted(
        [
            ("prep", repr(INPUT), {"n": 2, "log": ["prep"]}),
            ("work", repr({"n": 2, "log": ["prep"]}), {"log": ["work"]}),
            ("w", "1", {"log": ["w1"]}),  # a Send's node gets the Send's argument
            ("w", "2", {"log": ["w2"]}),
        ],
        key=repr,
    )
    assert all(
        s["event"] == "on_chain_start" and e["event"] == "on_chain_end" for s, e in by_run.values()
    )


async def test_node_tags_are_on_every_event_of_the_node_and_only_there() -> None:
    events = await events_of(rich_graph(), INPUT)
    work = [e for e in events if e["metadata"].get("node") == "work"]
    assert {e["event"] for e in work} == {
        "on_chain_start",
        "on_custom_event",
        "on_chat_model_stream",
        "on_chain_stream",
        "on_chain_end",
    }
    assert all(e["tags"] == ["critical", "heavy"] for e in work)
    assert all(e["tags"] == [] for e in events if e["metadata"].get("node") != "work")


async def test_config_tags_and_metadata_reach_every_event() -> None:
    config = {"tags": ["run-tag"], "metadata": {"user": "ada"}}
    events = await events_of(rich_graph(), INPUT, config)
    assert all("run-tag" in e["tags"] for e in events)
    assert all(e["metadata"].get("user") == "ada" for e in events)
    work = next(e for e in events if e["name"] == "work")
    assert work["tags"] == ["run-tag", "critical", "heavy"]


async def test_node_events_carry_the_langgraph_metadata_and_the_nodes_own() -> None:
    config = {"configurable": {"thread_id": "thread-7"}}
    events = await events_of(rich_graph(), INPUT, config)
    prep = next(e for e in events if e["name"] == "prep" and e["event"] == "on_chain_start")
    assert prep["metadata"] == {
        "team": "data",
        "node": "prep",
        "step": 1,
        "triggers": ["__start__"],
        "path": ["pull", "prep"],
        "thread_id": "thread-7",
        "checkpoint_ns": "",
        "langgraph_step": 1,
        "langgraph_node": "prep",
        "langgraph_triggers": ["branch:to:prep"],
        "langgraph_path": ["__pregel_pull", "prep"],
        "langgraph_checkpoint_ns": f"prep:{prep['run_id']}",
    }
    work = next(e for e in events if e["name"] == "work" and e["event"] == "on_chain_start")
    assert (work["metadata"]["step"], work["metadata"]["triggers"]) == (2, ["prep"])
    assert "team" not in work["metadata"]
    sends = [e for e in events if e["name"] == "w" and e["event"] == "on_chain_start"]
    assert sorted(e["metadata"]["path"][0] for e in sends) == ["push", "push"]
    assert {e["metadata"]["triggers"][0] for e in sends} == {"send:prep"}
    # a node's every event has the same metadata
    for node in ("prep", "work", "w"):
        own = [e for e in events if e["metadata"].get("node") == node]
        assert len({(e["metadata"]["step"], e["metadata"]["thread_id"]) for e in own}) == 1


async def test_custom_events_are_attributed_to_their_node() -> None:
    events = await events_of(rich_graph(), INPUT)
    graph_id = events[0]["run_id"]
    starts = {e["run_id"]: e for e in events if e["event"] == "on_chain_start"}
    custom = [e for e in events if e["event"] == "on_custom_event"]
    assert sorted(repr(e["data"]) for e in custom) == sorted(
        repr(d) for d in [{"progress": 0.5}, {"from": "work"}, {"from": "w1"}, {"from": "w2"}]
    )
    for e in custom:
        node_start = starts[e["run_id"]]  # the run of the node that wrote it
        assert e["name"] == node_start["name"] == e["metadata"]["node"]
        assert e["parent_ids"] == [graph_id]
        assert e["tags"] == node_start["tags"]


async def test_every_start_has_one_end_and_parent_ids_nest(fake_chat_model: Any) -> None:
    from headwater.tools import tool

    llm = fake_chat_model(["Hello there"])

    @tool
    def add(a: int, b: int) -> int:
        """Add."""
        return a + b

    async def chat(state: S) -> dict[str, Any]:
        await llm.ainvoke("hi")
        await add.ainvoke({"a": 1, "b": 2})
        return {"log": ["chat"]}

    inner = build(("chat", chat), name="inner")
    outer = build(("prep", lambda s: {"n": 5}), ("inner", inner), name="outer")
    events = await events_of(outer, INPUT)
    assert_well_nested(events)
    kinds = [e["event"] for e in events]
    assert {"on_chat_model_start", "on_chat_model_end", "on_tool_start", "on_tool_end"} <= set(
        kinds
    )
    graph_id = events[0]["run_id"]
    model = next(e for e in events if e["event"] == "on_chat_model_start")
    chat_start = next(e for e in events if e["name"] == "chat" and e["event"] == "on_chain_start")
    # outer graph → the node running the subgraph → the subgraph's run → chat → the model
    assert len(model["parent_ids"]) == 4
    assert model["parent_ids"][0] == graph_id
    assert model["parent_ids"][-1] == chat_start["run_id"]
    assert chat_start["metadata"]["checkpoint_ns"].startswith("inner:")


async def test_a_failing_node_reports_errors_then_raises_the_original_exception() -> None:
    class Boom(Exception):
        pass

    async def bad(state: S) -> None:
        raise Boom("broken")

    app = build(("ok", lambda s: {"n": 2}), ("bad", bad), ("never", lambda s: None))
    events: list[dict[str, Any]] = []
    with pytest.raises(Boom, match="broken") as info:
        async for e in app.astream_events(INPUT):
            events.append(e)
    assert info.value.__notes__ == ["While running node 'bad' (step 2) of graph 'g'."]
    assert [(e["event"], e["name"]) for e in events] == [
        ("on_chain_start", "g"),
        ("on_chain_start", "ok"),
        ("on_chain_stream", "ok"),
        ("on_chain_end", "ok"),
        ("on_chain_stream", "g"),
        ("on_chain_start", "bad"),
        ("on_chain_error", "bad"),
        ("on_chain_error", "g"),
    ]
    assert events[-2]["data"] == {"error": info.value}
    assert events[-1]["data"] == {"error": info.value}
    assert_well_nested(events)


async def test_siblings_cancelled_by_a_failure_still_end_with_an_error() -> None:
    slow_started = anyio.Event()

    async def bad(state: S) -> None:
        await slow_started.wait()
        raise ValueError("first")

    async def slow(state: S) -> None:
        slow_started.set()
        await anyio.sleep(30)

    g = StateGraph(S)
    g.add_node("bad", bad)
    g.add_node("slow", slow)
    g.add_edge(START, "bad")
    g.add_edge(START, "slow")
    g.add_edge(["bad", "slow"], END)
    events: list[dict[str, Any]] = []
    with pytest.raises(ValueError, match="first"):
        async for e in g.compile().astream_events(INPUT):
            events.append(e)
    assert_well_nested(events)
    slow_end = next(e for e in events if e["name"] == "slow" and e["event"] != "on_chain_start")
    assert slow_end["event"] == "on_chain_error"
    assert isinstance(slow_end["data"]["error"], anyio.get_cancelled_exc_class())


async def test_an_error_in_a_subgraph_errors_every_enclosing_run() -> None:
    async def bad(state: S) -> None:
        raise KeyError("deep")

    inner = build(("bad", bad), name="inner")
    outer = build(("inner", inner), name="outer")
    events: list[dict[str, Any]] = []
    with pytest.raises(KeyError, match="deep"):
        async for e in outer.astream_events(INPUT):
            events.append(e)
    assert [(e["event"], e["name"]) for e in events if e["event"] == "on_chain_error"] == [
        ("on_chain_error", "bad"),
        ("on_chain_error", "inner"),  # the subgraph's run
        ("on_chain_error", "inner"),  # the outer node running it
        ("on_chain_error", "outer"),
    ]
    assert_well_nested(events)


# -- stream writers -------------------------------------------------------------------------


def test_writer_helpers_outside_a_run_raise_a_clear_error() -> None:
    for call, what in [
        (get_stream_writer, "get_stream_writer()"),
        (get_config, "get_config()"),
        (lambda: dispatch_event("on_custom_event", {}), "dispatch_event()"),
    ]:
        with pytest.raises(StreamWriterError, match="outside a running node") as info:
            call()
        assert what in str(info.value)
        assert isinstance(info.value, HeadwaterError)


async def test_a_writer_kept_after_its_run_does_not_reach_a_new_stream() -> None:
    kept: list[Any] = []

    async def node(state: S, *, writer: Any) -> None:
        kept.append(writer)
        writer("during")

    app = build(("node", node))
    assert [c async for c in app.astream(INPUT, stream_mode="custom")] == ["during"]
    kept[0]("after")  # its run is over: nobody receives it, nothing breaks
    assert [c async for c in app.astream(INPUT, stream_mode="custom")] == ["during"]


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (("custom", 1, 2), r"writer\(payload\) or writer\('custom', payload\); got 3 argument"),
        ((), r"got 0 argument"),
        (("updates", {"x": 1}), r"got 2 argument\(s\) with mode 'updates'"),
    ],
)
async def test_a_writer_called_wrongly_raises_a_clear_error(
    args: tuple[Any, ...], pattern: str
) -> None:
    async def node(state: S, *, writer: Any) -> None:
        writer(*args)

    with pytest.raises(StreamWriterError, match=pattern):
        await build(("node", node)).ainvoke(INPUT)


async def test_writer_works_in_sync_nodes_in_threads_and_code_they_call() -> None:
    threads: set[int] = set()

    def helper(i: int) -> None:  # not a node: finds its node through the context
        get_stream_writer()(i)

    def node(state: S) -> None:
        threads.add(threading.get_ident())
        for i in range(3):
            helper(i)

    chunks = [c async for c in build(("node", node)).astream(INPUT, stream_mode="custom")]
    assert chunks == [0, 1, 2]
    assert threading.get_ident() not in threads


async def test_many_events_from_sync_nodes_arrive_complete_in_order_before_their_update() -> None:
    def flood(state: S) -> dict[str, Any]:
        write = get_stream_writer()
        for i in range(5000):
            write(i)
        return {"n": state["n"] + 1}

    g = StateGraph(S)
    g.add_node("a", flood)
    g.add_node("b", flood)
    g.add_edge(START, "a")
    g.add_edge("a", "b")
    g.add_edge("b", END)
    chunks = [c async for c in g.compile().astream(INPUT, stream_mode=["custom", "updates"])]
    modes = [mode for mode, _ in chunks]
    assert modes == ["custom"] * 5000 + ["updates"] + ["custom"] * 5000 + ["updates"]
    assert [c for m, c in chunks if m == "custom"] == [*range(5000), *range(5000)]


async def test_parallel_sync_nodes_keep_each_ones_events_in_order() -> None:
    def make(tag: str) -> Callable[[S], None]:
        def node(state: S) -> None:
            write = get_stream_writer()
            for i in range(3000):
                write((tag, i))

        return node

    g = StateGraph(S)
    for tag in "xyz":
        g.add_node(tag, make(tag))
        g.add_edge(START, tag)
    chunks = [c async for c in g.compile().astream(INPUT, stream_mode="custom")]
    assert len(chunks) == 9000
    for tag in "xyz":
        assert [i for t, i in chunks if t == tag] == list(range(3000))


async def test_a_thread_a_sync_node_starts_itself_can_write_events() -> None:
    def node(state: S) -> None:
        write = get_stream_writer()
        worker = threading.Thread(target=lambda: [write(i) for i in range(100)])
        worker.start()
        worker.join()

    chunks = [c async for c in build(("node", node)).astream(INPUT, stream_mode="custom")]
    assert chunks == list(range(100))


# -- bad input ------------------------------------------------------------------------------


async def test_unknown_stream_mode_names_it_suggests_and_lists_installed() -> None:
    app = rich_graph()
    with pytest.raises(UnknownStreamModeError) as info:
        app.astream(INPUT, stream_mode="update")
    message = str(info.value)
    assert "'update'" in message
    assert "Did you mean 'updates'?" in message
    for mode in ("custom", "debug", "messages", "tasks", "updates", "values"):
        assert mode in message
    with pytest.raises(UnknownStreamModeError, match=r"Unknown stream mode 'nope'"):
        app.astream(INPUT, stream_mode=["updates", "nope"])


def test_unknown_stream_mode_in_sync_stream_raises_at_iteration() -> None:
    with pytest.raises(UnknownStreamModeError, match="Did you mean 'values'"):
        list(rich_graph().stream(INPUT, stream_mode="valeus"))


@pytest.mark.parametrize(
    ("mode", "shown"),
    [(5, "got int: 5"), ([], "got list: []"), ([1, "values"], "got list"), (None, "NoneType")],
)
async def test_stream_mode_of_the_wrong_type_is_a_clear_error(mode: Any, shown: str) -> None:
    with pytest.raises(UnknownStreamModeError) as info:
        rich_graph().astream(INPUT, stream_mode=mode)
    message = str(info.value)
    assert shown in message
    assert "a mode name or a non-empty list of mode names" in message
    assert "Installed modes:" in message and "updates" in message


async def test_stream_mode_errors_when_no_plugin_supplies_modes() -> None:
    g = StateGraph(S)
    g.add_node("a", lambda s: None)
    g.add_edge(START, "a")
    g.add_edge("a", END)
    bare = g.compile(plugin_manager=headwater.create_plugin_manager(autoload=False))
    with pytest.raises(
        UnknownStreamModeError, match=r"Installed modes: \(none\).*headwater-streams"
    ):
        bare.astream(INPUT, stream_mode="values")
    with pytest.raises(UnknownStreamModeError, match="headwater-streams"):
        bare.astream_events(INPUT)
    assert await bare.ainvoke(INPUT) == INPUT  # running needs no plugin


async def test_version_v1_says_it_was_removed() -> None:
    with pytest.raises(UnsupportedVersionError, match=r"version='v1'\) was removed.*'v2'"):
        rich_graph().astream_events(INPUT, version="v1")


@pytest.mark.parametrize("version", ["v3", "2", ""])
async def test_other_versions_name_the_valid_one(version: str) -> None:
    with pytest.raises(UnsupportedVersionError) as info:
        rich_graph().astream_events(INPUT, version=version)
    assert repr(version) in str(info.value)
    assert "'v2'" in str(info.value)


@pytest.mark.parametrize(
    ("filters", "pattern"),
    [
        ([42], r"contains int 42; expected a callable.*Installed filters: .*include_names"),
        (["include_nmaes"], r"unknown filter 'include_nmaes'. Did you mean 'include_names'\?"),
        ([("no_such_filter", ["x"])], r"unknown filter 'no_such_filter'.*Installed filters"),
        (42, r"filters must be a list of filters.*got int"),
    ],
)
async def test_bad_filters_are_clear_errors(filters: Any, pattern: str) -> None:
    with pytest.raises(InvalidFilterError, match=pattern):
        rich_graph().astream_events(INPUT, filters=filters)


@pytest.mark.parametrize("arg", ["include_names", "exclude_tags", "include_types"])
async def test_a_filter_argument_of_the_wrong_type_is_a_clear_error(arg: str) -> None:
    with pytest.raises(InvalidFilterError) as info:
        rich_graph().astream_events(INPUT, **{arg: 5})
    message = str(info.value)
    assert arg in message
    assert "got int: 5" in message
    assert "list of names or glob patterns" in message


async def test_bad_input_fails_before_any_event_and_names_the_input() -> None:
    from headwater.errors import InvalidInputError

    events: list[dict[str, Any]] = []
    with pytest.raises(InvalidInputError):
        async for e in rich_graph().astream_events(["not", "a", "state"]):
            events.append(e)
    assert events == []


# -- nothing built that nobody wants -----------------------------------------------------


@pytest.fixture
def count_events(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Count every Event the bus builds (in the emitter and in streams)."""
    built: list[str] = []

    def counting(**kwargs: Any) -> Event:
        built.append(kwargs["event"])
        return Event(**kwargs)

    monkeypatch.setattr(headwater._bus, "Event", counting)
    monkeypatch.setattr(headwater._stream, "Event", counting)
    return built


def chatty_graph(n: int = 20) -> headwater.CompiledGraph:
    async def talk(state: S, *, writer: Any) -> dict[str, Any]:
        for i in range(n):
            writer(i)
            dispatch_event("on_chat_model_stream", {"chunk": str(i)})
        return {"log": ["talk"]}

    return build(("talk", talk), ("after", lambda s: None))


async def test_a_run_nobody_streams_builds_no_event(count_events: list[str]) -> None:
    await chatty_graph().ainvoke(INPUT)
    assert count_events == []


async def test_data_only_stream_modes_build_no_event(count_events: list[str]) -> None:
    chunks = [c async for c in chatty_graph().astream(INPUT, stream_mode=["custom", "values"])]
    assert len(chunks) == 20 + 2  # input, talk (`after` writes nothing: no values chunk)
    assert count_events == []


async def test_excluded_kinds_are_never_built(count_events: list[str]) -> None:
    seen: list[str] = []

    def predicate(event: Event) -> bool:
        seen.append(event.event)
        return True

    events = await events_of(
        chatty_graph(), INPUT, include_types=["on_custom_event"], filters=[predicate]
    )
    assert [e["data"] for e in events] == list(range(20))
    assert seen == ["on_custom_event"] * 20  # chain and token events never reached a filter
    assert count_events == ["on_custom_event"] * 20  # built once each, for the predicate


async def test_events_rejected_by_name_are_never_built(count_events: list[str]) -> None:
    events = await events_of(chatty_graph(), INPUT, include_names=["after"])
    assert [(e["event"], e["name"]) for e in events] == [
        ("on_chain_start", "after"),
        ("on_chain_stream", "after"),
        ("on_chain_end", "after"),
    ]
    # The accepted ones are projected by the events mode's bind: no Event object either.
    assert count_events == []


async def test_a_stream_modes_kinds_limit_what_reaches_it() -> None:
    from headwater.events import SKIP, StreamMode

    calls: list[str] = []

    class Counting:
        @headwater.hookimpl
        def headwater_stream_modes(self) -> Mapping[str, Any]:
            def make(run: Any) -> StreamMode:
                def project(e: Event) -> Any:
                    calls.append(e.event)
                    return SKIP

                return StreamMode(kinds=frozenset({"on_chain_end"}), project=project)

            return {"counting": make}

    g = StateGraph(S)
    g.add_node("talk", chatty_graph().nodes["talk"].fn)
    g.add_edge(START, "talk")
    g.add_edge("talk", END)
    app = g.compile(plugin_manager=headwater.create_plugin_manager(plugins=[Counting()]))
    assert [c async for c in app.astream(INPUT, stream_mode="counting")] == []
    assert calls == ["on_chain_end", "on_chain_end"]  # the node's and the graph's


# -- backpressure: bounded memory with a slow consumer --------------------------------------


async def peak_memory(make: Callable[[], Awaitable[int]], *, warm_up: bool) -> tuple[int, int]:
    """(items consumed, peak traced bytes) of ``make()``; ``warm_up`` runs it untraced
    first (the first run in a process imports and caches things that are not the stream's).
    """
    if warm_up:
        await make()
    gc.collect()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        count = await make()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return count, peak


async def slow_consume(stream: Any) -> int:
    count = 0
    async with stream:
        async for _ in stream:
            count += 1
            await anyio.lowlevel.checkpoint()
    return count


def looping_graph(steps: int, per_step: int) -> headwater.CompiledGraph:
    async def emit(state: S, *, writer: Any) -> dict[str, Any]:
        for i in range(per_step):
            writer("x" * 100 + str(i))  # a fresh 100-byte string per event
        return {"n": state["n"] + 1}

    g = StateGraph(S)
    g.add_node("emit", emit)
    g.add_edge(START, "emit")
    g.add_conditional_edges("emit", lambda s: "emit" if s["n"] < steps else END)
    return g.compile()


def assert_bounded(small: tuple[int, int], large: tuple[int, int], factor: int) -> None:
    (n_small, peak_small), (n_large, peak_large) = small, large
    assert n_large >= factor * n_small * 0.9
    slack = 256 * 1024
    assert peak_large < 2 * peak_small + slack, (
        f"peak grew with the event count: {peak_small} B for {n_small} items, "
        f"{peak_large} B for {n_large}"
    )


async def test_many_custom_events_to_a_slow_consumer_keep_memory_bounded() -> None:
    def run(steps: int) -> Callable[[], Awaitable[int]]:
        app = looping_graph(steps, 50)
        return lambda: slow_consume(
            app.astream(INPUT, {"recursion_limit": steps + 5}, stream_mode="custom")
        )

    small = await peak_memory(run(100), warm_up=True)
    large = await peak_memory(run(500), warm_up=False)
    assert small[0] == 99 * 50
    assert_bounded(small, large, 5)


def one_node(node: Any) -> headwater.CompiledGraph:
    g = StateGraph(S)
    g.add_node("emit", node)
    g.add_edge(START, "emit")
    g.add_edge("emit", END)
    return g.compile()


@pytest.mark.parametrize("how", ["custom", "events"])
async def test_an_async_node_that_never_awaits_is_refused_before_memory_grows(how: str) -> None:
    """It cannot be made to wait: past a bound it gets a clear error, not +379 MB (on the
    direct path of ``custom`` alone, and on the general path of ``astream_events``)."""
    from headwater._stream import BUFFER_SIZE

    written = [0]

    async def flood(state: S, *, writer: Any) -> dict[str, Any]:
        for i in range(300_000):
            writer("x" * 100 + str(i))
            written[0] += 1
        return {"n": 2}

    consumed = 0
    app = one_node(flood)
    stream = (
        app.astream(INPUT, stream_mode="custom") if how == "custom" else app.astream_events(INPUT)
    )
    with pytest.raises(StreamWriterError, match=r"Node 'emit'.*await writer\.awrite\(payload\)"):
        async with stream:
            async for item in stream:  # (the node never lets it run: it falls behind at once)
                consumed += how == "custom" or item["event"] == "on_custom_event"
    assert consumed == written[0] + 1  # every event written was delivered, the last too
    assert written[0] < 65 * 1024 + 2 * BUFFER_SIZE  # refused within its bound


async def test_awrite_holds_an_async_node_to_its_consumer() -> None:
    from headwater._stream import BATCH_SIZE, BUFFER_SIZE

    consumed, ahead = [0], [0]

    async def steady(state: S, *, writer: Any) -> dict[str, Any]:
        for i in range(40_000):
            await writer.awrite({"i": i})
            ahead[0] = max(ahead[0], i + 1 - consumed[0])
        return {"n": 2}

    received = []
    async with one_node(steady).astream(INPUT, stream_mode="custom") as stream:
        async for chunk in stream:
            received.append(chunk["i"])
            consumed[0] += 1
            if len(received) % 64 == 0:
                await anyio.lowlevel.checkpoint()
    assert received == list(range(40_000))  # nothing lost, in order
    assert ahead[0] <= BUFFER_SIZE + 2 * BATCH_SIZE


async def test_a_node_that_awaits_now_and_then_is_never_refused() -> None:
    async def polite(state: S, *, writer: Any) -> dict[str, Any]:
        for i in range(60_000):
            writer(i)
            if i % 500 == 0:
                await anyio.lowlevel.checkpoint()
        return {"n": 2}

    async def wrapped(state: S, *, writer: Any) -> dict[str, Any]:
        return await polite(state, writer=writer)

    async def burst(state: S, *, writer: Any) -> dict[str, Any]:
        for i in range(50_000):  # a burst that never awaits, within the bound
            writer(i)
        return {"n": 2}

    count = await slow_consume(one_node(polite).astream(INPUT, stream_mode="custom"))
    assert count == 60_000
    assert await slow_consume(one_node(burst).astream(INPUT, stream_mode="custom")) == 50_000
    events = one_node(wrapped).astream_events(INPUT)  # the general (non-direct) path
    assert await slow_consume(events) > 60_000


async def test_awrite_takes_what_the_writer_takes() -> None:
    async def node(state: S, *, writer: Any) -> dict[str, Any]:
        await writer.awrite("custom", {"a": 1})
        await writer.awrite({"b": 2})
        with pytest.raises(StreamWriterError, match="writer\\(payload\\)"):
            await writer.awrite("values", 1)
        return {"n": 2}

    chunks = [c async for c in one_node(node).astream(INPUT, stream_mode="custom")]
    assert chunks == [{"a": 1}, {"b": 2}]
    assert (await one_node(node).ainvoke(INPUT))["n"] == 2  # nobody streaming: no wait


async def test_a_long_chain_streamed_as_events_to_a_slow_consumer_keeps_memory_bounded() -> None:
    from headwater._stream import BUFFER_SIZE

    writes = [1]

    async def step(state: S, *, writer: Any) -> dict[str, Any]:
        for i in range(writes[0]):
            writer("z" * 100 + str(i))
        return {"n": state["n"] + 1}  # async, never suspends: only backpressure holds it

    length = 2000
    g = StateGraph(S)
    names = [f"n{i}" for i in range(length)]
    for name in names:
        g.add_node(name, step)
    g.add_edge(START, names[0])
    for a, b in itertools.pairwise(names):
        g.add_edge(a, b)
    g.add_edge(names[-1], END)
    app = g.compile()

    def run(per_node: int) -> Callable[[], Awaitable[int]]:
        def go() -> Awaitable[int]:
            writes[0] = per_node
            return slow_consume(app.astream_events(INPUT, {"recursion_limit": length + 5}))

        return go

    # start, custom, stream, end and the graph's stream per node: 5 events (more than the
    # buffer holds), then 25
    small = await peak_memory(run(1), warm_up=True)
    large = await peak_memory(run(21), warm_up=False)
    assert small[0] == 2 + 5 * length > BUFFER_SIZE
    assert large[0] == 2 + 25 * length
    assert_bounded(small, large, 5)


async def stall_then_drain(
    stream: Any, produced: list[int], total: int, per_await: int
) -> tuple[int, int]:
    """Take one item, stop consuming until the producer is held back, then drain.

    Returns (the producer's lead over the consumer while stalled, items consumed).
    """
    from headwater._stream import BATCH_SIZE, BUFFER_SIZE

    bound = BUFFER_SIZE + 3 * BATCH_SIZE + per_await
    async with stream:
        consumed = 0
        async for _ in stream:
            consumed += 1
            break
        with anyio.fail_after(20):  # a guard, not a timing assertion
            while produced[0] < BUFFER_SIZE:  # noqa: ASYNC110 - another thread counts
                await anyio.sleep(0.001)
        for _ in range(500):  # plenty of chances to run ahead, were it not held back
            await anyio.lowlevel.checkpoint()
        await anyio.sleep(0.2)  # and time for a thread to (not) run ahead
        lead = produced[0] - consumed
        assert lead <= bound, f"the producer ran {lead} items ahead (bound {bound})"
        assert produced[0] < total  # it was held back
        async for _ in stream:
            consumed += 1
            await anyio.lowlevel.checkpoint()
    return lead, consumed


async def test_a_slow_consumer_holds_back_an_async_producer() -> None:
    produced = [0]

    async def emit(state: S, *, writer: Any) -> dict[str, Any]:
        for i in range(50):
            produced[0] += 1
            writer(i)
        return {"n": state["n"] + 1}

    g = StateGraph(S)
    g.add_node("emit", emit)
    g.add_edge(START, "emit")
    g.add_conditional_edges("emit", lambda s: "emit" if s["n"] <= 200 else END)
    stream = g.compile().astream(INPUT, {"recursion_limit": 500}, stream_mode="custom")
    _, consumed = await stall_then_drain(stream, produced, 10_000, per_await=50)
    assert consumed == 10_000


async def test_a_slow_consumer_holds_back_a_sync_node_in_a_thread() -> None:
    produced = [0]

    def flood(state: S) -> None:
        write = get_stream_writer()
        for i in range(10_000):
            produced[0] += 1
            write(i)

    from headwater._bus import _INBOX_LIMIT

    stream = build(("flood", flood)).astream(INPUT, stream_mode="custom")
    # a worker thread queues at most _INBOX_LIMIT events before it waits for delivery
    _, consumed = await stall_then_drain(stream, produced, 10_000, per_await=_INBOX_LIMIT)
    assert consumed == 10_000


# An async node is held back at its own await points too (issue 13, item 6): a node that
# writes in a loop and awaits anything between writes must not run ahead of its consumer.


def flooding_graph(total: int, produced: list[int], *, sync: bool = False) -> Any:
    async def flood(state: S, *, writer: Any) -> dict[str, Any]:
        for i in range(total):
            produced[0] += 1
            writer({"i": i, "pad": "p" * 100})
            await anyio.lowlevel.checkpoint()  # any await point of the node's own
        return {"n": state["n"] + 1}

    def flood_sync(state: S, *, writer: Any) -> dict[str, Any]:
        for i in range(total):
            produced[0] += 1
            writer({"i": i, "pad": "p" * 100})
        return {"n": state["n"] + 1}

    return build(("flood", flood_sync if sync else flood))


@pytest.mark.parametrize("mode", ["custom", "events"])
async def test_a_slow_consumer_holds_back_an_async_node_at_its_own_await_points(mode: str) -> None:
    produced = [0]
    app = flooding_graph(10_000, produced)
    stream = (
        app.astream_events(INPUT) if mode == "events" else app.astream(INPUT, stream_mode="custom")
    )
    _, consumed = await stall_then_drain(stream, produced, 10_000, per_await=1)
    assert consumed == (10_000 if mode == "custom" else 10_000 + 6)


@pytest.mark.parametrize("sync", [False, True], ids=["async-node", "sync-node"])
async def test_one_node_never_runs_far_ahead_of_a_slow_consumer(sync: bool) -> None:
    """One node writing many events (an async one awaiting once between writes) to a
    consumer four times as slow: the node's lead, the events held in memory for the
    consumer, stays within the queue's bound for the whole run (it grew with the number
    of events in an async node)."""
    from headwater._bus import _INBOX_LIMIT
    from headwater._stream import BATCH_SIZE, BUFFER_SIZE

    produced = [0]
    total = 12_000
    stream = flooding_graph(total, produced, sync=sync).astream(INPUT, stream_mode="custom")
    consumed = lead = 0
    async with stream:
        async for _ in stream:
            consumed += 1
            lead = max(lead, produced[0] - consumed)
            for _ in range(4):
                await anyio.lowlevel.checkpoint()
    assert consumed == total
    bound = BUFFER_SIZE + 3 * BATCH_SIZE + (_INBOX_LIMIT if sync else 1)
    assert lead <= bound, f"the node ran {lead} events ahead of its consumer (bound {bound})"


class CountingModel(ChatModel):
    """Streams ``total`` tokens, counting those it has made, never waiting by itself."""

    provider = "counting"

    def __init__(self, total: int, produced: list[int], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.total = total
        self.produced = produced

    async def _astream(self, messages: Any, **kwargs: Any) -> Any:
        for i in range(self.total):
            self.produced[0] += 1
            yield AIMessageChunk(content=f"t{i} ")


def talking_graph(llm: ChatModel, *, sync: bool = False) -> Any:
    async def talk(state: S) -> dict[str, Any]:
        reply = await llm.ainvoke("go")
        return {"log": [reply.text[:10]]}

    def talk_sync(state: S) -> dict[str, Any]:
        reply = llm.invoke("go")
        return {"log": [reply.text[:10]]}

    return build(("talk", talk_sync if sync else talk))


@pytest.mark.parametrize("mode", ["messages", "events"])
@pytest.mark.parametrize("sync", [False, True], ids=["async-node", "sync-node"])
async def test_a_slow_consumer_holds_back_a_chat_model(mode: str, sync: bool) -> None:
    produced = [8]  # the tokens, and as many as the run's events before them (at most 8)
    app = talking_graph(CountingModel(10_000, produced), sync=sync)
    if mode == "events":
        stream = app.astream_events(INPUT)
    else:
        stream = app.astream(INPUT, stream_mode="messages")
    _, consumed = await stall_then_drain(stream, produced, 10_008, per_await=1)
    assert consumed >= 10_000


@pytest.mark.parametrize("how", ["aclose", "break"])
@pytest.mark.parametrize("mode", ["custom", "events", "messages"])
async def test_leaving_a_held_back_stream_ends_its_run(how: str, mode: str) -> None:
    """A consumer that stops while producers wait for room (its queue full) ends the run
    at once: nothing waits for room that will never come."""
    produced = [0]
    if mode == "messages":
        app = talking_graph(CountingModel(50_000, produced))
    else:
        app = flooding_graph(50_000, produced)
    stream = app.astream_events(INPUT) if mode == "events" else app.astream(INPUT, stream_mode=mode)
    from headwater._stream import BUFFER_SIZE

    with anyio.fail_after(30):  # a guard against a deadlock, not a timing assertion
        seen = 0
        async for _ in stream:
            seen += 1
            if seen == 1:
                while produced[0] < BUFFER_SIZE:  # let it fill the queue and be held back
                    await anyio.lowlevel.checkpoint()
                for _ in range(100):
                    await anyio.lowlevel.checkpoint()
                held = produced[0]
                if how == "aclose":
                    await stream.aclose()
                break
        if how == "break":
            del stream
            gc.collect()
        for _ in range(100):
            await anyio.lowlevel.checkpoint()
    assert produced[0] < 50_000
    assert produced[0] <= held + 1  # cancelled where it waited


class Finishing:
    """A stream mode that queues a compact form and finishes it for the consumer."""

    @headwater.hookimpl
    def headwater_stream_modes(self) -> Mapping[str, Any]:
        return {
            "boxed": lambda run: StreamMode(
                kinds=frozenset({ON_CUSTOM_EVENT}),
                project=lambda data: ("queued", data),
                data_only=True,
                finish=lambda chunk: {"finished": chunk[1]},
            )
        }


async def test_a_modes_finish_is_applied_as_the_consumer_takes_each_chunk() -> None:
    async def node(state: S, *, writer: Any) -> dict[str, Any]:
        for i in range(600):  # more than a batch
            writer(i)
        return {"n": 2}

    pm = headwater.create_plugin_manager(plugins=[Finishing()])
    g = StateGraph(S)
    g.add_node("emit", node)
    g.add_edge(START, "emit")
    g.add_edge("emit", END)
    app = g.compile(plugin_manager=pm)
    chunks = [c async for c in app.astream(INPUT, stream_mode="boxed")]
    assert chunks == [{"finished": i} for i in range(600)]
    # with other modes, chunks are (mode, chunk) pairs and finish is still applied
    pairs = [c async for c in app.astream(INPUT, stream_mode=["boxed", "updates"])]
    assert [c for m, c in pairs if m == "boxed"] == [{"finished": i} for i in range(600)]


async def test_in_a_run_nobody_streams_the_writer_still_checks_its_arguments() -> None:
    seen: list[str] = []

    async def node(state: S, *, writer: Any) -> dict[str, Any]:
        writer({"fine": 1})
        writer("custom", {"fine": 2})
        await writer.awrite({"fine": 3})
        seen.append(repr(get_stream_writer()))
        with pytest.raises(StreamWriterError, match="writer\\(payload\\)"):
            writer("values", 1)
        with pytest.raises(StreamWriterError, match="got 0 argument"):
            get_stream_writer()()
        return {"n": 2}

    app = one_node(node)
    assert (await app.ainvoke(INPUT))["n"] == 2  # nothing subscribed: the quiet writer
    chunks = [c async for c in app.astream(INPUT, stream_mode="custom")]
    assert chunks == [{"fine": 1}, {"fine": 2}, {"fine": 3}]  # streamed: the real one
    assert seen == ["StreamWriter(quiet)", "StreamWriter(node='emit')"]


# -- paced producers: the consumer waits for each batch ----------------------------------


def paced_graph(total: int, pause: float, *, fail: bool = False) -> headwater.CompiledGraph:
    async def node(state: S, *, writer: Any) -> dict[str, Any]:
        for i in range(total):
            writer(i)
            await anyio.sleep(pause)
        if fail:
            raise ValueError("after the items")
        return {"n": 2}

    return one_node(node)


@pytest.mark.parametrize("limit", [None, 1, 3])
async def test_paced_items_reach_a_batch_consumer_all_and_in_order(limit: int | None) -> None:
    items: list[Any] = []
    async with paced_graph(40, 0.001).astream(INPUT, stream_mode="custom") as stream:
        while (batch := await stream.next_batch(limit)) is not None:
            assert batch
            items.extend(batch)
        assert stream.ready  # the end is there to take at once
        assert await stream.next_batch() is None
    assert items == list(range(40))


async def test_paced_items_reach_an_async_for_consumer_all_and_in_order() -> None:
    chunks = [c async for c in paced_graph(40, 0.001).astream(INPUT, stream_mode="custom")]
    assert chunks == list(range(40))


async def test_a_paced_run_that_fails_delivers_its_items_then_raises() -> None:
    items: list[Any] = []
    stream = paced_graph(10, 0.001, fail=True).astream(INPUT, stream_mode="custom")
    with pytest.raises(ValueError, match="after the items"):
        async with stream:
            while (batch := await stream.next_batch()) is not None:
                items.extend(batch)
    assert items == list(range(10))


async def test_ready_says_whether_the_next_item_would_wait() -> None:
    async def node(state: S, *, writer: Any) -> dict[str, Any]:
        writer(0)
        await anyio.sleep(0.2)
        writer(1)
        writer(2)
        return {"n": 2}

    async with one_node(node).astream(INPUT, stream_mode="custom") as stream:
        assert not stream.ready  # not started
        assert await stream.next_batch() == [0]
        assert not stream.ready  # the node is sleeping: the next batch would wait
        await anyio.sleep(0.4)
        assert stream.ready  # 1 and 2 were queued meanwhile (and the run ended)
        assert await stream.next_batch() == [1, 2]
        assert await stream.next_batch() is None


async def test_a_consumer_cancelled_while_waiting_for_a_paced_run_ends_it() -> None:
    stopped = anyio.Event()

    async def node(state: S, *, writer: Any) -> dict[str, Any]:
        try:
            writer(0)
            await anyio.sleep(10)
        finally:
            stopped.set()
        return {"n": 2}

    stream = one_node(node).astream(INPUT, stream_mode="custom")
    assert await stream.next_batch() == [0]
    with anyio.move_on_after(0.05):
        await stream.next_batch()  # waits for the sleeping node, then is cancelled
    with anyio.fail_after(2):
        await stopped.wait()
    await stream.aclose()
    assert await stream.next_batch() is None
