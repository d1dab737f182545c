"""Chat messages: what flows between users, chat models and tools.

All messages are frozen attrs classes. Streamed model output arrives as
:class:`AIMessageChunk` objects that add up with ``+`` (text and tool-call fragments
alike); :func:`add_messages` is the reducer for a ``messages`` state key.

Example::

    from typing import Annotated, TypedDict
    from headwater.messages import AIMessageChunk, HumanMessage, add_messages

    class ChatState(TypedDict):
        messages: Annotated[list, add_messages]

    chunk = AIMessageChunk(content="Hel") + AIMessageChunk(content="lo")
    assert chunk.content == "Hello"
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

import attrs

from headwater._ids import new_id
from headwater.errors import InvalidUpdateError

__all__ = [
    "AIMessage",
    "AIMessageChunk",
    "AnyMessage",
    "BaseMessage",
    "ChunkSum",
    "HumanMessage",
    "InvalidToolCall",
    "RemoveMessage",
    "SystemMessage",
    "ToolCall",
    "ToolCallChunk",
    "ToolMessage",
    "Usage",
    "add_messages",
    "coerce_message",
]


@attrs.frozen
class Usage:
    """Token usage of one model call.

    Example::

        Usage(input_tokens=12, output_tokens=30) + Usage(input_tokens=0, output_tokens=5)
    """

    input_tokens: int = 0
    output_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        """Input plus output tokens."""
        return self.input_tokens + self.output_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens, self.output_tokens + other.output_tokens
        )


@attrs.frozen
class ToolCall:
    """A request from a model to call a tool with arguments.

    Example::

        ToolCall(name="search", args={"query": "rivers"}, id="call_1")
    """

    name: str
    args: Mapping[str, Any] = attrs.field(factory=dict)
    id: str | None = None


@attrs.frozen
class InvalidToolCall:
    """A tool call whose streamed arguments are not a JSON object; ``error`` says why.

    Kept on :attr:`AIMessage.invalid_tool_calls` (with the raw ``args`` text) instead of
    failing the model call: :class:`~headwater.tools.ToolNode` answers it with an error
    :class:`ToolMessage`, so the model can correct itself.

    Example::

        InvalidToolCall(name="add", args='{"a": 1,', id="call_1", error="not valid JSON ...")
    """

    name: str | None = None
    args: str = ""
    id: str | None = None
    error: str = ""


@attrs.frozen
class ToolCallChunk:
    """A fragment of a streamed tool call: ``args`` is a piece of its JSON text.

    Chunks with the same ``index`` belong to one call and concatenate when added.

    Example::

        ToolCallChunk(name="search", args='{"que', id="call_1", index=0)
    """

    name: str | None = None
    args: str = ""
    id: str | None = None
    index: int | None = None


@attrs.frozen(kw_only=True)
class BaseMessage:
    """Fields every message has: ``content``, ``id`` and an optional ``name``.

    Example::

        HumanMessage(content="hi").type  # "human"
    """

    type: ClassVar[str] = "base"
    content: str | list[Any] = ""
    id: str | None = None
    name: str | None = None

    @property
    def text(self) -> str:
        """The message's text (text blocks joined when content is a list of blocks)."""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for block in self.content:
            if isinstance(block, str):
                parts.append(block)
            elif isinstance(block, Mapping) and block.get("type") == "text":
                parts.append(str(block.get("text", "")))
        return "".join(parts)


@attrs.frozen(kw_only=True)
class SystemMessage(BaseMessage):
    """Instructions for the model.

    Example::

        SystemMessage(content="You are terse.")
    """

    type: ClassVar[str] = "system"


@attrs.frozen(kw_only=True)
class HumanMessage(BaseMessage):
    """A message from the user.

    Example::

        HumanMessage(content="What is a river?")
    """

    type: ClassVar[str] = "human"


