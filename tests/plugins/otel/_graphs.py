"""Graphs traced by the otel tests, importable by ``headwater run`` in a subprocess too."""

from __future__ import annotations

import operator
from typing import Annotated, Any, TypedDict

from headwater import END, START, StateGraph
from headwater.messages import AIMessage, ToolCall, add_messages
from headwater.retrievers import InMemoryRetriever
from headwater.testing.fake import FakeChatModel
from headwater.tools import ToolNode, tool


class Chat(TypedDict, total=False):
    messages: Annotated[list[Any], add_messages]
    notes: list[str]


@tool
def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


NOTES = InMemoryRetriever.from_texts(
    ["Rivers flow downhill to the sea.", "Two plus three is five."], k=1
)
NOTES.name = "notes"


def build_rag(*, answer: str = "The sum is 5.", cycle: bool = False) -> Any:
    """retrieve (a retriever) -> agent (a model asking for a tool) -> tools -> agent.

    ``cycle``: the model answers run after run (one run at a time), as a server needs."""
    llm = FakeChatModel(
        [
            AIMessage(
                content="", tool_calls=(ToolCall(name="add", args={"a": 2, "b": 3}, id="c1"),)
            ),
            answer,
        ],
        cycle=cycle,
    )

    async def retrieve(state: Chat) -> dict[str, Any]:
        docs = await NOTES.ainvoke(state["messages"][-1].text)
        return {"notes": [d.page_content for d in docs]}

    async def agent(state: Chat) -> dict[str, Any]:
        return {"messages": [await llm.ainvoke(state["messages"])]}

    def route(state: Chat) -> str:
        last = state["messages"][-1]
        return "tools" if getattr(last, "tool_calls", None) else END

    graph = StateGraph(Chat)
    graph.add_node("retrieve", retrieve)
    graph.add_node("agent", agent)
    graph.add_node("tools", ToolNode([add]))
    graph.add_edge(START, "retrieve")
    graph.add_edge("retrieve", "agent")
    graph.add_conditional_edges("agent", route, ["tools", END])
    graph.add_edge("tools", "agent")
    return graph.compile(name="rag")


def build_rag_served() -> Any:
    """:func:`build_rag` for a server or worker: any number of runs, one at a time."""
    return build_rag(cycle=True)


RAG_TREE = [
    "invoke_workflow rag",
    "  retrieve",
    "    retrieval notes",
    "  agent",
    "    chat fake-model",
    "  tools",
    "    execute_tool add",
    "  agent",
    "    chat fake-model",
]
"""The span tree of one run of :func:`build_rag`, children in the order they started."""


class Count(TypedDict, total=False):
    n: Annotated[int, operator.add]


def build_busy(calls: int) -> Any:
    """One node calling a tool ``calls`` times: ``calls + 2`` spans a run."""

    async def work(state: Count) -> dict[str, int]:
        for i in range(calls):
            await add.ainvoke({"a": i, "b": 1})
        return {"n": calls}

    graph = StateGraph(Count)
    graph.add_node("work", work)
    graph.add_edge(START, "work")
    graph.add_edge("work", END)
    return graph.compile(name="busy")
