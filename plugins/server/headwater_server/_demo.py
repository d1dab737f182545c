"""The demo graph behind ``headwater demo`` (and ``./run demo``, which then serves it).

A small agent: a router decides whether the question needs the notes; a retriever finds
them (BM25); an LLM with a tool answers, calling the tool first; a summariser condenses
the answer. State is checkpointed in SQLite (in memory when headwater-sqlite is not
installed). The LLM is a scripted ``FakeChatModel``
unless ``OPENAI_API_KEY`` or ``OPENAI_BASE_URL`` is set (then ``init_chat_model`` with
``HEADWATER_DEMO_MODEL``, default ``openai:gpt-4o-mini``, through headwater-openai).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from typing import Annotated, Any, TypedDict

import anyio
import click

from headwater import END, START, CompiledGraph, StateGraph, get_plugin_manager
from headwater.messages import AIMessage, HumanMessage, SystemMessage, ToolCall, add_messages
from headwater.models import ChatModel, init_chat_model
from headwater.retrievers import Document, InMemoryRetriever
from headwater.runtime import get_stream_writer
from headwater.testing.fake import FakeChatModel
from headwater.tools import ToolNode, tool

NOTES = [
    "Rivers start in mountains and hills, fed by rain, snowmelt and springs.",
    "Most rivers flow into the sea; some end in lakes or dry up in deserts.",
    "A river delta forms where a river drops its sediment as it meets the sea.",
    "Salmon swim upstream to spawn in the rivers where they hatched.",
    "Glaciers carve U-shaped valleys; rivers carve V-shaped ones.",
]

TOKEN_DELAY = 0.03


class AgentState(TypedDict):
    """The demo agent's state."""

    question: str
    route: str
    documents: list[Document]
    messages: Annotated[list[Any], add_messages]
    summary: str


@tool
def count_words(text: str) -> int:
    """Count the words in a text."""
    return len(text.split())


def _models() -> tuple[ChatModel, ChatModel]:
    if os.environ.get("OPENAI_API_KEY") or os.environ.get("OPENAI_BASE_URL"):
        spec = os.environ.get("HEADWATER_DEMO_MODEL", "openai:gpt-4o-mini")
        # A local OpenAI-compatible server (Ollama, vLLM, llama.cpp) checks no key.
        key: dict[str, Any] = {} if os.environ.get("OPENAI_API_KEY") else {"api_key": "local"}
        agent, summariser = (
            init_chat_model(spec, name="agent", **key),
            init_chat_model(spec, name="summarise", **key),
        )
        bind = getattr(agent, "bind_tools", None)
        return (bind([count_words]) if bind else agent), summariser
    agent = FakeChatModel(
        [
            AIMessage(
                content="Let me measure the notes first.",
                tool_calls=(
                    ToolCall(name="count_words", args={"text": " ".join(NOTES[:2])}, id="call_1"),
                ),
            ),
            "Rivers begin in mountains and hills, fed by rain, snowmelt and springs, and most "
            "of them flow downhill into the sea, where many build a delta from their sediment.",
        ],
        token_delay=TOKEN_DELAY,
        cycle=True,
        name="agent",
    )
    summariser = FakeChatModel(
        ["In short: rivers run from the hills to the sea."], token_delay=TOKEN_DELAY, cycle=True
    )
    return agent, summariser