@attrs.frozen(kw_only=True)
class AIMessage(BaseMessage):
    """A complete model response, with any tool calls and the token usage.

    ``invalid_tool_calls`` holds the calls whose arguments were not a JSON object.

    Example::

        AIMessage(content="", tool_calls=(ToolCall(name="search", args={"q": "x"}, id="1"),))
    """

    type: ClassVar[str] = "ai"
    tool_calls: tuple[ToolCall, ...] = ()
    invalid_tool_calls: tuple[InvalidToolCall, ...] = ()
    usage: Usage | None = None
    response_metadata: Mapping[str, Any] = attrs.field(factory=dict)


def _merge_tool_chunks(
    left: tuple[ToolCallChunk, ...], right: tuple[ToolCallChunk, ...]
) -> tuple[ToolCallChunk, ...]:
    merged = list(left)
    for chunk in right:
        for i, existing in enumerate(merged):
            if chunk.index is not None and existing.index == chunk.index:
                merged[i] = ToolCallChunk(
                    name=existing.name or chunk.name,
                    args=existing.args + chunk.args,
                    id=existing.id or chunk.id,
                    index=existing.index,
                )
                break
        else:
            merged.append(chunk)
    return tuple(merged)


@attrs.frozen(kw_only=True)
class AIMessageChunk(BaseMessage):
    """One streamed piece of a model response; chunks add up with ``+``.

    ``content`` strings concatenate (a list of content blocks, once either side has one);
    tool-call fragments with the same ``index`` join into the first with that index;
    usage adds up; ``id`` and ``name`` are the first given; ``response_metadata`` merges,
    later keys winning. To add up many chunks, :meth:`merge` does it
    in linear time. :meth:`to_message` turns the sum into an :class:`AIMessage`.

    Example::

        total = AIMessageChunk(content="Hel") + AIMessageChunk(content="lo")
        total.to_message().content  # "Hello"
    """

    type: ClassVar[str] = "AIMessageChunk"
    tool_call_chunks: tuple[ToolCallChunk, ...] = ()
    usage: Usage | None = None
    response_metadata: Mapping[str, Any] = attrs.field(factory=dict)

    def __add__(self, other: AIMessageChunk) -> AIMessageChunk:
        if not isinstance(other, AIMessageChunk):
            return NotImplemented
        return AIMessageChunk.merge((self, other))

    @classmethod
    def merge(cls, chunks: Iterable[AIMessageChunk]) -> AIMessageChunk:
        """The sum of ``chunks``, as ``c1 + c2 + ...`` gives it, in linear time.

        Adding chunks one by one copies the text so far on every ``+``, which grows with
        the square of a long response; this does not.

        Example::

            parts = [AIMessageChunk(content=t) for t in ("Riv", "ers", " run")]
            assert AIMessageChunk.merge(parts) == parts[0] + parts[1] + parts[2]
        """
        total = ChunkSum()
        for chunk in chunks:
            total.add(chunk)
        return total.result()

    @property
    def tool_calls(self) -> tuple[ToolCall, ...]:
        """The tool calls whose JSON arguments are complete so far."""
        calls = []
        for chunk in self.tool_call_chunks:
            try:
                args = json.loads(chunk.args) if chunk.args else {}
            except json.JSONDecodeError:
                continue
            calls.append(ToolCall(name=chunk.name or "", args=args, id=chunk.id))
        return tuple(calls)

    def to_message(self) -> AIMessage:
        """The complete :class:`AIMessage` this (summed) chunk represents.

        A tool call whose arguments are not a JSON object goes to ``invalid_tool_calls``,
        with an ``error`` saying why.
        """
        calls = []
        invalid = []
        for chunk in self.tool_call_chunks:
            try:
                args = json.loads(chunk.args) if chunk.args else {}
            except json.JSONDecodeError as exc:
                error = f"not valid JSON ({exc})"
            else:
                if isinstance(args, dict):
                    calls.append(ToolCall(name=chunk.name or "", args=args, id=chunk.id))
                    continue
                error = f"a JSON {type(args).__name__}, not an object"
            invalid.append(
                InvalidToolCall(
                    name=chunk.name,
                    args=chunk.args,
                    id=chunk.id,
                    error=f"Tool call {chunk.name!r} (id {chunk.id!r}) has arguments that are "
                    f"{error}: {chunk.args!r:.120}. Expected one JSON object of arguments.",
                )
            )
        return AIMessage(
            content=self.content,
            id=self.id,
            name=self.name,
            tool_calls=tuple(calls),
            invalid_tool_calls=tuple(invalid),
            usage=self.usage,
            response_metadata=self.response_metadata,
        )


