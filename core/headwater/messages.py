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
from typing import Annotated, Any, ClassVar, Final, TypedDict, TypeVar

import attrs

from headwater._ids import new_id
from headwater.errors import InvalidUpdateError

__all__ = [
    "REMOVE_ALL_MESSAGES",
    "AIMessage",
    "AIMessageChunk",
    "AnyMessage",
    "BaseMessage",
    "ChunkSum",
    "HumanMessage",
    "InvalidToolCall",
    "MessagesState",
    "RemoveMessage",
    "SystemMessage",
    "ToolCall",
    "ToolCallChunk",
    "ToolMessage",
    "Usage",
    "add_messages",
    "coerce_message",
    "with_id",
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

    def __getitem__(self, key: str) -> Any:
        """LangChain's dict access: ``call["name"]``, ``["args"]``, ``["id"]``, ``["type"]``.

        Example::

            call["name"], call["args"]["query"]
        """
        if key == "type":
            return "tool_call"
        if key in ("name", "args", "id"):
            return getattr(self, key)
        raise KeyError(key)

    def get(self, key: str, default: Any = None) -> Any:
        """``call.get("id")``, as on LangChain's tool-call dicts.

        Example::

            call.get("id") or "no id"
        """
        try:
            return self[key]
        except KeyError:
            return default


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

    def pretty_repr(self) -> str:
        """The message as LangChain prints it: a titled rule, the name, the content.

        Example::

            print(HumanMessage(content="hi").pretty_repr())
            # ================================ Human Message =================================
            #
            # hi
        """
        title = f" {self.type.capitalize()} Message "
        left = (80 - len(title)) // 2
        lines = ["=" * left + title + "=" * (80 - len(title) - left)]
        if self.name is not None:
            lines.append(f"Name: {self.name}")
        text = self.content if isinstance(self.content, str) else self.text
        if text:
            lines.extend(["", text])
        lines.extend(self._pretty_extra())
        return "\n".join(lines)

    def _pretty_extra(self) -> list[str]:
        return []

    def pretty_print(self) -> None:
        """Print :meth:`pretty_repr`.

        Example::

            for message in final_state["messages"]:
                message.pretty_print()
        """
        print(self.pretty_repr())

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


def _as_tool_calls(calls: Any) -> tuple[ToolCall, ...]:
    return _tool_calls(calls)  # defined below, with the other coercions


@attrs.frozen(kw_only=True)
class AIMessage(BaseMessage):
    """A complete model response, with any tool calls and the token usage.

    ``tool_calls`` may also be given as LangChain's dicts (``{"name", "args", "id"}``) or
    OpenAI's (``{"id", "function": {"name", "arguments"}}``): they become
    :class:`ToolCall` objects. ``invalid_tool_calls`` holds the calls whose arguments were
    not a JSON object.

    Example::

        AIMessage(content="", tool_calls=(ToolCall(name="search", args={"q": "x"}, id="1"),))
    """

    type: ClassVar[str] = "ai"
    tool_calls: tuple[ToolCall, ...] = attrs.field(default=(), converter=_as_tool_calls)
    invalid_tool_calls: tuple[InvalidToolCall, ...] = ()
    usage: Usage | None = None
    response_metadata: Mapping[str, Any] = attrs.field(factory=dict)

    @property
    def usage_metadata(self) -> dict[str, int] | None:
        """:attr:`usage` as LangChain's dict: ``input_tokens``, ``output_tokens``,
        ``total_tokens`` (``None`` when the provider reported none).

        Example::

            reply.usage_metadata["total_tokens"]
        """
        if self.usage is None:
            return None
        return {
            "input_tokens": self.usage.input_tokens,
            "output_tokens": self.usage.output_tokens,
            "total_tokens": self.usage.total_tokens,
        }

    def _pretty_extra(self) -> list[str]:
        if not self.tool_calls:
            return []
        lines = ["Tool Calls:"]
        for call in self.tool_calls:
            lines += [f"  {call.name} ({call.id})", f" Call ID: {call.id}", "  Args:"]
            lines += [f"    {key}: {value}" for key, value in call.args.items()]
        return lines


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


REMOVE_ALL_MESSAGES: Final = "__remove_all__"
"""The id of a :class:`RemoveMessage` that clears the list (what came before it in the
same update too), as LangGraph's constant of the same name.

Example::

    return {"messages": [RemoveMessage(id=REMOVE_ALL_MESSAGES), summary]}
"""

AnyMessage = SystemMessage | HumanMessage | AIMessage | AIMessageChunk | ToolMessage
"""Any concrete message type."""

_ROLES: dict[str, type[BaseMessage]] = {
    "system": SystemMessage,
    "developer": SystemMessage,
    "human": HumanMessage,
    "user": HumanMessage,
    "ai": AIMessage,
    "assistant": AIMessage,
    "tool": ToolMessage,
}

_ACCEPTED = (
    "expected a message, a string, a (role, content) pair, or a dict with 'role' (or "
    "'type') and 'content'; roles: system/developer, user/human, assistant/ai, and tool "
    "(with 'tool_call_id')"
)


def _tool_calls(calls: Any) -> tuple[ToolCall, ...]:
    if type(calls) is tuple and all(type(c) is ToolCall for c in calls):
        return calls
    if isinstance(calls, str | Mapping) or not isinstance(calls, Iterable):
        raise InvalidUpdateError(
            f"AIMessage.tool_calls must be a list of tool calls; got {type(calls).__name__}: "
            f"{calls!r:.80}."
        )
    return tuple(_tool_call(c) for c in calls)


def _tool_call(value: Any) -> ToolCall:
    """A tool call given as LangChain's ``{"name", "args", "id"}`` or OpenAI's
    ``{"id", "type": "function", "function": {"name", "arguments": "<json>"}}``."""
    if isinstance(value, ToolCall):
        return value
    if isinstance(value, Mapping):
        function = value.get("function")
        if isinstance(function, Mapping) and isinstance(function.get("name"), str):
            arguments = function.get("arguments") or "{}"
            try:
                args = json.loads(arguments) if isinstance(arguments, str) else arguments
            except ValueError:
                args = None
            if isinstance(args, Mapping):
                return ToolCall(name=function["name"], args=dict(args), id=value.get("id"))
        elif isinstance(value.get("name"), str) and isinstance(value.get("args", {}), Mapping):
            return ToolCall(
                name=value["name"], args=dict(value.get("args", {})), id=value.get("id")
            )
    raise InvalidUpdateError(
        f"Cannot make a tool call from {type(value).__name__} {value!r:.80}; expected "
        "{'name': ..., 'args': {...}, 'id': ...} or OpenAI's {'id': ..., 'type': 'function', "
        "'function': {'name': ..., 'arguments': '<JSON object>'}}."
    )


def _from_role(role: str, content: Any, value: Any, fields: Mapping[str, Any]) -> BaseMessage:
    cls = _ROLES.get(role)
    if cls is None:
        hint = " (use role 'tool' with 'tool_call_id')" if role == "function" else ""
        raise InvalidUpdateError(
            f"Cannot make a message from {type(value).__name__} {value!r:.80}: unknown role "
            f"{role!r}{hint}; {_ACCEPTED}."
        )
    if not isinstance(content, str | list):
        raise InvalidUpdateError(
            f"Cannot make a message from {type(value).__name__} {value!r:.80}: its content "
            f"must be a string or a list of content blocks; got {type(content).__name__}."
        )
    if cls is ToolMessage:
        call_id = fields.get("tool_call_id")
        if not isinstance(call_id, str):
            raise InvalidUpdateError(
                f"Cannot make a tool message from {type(value).__name__} {value!r:.80}: it "
                "needs the 'tool_call_id' of the call it answers, e.g. {'role': 'tool', "
                "'content': '42', 'tool_call_id': 'call_1'}."
            )
        return ToolMessage(
            content=content,
            id=fields.get("id"),
            name=fields.get("name"),
            tool_call_id=call_id,
            status=str(fields.get("status") or "success"),
        )
    if cls is AIMessage:
        usage = fields.get("usage_metadata")
        return AIMessage(
            content=content,
            id=fields.get("id"),
            name=fields.get("name"),
            tool_calls=fields.get("tool_calls") or (),
            usage=Usage(
                input_tokens=int(usage.get("input_tokens", 0)),
                output_tokens=int(usage.get("output_tokens", 0)),
            )
            if isinstance(usage, Mapping)
            else None,
            response_metadata=dict(fields.get("response_metadata") or {}),
        )
    return cls(content=content, id=fields.get("id"), name=fields.get("name"))


_FIELDS: dict[type, tuple[str, ...]] = {}
"""Per message class, the names of its fields (for :func:`with_id`)."""

M = TypeVar("M", bound=BaseMessage)


def with_id(message: M, id: str) -> M:
    """A copy of ``message`` with ``id`` (as ``attrs.evolve``, in a third of the time).

    Messages are frozen; the chat-model base uses this to give each id-less streamed
    chunk its call's id, once per token, so it must be cheap.

    Example::

        chunk = with_id(AIMessageChunk(content="Hel"), "run-1")
        chunk.id  # "run-1"
    """
    cls = type(message)
    names = _FIELDS.get(cls)
    if names is None:
        names = _FIELDS[cls] = tuple(a.name for a in attrs.fields(cls) if a.name != "id")
    copy = object.__new__(cls)
    set_field = object.__setattr__
    for name in names:
        set_field(copy, name, getattr(message, name))
    set_field(copy, "id", id)
    return copy


def coerce_message(value: Any) -> BaseMessage:
    """Turn a message-like value into a message, accepting what LangChain accepts.

    Messages; strings (a human message); ``(role, content)`` pairs (or two-item lists);
    and dicts with ``role`` or ``type`` plus ``content`` — OpenAI-style
    (``{"role": "user", "content": "hi"}``) or LangChain-style
    (``{"type": "human", "content": "hi"}``). Roles are system/developer, human/user,
    ai/assistant and tool (with ``tool_call_id``). A dict may carry ``id`` and ``name``;
    an AI message dict ``tool_calls`` (LangChain's or OpenAI's form) and
    ``usage_metadata``; a tool message dict ``status``. Other keys are ignored.

    Example::

        coerce_message(("user", "hi"))  # HumanMessage(content="hi")
        coerce_message({"type": "ai", "content": "", "tool_calls": [
            {"name": "add", "args": {"a": 1}, "id": "call_1"}]})
    """
    if isinstance(value, BaseMessage):
        return value
    if isinstance(value, str):
        return HumanMessage(content=value)
    if (
        isinstance(value, tuple | list)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], str | list)
    ):
        role, content = value
        if role == "tool":
            raise InvalidUpdateError(
                f"Cannot make a tool message from the pair {value!r:.80}: a tool message "
                "needs the 'tool_call_id' of the call it answers; give a dict such as "
                "{'role': 'tool', 'content': '42', 'tool_call_id': 'call_1'}."
            )
        return _from_role(role, content, value, {})
    if isinstance(value, Mapping):
        role = value.get("role") if "role" in value else value.get("type")
        if isinstance(role, str):
            return _from_role(role, value.get("content", ""), value, value)
    raise InvalidUpdateError(
        f"Cannot make a message from {type(value).__name__} {value!r:.80}; {_ACCEPTED}."
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
            if message.id == REMOVE_ALL_MESSAGES:  # everything so far, this update's too
                merged, index, removed = [], {}, set()
                continue
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


class MessagesState(TypedDict):
    """A ready-made state schema for chat graphs: one ``messages`` key with :func:`add_messages`.

    Subclass it to add keys, as with LangGraph's ``MessagesState``.

    Example::

        from headwater import StateGraph
        from headwater.messages import MessagesState

        class State(MessagesState):
            summary: str

        graph = StateGraph(State)
    """

    messages: Annotated[list[AnyMessage], add_messages]
