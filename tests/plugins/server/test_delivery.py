"""How a served run reaches its broker log: one encoded projection, one bounded queue.

The server opens a run with ``headwater.sinks.open_encoded_stream``: each projected chunk
is encoded straight into its wire entry and queued once. These tests pin that path:

- for every route's modes (headwater's own stream modes alone and together,
  ``astream_events`` with filters, the LangGraph protocol's modes with and without
  subgraphs, legacy ``messages`` and ``messages-tuple``), over runs that finish, fail or
  pause, the log holds exactly the entries the former path made — ``astream`` or
  ``astream_events``, then each item reshaped into its entry (kept below as the
  reference) — byte for byte once random ids and clock times are numbered in order;
- a broker that falls behind holds the run back: the run's entries wait on one bounded
  queue, not in memory without limit.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping
from typing import Annotated, Any, TypedDict

import anyio
import anyio.lowlevel
import pytest
from fixtures.graphs import one_node_graph
from headwater_server._runs import (
    Outcome,
    drive,
    open_run_stream,
)
from headwater_server._wire import EventEncoder, dumps
from hypothesis import example, given, settings
from hypothesis import strategies as st

from headwater import START, StateGraph, get_stream_writer, interrupt
from headwater.broker import MemoryBroker
from headwater.events import Chunks
from headwater.messages import AIMessage, AIMessageChunk, ToolMessage, add_messages
from headwater.runtime import new_id
from headwater.sinks import open_encoded_stream
from headwater.testing.fake import FakeChatModel

pytestmark = pytest.mark.anyio

quick = settings(max_examples=60, deadline=None, database=None)


# -- the graph: every kind of chunk -------------------------------------------------------


class State(TypedDict, total=False):
    messages: Annotated[list[Any], add_messages]
    outcome: str
    n: int


class Inner(TypedDict, total=False):
    messages: Annotated[list[Any], add_messages]
    n: int


def build(outcome: str) -> Any:
    llm = FakeChatModel(["Rivers flow downhill to the sea."], cycle=True, name="writer")
    inner_llm = FakeChatModel([["Deep ", "water"]], cycle=True, name="inner_writer")

    async def plan(state: State) -> dict[str, Any]:
        write = get_stream_writer()
        for i in range(3):
            write({"planned": i})
        call = {"name": "look", "args": {"q": "rivers"}, "id": "call-1"}
        return {
            "messages": [
                AIMessage(content="", tool_calls=[call]),
                ToolMessage(content="found", tool_call_id="call-1"),
            ],
            "n": 1,
        }

    async def chat(state: State) -> dict[str, Any]:
        reply = await llm.ainvoke(state["messages"])
        return {"messages": [reply]}

    async def think(state: Inner) -> dict[str, Any]:
        get_stream_writer()({"inner": True})
        reply = await inner_llm.ainvoke(state.get("messages") or [])
        return {"messages": [reply], "n": state.get("n", 0) + 1}

    inner = StateGraph(Inner)
    inner.add_node("think", think)
    inner.add_edge(START, "think")

    def tally(state: State) -> dict[str, Any]:  # a sync node: its events come from a thread
        write = get_stream_writer()
        for i in range(2):
            write({"tally": i})
        if outcome == "error":
            raise ValueError("the river ran dry")
        if outcome == "interrupt":
            return {"outcome": str(interrupt({"ask": "continue?"}))}
        return {"n": state.get("n", 0) + 10}

    graph = StateGraph(State)
    graph.add_node("plan", plan)
    graph.add_node("chat", chat)
    graph.add_node("inner", inner.compile())
    graph.add_node("tally", tally)
    graph.add_edge(START, "plan")
    graph.add_edge("plan", "chat")
    graph.add_edge("plan", "inner")
    graph.add_edge("chat", "tally")
    graph.add_edge("inner", "tally")
    return graph.compile(checkpointer="memory:")


# -- the reference: the former path, astream then one reshaping per item ------------------

_FILTER_KEYS = ("include_names", "include_types", "include_tags", "exclude_names",
                "exclude_types", "exclude_tags")  # fmt: skip


def reference_stream(graph: Any, input: Any, config: Any, spec: Mapping[str, Any]) -> Any:
    mode = spec.get("stream_mode")
    protocol = spec.get("protocol")
    if protocol is not None:
        return graph.astream(
            input, config, stream_mode=list(mode or ()), subgraphs=bool(protocol.get("subgraphs"))
        )
    if mode is not None:
        return graph.astream(input, config, stream_mode=mode)
    filters = {k: spec[k] for k in _FILTER_KEYS if spec.get(k) is not None}
    return graph.astream_events(input, config, filters=spec.get("filters"), **filters)


async def reference_wire(stream: Any, stream_mode: Any) -> AsyncIterator[tuple[str, str]]:
    encode = EventEncoder(None)
    async with stream:
        async for item in stream:
            if stream_mode is None:
                yield item["event"], encode(item)
            elif isinstance(stream_mode, str):
                yield stream_mode, dumps(item)
            else:
                yield item[0], dumps(item[1])


async def reference_protocol(
    stream: Any, modes: list[str], run_id: str
) -> AsyncIterator[tuple[str, str]]:
    yield "metadata", dumps({"run_id": run_id, "attempt": 1})
    tuples = "messages-tuple" in modes
    legacy = "messages" in modes
    partial: dict[str, Any] = {}
    async with stream:
        async for item in stream:
            if len(item) == 3:
                ns, mode, chunk = item
                suffix = "|" + "|".join(ns) if ns else ""
            else:
                mode, chunk = item
                suffix = ""
            if mode != "messages":
                yield mode + suffix, dumps(chunk)
                continue
            if tuples:
                message, metadata = chunk
                yield "messages" + suffix, f"[{dumps(message)},{dumps(metadata)}]"
            if legacy:
                message, metadata = chunk
                key = getattr(message, "id", None) or ""
                if key not in partial:
                    yield "messages/metadata" + suffix, dumps({key: {"metadata": metadata}})
                if not isinstance(message, AIMessageChunk):
                    partial.pop(key, None)
                    yield "messages/complete" + suffix, dumps([message])
                    continue
                so_far = partial.get(key)
                so_far = message if so_far is None else so_far + message
                partial[key] = so_far
                yield "messages/partial" + suffix, dumps([so_far])


async def reference_log(graph: Any, config: Any, spec: Mapping[str, Any]) -> Any:
    stream = reference_stream(graph, {"messages": [("user", "hi")]}, config, spec)
    if spec.get("protocol") is not None:
        entries = reference_protocol(stream, spec["protocol"]["modes"], config["run_id"])
    else:
        entries = reference_wire(stream, spec.get("stream_mode"))
    out: list[tuple[str, str]] = []
    try:
        async for entry in entries:
            out.append(entry)
    except Exception as exc:
        return out, Outcome("error", {"type": type(exc).__name__, "message": str(exc)})
    return out, Outcome("done")


async def served_log(graph: Any, config: Any, spec: Mapping[str, Any]) -> Any:
    broker = MemoryBroker()
    output = open_run_stream(graph, {"messages": [("user", "hi")]}, config, spec)
    outcome = await drive(broker, config["run_id"], output)
    entries = await broker.read(config["run_id"], None, block=0)
    return [(e.event, e.data) for e in entries], outcome


_ID = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{32}"
    r"|\d{20}-[0-9a-f]{8}"  # checkpoint ids
)
_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(\+00:00|Z)?")


def numbered(entries: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Random ids numbered in order of appearance; clock times replaced."""
    seen: dict[str, str] = {}

    def number(match: re.Match[str]) -> str:
        return seen.setdefault(match.group(0), f"<id{len(seen)}>")

    return [(_ID.sub(number, event), _TIME.sub("<time>", _ID.sub(number, data)))
            for event, data in entries]  # fmt: skip


