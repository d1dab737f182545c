"""headwater-streams: the exact chunks of every stream mode, through the public API."""

from __future__ import annotations

import datetime
import functools
import operator
from collections.abc import Mapping
from typing import Annotated, Any, TypedDict

import anyio
import anyio.lowlevel
import pytest

import headwater
from headwater import END, START, Send, StateGraph, get_stream_writer
from headwater.errors import UnknownStreamModeError
from headwater.runtime import dispatch_event

pytestmark = pytest.mark.anyio


class S(TypedDict):
    n: int
    log: Annotated[list[str], operator.add]


INPUT: dict[str, Any] = {"n": 1, "log": []}


def fan_out_graph() -> headwater.CompiledGraph:
    """a (async) → b (sync, in a thread) ‖ c (async, None update) ‖ w x2 (Send) → END."""

    async def a(state: S) -> dict[str, Any]:
        get_stream_writer()({"node": "a", "i": 0})
        return {"n": state["n"] + 1, "log": ["a"]}

    def b(state: S, config: Mapping[str, Any]) -> dict[str, Any]:
        config["streamWriter"]("custom", {"node": "b", "i": 0})
        config["streamWriter"]({"node": "b", "i": 1})
        return {"log": ["b"]}

    async def c(state: S, *, writer: headwater.StreamWriter) -> None:
        writer({"node": "c", "i": 0})
        await anyio.lowlevel.checkpoint()
        writer({"node": "c", "i": 1})
        return None

    async def w(arg: int) -> dict[str, Any]:
        return {"log": [f"w{arg}"]}

    g = StateGraph(S)
    g.add_node("a", a)
    g.add_node("b", b)
    g.add_node("c", c)
    g.add_node("w", w)
    g.add_edge(START, "a")
    g.add_edge("a", "b")
    g.add_edge("a", "c")
    g.add_conditional_edges("a", lambda s: [Send("w", 1), Send("w", 2)])
    for node in ("b", "c", "w"):
        g.add_edge(node, END)
    return g.compile(name="fan")


def chain_graph() -> headwater.CompiledGraph:
    """first (async, writes) → second (sync in a thread, writes) → END: a deterministic order."""

    async def first(state: S, *, writer: headwater.StreamWriter) -> dict[str, Any]:
        writer("first-1")
        writer("custom", "first-2")
        return {"n": state["n"] * 10, "log": ["first"]}

    def second(state: S) -> dict[str, Any]:
        get_stream_writer()("second-1")
        return {"log": ["second"]}

    g = StateGraph(S)
    g.add_node("first", first)
    g.add_node("second", second)
    g.add_edge(START, "first")
    g.add_edge("first", "second")
    g.add_edge("second", END)
    return g.compile(name="chain")


async def collect(app: headwater.CompiledGraph, **kwargs: Any) -> list[Any]:
    return [chunk async for chunk in app.astream(INPUT, **kwargs)]


# -- values -------------------------------------------------------------------------------


async def test_values_yields_the_input_then_the_state_after_each_step() -> None:
    chunks = await collect(fan_out_graph(), stream_mode="values")
    assert chunks == [
        {"n": 1, "log": []},
        {"n": 2, "log": ["a"]},
        # writes applied in node-name order whatever finished first; c wrote nothing
        {"n": 2, "log": ["a", "b", "w1", "w2"]},
    ]


async def test_updates_is_the_default_mode_as_in_langgraph() -> None:
    app = chain_graph()
    assert [c async for c in app.astream(INPUT)] == await collect(app, stream_mode="updates")
    assert list(app.stream(INPUT)) == [
        {"first": {"n": 10, "log": ["first"]}},
        {"second": {"log": ["second"]}},
    ]


async def test_values_last_chunk_is_the_result() -> None:
    app = fan_out_graph()
    chunks = await collect(app, stream_mode="values")
    assert chunks[-1] == await app.ainvoke(INPUT)
    assert len(chunks) == 3


