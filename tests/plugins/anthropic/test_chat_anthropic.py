"""headwater-anthropic against a real local HTTP server speaking the Messages API stream.

The server (Starlette under uvicorn on 127.0.0.1, in a background thread) plays scripted
replies in the exact wire format of ``POST /v1/messages`` with ``stream=True``: named
server-sent events (``event: message_start`` / ``data: {"type": "message_start", ...}``),
then ``content_block_start``, ``ping``, ``content_block_delta`` (``text_delta``,
``input_json_delta``, ``thinking_delta``, ``signature_delta``), ``content_block_stop``,
``message_delta`` (stop reason and output tokens) and ``message_stop``, or an ``error``
event. HTTP errors carry Anthropic's JSON error body. It records every request body and
its headers, so the tests check what the adapter sent as well as what it made of the
answer.

No ``__init__.py`` here: this directory is named ``anthropic``, and as a package it
would shadow the SDK.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Annotated, Any, TypedDict

import anyio
import anyio.to_thread
import pytest
from click.testing import CliRunner
from fixtures.loopback import serving
from fixtures.sse_provider import Event, Failure, Gate, ScriptedProvider, Stream
from headwater_anthropic import DEFAULT_MAX_TOKENS, ChatAnthropic
from starlette.applications import Starlette
from starlette.routing import Route

import headwater
from headwater import END, START, StateGraph
from headwater._cli import cli
from headwater.errors import ChatModelError, InvalidInputError
from headwater.messages import (
    AIMessage,
    AIMessageChunk,
    HumanMessage,
    RemoveMessage,
    SystemMessage,
    ToolCall,
    ToolMessage,
    Usage,
    add_messages,
)
from headwater.models import init_chat_model
from headwater.testing.conformance import ChatModelConformance, Reply
from headwater.tools import ToolNode, tool

pytestmark = pytest.mark.anyio

MODEL = "claude-test"
SERVED_MODEL = "claude-test-20260101"  # what the server says it ran
MESSAGE_ID = "msg_01TestXyz"
REQUEST_ID = "req_011CTest"

# -- the wire format --------------------------------------------------------------------


def message_start(input_tokens: int, **usage: int) -> dict[str, Any]:
    """The first event: the message shell, with the prompt's token count."""
    return {
        "type": "message_start",
        "message": {
            "id": MESSAGE_ID,
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": SERVED_MODEL,
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": input_tokens, "output_tokens": 1, **usage},
        },
    }


def text_start(index: int) -> dict[str, Any]:
    return {
        "type": "content_block_start",
        "index": index,
        "content_block": {"type": "text", "text": ""},
    }


def text_delta(index: int, text: str) -> dict[str, Any]:
    return {
        "type": "content_block_delta",
        "index": index,
        "delta": {"type": "text_delta", "text": text},
    }


def tool_start(index: int, call_id: str, name: str) -> dict[str, Any]:
    return {
        "type": "content_block_start",
        "index": index,
        "content_block": {"type": "tool_use", "id": call_id, "name": name, "input": {}},
    }


def json_delta(index: int, partial: str) -> dict[str, Any]:
    return {
        "type": "content_block_delta",
        "index": index,
        "delta": {"type": "input_json_delta", "partial_json": partial},
    }


def block_stop(index: int) -> dict[str, Any]:
    return {"type": "content_block_stop", "index": index}


def message_delta(stop_reason: str, output_tokens: int) -> dict[str, Any]:
    return {
        "type": "message_delta",
        "delta": {"stop_reason": stop_reason, "stop_sequence": None},
        "usage": {"output_tokens": output_tokens},
    }


def error_event(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}}


def error_body(kind: str, message: str) -> dict[str, Any]:
    """Anthropic's JSON body of an HTTP error."""
    return {"type": "error", "error": {"type": kind, "message": message}, "request_id": REQUEST_ID}


PING = {"type": "ping"}
MESSAGE_STOP = {"type": "message_stop"}


def text(tokens: Sequence[str], *, prompt: int = 9) -> Stream:
    return Stream(
        [
            message_start(prompt),
            text_start(0),
            PING,
            *(text_delta(0, t) for t in tokens),
            block_stop(0),
            message_delta("end_turn", len(tokens)),
            MESSAGE_STOP,
        ]
    )


