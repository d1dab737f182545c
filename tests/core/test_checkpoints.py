"""Checkpoints, resume and interrupts through the public API (memory: backend)."""

from __future__ import annotations

import itertools
import operator
from typing import Annotated, Any, TypedDict

import anyio
import pytest

import headwater
from headwater import END, START, Command, Send, StateGraph, interrupt
from headwater.checkpoint import MemoryCheckpointer
from headwater.errors import CheckpointError, InvalidInputError, UnknownStreamModeError
from headwater.events import Subscription


class State(TypedDict):
    n: int
    log: Annotated[list[str], operator.add]
    answer: str


def config(thread: str) -> dict[str, Any]:
    return {"configurable": {"thread_id": thread}}


async def inc(state: State) -> dict[str, Any]:
    return {"n": state["n"] + 1, "log": [f"inc{state['n']}"]}


def chain(*names: str, **compile_kw: Any) -> headwater.CompiledGraph:
    graph = StateGraph(State)
    for name in names:
        graph.add_node(name, inc)
    graph.add_edge(START, names[0])
    for a, b in itertools.pairwise(names):
        graph.add_edge(a, b)
    return graph.compile(checkpointer=compile_kw.pop("checkpointer", "memory:"), **compile_kw)


@pytest.mark.anyio
async def test_history_records_every_step_and_what_runs_next() -> None:
    app = chain("a", "b", "c")
    final = await app.ainvoke({"n": 0, "log": []}, config("t"))
    assert final == {"n": 3, "log": ["inc0", "inc1", "inc2"]}
    history = await app.aget_state_history(config("t"))
    assert [(h.metadata["source"], h.metadata["step"], h.next) for h in history] == [
        ("loop", 3, ()),
        ("loop", 2, ("c",)),
        ("loop", 1, ("b",)),
        ("input", 0, ("a",)),
    ]
    assert history[1].values == {"n": 2, "log": ["inc0", "inc1"]}
    assert history[0].parent_config == history[1].config


@pytest.mark.anyio
async def test_get_state_at_a_checkpoint_id_and_limits() -> None:
    app = chain("a", "b")
    await app.ainvoke({"n": 0, "log": []}, config("t"))
    history = await app.aget_state_history(config("t"))
    middle = await app.aget_state(history[1].config)
    assert middle.values == {"n": 1, "log": ["inc0"]} and middle.next == ("b",)
    assert len(await app.aget_state_history(config("t"), limit=2)) == 2
    empty = await app.aget_state(config("never-used"))
    assert empty.values == {} and empty.next == ()


@pytest.mark.anyio
async def test_new_input_continues_the_thread_through_reducers() -> None:
    app = chain("a")
    await app.ainvoke({"n": 0, "log": ["start"]}, config("t"))
    second = await app.ainvoke({"log": ["again"]}, config("t"))
    assert second == {"n": 2, "log": ["start", "inc0", "again", "inc1"]}


@pytest.mark.anyio
async def test_threads_are_isolated() -> None:
    app = chain("a")
    await app.ainvoke({"n": 10, "log": []}, config("one"))
    await app.ainvoke({"n": 20, "log": []}, config("two"))
    assert (await app.aget_state(config("one"))).values["n"] == 11
    assert (await app.aget_state(config("two"))).values["n"] == 21


@pytest.mark.anyio
async def test_interrupt_before_and_after_pause_and_none_resumes() -> None:
    before = chain("a", "b", "c", interrupt_before=["b"])
    paused = await before.ainvoke({"n": 0, "log": []}, config("t"))
    assert paused["n"] == 1 and [i.node for i in paused["__interrupt__"]] == ["b"]
    assert (await before.aget_state(config("t"))).next == ("b",)
    done = await before.ainvoke(None, config("t"))
    assert done == {"n": 3, "log": ["inc0", "inc1", "inc2"]}

    after = chain("a", "b", "c", interrupt_after=["a", "b"])
    steps = [await after.ainvoke({"n": 0, "log": []}, config("u"))]
    while "__interrupt__" in steps[-1]:
        steps.append(await after.ainvoke(None, config("u")))
    assert [s["n"] for s in steps] == [1, 2, 3]


