"""The LangGraph half of ``run.py --compare langgraph``: the same workloads on LangGraph.

Run by ``run.py`` under an interpreter that has ``langgraph`` installed (never a dependency
of headwater); it imports no headwater and prints ``{"version", "results"}`` as JSON, each
result in the unit ``run.py`` uses for that workload.

    /tmp/lgvenv/bin/python benchmarks/_langgraph.py chain fanout-200 --quick
"""

from __future__ import annotations

import argparse
import importlib.metadata
import itertools
import json
import operator
import sys
import uuid
from typing import Annotated, Any, TypedDict

import anyio
from _timing import measure, stats
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langgraph.config import get_stream_writer
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.types import Send


class Count(TypedDict):
    n: int


class Fan(TypedDict):
    items: Annotated[list[int], operator.add]


async def step(state: Count) -> dict[str, int]:
    return {"n": state["n"] + 1}


async def work(arg: int) -> dict[str, list[int]]:
    return {"items": [arg]}


def chain_graph(n: int, checkpointer: Any = None) -> Any:
    graph = StateGraph(Count)
    names = [f"node_{i}" for i in range(n)]
    for name in names:
        graph.add_node(name, step)
    graph.add_edge(START, names[0])
    for a, b in itertools.pairwise(names):
        graph.add_edge(a, b)
    graph.add_edge(names[-1], END)
    return graph.compile(checkpointer=checkpointer)


def fanout_graph(n: int) -> Any:
    graph = StateGraph(Fan)
    graph.add_node("work", work)
    graph.add_conditional_edges(START, lambda state: [Send("work", i) for i in range(n)], ["work"])
    graph.add_edge("work", END)
    return graph.compile()


def custom_graph(n: int, sync: bool) -> Any:
    async def emit(state: Count) -> dict[str, int]:
        write = get_stream_writer()
        for i in range(n):
            write({"i": i})
        return {"n": n}

    def emit_sync(state: Count) -> dict[str, int]:
        write = get_stream_writer()
        for i in range(n):
            write({"i": i})
        return {"n": n}

    graph = StateGraph(Count)
    graph.add_node("emit", emit_sync if sync else emit)
    graph.add_edge(START, "emit")
    graph.add_edge("emit", END)
    return graph.compile()


class FakeTokens(BaseChatModel):
    """Streams ``t0 ``, ``t1 `` ... one chunk per token, like headwater's FakeChatModel."""

    tokens: int

    @property
    def _llm_type(self) -> str:
        return "fake-tokens"

    def _generate(self, messages: Any, stop: Any = None, **kw: Any) -> ChatResult:
        text = "".join(f"t{i} " for i in range(self.tokens))
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=text))])

    def _stream(self, messages: Any, stop: Any = None, run_manager: Any = None, **kw: Any) -> Any:
        for i in range(self.tokens):
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=f"t{i} "))
            if run_manager:
                run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    async def _astream(
        self, messages: Any, stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> Any:
        for i in range(self.tokens):
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=f"t{i} "))
            if run_manager:
                await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk


class Chat(TypedDict):
    messages: Annotated[list[Any], add_messages]


def token_graph(n: int, sync: bool) -> Any:
    llm = FakeTokens(tokens=n, streaming=True)

    async def talk(state: Chat) -> dict[str, Any]:
        return {"messages": [await llm.ainvoke(state["messages"])]}

    def talk_sync(state: Chat) -> dict[str, Any]:
        return {"messages": [llm.invoke(state["messages"])]}

    graph = StateGraph(Chat)
    graph.add_node("talk", talk_sync if sync else talk)
    graph.add_edge(START, "talk")
    graph.add_edge("talk", END)
    return graph.compile()


async def drain(stream: Any) -> int:
    count = 0
    async for _ in stream:
        count += 1
    return count


def per_unit(seconds: list[float], count: int, unit: str) -> dict[str, float]:
    if unit.startswith("µs"):
        return stats([s / count * 1e6 for s in seconds])
    return stats([count / s for s in seconds])