def tool_calls(*calls: tuple[str, str, str], preface: str = "", prompt: int = 20) -> Stream:
    """Stream ``(id, name, input JSON text)`` calls, each input in three fragments.

    Like the API, an optional text block comes first, and each tool_use block starts
    with an empty ``input`` and an empty ``partial_json``.
    """
    events: list[Event] = [message_start(prompt)]
    index = 0
    if preface:
        events += [text_start(0), PING, text_delta(0, preface), block_stop(0)]
        index = 1
    for offset, (call_id, name, args) in enumerate(calls):
        at = index + offset
        events += [tool_start(at, call_id, name), json_delta(at, "")]
        third = max(1, len(args) // 3)
        for piece in (args[:third], args[third : 2 * third], args[2 * third :]):
            events.append(json_delta(at, piece))
        events.append(block_stop(at))
    events += [message_delta("tool_use", 11), MESSAGE_STOP]
    return Stream(events)


def sse(event: Mapping[str, Any]) -> bytes:
    return f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()


# -- the server -------------------------------------------------------------------------


FakeAnthropic = ScriptedProvider

_SERVER = FakeAnthropic(encode=sse, exhausted=error_body("api_error", "no scripted reply left"))


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    app = Starlette(routes=[Route("/v1/messages", _SERVER.handle, methods=["POST"])])
    with serving(app, log_level="critical") as url:
        yield url  # the API root: the SDK adds /v1/messages


@pytest.fixture
def server(server_url: str, monkeypatch: pytest.MonkeyPatch) -> FakeAnthropic:
    for name in list(os.environ):
        if name.startswith("ANTHROPIC_"):  # keys, base URL, profiles, custom headers
            monkeypatch.delenv(name)
    _SERVER.reset(server_url)
    return _SERVER


def sent_key(headers: Mapping[str, str]) -> str | None:
    """The API key a request carried: SDK 2 sends a bearer token, older ones x-api-key."""
    bearer = headers.get("authorization", "")
    return bearer.removeprefix("Bearer ") if bearer else headers.get("x-api-key")


def llm(server: FakeAnthropic, **kwargs: Any) -> ChatAnthropic:
    options: dict[str, Any] = {"api_key": "sk-ant-test", "base_url": server.url, "max_retries": 0}
    return ChatAnthropic(model=MODEL, **{**options, **kwargs})


# -- graphs -----------------------------------------------------------------------------


class Chat(TypedDict):
    messages: Annotated[list[Any], add_messages]


def chat_graph(model: ChatAnthropic, *, sync: bool) -> Any:
    if sync:

        def chat_node(state: Chat) -> dict[str, Any]:
            return {"messages": [model.invoke(state["messages"])]}

    else:

        async def chat_node(state: Chat) -> dict[str, Any]:  # type: ignore[misc]
            return {"messages": [await model.ainvoke(state["messages"])]}

    graph = StateGraph(Chat)
    graph.add_node("chat_node", chat_node, tags=["llm"])
    graph.add_edge(START, "chat_node")
    graph.add_edge("chat_node", END)
    return graph.compile()


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


ADD_SPEC = {
    "name": "add",
    "input_schema": {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
        "required": ["a", "b"],
    },
    "description": "Add two integers.",
}


def agent_graph(model: ChatAnthropic) -> Any:
    bound = model.bind_tools([add])

    async def agent(state: Chat) -> dict[str, Any]:
        return {"messages": [await bound.ainvoke(state["messages"])]}

    def route(state: Chat) -> str:
        last = state["messages"][-1]
        return "tools" if last.tool_calls or last.invalid_tool_calls else END

    graph = StateGraph(Chat)
    graph.add_node("agent", agent)
    graph.add_node("tools", ToolNode([add]))
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", route, ["tools", END])
    graph.add_edge("tools", "agent")
    return graph.compile()


async def run_events(app: Any, state: Any) -> tuple[list[dict[str, Any]], Exception | None]:
    events: list[dict[str, Any]] = []
    try:
        async for event in app.astream_events(state):
            events.append(event)
    except Exception as exc:
        return events, exc
    return events, None


def of(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e["event"] == kind]


INPUT = {"messages": [SystemMessage(content="Be brief."), HumanMessage(content="Rivers?")]}
TOKENS = ["Rivers", " flow", " to", " the", " sea."]
END_TURN = {
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "model_name": SERVED_MODEL,
    "id": MESSAGE_ID,
}


# -- streaming text through a graph -----------------------------------------------------


@pytest.mark.parametrize("sync", [False, True], ids=["async_node", "sync_node"])
async def test_astream_events_streams_each_token_live_then_the_response(
    server: FakeAnthropic, sync: bool
) -> None:
    gate = Gate()
    reply = text(TOKENS)
    server.script = [Stream([*reply.events[:5], gate, *reply.events[5:]])]
    app = chat_graph(llm(server, temperature=0.2, max_tokens=64), sync=sync)
    events: list[dict[str, Any]] = []
    async for event in app.astream_events(INPUT):
        events.append(event)
        if event["event"] == "on_chat_model_stream":
            gate.opened.set()  # the first tokens arrived while the server held the rest

    streamed = of(events, "on_chat_model_stream")
    assert [e["data"]["chunk"].content for e in streamed if e["data"]["chunk"].content] == TOKENS
    assert all(isinstance(e["data"]["chunk"], AIMessageChunk) for e in streamed)
    assert {e["name"] for e in streamed} == {"chat_node"}  # grouped under the node's name
    start, end = of(events, "on_chat_model_start"), of(events, "on_chat_model_end")
    assert len(start) == len(end) == 1 and not of(events, "on_chat_model_error")
    sent = start[0]["data"]["messages"]
    assert [(type(m), m.text) for m in sent] == [(type(m), m.text) for m in INPUT["messages"]]
    assert start[0]["metadata"]["ls_model_name"] == MODEL
    assert start[0]["metadata"]["ls_provider"] == "anthropic"
    assert "llm" in start[0]["tags"]
    response = end[0]["data"]["response"]
    assert isinstance(response, AIMessage)
    assert response.content == "Rivers flow to the sea."
    # As in LangChain, a reply without an id takes its call's run id (so the messages
    # stream mode can tell it was streamed); the API's message id is metadata.
    assert response.id == end[0]["run_id"]
    assert response.usage == Usage(input_tokens=9, output_tokens=5)
    assert response.response_metadata == END_TURN
    assert events[-1]["event"] == "on_chain_end"
    assert events[-1]["data"]["output"]["messages"][-1].content == "Rivers flow to the sea."

    (body,) = server.requests
    assert body == {
        "model": MODEL,
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "Rivers?"}],
        "system": "Be brief.",
        "stream": True,
        "temperature": 0.2,
    }
    assert sent_key(server.headers[0]) == "sk-ant-test"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d", server.headers[0]["anthropic-version"])


