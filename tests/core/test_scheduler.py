"""The superstep scheduler: deterministic writes, the recursion limit, and node errors.

Completion order is randomised with ``anyio.sleep`` delays; nothing here asserts on
elapsed time. Cancellation is observed through flags set by the cancelled node itself.
"""

from __future__ import annotations

import itertools
import operator
import random
from collections.abc import Mapping
from typing import Annotated, Any, TypedDict

import anyio
import anyio.lowlevel
import pytest

import headwater
from headwater import DEFAULT_RECURSION_LIMIT, END, START, Send, StateGraph
from headwater.errors import GraphRecursionError, HeadwaterError


class Log(TypedDict):
    log: Annotated[list[str], operator.add]
    last: str


def delayed(name: str, delay: float) -> Any:
    async def node(state: Log) -> dict[str, Any]:
        await anyio.sleep(delay)
        return {"log": [name]}

    return node


# -- determinism ----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.anyio
async def test_parallel_writes_are_applied_in_node_name_order(seed: int) -> None:
    rng = random.Random(seed)
    names = ["delta", "alpha", "charlie", "bravo", "echo"]
    rng.shuffle(names)  # the order nodes are added in does not matter either
    graph = StateGraph(Log)
    for name in names:
        graph.add_node(name, delayed(name, rng.random() / 100))
        graph.add_edge(START, name)
    result = await graph.compile().ainvoke({"log": []})
    assert result["log"] == ["alpha", "bravo", "charlie", "delta", "echo"]


@pytest.mark.anyio
async def test_finish_order_is_the_reverse_of_name_order_and_writes_still_sort() -> None:
    finished: list[str] = []
    graph = StateGraph(Log)
    # "a" waits for "b" to finish first, so completion order is b, a.
    done_b = anyio.Event()

    async def a(state: Log) -> dict[str, Any]:
        await done_b.wait()
        finished.append("a")
        return {"log": ["a"]}

    async def b(state: Log) -> dict[str, Any]:
        await anyio.lowlevel.checkpoint()
        finished.append("b")
        done_b.set()
        return {"log": ["b"]}

    graph.add_node("a", a)
    graph.add_node("b", b)
    graph.add_edge(START, "a")
    graph.add_edge(START, "b")
    result = await graph.compile().ainvoke({})
    assert finished == ["b", "a"]
    assert result == {"log": ["a", "b"]}


@pytest.mark.anyio
async def test_sync_and_async_parallel_nodes_merge_deterministically() -> None:
    def sync_node(name: str) -> Any:
        def run(state: Log) -> dict[str, Any]:
            return {"log": [name]}

        return run

    graph = StateGraph(Log)
    for i in range(6):
        name = f"n{i}"
        graph.add_node(name, sync_node(name) if i % 2 else delayed(name, (6 - i) / 1000))
        graph.add_edge(START, name)
    result = await graph.compile().ainvoke({})
    assert result == {"log": [f"n{i}" for i in range(6)]}


@pytest.mark.anyio
async def test_each_step_sees_the_previous_steps_writes() -> None:
    seen: list[list[str]] = []

    def record(name: str) -> Any:
        async def run(state: Log) -> dict[str, Any]:
            seen.append(list(state.get("log", [])))
            return {"log": [name], "last": name}

        return run

    graph = StateGraph(Log)
    for name in ("a", "b", "c"):
        graph.add_node(name, record(name))
    graph.add_edge(START, "a")
    graph.add_edge("a", "b")
    graph.add_edge("b", "c")
    result = await graph.compile().ainvoke({})
    assert seen == [[], ["a"], ["a", "b"]]
    assert result == {"log": ["a", "b", "c"], "last": "c"}


# -- recursion limit ------------------------------------------------------------------------


def long_chain(n: int) -> headwater.CompiledGraph:
    graph = StateGraph(Log)
    names = [f"n{i:03d}" for i in range(n)]
    for name in names:
        graph.add_node(name, lambda s, name=name: {"log": [name]})
    graph.add_edge(START, names[0])
    for a, b in itertools.pairwise(names):
        graph.add_edge(a, b)
    graph.add_edge(names[-1], END)
    return graph.compile()


def test_default_recursion_limit_is_langgraphs() -> None:
    assert DEFAULT_RECURSION_LIMIT == 10_007  # langgraph 1.2.24's DEFAULT_RECURSION_LIMIT


def spinner(target: int) -> headwater.CompiledGraph:
    """A loop of one async node that runs ``target`` times, then routes to END."""

    class Counter(TypedDict):
        n: int

    async def spin(state: Counter) -> dict[str, int]:
        return {"n": state["n"] + 1}

    graph = StateGraph(Counter)
    graph.add_node("spin", spin)
    graph.add_edge(START, "spin")
    graph.add_conditional_edges("spin", lambda s: END if s["n"] >= target else "spin")
    return graph.compile()


