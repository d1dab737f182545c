"""Runs without end (issue 13.7): per-run and per-node timeouts.

``config={"timeout": s}`` bounds a whole run, ``add_node(..., timeout=s)`` each attempt of
a node. Either cancels the work and fails with :class:`RunTimeoutError` and an error
event; a sync node's thread cannot be stopped, so it is abandoned: the run ends at once,
the thread's late result and events are dropped. A timed-out thread resumes from its
last finished step. No test here asserts a duration: each guards against hangs only.
"""

from __future__ import annotations

import math
import operator
import tempfile
import threading
from collections.abc import Callable
from typing import Annotated, Any, TypedDict

import anyio
import anyio.lowlevel
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headwater import END, START, RetryPolicy, Send, StateGraph
from headwater.errors import (
    GraphValidationError,
    HeadwaterError,
    InvalidInputError,
    RunTimeoutError,
)


class S(TypedDict):
    n: int
    log: Annotated[list[str], operator.add]


INPUT: dict[str, Any] = {"n": 0, "log": []}


def chain(*nodes: tuple[str, Callable[..., Any], dict[str, Any]], checkpointer: Any = None) -> Any:
    graph = StateGraph(S)
    previous = START
    for name, fn, options in nodes:
        graph.add_node(name, fn, **options)
        graph.add_edge(previous, name)
        previous = name
    graph.add_edge(previous, END)
    return graph.compile(name="g", checkpointer=checkpointer)


async def inc(state: S) -> dict[str, Any]:
    return {"n": state["n"] + 1, "log": ["inc"]}


async def forever(state: S) -> dict[str, Any]:
    await anyio.sleep(math.inf)
    raise AssertionError("unreachable")


def collect_closed(events: list[dict[str, Any]]) -> None:
    opened = {e["run_id"] for e in events if e["event"].endswith("_start")}
    closed = [e["run_id"] for e in events if e["event"].endswith(("_end", "_error"))]
    assert sorted(opened) == sorted(closed)


# -- validation ---------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("bad", [0, -1, math.nan, math.inf, "5", True, [1]])
async def test_a_bad_run_timeout_is_a_clear_error(bad: Any) -> None:
    app = chain(("inc", inc, {}))
    with pytest.raises(InvalidInputError, match=r"config\['timeout'\] must be a positive, finite"):
        await app.ainvoke(INPUT, {"timeout": bad})
    assert (await app.ainvoke(INPUT, {"timeout": None}))["n"] == 1  # None: no timeout


@pytest.mark.parametrize("bad", [0, -0.5, math.nan, math.inf, "5", False])
def test_a_bad_node_timeout_is_a_clear_error(bad: Any) -> None:
    graph = StateGraph(S)
    with pytest.raises(GraphValidationError, match=r"timeout of node 'inc' must be a positive"):
        graph.add_node("inc", inc, timeout=bad)


# -- run timeouts -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_run_timeout_cancels_the_run_with_an_error_event() -> None:
    cancelled: list[str] = []

    async def stuck(state: S) -> dict[str, Any]:
        try:
            await anyio.sleep(math.inf)
        except anyio.get_cancelled_exc_class():
            cancelled.append("stuck")
            raise
        return {}

    app = chain(("inc", inc, {}), ("stuck", stuck, {}))
    events: list[dict[str, Any]] = []
    with anyio.fail_after(20), pytest.raises(RunTimeoutError) as caught:
        async for event in app.astream_events(INPUT, {"timeout": 0.05}):
            events.append(event)
    error = caught.value
    assert error.timeout == 0.05 and error.node is None
    assert isinstance(error, TimeoutError) and isinstance(error, HeadwaterError)
    assert "Run of graph 'g'" in str(error) and "config['timeout']" in str(error)
    assert cancelled == ["stuck"]
    assert events[-1]["event"] == "on_chain_error" and events[-1]["name"] == "g"
    assert events[-1]["data"]["error"] is error
    collect_closed(events)


@pytest.mark.anyio
async def test_a_run_timeout_covers_its_subgraphs_once() -> None:
    inner = chain(("stuck", forever, {}))
    outer = StateGraph(S)
    outer.add_node("sub", inner)
    outer.add_edge(START, "sub")
    outer.add_edge("sub", END)
    with anyio.fail_after(20), pytest.raises(RunTimeoutError) as caught:
        await outer.compile(name="outer").ainvoke(INPUT, {"timeout": 0.05})
    assert caught.value.node is None and "graph 'outer'" in str(caught.value)


def test_sync_invoke_times_out_too() -> None:
    app = chain(("stuck", forever, {}))
    with pytest.raises(RunTimeoutError):
        app.invoke(INPUT, {"timeout": 0.05})


