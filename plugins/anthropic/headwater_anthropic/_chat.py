"""ChatAnthropic: Messages API streaming through the official ``anthropic`` SDK."""

from __future__ import annotations

import contextlib
import copy
import difflib
import functools
import inspect
import json
import os
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import anyio
import httpx2

from headwater.errors import ChatModelError, InvalidInputError
from headwater.messages import AIMessageChunk, BaseMessage, ToolCallChunk, Usage
from headwater.models import ChatModel
from headwater.runtime import new_id
from headwater.sse import SSEDecoder
from headwater_anthropic._convert import (
    THINKING_BLOCKS,
    ToolLike,
    messages_to_anthropic,
    tool_choice_to_anthropic,
    tools_to_anthropic,
)
from headwater_anthropic._env import API_KEY_ENV, BASE_URL_ENV, DEFAULT_MAX_TOKENS

if TYPE_CHECKING:  # the SDK takes seconds to import: it loads on first use, not with the plugin
    import anthropic

__all__ = ["ChatAnthropic"]

_RESERVED = {
    "messages": "the messages are the model's input",
    "model": "set model= when making the ChatAnthropic",
    "stream": "ChatAnthropic always streams",
    "system": "put instructions in a SystemMessage; it becomes the system parameter",
}
_SAMPLING = frozenset({"temperature", "top_k", "top_p"})
"""Sampling parameters: the anthropic SDK >= 1.0 no longer takes them, the API may still."""
_OLD_API = "2023-06-01"
_ALIASES = {"stop": "stop_sequences", "max_completion_tokens": "max_tokens"}
_RETRYABLE = {408, 409, 429}
_REASONS = {529: "Overloaded"}  # not a registered HTTP status: no standard reason phrase
_HINTS = {
    400: "The API rejected the request; check the messages, tools and parameters.",
    401: f"Check the API key ({API_KEY_ENV} or api_key=...).",
    403: "The key is not allowed to use this model or resource.",
    404: "Check the model name, and that base_url is the API root (without /v1).",
    413: "The request is too large for the API.",
    429: "Rate limited: slow down, or raise max_retries.",
    529: "Anthropic's API is overloaded; try again later, or raise max_retries.",
}


@functools.cache
def _sdk_parameters() -> frozenset[str]:
    """Keyword arguments the installed SDK's ``messages.create`` accepts."""
    from anthropic.resources.messages import AsyncMessages

    return frozenset(inspect.signature(AsyncMessages.create).parameters) - {"self"}


def _create_parameters() -> frozenset[str]:
    """Request parameters ChatAnthropic takes: the SDK's, and the sampling ones."""
    return _sdk_parameters() | _SAMPLING


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """One TLS context for every client (building one costs ~20 ms; it is thread-safe)."""
    return httpx2.create_ssl_context()


def _number(name: str, value: Any, *, positive: bool = False, integer: bool = False) -> None:
    kinds = (int,) if integer else (int, float)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, kinds) or value < 0:
        kind = "an integer" if integer else "a number"
        raise InvalidInputError(
            f"ChatAnthropic({name}=...) must be {kind} >= 0 or None; got {value!r}."
        )
    if positive and value == 0:
        raise InvalidInputError(f"ChatAnthropic({name}=...) must be greater than 0; got {value!r}.")


def _check_params(params: Mapping[str, Any], where: str) -> None:
    for key in params:
        if key in _RESERVED:
            raise InvalidInputError(f"{where} cannot set {key!r}: {_RESERVED[key]}.")
        known = _create_parameters()
        if key not in known:
            alias = _ALIASES.get(key) or next(
                iter(difflib.get_close_matches(key, sorted(known), n=1)), None
            )
            hint = f"Did you mean {alias!r}? " if alias else ""
            raise InvalidInputError(
                f"{where} got {key!r}, which is not a Messages API parameter of the anthropic "
                f"SDK. {hint}Pass other parameters in extra_body={{{key!r}: ...}}."
            )
    _number("max_tokens", params.get("max_tokens"), positive=True, integer=True)


