"""A consumer that leaves a stream early cancels the run, promptly and completely.

Each way of leaving — ``break``, ``aclose()``, an exception in the loop body, the
consuming task being cancelled, the end of an ``async with`` block — must cancel the
node that is running (it sees the cancellation in its ``except``/``finally``), start no
further node, and leave no task behind. A sync node in a worker thread cannot be
interrupted: it finishes its current call, and nothing starts after it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypedDict

import anyio
import anyio.lowlevel
import pytest
import sniffio

import headwater
from headwater import END, START, StateGraph

pytestmark = pytest.mark.anyio


class S(TypedDict):
    n: int


INPUT = {"n": 0}


def live_tasks() -> set[Any]:
    """Every task of the event loop but the current one (asyncio or trio)."""
    if sniffio.current_async_library() == "trio":
        import trio

        found: set[Any] = set()
        todo = [trio.lowlevel.current_root_task()]
        while todo:
            task = todo.pop()
            found.add(task)
            for nursery in task.child_nurseries:
                todo.extend(nursery.child_tasks)
        return found - {trio.lowlevel.current_task()}
    import asyncio

    return set(asyncio.all_tasks()) - {asyncio.current_task()}


async def wait_for(condition: Callable[[], bool], what: str) -> None:
    """Let the loop run until ``condition()`` holds (a guard against hangs, not a timing test)."""
    with anyio.fail_after(10):
        while not condition():  # noqa: ASYNC110 - any condition, set by anyone
            await anyio.sleep(0.001)
    assert condition(), what


class Probe:
    """What the nodes of :func:`slow_graph` saw."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.cancelled: list[str] = []
        self.ended: list[str] = []


def slow_graph(probe: Probe) -> headwater.CompiledGraph:
    """start → slow (30 s) ‖ sibling (30 s) → after → END; ``start`` writes one chunk."""

    async def start(state: S, *, writer: Any) -> dict[str, Any]:
        probe.started.append("start")
        writer("ready")
        return {"n": 1}

    def sleeper(name: str) -> Callable[[S], Awaitable[None]]:
        async def sleep(state: S) -> None:
            probe.started.append(name)
            try:
                await anyio.sleep(30)
            except anyio.get_cancelled_exc_class():
                probe.cancelled.append(name)
                raise
            finally:
                probe.ended.append(name)

        return sleep

    async def after(state: S) -> None:
        probe.started.append("after")

    g = StateGraph(S)
    g.add_node("start", start)
    g.add_node("slow", sleeper("slow"))
    g.add_node("sibling", sleeper("sibling"))
    g.add_node("after", after)
    g.add_edge(START, "start")
    g.add_edge("start", "slow")
    g.add_edge("start", "sibling")
    g.add_edge(["slow", "sibling"], "after")
    g.add_edge("after", END)
    return g.compile()


Open = Callable[[], Any]
"""Opens a stream of the graph whose first item is the ``"ready"`` chunk (or its event)."""


def ready(item: Any) -> bool:
    return item == "ready" or (isinstance(item, dict) and item.get("data") == "ready")


async def first_chunk_then_wait(stream: Any, probe: Probe) -> None:
    """Receive the first chunk and wait until both sleepers are asleep."""
    assert ready(await stream.__anext__())
    await wait_for(lambda: len(probe.started) == 3, "the sleepers started")


async def leave_by_break(opener: Open, probe: Probe) -> None:
    async for chunk in opener():
        assert ready(chunk)
        await wait_for(lambda: len(probe.started) == 3, "the sleepers started")
        break


async def leave_by_aclose(opener: Open, probe: Probe) -> None:
    stream = opener()
    await first_chunk_then_wait(stream, probe)
    await stream.aclose()
    assert sorted(probe.ended) == ["sibling", "slow"]  # aclose() waits for the run
    await stream.aclose()  # idempotent
    with pytest.raises(StopAsyncIteration):
        await stream.__anext__()


