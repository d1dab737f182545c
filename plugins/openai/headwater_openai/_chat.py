"""ChatOpenAI: Chat Completions streaming through the official ``openai`` SDK."""

from __future__ import annotations

import contextlib
import copy
import functools
import inspect
import json
import os
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from typing import Any, ClassVar

import anyio
import httpx2
import openai
from openai.resources.chat.completions import AsyncCompletions

from headwater.errors import ChatModelError, InvalidInputError
from headwater.messages import AIMessageChunk, BaseMessage, ToolCallChunk, Usage
from headwater.models import ChatModel
from headwater.runtime import new_id
from headwater.sse import SSEDecoder
from headwater_openai._convert import (
    ToolLike,
    message_to_openai,
    tool_choice_to_openai,
    tools_to_openai,
)
from headwater_openai._env import API_KEY_ENV, BASE_URL_ENV

__all__ = ["ChatOpenAI"]

_RESERVED = {
    "messages": "the messages are the model's input",
    "model": "set model= when making the ChatOpenAI",
    "stream": "ChatOpenAI always streams",
}
_RETRYABLE = {408, 409, 429}
_HINTS = {
    400: "The server rejected the request; check the messages, tools and parameters.",
    401: f"Check the API key ({API_KEY_ENV} or api_key=...).",
    403: "The key is not allowed to use this model or endpoint.",
    404: "Check the model name, and that base_url is the API root (e.g. ending in /v1).",
    429: "Rate limited or out of quota: slow down, or raise max_retries.",
}


@functools.cache
def _create_parameters() -> frozenset[str]:
    """Keyword arguments the SDK's ``chat.completions.create`` accepts."""
    return frozenset(inspect.signature(AsyncCompletions.create).parameters) - {"self"}


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
            f"ChatOpenAI({name}=...) must be {kind} >= 0 or None; got {value!r}."
        )
    if positive and value == 0:
        raise InvalidInputError(f"ChatOpenAI({name}=...) must be greater than 0; got {value!r}.")


def _check_params(params: Mapping[str, Any], where: str) -> None:
    known = _create_parameters()
    for key in params:
        if key in _RESERVED:
            raise InvalidInputError(f"{where} cannot set {key!r}: {_RESERVED[key]}.")
        if key not in known:
            raise InvalidInputError(
                f"{where} got {key!r}, which is not a Chat Completions parameter of the openai "
                f"SDK. Pass provider-specific parameters in extra_body={{{key!r}: ...}}."
            )
    if params.get("n", 1) != 1:
        raise InvalidInputError(f"{where}: ChatOpenAI streams one choice; n must be 1.")


def _provider_message(body: object, fallback: str) -> str:
    if isinstance(body, Mapping):
        inner = body.get("error", body)
        if isinstance(inner, Mapping) and isinstance(inner.get("message"), str):
            return str(inner["message"])
        if isinstance(inner, str):
            return inner
    if isinstance(body, str) and body:
        return body
    return fallback


