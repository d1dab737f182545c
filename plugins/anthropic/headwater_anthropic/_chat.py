"""ChatAnthropic: Messages API streaming through the official ``anthropic`` SDK.

Only the provider's mapping is here; the settings, the streaming loop and the error
handling are :class:`headwater.http_chat.HTTPChatModel`'s.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

from headwater.http_chat import ChatStream, HTTPChatModel, StainlessSDK, parameters_of
from headwater.messages import AIMessageChunk, BaseMessage, ToolCallChunk, Usage
from headwater.runtime import new_id
from headwater_anthropic._convert import (
    THINKING_BLOCKS,
    messages_to_anthropic,
    tool_choice_to_anthropic,
    tool_to_anthropic,
)
from headwater_anthropic._env import API_KEY_ENV, BASE_URL_ENV, DEFAULT_MAX_TOKENS

__all__ = ["ChatAnthropic"]

_SAMPLING = frozenset({"temperature", "top_k", "top_p"})
"""Sampling parameters: the anthropic SDK >= 1.0 no longer takes them, the API may still."""
_OLD_API = "2023-06-01"


@functools.cache
def _sdk_parameters() -> frozenset[str]:
    """Keyword arguments the installed SDK's ``messages.create`` accepts."""
    from anthropic.resources.messages import AsyncMessages

    return parameters_of(AsyncMessages.create)