@pytest.mark.anyio
async def test_with_interrupts_pauses_one_run_and_leaves_the_graph_as_it_was() -> None:
    app = chain("a", "b", "c")
    paused = app.with_interrupts(before=["c"], after=["a"])
    first = await paused.ainvoke({"n": 0, "log": []}, config("t"))
    assert [i.node for i in first["__interrupt__"]] == ["a"]
    second = await paused.ainvoke(None, config("t"))
    assert [i.node for i in second["__interrupt__"]] == ["c"]
    assert await app.ainvoke(None, config("t")) == {"n": 3, "log": ["inc0", "inc1", "inc2"]}
    assert "__interrupt__" not in await app.ainvoke({"n": 0, "log": []}, config("u"))
    every = app.with_interrupts(before="*")
    assert [
        i.node for i in (await every.ainvoke({"n": 0, "log": []}, config("v")))["__interrupt__"]
    ] == ["a"]
    with pytest.raises(InvalidInputError, match="no node 'zz'"):
        app.with_interrupts(before=["zz"])
    with pytest.raises(InvalidInputError, match="list of node names"):
        app.with_interrupts(after="a")


@pytest.mark.anyio
async def test_interrupt_value_reaches_the_stream_and_resume_answers_it() -> None:
    ran: list[str] = []

    def review(state: State) -> dict[str, Any]:
        ran.append("review")
        return {"answer": interrupt({"question": "publish?", "n": state["n"]}), "log": ["review"]}

    async def sibling(state: State) -> dict[str, Any]:
        ran.append("sibling")
        return {"log": ["sibling"]}

    graph = StateGraph(State)
    graph.add_node("review", review)
    graph.add_node("sibling", sibling)
    graph.add_edge(START, "review")
    graph.add_edge(START, "sibling")
    graph.add_edge("review", END)
    app = graph.compile(checkpointer="memory:")
    events = [e async for e in app.astream_events({"n": 7, "log": []}, config("t"))]
    paused = [e for e in events if e["event"] == "on_interrupt"]
    assert len(paused) == 1
    assert paused[0]["name"] == "review"
    assert paused[0]["data"]["value"] == {"question": "publish?", "n": 7}
    snapshot = await app.aget_state(config("t"))
    assert [i.value for i in snapshot.interrupts] == [{"question": "publish?", "n": 7}]
    assert set(snapshot.next) == {"review", "sibling"}

    chunks = [
        c async for c in app.astream(Command(resume="yes"), config("t"), stream_mode="updates")
    ]
    assert chunks == [{"review": {"answer": "yes", "log": ["review"]}}]
    assert sorted(ran) == ["review", "review", "sibling"]  # the finished sibling did not rerun
    final = await app.aget_state(config("t"))
    assert final.values == {"n": 7, "log": ["review", "sibling"], "answer": "yes"}


def asking_graph() -> Any:
    """One node, ``ask``, that pauses on ``interrupt("name?")``."""

    def ask(state: State) -> dict[str, Any]:
        return {"answer": interrupt("name?")}

    graph = StateGraph(State)
    graph.add_node("ask", ask)
    graph.add_edge(START, "ask")
    return graph.compile(checkpointer="memory:")


@pytest.mark.anyio
async def test_updates_mode_reports_the_interrupt() -> None:
    app = asking_graph()
    chunks = [c async for c in app.astream({"n": 0}, config("t"), stream_mode="updates")]
    ((key, value),) = chunks[-1].items()
    assert key == "__interrupt__" and [i.value for i in value] == ["name?"]


@pytest.mark.anyio
async def test_a_paused_node_ends_its_events_and_tasks_report_the_interrupt() -> None:
    app = asking_graph()

    events = [e async for e in app.astream_events({"n": 0}, config("e"))]
    node = [e for e in events if e["name"] == "ask" and e["event"].startswith("on_chain")]
    assert [e["event"] for e in node] == ["on_chain_start", "on_chain_end"]
    end = node[1]["data"]
    assert end["output"] is None and end["interrupt"].value == "name?"
    assert events[-1]["event"] == "on_chain_end" and events[-1]["parent_ids"] == []

    tasks = [c async for c in app.astream({"n": 0}, config("t"), stream_mode="tasks")]
    assert [sorted(c) for c in tasks] == [
        ["id", "input", "name", "triggers"],
        ["error", "id", "interrupts", "name", "result"],
    ]  # no task result for the __interrupt__ summary: it was never a task
    result = tasks[1]
    assert result["name"] == "ask" and result["result"] == {} and result["error"] is None
    assert [i.value for i in result["interrupts"]] == ["name?"]

    updates = [c async for c in app.astream({"n": 0}, config("u"), stream_mode="updates")]
    assert [list(c) for c in updates] == [["__interrupt__"]]  # no {"ask": None} chunk