async def test_values_chunks_are_snapshots_not_one_shared_dict() -> None:
    chunks = await collect(chain_graph(), stream_mode="values")
    assert [c["log"] for c in chunks] == [[], ["first"], ["first", "second"]]
    assert len({id(c) for c in chunks}) == 3


# -- updates ------------------------------------------------------------------------------


async def test_updates_yields_one_node_update_per_task() -> None:
    chunks = await collect(fan_out_graph(), stream_mode="updates")
    assert chunks[0] == {"a": {"n": 2, "log": ["a"]}}
    # step 2 runs concurrently: each parallel task gets its own chunk, in completion order
    rest = sorted(chunks[1:], key=repr)
    assert rest == sorted(
        [{"b": {"log": ["b"]}}, {"c": None}, {"w": {"log": ["w1"]}}, {"w": {"log": ["w2"]}}],
        key=repr,
    )
    assert all(isinstance(c, dict) and len(c) == 1 for c in chunks)


async def test_updates_folded_give_the_final_state() -> None:
    app = fan_out_graph()
    state: dict[str, Any] = dict(INPUT)
    async for chunk in app.astream(INPUT, stream_mode="updates"):
        ((_, update),) = chunk.items()
        for key, value in (update or {}).items():
            state[key] = state[key] + value if key == "log" else value
    final = await app.ainvoke(INPUT)
    assert state["n"] == final["n"]
    assert sorted(state["log"]) == sorted(final["log"])


# -- custom ---------------------------------------------------------------------------------


async def test_custom_yields_writer_payloads_in_order_from_every_kind_of_writer() -> None:
    assert await collect(chain_graph(), stream_mode="custom") == [
        "first-1",
        "first-2",
        "second-1",
    ]


async def test_custom_keeps_each_nodes_order_across_parallel_nodes_and_threads() -> None:
    chunks = await collect(fan_out_graph(), stream_mode="custom")
    assert chunks[0] == {"node": "a", "i": 0}
    assert sorted(chunks, key=repr) == sorted(
        [{"node": n, "i": i} for n, i in [("a", 0), ("b", 0), ("b", 1), ("c", 0), ("c", 1)]],
        key=repr,
    )
    for node in ("b", "c"):
        assert [c["i"] for c in chunks if c["node"] == node] == [0, 1]


async def test_all_writers_of_a_node_are_the_same_writer() -> None:
    seen: list[Any] = []

    async def node(state: S, config: Mapping[str, Any], *, writer: Any) -> None:
        seen.extend([writer, config["streamWriter"], get_stream_writer()])

    g = StateGraph(S)
    g.add_node("node", node)
    g.add_edge(START, "node")
    g.add_edge("node", END)
    await g.compile().ainvoke(INPUT)
    assert seen[0] is seen[1] is seen[2]
    assert isinstance(seen[0], headwater.StreamWriter)


async def test_writer_payload_equals_custom_mode_call() -> None:
    async def node(state: S, *, writer: Any) -> None:
        writer({"x": 1})
        writer("custom", {"x": 1})
        writer("custom")  # one argument: the payload is the string "custom"

    g = StateGraph(S)
    g.add_node("node", node)
    g.add_edge(START, "node")
    g.add_edge("node", END)
    chunks = await collect(g.compile(), stream_mode="custom")
    assert chunks == [{"x": 1}, {"x": 1}, "custom"]


# -- debug and tasks ------------------------------------------------------------------------