# -- the specs every route sends ----------------------------------------------------------

MODES = ["values", "updates", "messages", "custom", "debug", "tasks", "checkpoints"]
PROTOCOL_MODES = ["values", "updates", "messages-tuple", "messages", "custom", "debug",
                  "tasks", "checkpoints", "events"]  # fmt: skip
PROTOCOL_CORE = {"messages-tuple": "messages"}

native_modes = st.one_of(
    st.sampled_from(MODES), st.lists(st.sampled_from(MODES), min_size=1, max_size=4, unique=True)
)
event_filters = st.fixed_dictionaries(
    {},
    optional={
        "include_types": st.sampled_from([["chain"], ["chat_model"], ["chain", "chat_model"]]),
        "include_names": st.sampled_from([["plan"], ["*er"], ["inner", "think"]]),
        "exclude_tags": st.sampled_from([["nostream"], ["graph:step:1"]]),
        "exclude_types": st.sampled_from([["chat_model"]]),
    },
)


def protocol_spec(modes: list[str], subgraphs: bool) -> dict[str, Any]:
    return {
        "stream_mode": sorted({PROTOCOL_CORE.get(m, m) for m in modes}),
        "protocol": {"modes": modes, "subgraphs": subgraphs, "command": None},
    }


specs = st.one_of(
    native_modes.map(lambda mode: {"stream_mode": mode}),
    event_filters.map(lambda filters: {**filters, "filters": None}),
    st.builds(
        protocol_spec,
        st.lists(st.sampled_from(PROTOCOL_MODES), min_size=1, max_size=4, unique=True),
        st.booleans(),
    ),
)


@quick
@given(spec=specs, outcome=st.sampled_from(["done", "error", "interrupt"]))
@example(spec=protocol_spec(["messages", "messages-tuple", "updates"], True), outcome="done")
@example(spec=protocol_spec(["messages", "values"], False), outcome="interrupt")
@example(spec=protocol_spec(["events", "custom", "debug"], True), outcome="error")
@example(spec=protocol_spec(["messages-tuple", "tasks", "checkpoints"], True), outcome="done")
@example(spec={"include_types": ["chat_model"], "include_names": ["plan"]}, outcome="done")
@example(spec={"exclude_tags": ["nostream"], "filters": None}, outcome="error")
@example(spec={"stream_mode": MODES}, outcome="interrupt")
def test_the_log_is_what_the_astream_path_made_for_every_route_and_mode(
    spec: dict[str, Any], outcome: str
) -> None:
    graph = build(outcome)

    async def both() -> tuple[Any, Any]:
        before = await reference_log(graph, config(), spec)
        after = await served_log(graph, config(), spec)
        return before, after

    (before, before_outcome), (after, after_outcome) = anyio.run(both)
    assert after_outcome == before_outcome
    assert numbered(after) == numbered(before)
    if outcome == "error":
        assert after_outcome.body == {"type": "ValueError", "message": "the river ran dry"}