@pytest.mark.parametrize("sync", [False, True], ids=["async_node", "sync_node"])
async def test_messages_stream_mode_yields_the_chunks_with_their_node(
    server: FakeAnthropic, sync: bool
) -> None:
    server.script = [text(TOKENS)]
    app = chat_graph(llm(server), sync=sync)
    pairs = [pair async for pair in app.astream(INPUT, stream_mode="messages")]
    assert "".join(chunk.content for chunk, _ in pairs) == "Rivers flow to the sea."
    assert [chunk.content for chunk, _ in pairs if chunk.content] == TOKENS
    assert {metadata["node"] for _, metadata in pairs} == {"chat_node"}
    assert pairs[-1][0].usage == Usage(input_tokens=9, output_tokens=5)


async def test_direct_astream_without_a_graph(server: FakeAnthropic) -> None:
    server.script = [text(["Hel", "lo"])]
    chunks = [c async for c in llm(server).astream("hi")]
    total = chunks[0]
    for c in chunks[1:]:
        total = total + c
    assert total.to_message().content == "Hello"
    assert server.requests[0]["messages"] == [{"role": "user", "content": "hi"}]
    assert server.requests[0]["max_tokens"] == DEFAULT_MAX_TOKENS == 1024
    assert "system" not in server.requests[0] and "temperature" not in server.requests[0]


async def test_usage_counts_cached_prompt_tokens_and_the_last_output_count(
    server: FakeAnthropic,
) -> None:
    reply = text(["ok"])
    events = list(reply.events)
    events[0] = message_start(
        5, cache_creation_input_tokens=100, cache_read_input_tokens=1000, service_tier=0
    )
    events[-2] = {**message_delta("max_tokens", 7), "delta": {"stop_reason": "max_tokens"}}
    server.script = [Stream(events)]
    reply_message = await llm(server).ainvoke("hi")
    assert reply_message.usage == Usage(input_tokens=1105, output_tokens=7)
    assert reply_message.response_metadata["stop_reason"] == "max_tokens"


async def test_leaving_early_hangs_up_at_once(server: FakeAnthropic) -> None:
    gate = Gate()  # never opened: only hanging up ends this stream before the deadline
    reply = text(TOKENS)
    server.script = [Stream([*reply.events[:4], gate, *reply.events[4:]])]
    async with contextlib.aclosing(llm(server).astream("hi")) as chunks:
        async for chunk in chunks:
            assert chunk.content == "Rivers"
            break
    assert await anyio.to_thread.run_sync(server.hung_up.wait, 10)


async def test_a_cancelled_run_hangs_up_mid_stream(server: FakeAnthropic) -> None:
    gate = Gate()
    reply = text(TOKENS)
    server.script = [Stream([*reply.events[:4], gate, *reply.events[4:]])]
    app = chat_graph(llm(server), sync=True)
    async with app.astream_events(INPUT) as events:
        async for event in events:
            if event["event"] == "on_chat_model_stream":
                break  # leaving the loop cancels the run, and with it the model call
    assert await anyio.to_thread.run_sync(server.hung_up.wait, 10)
    assert not gate.opened.is_set()


def test_sync_invoke_outside_any_event_loop(server: FakeAnthropic) -> None:
    server.script = [text(["Hi"])]
    assert llm(server).invoke("hi").content == "Hi"


# -- tools ------------------------------------------------------------------------------


async def test_tool_loop_with_tool_node(server: FakeAnthropic) -> None:
    server.script = [
        tool_calls(("toolu_01", "add", '{"a": 2, "b": 3}'), preface="I'll add them."),
        text(["The", " sum", " is", " 5."]),
    ]
    events, error = await run_events(agent_graph(llm(server)), {"messages": ["What is 2 + 3?"]})
    assert error is None

    first_call = [e["data"]["chunk"] for e in of(events, "on_chat_model_stream")][:6]
    assert first_call[0].content == "I'll add them."
    fragments = [c.tool_call_chunks[0] for c in first_call[1:5]]
    assert [(f.index, f.id, f.name) for f in fragments] == [
        (1, "toolu_01", "add"),  # the index of the tool_use content block
        (1, None, None),
        (1, None, None),
        (1, None, None),
    ]
    assert "".join(f.args for f in fragments) == '{"a": 2, "b": 3}'
    assert [(e["name"], e["data"]["input"]) for e in of(events, "on_tool_start")] == [
        ("add", {"a": 2, "b": 3})
    ]
    messages = events[-1]["data"]["output"]["messages"]
    assert [type(m).__name__ for m in messages] == [
        "HumanMessage",
        "AIMessage",
        "ToolMessage",
        "AIMessage",
    ]
    asked = messages[1]
    assert asked.content == "I'll add them."
    assert asked.tool_calls == (ToolCall(name="add", args={"a": 2, "b": 3}, id="toolu_01"),)
    assert asked.response_metadata["stop_reason"] == "tool_use"
    assert asked.usage == Usage(input_tokens=20, output_tokens=11)
    assert (messages[2].content, messages[2].tool_call_id, messages[2].status) == (
        "5",
        "toolu_01",
        "success",
    )
    assert messages[3].content == "The sum is 5."

    first, second = server.requests
    assert first["tools"] == [ADD_SPEC]
    assert "tool_choice" not in first
    assert second["messages"] == [
        {"role": "user", "content": "What is 2 + 3?"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "I'll add them."},
                {"type": "tool_use", "id": "toolu_01", "name": "add", "input": {"a": 2, "b": 3}},
            ],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_01", "content": "5"}],
        },
    ]


