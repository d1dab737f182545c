"""Tools models can call: the :func:`tool` decorator and :class:`ToolNode`.

A tool emits ``on_tool_start`` (data ``input``), then ``on_tool_end`` (``output``: what
it returned; the :class:`~headwater.messages.ToolMessage` when it was called with a
:class:`~headwater.messages.ToolCall`, as by :class:`ToolNode`) or ``on_tool_error``
(``error``), named after the tool, inside the run of the node that calls it.

Example::

    from headwater.tools import ToolNode, tool

    @tool
    def add(a: int, b: int) -> int:
        \"\"\"Add two integers.\"\"\"
        return a + b

    graph.add_node("tools", ToolNode([add]))
"""

from __future__ import annotations

import functools
import inspect
import json
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, overload

from headwater._concurrency import in_thread, run_all
from headwater._observe import Observed
from headwater._sync import run_sync
from headwater._types import END
from headwater.errors import HeadwaterError
from headwater.messages import AIMessage, BaseMessage, ToolCall, ToolMessage
from headwater.runtime import current_task

__all__ = ["Tool", "ToolError", "ToolNode", "tool", "tools_condition"]


class ToolError(HeadwaterError, ValueError):
    """A tool was called with arguments that do not fit its signature, or is unknown.

    Example::

        add.invoke({"a": 1})  # ToolError: Tool 'add' is missing required argument 'b' ...
    """


_JSON_TYPES: dict[Any, str] = {
    int: "integer",
    float: "number",
    str: "string",
    bool: "boolean",
    list: "array",
    tuple: "array",
    dict: "object",
}


def _json_type(annotation: Any) -> dict[str, Any]:
    origin = typing.get_origin(annotation) or annotation
    if origin in (typing.Union, types.UnionType):
        options = [_json_type(a) for a in typing.get_args(annotation) if a is not type(None)]
        return options[0] if len(options) == 1 else {"anyOf": options}
    if origin is typing.Literal:
        return {"enum": list(typing.get_args(annotation))}
    name = _JSON_TYPES.get(origin)
    return {"type": name} if name else {}


class Tool:
    """A callable the model can request by name, with a JSON schema of its arguments.

    Made by :func:`tool`. ``invoke(args)`` / ``await ainvoke(args)`` run it with a mapping
    of arguments (or a :class:`~headwater.messages.ToolCall`, giving a ToolMessage back).

    Example::

        add.invoke({"a": 1, "b": 2})  # 3
        add.schema["parameters"]["required"]  # ["a", "b"]
    """

    def __init__(
        self, fn: Callable[..., Any], *, name: str | None = None, description: str | None = None
    ) -> None:
        self.fn = fn
        self.name = name or fn.__name__
        self.description = description if description is not None else inspect.getdoc(fn) or ""
        self.is_async = inspect.iscoroutinefunction(fn)
        signature = inspect.signature(fn)
        hints = typing.get_type_hints(fn)
        properties: dict[str, Any] = {}
        required: list[str] = []
        for param in signature.parameters.values():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                continue
            properties[param.name] = _json_type(hints.get(param.name, Any))
            if param.default is param.empty:
                required.append(param.name)
        self.parameters = list(properties)
        self.required = required
        self.schema: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "parameters": {"type": "object", "properties": properties, "required": required},
        }

    def __repr__(self) -> str:
        return f"Tool({self.name!r})"

    def _check(self, args: Any) -> dict[str, Any]:
        if not isinstance(args, Mapping):
            raise ToolError(
                f"Tool {self.name!r} takes a mapping of arguments {self.parameters}; got "
                f"{type(args).__name__}: {args!r:.80}."
            )
        unknown = sorted(set(args) - set(self.parameters))
        if unknown:
            raise ToolError(
                f"Tool {self.name!r} got unknown argument(s) {unknown}; it takes {self.parameters}."
            )
        missing = [p for p in self.required if p not in args]
        if missing:
            raise ToolError(
                f"Tool {self.name!r} is missing required argument(s) {missing}; it takes "
                f"{self.parameters}."
            )
        return dict(args)

    @overload
    async def ainvoke(self, input: ToolCall) -> ToolMessage: ...
    @overload
    async def ainvoke(self, input: Mapping[str, Any]) -> Any: ...

    async def ainvoke(self, input: Any) -> Any:
        """Run the tool; sync tools run in a worker thread.

        Example::

            result = await add.ainvoke({"a": 1, "b": 2})
        """
        call = input if isinstance(input, ToolCall) else None
        args = self._check(call.args if call is not None else input)
        observed = Observed("tool", self.name)
        observed.emit("start", {"input": args})
        try:
            if self.is_async:
                result = await self.fn(**args)
            else:
                task = current_task.get()
                fn = functools.partial(self.fn, **args)
                if task is None:
                    result = await in_thread(None, fn)
                else:
                    result = await in_thread(task.run.bus, fn, abandon=task.timed)
        except BaseException as exc:  # cancelled too: every start gets an end
            observed.emit("error", {"error": exc})
            raise
        if call is None:
            observed.emit("end", {"output": result})
            return result
        content = result if isinstance(result, str) else json.dumps(result, default=str)
        message = ToolMessage(content=content, tool_call_id=call.id or "", name=self.name)
        observed.emit("end", {"output": message})  # as LangChain: called with a call, a message
        return message

    def invoke(self, input: Any) -> Any:
        """Sync :meth:`ainvoke`.

        Example::

            add.invoke({"a": 1, "b": 2})  # 3
        """
        return run_sync(
            functools.partial(self.ainvoke, input),
            what=f"{type(self).__name__}.invoke()",
            instead="In an async node use `await tool.ainvoke(...)`.",
        )