class _Text:
    """A string built from many small pieces in linear time and compact memory."""

    __slots__ = ("blocks", "pieces")

    def __init__(self) -> None:
        self.blocks: list[str] = []
        self.pieces: list[str] = []

    def add(self, piece: str) -> None:
        pieces = self.pieces
        pieces.append(piece)
        if len(pieces) >= 64:  # fold small pieces into one block: few objects kept
            self.blocks.append("".join(pieces))
            pieces.clear()

    def value(self) -> str:
        return "".join(self.blocks) + "".join(self.pieces)


class ChunkSum:
    """Adds up streamed :class:`AIMessageChunk` objects one at a time, in linear time.

    ``result()`` equals the left fold ``c1 + c2 + ...`` of the chunks added so far, but
    keeps no chunk: text and tool-call arguments go into compact buffers. What a chat
    model uses to assemble its response while streaming.

    Example::

        total = ChunkSum()
        for chunk in chunks:
            total.add(chunk)
        message = total.result().to_message()
    """

    __slots__ = (
        "_blocks",
        "_calls",
        "_id",
        "_meta",
        "_name",
        "_text",
        "_usage",
    )

    def __init__(self) -> None:
        self._text = _Text()
        self._blocks: list[Any] | None = None  # once any content is a list of blocks
        self._id: str | None = None
        self._name: str | None = None
        self._calls: list[list[Any]] = []  # [name, id, _Text args, index]
        self._meta: dict[str, Any] = {}
        self._usage: Usage | None = None

    def add(self, chunk: AIMessageChunk) -> None:
        """Add the next chunk.

        Example::

            total.add(AIMessageChunk(content="Hel"))
        """
        content = chunk.content
        if self._blocks is None and isinstance(content, str):
            if content:
                self._text.add(content)
        else:
            if self._blocks is None:  # from now on, content is a list of blocks
                self._blocks = _as_blocks(self._text.value())
            self._blocks.extend(_as_blocks(content))
        self._id = self._id or chunk.id
        self._name = self._name or chunk.name
        for part in chunk.tool_call_chunks:
            self._add_call(part)
        usage = chunk.usage
        if usage is not None:
            self._usage = usage if self._usage is None else self._usage + usage
        if chunk.response_metadata:
            self._meta.update(chunk.response_metadata)

    def _add_call(self, part: ToolCallChunk) -> None:
        if part.index is not None:
            for entry in self._calls:
                if entry[3] == part.index:
                    entry[0] = entry[0] or part.name
                    entry[1] = entry[1] or part.id
                    entry[2].add(part.args)
                    return
        args = _Text()
        args.add(part.args)
        self._calls.append([part.name, part.id, args, part.index])

    def result(self) -> AIMessageChunk:
        """The sum of the chunks added so far (an empty chunk if none).

        Example::

            total.result().content  # "Hello"
        """
        content = list(self._blocks) if self._blocks is not None else self._text.value()
        return AIMessageChunk(
            content=content,
            id=self._id,
            name=self._name,
            tool_call_chunks=tuple(
                ToolCallChunk(name=name, args=args.value(), id=id_, index=index)
                for name, id_, args, index in self._calls
            ),
            usage=self._usage,
            response_metadata=dict(self._meta),
        )