class _Stream(ChatStream):
    """What one streamed message has said so far; turns events into chunks."""

    finish_field = "stop_reason"
    end_marker = "message_stop"
    expected = (
        'Messages API events: `event: <type>` then `data: {"type": <type>, ...}`, from '
        "message_start to message_stop"
    )

    def __init__(self, chat_model: HTTPChatModel, where: str) -> None:
        super().__init__(chat_model, where)
        self.id: str | None = None
        self.model_name: str | None = None
        self.counts: dict[str, Any] = {}
        self.tools: set[int] = set()
        self.thinking: dict[int, dict[str, Any]] = {}
        self.handlers: dict[str, Callable[[Mapping[str, Any], str], list[AIMessageChunk]]] = {
            "message_start": self.on_message_start,
            "content_block_start": self.on_content_block_start,
            "content_block_delta": self.on_content_block_delta,
            "message_delta": self.on_message_delta,
            "message_stop": self.on_message_stop,
        }

    def handle(self, event: str, data: str) -> list[AIMessageChunk]:
        payload = self.parse(event, data)
        kind = payload.get("type")
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
        self.model_name = message.get("model") if isinstance(message.get("model"), str) else None
        self.count(message.get("usage"))
        return []

    def on_message_delta(self, payload: Mapping[str, Any], data: str) -> list[AIMessageChunk]:
        delta = payload.get("delta")
        if not isinstance(delta, Mapping):
            raise self.malformed("a message_delta without a 'delta' object", data)
        self.count(payload.get("usage"))
        if not delta.get("stop_reason"):
            return []
        self.finish_reason = str(delta["stop_reason"])
        metadata: dict[str, Any] = {
            "stop_reason": self.finish_reason,
            "stop_sequence": delta.get("stop_sequence"),
            "model_name": self.model_name,
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
        index, block = self.indexed(payload, "content_block", "a block", data)
        kind = block.get("type")
        if kind == "text":
            return self.text(block.get("text") or "", "a text block", data)
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
        index, delta = self.indexed(payload, "delta", "a delta", data)
        kind = delta.get("type")
        if kind == "text_delta":
            return self.text(delta.get("text"), "a text_delta", data)
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

    def indexed(
        self, payload: Mapping[str, Any], key: str, what: str, data: str
    ) -> tuple[int, Mapping[str, Any]]:
        """A content block event's index and its ``key`` object (a block or a delta)."""
        index, value = payload.get("index"), payload.get(key)
        if isinstance(index, bool) or not isinstance(index, int) or not isinstance(value, Mapping):
            raise self.malformed(f"a {payload['type']} without an integer index and {what}", data)
        return index, value

    def text(self, text: object, what: str, data: str) -> list[AIMessageChunk]:
        if not isinstance(text, str):
            raise self.malformed(f"{what} whose 'text' is not a string", data)
        return [AIMessageChunk(content=text)] if text else []

    def count(self, usage: object) -> None:
        if isinstance(usage, Mapping):
            self.counts.update((k, v) for k, v in usage.items() if v is not None)

    def final_usage(self) -> Usage | None:
        if not self.counts:
            return None

        def number(key: str) -> int:
            value = self.counts.get(key)
            return value if isinstance(value, int) and not isinstance(value, bool) else 0

        cached = number("cache_creation_input_tokens") + number("cache_read_input_tokens")
        return Usage(
            input_tokens=number("input_tokens") + cached,
            output_tokens=number("output_tokens"),
        )


class ChatAnthropic(HTTPChatModel):
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

    ``bind_tools`` takes headwater tools (``@tool``), plain functions (their signature is
    the schema), Anthropic tool specs (``{"name", "description", "input_schema"}``, server
    tools included) or OpenAI function specs; ``tool_choice`` is ``"auto"`` (the API's
    default), ``"any"`` (alias ``"required"``), ``"none"``, a tool's name, or an Anthropic
    ``tool_choice`` dict; ``parallel_tool_calls=False`` asks for at most one call per answer.

    Example::

        thinking = {"thinking": {"type": "adaptive"}}
        thinker = ChatAnthropic(model="claude-sonnet-4-5", max_tokens=8192, model_kwargs=thinking)
        reply = await thinker.bind_tools([add], tool_choice="any").ainvoke("What is 2 + 3?")
        reply.response_metadata["thinking_blocks"]  # sent back with the message in a tool loop
    """

    provider: ClassVar[str] = "anthropic"
    api_name = "the Anthropic API"
    api_key_env = API_KEY_ENV
    base_url_env = BASE_URL_ENV
    api_key_help = " (keys are made at https://console.anthropic.com)."
    model_example = "claude-sonnet-4-5"
    reserved: ClassVar[Mapping[str, str]] = {
        "system": "put instructions in a SystemMessage; it becomes the system parameter"
    }
    parameter_kind = "a Messages API parameter of the anthropic SDK"
    parameter_aliases: ClassVar[Mapping[str, str]] = {
        "stop": "stop_sequences",
        "max_completion_tokens": "max_tokens",
    }
    requires_max_tokens = True
    status_hints: ClassVar[Mapping[int, str]] = {
        400: "The API rejected the request; check the messages, tools and parameters.",
        401: f"Check the API key ({API_KEY_ENV} or api_key=...).",
        403: "The key is not allowed to use this model or resource.",
        404: "Check the model name, and that base_url is the API root (without /v1).",
        413: "The request is too large for the API.",
        429: "Rate limited: slow down, or raise max_retries.",
        529: "Anthropic's API is overloaded; try again later, or raise max_retries.",
    }
    status_reasons: ClassVar[Mapping[int, str]] = {
        529: "Overloaded"
    }  # not a registered HTTP status: no standard phrase
    error_type_key = "type"
    stream_type = _Stream
    sdk = StainlessSDK(
        module="anthropic", client="AsyncAnthropic", resource="messages", error="AnthropicError"
    )

    def __init__(self, *, model: str, max_tokens: int = DEFAULT_MAX_TOKENS, **options: Any) -> None:
        super().__init__(model=model, max_tokens=max_tokens, **options)

    def _parameters(self) -> frozenset[str]:
        return _sdk_parameters() | _SAMPLING

    def _request_messages(self, messages: list[BaseMessage]) -> dict[str, Any]:
        system, turns = messages_to_anthropic(messages)
        return {"messages": turns} if system is None else {"messages": turns, "system": system}

    def _finish_request(self, request: dict[str, Any]) -> dict[str, Any]:
        moved = {k: request.pop(k) for k in sorted(_SAMPLING - _sdk_parameters()) if k in request}
        if moved:  # same JSON on the wire: extra_body is merged into the request body
            request["extra_body"] = {**moved, **(request.get("extra_body") or {})}
        return request

    def _tool_spec(self, tool: Any) -> dict[str, Any]:
        return tool_to_anthropic(tool)

    def _tool_choice(
        self, choice: Any, specs: Sequence[Mapping[str, Any]], parallel: bool | None
    ) -> dict[str, Any] | None:
        if choice is None and parallel is None:
            return None
        return tool_choice_to_anthropic(choice or "auto", specs, parallel=parallel)

    def _status_hint(self, status: int, request: Mapping[str, Any]) -> str:
        sampling = sorted(_SAMPLING & {*request, *(request.get("extra_body") or {})})
        if status != 400 or not sampling:
            return ""
        return (
            f"Anthropic's API version 2026-10-21 (the default of anthropic SDK 2) refuses "
            f"{', '.join(sampling)}: leave them out, or ask for the older API version with "
            f"model_kwargs={{'extra_headers': {{'anthropic-version': '{_OLD_API}'}}}}."
        )
