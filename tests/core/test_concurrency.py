"""The eager step runner: nodes start inline and get a task of their own only if they suspend.

These tests check what that optimisation must never change: each node runs in its own
copy of the context (nothing leaks to siblings, later steps or the caller); a node that
suspends many times, with cancel scopes and task groups inside, behaves as in a task of
its own on asyncio and trio; results come back in input order; suspending and
non-suspending nodes mix freely.
"""

from __future__ import annotations

import contextvars
import functools
import operator
import random
from collections.abc import Callable, Coroutine
from typing import Annotated, Any, TypedDict

import anyio
import anyio.lowlevel
import pytest

from headwater import START, Send, StateGraph
from headwater._concurrency import run_all, run_one

pytestmark = pytest.mark.anyio

VAR: contextvars.ContextVar[str] = contextvars.ContextVar("VAR", default="unset")


class Log(TypedDict):
    log: Annotated[list[Any], operator.add]


# -- contextvars --------------------------------------------------------------------------


@pytest.mark.parametrize("suspend", [False, True])
async def test_contextvars_set_in_a_node_do_not_leak(suspend: bool) -> None:
    seen: dict[str, str] = {}

    def node(name: str) -> Any:
        async def run(state: Log) -> dict[str, Any]:
            seen[f"{name} before"] = VAR.get()
            VAR.set(name)
            if suspend:
                await anyio.lowlevel.checkpoint()
            seen[f"{name} after"] = VAR.get()
            return {"log": [name]}

        return run

    graph = StateGraph(Log)
    for name in ("a", "b", "c"):
        graph.add_node(name, node(name))
        graph.add_edge(START, name)
    graph.add_node("next_step", node("next_step"))
    graph.add_edge("a", "next_step")
    token = VAR.set("caller")
    try:
        result = await graph.compile().ainvoke({})
        assert VAR.get() == "caller"
    finally:
        VAR.reset(token)
    assert result == {"log": ["a", "b", "c", "next_step"]}
    # Each node starts from the caller's value and keeps its own across its suspensions.
    for name in ("a", "b", "c", "next_step"):
        assert seen[f"{name} before"] == "caller"
        assert seen[f"{name} after"] == name


async def test_contextvars_set_in_a_sync_node_do_not_leak() -> None:
    seen: list[str] = []

    def setter(state: Log) -> None:
        VAR.set("sync")

    async def reader(state: Log) -> None:
        seen.append(VAR.get())

    graph = StateGraph(Log)
    graph.add_node("setter", setter)
    graph.add_node("reader", reader)
    graph.add_edge(START, "setter")
    graph.add_edge("setter", "reader")
    await graph.compile().ainvoke({})
    assert seen == ["unset"]
    assert VAR.get() == "unset"


async def test_run_all_gives_each_coroutine_its_own_context() -> None:
    async def job(i: int) -> tuple[str, str]:
        before = VAR.get()
        VAR.set(f"job{i}")
        for _ in range(i % 3):
            await anyio.lowlevel.checkpoint()
        return before, VAR.get()

    results, error = await run_all([functools.partial(job, i) for i in range(8)])
    assert error is None
    assert results == [("unset", f"job{i}") for i in range(8)]
    assert VAR.get() == "unset"
    assert await run_one(lambda: job(1)) == ("unset", "job1")
    assert VAR.get() == "unset"


# -- suspending nodes with cancel scopes ------------------------------------------------------


async def busy(name: str, rounds: int) -> list[str]:
    """Suspend many times, through every kind of cancel scope, and a task group."""
    trail: list[str] = []
    for _ in range(rounds):
        await anyio.lowlevel.checkpoint()
    with anyio.move_on_after(0.001) as scope:
        await anyio.sleep(10)
    trail.append(f"moved_on={scope.cancelled_caught}")
    with pytest.raises(TimeoutError):
        with anyio.fail_after(0.001):
            await anyio.sleep(10)
    trail.append("timed_out")
    with anyio.fail_after(10):
        await anyio.lowlevel.checkpoint()
    with anyio.CancelScope() as explicit:
        explicit.cancel()
        await anyio.sleep(10)
    trail.append(f"cancelled={explicit.cancelled_caught}")
    with anyio.CancelScope(shield=True):
        await anyio.lowlevel.checkpoint()
    got: list[int] = []
    async with anyio.create_task_group() as tg:
        for i in range(3):
            tg.start_soon(_append_later, got, i)
    trail.append(f"children={sorted(got)}")
    return [f"{name}:{item}" for item in trail]


async def _append_later(out: list[int], i: int) -> None:
    await anyio.lowlevel.checkpoint()
    out.append(i)