def _as_blocks(content: str | list[Any]) -> list[Any]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    return list(content)


@attrs.frozen(kw_only=True)
class ToolMessage(BaseMessage):
    """The result of one tool call, answering the call with ``tool_call_id``.

    Example::

        ToolMessage(content="42", tool_call_id="call_1", name="calculator")
    """

    type: ClassVar[str] = "tool"
    tool_call_id: str
    status: str = "success"


@attrs.frozen(kw_only=True)
class RemoveMessage(BaseMessage):
    """Returned in a ``messages`` update to delete the message with this ``id``.

    Example::

        return {"messages": [RemoveMessage(id=old.id)]}
    """

    type: ClassVar[str] = "remove"


AnyMessage = SystemMessage | HumanMessage | AIMessage | AIMessageChunk | ToolMessage
"""Any concrete message type."""

_ROLES: dict[str, type[BaseMessage]] = {
    "system": SystemMessage,
    "human": HumanMessage,
    "user": HumanMessage,
    "ai": AIMessage,
    "assistant": AIMessage,
}


def coerce_message(value: Any) -> BaseMessage:
    """Turn a message-like value into a message.

    Accepts messages, strings (a human message), ``(role, content)`` pairs and
    ``{"role": ..., "content": ...}`` dicts; roles are system, human/user, ai/assistant
    and tool (with ``tool_call_id``).

    Example::

        coerce_message(("user", "hi"))  # HumanMessage(content="hi")
    """
    if isinstance(value, BaseMessage):
        return value
    if isinstance(value, str):
        return HumanMessage(content=value)
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str):
        role, content = value
        cls = _ROLES.get(role)
        if cls is not None:
            return cls(content=content)
    if isinstance(value, Mapping) and isinstance(value.get("role") or value.get("type"), str):
        role = value.get("role") or value.get("type")
        fields = {k: v for k, v in value.items() if k in ("content", "id", "name")}
        if role == "tool":
            return ToolMessage(tool_call_id=str(value.get("tool_call_id", "")), **fields)
        cls = _ROLES.get(str(role))
        if cls is not None:
            return cls(**fields)
    raise InvalidUpdateError(
        f"Cannot make a message from {type(value).__name__} {value!r:.80}; expected a message, "
        "a string, a (role, content) pair or a {'role': ..., 'content': ...} dict with role "
        "system, user/human, assistant/ai or tool."
    )


def add_messages(
    current: Sequence[BaseMessage] | None, new: Iterable[Any] | BaseMessage | str
) -> list[BaseMessage]:
    """Reducer for message lists: append, replace by ``id``, delete with RemoveMessage.

    Messages without an id get one, so later updates can replace or remove them;
    :class:`AIMessageChunk` values are stored as complete :class:`AIMessage`.

    Example::

        class ChatState(TypedDict):
            messages: Annotated[list, add_messages]
    """
    items = [new] if isinstance(new, BaseMessage | str | tuple | Mapping) else list(new)
    merged = list(current or ())
    index = {m.id: i for i, m in enumerate(merged) if m.id is not None}
    removed: set[str] = set()
    for raw in items:
        message = coerce_message(raw)
        if isinstance(message, AIMessageChunk):
            message = message.to_message()
        if message.id is None:
            message = attrs.evolve(message, id=new_id())
        assert message.id is not None
        if isinstance(message, RemoveMessage):
            if message.id not in index:
                raise InvalidUpdateError(
                    f"RemoveMessage(id={message.id!r}) names no message in the list; ids "
                    f"present: {sorted(index)[:10]}."
                )
            removed.add(message.id)
            continue
        if message.id in index:
            merged[index[message.id]] = message
            removed.discard(message.id)
        else:
            index[message.id] = len(merged)
            merged.append(message)
    if removed:
        merged = [m for m in merged if m.id not in removed]
    return merged