@pytest.mark.anyio
async def test_update_state_as_node_routes_from_that_node() -> None:
    app = chain("a", "b", interrupt_before=["b"])
    await app.ainvoke({"n": 0, "log": []}, config("t"))
    new_config = await app.aupdate_state(config("t"), {"log": ["manual"]}, as_node="a")
    assert new_config["configurable"]["thread_id"] == "t"
    snap = await app.aget_state(config("t"))
    assert snap.values["log"] == ["inc0", "manual"] and snap.next == ("b",)
    assert snap.metadata["source"] == "update"
    final = await app.ainvoke(None, config("t"))
    assert final["log"] == ["inc0", "manual", "inc1"]


def test_sync_state_api_mirrors_async() -> None:
    app = chain("a")
    app.invoke({"n": 1, "log": []}, config("t"))
    assert app.get_state(config("t")).values == {"n": 2, "log": ["inc1"]}
    app.update_state(config("t"), {"n": 100})
    assert app.get_state(config("t")).values["n"] == 100
    assert len(app.get_state_history(config("t"))) == 3


@pytest.mark.anyio
async def test_checkpoints_stream_mode() -> None:
    app = chain("a", "b")
    chunks = [
        c async for c in app.astream({"n": 0, "log": []}, config("t"), stream_mode="checkpoints")
    ]
    assert [c["metadata"]["step"] for c in chunks] == [0, 1, 2]
    assert [c["next"] for c in chunks] == [["a"], ["b"], []]
    assert chunks[-1]["values"] == {"n": 2, "log": ["inc0", "inc1"]}


@pytest.mark.anyio
async def test_send_tasks_survive_a_checkpoint() -> None:
    class Fan(TypedDict):
        items: Annotated[list[int], operator.add]

    async def square(x: int) -> dict[str, Any]:
        return {"items": [x * x]}

    graph = StateGraph(Fan)
    graph.add_node("square", square)
    graph.add_conditional_edges(START, lambda s: [Send("square", i) for i in range(4)])
    app = graph.compile(checkpointer="memory:", interrupt_before=["square"])
    paused = await app.ainvoke({"items": []}, config("t"))
    assert len(paused["__interrupt__"]) == 4
    assert (await app.ainvoke(None, config("t"))) == {"items": [0, 1, 4, 9]}


# -- bad input --------------------------------------------------------------------------


@pytest.mark.anyio
async def test_resuming_an_empty_thread_fails_before_any_event() -> None:
    seen: list[str] = []

    class Watch:
        @headwater.hookimpl
        def headwater_event_subscribers(self, run: Any) -> list[Subscription]:
            return [Subscription(callback=lambda e: seen.append(e.event))]

    graph = StateGraph(State)
    graph.add_node("a", inc)
    graph.add_edge(START, "a")
    pm = headwater.create_plugin_manager(plugins=[Watch()])
    app = graph.compile(checkpointer="memory:", plugin_manager=pm)
    with pytest.raises(CheckpointError, match="Thread 'empty' has no checkpoint to resume from"):
        await app.ainvoke(None, config("empty"))
    with pytest.raises(CheckpointError):
        async for _ in app.astream_events(None, config("empty")):
            pass
    assert seen == []


@pytest.mark.anyio
async def test_resume_without_checkpointer_or_thread_id_is_explained() -> None:
    plain = chain("a", checkpointer=None)
    with pytest.raises(InvalidInputError, match="has no checkpointer"):
        await plain.ainvoke(None)
    saved = chain("a")
    with pytest.raises(InvalidInputError, match="thread_id"):
        await saved.ainvoke({"n": 0})
    with pytest.raises(CheckpointError, match="has no checkpointer"):
        await plain.aget_state(config("t"))