async def test_parallel_tool_calls_and_tool_choice(server: FakeAnthropic) -> None:
    server.script = [
        tool_calls(("toolu_a", "add", '{"a": 1, "b": 2}'), ("toolu_b", "add", '{"a": 3, "b": 4}'))
    ]
    reply = await llm(server).bind_tools([add], tool_choice="add").ainvoke("sums")
    assert reply.tool_calls == (
        ToolCall(name="add", args={"a": 1, "b": 2}, id="toolu_a"),
        ToolCall(name="add", args={"a": 3, "b": 4}, id="toolu_b"),
    )
    assert reply.content == ""
    assert server.requests[0]["tool_choice"] == {"type": "tool", "name": "add"}
    out = await ToolNode([add])({"messages": [reply]})
    assert [(m.tool_call_id, m.content) for m in out["messages"]] == [
        ("toolu_a", "3"),
        ("toolu_b", "7"),
    ]


@pytest.mark.parametrize(
    ("choice", "parallel", "sent"),
    [
        ("auto", None, {"type": "auto"}),
        ("any", None, {"type": "any"}),
        ("required", None, {"type": "any"}),
        ("none", None, {"type": "none"}),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
        ("add", False, {"type": "tool", "name": "add", "disable_parallel_tool_use": True}),
        ({"type": "any"}, None, {"type": "any"}),
    ],
)
async def test_tool_choice_maps_to_anthropics_shape(
    server: FakeAnthropic, choice: Any, parallel: bool | None, sent: dict[str, Any]
) -> None:
    server.script = [text(["ok"])]
    bound = llm(server).bind_tools([add], tool_choice=choice, parallel_tool_calls=parallel)
    await bound.ainvoke("hi")
    assert server.requests[0]["tool_choice"] == sent


async def test_invalid_tool_call_json_becomes_an_error_tool_message(
    server: FakeAnthropic,
) -> None:
    server.script = [
        tool_calls(("toolu_01", "add", '{"a": 2, "b": ')),
        text(["Sorry,", " retrying."]),
    ]
    events, error = await run_events(agent_graph(llm(server)), {"messages": ["What is 2 + 3?"]})
    assert error is None
    assert not of(events, "on_chat_model_error")
    assert not of(events, "on_tool_start")  # the tool itself never ran
    messages = events[-1]["data"]["output"]["messages"]
    asked, answered = messages[1], messages[2]
    assert asked.tool_calls == ()
    (invalid,) = asked.invalid_tool_calls
    assert (invalid.name, invalid.args, invalid.id) == ("add", '{"a": 2, "b": ', "toolu_01")
    assert isinstance(answered, ToolMessage)
    assert (answered.tool_call_id, answered.status) == ("toolu_01", "error")
    assert "not valid JSON" in answered.text and "'add'" in answered.text
    assert messages[3].content == "Sorry, retrying."
    sent = server.requests[1]["messages"]
    assert sent[1] == {
        "role": "assistant",
        "content": [{"type": "tool_use", "id": "toolu_01", "name": "add", "input": {}}],
    }
    (result,) = sent[2]["content"]
    assert (result["type"], result["tool_use_id"], result["is_error"]) == (
        "tool_result",
        "toolu_01",
        True,
    )
    assert "not valid JSON" in result["content"] and '{"a": 2, "b": ' in result["content"]


async def test_a_tool_without_arguments_and_a_block_without_an_id(server: FakeAnthropic) -> None:
    nameless = {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "tool_use", "name": "now", "input": {}},
    }
    server.script = [
        Stream(
            [message_start(4), nameless, block_stop(0), message_delta("tool_use", 3), MESSAGE_STOP]
        )
    ]
    reply = await llm(server).ainvoke("time?")
    (call,) = reply.tool_calls
    assert (call.name, call.args) == ("now", {})
    assert call.id is not None and call.id.startswith("toolu_")


async def test_thinking_blocks_are_kept_and_sent_back(server: FakeAnthropic) -> None:
    thinking = [
        {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "thinking", "thinking": ""},
        },
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "thinking_delta", "thinking": "I should "},
        },
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "thinking_delta", "thinking": "add."},
        },
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "signature_delta", "signature": "EqQBCgIYAhIM"},
        },
        block_stop(0),
    ]
    calls = tool_calls(("toolu_01", "add", '{"a": 1, "b": 1}')).events
    adjusted = [
        {**e, "index": e["index"] + 1} if isinstance(e, Mapping) and "index" in e else e
        for e in calls[1:]
    ]
    server.script = [Stream([calls[0], *thinking, *adjusted]), text(["2"])]
    model = llm(server, model_kwargs={"thinking": {"type": "adaptive"}})
    events, error = await run_events(agent_graph(model), {"messages": ["1 + 1?"]})
    assert error is None
    streamed = "".join(e["data"]["chunk"].content for e in of(events, "on_chat_model_stream"))
    assert "I should" not in streamed  # thinking is not the answer's text
    asked = events[-1]["data"]["output"]["messages"][1]
    assert asked.tool_calls == (ToolCall(name="add", args={"a": 1, "b": 1}, id="toolu_01"),)
    block = {"type": "thinking", "thinking": "I should add.", "signature": "EqQBCgIYAhIM"}
    assert asked.response_metadata["thinking_blocks"] == [block]
    first, second = server.requests
    assert first["thinking"] == {"type": "adaptive"}
    assert second["messages"][1]["content"] == [
        block,
        {"type": "tool_use", "id": "toolu_01", "name": "add", "input": {"a": 1, "b": 1}},
    ]


