"""Chat models: the :class:`ChatModel` base every adapter builds on, and the registry.

An adapter implements one async generator, :meth:`ChatModel._astream`, yielding
:class:`~headwater.messages.AIMessageChunk` objects. The base class provides ``invoke``,
``ainvoke``, ``stream``, ``astream`` and ``batch``, and emits the model's events into the
run of the node it is called from: ``on_chat_model_start`` (data ``messages``, ``input``),
one ``on_chat_model_stream`` per chunk (``chunk``), ``on_chat_model_end`` (``response``,
``output``) or ``on_chat_model_error`` (``error``). A model without an explicit ``name``
takes the name of the node it runs in; ``metadata["ls_model_name"]`` and
``["ls_provider"]`` say which model it was.

A sync ``llm.invoke()`` inside a sync node (a worker thread) runs the model on the event
loop, so its tokens stream live while the node waits.

Example::

    from headwater.models import ChatModel
    from headwater.messages import AIMessageChunk

    class Echo(ChatModel):
        provider = "echo"

        async def _astream(self, messages, **kwargs):
            for word in messages[-1].text.split():
                yield AIMessageChunk(content=word + " ")
"""

from __future__ import annotations

import abc
import functools
import inspect
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Mapping, Sequence
from typing import Any, ClassVar

import anyio
import anyio.from_thread

from headwater._concurrency import run_all
from headwater._ids import new_id
from headwater._observe import Observed
from headwater._plugins import REGISTRIES, PluginManager, get_plugin_manager
from headwater._sync import in_running_node, on_event_loop, run_sync
from headwater.errors import HeadwaterError, InvalidInputError
from headwater.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChunkSum,
    coerce_message,
    with_id,
)

__all__ = ["KNOWN_PROVIDERS", "ChatModel", "init_chat_model"]

KNOWN_PROVIDERS: Mapping[str, str] = REGISTRIES["headwater_chat_models"].known
"""Providers with a standard plugin, and the distribution that supplies each (from the
plugin manager's one install-hint table).

Example::

    KNOWN_PROVIDERS["openai"]   # "headwater-openai"
"""


def _messages(input: Any) -> list[BaseMessage]:
    if isinstance(input, BaseMessage | str):
        return [coerce_message(input)]
    if isinstance(input, Sequence):
        return [coerce_message(m) for m in input]
    raise InvalidInputError(
        f"A chat model takes a message, a string or a list of messages; got "
        f"{type(input).__name__}: {input!r:.80}."
    )