async def leave_by_exception(opener: Open, probe: Probe) -> None:
    class Stop(Exception):
        pass

    with pytest.raises(Stop):
        async for _ in opener():
            await wait_for(lambda: len(probe.started) == 3, "the sleepers started")
            raise Stop


async def leave_by_timeout(opener: Open, probe: Probe) -> None:
    chunks = []
    with anyio.move_on_after(0.2) as scope:
        async for chunk in opener():
            chunks.append(chunk)  # then waits for the next one until the deadline
    assert scope.cancelled_caught
    assert len(chunks) == 1 and ready(chunks[0])


async def leave_by_task_cancelled(opener: Open, probe: Probe) -> None:
    got: list[Any] = []

    async def consume() -> None:
        async for chunk in opener():
            got.append(chunk)

    async with anyio.create_task_group() as tg:
        tg.start_soon(consume)
        await wait_for(lambda: len(probe.started) == 3 and len(got) == 1, "consuming")
        tg.cancel_scope.cancel()
    assert ready(got[0])


async def leave_async_with(opener: Open, probe: Probe) -> None:
    async with opener() as stream:
        await first_chunk_then_wait(stream, probe)
    assert sorted(probe.ended) == ["sibling", "slow"]  # the exit waited for the run


async def leave_async_with_by_exception(opener: Open, probe: Probe) -> None:
    with pytest.raises(KeyError):
        async with opener() as stream:
            await first_chunk_then_wait(stream, probe)
            raise KeyError("consumer failed")
    assert sorted(probe.ended) == ["sibling", "slow"]


LEAVES = [
    leave_by_break,
    leave_by_aclose,
    leave_by_exception,
    leave_by_timeout,
    leave_by_task_cancelled,
    leave_async_with,
    leave_async_with_by_exception,
]


@pytest.mark.parametrize("api", ["astream", "astream_events"])
@pytest.mark.parametrize("leave", LEAVES, ids=lambda f: f.__name__)
async def test_leaving_early_cancels_the_run(
    leave: Callable[[Open, Probe], Awaitable[None]], api: str
) -> None:
    before = live_tasks()
    probe = Probe()
    app = slow_graph(probe)
    if api == "astream":
        opener: Open = lambda: app.astream(INPUT, stream_mode="custom")  # noqa: E731
    else:
        opener = lambda: app.astream_events(INPUT, include_types=["on_custom_event"])  # noqa: E731
    with anyio.fail_after(10):  # the sleepers would take 30 s if not cancelled
        await leave(opener, probe)
        await wait_for(lambda: len(probe.ended) == 2, "the sleepers ended")
        assert sorted(probe.cancelled) == ["sibling", "slow"]
        await wait_for(lambda: live_tasks() <= before, "no task is left")
    assert sorted(probe.started) == ["sibling", "slow", "start"]  # "after" never started


async def test_a_stream_never_iterated_starts_nothing() -> None:
    probe = Probe()
    before = live_tasks()
    stream = slow_graph(probe).astream(INPUT)
    await stream.aclose()
    del stream
    async with slow_graph(probe).astream(INPUT):
        pass
    stream = slow_graph(probe).astream(INPUT)
    del stream  # dropped without a word: nothing was started, nothing leaks
    await anyio.lowlevel.checkpoint()
    assert probe.started == []
    assert live_tasks() <= before


async def test_a_finished_stream_leaves_nothing_and_closes_quietly() -> None:
    def quick(state: S) -> dict[str, Any]:
        return {"n": state["n"] + 1}

    g = StateGraph(S)
    g.add_node("quick", quick)  # sync: runs in a worker thread
    g.add_edge(START, "quick")
    g.add_edge("quick", END)
    before = live_tasks()
    stream = g.compile().astream(INPUT, stream_mode="updates")
    assert [c async for c in stream] == [{"quick": {"n": 1}}]
    await stream.aclose()
    with pytest.raises(StopAsyncIteration):
        await stream.__anext__()
    await wait_for(lambda: live_tasks() <= before, "no task is left")