# -- what the adapter sends -------------------------------------------------------------


async def test_message_conversion_and_per_call_parameters(server: FakeAnthropic) -> None:
    server.script = [text(["ok"])]
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "x"}}
    history = [
        SystemMessage(content="sys"),
        HumanMessage(content=["look:", image], name="ann"),
        HumanMessage(content="and this"),  # two user turns in a row: merged
        AIMessage(
            content="Adding.",
            tool_calls=(
                ToolCall(name="add", args={"a": 1, "b": 2}, id="toolu_1"),
                ToolCall(name="add", args={"a": 3, "b": 4}, id="toolu_2"),
            ),
        ),
        ToolMessage(content="3", tool_call_id="toolu_1", name="add"),
        ToolMessage(content="boom", tool_call_id="toolu_2", name="add", status="error"),
        SystemMessage(content="Answer in words."),  # joins the top-level system
        AIMessageChunk(content="three"),
        AIMessage(content=""),  # nothing to say: left out
        ("user", "thanks"),
    ]
    model = llm(server, model_kwargs={"top_k": 20, "extra_body": {"custom_field": 1}})
    await model.ainvoke(history, stop_sequences=["\n"], max_tokens=10, temperature=0.5)
    body = server.requests[0]
    assert body["system"] == [
        {"type": "text", "text": "sys"},
        {"type": "text", "text": "Answer in words."},
    ]
    assert body["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "look:"},
                image,
                {"type": "text", "text": "and this"},
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Adding."},
                {"type": "tool_use", "id": "toolu_1", "name": "add", "input": {"a": 1, "b": 2}},
                {"type": "tool_use", "id": "toolu_2", "name": "add", "input": {"a": 3, "b": 4}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "3"},
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_2",
                    "content": "boom",
                    "is_error": True,
                },
            ],
        },
        {"role": "assistant", "content": "three"},
        {"role": "user", "content": "thanks"},
    ]
    assert (body["top_k"], body["custom_field"], body["stop_sequences"]) == (20, 1, ["\n"])
    assert (body["max_tokens"], body["temperature"]) == (10, 0.5)
    assert "tools" not in body


async def test_tool_results_come_first_in_a_merged_user_turn(server: FakeAnthropic) -> None:
    server.script = [text(["ok"])]
    history = [
        HumanMessage(content="add 1 and 2"),
        AIMessage(content="", tool_calls=(ToolCall(name="add", args={"a": 1, "b": 2}, id="t1"),)),
        HumanMessage(content="and hurry"),
        ToolMessage(content=["3"], tool_call_id="t1"),
    ]
    await llm(server).ainvoke(history)
    assert server.requests[0]["messages"][2] == {
        "role": "user",
        "content": [
            {
                "type": "tool_result",
                "tool_use_id": "t1",
                "content": [{"type": "text", "text": "3"}],
            },
            {"type": "text", "text": "and hurry"},
        ],
    }


async def test_per_call_tools_and_tool_choice(server: FakeAnthropic) -> None:
    server.script = [text(["ok"])]
    await llm(server).ainvoke("hi", tools=[add], tool_choice="any")
    sent = server.requests[0]
    assert (sent["tools"], sent["tool_choice"]) == ([ADD_SPEC], {"type": "any"})


async def test_any_valid_event_stream_framing_is_read(server: FakeAnthropic) -> None:
    """CRLF or CR line ends, comments, events split across reads, no space after colons."""
    first = json.dumps(text_delta(0, "Hel")).encode()
    second = json.dumps(text_delta(0, "lo")).encode()
    server.script = [
        Stream(
            [
                b": keep-alive\r\n\r\n",
                sse(message_start(3)),
                sse(text_start(0)),
                b"event: content_block_delta\r\ndata: " + first[:10],
                first[10:] + b"\r",
                b"\n\r\n",
                b"event:content_block_delta\rdata:" + second + b"\r\r",
                sse(block_stop(0)),
                sse(message_delta("end_turn", 2)) + sse(MESSAGE_STOP)[:-2],  # no blank line
            ]
        )
    ]
    reply = await llm(server).ainvoke("hi")
    assert (reply.content, reply.usage) == ("Hello", Usage(input_tokens=3, output_tokens=2))
    assert reply.response_metadata == END_TURN


async def test_unknown_event_and_block_types_are_skipped(server: FakeAnthropic) -> None:
    """The API may add event types; an adapter must not break on them."""
    server.script = [
        Stream(
            [
                message_start(3),
                {"type": "future_event", "detail": 1},
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "future_block"},
                },
                {"type": "content_block_delta", "index": 0, "delta": {"type": "future_delta"}},
                block_stop(0),
                text_start(1),
                text_delta(1, "fine"),
                block_stop(1),
                message_delta("end_turn", 1),
                MESSAGE_STOP,
            ]
        )
    ]
    assert (await llm(server).ainvoke("hi")).content == "fine"