def config() -> dict[str, Any]:
    return {"configurable": {"thread_id": new_id()}, "run_id": new_id()}


async def test_a_protocol_run_logs_its_metadata_first_then_namespaced_entries() -> None:
    graph = build("done")
    spec = protocol_spec(["updates", "messages", "messages-tuple"], True)
    entries, outcome = await served_log(graph, config(), spec)
    assert outcome == Outcome("done")
    events = [event for event, _ in entries]
    assert events[0] == "metadata"
    assert any(e.startswith("updates|inner:") for e in events)
    assert {"messages", "messages/metadata", "messages/partial", "messages/complete"} <= {
        e.split("|")[0] for e in events
    }


# -- one bounded queue, and backpressure ---------------------------------------------------


class SlowBroker(MemoryBroker):
    """A broker that takes its time over each round trip, counting what the run made."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    async def publish_many(self, run_id: str, entries: Any) -> list[str]:
        self.batches.append(len(entries))
        await anyio.sleep(0.005)
        return await super().publish_many(run_id, entries)


async def test_a_broker_that_falls_behind_holds_the_run_back() -> None:
    written: list[int] = []
    total = 40_000

    class Burst(TypedDict):
        n: int

    async def burst(state: Burst, *, writer: Any) -> dict[str, int]:
        for i in range(total):
            writer(i)
            written.append(i)
            if i % 100 == 0:
                await anyio.lowlevel.checkpoint()  # where backpressure holds it
        return {"n": total}

    app = one_node_graph(Burst, burst)
    broker = SlowBroker()
    run_id = new_id()
    output = open_run_stream(app, {"n": 0}, {"run_id": run_id}, {"stream_mode": "custom"})
    ahead: list[int] = []

    async def watch() -> None:
        while True:
            await anyio.sleep(0.002)
            published = sum(broker.batches)
            ahead.append(len(written) - published)

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch)
        assert await drive(broker, run_id, output) == Outcome("done")
        tg.cancel_scope.cancel()
    assert sum(broker.batches) == total
    assert max(broker.batches) <= 512 + 256  # publish round trips stay bounded
    # The run never got further ahead of the broker than the one queue holds (4096
    # entries), plus what it writes between two await points.
    assert max(ahead) <= 4096 + 512 + 100


async def test_each_chunk_is_encoded_once_on_the_producer_side() -> None:
    calls: list[tuple[str, tuple[str, ...]]] = []

    def encode(mode: str, ns: tuple[str, ...], chunk: Any) -> Any:
        calls.append((mode, ns))
        if mode == "custom":
            return Chunks([("custom", dumps(chunk)), ("again", dumps(chunk))])
        return (mode, dumps(chunk))

    graph = build("done")
    stream = open_encoded_stream(
        graph, {"messages": [("user", "hi")]}, config(), encode, stream_mode=["custom", "updates"]
    )
    items: list[Any] = []
    async with stream:
        while (batch := await stream.next_batch(64)) is not None:
            items.extend(batch)
    custom = [data for event, data in items if event == "custom"]
    assert custom == [data for event, data in items if event == "again"]
    assert len(calls) == len(items) - len(custom)  # one call per chunk
    assert {event for event, _ in items} == {"custom", "again", "updates"}


async def test_filters_go_with_astream_events_only() -> None:
    from headwater.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="only for astream_events"):
        open_encoded_stream(
            build("done"), {}, None, lambda *a: a, stream_mode="updates", include_names=["x"]
        )


# -- a paced run: every token, in order, to every follower ---------------------------------


async def test_a_paced_run_reaches_its_followers_whole_and_in_order() -> None:
    class Paced(TypedDict):
        n: int

    async def talk(state: Paced, *, writer: Any) -> dict[str, int]:
        for i in range(50):
            writer(i)
            await anyio.sleep(0.001 if i % 7 else 0.005)
        return {"n": 50}

    app = one_node_graph(Paced, talk)
    broker = MemoryBroker()
    run_id = new_id()
    output = open_run_stream(app, {"n": 0}, {"run_id": run_id}, {"stream_mode": "custom"})
    follows: list[list[str]] = [[], [], []]

    async def follow(into: list[str]) -> None:
        after = None
        while len(into) < 50:
            entries = await broker.read(run_id, after, block=5)
            into.extend(e.data for e in entries)
            after = entries[-1].id if entries else after

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for into in follows:
                tg.start_soon(follow, into)
            assert await drive(broker, run_id, output) == Outcome("done")
    assert follows == [[dumps(i) for i in range(50)]] * 3
    assert broker.waiting == 0