def build_demo(checkpointer: str | None = None) -> CompiledGraph:
    """The demo agent, compiled (SQLite checkpoints in the temp directory by default).

    Example::

        app = build_demo("memory:")
        app.invoke({"question": "Where do rivers flow?"}, {"configurable": {"thread_id": "1"}})
    """
    agent_model, summary_model = _models()
    retriever = InMemoryRetriever.from_texts(NOTES, k=2)

    def router(state: AgentState) -> dict[str, Any]:
        words = set(state["question"].lower().replace("?", "").split())
        route = (
            "retrieve"
            if words & {"river", "rivers", "sea", "delta", "glacier", "salmon"}
            else "agent"
        )
        get_stream_writer()({"route": route})
        return {"route": route, "messages": [HumanMessage(content=state["question"])]}

    async def retrieve(state: AgentState) -> dict[str, Any]:
        documents = await retriever.ainvoke(state["question"])
        return {"documents": documents}

    async def agent(state: AgentState) -> dict[str, Any]:
        notes = "\n".join(d.page_content for d in state.get("documents") or [])
        system = SystemMessage(
            content=f"Answer from these notes:\n{notes}" if notes else "Answer briefly."
        )
        return {"messages": [await agent_model.ainvoke([system, *state["messages"]])]}

    def after_agent(state: AgentState) -> str:
        last = state["messages"][-1]
        return "tools" if isinstance(last, AIMessage) and last.tool_calls else "summarise"

    async def summarise(state: AgentState) -> dict[str, Any]:
        answer = state["messages"][-1].text
        reply = await summary_model.ainvoke(
            [SystemMessage(content="Summarise in one line."), answer]
        )
        return {"summary": reply.text}

    graph = StateGraph(AgentState)
    graph.add_node("router", router)
    graph.add_node("retrieve", retrieve)
    graph.add_node("agent", agent, tags=["llm"])
    graph.add_node("tools", ToolNode([count_words]))
    graph.add_node("summarise", summarise, tags=["llm"])
    graph.add_edge(START, "router")
    graph.add_conditional_edges("router", lambda s: s["route"], ["retrieve", "agent"])
    graph.add_edge("retrieve", "agent")
    graph.add_conditional_edges("agent", after_agent, ["tools", "summarise"])
    graph.add_edge("tools", "agent")
    graph.add_edge("summarise", END)
    if checkpointer is None:
        checkpointer = (
            f"sqlite:///{demo_db_path()}"
            if "sqlite" in get_plugin_manager().registrations("headwater_checkpointers")
            else "memory:"
        )
    return graph.compile(checkpointer=checkpointer, name="demo")


def demo_db_path() -> str:
    """The demo's SQLite file: one per checkout and user, in the temp directory.

    One shared ``headwater-demo.db`` let two checkouts (or users) write the same file:
    another version's schema, or another user's file that cannot be opened.

    Example::

        demo_db_path()  # "/tmp/headwater-demo-3f2a9c1b7d4e.db"
    """
    checkout = os.path.dirname(os.path.abspath(__file__))
    owner = str(os.getuid()) if hasattr(os, "getuid") else os.environ.get("USERNAME", "")
    digest = hashlib.sha256(f"{checkout}\0{owner}".encode()).hexdigest()[:12]
    return os.path.join(tempfile.gettempdir(), f"headwater-demo-{digest}.db")


async def _stream_demo(question: str) -> None:
    app = build_demo()
    config = {"configurable": {"thread_id": f"demo-{time.time_ns()}"}}
    start = time.perf_counter()
    streaming = False

    def stamp() -> str:
        return f"{time.perf_counter() - start:6.2f}s"

    async for event in app.astream_events({"question": question}, config):
        kind, name = event["event"], event["name"]
        if kind == "on_chat_model_stream":
            if not streaming:
                click.echo(f"{stamp()}  {name:<10} ", nl=False)
                streaming = True
            click.echo(event["data"]["chunk"].content, nl=False)
            continue
        if streaming and kind in ("on_chain_end", "on_chat_model_end"):
            click.echo()
            streaming = False
        node = event["metadata"].get("node")
        if kind == "on_chain_end" and node == name:
            click.echo(click.style(f"{stamp()}  ✓ {name}", bold=True))
        elif kind == "on_custom_event":
            click.echo(f"{stamp()}    {name}: {event['data']}")
        elif kind == "on_retriever_end":
            click.echo(f"{stamp()}    retrieved {len(event['data']['documents'])} notes")
        elif kind == "on_tool_end":
            output = event["data"]["output"]  # a ToolMessage: the tool answered a tool call
            click.echo(f"{stamp()}    tool {name} -> {getattr(output, 'content', output)!r}")
        elif kind == "on_chain_end" and not node:
            click.echo(f"\nsummary: {event['data']['output']['summary']}")


def run_demo(question: str = "Where do rivers flow?") -> None:
    """Run the demo agent once, streaming every step and token to the terminal."""
    click.echo("headwater demo: router -> retriever -> LLM with tools -> summariser\n")
    anyio.run(_stream_demo, question)