# -- broken streams ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        pytest.param(
            [message_start(3), text_start(0), text_delta(0, "Riv")],
            r"ended before the model finished: 3 event\(s\) but no stop_reason and no "
            r"message_stop",
            id="ends_early",
        ),
        pytest.param(
            [message_start(3), text_start(0), text_delta(0, "Riv"), MESSAGE_STOP],
            r"ended before the model finished: 4 event\(s\) but no stop_reason\.",
            id="message_stop_without_stop_reason",
        ),
        pytest.param(
            [message_start(3), text_start(0), text_delta(0, "Riv"), RuntimeError("crashed")],
            r"The stream from .* broke off: RemoteProtocolError",
            id="connection_dropped",
        ),
        pytest.param(
            [message_start(3), 'event: content_block_delta\ndata: {"type": "content_\n\n'],
            r"malformed stream event \(not JSON: .*\): '\{\"type\": \"content_'",
            id="invalid_json",
        ),
        pytest.param(
            [message_start(3), 'event: message_delta\ndata: ["end_turn"]\n\n'],
            r"malformed stream event \(not a JSON object\)",
            id="not_an_object",
        ),
        pytest.param(
            [message_start(3), 'event: content_block_delta\ndata: {"index": 0}\n\n'],
            r"malformed stream event \(no 'type'\)",
            id="no_type",
        ),
        pytest.param(
            [message_start(3), text_start(0), {"type": "content_block_delta", "index": 0}],
            r"malformed stream event \(a content_block_delta without an integer index and a "
            r"delta\)",
            id="delta_without_delta",
        ),
        pytest.param(
            [message_start(3), text_start(0), json_delta(0, '{"a"')],
            r"malformed stream event \(input_json_delta for block 0, no tool_use\)",
            id="json_delta_for_a_text_block",
        ),
        pytest.param(
            [message_start(3), {"type": "message_start", "message": None}],
            r"malformed stream event \(a message_start without a 'message' object\)",
            id="message_start_without_message",
        ),
        pytest.param(
            ['{"not": "server-sent events"}'],
            r"no stream events at all \(content-type 'text/event-stream.*'\{\"not\"",
            id="not_sse",
        ),
    ],
)
async def test_a_broken_stream_is_a_chat_model_error_and_fires_on_chat_model_error(
    server: FakeAnthropic, events: list[Event], expected: str
) -> None:
    server.script = [Stream(events)]
    seen, error = await run_events(chat_graph(llm(server), sync=False), INPUT)
    assert isinstance(error, ChatModelError)
    assert error.status_code is None
    assert re.search(expected, str(error)), str(error)
    assert "127.0.0.1" in str(error) and repr(MODEL) in str(error)
    (failed,) = of(seen, "on_chat_model_error")
    assert failed["data"]["error"] is error
    assert failed["name"] == "chat_node"
    assert not of(seen, "on_chat_model_end")


@pytest.mark.parametrize(
    ("kind", "message"),
    [("overloaded_error", "Overloaded"), ("api_error", "Internal server error")],
)
async def test_an_error_event_mid_stream_is_a_chat_model_error(
    server: FakeAnthropic, kind: str, message: str
) -> None:
    gate = Gate()
    server.script = [
        Stream(
            [
                message_start(3),
                text_start(0),
                text_delta(0, "Riv"),
                gate,
                error_event(kind, message),
            ]
        )
    ]
    streamed: list[str] = []
    with pytest.raises(ChatModelError) as caught:
        async for chunk in llm(server).astream("hi"):
            streamed.append(chunk.text)
            gate.opened.set()
    assert streamed == ["Riv"]  # the tokens before the error still arrived, live
    assert f"reported an error mid-stream: {kind}: {message}" in str(caught.value)
    assert "127.0.0.1" in str(caught.value)
    assert caught.value.status_code is None
    assert len(server.requests) == 1  # an answer that has begun is never retried


# -- HTTP errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "reason", "kind", "message", "hint"),
    [
        (
            400,
            "Bad Request",
            "invalid_request_error",
            'messages: roles must alternate between "user" and "assistant"',
            "check the messages",
        ),
        (401, "Unauthorized", "authentication_error", "invalid x-api-key", "ANTHROPIC_API_KEY"),
        (403, "Forbidden", "permission_error", "Your API key lacks permission.", "not allowed"),
        (404, "Not Found", "not_found_error", "model: claude-test", "base_url"),
        (
            429,
            "Too Many Requests",
            "rate_limit_error",
            "Number of request tokens has exceeded your per-minute rate limit",
            "Retried 0 time",
        ),
        (500, "Internal Server Error", "api_error", "Internal server error", "try again later"),
        (529, "Overloaded", "overloaded_error", "Overloaded", "overloaded; try again later"),
    ],
)
async def test_http_errors_name_the_status_and_the_providers_message(
    server: FakeAnthropic, status: int, reason: str, kind: str, message: str, hint: str
) -> None:
    server.script = [Failure(status, error_body(kind, message), {"request-id": REQUEST_ID})]
    seen, error = await run_events(chat_graph(llm(server), sync=False), INPUT)
    assert isinstance(error, ChatModelError)
    assert error.status_code == status
    assert f"answered HTTP {status} {reason}: {kind}: {message}" in str(error)
    assert hint in str(error)
    assert f"Request id: {REQUEST_ID}." in str(error)
    assert of(seen, "on_chat_model_error")[0]["data"]["error"] is error
    assert len(server.requests) == 1


async def test_retries_overloaded_then_streams(server: FakeAnthropic) -> None:
    server.script = [
        Failure(529, error_body("overloaded_error", "Overloaded"), {"retry-after-ms": "1"}),
        Failure(500, error_body("api_error", "Internal"), {"retry-after-ms": "1"}),
        text(["fine"]),
    ]
    reply = await llm(server, max_retries=2).ainvoke("hi")
    assert reply.content == "fine"
    assert len(server.requests) == 3
    assert server.requests[0] == server.requests[2]


