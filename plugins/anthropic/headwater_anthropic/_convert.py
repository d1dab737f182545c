"""headwater messages and tools to the Anthropic Messages API request format."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from headwater.errors import InvalidInputError
from headwater.http_chat import content_block
from headwater.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from headwater.tools import Tool

__all__ = [
    "THINKING_BLOCKS",
    "messages_to_anthropic",
    "tool_choice_to_anthropic",
    "tool_to_anthropic",
]

THINKING_BLOCKS = "thinking_blocks"
"""The ``response_metadata`` key of an answer's thinking blocks, sent back with it."""

_TOOL_CHOICES = {"auto": "auto", "none": "none", "any": "any", "required": "any"}


def _blocks(content: str | list[Any], where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    return [content_block(b, where) for b in content]


def _assistant(message: AIMessage) -> list[dict[str, Any]]:
    thinking = message.response_metadata.get(THINKING_BLOCKS) or []
    blocks = [dict(b) for b in thinking if isinstance(b, Mapping)]
    blocks += [  # the API refuses empty text blocks
        b for b in _blocks(message.content, "AIMessage") if b != {"type": "text", "text": ""}
    ]
    blocks += [
        {"type": "tool_use", "id": call.id, "name": call.name, "input": dict(call.args)}
        for call in message.tool_calls
    ]
    # A call whose arguments were not a JSON object goes back with no input: the error
    # ToolMessage answering its id quotes the text the model wrote.
    blocks += [
        {"type": "tool_use", "id": call.id, "name": call.name or "", "input": {}}
        for call in message.invalid_tool_calls
    ]
    return blocks


def _turn(message: BaseMessage) -> tuple[str, str | list[dict[str, Any]]]:
    if isinstance(message, HumanMessage):
        content = message.content
        return "user", content if isinstance(content, str) else _blocks(content, "HumanMessage")
    if isinstance(message, AIMessage):
        blocks = _assistant(message)
        if len(blocks) == 1 and blocks[0]["type"] == "text" and len(blocks[0]) == 2:
            return "assistant", str(blocks[0]["text"])
        return "assistant", blocks
    if isinstance(message, ToolMessage):
        content = message.content
        result: dict[str, Any] = {
            "type": "tool_result",
            "tool_use_id": message.tool_call_id,
            "content": content if isinstance(content, str) else _blocks(content, "ToolMessage"),
        }
        if message.status == "error":
            result["is_error"] = True
        return "user", [result]
    raise InvalidInputError(
        f"ChatAnthropic cannot send a {type(message).__name__} to the model; it sends "
        "SystemMessage, HumanMessage, AIMessage and ToolMessage."
    )


def _merge(role: str, left: Any, right: Any) -> list[dict[str, Any]]:
    blocks = _blocks(left, role) + _blocks(right, role)
    if role == "user":  # the API wants a user turn's tool results before anything else
        blocks.sort(key=lambda b: b.get("type") != "tool_result")
    return blocks


def messages_to_anthropic(
    messages: Sequence[BaseMessage],
) -> tuple[str | list[dict[str, Any]] | None, list[dict[str, Any]]]:
    """The Messages API's ``system`` and ``messages`` for a list of headwater messages.

    System messages, wherever they are, make the top-level ``system`` (a string for one
    text message, else a list of text blocks, kept in order). Tool results become
    ``tool_result`` blocks of a user turn, an AI message's tool calls ``tool_use``
    blocks; consecutive turns of one role are merged into one, as the API requires.
    An AI message with nothing to say (no text, no tool calls) is left out.

    Example::

        system, turns = messages_to_anthropic([SystemMessage(content="Be brief."), "hi"])
        # "Be brief.", [{"role": "user", "content": "hi"}]
    """
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for message in messages:
        if isinstance(message, SystemMessage):
            system += _blocks(message.content, "SystemMessage")
            continue
        role, content = _turn(message)
        if not content:
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"] = _merge(role, turns[-1]["content"], content)
        else:
            turns.append({"role": role, "content": content})
    if not system:
        return None, turns
    if len(system) == 1 and system[0].keys() == {"type", "text"}:
        return str(system[0]["text"]), turns
    return system, turns


def tool_to_anthropic(item: Any) -> dict[str, Any]:
    """The Anthropic ``tools`` spec of a headwater tool, a function, or a ready spec.

    Example::

        tool_to_anthropic(add)
        # {"name": "add", "input_schema": {...}, "description": "Add two integers."}
    """
    if isinstance(item, Mapping):
        function = item.get("function")
        if (
            item.get("type") == "function"
            and isinstance(function, Mapping)
            and isinstance(function.get("name"), str)
        ):
            spec = {
                "name": function.get("name"),
                "description": function.get("description"),
                "input_schema": function.get("parameters") or {"type": "object"},
            }
            return {k: v for k, v in spec.items() if v}
        if isinstance(item.get("name"), str) and ("input_schema" in item or "type" in item):
            return dict(item)  # an Anthropic tool spec, or a server tool such as web search
    elif isinstance(item, Tool) or callable(item):
        made = item if isinstance(item, Tool) else Tool(item)
        spec = {"name": made.name, "input_schema": dict(made.schema["parameters"])}
        if made.description:
            spec["description"] = made.description
        return spec
    raise InvalidInputError(
        f"Cannot bind {type(item).__name__} {item!r:.80} as a tool; expected a headwater "
        "tool (@tool), a plain function, an Anthropic tool spec "
        "{'name': ..., 'description': ..., 'input_schema': {...}} or an OpenAI one "
        "{'type': 'function', 'function': {...}}."
    )


def tool_choice_to_anthropic(
    choice: Any, specs: Sequence[Mapping[str, Any]], *, parallel: bool | None = None
) -> dict[str, Any]:
    """Anthropic ``tool_choice`` for "auto", "none", "any" ("required"), a tool name, or a dict.

    ``parallel=False`` adds ``disable_parallel_tool_use`` (at most one call per answer).

    Example::

        tool_choice_to_anthropic("add", specs)  # {"type": "tool", "name": "add"}
        tool_choice_to_anthropic("required", specs)  # {"type": "any"}
    """
    names = [spec.get("name") for spec in specs]
    out: dict[str, Any]
    if isinstance(choice, Mapping):
        out = dict(choice)
    elif isinstance(choice, str) and choice in _TOOL_CHOICES:
        out = {"type": _TOOL_CHOICES[choice]}
    elif isinstance(choice, str) and choice in names:
        out = {"type": "tool", "name": choice}
    else:
        raise InvalidInputError(
            f"tool_choice={choice!r} is neither 'auto', 'none', 'any' ('required') nor the "
            f"name of a bound tool; bound tools: {names}."
        )
    if parallel is not None and out.get("type") != "none":
        out["disable_parallel_tool_use"] = not parallel
    return out
