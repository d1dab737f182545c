"""Subgraph runs share their root run's subscribers and plugins; run_end always runs."""

from __future__ import annotations

from collections import Counter
from typing import Any, TypedDict

import pytest

import headwater
from headwater import START, StateGraph
from headwater.events import Event, Subscription


class State(TypedDict):
    n: int


async def inc(state: State) -> dict[str, Any]:
    return {"n": state["n"] + 1}


def nested(pm: Any = None) -> headwater.CompiledGraph:
    inner = StateGraph(State)
    inner.add_node("inner_node", inc)
    inner.add_edge(START, "inner_node")
    outer = StateGraph(State)
    outer.add_node("sub", inner.compile(name="inner"))  # compiled without a plugin manager
    outer.add_edge(START, "sub")
    return outer.compile(name="outer", plugin_manager=pm)


@pytest.mark.anyio
async def test_plugin_subscribers_see_each_subgraph_event_once_and_wrap_subgraph_nodes() -> None:
    seen: list[Event] = []
    wrapped: list[str] = []
    started: list[str] = []

    class Observer:
        @headwater.hookimpl
        def headwater_event_subscribers(self, run: Any) -> list[Subscription]:
            return [Subscription(callback=seen.append, kinds=frozenset({"on_chain_start"}))]

        @headwater.hookimpl
        def headwater_run_start(self, run: Any) -> None:
            started.append(run.graph_name)

        @headwater.hookimpl
        def headwater_wrap_node(self, task: Any) -> Any:
            async def middleware(call_next: Any, task: Any) -> Any:
                wrapped.append(task.node)
                return await call_next(task)

            return middleware

    app = nested(headwater.create_plugin_manager(autoload=False, plugins=[Observer()]))
    assert await app.ainvoke({"n": 0}) == {"n": 1}
    counts = Counter(e.name for e in seen)
    assert counts == {"outer": 1, "sub": 1, "inner": 1, "inner_node": 1}
    assert started == ["outer", "inner"]  # the subgraph ran on the parent's plugins
    assert wrapped == ["sub", "inner_node"]


@pytest.mark.anyio
async def test_run_end_is_called_when_run_start_fails() -> None:
    ended: list[Any] = []

    class Fails:
        @headwater.hookimpl
        def headwater_run_start(self, run: Any) -> None:
            raise RuntimeError("telemetry is down")

        @headwater.hookimpl
        def headwater_run_end(self, run: Any, error: BaseException | None) -> None:
            ended.append(error)

    app = nested(headwater.create_plugin_manager(autoload=False, plugins=[Fails()]))
    with pytest.raises(RuntimeError, match="telemetry is down"):
        await app.ainvoke({"n": 0})
    assert len(ended) == 1 and isinstance(ended[0], RuntimeError)