async def test_sampling_parameters_are_sent_and_a_refusal_explains_the_api_version(
    server: FakeAnthropic,
) -> None:
    refusal = error_body("invalid_request_error", "temperature: Extra inputs are not permitted")
    server.script = [Failure(400, refusal), text(["ok"])]
    model = llm(server, temperature=0.3, model_kwargs={"top_k": 5})
    with pytest.raises(ChatModelError) as caught:
        await model.ainvoke("hi")
    assert (server.requests[0]["temperature"], server.requests[0]["top_k"]) == (0.3, 5)
    assert "refuses temperature, top_k" in str(caught.value)
    assert "'anthropic-version': '2023-06-01'" in str(caught.value)

    old_api = {"extra_headers": {"anthropic-version": "2023-06-01"}, "top_p": 0.9}
    reply = await llm(server, temperature=0, model_kwargs=old_api).ainvoke("hi", top_k=3)
    assert reply.content == "ok"
    assert server.headers[1]["anthropic-version"] == "2023-06-01"
    sent = server.requests[1]
    assert (sent["temperature"], sent["top_p"], sent["top_k"]) == (0, 0.9, 3)


async def test_a_non_json_error_body_is_still_reported(server: FakeAnthropic) -> None:
    server.script = [Failure(502, "upstream connect error")]
    with pytest.raises(ChatModelError, match=r"answered HTTP 502 Bad Gateway: .*upstream") as e:
        await llm(server).ainvoke("hi")
    assert e.value.status_code == 502


async def test_unreachable_server(server: FakeAnthropic) -> None:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        port = sock.getsockname()[1]
        model = llm(server, base_url=f"http://127.0.0.1:{port}")
        with pytest.raises(ChatModelError, match=r"Could not reach .*127\.0\.0\.1:\d+"):
            await model.ainvoke("hi")


# -- configuration ----------------------------------------------------------------------


def test_missing_api_key_names_the_variable_and_the_argument(server: FakeAnthropic) -> None:
    with pytest.raises(InvalidInputError, match=r"ANTHROPIC_API_KEY.*api_key="):
        ChatAnthropic(model=MODEL, base_url=server.url)
    with pytest.raises(InvalidInputError, match="ANTHROPIC_API_KEY"):
        init_chat_model("anthropic:claude-test", base_url=server.url)