def _provider_message(body: object, fallback: str) -> str:
    """``"<error type>: <message>"`` from an Anthropic error body, else the fallback."""
    if isinstance(body, Mapping):
        inner = body.get("error", body)
        if isinstance(inner, Mapping) and isinstance(inner.get("message"), str):
            kind = inner.get("type")
            prefix = f"{kind}: " if isinstance(kind, str) and kind else ""
            return f"{prefix}{inner['message']}"
        if isinstance(inner, str):
            return inner
    if isinstance(body, str) and body:
        return body
    return fallback


class _Stream:
    """What one streamed message has said so far; turns events into chunks."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.id: str | None = None
        self.model: str | None = None
        self.events = 0
        self.done = False
        self.stop_reason: str | None = None
        self.usage: dict[str, Any] = {}
        self.head = b""
        self.tools: set[int] = set()
        self.thinking: dict[int, dict[str, Any]] = {}
        self.handlers: dict[str, Callable[[Mapping[str, Any], str], list[AIMessageChunk]]] = {
            "message_start": self.on_message_start,
            "content_block_start": self.on_content_block_start,
            "content_block_delta": self.on_content_block_delta,
            "message_delta": self.on_message_delta,
            "message_stop": self.on_message_stop,
        }

    def malformed(self, what: str, data: str) -> ChatModelError:
        return ChatModelError(
            f"{self.where} sent a malformed stream event ({what}): {data!r:.200}. Expected "
            'Messages API events: `event: <type>` then `data: {"type": <type>, ...}`, from '
            "message_start to message_stop."
        )

    def handle(self, event: str, data: str) -> list[AIMessageChunk]:
        self.events += 1
        try:
            payload = json.loads(data)
        except ValueError as exc:
            raise self.malformed(f"not JSON: {exc}", data) from exc
        if not isinstance(payload, dict):
            raise self.malformed("not a JSON object", data)
        kind = payload.get("type")
        if event == "error" or kind == "error":
            message = _provider_message(payload, data)
            raise ChatModelError(
                f"{_upper_first(self.where)} reported an error mid-stream: {message}. "
                "Nothing was retried: the answer had begun; try the call again."
            )
        if not isinstance(kind, str):
            raise self.malformed("no 'type'", data)
        handler = self.handlers.get(kind)
        # The API may add event types; ones we do not know (and pings) are skipped.
        return [] if handler is None else handler(payload, data)

    def on_message_start(self, payload: Mapping[str, Any], data: str) -> list[AIMessageChunk]:
        message = payload.get("message")
        if not isinstance(message, Mapping):
            raise self.malformed("a message_start without a 'message' object", data)
        self.id = message.get("id") if isinstance(message.get("id"), str) else None
        self.model = message.get("model") if isinstance(message.get("model"), str) else None
        self.count(message.get("usage"))
        return []

    def on_message_delta(self, payload: Mapping[str, Any], data: str) -> list[AIMessageChunk]:
        delta = payload.get("delta")
        if not isinstance(delta, Mapping):
            raise self.malformed("a message_delta without a 'delta' object", data)
        self.count(payload.get("usage"))
        if not delta.get("stop_reason"):
            return []
        self.stop_reason = str(delta["stop_reason"])
        metadata: dict[str, Any] = {
            "stop_reason": self.stop_reason,
            "stop_sequence": delta.get("stop_sequence"),
            "model_name": self.model,
            "id": self.id,
        }
        thinking = [self.thinking[i] for i in sorted(self.thinking)]
        if thinking:
            metadata[THINKING_BLOCKS] = thinking
        return [AIMessageChunk(response_metadata=metadata)]

    def on_message_stop(self, payload: Mapping[str, Any], data: str) -> list[AIMessageChunk]:
        self.done = True
        return []

    def on_content_block_start(self, payload: Mapping[str, Any], data: str) -> list[AIMessageChunk]:
        index, block = payload.get("index"), payload.get("content_block")
        if isinstance(index, bool) or not isinstance(index, int) or not isinstance(block, Mapping):
            raise self.malformed("a content_block_start without an integer index and a block", data)
        kind = block.get("type")
        if kind == "text":
            text = block.get("text") or ""
            if not isinstance(text, str):
                raise self.malformed("a text block whose 'text' is not a string", data)
            return [AIMessageChunk(content=text)] if text else []
        if kind == "tool_use":
            name, call_id, args = block.get("name"), block.get("id"), block.get("input")
            if not isinstance(name, str) or not isinstance(call_id, str | None):
                raise self.malformed("a tool_use block without a name", data)
            self.tools.add(index)
            first = json.dumps(args) if isinstance(args, Mapping) and args else ""
            call = ToolCallChunk(
                name=name, args=first, id=call_id or f"toolu_{new_id()}", index=index
            )
            return [AIMessageChunk(tool_call_chunks=(call,))]
        if kind in ("thinking", "redacted_thinking"):
            self.thinking[index] = dict(block)
        return []

    def on_content_block_delta(self, payload: Mapping[str, Any], data: str) -> list[AIMessageChunk]:
        index, delta = payload.get("index"), payload.get("delta")
        if isinstance(index, bool) or not isinstance(index, int) or not isinstance(delta, Mapping):
            raise self.malformed("a content_block_delta without an integer index and a delta", data)
        kind = delta.get("type")
        if kind == "text_delta":
            text = delta.get("text")
            if not isinstance(text, str):
                raise self.malformed("a text_delta whose 'text' is not a string", data)
            return [AIMessageChunk(content=text)] if text else []
        if kind == "input_json_delta":
            piece = delta.get("partial_json")
            if not isinstance(piece, str):
                raise self.malformed("an input_json_delta whose 'partial_json' is not text", data)
            if index not in self.tools:
                raise self.malformed(f"input_json_delta for block {index}, no tool_use", data)
            if not piece:
                return []
            return [AIMessageChunk(tool_call_chunks=(ToolCallChunk(args=piece, index=index),))]
        block = self.thinking.get(index)
        if block is not None and kind in ("thinking_delta", "signature_delta"):
            key = "thinking" if kind == "thinking_delta" else "signature"
            if isinstance(delta.get(key), str):
                block[key] = str(block.get(key) or "") + delta[key]
        return []

    def count(self, usage: object) -> None:
        if isinstance(usage, Mapping):
            self.usage.update((k, v) for k, v in usage.items() if v is not None)

    def final_usage(self) -> Usage | None:
        if not self.usage:
            return None

        def number(key: str) -> int:
            value = self.usage.get(key)
            return value if isinstance(value, int) and not isinstance(value, bool) else 0

        cached = number("cache_creation_input_tokens") + number("cache_read_input_tokens")
        return Usage(
            input_tokens=number("input_tokens") + cached,
            output_tokens=number("output_tokens"),
        )

    def truncated(self, content_type: str) -> ChatModelError:
        if self.events == 0:
            seen = (
                f"no stream events at all (content-type {content_type!r}, body starts "
                f"with {self.head[:200]!r})"
            )
        else:
            seen = f"{self.events} event(s) but no stop_reason" + (
                "" if self.done else " and no message_stop"
            )
        return ChatModelError(
            f"The stream from {self.where} ended before the model finished: {seen}. The "
            "server or a proxy cut the response short; try again."
        )


class ChatAnthropic(ChatModel):
    """Chat model for Anthropic's Messages API (Claude), streaming through the official SDK.

    Streams with ``anthropic.AsyncAnthropic`` (``messages.create`` with ``stream=True``):
    text and tool-use deltas arrive as :class:`~headwater.messages.AIMessageChunk` objects
    (so ``on_chat_model_stream`` events and the ``messages`` stream mode get them live;
    a tool call's chunks carry the content block's index), token usage lands in the
    message's ``usage`` (``input_tokens`` counts cached prompt tokens too), and
    ``stop_reason``, ``stop_sequence``, ``model_name`` and the message's ``id`` in its
    ``response_metadata`` (the message ``id`` itself is left to ``add_messages``).
    Extended-thinking blocks are kept in ``response_metadata["thinking_blocks"]`` and
    sent back with the message, as the API requires in a tool loop.

    System messages become the top-level ``system`` parameter, tool results
    ``tool_result`` blocks of a user turn, an AI message's tool calls ``tool_use``
    blocks; consecutive turns of one role are merged.

    Parameters: ``model``; ``api_key`` (default: the ``ANTHROPIC_API_KEY`` environment
    variable); ``base_url`` (default: ``ANTHROPIC_BASE_URL``, else Anthropic's API; the
    API root, without ``/v1``); ``max_tokens`` (default 1024: the API requires a limit);
    ``temperature`` (not sent unless given; with ``top_p`` and ``top_k`` it travels in the
    body, as SDK 1.0 dropped the arguments, and API version 2026-10-21, the default of
    SDK 2, refuses all three: send ``{"anthropic-version": "2023-06-01"}`` in
    ``extra_headers`` to use them); ``timeout`` (seconds, default the SDK's);
    ``max_retries`` (408, 409, 429, 5xx and connection errors, with backoff; default 2);
    ``model_kwargs`` (any other ``messages.create`` argument, e.g.
    ``{"stop_sequences": ["\\n\\n"], "thinking": {"type": "adaptive"}}``); and ``name``,
    ``tags``, ``metadata``, ``streaming`` of :class:`~headwater.models.ChatModel`. Keyword
    arguments given to ``invoke``/``ainvoke``/``astream`` apply to that call only.

    Failures raise :class:`~headwater.errors.ChatModelError`: HTTP errors name the status
    and the provider's error type and message; an ``error`` event mid-stream (such as
    ``overloaded_error``) and a malformed or truncated stream say what was wrong.

    Example::

        llm = ChatAnthropic(model="claude-sonnet-4-5", max_tokens=1024)
        reply = await llm.bind_tools([add]).ainvoke("What is 2 + 3?")
        reply.tool_calls  # (ToolCall(name="add", args={"a": 2, "b": 3}, id="toolu_..."),)
    """

    provider: ClassVar[str] = "anthropic"

    def __init__(
        self,
        *,
        model: str,
        api_key: str | None = None,
        base_url: str | None = None,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        temperature: float | None = None,
        timeout: float | None = None,
        max_retries: int = 2,
        model_kwargs: Mapping[str, Any] | None = None,
        name: str | None = None,
        tags: Sequence[str] | None = None,
        metadata: Mapping[str, Any] | None = None,
        streaming: bool = True,
    ) -> None:
        if not isinstance(model, str) or not model:
            raise InvalidInputError(
                f"ChatAnthropic needs model=, the Anthropic model name (e.g. "
                f"'claude-sonnet-4-5'); got {model!r}."
            )
        super().__init__(model=model, name=name, tags=tags, metadata=metadata, streaming=streaming)
        key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
        if not key:
            raise InvalidInputError(
                f"ChatAnthropic needs an API key: set the {API_KEY_ENV} environment variable "
                "or pass api_key=... (keys are made at https://console.anthropic.com)."
            )
        if max_tokens is None:
            raise InvalidInputError(
                "ChatAnthropic(max_tokens=...) must be an integer > 0: the Messages API "
                "requires a limit on every answer."
            )
        _number("max_tokens", max_tokens, positive=True, integer=True)
        _number("temperature", temperature)
        _number("timeout", timeout, positive=True)
        _number("max_retries", max_retries, integer=True)
        if max_retries is None:
            raise InvalidInputError("ChatAnthropic(max_retries=...) must be an integer >= 0.")
        if model_kwargs is not None and not isinstance(model_kwargs, Mapping):
            raise InvalidInputError(
                f"ChatAnthropic(model_kwargs=...) must be a mapping of Messages API "
                f"parameters; got {type(model_kwargs).__name__}."
            )
        _check_params(model_kwargs or {}, "ChatAnthropic(model_kwargs=...)")
        self._api_key = key
        self.base_url = base_url or os.environ.get(BASE_URL_ENV) or None
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.timeout = timeout
        self.max_retries = max_retries
        self.model_kwargs: dict[str, Any] = dict(model_kwargs or {})
        self.tools: tuple[dict[str, Any], ...] = ()
        self.tool_choice: dict[str, Any] | None = None

    def __repr__(self) -> str:
        where = f", base_url={self.base_url!r}" if self.base_url else ""
        return f"ChatAnthropic(model={self.model!r}{where})"

    def bind_tools(
        self,
        tools: Sequence[ToolLike],
        *,
        tool_choice: Any = None,
        parallel_tool_calls: bool | None = None,
    ) -> ChatAnthropic:
        """A copy of this model that offers ``tools`` to the model on every call.

        ``tools``: headwater tools (``@tool``), plain functions (their signature is the
        schema), Anthropic tool specs (``{"name", "description", "input_schema"}``, server
        tools included) or OpenAI function specs. ``tool_choice``: ``"auto"`` (the API's
        default), ``"any"`` (alias ``"required"``: some tool must be called), ``"none"``, a
        tool's name, or an Anthropic ``tool_choice`` dict. ``parallel_tool_calls=False``
        asks for at most one call per answer. The response's ``tool_calls`` are ready for
        :class:`~headwater.tools.ToolNode`.

        Example::

            llm = ChatAnthropic(model="claude-sonnet-4-5").bind_tools([add], tool_choice="any")
            reply = await llm.ainvoke("What is 2 + 3?")
        """
        specs = tools_to_anthropic(tools)
        bound = copy.copy(self)
        bound.model_kwargs = dict(self.model_kwargs)
        bound.tools = tuple(specs)
        if tool_choice is None and parallel_tool_calls is not None:
            tool_choice = "auto"
        bound.tool_choice = (
            None
            if tool_choice is None
            else tool_choice_to_anthropic(tool_choice, specs, parallel=parallel_tool_calls)
        )
        return bound

    def _request(self, messages: list[BaseMessage], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        _check_params(kwargs, "ChatAnthropic call")
        system, turns = messages_to_anthropic(messages)
        request: dict[str, Any] = {
            "model": self.model,
            "max_tokens": self.max_tokens,
            "messages": turns,
            "stream": True,
        }
        if system is not None:
            request["system"] = system
        if self.temperature is not None:
            request["temperature"] = self.temperature
        if self.tools:
            request["tools"] = list(self.tools)
        if self.tool_choice is not None:
            request["tool_choice"] = self.tool_choice
        request.update(self.model_kwargs)
        request.update(kwargs)
        if kwargs.get("tools") is not None:
            request["tools"] = tools_to_anthropic(kwargs["tools"])
        if kwargs.get("tool_choice") is not None:
            if not request.get("tools"):
                raise InvalidInputError(
                    f"tool_choice={kwargs['tool_choice']!r} needs tools: bind_tools([...]) "
                    "first, or pass tools=[...] with it."
                )
            request["tool_choice"] = tool_choice_to_anthropic(
                kwargs["tool_choice"], request.get("tools") or ()
            )
        moved = {k: request.pop(k) for k in sorted(_SAMPLING - _sdk_parameters()) if k in request}
        if moved:  # same JSON on the wire: extra_body is merged into the request body
            request["extra_body"] = {**moved, **(request.get("extra_body") or {})}
        return request

    def _client(self) -> anthropic.AsyncAnthropic:
        import anthropic

        options: dict[str, Any] = {}
        if self.timeout is not None:
            options["timeout"] = self.timeout
        return anthropic.AsyncAnthropic(
            api_key=self._api_key,
            base_url=self.base_url,
            max_retries=self.max_retries,
            http_client=anthropic.DefaultAsyncHttpxClient(verify=_ssl_context()),
            **options,
        )

    async def _astream(
        self, messages: list[BaseMessage], **kwargs: Any
    ) -> AsyncIterator[AIMessageChunk]:
        import anthropic

        request = self._request(messages, kwargs)
        client = self._client()  # one per call: a call may run on any event loop
        where = f"the Anthropic API at {client.base_url} (model {self.model!r})"
        stream = _Stream(where)
        try:
            async with client.messages.with_streaming_response.create(**request) as response:
                http = response.http_response
                events = SSEDecoder()
                body = http.aiter_bytes()
                exhausted = False
                try:
                    async for data in body:
                        if stream.events == 0 and len(stream.head) < 200:
                            stream.head += data[:200]
                        for event, payload in events.feed(data):
                            for chunk in () if stream.done else stream.handle(event, payload):
                                yield chunk
                        if stream.done:
                            break
                    else:
                        exhausted = True
                        for event, payload in events.close():
                            for chunk in () if stream.done else stream.handle(event, payload):
                                yield chunk
                finally:
                    if not exhausted:  # message_stop, an error, or the consumer left early
                        with anyio.CancelScope(shield=True):
                            await _abandon(http, body)
                if stream.stop_reason is None:
                    raise stream.truncated(http.headers.get("content-type", ""))
                usage = stream.final_usage()
                if usage is not None:
                    yield AIMessageChunk(usage=usage)
        except anthropic.APIStatusError as exc:
            sent = {*request, *(request.get("extra_body") or {})}
            raise self._status_error(exc, where, sorted(_SAMPLING & sent)) from exc
        except anthropic.APITimeoutError as exc:
            limit = f"{self.timeout} s" if self.timeout else "the SDK's default"
            raise ChatModelError(
                f"{_upper_first(where)} did not answer within the timeout ({limit}; "
                f"retried {self.max_retries} time(s)). Raise timeout=... for slow answers."
            ) from exc
        except anthropic.APIConnectionError as exc:
            raise ChatModelError(
                f"Could not reach {where}: {exc.__cause__ or exc} (after {self.max_retries} "
                "retries). Check base_url and that the server is running."
            ) from exc
        except anthropic.AnthropicError as exc:
            raise ChatModelError(f"{_upper_first(where)} failed: {exc}") from exc
        except httpx2.TimeoutException as exc:
            raise ChatModelError(
                f"The stream from {where} stalled: no data within the timeout ({exc})."
            ) from exc
        except (httpx2.TransportError, httpx2.StreamError) as exc:
            raise ChatModelError(
                f"The stream from {where} broke off: {type(exc).__name__}: {exc}."
            ) from exc
        finally:
            with anyio.CancelScope(shield=True):
                await client.close()

    def _status_error(
        self, exc: anthropic.APIStatusError, where: str, sampling: list[str]
    ) -> ChatModelError:
        status = exc.status_code
        reason = exc.response.reason_phrase or _REASONS.get(status, "")
        detail = _provider_message(exc.body, exc.message)
        hint = _HINTS.get(status, "The provider failed; try again later." if status >= 500 else "")
        if status in _RETRYABLE or status >= 500:
            hint += f" (Retried {self.max_retries} time(s).)"
        request_id = exc.request_id or (
            exc.body.get("request_id") if isinstance(exc.body, Mapping) else None
        )
        if status == 400 and sampling:
            hint += (
                f" Anthropic's API version 2026-10-21 (the default of anthropic SDK 2) refuses "
                f"{', '.join(sampling)}: leave them out, or ask for the older API version with "
                f"model_kwargs={{'extra_headers': {{'anthropic-version': '{_OLD_API}'}}}}."
            )
        if request_id:
            hint += f" Request id: {request_id}."
        status_text = f"{status} {reason}".rstrip()
        return ChatModelError(
            f"{_upper_first(where)} answered HTTP {status_text}: {detail} {hint}".rstrip(),
            status_code=status,
        )


async def _abandon(http: httpx2.Response, body: AsyncGenerator[bytes, None]) -> None:
    """Stop reading a response: close it, then let the body's generators finish.

    Just closing the body generator would abandon the HTTP library's inner async
    generators, which trio reports as a ResourceWarning; with the response closed, they
    end at once.
    """
    await http.aclose()
    with contextlib.suppress(Exception):
        async for _ in body:
            pass
    await body.aclose()


def _upper_first(text: str) -> str:
    return text[:1].upper() + text[1:]
