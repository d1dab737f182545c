"""The demo graph behind ``headwater demo``: plan, research in parallel, write.

It shows the pieces a user meets first: a typed state with a reducer, a ``Send``
fan-out, a join, sync and async nodes, custom progress events, and ``astream`` with
two stream modes at once, printed as each step completes.
"""

from __future__ import annotations

import operator
import time
from typing import Annotated, Any, TypedDict

import anyio
import click

from headwater._graph import StateGraph
from headwater._pregel import CompiledGraph
from headwater._types import END, START, Send
from headwater.runtime import StreamWriter


class DemoState(TypedDict):
    """The demo's state: a topic, the questions about it, findings and a report."""

    topic: str
    delay: float
    questions: list[str]
    findings: Annotated[list[str], operator.add]
    report: str


_ANGLES = ("where it starts", "what lives in it", "how people use it")


def plan(state: DemoState) -> dict[str, Any]:
    """Sync node (runs in a worker thread): split the topic into questions."""
    time.sleep(state["delay"])
    return {"questions": [f"{state['topic']}: {angle}" for angle in _ANGLES]}


def fan_out(state: DemoState) -> list[Send]:
    """Router: one ``research`` task per question, all in the same superstep."""
    return [Send("research", {"question": q, "delay": state["delay"]}) for q in state["questions"]]


async def research(item: dict[str, Any], *, writer: StreamWriter) -> dict[str, Any]:
    """Async node run once per question; reports progress through the stream writer."""
    for percent in (50, 100):
        await anyio.sleep(item["delay"] / 2)
        writer({"question": item["question"], "progress": percent})
    return {"findings": [f"notes on {item['question']}"]}


async def write(state: DemoState, *, writer: StreamWriter) -> dict[str, Any]:
    """Join point: write the report word by word, streaming each word."""
    words = f"A short report on {state['topic']} from {len(state['findings'])} findings.".split()
    for word in words:
        await anyio.sleep(state["delay"] / len(words))
        writer({"token": word + " "})
    return {"report": " ".join(words)}


def build_demo() -> CompiledGraph:
    """The demo graph, compiled.

    Example::

        app = build_demo()
        app.invoke({"topic": "rivers", "delay": 0.0, "findings": []})["report"]
    """
    graph = StateGraph(DemoState)
    graph.add_node("plan", plan)
    graph.add_node("research", research, tags=["parallel"])
    graph.add_node("write", write)
    graph.add_edge(START, "plan")
    graph.add_conditional_edges("plan", fan_out, ["research"])
    graph.add_edge("research", "write")
    graph.add_edge("write", END)
    return graph.compile(name="demo")


async def _stream_demo(topic: str, delay: float) -> None:
    app = build_demo()
    start = time.perf_counter()
    state = {"topic": topic, "delay": delay, "findings": []}
    streaming_tokens = False
    async for mode, chunk in app.astream(state, stream_mode=["updates", "custom"]):
        elapsed = f"{time.perf_counter() - start:6.2f}s"
        if mode == "custom" and "token" in chunk:
            if not streaming_tokens:
                click.echo(f"{elapsed}  write      ", nl=False)
                streaming_tokens = True
            click.echo(chunk["token"], nl=False)
            continue
        if streaming_tokens:
            click.echo()
            streaming_tokens = False
        if mode == "custom":
            click.echo(f"{elapsed}  research   {chunk['progress']:3d}%  {chunk['question']}")
        else:
            ((node, update),) = chunk.items()
            summary = ", ".join(f"{k}={v!r}" for k, v in (update or {}).items())
            click.echo(click.style(f"{elapsed}  {node:<10} done: {summary}", bold=True))


def run_demo(topic: str = "rivers", delay: float = 0.15) -> None:
    """Run the demo graph and print each step as it completes."""
    click.echo(f"headwater demo: plan -> research x{len(_ANGLES)} (parallel) -> write\n")
    anyio.run(_stream_demo, topic, delay)