EXPECTED_TRAIL = ["moved_on=True", "timed_out", "cancelled=True", "children=[0, 1, 2]"]


async def test_nodes_that_suspend_with_cancel_scopes_inside_work() -> None:
    def node(name: str, rounds: int) -> Any:
        async def run(state: Log) -> dict[str, Any]:
            return {"log": await busy(name, rounds)}

        return run

    graph = StateGraph(Log)
    names = ["a", "b", "c", "d"]
    for rounds, name in enumerate(names):
        graph.add_node(name, node(name, rounds * 2))
        graph.add_edge(START, name)
    result = await graph.compile().ainvoke({})
    assert result["log"] == [f"{n}:{item}" for n in names for item in EXPECTED_TRAIL]


async def test_single_node_step_with_cancel_scopes() -> None:
    async def only(state: Log) -> dict[str, Any]:
        return {"log": await busy("only", 3)}

    graph = StateGraph(Log)
    graph.add_node("only", only)
    graph.add_edge(START, "only")
    result = await graph.compile().ainvoke({})
    assert result["log"] == [f"only:{item}" for item in EXPECTED_TRAIL]


async def test_run_all_with_cancel_scopes_in_every_coroutine() -> None:
    results, error = await run_all([functools.partial(busy, str(i), i) for i in range(5)])
    assert error is None
    assert results == [[f"{i}:{item}" for item in EXPECTED_TRAIL] for i in range(5)]


async def test_a_node_timing_out_inside_its_own_scope_does_not_disturb_siblings() -> None:
    async def patient(state: Log) -> dict[str, Any]:
        for _ in range(5):
            await anyio.lowlevel.checkpoint()
        return {"log": ["patient"]}

    async def impatient(state: Log) -> dict[str, Any]:
        with anyio.move_on_after(0):
            await anyio.sleep(10)
            return {"log": ["never"]}
        return {"log": ["gave up"]}

    graph = StateGraph(Log)
    graph.add_node("impatient", impatient)
    graph.add_node("patient", patient)
    graph.add_edge(START, "impatient")
    graph.add_edge(START, "patient")
    assert await graph.compile().ainvoke({}) == {"log": ["gave up", "patient"]}


# -- order and mixing ---------------------------------------------------------------------


async def test_run_all_returns_results_in_input_order() -> None:
    rng = random.Random(7)
    delays = [rng.random() / 200 for _ in range(20)]

    async def job(i: int) -> int:
        if i % 3:
            await anyio.sleep(delays[i])
        return i

    factories: list[Callable[[], Coroutine[Any, Any, Any]]] = [
        functools.partial(job, i) for i in range(20)
    ]
    results, error = await run_all(factories)
    assert error is None
    assert results == list(range(20))


async def test_run_all_returns_the_first_error_and_skips_the_rest() -> None:
    started: list[int] = []

    async def job(i: int) -> int:
        started.append(i)
        if i == 1:
            raise ValueError("one")
        return i

    _results, error = await run_all([functools.partial(job, i) for i in range(4)])
    assert error is not None
    index, exc = error
    assert index == 1 and isinstance(exc, ValueError)
    assert started == [0, 1]


async def test_run_one_propagates_errors_raised_before_and_after_suspending() -> None:
    async def early() -> None:
        raise KeyError("early")

    async def late() -> None:
        await anyio.lowlevel.checkpoint()
        raise KeyError("late")

    with pytest.raises(KeyError, match="early"):
        await run_one(early)
    with pytest.raises(KeyError, match="late"):
        await run_one(late)


@pytest.mark.parametrize("seed", [0, 1])
async def test_mix_of_suspending_non_suspending_and_sync_nodes(seed: int) -> None:
    rng = random.Random(seed)
    kinds = ["plain", "suspends", "sync", "sleeps"] * 3
    rng.shuffle(kinds)

    def node(i: int, kind: str) -> Any:
        if kind == "sync":
            return lambda state: {"log": [i]}

        async def run(state: Log) -> dict[str, Any]:
            if kind == "suspends":
                await anyio.lowlevel.checkpoint()
            elif kind == "sleeps":
                await anyio.sleep(rng.random() / 200)
            return {"log": [i]}

        return run

    graph = StateGraph(Log)
    for i, kind in enumerate(kinds):
        graph.add_node(f"n{i:02d}", node(i, kind))
        graph.add_edge(START, f"n{i:02d}")
    graph.add_node("fan", node(99, "plain"))
    graph.add_conditional_edges(
        START, lambda s: [Send("fan", {}) for _ in range(3)] + [f"n{i:02d}" for i in range(2)]
    )
    result = await graph.compile().ainvoke({})
    assert result == {"log": [99, 99, 99, *range(len(kinds))]}