class _Stream:
    """What one streamed completion has said so far; turns events into chunks."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.id: str | None = None
        self.events = 0
        self.done = False
        self.finish_reason: str | None = None
        self.usage: Usage | None = None
        self.head = b""
        self.refusal = ""
        self.tool_ids: dict[int, str] = {}

    def malformed(self, what: str, data: str) -> ChatModelError:
        return ChatModelError(
            f"{self.where} sent a malformed stream chunk ({what}): {data!r:.200}. Expected "
            'Chat Completions chunks: `data: {"choices": [...], ...}` events, then `data: '
            "[DONE]`."
        )

    def handle(self, data: str) -> list[AIMessageChunk]:
        if data.strip() == "[DONE]":
            self.done = True
            return []
        self.events += 1
        try:
            payload = json.loads(data)
        except ValueError as exc:
            raise self.malformed(f"not JSON: {exc}", data) from exc
        if not isinstance(payload, dict):
            raise self.malformed("not a JSON object", data)
        if payload.get("error"):
            message = _provider_message(payload, str(payload["error"]))
            raise ChatModelError(f"{self.where} reported an error mid-stream: {message}")
        choices = payload.get("choices")
        if not isinstance(choices, list):
            raise self.malformed("no 'choices' list", data)
        if isinstance(payload.get("id"), str):
            self.id = self.id or payload["id"]
        usage = payload.get("usage")
        if isinstance(usage, Mapping):
            prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
            self.usage = Usage(
                input_tokens=prompt if isinstance(prompt, int) else 0,
                output_tokens=completion if isinstance(completion, int) else 0,
            )
        out = []
        for choice in choices:
            if not isinstance(choice, Mapping) or not isinstance(
                choice.get("delta") or {}, Mapping
            ):
                raise self.malformed("a choice whose 'delta' is not an object", data)
            if choice.get("index", 0) != 0:
                continue
            chunk = self.choice(choice, payload, data)
            if chunk is not None:
                out.append(chunk)
        return out

    def choice(
        self, choice: Mapping[str, Any], payload: Mapping[str, Any], data: str
    ) -> AIMessageChunk | None:
        delta = choice.get("delta") or {}
        content = delta.get("content")
        if content is not None and not isinstance(content, str):
            raise self.malformed("'content' is not a string", data)
        if isinstance(delta.get("refusal"), str):
            self.refusal += delta["refusal"]
        calls = []
        deltas = delta.get("tool_calls") or []
        if not isinstance(deltas, list):
            raise self.malformed("'tool_calls' is not a list", data)
        for position, call in enumerate(deltas):
            function = (call.get("function") or {}) if isinstance(call, Mapping) else None
            if not isinstance(call, Mapping) or not isinstance(function, Mapping):
                raise self.malformed("a tool call that is not an object with a 'function'", data)
            index, call_id = call.get("index", position), call.get("id")
            name, args = function.get("name"), function.get("arguments") or ""
            if not isinstance(index, int) or not all(
                isinstance(v, str | None) for v in (call_id, name, args)
            ):
                raise self.malformed("a tool call with a non-integer index or non-text", data)
            if index not in self.tool_ids:  # some local servers send no id: make one
                call_id = call_id or f"call_{new_id()}"
                self.tool_ids[index] = call_id
            calls.append(ToolCallChunk(name=name, args=args, id=call_id, index=index))
        metadata: dict[str, Any] = {}
        finish = choice.get("finish_reason")
        if finish:
            self.finish_reason = str(finish)
            metadata["finish_reason"] = self.finish_reason
            metadata["model_name"] = payload.get("model")
            metadata["id"] = self.id
            if payload.get("system_fingerprint"):
                metadata["system_fingerprint"] = payload["system_fingerprint"]
            if self.refusal:
                metadata["refusal"] = self.refusal
        if not content and not calls and not metadata:
            return None
        return AIMessageChunk(
            content=content or "",
            tool_call_chunks=tuple(calls),
            response_metadata=metadata,
        )

    def truncated(self, content_type: str) -> ChatModelError:
        if self.events == 0:
            seen = (
                f"no stream events at all (content-type {content_type!r}, body starts "
                f"with {self.head[:200]!r})"
            )
        else:
            seen = f"{self.events} chunk(s) but no finish_reason" + (
                "" if self.done else " and no [DONE]"
            )
        return ChatModelError(
            f"The stream from {self.where} ended before the model finished: {seen}. The "
            "server or a proxy cut the response short; try again."
        )


class ChatOpenAI(ChatModel):
    """Chat model for OpenAI-compatible Chat Completions APIs (OpenAI, vLLM, llama.cpp, Ollama).

    Streams through the official SDK (``openai.AsyncOpenAI``, ``stream=True`` with
    ``stream_options={"include_usage": True}``): text and tool-call deltas arrive as
    :class:`~headwater.messages.AIMessageChunk` objects (so ``on_chat_model_stream`` events
    and the ``messages`` stream mode get them live), token usage lands in the message's
    ``usage``, and ``finish_reason``, ``model_name`` and the completion's ``id`` in its
    ``response_metadata`` (the message ``id`` is left to ``add_messages``: a server that
    reuses completion ids must not make one answer replace another).

    Parameters: ``model``; ``api_key`` (default: the ``OPENAI_API_KEY`` environment
    variable; a local server that checks no key takes any value); ``base_url`` (default:
    ``OPENAI_BASE_URL``, else OpenAI's API); ``temperature``; ``max_tokens``; ``timeout``
    (seconds, default the SDK's); ``max_retries`` (429, 5xx and connection errors, with
    backoff; default 2); ``model_kwargs`` (any other ``chat.completions.create`` argument,
    e.g. ``{"top_p": 0.9, "stop": ["\\n"], "extra_body": {"top_k": 20}}``); and ``name``,
    ``tags``, ``metadata``, ``streaming`` of :class:`~headwater.models.ChatModel`. Keyword
    arguments given to ``invoke``/``ainvoke``/``astream`` apply to that call only.

    Failures raise :class:`~headwater.errors.ChatModelError`: HTTP errors name the status
    and the provider's message; a malformed or truncated stream says what was wrong.

    Example::

        llm = ChatOpenAI(model="gpt-4o-mini", temperature=0)
        local = ChatOpenAI(model="qwen2.5", base_url="http://localhost:11434/v1", api_key="x")
        reply = await llm.bind_tools([add]).ainvoke("What is 2 + 3?")
        reply.tool_calls  # (ToolCall(name="add", args={"a": 2, "b": 3}, id="call_..."),)
    """

    provider: ClassVar[str] = "openai"

    def __init__(
        self,
        *,
        model: str,
        api_key: str | None = None,
        base_url: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
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
                f"ChatOpenAI needs model=, the provider's model name (e.g. 'gpt-4o-mini'); "
                f"got {model!r}."
            )
        super().__init__(model=model, name=name, tags=tags, metadata=metadata, streaming=streaming)
        key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
        if not key:
            raise InvalidInputError(
                f"ChatOpenAI needs an API key: set the {API_KEY_ENV} environment variable or "
                "pass api_key=... . A local server that checks no key (vLLM, llama.cpp, "
                "Ollama) takes any value, e.g. api_key='local'."
            )
        _number("temperature", temperature)
        _number("max_tokens", max_tokens, positive=True, integer=True)
        _number("timeout", timeout, positive=True)
        _number("max_retries", max_retries, integer=True)
        if max_retries is None:
            raise InvalidInputError("ChatOpenAI(max_retries=...) must be an integer >= 0.")
        if model_kwargs is not None and not isinstance(model_kwargs, Mapping):
            raise InvalidInputError(
                f"ChatOpenAI(model_kwargs=...) must be a mapping of Chat Completions "
                f"parameters; got {type(model_kwargs).__name__}."
            )
        _check_params(model_kwargs or {}, "ChatOpenAI(model_kwargs=...)")
        self._api_key = key
        self.base_url = base_url or os.environ.get(BASE_URL_ENV) or None
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.timeout = timeout
        self.max_retries = max_retries
        self.model_kwargs: dict[str, Any] = dict(model_kwargs or {})
        self.tools: tuple[dict[str, Any], ...] = ()
        self.tool_choice: Any = None

    def __repr__(self) -> str:
        where = f", base_url={self.base_url!r}" if self.base_url else ""
        return f"ChatOpenAI(model={self.model!r}{where})"

    def bind_tools(self, tools: Sequence[ToolLike], *, tool_choice: Any = None) -> ChatOpenAI:
        """A copy of this model that offers ``tools`` to the model on every call.

        ``tools``: headwater tools (``@tool``), plain functions (their signature is the
        schema) or OpenAI tool specs. ``tool_choice``: ``"auto"`` (the default), ``"none"``,
        ``"required"`` (alias ``"any"``), a tool's name, or an OpenAI ``tool_choice`` dict.
        The response's ``tool_calls`` are ready for :class:`~headwater.tools.ToolNode`.

        Example::

            llm = ChatOpenAI(model="gpt-4o-mini").bind_tools([add, search])
            reply = await llm.ainvoke("What is 2 + 3?")
        """
        specs = tools_to_openai(tools)
        bound = copy.copy(self)
        bound.model_kwargs = dict(self.model_kwargs)
        bound.tools = tuple(specs)
        bound.tool_choice = (
            None if tool_choice is None else tool_choice_to_openai(tool_choice, specs)
        )
        return bound

    def _request(self, messages: list[BaseMessage], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        _check_params(kwargs, "ChatOpenAI call")
        request: dict[str, Any] = {
            "model": self.model,
            "messages": [message_to_openai(m) for m in messages],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if self.temperature is not None:
            request["temperature"] = self.temperature
        if self.max_tokens is not None:
            request["max_tokens"] = self.max_tokens
        if self.tools:
            request["tools"] = list(self.tools)
        if self.tool_choice is not None:
            request["tool_choice"] = self.tool_choice
        request.update(self.model_kwargs)
        request.update(kwargs)
        if kwargs.get("tools") is not None:
            request["tools"] = tools_to_openai(kwargs["tools"])
        return request

    def _client(self) -> openai.AsyncOpenAI:
        options: dict[str, Any] = {}
        if self.timeout is not None:
            options["timeout"] = self.timeout
        return openai.AsyncOpenAI(
            api_key=self._api_key,
            base_url=self.base_url,
            max_retries=self.max_retries,
            http_client=openai.DefaultAsyncHttpxClient(verify=_ssl_context()),
            **options,
        )

    async def _astream(
        self, messages: list[BaseMessage], **kwargs: Any
    ) -> AsyncIterator[AIMessageChunk]:
        request = self._request(messages, kwargs)
        client = self._client()  # one per call: a call may run on any event loop
        where = f"the OpenAI-compatible API at {client.base_url} (model {self.model!r})"
        stream = _Stream(where)
        try:
            async with client.chat.completions.with_streaming_response.create(
                **request
            ) as response:
                http = response.http_response
                events = SSEDecoder()
                body = http.aiter_bytes()
                exhausted = False
                try:
                    async for data in body:
                        if stream.events == 0 and len(stream.head) < 200:
                            stream.head += data[:200]
                        for _, event in events.feed(data):
                            for chunk in () if stream.done else stream.handle(event):
                                yield chunk
                        if stream.done:
                            break
                    else:
                        exhausted = True
                        for _, event in events.close():
                            for chunk in () if stream.done else stream.handle(event):
                                yield chunk
                finally:
                    if not exhausted:  # [DONE], an error, or the consumer left early
                        with anyio.CancelScope(shield=True):
                            await _abandon(http, body)
                if stream.finish_reason is None:
                    raise stream.truncated(http.headers.get("content-type", ""))
                if stream.usage is not None:
                    yield AIMessageChunk(usage=stream.usage)
        except openai.APIStatusError as exc:
            raise self._status_error(exc, where) from exc
        except openai.APITimeoutError as exc:
            limit = f"{self.timeout} s" if self.timeout else "the SDK's default"
            raise ChatModelError(
                f"{_upper_first(where)} did not answer within the timeout ({limit}; "
                f"retried {self.max_retries} time(s)). Raise timeout=... for slow models."
            ) from exc
        except openai.APIConnectionError as exc:
            raise ChatModelError(
                f"Could not reach {where}: {exc.__cause__ or exc} (after {self.max_retries} "
                "retries). Check base_url and that the server is running."
            ) from exc
        except openai.APIError as exc:
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

    def _status_error(self, exc: openai.APIStatusError, where: str) -> ChatModelError:
        status = exc.status_code
        reason = exc.response.reason_phrase
        detail = _provider_message(exc.body, exc.message)
        hint = _HINTS.get(status, "The provider failed; try again later." if status >= 500 else "")
        if status in _RETRYABLE or status >= 500:
            hint += f" (Retried {self.max_retries} time(s).)"
        return ChatModelError(
            f"{_upper_first(where)} answered HTTP {status} {reason}: {detail} {hint}".rstrip(),
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
