"""The spec's "Token Streaming" and "Event Types" examples, run as written with ChatOpenAI.

``ChatOpenAI`` comes from ``headwater_openai`` (the only change to the spec's code is that
import) and talks to a real uvicorn server on loopback that streams Chat Completions in
the provider's wire format: ``data: {chat.completion.chunk}`` lines, a usage chunk with
``choices: []``, then ``data: [DONE]``. The reply's words come from the request's last
user message, so each node's stream can be told apart.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Annotated, Any, TypedDict

import pytest
from fixtures.loopback import serving
from headwater_openai import ChatOpenAI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from headwater import END, START, StateGraph
from headwater.messages import add_messages
from headwater.retrievers import InMemoryRetriever
from headwater.testing.fake import split_tokens
from headwater.tools import tool

pytestmark = pytest.mark.anyio

REPLIES = {
    "chat": "Rivers run downhill to the sea.",
    "summarize": "A short summary.",
    "analyze": "A careful analysis of it.",
}


def _reply_for(body: dict[str, Any]) -> str:
    last = body["messages"][-1]["content"]
    return next((text for key, text in REPLIES.items() if key in last), "I do not know.")


async def _completions(request: Request) -> StreamingResponse:
    body = await request.json()
    assert body["stream"] is True
    tokens = split_tokens(_reply_for(body))

    def frame(delta: dict[str, Any], finish: str | None = None) -> bytes:
        chunk = {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 1767225600,
            "model": body["model"],
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        return f"data: {json.dumps(chunk)}\n\n".encode()

    async def stream() -> AsyncIterator[bytes]:
        yield frame({"role": "assistant", "content": ""})
        for token in tokens:
            yield frame({"content": token})
        yield frame({}, "stop")
        usage = {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 1767225600,
            "model": body["model"],
            "choices": [],
            "usage": {"prompt_tokens": 7, "completion_tokens": len(tokens), "total_tokens": 0},
        }
        yield f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode()

    return StreamingResponse(stream(), media_type="text/event-stream")


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    app = Starlette(routes=[Route("/v1/chat/completions", _completions, methods=["POST"])])
    with serving(app, log_level="critical") as url:
        yield f"{url}/v1"


@pytest.fixture(autouse=True)
def openai_env(base_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # The spec's ChatOpenAI(model=..., streaming=True) takes its server and key from here.
    monkeypatch.setenv("OPENAI_BASE_URL", base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")


class State(TypedDict):
    messages: list[Any]


class Chat(TypedDict):
    messages: Annotated[list[Any], add_messages]


def chat_app() -> Any:
    # --- the spec's "Token Streaming" block, import changed only -------------------------
    llm = ChatOpenAI(model="gpt-4", streaming=True)

    def chat_node(state: State) -> dict[str, Any]:
        messages = state["messages"]
        response = llm.invoke(messages)  # Streaming happens automatically
        return {"messages": messages + [response]}  # noqa: RUF005 - as the spec has it

    # --------------------------------------------------------------------------------------
    graph = StateGraph(State)
    graph.add_node("chat_node", chat_node)
    graph.add_edge(START, "chat_node")
    graph.add_edge("chat_node", END)
    return graph.compile()


async def test_token_streaming_prints_each_token_of_a_sync_llm_invoke(
    capsys: pytest.CaptureFixture[str],
) -> None:
    app, state, config = chat_app(), {"messages": [("user", "chat with me")]}, None
    seen = []
    async for event in app.astream_events(state, config, version="v2"):
        if event["event"] == "on_chat_model_stream":
            chunk = event["data"]["chunk"]
            if hasattr(chunk, "content") and chunk.content:
                print(chunk.content, end="", flush=True)
                seen.append(chunk.content)
    assert capsys.readouterr().out == REPLIES["chat"]
    assert seen == split_tokens(REPLIES["chat"])  # token by token, not one final blob


async def test_accumulate_tokens(capsys: pytest.CaptureFixture[str]) -> None:
    app, state, config = chat_app(), {"messages": [("user", "chat")]}, None
    # --- the spec's "Accumulate Tokens" block, as written ---------------------------------
    accumulated = ""

    async for event in app.astream_events(state, config, version="v2"):
        if event["event"] == "on_chat_model_stream":
            chunk = event["data"]["chunk"]
            if chunk.content:
                accumulated += chunk.content
                print(chunk.content, end="", flush=True)

    print(f"\n\nFull response: {accumulated}")
    # --------------------------------------------------------------------------------------
    assert accumulated == REPLIES["chat"]
    assert capsys.readouterr().out.endswith(f"Full response: {REPLIES['chat']}\n")


async def test_multiple_llm_calls_are_keyed_by_node_name() -> None:
    llm = ChatOpenAI(model="gpt-4", streaming=True)

    async def summarize_node(state: Chat) -> dict[str, Any]:
        return {"messages": [await llm.ainvoke([("user", "summarize this")])]}

    def analyze_node(state: Chat) -> dict[str, Any]:  # sync, in parallel with the other
        return {"messages": [llm.invoke([("user", "analyze this")])]}

    graph = StateGraph(Chat)
    graph.add_node("summarize_node", summarize_node)
    graph.add_node("analyze_node", analyze_node)
    graph.add_edge(START, "summarize_node")
    graph.add_edge(START, "analyze_node")
    app, state, config = graph.compile(), {"messages": []}, None

    # --- the spec's "Multiple LLM Calls" block, as written --------------------------------
    llm_outputs = {}

    async for event in app.astream_events(state, config, version="v2"):
        if event["event"] == "on_chat_model_stream":
            node_name = event["name"]

            if node_name not in llm_outputs:
                llm_outputs[node_name] = ""

            chunk = event["data"]["chunk"]
            if chunk.content:
                llm_outputs[node_name] += chunk.content
    # --------------------------------------------------------------------------------------
    assert llm_outputs == {
        "summarize_node": REPLIES["summarize"],
        "analyze_node": REPLIES["analyze"],
    }


async def test_the_match_example_sees_every_event_type_of_the_table() -> None:
    llm = ChatOpenAI(model="gpt-4", streaming=True)
    retriever = InMemoryRetriever.from_texts(["rivers run to the sea", "hills rise"], k=1)

    @tool
    def count_words(text: str) -> int:
        """Count the words of a text."""
        return len(text.split())

    async def research(state: State) -> dict[str, Any]:
        docs = await retriever.ainvoke("rivers")
        words = await count_words.ainvoke({"text": docs[0].page_content})
        reply = await llm.ainvoke([("user", f"chat about {words} words")])
        return {"messages": [reply]}

    def publish(state: State) -> dict[str, Any]:
        raise RuntimeError("the printer is on fire")

    graph = StateGraph(State)
    graph.add_node("research", research)
    graph.add_node("publish", publish)
    graph.add_edge(START, "research")
    graph.add_edge("research", "publish")
    app, state, config = graph.compile(), {"messages": []}, None

    kinds: set[str] = set()
    lines: list[str] = []

    def print(*args: object, end: str = "\n", flush: bool = False) -> None:
        lines.append(" ".join(map(str, args)))  # the spec's block prints: keep what it printed

    with pytest.raises(RuntimeError, match="on fire"):
        async for event in app.astream_events(state, config, version="v2"):
            kinds.add(event["event"])
            # --- the spec's "Example: All Event Types" block, as written -------------------
            match event["event"]:
                case "on_chain_start":
                    print(f"Starting {event['name']}")

                case "on_chain_end":
                    output = event["data"]["output"]
                    print(f"Finished {event['name']}: {output}")

                case "on_chain_error":
                    error = event["data"]["error"]
                    print(f"Error in {event['name']}: {error}")

                case "on_chat_model_stream":
                    chunk = event["data"]["chunk"]
                    print(chunk.content, end="", flush=True)

                case "on_tool_start":
                    tool_name = event["name"]
                    args = event["data"]["input"]
                    print(f"Calling tool {tool_name} with {args}")
            # ------------------------------------------------------------------------------

    table = {
        "on_chain_start",
        "on_chain_end",
        "on_chain_error",
        "on_chat_model_start",
        "on_chat_model_end",
        "on_chat_model_stream",
        "on_tool_start",
        "on_tool_end",
        "on_retriever_start",
        "on_retriever_end",
    }
    assert table <= kinds, f"never seen: {sorted(table - kinds)}"
    assert "Calling tool count_words with {'text': 'rivers run to the sea'}" in lines
    assert "Error in publish: the printer is on fire" in lines
    assert "Starting research" in lines
    assert (
        "".join(line for line in lines if line in split_tokens(REPLIES["chat"]))
        == (REPLIES["chat"])
    )