class ChatModel(abc.ABC):
    """Base class of chat-model adapters; implement :meth:`_astream`.

    Parameters: ``model`` (the provider's model name), ``name`` (the event name; default:
    the node's name), ``tags`` (added to the model's events; ``"nostream"`` hides its
    tokens from the ``messages`` stream mode), ``metadata``, ``streaming`` (kept for
    LangChain compatibility: headwater always streams).

    Example::

        llm = init_chat_model("openai:gpt-4o-mini")
        reply = await llm.ainvoke([HumanMessage(content="hi")])
    """

    provider: ClassVar[str] = "unknown"
    _takes_call_id: ClassVar[bool] = False
    """Whether :meth:`_astream` declares ``call_id`` (then the base passes it)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._takes_call_id = "call_id" in inspect.signature(cls._astream).parameters

    def __init__(
        self,
        *,
        model: str = "",
        name: str | None = None,
        tags: Sequence[str] | None = None,
        metadata: Mapping[str, Any] | None = None,
        streaming: bool = True,
    ) -> None:
        self.model = model
        self.name = name
        self.tags: tuple[str, ...] = tuple(tags or ())
        self.metadata: Mapping[str, Any] = dict(metadata or {})
        self.streaming = streaming

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model!r})"

    @abc.abstractmethod
    def _astream(self, messages: list[BaseMessage], **kwargs: Any) -> AsyncIterator[AIMessageChunk]:
        """Yield the response as chunks. The one method an adapter must implement.

        A chunk without an ``id`` is given the call's id (its events' run id), by a copy.
        An adapter that declares a keyword ``call_id`` gets that id, to make its chunks
        with it and save the copy per token:

        Example::

            async def _astream(self, messages, *, call_id=None, **kwargs):
                yield AIMessageChunk(content="hi", id=call_id)
        """

    async def astream(self, input: Any, **kwargs: Any) -> AsyncGenerator[AIMessageChunk, None]:
        """Stream the response chunk by chunk, emitting the model's events.

        Example::

            async for chunk in llm.astream("Tell me about rivers"):
                print(chunk.content, end="")
        """
        chunks = self._observed(input, kwargs, [])
        try:
            async for chunk in chunks:
                yield chunk
        finally:  # left early: end the call's events now, not at garbage collection
            await chunks.aclose()

    async def _observed(
        self, input: Any, kwargs: dict[str, Any], response: list[AIMessage]
    ) -> AsyncGenerator[AIMessageChunk, None]:
        """The chunks of one call, with its events; appends the complete response."""
        if "messages" in kwargs:
            raise InvalidInputError(
                f"{type(self).__name__} got the messages twice: as the input and as "
                "messages=...; pass them once, as the first argument: llm.invoke(messages)."
            )
        messages = _messages(input)
        observed = Observed(
            "chat_model",
            self.name,
            self.tags,
            {"ls_model_name": self.model, "ls_provider": self.provider, **self.metadata},
        )
        observed.emit("start", {"messages": messages, "input": messages})
        total = ChunkSum()
        emitter = observed.emitter  # per chunk: no call at all when nobody streams
        stream_kind = observed.kinds["stream"]
        put = emitter.sink(stream_kind) if emitter is not None else None  # bound once
        # As LangChain: a chunk without an id carries its call's (the run id), so a
        # consumer can join the chunks of one reply; the reply gets the same id.
        call_id = emitter.header[1] if emitter is not None else new_id()
        if self._takes_call_id:
            chunks = self._astream(messages, call_id=call_id, **kwargs)
        else:
            chunks = self._astream(messages, **kwargs)
        wanted = True  # false once the bound sink says nobody wants the next chunks
        try:
            async for chunk in chunks:
                if chunk.id is None:
                    chunk = with_id(chunk, call_id)
                total.add(chunk)
                if emitter is not None:
                    if put is None:
                        emitter.emit(stream_kind, {"chunk": chunk})
                    elif wanted and put({"chunk": chunk}):
                        wanted = False
                    waiting = emitter.bus.pressure()
                    if waiting is not None:
                        await waiting
                yield chunk
            message = total.result().to_message()
            if message.id is None:  # no chunk at all: the reply still has the call's id
                message = with_id(message, call_id)
        except BaseException as exc:  # cancelled or left early too: every start gets an end
            observed.emit("error", {"error": exc})
            raise
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:  # close the adapter's stream now, not at garbage collection
                with anyio.CancelScope(shield=True):
                    await aclose()
        observed.emit("end", {"response": message, "output": message})
        response.append(message)

    async def ainvoke(self, input: Any, **kwargs: Any) -> AIMessage:
        """The complete response (streamed underneath, so tokens still reach consumers).

        Example::

            reply = await llm.ainvoke([SystemMessage(content="Be brief."), "Hi"])
        """
        response: list[AIMessage] = []
        chunks = self._observed(input, kwargs, response)
        try:
            async for _ in chunks:
                pass
        finally:
            await chunks.aclose()
        return response[0]

    def invoke(self, input: Any, **kwargs: Any) -> AIMessage:
        """Sync :meth:`ainvoke`: in a sync node its tokens still stream live.

        Example::

            def chat_node(state):
                response = llm.invoke(state["messages"])
                return {"messages": [response]}
        """
        return run_sync(
            functools.partial(self.ainvoke, input, **kwargs),
            what=f"{type(self).__name__}.invoke()",
            instead="In an async node use `await llm.ainvoke(...)`; sync nodes (plain def) "
            "may call invoke().",
        )

    def stream(self, input: Any, **kwargs: Any) -> Iterator[AIMessageChunk]:
        """Sync :meth:`astream`: yields chunks as they arrive.

        Example::

            for chunk in llm.stream("hi"):
                print(chunk.content, end="")
        """
        agen = self.astream(input, **kwargs)
        try:
            anyio.from_thread.run_sync(lambda: None)
        except RuntimeError:
            if on_event_loop() and in_running_node():
                raise HeadwaterError(
                    f"{type(self).__name__}.stream() was called in a node on the event loop "
                    "thread; use `async for chunk in llm.astream(...)` in async nodes."
                ) from None
            yield from _drain_outside_loop(agen)
            return
        try:
            while True:
                try:
                    yield anyio.from_thread.run(agen.__anext__)
                except StopAsyncIteration:
                    return
        finally:
            anyio.from_thread.run(agen.aclose)

    async def abatch(self, inputs: Sequence[Any], **kwargs: Any) -> list[AIMessage]:
        """Run :meth:`ainvoke` on several inputs concurrently; results in input order.

        The first call to fail cancels the others, and its exception is raised as is.

        Example::

            replies = await llm.abatch(["hi", "hello"])
        """
        results, failure = await run_all(
            [functools.partial(self.ainvoke, item, **kwargs) for item in inputs]
        )
        if failure is not None:
            raise failure[1]
        return results

    def batch(self, inputs: Sequence[Any], **kwargs: Any) -> list[AIMessage]:
        """Sync :meth:`abatch`.

        Example::

            replies = llm.batch(["hi", "hello"])
        """
        return run_sync(
            functools.partial(self.abatch, inputs, **kwargs),
            what=f"{type(self).__name__}.batch()",
            instead="In an async node use `await llm.abatch(...)`.",
        )


def _drain_outside_loop(
    agen: AsyncGenerator[AIMessageChunk, None],
) -> Iterator[AIMessageChunk]:
    """Iterate from sync code outside any run (plain code, a Jupyter cell): an event loop
    in a helper thread runs the model."""

    async def step() -> AIMessageChunk:
        return await agen.__anext__()

    with anyio.from_thread.start_blocking_portal() as portal:
        try:
            while True:
                try:
                    yield portal.call(step)
                except StopAsyncIteration:
                    return
        finally:
            portal.call(agen.aclose)


def init_chat_model(
    spec: str, *, plugin_manager: PluginManager | None = None, **kwargs: Any
) -> ChatModel:
    """Make a chat model from ``"provider:model"`` through the installed plugins.

    Example::

        llm = init_chat_model("openai:gpt-4o-mini", base_url="http://localhost:8000/v1")
    """
    if not isinstance(spec, str) or ":" not in spec:
        raise InvalidInputError(
            f"init_chat_model takes 'provider:model', e.g. 'openai:gpt-4o-mini'; got {spec!r}."
        )
    provider, model = spec.split(":", 1)
    pm = plugin_manager or get_plugin_manager()
    made: ChatModel = pm.make(
        "headwater_chat_models",
        provider,
        [model],
        kwargs,
        error=InvalidInputError,
        expected=ChatModel,
    )
    return made