@overload
def tool(fn: Callable[..., Any], /) -> Tool: ...
@overload
def tool(
    *, name: str | None = None, description: str | None = None
) -> Callable[[Callable[..., Any]], Tool]: ...


def tool(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Make a :class:`Tool` from a sync or async function (schema from its signature).

    Example::

        @tool
        async def search(query: str, k: int = 3) -> list[str]:
            \"\"\"Search the notes.\"\"\"
            return notes.search(query, k)
    """
    if fn is not None:
        return Tool(fn, name=name, description=description)
    return lambda f: Tool(f, name=name, description=description)


class ToolNode:
    """A node that runs the tool calls of the last AI message, concurrently.

    Returns ``{"messages": [ToolMessage, ...]}`` in the order of the calls. A failing
    tool becomes a ToolMessage with ``status="error"`` (so the model can react) unless
    ``handle_errors=False``, in which case the exception propagates. So does each of the
    message's ``invalid_tool_calls`` (arguments that are not a JSON object), after the
    valid calls' results.

    Example::

        graph.add_node("tools", ToolNode([search, add]))
    """

    def __init__(
        self,
        tools: Sequence[Tool | Callable[..., Any]],
        *,
        messages_key: str = "messages",
        handle_errors: bool = True,
    ) -> None:
        self.tools = {t.name: t for t in (x if isinstance(x, Tool) else Tool(x) for x in tools)}
        self.messages_key = messages_key
        self.handle_errors = handle_errors
        self.__name__ = "tools"

    async def __call__(self, state: Any) -> dict[str, Any]:
        messages = (
            state.get(self.messages_key)
            if isinstance(state, Mapping)
            else getattr(state, self.messages_key, None)
        )
        last = messages[-1] if messages else None
        if not isinstance(last, AIMessage):
            raise ToolError(
                f"ToolNode needs the last message of state[{self.messages_key!r}] to be an "
                f"AIMessage with tool calls; got {type(last).__name__}."
            )
        results: list[BaseMessage | None] = [None] * len(last.tool_calls)

        async def run(i: int, call: ToolCall) -> None:
            selected = self.tools.get(call.name)
            try:
                if selected is None:
                    raise ToolError(f"Unknown tool {call.name!r}; available: {sorted(self.tools)}.")
                results[i] = await selected.ainvoke(call)
            except Exception as exc:
                if not self.handle_errors:
                    raise
                results[i] = ToolMessage(
                    content=f"Error: {type(exc).__name__}: {exc}",
                    tool_call_id=call.id or "",
                    name=call.name,
                    status="error",
                )

        if last.invalid_tool_calls and not self.handle_errors:
            raise ToolError(last.invalid_tool_calls[0].error)
        # The first error not handled cancels the other calls and is raised as it is.
        _, failure = await run_all(
            [functools.partial(run, i, call) for i, call in enumerate(last.tool_calls)]
        )
        if failure is not None:
            raise failure[1]
        answers = [r for r in results if r is not None]
        for invalid in last.invalid_tool_calls:
            answers.append(
                ToolMessage(
                    content=f"Error: ToolError: {invalid.error}",
                    tool_call_id=invalid.id or "",
                    name=invalid.name,
                    status="error",
                )
            )
        return {self.messages_key: answers}


def tools_condition(state: Any, messages_key: str = "messages") -> Literal["tools", "__end__"]:
    """A router for ``add_conditional_edges``: ``"tools"`` when the last message asks for
    tool calls, else ``END``.

    ``state`` may be the graph's state (a mapping or an object with the messages key) or
    a list of messages. Route to a :class:`ToolNode` added under the name ``"tools"``.

    Example::

        graph.add_node("agent", agent)
        graph.add_node("tools", ToolNode([search]))
        graph.add_conditional_edges("agent", tools_condition)
        graph.add_edge("tools", "agent")
    """
    messages: Any
    if isinstance(state, list | tuple):
        messages = state
    elif isinstance(state, Mapping):
        messages = state.get(messages_key)
    else:
        messages = getattr(state, messages_key, None)
    if not messages:
        raise ToolError(
            f"tools_condition found no messages in the state under {messages_key!r} (got "
            f"{type(state).__name__}); route it after a node that adds an AI message, or pass "
            "messages_key=... naming the state key that holds the messages."
        )
    last = messages[-1]
    return "tools" if getattr(last, "tool_calls", None) else END
