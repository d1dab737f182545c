"""headwater.http_chat: the base of HTTP chat-model adapters, on a transport it was not made for.

The OpenAI and Anthropic adapters test the base through official SDKs. Here a third
adapter, for an invented "Parrot" API, is written the way a third party would write one:
a plain ``httpx.AsyncClient`` (no SDK, no retries, no status exceptions), a small wire
format, and only the provider mapping. It talks to a real server (Starlette under
uvicorn on loopback) that plays scripted replies, and runs the public
:class:`~headwater.testing.conformance.ChatModelConformance` suite as every adapter does.

The wire format: ``POST /v1/chat`` with ``{"model", "messages", "stream": true, ...}``
and a bearer key; the answer is SSE events ``{"text": ...}``, ``{"call": {"index", "id",
"name", "args"}}``, then ``{"stop": <reason>, "usage": {"in", "out"}}``; an error is
``{"error": {"kind", "message"}}``, mid-stream or as an HTTP error body.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar

import anyio
import anyio.to_thread
import httpx
import pytest
from fixtures.loopback import serving
from fixtures.sse_provider import Event, Failure, Gate, Pause, ScriptedProvider, Stream
from starlette.applications import Starlette
from starlette.routing import Route

import headwater
from headwater.errors import ChatModelError, InvalidInputError
from headwater.http_chat import (
    ChatStream,
    ClientErrors,
    HTTPChatModel,
    StainlessSDK,
    content_block,
    parameters_of,
)
from headwater.lazy import lazy_attributes, lazy_chat_models
from headwater.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolCall,
    ToolCallChunk,
    ToolMessage,
    Usage,
)
from headwater.models import init_chat_model
from headwater.testing.conformance import ChatModelConformance, Reply
from headwater.tools import Tool, tool

pytestmark = pytest.mark.anyio

# -- the adapter: only the Parrot API's mapping ------------------------------------------

ROLES = {"system": "system", "human": "user", "ai": "assistant", "tool": "tool"}


class ParrotStream(ChatStream):
    expected = 'Parrot events `data: {"text": ...}` or `{"call": {...}}`, then `{"stop": ...}`'

    def handle(self, event: str, data: str) -> list[AIMessageChunk]:
        payload = self.parse(event, data)
        if "stop" in payload:
            self.finish_reason, self.done = str(payload["stop"]), True
            counts = payload.get("usage") or {}
            self.usage = Usage(input_tokens=counts.get("in", 0), output_tokens=counts.get("out", 0))
            return [AIMessageChunk(response_metadata={"stop": self.finish_reason})]
        if "call" in payload:
            call = payload["call"]
            if not isinstance(call, Mapping) or not isinstance(call.get("index"), int):
                raise self.malformed("a call without an integer index", data)
            piece = ToolCallChunk(
                name=call.get("name"),
                args=call.get("args", ""),
                id=call.get("id"),
                index=call["index"],
            )
            return [AIMessageChunk(tool_call_chunks=(piece,))]
        text = payload.get("text")
        if not isinstance(text, str):
            raise self.malformed("no 'text', 'call' or 'stop'", data)
        return [AIMessageChunk(content=text)] if text else []


class ChatParrot(HTTPChatModel):
    """Chat model for the Parrot API (tests only).

    Example::

        ChatParrot(model="parrot-1", api_key="k")
    """

    provider = "parrot"
    api_name = "the Parrot API"
    api_key_env = "PARROT_API_KEY"
    base_url_env = "PARROT_BASE_URL"
    model_example = "parrot-1"
    reserved: ClassVar[Mapping[str, str]] = {"system": "put instructions in a SystemMessage"}
    parameter_kind = "a Parrot API parameter"
    parameter_aliases: ClassVar[Mapping[str, str]] = {"stop_sequences": "stop"}
    status_hints: ClassVar[Mapping[int, str]] = {429: "Slow down, or wait a minute."}
    error_type_key = "kind"
    stream_type = ParrotStream

    def _client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.base_url or "https://api.parrot.invalid",
            headers={"authorization": f"Bearer {self._api_key}"},
            timeout=self.timeout or 60.0,
        )

    def _send(self, client: httpx.AsyncClient, request: dict[str, Any]) -> Any:
        return client.stream("POST", "/v1/chat", json=request)

    def _errors(self) -> ClientErrors:
        return ClientErrors(
            timeout=httpx.TimeoutException, connection=(httpx.TransportError, httpx.StreamError)
        )

    def _parameters(self) -> frozenset[str]:
        return frozenset(
            {"model", "messages", "stream", "temperature", "max_tokens", "top_p", "stop"}
            | {"tools", "tool_choice"}
        )

    def _request_messages(self, messages: list[BaseMessage]) -> dict[str, Any]:
        out = []
        for m in messages:
            turn: dict[str, Any] = {"role": ROLES[m.type]}
            turn["content"] = (
                m.content
                if isinstance(m.content, str)
                else [content_block(b, type(m).__name__) for b in m.content]
            )
            if isinstance(m, AIMessage) and m.tool_calls:
                turn["calls"] = [
                    {"id": c.id, "name": c.name, "args": dict(c.args)} for c in m.tool_calls
                ]
            if isinstance(m, ToolMessage):
                turn["call_id"] = m.tool_call_id
            out.append(turn)
        return {"messages": out}

    def _tool_spec(self, item: Any) -> dict[str, Any]:
        made = item if isinstance(item, Tool) else Tool(item)
        return {"name": made.name, "parameters": dict(made.schema["parameters"])}

    def _tool_choice(
        self, choice: Any, specs: Sequence[Mapping[str, Any]], parallel: bool | None
    ) -> Any:
        if choice is None:
            return None
        names = [spec["name"] for spec in specs]
        if choice not in ("auto", "none", *names):
            raise InvalidInputError(f"tool_choice={choice!r}: 'auto', 'none' or one of {names}.")
        return {"name": choice, "parallel": parallel}


# -- the server --------------------------------------------------------------------------


def text(tokens: Sequence[str], *, prompt: int = 9) -> Stream:
    return Stream(
        [
            *({"text": t} for t in tokens),
            {"stop": "end", "usage": {"in": prompt, "out": len(tokens)}},
        ]
    )


def calls(*wanted: tuple[str, str, str]) -> Stream:
    events: list[Event] = []
    for index, (call_id, name, args) in enumerate(wanted):
        events.append({"call": {"index": index, "id": call_id, "name": name, "args": args[:4]}})
        events.append({"call": {"index": index, "args": args[4:]}})
    return Stream([*events, {"stop": "calls", "usage": {"in": 5, "out": 7}}])


def sse(event: Mapping[str, Any]) -> bytes:
    return f"data: {json.dumps(event)}\n\n".encode()


FakeParrot = ScriptedProvider


_SERVER = FakeParrot(
    encode=sse, exhausted={"error": {"kind": "script", "message": "no reply left"}}
)


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    app = Starlette(routes=[Route("/v1/chat", _SERVER.handle, methods=["POST"])])
    with serving(app, log_level="critical") as url:
        yield url


@pytest.fixture
def server(server_url: str, monkeypatch: pytest.MonkeyPatch) -> FakeParrot:
    monkeypatch.delenv("PARROT_API_KEY", raising=False)
    monkeypatch.delenv("PARROT_BASE_URL", raising=False)
    _SERVER.reset(server_url)
    return _SERVER


def parrot(server: FakeParrot, **kwargs: Any) -> ChatParrot:
    return ChatParrot(model="parrot-1", **{"api_key": "pk-test", "base_url": server.url, **kwargs})


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


# -- streaming ---------------------------------------------------------------------------


async def test_tokens_stream_live_and_the_request_carries_the_settings(server: FakeParrot) -> None:
    gate = Gate()
    reply = text(["Rivers", " run", " far"])
    server.script = [Stream([*reply.events[:1], gate, *reply.events[1:]])]
    model = parrot(server, temperature=0.5, max_tokens=20, model_kwargs={"top_p": 0.9})
    seen = []
    async for chunk in model.astream(
        [SystemMessage(content="Be brief."), AIMessageChunk(content="Earlier."), "Rivers?"],
        stop=["."],
    ):
        seen.append(chunk)
        gate.opened.set()  # the first token arrived while the server held the rest
    assert [c.content for c in seen if c.content] == ["Rivers", " run", " far"]
    total = AIMessageChunk.merge(seen).to_message()
    assert (total.content, total.usage) == (
        "Rivers run far",
        Usage(input_tokens=9, output_tokens=3),
    )
    assert total.response_metadata == {"stop": "end"}
    assert server.requests == [
        {
            "model": "parrot-1",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "assistant", "content": "Earlier."},  # a chunk goes as its message
                {"role": "user", "content": "Rivers?"},
            ],
            "stream": True,
            "temperature": 0.5,
            "max_tokens": 20,
            "top_p": 0.9,
            "stop": ["."],
        }
    ]
    assert server.headers[0]["authorization"] == "Bearer pk-test"


async def test_leaving_early_hangs_up_at_once(server: FakeParrot) -> None:
    gate = Gate()  # never opened: only hanging up ends this stream before the deadline
    reply = text(["a", " b", " c"])
    server.script = [Stream([reply.events[0], gate, *reply.events[1:]])]
    async with contextlib.aclosing(parrot(server).astream("hi")) as chunks:
        async for chunk in chunks:
            assert chunk.content == "a"
            break
    assert await anyio.to_thread.run_sync(server.hung_up.wait, 10)


async def test_tools_bound_and_per_call(server: FakeParrot) -> None:
    server.script = [calls(("c1", "add", '{"a": 2, "b": 3}')), text(["5"])]
    bound = parrot(server).bind_tools([add], tool_choice="add", parallel_tool_calls=False)
    reply = await bound.ainvoke("2 + 3?")
    assert reply.tool_calls == (ToolCall(name="add", args={"a": 2, "b": 3}, id="c1"),)
    first = server.requests[0]
    assert first["tools"] == [{"name": "add", "parameters": add.schema["parameters"]}]
    assert first["tool_choice"] == {"name": "add", "parallel": False}
    await parrot(server).ainvoke("again", tools=[add], tool_choice="auto")
    assert server.requests[1]["tool_choice"] == {"name": "auto", "parallel": None}
    assert server.requests[1]["tools"] == first["tools"]


# -- what goes wrong ---------------------------------------------------------------------


async def test_an_error_status_is_read_from_the_response(server: FakeParrot) -> None:
    body = {"error": {"kind": "rate_limit", "message": "Too many parrots."}}
    server.script = [Failure(429, body, {"x-request-id": "req_42"})]
    with pytest.raises(ChatModelError) as caught:
        await parrot(server).ainvoke("hi")
    message = str(caught.value)
    assert caught.value.status_code == 429
    assert message.startswith(f"The Parrot API at {server.url} (model 'parrot-1') answered ")
    assert "HTTP 429 Too Many Requests: rate_limit: Too many parrots. Slow down" in message
    assert "Request id: req_42." in message
    assert "Retried" not in message  # a plain httpx client retries nothing


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (500, b"upstream exploded", r"HTTP 500 Internal Server Error: upstream exploded The "),
        (404, b"", r"HTTP 404 Not Found: \(no body\)$"),
        (400, {"error": "bad request text"}, r"HTTP 400 Bad Request: bad request text$"),
    ],
)
async def test_error_bodies_of_any_shape(
    server: FakeParrot, status: int, body: Any, expected: str
) -> None:
    server.script = [Failure(status, body)]
    with pytest.raises(ChatModelError, match=expected) as caught:
        await parrot(server).ainvoke("hi")
    assert caught.value.status_code == status


async def test_a_huge_error_body_is_read_only_in_part(server: FakeParrot) -> None:
    server.script = [Failure(502, b"x" * 5_000_000)]
    with pytest.raises(ChatModelError) as caught:
        await parrot(server).ainvoke("hi")
    assert caught.value.status_code == 502
    assert len(str(caught.value)) < 3_000


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        pytest.param(
            [{"text": "a"}, {"text": "b"}],
            r"ended before the model finished: 2 event\(s\) but no finish_reason\.",
            id="no_stop",
        ),
        pytest.param(
            [{"text": "a"}, RuntimeError("crash")],
            r"The stream from the Parrot API at .* broke off: RemoteProtocolError",
            id="connection_dropped",
        ),
        pytest.param(
            [{"text": "a"}, "data: {not json\n\n"],
            r"The Parrot API at .* sent a malformed stream event \(not JSON: .*\): '\{not json'",
            id="not_json",
        ),
        pytest.param(
            [{"text": "a"}, {"call": {"index": "0"}}],
            r"malformed stream event \(a call without an integer index\).*Expected Parrot events",
            id="bad_call",
        ),
        pytest.param(
            [{"text": "a"}, {"error": {"kind": "overloaded", "message": "Too busy"}}],
            r"The Parrot API at .* reported an error mid-stream: overloaded: Too busy\. Nothing",
            id="error_event",
        ),
        pytest.param(
            ['{"not": "sse"}'],
            r"no stream events at all \(content-type 'text/event-stream.*'\{\"not\"",
            id="not_sse",
        ),
    ],
)
async def test_a_broken_stream_is_a_chat_model_error(
    server: FakeParrot, events: list[Event], expected: str
) -> None:
    server.script = [Stream(events)]
    with pytest.raises(ChatModelError, match=expected) as caught:
        await parrot(server).ainvoke("hi")
    assert caught.value.status_code is None


async def test_a_stream_that_stalls_is_cut_off_by_the_timeout(server: FakeParrot) -> None:
    server.script = [Stream([{"text": "a"}, Pause(5), {"stop": "end"}])]
    with pytest.raises(ChatModelError, match=r"The stream from .* stalled: no data within"):
        await parrot(server, timeout=0.3).ainvoke("hi")


async def test_a_server_that_does_not_answer_in_time(server: FakeParrot) -> None:
    server.script = [Stream([{"stop": "end"}], delay=2)]
    with pytest.raises(
        ChatModelError, match=r"did not answer within the timeout \(0\.3 s; retried 2"
    ):
        await parrot(server, timeout=0.3).ainvoke("hi")


async def test_an_unreachable_server(server: FakeParrot) -> None:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        with pytest.raises(ChatModelError, match=r"Could not reach the Parrot API at http://127"):
            await parrot(server, base_url=url).ainvoke("hi")


# -- settings and parameters -------------------------------------------------------------


def test_key_and_server_from_the_environment(
    server: FakeParrot, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(InvalidInputError, match=r"ChatParrot needs an API key: set the PARROT_API"):
        ChatParrot(model="parrot-1")
    monkeypatch.setenv("PARROT_API_KEY", "pk-env")
    monkeypatch.setenv("PARROT_BASE_URL", server.url)
    model = ChatParrot(model="parrot-1")
    assert model.base_url == server.url
    assert repr(model) == f"ChatParrot(model='parrot-1', base_url={server.url!r})"
    assert "pk-env" not in repr(model)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        (
            {"model": ""},
            r"ChatParrot needs model=, the provider's model name \(e\.g\. 'parrot-1'\)",
        ),
        ({"model": 7}, "needs model="),
        ({"temperature": "hot"}, r"temperature=\.\.\.\) must be a number >= 0"),
        ({"temperature": True}, "temperature"),
        ({"max_tokens": 0}, r"max_tokens=\.\.\.\) must be greater than 0"),
        ({"max_tokens": 1.5}, "must be an integer"),
        ({"timeout": -1}, "timeout"),
        ({"max_retries": None}, r"max_retries=\.\.\.\) must be an integer >= 0"),
        ({"model_kwargs": [("top_p", 1)]}, "must be a mapping of request parameters; got list"),
        ({"model_kwargs": {"stream": False}}, "cannot set 'stream': ChatParrot always streams"),
        ({"model_kwargs": {"system": "x"}}, "cannot set 'system': put instructions in a System"),
        (
            {"model_kwargs": {"stop_sequences": ["."]}},
            r"got 'stop_sequences', which is not a Parrot API parameter\. Did you mean 'stop'\? "
            r"Pass other parameters in extra_body",
        ),
        ({"model_kwargs": {"top_pp": 1}}, r"Did you mean 'top_p'\?"),
        ({"model_kwargs": {"max_tokens": -3}}, "max_tokens"),
        ({"model_kwargs": {1: 2}}, r"parameter names are strings; got int 1\."),
        ({"api_key": 12345}, r"api_key=\.\.\.\) must be a string; got int"),
        ({"base_url": b"http://x"}, r"base_url=\.\.\.\) must be a string; got bytes"),
    ],
)
def test_bad_settings_are_refused_when_the_model_is_made(
    kwargs: dict[str, Any], expected: str
) -> None:
    with pytest.raises(InvalidInputError, match=expected):
        ChatParrot(**{"model": "parrot-1", "api_key": "k", **kwargs})


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        ({"messages": []}, "got the messages twice"),
        ({"model": "other"}, "cannot set 'model': set model= when making the ChatParrot"),
        ({"temperture": 1}, r"'temperture', which is not .* Did you mean 'temperature'\?"),
        ({"temperature": -1}, "temperature"),
        ({"tool_choice": "auto"}, r"tool_choice='auto' needs tools: bind_tools"),
        ({"tools": [add], "tool_choice": "mul"}, r"tool_choice='mul'"),
        ({"tools": add}, "bind_tools takes a list of tools; got Tool"),
    ],
)
async def test_bad_call_parameters_fail_before_any_request(
    server: FakeParrot, call: dict[str, Any], expected: str
) -> None:
    with pytest.raises(InvalidInputError, match=expected):
        await parrot(server).ainvoke("hi", **call)
    assert server.requests == []


def test_bind_tools_refuses_what_is_not_a_list_of_unique_tools() -> None:
    model = ChatParrot(model="parrot-1", api_key="k")
    with pytest.raises(InvalidInputError, match=r"bound twice: \['add'\]"):
        model.bind_tools([add, add])
    with pytest.raises(InvalidInputError, match="a list of tools; got str"):
        model.bind_tools("add")
    with pytest.raises(InvalidInputError, match="a list of tools; got dict"):
        model.bind_tools({"name": "add"})
    bound = model.bind_tools([add])
    assert (bound.tools, model.tools) == (
        ({"name": "add", "parameters": add.schema["parameters"]},),
        (),
    )


def test_a_bad_content_block_names_the_message() -> None:
    assert content_block("hi", "HumanMessage") == {"type": "text", "text": "hi"}
    assert content_block({"type": "image"}, "HumanMessage") == {"type": "image"}
    with pytest.raises(InvalidInputError, match="A content block of a HumanMessage must be"):
        content_block(42, "HumanMessage")


async def test_a_message_with_a_bad_block_fails_before_any_request(server: FakeParrot) -> None:
    with pytest.raises(InvalidInputError, match="content block of a HumanMessage"):
        await parrot(server).ainvoke([HumanMessage(content=["ok", 3.5])])
    assert server.requests == []


# -- what an adapter must provide --------------------------------------------------------


class NoTransport(HTTPChatModel):
    provider = "none"
    stream_type = ParrotStream

    def _request_messages(self, messages: list[BaseMessage]) -> dict[str, Any]:
        return {"messages": [m.text for m in messages]}


async def test_an_adapter_without_transport_or_tools_says_what_to_implement() -> None:
    model = NoTransport(model="m", api_key="k")
    with pytest.raises(NotImplementedError, match=r"NoTransport names no sdk: set sdk = Stain"):
        await model.ainvoke("hi")
    with pytest.raises(InvalidInputError, match="NoTransport does not take tools"):
        model.bind_tools([add])
    with pytest.raises(
        InvalidInputError, match=r"NoTransport needs an API key: pass api_key=\.\.\.$"
    ):
        NoTransport(model="m")


def test_client_errors_take_exception_classes_only() -> None:
    errors = ClientErrors(timeout=TimeoutError, connection=(ConnectionError, OSError))
    assert errors.caught == (TimeoutError, ConnectionError, OSError)
    with pytest.raises(InvalidInputError, match="ClientErrors takes exception classes"):
        ClientErrors(timeout="TimeoutError")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="ClientErrors takes exception classes"):
        ClientErrors(connection=(ConnectionError, int))  # type: ignore[arg-type]


def test_stainless_sdk_loads_by_name_only_when_used() -> None:
    sdk = StainlessSDK(module="headwater_no_such_sdk", client="AsyncNone", resource="chat")
    assert "headwater_no_such_sdk" not in sys.modules
    with pytest.raises(ModuleNotFoundError, match="headwater_no_such_sdk"):
        sdk.load()


def test_parameters_of_a_method() -> None:
    class Resource:
        def create(self, *, model: str, messages: list[Any], stream: bool = False) -> None: ...

    assert parameters_of(Resource.create) == {"model", "messages", "stream"}


# -- registering the provider lazily ------------------------------------------------------


def test_lazy_chat_models_and_attributes(server: FakeParrot) -> None:
    hook = lazy_chat_models(parrot=f"{__name__}:ChatParrot")
    assert hook.__doc__ is not None and "Example::" in hook.__doc__

    class Plugin:
        headwater_chat_models = staticmethod(hook)

    pm = headwater.create_plugin_manager(plugins=[Plugin()])
    model = init_chat_model("parrot:parrot-2", plugin_manager=pm, api_key="k", name="p")
    assert isinstance(model, ChatParrot) and (model.model, model.name) == ("parrot-2", "p")

    getter = lazy_attributes("headwater_parrot", ChatParrot=__name__)
    assert getter("ChatParrot") is ChatParrot
    with pytest.raises(AttributeError, match="module 'headwater_parrot' has no attribute 'Chat'"):
        getter("Chat")
    with pytest.raises(InvalidInputError, match=r"lazy_chat_models\(parrot=\.\.\.\) takes"):
        lazy_chat_models(parrot="no_colon_here")


# -- the conformance suite every adapter runs ------------------------------------------


class TestConformance(ChatModelConformance):
    @pytest.fixture(autouse=True)
    def _server(self, server: FakeParrot) -> None:
        self.server = server

    def make_model(self, replies: list[Reply]) -> ChatParrot:
        for reply in replies:
            if reply.tool_calls:
                self.server.script.append(calls(*reply.tool_calls))
            elif reply.cut_after is not None:
                tokens = [{"text": t} for t in reply.tokens[: reply.cut_after]]
                self.server.script.append(Stream([*tokens, RuntimeError("cut")]))
            else:
                self.server.script.append(text(reply.tokens))
        return parrot(self.server)


ADAPTER_HOOKS = [
    "_client",
    "_send",
    "_errors",
    "_request_messages",
    "_parameters",
    "_finish_request",
    "_tool_spec",
    "_tool_name",
    "_tool_choice",
    "_check_parameters",
    "_status_hint",
]
"""The methods an adapter overrides: documented like public ones."""


def test_the_public_names_and_the_adapter_hooks_have_docstrings_with_examples() -> None:
    import headwater.http_chat
    import headwater.lazy

    for module in (headwater.http_chat, headwater.lazy):
        assert module.__doc__ and "Example::" in module.__doc__
        for name in module.__all__:
            obj = getattr(module, name)
            assert obj.__doc__ and "Example::" in obj.__doc__, name
            methods = [
                (attr, value)
                for attr, value in (vars(obj).items() if isinstance(obj, type) else ())
                if callable(value) and (not attr.startswith("_") or attr in ADAPTER_HOOKS)
            ]
            for attr, value in methods:
                assert value.__doc__ and "Example::" in value.__doc__, f"{name}.{attr}"
    documented = {attr for attr in vars(HTTPChatModel) if attr in ADAPTER_HOOKS}
    assert documented == set(ADAPTER_HOOKS)