async def test_debug_chunks_report_task_starts_and_results() -> None:
    chunks = await collect(chain_graph(), stream_mode="debug")
    assert [set(c) for c in chunks] == [{"type", "step", "timestamp", "payload"}] * 4
    assert [(c["type"], c["step"], c["payload"]["name"]) for c in chunks] == [
        ("task", 1, "first"),
        ("task_result", 1, "first"),
        ("task", 2, "second"),
        ("task_result", 2, "second"),
    ]
    for c in chunks:
        stamp = datetime.datetime.fromisoformat(c["timestamp"])
        assert stamp.tzinfo is not None
    start, result = chunks[0]["payload"], chunks[1]["payload"]
    assert start == {
        "id": start["id"],
        "name": "first",
        "input": {"n": 1, "log": []},
        "triggers": ["__start__"],
    }
    assert result == {
        "id": start["id"],  # the same task
        "name": "first",
        "result": {"n": 10, "log": ["first"]},  # LangGraph 1.2: the update dict
        "error": None,
        "interrupts": [],
    }
    assert chunks[2]["payload"]["triggers"] == ["first"]
    assert chunks[2]["payload"]["id"] != start["id"]


async def test_debug_reports_a_failed_task_with_its_error() -> None:
    async def bad(state: S) -> None:
        raise ValueError("nope")

    g = StateGraph(S)
    g.add_node("bad", bad)
    g.add_edge(START, "bad")
    g.add_edge("bad", END)
    chunks: list[Any] = []
    with pytest.raises(ValueError, match="nope"):
        async for chunk in g.compile().astream(INPUT, stream_mode="debug"):
            chunks.append(chunk)
    assert [c["type"] for c in chunks] == ["task", "task_result"]
    assert chunks[1]["payload"]["error"] == "ValueError: nope"
    assert chunks[1]["payload"]["result"] == {}


async def test_debug_with_a_checkpointer_reports_checkpoints() -> None:
    g = StateGraph(S)
    g.add_node("only", lambda s: {"log": ["only"]})
    g.add_edge(START, "only")
    g.add_edge("only", END)
    app = g.compile(checkpointer="memory:")
    config = {"configurable": {"thread_id": "dbg"}}
    chunks = [c async for c in app.astream(INPUT, config, stream_mode="debug")]
    assert [c["type"] for c in chunks] == ["checkpoint", "task", "task_result", "checkpoint"]
    assert [c["step"] for c in chunks] == [0, 1, 1, 1]
    assert chunks[-1]["payload"]["values"] == {"n": 1, "log": ["only"]}
    assert chunks[0]["payload"]["next"] == ["only"]


async def test_tasks_yields_the_debug_payloads_alone() -> None:
    app = chain_graph()
    tasks = await collect(app, stream_mode="tasks")
    debug = await collect(app, stream_mode="debug")
    strip = [{k: v for k, v in c.items() if k != "id"} for c in tasks]
    assert strip == [{k: v for k, v in c["payload"].items() if k != "id"} for c in debug]
    assert [set(c) for c in tasks] == [
        {"id", "name", "input", "triggers"},
        {"id", "name", "result", "error", "interrupts"},
    ] * 2


async def test_checkpoints_mode_needs_a_checkpointer() -> None:
    with pytest.raises(UnknownStreamModeError, match=r"'checkpoints'.*checkpointer='memory:'"):
        chain_graph().astream(INPUT, stream_mode="checkpoints")


async def test_checkpoints_mode_yields_each_saved_checkpoint() -> None:
    g = StateGraph(S)
    g.add_node("only", lambda s: {"log": ["only"]})
    g.add_edge(START, "only")
    g.add_edge("only", END)
    app = g.compile(checkpointer="memory:")
    config = {"configurable": {"thread_id": "cp"}}
    chunks = [c async for c in app.astream(INPUT, config, stream_mode="checkpoints")]
    assert [c["values"] for c in chunks] == [{"n": 1, "log": []}, {"n": 1, "log": ["only"]}]
    assert [c["next"] for c in chunks] == [["only"], []]
    assert chunks[1]["parent_config"] == chunks[0]["config"]


# -- messages -------------------------------------------------------------------------------