# -- sync nodes in worker threads --------------------------------------------------------


class ThreadProbe:
    def __init__(self) -> None:
        self.release = threading.Event()
        self.events: list[str] = []


def thread_graph(probe: ThreadProbe) -> headwater.CompiledGraph:
    """blocker (sync, in a thread; waits to be released) → after (async) → later (sync)."""

    def blocker(state: S) -> dict[str, Any]:
        headwater.get_stream_writer()("ready")
        probe.events.append("blocker waiting")
        probe.release.wait(10)
        headwater.get_stream_writer()("written after the consumer left")
        probe.events.append("blocker returned")
        return {"n": 1}

    async def after(state: S) -> None:
        probe.events.append("after ran")

    def later(state: S) -> None:
        probe.events.append("later ran")

    g = StateGraph(S)
    g.add_node("blocker", blocker)
    g.add_node("after", after)
    g.add_node("later", later)
    g.add_edge(START, "blocker")
    g.add_edge("blocker", "after")
    g.add_edge("after", "later")
    g.add_edge("later", END)
    return g.compile()


@pytest.mark.parametrize("how", ["break", "aclose", "timeout"])
async def test_a_sync_node_finishes_its_call_and_nothing_starts_after_it(how: str) -> None:
    probe = ThreadProbe()
    before = live_tasks()
    app = thread_graph(probe)
    with anyio.fail_after(10):
        if how == "break":
            async for chunk in app.astream(INPUT, stream_mode="custom"):
                assert chunk == "ready"
                break
            probe.release.set()
        elif how == "aclose":
            stream = app.astream(INPUT, stream_mode="custom")
            assert await stream.__anext__() == "ready"
            async with anyio.create_task_group() as tg:
                tg.start_soon(stream.aclose)  # waits for the thread to return
                await wait_for(lambda: "blocker waiting" in probe.events, "blocking")
                probe.release.set()
            assert "blocker returned" in probe.events  # aclose() waited for it
        else:
            with anyio.move_on_after(0.2):
                async for chunk in app.astream(INPUT, stream_mode="custom"):
                    assert chunk == "ready"
            probe.release.set()
        await wait_for(lambda: "blocker returned" in probe.events, "the thread returned")
        await wait_for(lambda: live_tasks() <= before, "no task is left")
    assert probe.events == ["blocker waiting", "blocker returned"]


async def test_ainvoke_cancelled_during_a_thread_starts_no_further_node() -> None:
    probe = ThreadProbe()
    app = thread_graph(probe)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(app.ainvoke, INPUT)
            await wait_for(lambda: "blocker waiting" in probe.events, "blocking")
            tg.cancel_scope.cancel()
            probe.release.set()
    assert probe.events == ["blocker waiting", "blocker returned"]


def test_sync_stream_closed_early_cancels_and_waits() -> None:
    probe = Probe()
    iterator = slow_graph(probe).stream(INPUT, stream_mode="custom")
    assert next(iterator) == "ready"
    deadline = time.monotonic() + 10  # a guard against hangs, not a timing assertion
    while len(probe.started) < 3 and time.monotonic() < deadline:
        time.sleep(0.001)
    iterator.close()  # type: ignore[attr-defined]
    # close() returned after the run ended: the sleepers were cancelled, "after" never ran
    assert sorted(probe.ended) == sorted(probe.cancelled) == ["sibling", "slow"]
    assert sorted(probe.started) == ["sibling", "slow", "start"]


def test_sync_stream_dropped_in_a_for_loop_cancels_the_run() -> None:
    probe = Probe()
    for chunk in slow_graph(probe).stream(INPUT, stream_mode="custom"):
        assert chunk == "ready"
        break  # the generator is closed as it is dropped
    assert "after" not in probe.started
    assert sorted(probe.ended) == sorted(probe.cancelled)