@pytest.mark.anyio
async def test_a_run_that_finishes_in_time_is_untouched() -> None:
    app = chain(("a", inc, {}), ("b", inc, {"timeout": 30}))
    assert await app.ainvoke(INPUT, {"timeout": 30}) == {"n": 2, "log": ["inc", "inc"]}


# -- node timeouts ------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_node_timeout_names_the_node_and_fails_the_run() -> None:
    app = chain(("inc", inc, {}), ("stuck", forever, {"timeout": 0.05}))
    events: list[dict[str, Any]] = []
    with anyio.fail_after(20), pytest.raises(RunTimeoutError) as caught:
        async for event in app.astream_events(INPUT):
            events.append(event)
    assert caught.value.node == "stuck" and caught.value.timeout == 0.05
    assert "Node 'stuck'" in str(caught.value)
    errors = [(e["name"], e["data"]["error"]) for e in events if e["event"] == "on_chain_error"]
    assert errors == [("stuck", caught.value), ("g", caught.value)]
    collect_closed(events)


@pytest.mark.anyio
async def test_each_attempt_has_its_own_timeout_and_a_retry_policy_retries_it() -> None:
    attempts: list[int] = []

    async def flaky(state: S) -> dict[str, Any]:
        attempts.append(1)
        if len(attempts) < 3:
            await anyio.sleep(math.inf)
        return {"log": ["flaky"]}

    policy = RetryPolicy(max_attempts=3, initial_interval=0)  # TimeoutError: retried
    app = chain(("flaky", flaky, {"timeout": 0.05, "retry": policy}))
    with anyio.fail_after(20):
        assert (await app.ainvoke(INPUT))["log"] == ["flaky"]
    assert len(attempts) == 3


@pytest.mark.anyio
async def test_a_send_task_times_out_alone_and_cancels_its_siblings() -> None:
    async def work(arg: int) -> dict[str, Any]:
        await anyio.sleep(math.inf if arg == 1 else 0)
        return {"log": [str(arg)]}

    graph = StateGraph(S)
    graph.add_node("fan", inc)
    graph.add_node("work", work, timeout=0.05)
    graph.add_edge(START, "fan")
    graph.add_conditional_edges("fan", lambda s: [Send("work", i) for i in range(3)])
    graph.add_edge("work", END)
    with anyio.fail_after(20), pytest.raises(RunTimeoutError) as caught:
        await graph.compile().ainvoke(INPUT)
    assert caught.value.node == "work"


# -- sync nodes in threads -----------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("where", ["run", "node"])
async def test_a_sync_node_is_abandoned_its_late_result_and_events_dropped(where: str) -> None:
    release = threading.Event()
    finished = threading.Event()

    def stuck(state: S, *, writer: Any) -> dict[str, Any]:
        writer("before")
        release.wait(20)
        writer("late")  # after the timeout: dropped
        finished.set()
        return {"n": 99, "log": ["late"]}

    # Long enough for the thread to write "before" on a loaded machine, short enough to
    # end well before the thread is released.
    options = {"timeout": 0.5} if where == "node" else {}
    config: dict[str, Any] = {"configurable": {"thread_id": "t"}}
    if where == "run":
        config["timeout"] = 0.5
    app = chain(("inc", inc, {}), ("stuck", stuck, options), checkpointer="memory:")
    events: list[dict[str, Any]] = []
    # The run ends while the thread still waits: were it waited for, this would hang.
    with anyio.fail_after(15), pytest.raises(RunTimeoutError):
        async for event in app.astream_events(INPUT, config):
            events.append(event)
    release.set()
    await anyio.to_thread.run_sync(finished.wait, 20)
    await anyio.sleep(0.05)  # let anything the thread emitted reach the loop
    customs = [e["data"] for e in events if e["event"] == "on_custom_event"]
    assert customs == ["before"]
    state = await app.aget_state(config)
    assert state.values == {"n": 1, "log": ["inc"]} and state.next == ("stuck",)
    collect_closed(events)


@pytest.mark.anyio
async def test_an_abandoned_attempt_stays_silent_while_the_retry_runs() -> None:
    release = threading.Event()
    spoke = threading.Event()
    attempts: list[int] = []

    def flaky(state: S, *, writer: Any) -> dict[str, Any]:
        attempts.append(1)
        if len(attempts) == 1:
            release.wait(20)
            writer("from the abandoned attempt")
            spoke.set()
            return {"log": ["first"]}
        release.set()  # let the first attempt go on, and wait until it has spoken
        spoke.wait(20)
        writer("second")
        return {"log": ["second"]}

    policy = RetryPolicy(max_attempts=2, initial_interval=0)
    app = chain(("flaky", flaky, {"timeout": 0.05, "retry": policy}))
    events: list[dict[str, Any]] = []
    with anyio.fail_after(20):
        async for event in app.astream_events(INPUT):
            events.append(event)
    assert [e["data"] for e in events if e["event"] == "on_custom_event"] == ["second"]
    assert events[-1]["data"]["output"]["log"] == ["second"]