def token_graph(*, tags: list[str] | None = None) -> headwater.CompiledGraph:
    async def talk(state: S) -> dict[str, Any]:
        for token in ("Hel", "lo"):
            dispatch_event("on_chat_model_stream", {"chunk": token})
        return {"log": ["talk"]}

    def quiet(state: S) -> dict[str, Any]:  # sync, in a worker thread
        dispatch_event("on_chat_model_stream", {"chunk": "sh"})
        return {"log": ["quiet"]}

    g = StateGraph(S)
    g.add_node("talk", talk, metadata={"owner": "me"})
    g.add_node("quiet", quiet, tags=tags)
    g.add_edge(START, "talk")
    g.add_edge("talk", "quiet")
    g.add_edge("quiet", END)
    return g.compile()


async def test_messages_yields_chunk_and_metadata_pairs() -> None:
    chunks = await collect(token_graph(), stream_mode="messages")
    assert [(chunk, md["node"]) for chunk, md in chunks] == [
        ("Hel", "talk"),
        ("lo", "talk"),
        ("sh", "quiet"),
    ]
    metadata = chunks[0][1]
    assert metadata["step"] == 1
    assert metadata["owner"] == "me"
    assert metadata["triggers"] == ["__start__"]


async def test_messages_hides_chunks_of_nostream_nodes() -> None:
    chunks = await collect(token_graph(tags=["nostream"]), stream_mode="messages")
    assert [chunk for chunk, _ in chunks] == ["Hel", "lo"]


async def test_messages_of_a_real_chat_model(fake_chat_model: Any) -> None:
    from headwater.messages import AIMessageChunk

    llm = fake_chat_model(["Hi there"])

    async def chat(state: S) -> dict[str, Any]:
        await llm.ainvoke("hello")
        return {"log": ["chat"]}

    g = StateGraph(S)
    g.add_node("chat", chat)
    g.add_edge(START, "chat")
    g.add_edge("chat", END)
    chunks = await collect(g.compile(), stream_mode="messages")
    assert chunks
    assert all(isinstance(c, AIMessageChunk) and md["node"] == "chat" for c, md in chunks)
    assert "".join(c.content for c, _ in chunks) == "Hi there"


# -- several modes, subgraphs, sync -------------------------------------------------------


async def test_a_list_of_modes_yields_mode_chunk_pairs_in_happening_order() -> None:
    chunks = await collect(chain_graph(), stream_mode=["values", "updates", "custom"])
    assert chunks == [
        ("values", {"n": 1, "log": []}),
        ("custom", "first-1"),
        ("custom", "first-2"),
        ("updates", {"first": {"n": 10, "log": ["first"]}}),
        ("values", {"n": 10, "log": ["first"]}),
        ("custom", "second-1"),
        ("updates", {"second": {"log": ["second"]}}),
        ("values", {"n": 10, "log": ["first", "second"]}),
    ]


async def test_a_list_of_one_mode_still_yields_pairs_and_duplicates_collapse() -> None:
    assert await collect(chain_graph(), stream_mode=["custom"]) == [
        ("custom", "first-1"),
        ("custom", "first-2"),
        ("custom", "second-1"),
    ]
    assert await collect(chain_graph(), stream_mode=("custom", "custom")) == [
        ("custom", "first-1"),
        ("custom", "first-2"),
        ("custom", "second-1"),
    ]


def nested_graph() -> headwater.CompiledGraph:
    async def inner(state: S, *, writer: Any) -> dict[str, Any]:
        writer("from-inner")
        return {"n": state["n"] + 100}

    sub = StateGraph(S)
    sub.add_node("inner", inner)
    sub.add_edge(START, "inner")
    sub.add_edge("inner", END)

    g = StateGraph(S)
    g.add_node("sub", sub.compile(name="sub"))
    g.add_node("after", lambda s: {"log": ["after"]})
    g.add_edge(START, "sub")
    g.add_edge("sub", "after")
    g.add_edge("after", END)
    return g.compile(name="parent")