async def one(name: str, quick: bool) -> tuple[str, dict[str, float]] | None:
    chain_n = 10 if quick else 200
    config = {"recursion_limit": chain_n + 10}
    repeats = 1 if quick else 5
    if name == "chain":
        app = chain_graph(chain_n)
        (t,) = await measure(lambda: app.ainvoke({"n": 0}, config), repeats=repeats)
        return "µs/node", per_unit(t, chain_n, "µs/node")
    if name.startswith("fanout-"):
        nominal = int(name.split("-")[1])
        n = max(5, nominal // 50) if quick else nominal
        app = fanout_graph(n)
        (t,) = await measure(lambda: app.ainvoke({"items": []}), repeats=1 if quick else 3)
        return "µs/task", per_unit(t, n, "µs/task")
    if name in ("updates", "values"):
        app = chain_graph(chain_n)
        (t,) = await measure(
            lambda: drain(app.astream({"n": 0}, config, stream_mode=name)), repeats=repeats
        )
        return "µs/node", per_unit(t, chain_n, "µs/node")
    if name == "events":
        app = chain_graph(chain_n)
        (t,) = await measure(
            lambda: drain(app.astream_events({"n": 0}, config, version="v2")), repeats=repeats
        )
        return "µs/node", per_unit(t, chain_n, "µs/node")
    if name in ("custom", "custom-sync"):
        n = 500 if quick else 50_000
        app = custom_graph(n, sync=name == "custom-sync")
        (t,) = await measure(
            lambda: drain(app.astream({"n": 0}, stream_mode="custom")), repeats=repeats
        )
        return "events/s", per_unit(t, n, "events/s")
    if name.startswith("tokens-") and name != "tokens-memory" and "otel" not in name:
        n = 300 if quick else 20_000
        app = token_graph(n, sync=name.endswith("-sync"))
        if name == "tokens-events":
            run = lambda: drain(app.astream_events({"messages": ["go"]}, version="v2"))  # noqa: E731
        else:
            run = lambda: drain(app.astream({"messages": ["go"]}, stream_mode="messages"))  # noqa: E731
        (t,) = await measure(run, repeats=1 if quick else 3)
        return "tokens/s", per_unit(t, n, "tokens/s")
    if name.startswith("checkpoint-memory-") or name.startswith("checkpoint-sqlite-"):
        return await checkpointed(name, chain_n, config, repeats)
    return None


async def checkpointed(
    name: str, n: int, config: dict[str, Any], repeats: int
) -> tuple[str, dict[str, float]] | None:
    durability = name.rsplit("-", 1)[1]

    async def timed_with(saver: Any) -> dict[str, float]:
        app = chain_graph(n, saver)

        def run() -> Any:
            thread = {**config, "configurable": {"thread_id": uuid.uuid4().hex}}
            return app.ainvoke({"n": 0}, thread, durability=durability)

        (t,) = await measure(run, repeats=repeats)
        return per_unit(t, n, "µs/node")

    if "-memory-" in name:
        from langgraph.checkpoint.memory import InMemorySaver

        return "µs/node", await timed_with(InMemorySaver())
    try:
        from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
    except ImportError:
        return None
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        async with AsyncSqliteSaver.from_conn_string(f"{tmp}/lg.db") as saver:
            return "µs/node", await timed_with(saver)


async def main_async(names: list[str], quick: bool) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name in names:
        print(f"… langgraph {name}", file=sys.stderr, flush=True)
        measured = await one(name, quick)
        if measured is not None:
            unit, values = measured
            results[name] = {"unit": unit, **values}
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("names", nargs="+")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    results = anyio.run(main_async, args.names, args.quick, backend="asyncio")
    version = importlib.metadata.version("langgraph")
    json.dump({"version": version, "results": results}, sys.stdout)


if __name__ == "__main__":
    main()
