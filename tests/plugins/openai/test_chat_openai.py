"""headwater-openai against a real local HTTP server speaking the Chat Completions stream.

The server (Starlette under uvicorn on 127.0.0.1, in a background thread) plays scripted
replies in the exact wire format of ``POST /v1/chat/completions`` with ``stream=True``:
``data: {json}`` events of ``chat.completion.chunk`` objects, a last usage chunk with
``choices: []``, then ``data: [DONE]``. It records every request body, so the tests check
what the adapter sent as well as what it made of the answer.

No ``__init__.py`` here: this directory is named ``openai``, and as a package it would
shadow the SDK.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
from collections.abc import Iterator, Mapping, Sequence
from typing import Annotated, Any, TypedDict

import anyio
import anyio.to_thread
import pytest
from click.testing import CliRunner
from fixtures.loopback import serving
from fixtures.sse_provider import Event, Failure, Gate, ScriptedProvider, Stream
from headwater_openai import ChatOpenAI
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

MODEL = "gpt-test"
SERVED_MODEL = "gpt-test-2026-01-01"  # what the server says it ran, as OpenAI does

# -- the wire format --------------------------------------------------------------------


def chunk(delta: Mapping[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
    """One ``chat.completion.chunk`` (``usage: null`` as with include_usage)."""
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1767225600,
        "model": SERVED_MODEL,
        "system_fingerprint": "fp_test",
        "choices": [{"index": 0, "delta": dict(delta), "logprobs": None, "finish_reason": finish}],
        "usage": None,
        **extra,
    }


def usage_chunk(prompt: int, completion: int) -> dict[str, Any]:
    """The last chunk of a stream with include_usage: no choices, the token counts."""
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1767225600,
        "model": SERVED_MODEL,
        "system_fingerprint": "fp_test",
        "choices": [],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        },
    }


DONE = "data: [DONE]\n\n"


def text(tokens: Sequence[str], *, prompt: int = 9) -> Stream:
    return Stream(
        [
            chunk({"role": "assistant", "content": "", "refusal": None}),
            *(chunk({"content": t}) for t in tokens),
            chunk({}, "stop"),
            usage_chunk(prompt, len(tokens)),
            DONE,
        ]
    )


def tool_calls(*calls: tuple[str, str, str], prompt: int = 20) -> Stream:
    """Stream ``(id, name, arguments JSON text)`` calls, arguments in three fragments each."""
    events: list[Event] = []
    for index, (call_id, name, args) in enumerate(calls):
        head = {"index": index, "id": call_id, "type": "function"}
        first = {**head, "function": {"name": name, "arguments": ""}}
        delta: dict[str, Any] = {"tool_calls": [first]}
        if index == 0:
            delta = {"role": "assistant", "content": None, **delta}
        events.append(chunk(delta))
        third = max(1, len(args) // 3)
        for piece in (args[:third], args[third : 2 * third], args[2 * third :]):
            events.append(
                chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
            )
    events += [chunk({}, "tool_calls"), usage_chunk(prompt, 11), DONE]
    return Stream(events)


# -- the server -------------------------------------------------------------------------


def sse(event: Mapping[str, Any]) -> bytes:
    return f"data: {json.dumps(event)}\n\n".encode()


FakeOpenAI = ScriptedProvider


_SERVER = FakeOpenAI(encode=sse)


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    app = Starlette(routes=[Route("/v1/chat/completions", _SERVER.handle, methods=["POST"])])
    with serving(app, log_level="critical") as url:
        yield f"{url}/v1"


@pytest.fixture
def server(server_url: str, monkeypatch: pytest.MonkeyPatch) -> FakeOpenAI:
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID"):
        monkeypatch.delenv(name, raising=False)
    _SERVER.reset(server_url)
    return _SERVER


def llm(server: FakeOpenAI, **kwargs: Any) -> ChatOpenAI:
    options: dict[str, Any] = {"api_key": "sk-test", "base_url": server.url, "max_retries": 0}
    return ChatOpenAI(model=MODEL, **{**options, **kwargs})


# -- graphs -----------------------------------------------------------------------------


class Chat(TypedDict):
    messages: Annotated[list[Any], add_messages]


def chat_graph(model: ChatOpenAI, *, sync: bool) -> Any:
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


def agent_graph(model: ChatOpenAI) -> Any:
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
SENT_MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Rivers?"},
]
TOKENS = ["Rivers", " flow", " to", " the", " sea."]


# -- streaming text through a graph -----------------------------------------------------


@pytest.mark.parametrize("sync", [False, True], ids=["async_node", "sync_node"])
async def test_astream_events_streams_each_token_live_then_the_response(
    server: FakeOpenAI, sync: bool
) -> None:
    gate = Gate()
    reply = text(TOKENS)
    server.script = [Stream([*reply.events[:3], gate, *reply.events[3:]])]
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
    assert start[0]["metadata"]["ls_provider"] == "openai"
    assert "llm" in start[0]["tags"]
    response = end[0]["data"]["response"]
    assert isinstance(response, AIMessage)
    assert response.content == "Rivers flow to the sea."
    # As in LangChain, a reply without an id takes its call's run id (so the messages
    # stream mode can tell it was streamed); the completion's id is metadata.
    assert response.id == end[0]["run_id"]
    assert response.usage == Usage(input_tokens=9, output_tokens=5)
    assert response.response_metadata == {
        "finish_reason": "stop",
        "model_name": SERVED_MODEL,
        "id": "chatcmpl-1",
        "system_fingerprint": "fp_test",
    }
    assert events[-1]["event"] == "on_chain_end"
    assert events[-1]["data"]["output"]["messages"][-1].content == "Rivers flow to the sea."

    (body,) = server.requests
    assert body == {
        "model": MODEL,
        "messages": SENT_MESSAGES,
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0.2,
        "max_tokens": 64,
    }
    assert server.headers[0]["authorization"] == "Bearer sk-test"


@pytest.mark.parametrize("sync", [False, True], ids=["async_node", "sync_node"])
async def test_messages_stream_mode_yields_the_chunks_with_their_node(
    server: FakeOpenAI, sync: bool
) -> None:
    server.script = [text(TOKENS)]
    app = chat_graph(llm(server), sync=sync)
    pairs = [pair async for pair in app.astream(INPUT, stream_mode="messages")]
    assert "".join(chunk.content for chunk, _ in pairs) == "Rivers flow to the sea."
    assert [chunk.content for chunk, _ in pairs if chunk.content] == TOKENS
    assert {metadata["node"] for _, metadata in pairs} == {"chat_node"}
    assert pairs[-1][0].usage == Usage(input_tokens=9, output_tokens=5)


async def test_direct_astream_without_a_graph(server: FakeOpenAI) -> None:
    server.script = [text(["Hel", "lo"])]
    chunks = [c async for c in llm(server).astream("hi")]
    total = chunks[0]
    for c in chunks[1:]:
        total = total + c
    assert total.to_message().content == "Hello"
    assert server.requests[0]["messages"] == [{"role": "user", "content": "hi"}]


async def test_leaving_early_hangs_up_at_once(server: FakeOpenAI) -> None:
    gate = Gate()  # never opened: only hanging up ends this stream before the deadline
    reply = text(TOKENS)
    server.script = [Stream([*reply.events[:2], gate, *reply.events[2:]])]
    async with contextlib.aclosing(llm(server).astream("hi")) as chunks:
        async for chunk in chunks:
            assert chunk.content == "Rivers"
            break
    assert await anyio.to_thread.run_sync(server.hung_up.wait, 10)


async def test_a_cancelled_run_hangs_up_mid_stream(server: FakeOpenAI) -> None:
    gate = Gate()
    reply = text(TOKENS)
    server.script = [Stream([*reply.events[:2], gate, *reply.events[2:]])]
    app = chat_graph(llm(server), sync=True)
    async with app.astream_events(INPUT) as events:
        async for event in events:
            if event["event"] == "on_chat_model_stream":
                break  # leaving the loop cancels the run, and with it the model call
    assert await anyio.to_thread.run_sync(server.hung_up.wait, 10)
    assert not gate.opened.is_set()


def test_sync_invoke_outside_any_event_loop(server: FakeOpenAI) -> None:
    server.script = [text(["Hi"])]
    assert llm(server).invoke("hi").content == "Hi"


# -- tools ------------------------------------------------------------------------------


async def test_tool_loop_with_tool_node(server: FakeOpenAI) -> None:
    server.script = [
        tool_calls(("call_1", "add", '{"a": 2, "b": 3}')),
        text(["The", " sum", " is", " 5."]),
    ]
    events, error = await run_events(agent_graph(llm(server)), {"messages": ["What is 2 + 3?"]})
    assert error is None

    first_call = [e["data"]["chunk"] for e in of(events, "on_chat_model_stream")][:4]
    fragments = [c.tool_call_chunks[0] for c in first_call]
    assert [(f.index, f.id, f.name) for f in fragments] == [
        (0, "call_1", "add"),
        (0, None, None),
        (0, None, None),
        (0, None, None),
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
    assert messages[1].tool_calls == (ToolCall(name="add", args={"a": 2, "b": 3}, id="call_1"),)
    assert messages[1].response_metadata["finish_reason"] == "tool_calls"
    assert messages[1].usage == Usage(input_tokens=20, output_tokens=11)
    assert (messages[2].content, messages[2].tool_call_id, messages[2].status) == (
        "5",
        "call_1",
        "success",
    )
    assert messages[3].content == "The sum is 5."

    first, second = server.requests
    assert first["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "add",
                "description": "Add two integers.",
                "parameters": {
                    "type": "object",
                    "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                    "required": ["a", "b"],
                },
            },
        }
    ]
    assert "tool_choice" not in first
    assert second["messages"] == [
        {"role": "user", "content": "What is 2 + 3?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "5"},
    ]


async def test_parallel_tool_calls_and_tool_choice(server: FakeOpenAI) -> None:
    server.script = [
        tool_calls(("call_a", "add", '{"a": 1, "b": 2}'), ("call_b", "add", '{"a": 3, "b": 4}'))
    ]
    reply = await llm(server).bind_tools([add], tool_choice="add").ainvoke("sums")
    assert reply.tool_calls == (
        ToolCall(name="add", args={"a": 1, "b": 2}, id="call_a"),
        ToolCall(name="add", args={"a": 3, "b": 4}, id="call_b"),
    )
    assert server.requests[0]["tool_choice"] == {"type": "function", "function": {"name": "add"}}
    out = await ToolNode([add])({"messages": [reply]})
    assert [(m.tool_call_id, m.content) for m in out["messages"]] == [
        ("call_a", "3"),
        ("call_b", "7"),
    ]


async def test_invalid_tool_call_json_becomes_an_error_tool_message(server: FakeOpenAI) -> None:
    server.script = [
        tool_calls(("call_1", "add", '{"a": 2, "b": ')),
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
    assert (invalid.name, invalid.args, invalid.id) == ("add", '{"a": 2, "b": ', "call_1")
    assert isinstance(answered, ToolMessage)
    assert (answered.tool_call_id, answered.status) == ("call_1", "error")
    assert "not valid JSON" in answered.text and "'add'" in answered.text
    assert messages[3].content == "Sorry, retrying."
    sent = server.requests[1]["messages"]
    assert sent[1]["tool_calls"][0]["function"] == {"name": "add", "arguments": '{"a": 2, "b": '}
    assert sent[2]["role"] == "tool" and sent[2]["tool_call_id"] == "call_1"
    assert "not valid JSON" in sent[2]["content"]


async def test_tool_calls_without_ids_get_one(server: FakeOpenAI) -> None:
    server.script = [
        Stream(
            [
                chunk({"tool_calls": [{"index": 0, "function": {"name": "add", "arguments": ""}}]}),
                chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"a":1,"b":1}'}}]}),
                chunk({}, "tool_calls"),
                DONE,
            ]
        )
    ]
    reply = await llm(server).bind_tools([add]).ainvoke("1+1")
    (call,) = reply.tool_calls
    assert call.args == {"a": 1, "b": 1}
    assert call.id is not None and call.id.startswith("call_")
    assert reply.usage is None  # a server that sends no usage chunk


# -- what the adapter sends -------------------------------------------------------------


async def test_message_conversion_and_per_call_parameters(server: FakeOpenAI) -> None:
    server.script = [text(["ok"])]
    history = [
        SystemMessage(content="sys"),
        HumanMessage(
            content=["look:", {"type": "image_url", "image_url": {"url": "data:x"}}], name="ann"
        ),
        AIMessage(content="", tool_calls=(ToolCall(name="add", args={"a": 1, "b": 2}, id="c1"),)),
        ToolMessage(content="3", tool_call_id="c1", name="add"),
        AIMessageChunk(content="three"),
        ("user", "thanks"),
    ]
    model = llm(server, model_kwargs={"top_p": 0.5, "extra_body": {"top_k": 20}})
    await model.ainvoke(history, stop=["\n"], seed=7)
    body = server.requests[0]
    assert body["messages"] == [
        {"role": "system", "content": "sys"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "look:"},
                {"type": "image_url", "image_url": {"url": "data:x"}},
            ],
            "name": "ann",
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "3"},
        {"role": "assistant", "content": "three"},
        {"role": "user", "content": "thanks"},
    ]
    assert (body["top_p"], body["top_k"], body["stop"], body["seed"]) == (0.5, 20, ["\n"], 7)
    assert "temperature" not in body and "max_tokens" not in body and "tools" not in body


async def test_any_valid_event_stream_framing_is_read(server: FakeOpenAI) -> None:
    """CRLF or CR line ends, comments, events split across reads, a null delta."""
    first = json.dumps(chunk({"content": "Hel"})).encode()
    second = json.dumps(chunk({"content": "lo"})).encode()
    last = {**chunk({}, "stop"), "choices": [{"index": 0, "delta": None, "finish_reason": "stop"}]}
    server.script = [
        Stream(
            [
                b": keep-alive\r\n\r\n",
                b"data: " + first[:10],
                first[10:] + b"\r",
                b"\n\r\n",
                b"event: message\rdata: " + second + b"\r\r",
                f"data: {json.dumps(last)}\n\n",
                f"data: {json.dumps(usage_chunk(3, 2))}\n\ndata: [DONE]\n\n",
            ]
        )
    ]
    reply = await llm(server).ainvoke("hi")
    assert (reply.content, reply.usage) == ("Hello", Usage(input_tokens=3, output_tokens=2))
    assert reply.response_metadata["finish_reason"] == "stop"


# -- broken streams ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        pytest.param(
            [chunk({"content": "Riv"}), chunk({"content": "ers"})],
            r"ended before the model finished: 2 chunk\(s\) but no finish_reason and no \[DONE\]",
            id="ends_early",
        ),
        pytest.param(
            [chunk({"content": "Riv"}), DONE],
            r"ended before the model finished: 1 chunk\(s\) but no finish_reason\.",
            id="done_without_finish_reason",
        ),
        pytest.param(
            [chunk({"content": "Riv"}), RuntimeError("server crashed")],
            r"The stream from .* broke off: RemoteProtocolError",
            id="connection_dropped",
        ),
        pytest.param(
            [chunk({"content": "Riv"}), 'data: {"id": "chatcmpl-1", "choices": [\n\n'],
            r"malformed stream chunk \(not JSON: .*\): '\{\"id\": \"chatcmpl-1\", \"choices\"",
            id="invalid_json",
        ),
        pytest.param(
            [chunk({"content": "Riv"}), {"id": "chatcmpl-1", "object": "chat.completion.chunk"}],
            r"malformed stream chunk \(no 'choices' list\)",
            id="no_choices",
        ),
        pytest.param(
            [chunk({"content": "Riv"}), chunk({"tool_calls": {"index": 0}})],
            r"malformed stream chunk \('tool_calls' is not a list\)",
            id="tool_calls_not_a_list",
        ),
        pytest.param(
            [chunk({"content": "Riv"}), {"error": {"message": "model overloaded"}}],
            r"reported an error mid-stream: model overloaded",
            id="error_event",
        ),
        pytest.param(
            ['{"not": "server-sent events"}'],
            r"no stream events at all \(content-type 'text/event-stream.*'\{\"not\"",
            id="not_sse",
        ),
    ],
)
async def test_a_broken_stream_is_a_chat_model_error_and_fires_on_chat_model_error(
    server: FakeOpenAI, events: list[Event], expected: str
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


# -- HTTP errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "reason", "message", "hint"),
    [
        (401, "Unauthorized", "Incorrect API key provided: sk-test.", "OPENAI_API_KEY"),
        (429, "Too Many Requests", "Rate limit reached for gpt-test.", "Retried 0 time"),
        (500, "Internal Server Error", "The server had an error.", "try again later"),
        (404, "Not Found", "The model `gpt-test` does not exist.", "base_url"),
    ],
)
async def test_http_errors_name_the_status_and_the_providers_message(
    server: FakeOpenAI, status: int, reason: str, message: str, hint: str
) -> None:
    body = {"error": {"message": message, "type": "x", "param": None, "code": None}}
    server.script = [Failure(status, body)]
    seen, error = await run_events(chat_graph(llm(server), sync=False), INPUT)
    assert isinstance(error, ChatModelError)
    assert error.status_code == status
    assert f"answered HTTP {status} {reason}: {message}" in str(error)
    assert hint in str(error)
    assert of(seen, "on_chat_model_error")[0]["data"]["error"] is error
    assert len(server.requests) == 1


async def test_retries_a_server_error_then_streams(server: FakeOpenAI) -> None:
    server.script = [
        Failure(503, {"error": {"message": "busy"}}, headers={"retry-after-ms": "1"}),
        text(["fine"]),
    ]
    reply = await llm(server, max_retries=1).ainvoke("hi")
    assert reply.content == "fine"
    assert len(server.requests) == 2


async def test_unreachable_server(server: FakeOpenAI) -> None:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        port = sock.getsockname()[1]
        model = llm(server, base_url=f"http://127.0.0.1:{port}/v1")
        with pytest.raises(ChatModelError, match=r"Could not reach .*127\.0\.0\.1:\d+/v1"):
            await model.ainvoke("hi")


# -- configuration ----------------------------------------------------------------------


def test_missing_api_key_names_the_variable_and_the_argument(server: FakeOpenAI) -> None:
    with pytest.raises(InvalidInputError, match=r"OPENAI_API_KEY.*api_key="):
        ChatOpenAI(model=MODEL, base_url=server.url)
    with pytest.raises(InvalidInputError, match="OPENAI_API_KEY"):
        init_chat_model("openai:gpt-test", base_url=server.url)


async def test_api_key_and_base_url_from_the_environment(
    server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    monkeypatch.setenv("OPENAI_BASE_URL", server.url)
    server.script = [text(["ok"])]
    model = ChatOpenAI(model=MODEL)
    assert "sk-from-env" not in repr(model)
    assert (await model.ainvoke("hi")).content == "ok"
    assert server.headers[0]["authorization"] == "Bearer sk-from-env"


async def test_init_chat_model_makes_a_chat_openai(server: FakeOpenAI) -> None:
    server.script = [text(["made", " by", " init"])]
    model = init_chat_model(
        "openai:gpt-test", base_url=server.url, api_key="sk-init", temperature=0, name="writer"
    )
    assert isinstance(model, ChatOpenAI)
    assert (model.model, model.name, model.temperature) == ("gpt-test", "writer", 0)
    assert (await model.ainvoke("hi")).content == "made by init"
    assert server.requests[0]["model"] == "gpt-test" and server.requests[0]["temperature"] == 0


def test_the_plugin_is_listed_with_its_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    pm = headwater.create_plugin_manager()
    assert pm.registrations("headwater_chat_models")["openai"]("m", api_key="k").model == "m"
    monkeypatch.setenv("HEADWATER_LOAD_PLUGINS", "openai")
    result = CliRunner().invoke(cli, ["plugins"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    row = rows["openai"]
    assert row["distribution"] == "headwater-openai"
    assert row["module"] == "headwater_openai"
    assert row["hooks"] == ["headwater_chat_models"]
    assert row["error"] is None


def test_the_package_ships_py_typed() -> None:
    from importlib.resources import files

    assert files("headwater_openai").joinpath("py.typed").is_file()


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda url: ChatOpenAI(model="", api_key="k"), "needs model="),
        (lambda url: ChatOpenAI(model="m", api_key="k", temperature="hot"), "temperature"),
        (lambda url: ChatOpenAI(model="m", api_key="k", max_tokens=0), "max_tokens"),
        (lambda url: ChatOpenAI(model="m", api_key="k", max_retries=-1), "max_retries"),
        (lambda url: ChatOpenAI(model="m", api_key="k", timeout=True), "timeout"),
        (
            lambda url: ChatOpenAI(model="m", api_key="k", model_kwargs={"top_k": 3}),
            r"'top_k'.*not a Chat Completions parameter.*extra_body=\{'top_k': \.\.\.\}",
        ),
        (
            lambda url: ChatOpenAI(model="m", api_key="k", model_kwargs={"stream": False}),
            "cannot set 'stream': ChatOpenAI always streams",
        ),
        (lambda url: ChatOpenAI(model="m", api_key="k", model_kwargs=[1]), "must be a mapping"),
        (lambda url: ChatOpenAI(model="m", api_key="k").bind_tools([42]), "Cannot bind int"),
        (lambda url: ChatOpenAI(model="m", api_key="k").bind_tools(add), "a list of tools"),
        (
            lambda url: ChatOpenAI(model="m", api_key="k").bind_tools([add, add]),
            r"bound twice: \['add'\]",
        ),
        (
            lambda url: ChatOpenAI(model="m", api_key="k").bind_tools([add], tool_choice="mul"),
            r"tool_choice='mul'.*bound tools: \['add'\]",
        ),
        (lambda url: init_chat_model("openai:", api_key="k"), "needs model="),
    ],
)
def test_bad_configuration_is_a_clear_error(make: Any, expected: str) -> None:
    with pytest.raises(InvalidInputError, match=expected):
        make("")


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        ({"n": 2}, "n must be 1"),
        ({"stream": False}, "cannot set 'stream'"),
        ({"temperture": 1}, "'temperture', which is not a Chat Completions parameter"),
    ],
)
async def test_bad_call_parameters_fail_before_any_request(
    server: FakeOpenAI, call: dict[str, Any], expected: str
) -> None:
    with pytest.raises(InvalidInputError, match=expected):
        await llm(server).ainvoke("hi", **call)
    assert server.requests == []


async def test_a_message_the_api_cannot_take_is_rejected(server: FakeOpenAI) -> None:
    with pytest.raises(InvalidInputError, match="cannot send a RemoveMessage"):
        await llm(server).ainvoke([RemoveMessage(id="1")])
    with pytest.raises(InvalidInputError, match="content block of a HumanMessage"):
        await llm(server).ainvoke([HumanMessage(content=[42])])
    assert server.requests == []


async def test_plain_functions_and_openai_specs_bind_as_tools(server: FakeOpenAI) -> None:
    def shout(text: str) -> str:
        """Shout it."""
        return text.upper()

    spec = {"type": "function", "function": {"name": "noop", "parameters": {"type": "object"}}}
    server.script = [text(["ok"])]
    await llm(server).bind_tools([shout, spec], tool_choice="required").ainvoke("hi")
    sent = server.requests[0]
    assert [t["function"]["name"] for t in sent["tools"]] == ["shout", "noop"]
    assert sent["tools"][0]["function"]["parameters"]["properties"] == {"text": {"type": "string"}}
    assert sent["tool_choice"] == "required"


async def test_parallel_tool_calls_and_a_per_call_tool_choice(server: FakeOpenAI) -> None:
    server.script = [text(["ok"]), text(["ok"])]
    await llm(server).bind_tools([add], parallel_tool_calls=False).ainvoke("hi")
    assert server.requests[0]["parallel_tool_calls"] is False
    assert "tool_choice" not in server.requests[0]
    await llm(server).ainvoke("hi", tools=[add], tool_choice="add")
    assert server.requests[1]["tool_choice"] == {"type": "function", "function": {"name": "add"}}
    assert "parallel_tool_calls" not in server.requests[1]
    with pytest.raises(InvalidInputError, match=r"tool_choice='any' needs tools"):
        await llm(server).ainvoke("hi", tool_choice="any")
    assert len(server.requests) == 2


async def test_an_error_answer_names_the_request_id(server: FakeOpenAI) -> None:
    body = {"error": {"message": "Slow down.", "type": "requests", "param": None, "code": None}}
    server.script = [Failure(429, body, headers={"x-request-id": "req_123"})]
    with pytest.raises(ChatModelError, match=r"HTTP 429 Too Many Requests: Slow down\. .*req_123"):
        await llm(server).ainvoke("hi")


# -- the conformance suite every adapter runs ------------------------------------------


class TestConformance(ChatModelConformance):
    @pytest.fixture(autouse=True)
    def _server(self, server: FakeOpenAI) -> None:
        self.server = server

    def make_model(self, replies: list[Reply]) -> ChatOpenAI:
        for reply in replies:
            if reply.tool_calls:
                self.server.script.append(tool_calls(*reply.tool_calls))
            elif reply.cut_after is not None:
                head = chunk({"role": "assistant", "content": ""})
                tokens = [chunk({"content": t}) for t in reply.tokens[: reply.cut_after]]
                self.server.script.append(Stream([head, *tokens, RuntimeError("cut")]))
            else:
                self.server.script.append(text(reply.tokens))
        return llm(self.server)