@pytest.mark.anyio
async def test_bad_resume_commands() -> None:
    app = chain("a")
    await app.ainvoke({"n": 0, "log": []}, config("t"))
    with pytest.raises(InvalidInputError, match="not paused by interrupt"):
        await app.ainvoke(Command(resume="x"), config("t"))
    with pytest.raises(InvalidInputError, match="must carry resume"):
        await app.ainvoke(Command(goto="a"), config("t"))


@pytest.mark.anyio
async def test_interrupt_without_checkpointer_says_what_to_do() -> None:
    def ask(state: State) -> dict[str, Any]:
        return {"answer": interrupt("?")}

    graph = StateGraph(State)
    graph.add_node("ask", ask)
    graph.add_edge(START, "ask")
    with pytest.raises(InvalidInputError, match="needs a checkpointer"):
        await graph.compile().ainvoke({"n": 0})


def test_bad_checkpointer_arguments() -> None:
    graph = StateGraph(State)
    graph.add_node("a", inc)
    graph.add_edge(START, "a")
    with pytest.raises(CheckpointError, match="Did you mean 'memory'"):
        graph.compile(checkpointer="memroy:")
    with pytest.raises(CheckpointError, match="Did you mean 'postgresql'"):
        graph.compile(checkpointer="postgresq://x")
    with pytest.raises(CheckpointError, match="must be a headwater Checkpointer"):
        graph.compile(checkpointer=object())
    with pytest.raises(UnknownStreamModeError, match="no checkpointer"):
        graph.compile().astream({"n": 0}, stream_mode="checkpoints")
    with pytest.raises(InvalidInputError, match="no such node"):
        graph.compile(checkpointer=MemoryCheckpointer()).update_state(
            config("t"), {"n": 1}, as_node="nope"
        )


def test_interrupt_outside_a_run() -> None:
    with pytest.raises(headwater.errors.StreamWriterError, match="outside a running node"):
        interrupt("x")


@pytest.mark.anyio
async def test_many_threads_run_concurrently_on_one_memory_checkpointer() -> None:
    app = chain("a", "b")
    results: dict[int, Any] = {}

    async def one(i: int) -> None:
        results[i] = await app.ainvoke({"n": i, "log": []}, config(f"t{i}"))

    async with anyio.create_task_group() as tg:
        for i in range(50):
            tg.start_soon(one, i)
    assert all(results[i]["n"] == i + 2 for i in range(50))


@pytest.mark.anyio
async def test_async_durability_flushes_in_order_and_keeps_errors_and_interrupts() -> None:
    app = chain("a", "b", "c")
    background = {**config("t"), "durability": "async"}
    assert await app.ainvoke({"n": 0, "log": []}, background) == {
        "n": 3,
        "log": ["inc0", "inc1", "inc2"],
    }
    history = await app.aget_state_history(background)
    assert [h.metadata["step"] for h in history] == [3, 2, 1, 0]  # all flushed, in order

    async def boom(state: State) -> dict[str, Any]:
        raise KeyError("original")

    graph = StateGraph(State)
    graph.add_node("a", inc)
    graph.add_node("boom", boom)
    graph.add_edge(START, "a")
    graph.add_edge("a", "boom")
    failing = graph.compile(checkpointer="memory:")
    with pytest.raises(KeyError, match="original"):  # the original type, no ExceptionGroup
        await failing.ainvoke({"n": 0, "log": []}, {**config("f"), "durability": "async"})
    state = await failing.aget_state({"configurable": {"thread_id": "f"}})
    assert state.values["n"] == 1 and state.next == ("boom",)  # flushed before raising

    def ask(state: State) -> dict[str, Any]:
        return {"answer": interrupt("ok?")}

    paused_graph = StateGraph(State)
    paused_graph.add_node("ask", ask)
    paused_graph.add_edge(START, "ask")
    asking = paused_graph.compile(checkpointer="memory:")
    cfg = {"configurable": {"thread_id": "i"}, "durability": "async"}
    assert "__interrupt__" in await asking.ainvoke({"n": 0}, cfg)
    assert (await asking.ainvoke(Command(resume="yes"), cfg))["answer"] == "yes"


def test_bad_durability_is_named() -> None:
    with pytest.raises(InvalidInputError, match="durability"):
        chain("a").invoke({"n": 0}, {**config("t"), "durability": "eventually"})
