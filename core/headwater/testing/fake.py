"""A scripted chat model for tests: tokens, tool calls, delays and errors, no network.

Example::

    from headwater.testing.fake import FakeChatModel, ScriptedError

    llm = FakeChatModel(["Hello there", ScriptedError(RuntimeError("rate limited"), after=1)])
    (await llm.ainvoke("hi")).content   # "Hello there" (streamed as "Hello", " there")
    await llm.ainvoke("again")          # streams "Hello"-style first token, then raises
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Sequence
from typing import Any, ClassVar

import anyio
import attrs

from headwater.errors import HeadwaterError
from headwater.messages import AIMessage, AIMessageChunk, BaseMessage, ToolCallChunk, Usage
from headwater.models import ChatModel

__all__ = ["FakeChatModel", "ScriptedError", "split_tokens"]

_TOKEN = re.compile(r"\s*\S+|\s+$")


def split_tokens(text: str) -> list[str]:
    """Split text into word tokens that keep their leading spaces (they join back exactly).

    Example::

        split_tokens("Hello big world")  # ["Hello", " big", " world"]
    """
    return _TOKEN.findall(text)


@attrs.frozen
class ScriptedError:
    """A scripted failure: stream ``after`` tokens of ``partial``, then raise ``error``.

    Example::

        FakeChatModel([ScriptedError(TimeoutError("slow"), after=2, partial="one two three")])
    """

    error: BaseException
    after: int = 0
    partial: str = ""


Script = str | AIMessage | ScriptedError | Sequence[str | AIMessageChunk]


class FakeChatModel(ChatModel):
    """A chat model that plays back scripted responses, one per call, in order.

    A response is a string (streamed word by word), a list of tokens (streamed as given;
    an item may also be an :class:`~headwater.messages.AIMessageChunk`, sent as it is),
    an :class:`~headwater.messages.AIMessage` (its text, then its tool calls streamed as
    JSON fragments), or a :class:`ScriptedError`. ``token_delay`` sleeps between tokens;
    ``cycle=True`` starts over when the script runs out (otherwise that is an error).
    ``calls`` records the messages of every call.

    Example::

        llm = FakeChatModel(["Rivers flow downhill."], token_delay=0.01, name="writer")
    """

    provider: ClassVar[str] = "fake"

    def __init__(
        self,
        responses: Sequence[Script],
        *,
        token_delay: float = 0.0,
        cycle: bool = False,
        model: str = "fake-model",
        **kwargs: Any,
    ) -> None:
        super().__init__(model=model, **kwargs)
        self.responses = list(responses)
        self.token_delay = token_delay
        self.cycle = cycle
        self.calls: list[list[BaseMessage]] = []
        self.bound_tools: list[Any] = []

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> FakeChatModel:
        """Record ``tools`` (the script decides what the model answers) and return the
        model itself, so code written for a real model's ``bind_tools`` runs unchanged.

        Example::

            llm = FakeChatModel([AIMessage(content="", tool_calls=(call,))]).bind_tools([add])
        """
        self.bound_tools = list(tools)
        return self

    def _next(self) -> Script:
        index = len(self.calls) - 1
        if index >= len(self.responses):
            if not self.cycle or not self.responses:
                raise HeadwaterError(
                    f"FakeChatModel ran out of scripted responses: call {index + 1} but only "
                    f"{len(self.responses)} scripted. Add responses or pass cycle=True."
                )
            index %= len(self.responses)
        return self.responses[index]

    async def _astream(
        self, messages: list[BaseMessage], *, call_id: str | None = None, **kwargs: Any
    ) -> AsyncIterator[AIMessageChunk]:
        self.calls.append(list(messages))
        script = self._next()
        if isinstance(script, ScriptedError):
            for token in split_tokens(script.partial)[: script.after]:
                yield await self._token(token, call_id)
            raise script.error
        tokens: list[str | AIMessageChunk]
        if isinstance(script, AIMessage):
            tokens = list(split_tokens(script.text))
            calls = script.tool_calls
        else:
            tokens = list(split_tokens(script)) if isinstance(script, str) else list(script)
            calls = ()
        if self.token_delay:
            for item in tokens:
                yield await self._token(item, call_id)
        else:  # no coroutine per token: the fake model's cost is not what a test measures
            for item in tokens:
                yield _chunk(item, call_id)
        for index, call in enumerate(calls):
            text = json.dumps(dict(call.args))
            half = len(text) // 2
            for i, piece in enumerate((text[:half], text[half:])):
                yield AIMessageChunk(
                    tool_call_chunks=(
                        ToolCallChunk(
                            name=call.name if i == 0 else None,
                            args=piece,
                            id=call.id if i == 0 else None,
                            index=index,
                        ),
                    )
                )
        prompt = sum(len(m.text.split()) for m in messages)
        yield AIMessageChunk(usage=Usage(input_tokens=prompt, output_tokens=len(tokens)))

    async def _token(
        self, token: str | AIMessageChunk, call_id: str | None = None
    ) -> AIMessageChunk:
        if self.token_delay:
            await anyio.sleep(self.token_delay)
        return _chunk(token, call_id)


def _chunk(token: str | AIMessageChunk, call_id: str | None) -> AIMessageChunk:
    """A scripted token as the chunk the model streams (a chunk is streamed as it is)."""
    if isinstance(token, AIMessageChunk):
        return token
    return AIMessageChunk(content=token, id=call_id)
