"""Property: resuming after any step gives the same final state as an uninterrupted run."""

from __future__ import annotations

import operator
from typing import Annotated, Any, TypedDict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headwater import END, START, Send, StateGraph
from headwater.checkpoint import MemoryCheckpointer


class State(TypedDict):
    n: int
    log: Annotated[list[str], operator.add]
    total: Annotated[int, operator.add]


def build(width: int, laps: int, joins: bool) -> StateGraph:
    """work -> (fan-out of `width` Sends | side branches a,b joined) -> work ... `laps` times."""

    async def work(state: State) -> dict[str, Any]:
        return {"n": state["n"] + 1, "log": [f"work{state['n']}"]}

    async def item(arg: int) -> dict[str, Any]:
        return {"total": arg, "log": [f"item{arg}"]}

    def side(name: str) -> Any:
        def run(state: State) -> dict[str, Any]:
            return {"log": [f"{name}{state['n']}"], "total": len(name)}

        return run

    def route(state: State) -> Any:
        if state["n"] >= laps:
            return END
        if width:
            return [Send("item", state["n"] * 10 + i) for i in range(width)]
        return ["a", "b"] if joins else "work"

    graph = StateGraph(State)
    graph.add_node("work", work)
    graph.add_node("item", item)
    graph.add_node("a", side("a"))
    graph.add_node("b", side("bb"))
    graph.add_edge(START, "work")
    graph.add_conditional_edges("work", route, ["work", "item", "a", "b", END])
    graph.add_edge("item", "work")
    graph.add_edge(["a", "b"], "work")
    return graph


@settings(max_examples=25, deadline=None)
@given(
    width=st.integers(min_value=0, max_value=4),
    laps=st.integers(min_value=1, max_value=5),
    joins=st.booleans(),
    pause_before=st.booleans(),
    durability=st.sampled_from(["sync", "async"]),
)
def test_pausing_after_every_step_and_resuming_changes_nothing(
    width: int, laps: int, joins: bool, pause_before: bool, durability: str
) -> None:
    graph = build(width, laps, joins)
    start = {"n": 0, "log": [], "total": 0}
    reference = graph.compile().invoke(start, {"recursion_limit": 100})
    nodes = ["work", "item", "a", "b"]
    paused = graph.compile(
        checkpointer=MemoryCheckpointer(),
        interrupt_before=nodes if pause_before else (),
        interrupt_after=() if pause_before else nodes,
    )
    config = {"configurable": {"thread_id": "t"}, "recursion_limit": 100, "durability": durability}
    result = paused.invoke(start, config)
    resumes = 0
    while "__interrupt__" in result:
        resumes += 1
        assert resumes < 200, "resuming never finished"
        result = paused.invoke(None, config)
    assert result == reference
    if pause_before or laps > 1:  # otherwise the run ends right after its only step
        assert resumes >= 1
    assert paused.get_state(config).values == reference


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_resume_property_holds_on_both_backends(backend: str) -> None:
    import anyio

    graph = build(width=3, laps=3, joins=False)
    start = {"n": 0, "log": [], "total": 0}

    async def main() -> tuple[dict[str, Any], dict[str, Any]]:
        reference = await graph.compile().ainvoke(start)
        app = graph.compile(checkpointer="memory:", interrupt_after=["work", "item"])
        config = {"configurable": {"thread_id": "t"}}
        result = await app.ainvoke(start, config)
        while "__interrupt__" in result:
            result = await app.ainvoke(None, config)
        return reference, result

    reference, result = anyio.run(main, backend=backend)
    assert result == reference