async def test_api_key_and_base_url_from_the_environment(
    server: FakeAnthropic, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-from-env")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
    server.script = [text(["ok"])]
    model = ChatAnthropic(model=MODEL)
    assert "sk-ant-from-env" not in repr(model)
    assert repr(model) == f"ChatAnthropic(model='claude-test', base_url='{server.url}')"
    assert (await model.ainvoke("hi")).content == "ok"
    assert sent_key(server.headers[0]) == "sk-ant-from-env"


async def test_init_chat_model_makes_a_chat_anthropic(server: FakeAnthropic) -> None:
    server.script = [text(["made", " by", " init"])]
    model = init_chat_model(
        "anthropic:claude-test",
        base_url=server.url,
        api_key="sk-ant-init",
        temperature=0,
        max_tokens=256,
        name="writer",
    )
    assert isinstance(model, ChatAnthropic)
    assert (model.model, model.name, model.temperature) == ("claude-test", "writer", 0)
    assert (await model.ainvoke("hi")).content == "made by init"
    sent = server.requests[0]
    assert (sent["model"], sent["temperature"], sent["max_tokens"]) == ("claude-test", 0, 256)


def test_the_plugin_is_listed_with_its_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    pm = headwater.create_plugin_manager()
    assert pm.registrations("headwater_chat_models")["anthropic"]("m", api_key="k").model == "m"
    monkeypatch.setenv("HEADWATER_LOAD_PLUGINS", "anthropic")
    result = CliRunner().invoke(cli, ["plugins"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    row = rows["anthropic"]
    assert row["distribution"] == "headwater-anthropic"
    assert row["module"] == "headwater_anthropic"
    assert row["hooks"] == ["headwater_chat_models"]
    assert row["error"] is None


def test_loading_the_plugin_does_not_import_the_sdk() -> None:
    """The anthropic SDK takes seconds to import: a model call (or checking model_kwargs
    against the SDK's parameters) pays for it, loading the plugin or making a model not."""
    code = (
        "import sys, headwater\n"
        "pm = headwater.create_plugin_manager()\n"
        "assert 'httpx2' not in sys.modules, 'loading the plugin imported httpx2'\n"
        "from headwater_anthropic import ChatAnthropic\n"
        "pm.registrations('headwater_chat_models')['anthropic']('m', api_key='k')\n"
        "ChatAnthropic(model='m', api_key='k').bind_tools([len], tool_choice='any')\n"
        "assert 'anthropic' not in sys.modules, 'making a model imported the SDK'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_the_package_ships_py_typed() -> None:
    from importlib.resources import files

    assert files("headwater_anthropic").joinpath("py.typed").is_file()


def test_the_public_names_are_exported_and_documented() -> None:
    import headwater_anthropic

    assert sorted(headwater_anthropic.__all__) == headwater_anthropic.__all__
    for name in headwater_anthropic.__all__:
        assert hasattr(headwater_anthropic, name)
    for obj in (
        headwater_anthropic,
        ChatAnthropic,
        ChatAnthropic.bind_tools,
        headwater_anthropic.headwater_chat_models,
    ):
        assert obj.__doc__ and "Example::" in obj.__doc__, obj


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda: ChatAnthropic(model="", api_key="k"), "needs model="),
        (lambda: ChatAnthropic(model="m", api_key="k", temperature="hot"), "temperature"),
        (lambda: ChatAnthropic(model="m", api_key="k", max_tokens=0), "max_tokens"),
        (lambda: ChatAnthropic(model="m", api_key="k", max_tokens=None), "requires a limit"),
        (lambda: ChatAnthropic(model="m", api_key="k", max_retries=-1), "max_retries"),
        (lambda: ChatAnthropic(model="m", api_key="k", timeout=True), "timeout"),
        (
            lambda: ChatAnthropic(model="m", api_key="k", model_kwargs={"top_kk": 3}),
            r"'top_kk'.*not a Messages API parameter.*Did you mean 'top_k'\?.*"
            r"extra_body=\{'top_kk': \.\.\.\}",
        ),
        (
            lambda: ChatAnthropic(model="m", api_key="k", model_kwargs={"stream": False}),
            "cannot set 'stream': ChatAnthropic always streams",
        ),
        (
            lambda: ChatAnthropic(model="m", api_key="k", model_kwargs={"system": "x"}),
            "cannot set 'system': put instructions in a SystemMessage",
        ),
        (lambda: ChatAnthropic(model="m", api_key="k", model_kwargs=[1]), "must be a mapping"),
        (lambda: ChatAnthropic(model="m", api_key="k").bind_tools([42]), "Cannot bind int"),
        (lambda: ChatAnthropic(model="m", api_key="k").bind_tools(add), "a list of tools"),
        (
            lambda: ChatAnthropic(model="m", api_key="k").bind_tools([add, add]),
            r"bound twice: \['add'\]",
        ),
        (
            lambda: ChatAnthropic(model="m", api_key="k").bind_tools([add], tool_choice="mul"),
            r"tool_choice='mul'.*bound tools: \['add'\]",
        ),
        (lambda: init_chat_model("anthropic:", api_key="k"), "needs model="),
    ],
)
def test_bad_configuration_is_a_clear_error(make: Any, expected: str) -> None:
    with pytest.raises(InvalidInputError, match=expected):
        make()


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        ({"stream": False}, "cannot set 'stream'"),
        ({"model": "claude-other"}, "cannot set 'model'"),
        ({"stop": ["\n"]}, r"'stop', which is not .* Did you mean 'stop_sequences'\?"),
        ({"temperture": 1}, r"'temperture', which is not .* Did you mean 'temperature'\?"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"tool_choice": "any"}, r"tool_choice='any' needs tools: bind_tools\(\[\.\.\.\]\)"),
        ({"tools": [add], "tool_choice": "mul"}, r"tool_choice='mul' is neither .* \['add'\]"),
    ],
)
async def test_bad_call_parameters_fail_before_any_request(
    server: FakeAnthropic, call: dict[str, Any], expected: str
) -> None:
    with pytest.raises(InvalidInputError, match=expected):
        await llm(server).ainvoke("hi", **call)
    assert server.requests == []


async def test_a_message_the_api_cannot_take_is_rejected(server: FakeAnthropic) -> None:
    with pytest.raises(InvalidInputError, match="cannot send a RemoveMessage"):
        await llm(server).ainvoke([RemoveMessage(id="1")])
    with pytest.raises(InvalidInputError, match="content block of a HumanMessage"):
        await llm(server).ainvoke([HumanMessage(content=[42])])
    assert server.requests == []


async def test_plain_functions_and_tool_specs_bind_as_tools(server: FakeAnthropic) -> None:
    def shout(text: str) -> str:
        """Shout it."""
        return text.upper()

    openai_spec = {
        "type": "function",
        "function": {"name": "noop", "description": "Nothing.", "parameters": {"type": "object"}},
    }
    anthropic_spec = {"name": "echo", "input_schema": {"type": "object"}, "cache_control": {}}
    server_tool = {"type": "web_search_20250305", "name": "web_search", "max_uses": 2}
    server.script = [text(["ok"])]
    bound = llm(server).bind_tools([shout, openai_spec, anthropic_spec, server_tool])
    await bound.ainvoke("hi")
    assert server.requests[0]["tools"] == [
        {
            "name": "shout",
            "input_schema": {
                "type": "object",
                "properties": {"text": {"type": "string"}},
                "required": ["text"],
            },
            "description": "Shout it.",
        },
        {"name": "noop", "description": "Nothing.", "input_schema": {"type": "object"}},
        anthropic_spec,
        server_tool,
    ]


# -- the conformance suite every adapter runs ------------------------------------------


class TestConformance(ChatModelConformance):
    @pytest.fixture(autouse=True)
    def _server(self, server: FakeAnthropic) -> None:
        self.server = server

    def make_model(self, replies: list[Reply]) -> ChatAnthropic:
        for reply in replies:
            if reply.tool_calls:
                self.server.script.append(tool_calls(*reply.tool_calls))
            elif reply.cut_after is not None:
                head = [message_start(9), text_start(0)]
                tokens = [text_delta(0, t) for t in reply.tokens[: reply.cut_after]]
                self.server.script.append(Stream([*head, *tokens, RuntimeError("cut")]))
            else:
                self.server.script.append(text(reply.tokens))
        return llm(self.server)
