"""headwater messages and tools to the Chat Completions request format."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from headwater.errors import InvalidInputError
from headwater.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from headwater.tools import Tool

__all__ = ["ToolLike", "message_to_openai", "tool_choice_to_openai", "tools_to_openai"]

ToolLike = Tool | Callable[..., Any] | Mapping[str, Any]
"""What ``bind_tools`` accepts: a headwater tool, a plain function, or an OpenAI tool spec."""

_TOOL_CHOICES = {"auto": "auto", "none": "none", "required": "required", "any": "required"}


def _user_part(block: Any) -> dict[str, Any]:
    if isinstance(block, str):
        return {"type": "text", "text": block}
    if isinstance(block, Mapping):
        return dict(block)
    raise InvalidInputError(
        f"A content block of a HumanMessage must be a string or an OpenAI content part "
        f"(a dict such as {{'type': 'text', 'text': ...}}); got {type(block).__name__}: "
        f"{block!r:.80}."
    )


def message_to_openai(message: BaseMessage) -> dict[str, Any]:
    """One headwater message as a Chat Completions message dict.

    Example::

        message_to_openai(HumanMessage(content="hi"))  # {"role": "user", "content": "hi"}
    """
    if isinstance(message, AIMessageChunk):
        message = message.to_message()
    out: dict[str, Any]
    if isinstance(message, SystemMessage):
        out = {"role": "system", "content": message.text}
    elif isinstance(message, HumanMessage):
        content = message.content
        parts: str | list[dict[str, Any]] = (
            content if isinstance(content, str) else [_user_part(b) for b in content]
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


def _tool_spec(item: Any) -> dict[str, Any]:
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


def tools_to_openai(tools: Sequence[ToolLike]) -> list[dict[str, Any]]:
    """OpenAI ``tools`` specs for headwater tools, functions or ready specs (names unique).

    Example::

        tools_to_openai([add])  # [{"type": "function", "function": {"name": "add", ...}}]
    """
    if isinstance(tools, str | Mapping) or not isinstance(tools, Sequence):
        raise InvalidInputError(
            f"bind_tools takes a list of tools; got {type(tools).__name__}: {tools!r:.80}."
        )
    specs = [_tool_spec(item) for item in tools]
    names = [spec["function"].get("name") for spec in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InvalidInputError(f"Tool names must be unique; bound twice: {duplicates}.")
    return specs


def tool_choice_to_openai(choice: Any, specs: Sequence[Mapping[str, Any]]) -> Any:
    """OpenAI ``tool_choice`` for "auto", "none", "required" ("any"), a tool name, or a dict.

    Example::

        tool_choice_to_openai("add", specs)  # {"type": "function", "function": {"name": "add"}}
    """
    if isinstance(choice, Mapping):
        return dict(choice)
    names = [spec["function"].get("name") for spec in specs]
    if isinstance(choice, str):
        if choice in _TOOL_CHOICES:
            return _TOOL_CHOICES[choice]
        if choice in names:
            return {"type": "function", "function": {"name": choice}}
    raise InvalidInputError(
        f"tool_choice={choice!r} is neither 'auto', 'none', 'required' ('any') nor the name "
        f"of a bound tool; bound tools: {names}."
    )