@pytest.mark.anyio
async def test_a_50_step_agent_loop_just_runs() -> None:
    assert await spinner(50).ainvoke({"n": 0}) == {"n": 50}


@pytest.mark.anyio
async def test_a_loop_of_exactly_the_default_limit_passes_one_more_fails() -> None:
    assert await spinner(DEFAULT_RECURSION_LIMIT).ainvoke({"n": 0}) == {
        "n": DEFAULT_RECURSION_LIMIT
    }
    with pytest.raises(GraphRecursionError) as info:
        await spinner(DEFAULT_RECURSION_LIMIT + 1).ainvoke({"n": 0})
    message = str(info.value)
    assert f"recursion limit of {DEFAULT_RECURSION_LIMIT}" in message
    assert "recursion_limit" in message  # says how to raise it
    assert "'spin'" in message  # names what was still to run


@pytest.mark.anyio
async def test_a_chain_of_exactly_the_limit_passes_one_more_fails() -> None:
    assert len((await long_chain(25).ainvoke({}, {"recursion_limit": 25}))["log"]) == 25
    with pytest.raises(GraphRecursionError) as info:
        await long_chain(26).ainvoke({}, {"recursion_limit": 25})
    assert "n025" in str(info.value)  # names what was still to run


@pytest.mark.anyio
async def test_config_recursion_limit() -> None:
    assert len((await long_chain(3).ainvoke({}, {"recursion_limit": 3}))["log"]) == 3
    with pytest.raises(GraphRecursionError, match=r"recursion limit of 3 .*'recursion_limit'"):
        await long_chain(4).ainvoke({}, {"recursion_limit": 3})
    result = await long_chain(40).ainvoke({}, {"recursion_limit": 40})
    assert len(result["log"]) == 40


@pytest.mark.anyio
async def test_a_loop_without_exit_hits_the_limit() -> None:
    graph = StateGraph(Log)
    graph.add_node("spin", lambda s: {"log": ["spin"]})
    graph.add_edge(START, "spin")
    graph.add_conditional_edges("spin", lambda s: "spin")
    with pytest.raises(GraphRecursionError) as info:
        await graph.compile().ainvoke({}, {"recursion_limit": 5})
    assert isinstance(info.value, HeadwaterError) and isinstance(info.value, RecursionError)
    assert "'spin'" in str(info.value)


@pytest.mark.anyio
async def test_parallel_branches_count_supersteps_not_tasks() -> None:
    graph = StateGraph(Log)
    for name in ("a", "b", "c", "d"):
        graph.add_node(name, lambda s, name=name: {"log": [name]})
        graph.add_edge(START, name)
    graph.add_conditional_edges(START, lambda s: [Send("a", {}) for _ in range(5)])
    result = await graph.compile().ainvoke({}, {"recursion_limit": 1})
    assert sorted(result["log"]) == ["a"] * 6 + ["b", "c", "d"]


# -- errors ---------------------------------------------------------------------------------


class Boom(Exception):
    """A node's own error type: it must propagate as it is."""


class Probe:
    def __init__(self) -> None:
        self.started: list[str] = []
        self.cancelled: list[str] = []
        self.finished: list[str] = []


def sleeper(probe: Probe, name: str) -> Any:
    async def node(state: Log) -> dict[str, Any]:
        probe.started.append(name)
        try:
            await anyio.sleep(10)
        except anyio.get_cancelled_exc_class():
            probe.cancelled.append(name)
            raise
        probe.finished.append(name)
        return {"log": [name]}

    return node


def failing(probe: Probe, name: str, *, suspend: bool) -> Any:
    async def node(state: Log) -> dict[str, Any]:
        probe.started.append(name)
        if suspend:
            await anyio.lowlevel.checkpoint()
            await anyio.lowlevel.checkpoint()
        raise Boom(f"{name} broke")

    return node


@pytest.mark.parametrize("suspend", [True, False])
@pytest.mark.anyio
async def test_node_error_cancels_running_siblings_and_propagates_as_is(suspend: bool) -> None:
    probe = Probe()
    graph = StateGraph(Log)
    graph.add_node("a_sleeper", sleeper(probe, "a_sleeper"))  # starts first, suspends
    graph.add_node("b_fails", failing(probe, "b_fails", suspend=suspend))
    graph.add_node("c_sleeper", sleeper(probe, "c_sleeper"))
    graph.add_node("after", lambda s: probe.finished.append("after"))
    for name in ("a_sleeper", "b_fails", "c_sleeper"):
        graph.add_edge(START, name)
        graph.add_edge(name, "after")
    with pytest.raises(Boom, match="b_fails broke") as info:
        await graph.compile(name="errs").ainvoke({})
    assert type(info.value) is Boom  # not an ExceptionGroup
    notes = getattr(info.value, "__notes__", [])
    assert any("'b_fails'" in note and "'errs'" in note for note in notes), notes
    assert "a_sleeper" in probe.cancelled
    assert set(probe.cancelled) == set(probe.started) - {"b_fails"}
    assert probe.finished == []


