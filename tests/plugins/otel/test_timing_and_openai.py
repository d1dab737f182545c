"""Span times are when things happened (lower bounds only: no timing assertion can fail
on a slow machine), and a real adapter's call — the OpenAI SDK against a loopback server
speaking the Chat Completions stream — gets its GenAI attributes from the response."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from opentelemetry.sdk.trace import TracerProvider
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from headwater import END, START, StateGraph
from headwater.testing.fake import FakeChatModel
from tests.fixtures.loopback import serving
from tests.fixtures.otlp import OtlpReceiver
from tests.plugins.otel.test_spans import Chat, one_model_graph, received

PAUSE = 0.05


@pytest.mark.anyio
async def test_span_times_are_when_the_work_happened(
    receiver: tuple[OtlpReceiver, str], provider: TracerProvider
) -> None:
    llm = FakeChatModel(["slow tokens here"], token_delay=PAUSE)

    async def wait_async(state: Chat) -> dict[str, Any]:
        await anyio.sleep(PAUSE)
        return {"messages": [await llm.ainvoke(state["messages"])]}

    def wait_sync(state: Chat) -> dict[str, Any]:  # in a worker thread
        time.sleep(PAUSE)
        return {}

    graph = StateGraph(Chat)
    graph.add_node("wait_async", wait_async)
    graph.add_node("wait_sync", wait_sync)
    graph.add_edge(START, "wait_async")
    graph.add_edge("wait_async", "wait_sync")
    graph.add_edge("wait_sync", END)
    await graph.compile(name="timed").ainvoke({"messages": ["hi"]})
    tree = received(receiver, provider, 4)
    nanos = int(PAUSE * 1e9)
    node, chat = tree.named("wait_async"), tree.named("chat fake-model")
    assert node.end - node.start >= nanos + 3 * nanos  # its own pause, then three tokens
    assert chat.end - chat.start >= 3 * nanos
    assert chat.start - node.start >= nanos  # the model was called after the pause
    assert chat.attributes["gen_ai.response.time_to_first_chunk"] >= PAUSE
    sync = tree.named("wait_sync")
    assert sync.end - sync.start >= nanos
    assert sync.start >= node.end  # the next step started after the first ended
    run = tree.named("invoke_workflow timed")
    assert run.end - run.start >= 5 * nanos


MODEL_SERVED = "gpt-test-2026-01-01"


def _chunk(delta: dict[str, Any], finish: str | None = None) -> str:
    body = {
        "id": "chatcmpl-42",
        "object": "chat.completion.chunk",
        "created": 1767225600,
        "model": MODEL_SERVED,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        "usage": None,
    }
    return f"data: {json.dumps(body)}\n\n"


async def completions(request: Request) -> StreamingResponse:
    await request.json()

    async def body() -> AsyncIterator[bytes]:
        yield _chunk({"role": "assistant", "content": ""}).encode()  # role only: no token
        for token in ("Rivers", " flow", " downhill."):
            yield _chunk({"content": token}).encode()
        yield _chunk({}, finish="stop").encode()
        usage = {
            "id": "chatcmpl-42",
            "object": "chat.completion.chunk",
            "created": 1767225600,
            "model": MODEL_SERVED,
            "choices": [],
            "usage": {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14},
        }
        yield f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode()

    return StreamingResponse(body(), media_type="text/event-stream")


@pytest.mark.anyio
async def test_an_openai_call_has_the_genai_attributes_of_its_response(
    receiver: tuple[OtlpReceiver, str],
    provider: TracerProvider,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from headwater_openai import ChatOpenAI

    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID"):
        monkeypatch.delenv(name, raising=False)
    app = Starlette(routes=[Route("/v1/chat/completions", completions, methods=["POST"])])
    with serving(app, log_level="critical") as url:
        llm = ChatOpenAI(model="gpt-test", api_key="sk-test", base_url=f"{url}/v1", max_retries=0)
        out = await one_model_graph(llm, name="ask").ainvoke({"messages": ["Where?"]})
    assert out["messages"][-1].content == "Rivers flow downhill."
    tree = received(receiver, provider, 3)
    assert tree.render() == ["invoke_workflow ask", "  talk", "    chat gpt-test"]
    chat = tree.named("chat gpt-test")
    assert chat.kind == "CLIENT"
    assert chat.attributes["gen_ai.provider.name"] == "openai"
    assert chat.attributes["gen_ai.request.model"] == "gpt-test"
    assert chat.attributes["gen_ai.response.model"] == MODEL_SERVED
    assert chat.attributes["gen_ai.response.id"] == "chatcmpl-42"
    assert chat.attributes["gen_ai.response.finish_reasons"] == ["stop"]
    assert chat.attributes["gen_ai.usage.input_tokens"] == 11
    assert chat.attributes["gen_ai.usage.output_tokens"] == 3
    assert chat.event("headwater.first_token")
