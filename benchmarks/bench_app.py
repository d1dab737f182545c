"""The graph and the baseline apps that ``serve.py`` and ``scaleout.py`` put under load.

``tokens`` is a one-node graph whose fake chat model streams ``HEADWATER_BENCH_TOKENS``
tokens (``t0 ``, ``t1 `` …), ``HEADWATER_BENCH_TOKEN_DELAY`` seconds apart (0: as fast as
it can; 0.02: a realistic model); it is a function returning a ``StateGraph`` so that
``headwater serve bench_app:tokens --checkpointer URL`` can compile it with a checkpointer.

``fastapi_app`` is the spec's hand-written FastAPI SSE bridge (streaming-guide.md, "Server-Sent
Events") wrapped around the same graph, with the one fix it needs to run at all:
``json.dumps`` cannot encode a message chunk, so it gets ``default=serde.encode``. Its
``/bare/stream`` route streams the same tokens with no graph at all: the floor.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Annotated, Any, TypedDict

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from headwater import END, START, StateGraph, serde
from headwater.messages import add_messages
from headwater.testing.fake import FakeChatModel

TOKENS = int(os.environ.get("HEADWATER_BENCH_TOKENS", "500"))
TOKEN_DELAY = float(os.environ.get("HEADWATER_BENCH_TOKEN_DELAY", "0"))


class Chat(TypedDict):
    messages: Annotated[list[Any], add_messages]


def tokens() -> StateGraph:
    """A graph with one node streaming ``TOKENS`` tokens from a fake chat model."""
    llm = FakeChatModel([[f"t{i} " for i in range(TOKENS)]], cycle=True, token_delay=TOKEN_DELAY)

    async def talk(state: Chat) -> dict[str, Any]:
        return {"messages": [await llm.ainvoke(state["messages"])]}

    graph = StateGraph(Chat)
    graph.add_node("talk", talk)
    graph.add_edge(START, "talk")
    graph.add_edge("talk", END)
    return graph


graph_app = tokens().compile(name="tokens")
fastapi_app = FastAPI()


@fastapi_app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@fastapi_app.post("/workflow/stream")
async def workflow_sse(request: Request) -> StreamingResponse:
    data = await request.json()
    config = {"configurable": {"thread_id": data["thread_id"]}}

    async def event_generator() -> Any:
        async for event in graph_app.astream_events(data["state"], config, version="v2"):
            # SSE format
            yield f"event: {event['event']}\n"
            yield f"data: {json.dumps(event['data'], default=serde.encode)}\n\n"

    return StreamingResponse(event_generator(), media_type="text/event-stream")


@fastapi_app.post("/bare/stream")
async def bare_sse(request: Request) -> StreamingResponse:
    await request.json()

    async def event_generator() -> Any:
        for i in range(TOKENS):
            if TOKEN_DELAY:
                await asyncio.sleep(TOKEN_DELAY)
            data = json.dumps({"chunk": {"content": f"t{i} "}})
            yield f"event: on_chat_model_stream\ndata: {data}\n\n"

    return StreamingResponse(event_generator(), media_type="text/event-stream")