@pytest.mark.anyio
async def test_unstarted_siblings_do_not_start_after_a_failure() -> None:
    probe = Probe()
    graph = StateGraph(Log)
    graph.add_node("a_fails", failing(probe, "a_fails", suspend=False))
    graph.add_node("b_sleeper", sleeper(probe, "b_sleeper"))
    graph.add_node("c_sleeper", sleeper(probe, "c_sleeper"))
    for name in ("a_fails", "b_sleeper", "c_sleeper"):
        graph.add_edge(START, name)
    with pytest.raises(Boom):
        await graph.compile().ainvoke({})
    assert probe.started == ["a_fails"]


@pytest.mark.anyio
async def test_sync_node_error_propagates_with_a_note_and_cancels_async_siblings() -> None:
    probe = Probe()

    def sync_fails(state: Log) -> None:
        raise KeyError("missing thing")

    graph = StateGraph(Log)
    graph.add_node("sleepy", sleeper(probe, "sleepy"))
    graph.add_node("sync_fails", sync_fails)
    graph.add_edge(START, "sleepy")
    graph.add_edge(START, "sync_fails")
    with pytest.raises(KeyError) as info:
        await graph.compile().ainvoke({})
    assert any("'sync_fails'" in note for note in info.value.__notes__)
    assert probe.cancelled == ["sleepy"]


@pytest.mark.anyio
async def test_error_in_a_later_step_stops_the_run_there() -> None:
    probe = Probe()
    graph = StateGraph(Log)
    graph.add_node("ok", lambda s: {"log": ["ok"]})
    graph.add_node("bad", failing(probe, "bad", suspend=True))
    graph.add_node("never", lambda s: probe.finished.append("never"))
    graph.add_edge(START, "ok")
    graph.add_edge("ok", "bad")
    graph.add_edge("bad", "never")
    with pytest.raises(Boom) as info:
        await graph.compile().ainvoke({})
    assert any("'bad' (step 2)" in note for note in info.value.__notes__)
    assert probe.finished == []


@pytest.mark.anyio
async def test_error_in_one_of_many_send_tasks() -> None:
    probe = Probe()

    async def work(i: int) -> dict[str, Any]:
        probe.started.append(str(i))
        try:
            await anyio.sleep(0 if i == 3 else 10)
        except anyio.get_cancelled_exc_class():
            probe.cancelled.append(str(i))
            raise
        if i == 3:
            raise Boom("task 3")
        return {"log": [str(i)]}

    graph = StateGraph(Log)
    graph.add_node("work", work)
    graph.add_conditional_edges(START, lambda s: [Send("work", i) for i in range(6)])
    with pytest.raises(Boom, match="task 3"):
        await graph.compile().ainvoke({})
    # Every task that had started was cancelled; those not started yet never start.
    assert sorted(probe.cancelled) == sorted(set(probe.started) - {"3"})
    assert {"0", "1", "2"} <= set(probe.cancelled)


@pytest.mark.anyio
async def test_error_in_a_router_propagates() -> None:
    def route(state: Log) -> str:
        raise Boom("router broke")

    graph = StateGraph(Log)
    graph.add_node("a", lambda s: None)
    graph.add_edge(START, "a")
    graph.add_conditional_edges("a", route)
    with pytest.raises(Boom, match="router broke"):
        await graph.compile().ainvoke({})


@pytest.mark.anyio
async def test_error_inside_a_subgraph_propagates_with_notes() -> None:
    inner = StateGraph(Log)
    inner.add_node("deep", failing(Probe(), "deep", suspend=True))
    inner.add_edge(START, "deep")
    outer = StateGraph(Log)
    outer.add_node("sub", inner.compile(name="inner"))
    outer.add_edge(START, "sub")
    with pytest.raises(Boom) as info:
        await outer.compile(name="outer").ainvoke({})
    notes = "\n".join(info.value.__notes__)
    assert "'deep'" in notes and "'sub'" in notes


def test_invoke_reraises_the_original_exception() -> None:
    graph = StateGraph(Log)
    graph.add_node("a", failing(Probe(), "a", suspend=True))
    graph.add_node("b", delayed("b", 0))
    graph.add_edge(START, "a")
    graph.add_edge(START, "b")
    with pytest.raises(Boom):
        graph.compile().invoke({})


@pytest.mark.anyio
async def test_config_is_shared_by_nodes_and_routers() -> None:
    seen: list[Mapping[str, Any]] = []

    def route(state: Log, config: Mapping[str, Any]) -> str:
        seen.append(config["configurable"])
        return END

    graph = StateGraph(Log)
    graph.add_node("a", lambda s, config: seen.append(config["configurable"]))
    graph.add_edge(START, "a")
    graph.add_conditional_edges("a", route)
    await graph.compile().ainvoke({}, {"configurable": {"user": "u"}})
    await graph.compile().ainvoke({})
    assert seen == [{"user": "u"}, {"user": "u"}, {}, {}]
