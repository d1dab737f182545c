"""ChatOpenAI: Chat Completions streaming through the official ``openai`` SDK.

Only the provider's mapping is here; the settings, the streaming loop and the error
handling are :class:`headwater.http_chat.HTTPChatModel`'s.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from openai.resources.chat.completions import AsyncCompletions  # imports the SDK: seconds

from headwater.errors import InvalidInputError
from headwater.http_chat import ChatStream, HTTPChatModel, StainlessSDK, parameters_of
from headwater.messages import AIMessageChunk, BaseMessage, ToolCallChunk, Usage
from headwater.runtime import new_id
from headwater_openai._convert import message_to_openai, tool_choice_to_openai, tool_to_openai
from headwater_openai._env import API_KEY_ENV, BASE_URL_ENV

__all__ = ["ChatOpenAI"]


class _Stream(ChatStream):
    """What one streamed completion has said so far; turns chunks into message chunks."""

    unit = "chunk"
    end_marker = "[DONE]"
    expected = (
        'Chat Completions chunks: `data: {"choices": [...], ...}` events, then `data: [DONE]`'
    )

    def __init__(self, chat_model: HTTPChatModel, where: str) -> None:
        super().__init__(chat_model, where)
        self.id: str | None = None
        self.refusal = ""
        self.tool_ids: dict[int, str] = {}

    def handle(self, event: str, data: str) -> list[AIMessageChunk]:
        if data.strip() == "[DONE]":
            self.done = True
            return []
        payload = self.parse(event, data)
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


class ChatOpenAI(HTTPChatModel):
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
    Everything but the Chat Completions mapping is :class:`~headwater.http_chat.HTTPChatModel`'s.

    ``bind_tools`` takes headwater tools (``@tool``), plain functions (their signature is
    the schema) or OpenAI tool specs; ``tool_choice`` is ``"auto"``, ``"none"``,
    ``"required"`` (alias ``"any"``), a tool's name or an OpenAI ``tool_choice`` dict;
    ``parallel_tool_calls=False`` asks for at most one call per answer.

    Example::

        local = ChatOpenAI(model="qwen2.5", base_url="http://localhost:11434/v1", api_key="x")
        agent = ChatOpenAI(model="gpt-4o-mini").bind_tools([add], parallel_tool_calls=False)
        (call,) = (await agent.ainvoke("What is 2 + 3?")).tool_calls  # id "call_..."
    """

    provider: ClassVar[str] = "openai"
    api_name = "the OpenAI-compatible API"
    api_key_env = API_KEY_ENV
    base_url_env = BASE_URL_ENV
    api_key_help = (
        " . A local server that checks no key (vLLM, llama.cpp, Ollama) takes any value, "
        "e.g. api_key='local'."
    )
    model_example = "gpt-4o-mini"
    parameter_kind = "a Chat Completions parameter of the openai SDK"
    status_hints: ClassVar[Mapping[int, str]] = {
        400: "The server rejected the request; check the messages, tools and parameters.",
        401: f"Check the API key ({API_KEY_ENV} or api_key=...).",
        403: "The key is not allowed to use this model or endpoint.",
        404: "Check the model name, and that base_url is the API root (e.g. ending in /v1).",
        429: "Rate limited or out of quota: slow down, or raise max_retries.",
    }
    stream_type = _Stream
    sdk = StainlessSDK(module="openai", client="AsyncOpenAI", resource="chat.completions")

    def _parameters(self) -> frozenset[str]:
        return parameters_of(AsyncCompletions.create)

    def _check_parameters(self, params: Mapping[str, Any], where: str) -> None:
        super()._check_parameters(params, where)
        if params.get("n", 1) != 1:
            raise InvalidInputError(f"{where}: ChatOpenAI streams one choice; n must be 1.")

    def _request_messages(self, messages: list[BaseMessage]) -> dict[str, Any]:
        return {"messages": [message_to_openai(m) for m in messages]}

    def _finish_request(self, request: dict[str, Any]) -> dict[str, Any]:
        request.setdefault("stream_options", {"include_usage": True})
        if self.parallel_tool_calls is not None and request.get("tools"):
            request.setdefault("parallel_tool_calls", self.parallel_tool_calls)
        return request

    def _tool_spec(self, tool: Any) -> dict[str, Any]:
        return tool_to_openai(tool)

    def _tool_choice(
        self, choice: Any, specs: Sequence[Mapping[str, Any]], parallel: bool | None
    ) -> Any:
        return None if choice is None else tool_choice_to_openai(choice, specs)
