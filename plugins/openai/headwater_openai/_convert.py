"""headwater messages and tools to the Chat Completions request format."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from headwater.errors import InvalidInputError
from headwater.http_chat import content_block
from headwater.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from headwater.tools import Tool

__all__ = ["message_to_openai", "tool_choice_to_openai", "tool_to_openai"]

_TOOL_CHOICES = {"auto": "auto", "none": "none", "required": "required", "any": "required"}


def message_to_openai(message: BaseMessage) -> dict[str, Any]:
    """One headwater message as a Chat Completions message dict.

    Example::

        message_to_openai(HumanMessage(content="hi"))  # {"role": "user", "content": "hi"}
    """
    out: dict[str, Any]
    if isinstance(message, SystemMessage):
        out = {"role": "system", "content": message.text}
    elif isinstance(message, HumanMessage):
        content = message.content
        parts: str | list[dict[str, Any]] = (
            content
            if isinstance(content, str)
            else [content_block(b, "HumanMessage") for b in content]
        )
        out = {"role": "user", "content": parts}
    elif isinstance(message, AIMessage):
        calls = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": json.dumps(dict(call.args))},
            }
            for call in message.tool_calls
        ]
        calls += [  # sent back as the model wrote them, so the error answers match an id
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name or "", "arguments": call.args},
            }
            for call in message.invalid_tool_calls
        ]
        out = {"role": "assistant", "content": message.text or (None if calls else "")}
        if calls:
            out["tool_calls"] = calls
    elif isinstance(message, ToolMessage):
        return {"role": "tool", "tool_call_id": message.tool_call_id, "content": message.text}
    else:
        raise InvalidInputError(
            f"ChatOpenAI cannot send a {type(message).__name__} to the model; it sends "
            "SystemMessage, HumanMessage, AIMessage and ToolMessage."
        )
    if message.name:
        out["name"] = message.name
    return out


def tool_to_openai(item: Any) -> dict[str, Any]:
    """The OpenAI ``tools`` spec of a headwater tool, a plain function or a ready spec.

    Example::

        tool_to_openai(add)  # {"type": "function", "function": {"name": "add", ...}}
    """
    if isinstance(item, Mapping):
        if item.get("type") == "function" and isinstance(item.get("function"), Mapping):
            return dict(item)
        if isinstance(item.get("name"), str):
            return {"type": "function", "function": dict(item)}
    elif isinstance(item, Tool) or callable(item):
        made = item if isinstance(item, Tool) else Tool(item)
        return {"type": "function", "function": dict(made.schema)}
    raise InvalidInputError(
        f"Cannot bind {type(item).__name__} {item!r:.80} as a tool; expected a headwater "
        "tool (@tool), a plain function, or an OpenAI tool spec "
        "{'type': 'function', 'function': {'name': ..., 'parameters': {...}}}."
    )


def tool_choice_to_openai(choice: Any, specs: Sequence[Mapping[str, Any]]) -> Any:
    """OpenAI ``tool_choice`` for "auto", "none", "required" ("any"), a tool name, or a dict.

    Example::

        tool_choice_to_openai("add", specs)  # {"type": "function", "function": {"name": "add"}}
    """
    if isinstance(choice, Mapping):
        return dict(choice)
    names = [(spec.get("function") or {}).get("name") for spec in specs]
    if isinstance(choice, str):
        if choice in _TOOL_CHOICES:
            return _TOOL_CHOICES[choice]
        if choice in names:
            return {"type": "function", "function": {"name": choice}}
    raise InvalidInputError(
        f"tool_choice={choice!r} is neither 'auto', 'none', 'required' ('any') nor the name "
        f"of a bound tool; bound tools: {names}."
    )