@pytest.mark.anyio
async def test_a_sync_tool_in_an_async_node_is_abandoned_too() -> None:
    from headwater.tools import tool

    release = threading.Event()

    @tool
    def lookup(query: str) -> str:
        """A slow lookup."""
        release.wait(20)
        return query

    async def node(state: S) -> dict[str, Any]:
        await lookup.ainvoke({"query": "q"})
        return {}

    app = chain(("node", node, {"timeout": 0.05}))
    try:
        with anyio.fail_after(15), pytest.raises(RunTimeoutError):
            await app.ainvoke(INPUT)
    finally:
        release.set()


# -- resuming a timed-out thread ---------------------------------------------------------


def _backend(name: str, directory: str) -> Any:
    if name == "sqlite":
        return f"sqlite:///{directory}/cp.db"
    return "memory:"


@settings(max_examples=25, deadline=None, database=None)
@given(
    length=st.integers(1, 5),
    stuck_at=st.integers(0, 4),
    parallel=st.booleans(),
    durability=st.sampled_from(["sync", "async"]),
    backend=st.sampled_from(["memory", "sqlite"]),
    how=st.sampled_from(["run", "node"]),
    loop=st.sampled_from(["asyncio", "trio"]),
)
def test_a_timed_out_thread_resumes_to_the_same_final_state(
    length: int,
    stuck_at: int,
    parallel: bool,
    durability: str,
    backend: str,
    how: str,
    loop: str,
) -> None:
    """A chain of ``length`` steps (each with a side branch when ``parallel``); the node of
    step ``stuck_at`` blocks on the first run only, until the timeout cuts it. Resuming
    the thread gives the state an uninterrupted run gives."""
    stuck_at %= length
    blocked = {"first run": True}

    def make(name: str, step: int) -> Callable[..., Any]:
        async def node(state: S) -> dict[str, Any]:
            if step == stuck_at and name.startswith("main") and blocked["first run"]:
                await anyio.sleep(math.inf)
            await anyio.lowlevel.checkpoint()
            return (
                {"n": state["n"] + 1, "log": [name]} if name.startswith("main") else {"log": [name]}
            )

        return node

    def build(checkpointer: Any) -> Any:
        graph = StateGraph(S)
        previous = START
        for step in range(length):
            name = f"main{step}"
            graph.add_node(name, make(name, step), timeout=0.05 if how == "node" else None)
            graph.add_edge(previous, name)
            if parallel:
                side = f"side{step}"
                graph.add_node(side, make(side, step))
                graph.add_edge(previous, side)
                graph.add_edge([name, side], f"join{step}")
                graph.add_node(f"join{step}", make(f"join{step}", step))
                previous = f"join{step}"
            else:
                previous = name
        graph.add_edge(previous, END)
        return graph.compile(name="g", checkpointer=checkpointer)

    async def main() -> None:
        with tempfile.TemporaryDirectory() as directory:
            blocked["first run"] = False
            expected = await build("memory:").ainvoke(
                INPUT, {"configurable": {"thread_id": "reference"}}
            )
            blocked["first run"] = True
            app = build(_backend(backend, directory))
            config: dict[str, Any] = {
                "configurable": {"thread_id": "t"},
                "durability": durability,
            }
            first = dict(config, timeout=0.05) if how == "run" else config
            with anyio.fail_after(20), pytest.raises(RunTimeoutError):
                await app.ainvoke(INPUT, first)
            blocked["first run"] = False
            state = await app.aget_state(config)
            assert state.next  # something is left to do
            final = await app.ainvoke(None, config)
            assert final["n"] == expected["n"] == length
            assert sorted(final["log"]) == sorted(expected["log"])
            if app.checkpointer is not None:
                await app.checkpointer.aclose()

    anyio.run(main, backend=loop)


@pytest.mark.anyio
async def test_an_abandoned_sync_nodes_late_custom_events_are_dropped_on_the_direct_path() -> None:
    """stream_mode="custom" alone hands a thread's events to the stream directly."""
    release = threading.Event()
    finished = threading.Event()

    def stuck(state: S, *, writer: Any) -> dict[str, Any]:
        for i in range(3000):  # several inbox hand-overs
            writer(i)
        release.wait(20)
        writer("late")  # after the timeout: dropped
        finished.set()
        return {"n": 99}

    app = chain(("inc", inc, {}), ("stuck", stuck, {"timeout": 0.5}))
    chunks: list[Any] = []
    with anyio.fail_after(15), pytest.raises(RunTimeoutError):
        async for chunk in app.astream(INPUT, stream_mode="custom"):
            chunks.append(chunk)
    release.set()
    await anyio.to_thread.run_sync(finished.wait, 20)
    await anyio.sleep(0.05)
    assert chunks == list(range(3000))
