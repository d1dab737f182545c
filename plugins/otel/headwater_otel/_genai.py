"""headwater's values in the shapes of the OpenTelemetry GenAI semantic conventions.

Message contents follow the conventions' input/output messages JSON schemas
(``[{"role": "user", "parts": [{"type": "text", "content": "..."}]}]``), recorded on
spans as JSON strings. Everything recorded is bounded: each text part is cut at
:data:`PART_LIMIT` characters, and a conversation longer than :data:`TOTAL_LIMIT` keeps
its most recent messages.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from headwater.messages import AIMessage, BaseMessage, ToolMessage

__all__ = [
    "PART_LIMIT",
    "TOTAL_LIMIT",
    "documents",
    "error_type",
    "input_messages",
    "output_messages",
    "plain_json",
]

PART_LIMIT = 16_384
"""Characters kept of one text part (or one tool argument or result) before a cut mark."""

TOTAL_LIMIT = 262_144
"""Characters one content attribute may reach; older messages are left out beyond it."""

_ROLES = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool"}


def _cut(text: str, limit: int = PART_LIMIT) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}…[{len(text) - limit} more characters]"


def plain_json(value: Any, limit: int = PART_LIMIT) -> str:
    """``value`` as a JSON string (anything not JSON-native by its ``str``), cut at ``limit``."""
    if isinstance(value, str):
        return _cut(value, limit)
    try:
        text = json.dumps(value, default=_default, ensure_ascii=False)
    except (TypeError, ValueError):  # circular, or a key JSON cannot have
        text = repr(value)
    return _cut(text, limit)


def _default(value: Any) -> Any:
    if isinstance(value, BaseMessage):
        return _message(value)
    for attribute in ("page_content", "content"):
        if hasattr(value, attribute):
            return str(getattr(value, attribute))
    return str(value)


def _parts(message: BaseMessage) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    if isinstance(message, ToolMessage):
        parts.append(
            {"type": "tool_call_response", "id": message.tool_call_id, "result": _cut(message.text)}
        )
        return parts
    text = message.text
    if text:
        parts.append({"type": "text", "content": _cut(text)})
    if isinstance(message, AIMessage):
        for call in message.tool_calls:
            encoded = plain_json(call.args)
            small = len(encoded) < PART_LIMIT and isinstance(call.args, Mapping)
            parts.append(
                {
                    "type": "tool_call",
                    "id": call.id,
                    "name": call.name,
                    "arguments": call.args if small else encoded,
                }
            )
    return parts


def _message(message: BaseMessage) -> dict[str, Any]:
    out: dict[str, Any] = {"role": _ROLES.get(message.type, message.type), "parts": _parts(message)}
    if message.name:
        out["name"] = message.name
    return out


def _bounded(items: list[str]) -> str:
    """A JSON array of already-encoded ``items``, keeping the latest that fit the limit."""
    kept: list[str] = []
    size = 2
    for item in reversed(items):
        size += len(item) + 1
        if size > TOTAL_LIMIT and kept:
            break
        kept.append(_cut(item, TOTAL_LIMIT))
    kept.reverse()
    return "[" + ",".join(kept) + "]"


def input_messages(messages: Any) -> str | None:
    """``gen_ai.input.messages``: the chat history sent to the model, as JSON."""
    if not isinstance(messages, Sequence) or isinstance(messages, str):
        return None
    encoded = [
        json.dumps(_message(m), ensure_ascii=False, default=str)
        for m in messages
        if isinstance(m, BaseMessage)
    ]
    return _bounded(encoded)


def output_messages(response: Any, finish_reason: str | None) -> str | None:
    """``gen_ai.output.messages``: the model's answer (one choice), as JSON."""
    if not isinstance(response, BaseMessage):
        return None
    message = _message(response)
    message["role"] = "assistant"
    if finish_reason is not None:
        message["finish_reason"] = finish_reason
    return _bounded([json.dumps(message, ensure_ascii=False, default=str)])


def documents(docs: Any) -> str | None:
    """``gen_ai.retrieval.documents``: the retrieved documents (id, content, score)."""
    if not isinstance(docs, Sequence) or isinstance(docs, str):
        return None
    encoded = []
    for doc in docs:
        item: dict[str, Any] = {}
        doc_id = getattr(doc, "id", None)
        if doc_id is not None:
            item["id"] = str(doc_id)
        metadata = getattr(doc, "metadata", None)
        if isinstance(metadata, Mapping) and isinstance(metadata.get("score"), int | float):
            item["score"] = metadata["score"]
        item["content"] = _cut(str(getattr(doc, "page_content", doc)))
        encoded.append(json.dumps(item, ensure_ascii=False, default=str))
    return _bounded(encoded)


def error_type(error: BaseException) -> str:
    """``error.type``: the exception's qualified class name (``builtins`` left out)."""
    cls = type(error)
    module = cls.__module__
    return cls.__qualname__ if module in ("builtins", "") else f"{module}.{cls.__qualname__}"
