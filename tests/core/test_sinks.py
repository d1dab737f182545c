"""Sinks named in a run's config (``config["sinks"]``), registered by ``headwater_sinks``."""

from __future__ import annotations

import operator
from typing import Annotated, Any, TypedDict

import anyio
import anyio.lowlevel
import pytest

from headwater import START, StateGraph, create_plugin_manager, get_stream_writer, hookimpl
from headwater.errors import InvalidInputError
from headwater.events import PUBLIC_KINDS, Event, Subscription

pytestmark = pytest.mark.anyio

OPENED: list[Any] = []


class Recorder:
    """A sink keeping every event, and whether (and when) it was closed."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.events: list[Event] = []
        self.closed_after: int | None = None
        OPENED.append(self)

    def subscription(self) -> Subscription:
        return Subscription(callback=self.events.append, kinds=PUBLIC_KINDS)

    async def close(self) -> None:
        assert self.closed_after is None, "closed twice"
        await anyio.lowlevel.checkpoint()  # an async close is awaited
        self.closed_after = len(self.events)


class Sinks:
    @hookimpl
    def headwater_sinks(self) -> dict[str, Any]:
        return {"record": Recorder, "broken": lambda target: object()}


class State(TypedDict, total=False):
    log: Annotated[list[str], operator.add]
    fail: bool


async def write(state: State) -> dict[str, Any]:
    get_stream_writer()({"progress": 1})
    if state.get("fail"):
        raise ValueError("the node failed")
    return {"log": ["wrote"]}


def graph(*, sub: bool = False) -> Any:
    pm = create_plugin_manager(plugins=[Sinks()])
    g = StateGraph(State)
    if sub:
        inner = StateGraph(State)
        inner.add_node("write", write)
        inner.add_edge(START, "write")
        g.add_node("inner", inner.compile(name="inner", plugin_manager=pm))
        g.add_edge(START, "inner")
    else:
        g.add_node("write", write)
        g.add_edge(START, "write")
    return g.compile(name="outer", plugin_manager=pm)


@pytest.fixture(autouse=True)
def _fresh() -> None:
    OPENED.clear()


async def test_a_sink_gets_every_event_of_an_ainvoke_and_is_closed_after_the_last() -> None:
    app = graph()
    assert await app.ainvoke({"log": []}, {"sinks": ["record:run-1"]}) == {"log": ["wrote"]}
    (sink,) = OPENED
    assert sink.target == "run-1"
    kinds = [(e.event, e.name) for e in sink.events]
    assert kinds == [
        ("on_chain_start", "outer"),
        ("on_chain_start", "write"),
        ("on_custom_event", "write"),
        ("on_chain_stream", "write"),
        ("on_chain_end", "write"),
        ("on_chain_stream", "outer"),
        ("on_chain_end", "outer"),
    ]
    assert sink.closed_after == len(sink.events)


async def test_a_sink_sees_what_astream_events_sees() -> None:
    app = graph()
    streamed = [e async for e in app.astream_events({"log": []}, {"sinks": ["record:"]})]
    (sink,) = OPENED
    assert [e.to_dict()["event"] for e in sink.events] == [e["event"] for e in streamed]


async def test_a_failing_run_still_closes_its_sinks_after_the_error_event() -> None:
    with pytest.raises(ValueError, match="the node failed"):
        await graph().ainvoke({"fail": True}, {"sinks": ["record:x", "record:y"]})
    assert len(OPENED) == 2
    for sink in OPENED:
        assert sink.events[-1].event == "on_chain_error"
        assert sink.closed_after == len(sink.events)


async def test_a_subgraph_shares_its_root_runs_sinks() -> None:
    await graph(sub=True).ainvoke({"log": []}, {"sinks": ["record:"]})
    (sink,) = OPENED  # opened once, for the root run
    assert ("on_custom_event", "write") in [(e.event, e.name) for e in sink.events]
    assert [e.name for e in sink.events if e.event == "on_chain_start"] == [
        "outer",
        "inner",
        "inner",
        "write",
    ]


@pytest.mark.parametrize(
    ("sinks", "message"),
    [
        ("record:x", r"must be a list of 'name:target' strings"),
        ([42], r"Each entry of config\['sinks'\] is a 'name:target' string; got 42"),
        # Every installed plugin's sinks are listed too (headwater-otel's, in this workspace).
        (["recrod:x"], r"Unknown sink 'recrod'.*Did you mean 'record'\?.*broken, (.+, )?record"),
        (["record:x", "broken:y"], r"sink 'broken' returned object, which has no subscription"),
    ],
)
async def test_bad_sink_config_is_a_clear_error_before_the_run(sinks: Any, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        await graph().ainvoke({"log": []}, {"sinks": sinks})
    assert all(sink.closed_after == 0 for sink in OPENED)  # opened ones are closed again
    assert all(not sink.events for sink in OPENED)


async def test_bad_input_closes_the_sinks_and_writes_no_checkpoint() -> None:
    pm = create_plugin_manager(plugins=[Sinks()])
    g = StateGraph(State)
    g.add_node("write", write)
    g.add_edge(START, "write")
    app = g.compile(checkpointer="memory:", plugin_manager=pm)
    config = {"sinks": ["record:"], "configurable": {"thread_id": "t"}}
    with pytest.raises(InvalidInputError):
        await app.ainvoke({"unknown_key": 1}, config)
    (sink,) = OPENED
    assert sink.closed_after == 0
    with pytest.raises(InvalidInputError, match="Unknown sink"):
        await app.ainvoke({"log": []}, {**config, "sinks": ["nope:"]})
    assert (await app.aget_state({"configurable": {"thread_id": "t"}})).values == {}


def test_the_bus_says_which_kinds_are_wanted_before_any_event_is_built() -> None:
    from headwater._bus import Bus

    bus = Bus()
    assert "on_chain_start" not in bus.wanted and not bus.wanted
    bus.subscribe(Subscription(callback=print, kinds=frozenset({"task_end"})))
    assert "task_end" in bus.wanted and "on_chain_start" not in bus.wanted
    child = bus.child(("sub:1",))  # shares the root's subscriptions
    assert "task_end" in child.wanted and "task_start" not in child.wanted
    bus.subscribe(Subscription(callback=print, kinds=frozenset({"on_chain_end", "task_end"})))
    assert bus.wanted == {"task_end", "on_chain_end"}  # recomputed after a subscribe
    bus.subscribe(Subscription(callback=print))  # every kind
    assert "anything_at_all" in bus.wanted and "on_chain_start" in bus.wanted
