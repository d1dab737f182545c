"""The demo agent on a real OpenAI-compatible endpoint (OPENAI_BASE_URL, no key).

The README's demo uses ChatOpenAI when ``OPENAI_BASE_URL`` or ``OPENAI_API_KEY`` is set.
A uvicorn server on loopback answers like a local Ollama/vLLM would: the agent's first
call (with the tool offered) asks for ``count_words``, the second (after the tool result)
answers, and the summariser's call summarises, each streamed in the Chat Completions
wire format.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from fixtures.loopback import serving
from headwater_server._demo import build_demo
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from headwater.testing.fake import split_tokens

pytestmark = pytest.mark.anyio

ANSWER = "Rivers flow from the hills down to the sea."
SUMMARY = "Rivers run downhill."
REQUESTS: list[dict[str, Any]] = []


def _chunk(model: str, delta: dict[str, Any], finish: str | None = None) -> bytes:
    body = {
        "id": "chatcmpl-demo",
        "object": "chat.completion.chunk",
        "created": 1767225600,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    return f"data: {json.dumps(body)}\n\n".encode()


async def _completions(request: Request) -> StreamingResponse:
    body = await request.json()
    REQUESTS.append(body)
    model, messages = body["model"], body["messages"]

    async def stream() -> AsyncIterator[bytes]:
        yield _chunk(model, {"role": "assistant", "content": ""})
        if messages[0]["content"].startswith("Summarise"):
            for token in split_tokens(SUMMARY):
                yield _chunk(model, {"content": token})
            yield _chunk(model, {}, "stop")
        elif body.get("tools") and messages[-1]["role"] != "tool":
            call = {"index": 0, "id": "call_1", "type": "function"}
            yield _chunk(model, {"tool_calls": [{**call, "function": {"name": "count_words"}}]})
            for piece in ('{"text": "rivers', ' flow"}'):
                yield _chunk(
                    model, {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}
                )
            yield _chunk(model, {}, "tool_calls")
        else:
            for token in split_tokens(ANSWER):
                yield _chunk(model, {"content": token})
            yield _chunk(model, {}, "stop")
        yield b"data: [DONE]\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream")


@pytest.fixture
def openai_compatible(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    app = Starlette(routes=[Route("/v1/chat/completions", _completions, methods=["POST"])])
    REQUESTS.clear()
    with serving(app, log_level="critical") as url:
        monkeypatch.setenv("OPENAI_BASE_URL", f"{url}/v1")
        monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # a local server needs none
        monkeypatch.setenv("HEADWATER_DEMO_MODEL", "openai:llama3.2")
        yield


async def test_the_demo_runs_its_tool_loop_on_an_openai_compatible_server(
    openai_compatible: None,
) -> None:
    app = build_demo("memory:")
    config = {"configurable": {"thread_id": "demo"}}
    tokens: dict[str, str] = {}
    tools: list[Any] = []
    async for event in app.astream_events({"question": "Where do rivers flow?"}, config):
        if event["event"] == "on_chat_model_stream":
            name = event["name"]
            tokens[name] = tokens.get(name, "") + event["data"]["chunk"].text
        elif event["event"] == "on_tool_end":
            tools.append(event["data"]["output"].content)  # the ToolMessage answering the call
    state = (await app.aget_state(config)).values
    assert state["summary"] == SUMMARY
    assert tokens == {"agent": ANSWER, "summarise": SUMMARY}
    assert tools == ["2"]  # count_words("rivers flow")
    assert [r["model"] for r in REQUESTS] == ["llama3.2"] * 3
    assert REQUESTS[0]["tools"][0]["function"]["name"] == "count_words"
    assert REQUESTS[1]["messages"][-1] == {
        "role": "tool",
        "content": "2",
        "tool_call_id": "call_1",
    }