async def test_subgraphs_true_yields_namespace_chunk_pairs() -> None:
    chunks = await collect(nested_graph(), stream_mode="updates", subgraphs=True)
    assert [(len(ns), chunk) for ns, chunk in chunks] == [
        (1, {"inner": {"n": 101}}),
        (0, {"sub": {"n": 101, "log": []}}),
        (0, {"after": {"log": ["after"]}}),
    ]
    ns = chunks[0][0]
    assert isinstance(ns, tuple) and ns[0].startswith("sub:")
    assert chunks[1][0] == ()


async def test_subgraphs_with_several_modes_yields_namespace_mode_chunk() -> None:
    chunks = await collect(nested_graph(), stream_mode=["custom", "updates"], subgraphs=True)
    assert [(bool(ns), mode, chunk) for ns, mode, chunk in chunks] == [
        (True, "custom", "from-inner"),
        (True, "updates", {"inner": {"n": 101}}),
        (False, "updates", {"sub": {"n": 101, "log": []}}),
        (False, "updates", {"after": {"log": ["after"]}}),
    ]


async def test_without_subgraphs_the_subgraphs_chunks_are_hidden() -> None:
    assert await collect(nested_graph(), stream_mode="updates") == [
        {"sub": {"n": 101, "log": []}},
        {"after": {"log": ["after"]}},
    ]
    assert await collect(nested_graph(), stream_mode="custom") == []


@pytest.mark.parametrize(
    "mode", ["values", "updates", "custom", ["updates", "custom", "values"], "messages"]
)
def test_sync_stream_mirrors_astream(mode: Any) -> None:
    app = chain_graph()
    sync_chunks = list(app.stream(INPUT, stream_mode=mode))
    async_chunks = anyio.run(functools.partial(collect, app, stream_mode=mode))
    assert sync_chunks == async_chunks


def test_sync_stream_subgraphs_and_errors() -> None:
    app = nested_graph()
    chunks = list(app.stream(INPUT, stream_mode="updates", subgraphs=True))
    assert [len(ns) for ns, _ in chunks] == [1, 0, 0]

    def bad(state: S) -> None:
        raise KeyError("gone")

    g = StateGraph(S)
    g.add_node("bad", bad)
    g.add_edge(START, "bad")
    g.add_edge("bad", END)
    with pytest.raises(KeyError, match="gone"):
        list(g.compile().stream(INPUT))


# -- the plugin -----------------------------------------------------------------------------


def test_the_standard_modes_are_registered_by_the_streams_plugin() -> None:
    pm = headwater.create_plugin_manager()
    modes = pm.registrations("headwater_stream_modes")
    assert {"values", "updates", "messages", "custom", "debug", "tasks", "checkpoints"} <= set(
        modes
    )
    assert "events" in modes


async def test_a_third_party_stream_mode_works_like_a_standard_one() -> None:
    from headwater.events import ON_CHAIN_START, SKIP, StreamMode

    class Names:
        @headwater.hookimpl
        def headwater_stream_modes(self) -> Mapping[str, Any]:
            def make(run: Any) -> StreamMode:
                return StreamMode(
                    kinds=frozenset({ON_CHAIN_START}),
                    project=lambda e: e.name if "node" in e.metadata else SKIP,
                )

            return {"node_names": make}

    pm = headwater.create_plugin_manager(plugins=[Names()])
    g = StateGraph(S)
    g.add_node("one", lambda s: None)
    g.add_node("two", lambda s: None)
    g.add_edge(START, "one")
    g.add_edge("one", "two")
    g.add_edge("two", END)
    app = g.compile(plugin_manager=pm)
    assert await collect(app, stream_mode="node_names") == ["one", "two"]
    assert await collect(app, stream_mode=["node_names", "updates"]) == [
        ("node_names", "one"),
        ("updates", {"one": None}),
        ("node_names", "two"),
        ("updates", {"two": None}),
    ]
