"""Streamed chunks carry their model call's id, as LangChain's do, whether or not the
adapter sets it (a cheap copy), and ``with_id`` is exactly ``attrs.evolve(id=...)``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import attrs
import pytest
from fixtures.graphs import chat_graph
from hypothesis import given, settings
from hypothesis import strategies as st

from headwater.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    HumanMessage,
    ToolCallChunk,
    ToolMessage,
    Usage,
    with_id,
)
from headwater.models import ChatModel
from headwater.testing.fake import FakeChatModel


class Plain(ChatModel):
    """An adapter that leaves chunk ids empty: the base gives them the call's id."""

    provider = "plain"

    async def _astream(self, messages: list[BaseMessage], **kwargs: Any) -> AsyncIterator[Any]:
        for word in ("one ", "two ", "three"):
            yield AIMessageChunk(content=word)


class Own(ChatModel):
    """An adapter that declares ``call_id`` and records what it was given."""

    provider = "own"

    def __init__(self) -> None:
        super().__init__()
        self.given: list[str | None] = []

    async def _astream(
        self, messages: list[BaseMessage], *, call_id: str | None = None, **kwargs: Any
    ) -> AsyncIterator[Any]:
        self.given.append(call_id)
        yield AIMessageChunk(content="a", id=call_id)
        yield AIMessageChunk(content="b", id="provider-id")  # an adapter's own id is kept


_MODELS = [Plain(), FakeChatModel(["one two three"], cycle=True)]


def _graph(llm: ChatModel) -> Any:
    return chat_graph(llm)


@pytest.mark.anyio
@pytest.mark.parametrize("llm", _MODELS, ids=["plain", "fake"])
async def test_chunks_outside_a_graph_share_the_replys_id(llm: ChatModel) -> None:
    chunks = [chunk async for chunk in llm.astream("hi")]
    ids = {chunk.id for chunk in chunks}
    assert len(ids) == 1 and None not in ids
    reply = await llm.ainvoke("hi")
    assert reply.id is not None and reply.id not in ids  # each call has its own id


@pytest.mark.anyio
@pytest.mark.parametrize("llm", _MODELS, ids=["plain", "fake"])
async def test_streamed_chunks_carry_the_model_calls_run_id(llm: ChatModel) -> None:
    app = _graph(llm)
    run_ids, chunk_ids = set(), set()
    async for event in app.astream_events({"messages": ["hi"]}):
        if event["event"] == "on_chat_model_stream":
            run_ids.add(event["run_id"])
            chunk_ids.add(event["data"]["chunk"].id)
    assert len(run_ids) == 1 and chunk_ids == run_ids
    tuples = [m async for m, _ in app.astream({"messages": ["hi"]}, stream_mode="messages")]
    state = await app.ainvoke({"messages": ["hi"]})
    assert {m.id for m in tuples[:-1]} == {tuples[0].id}  # the chunks, then nothing repeated
    assert isinstance(state["messages"][-1], AIMessage)


@pytest.mark.anyio
async def test_an_adapter_declaring_call_id_gets_the_events_run_id() -> None:
    llm = Own()
    app = _graph(llm)
    seen: list[tuple[str, str | None]] = []
    async for event in app.astream_events({"messages": ["hi"]}):
        if event["event"] == "on_chat_model_stream":
            seen.append((event["run_id"], event["data"]["chunk"].id))
    (call_id,) = llm.given
    assert seen == [(call_id, call_id), (call_id, "provider-id")]
    llm.given.clear()
    reply = await llm.ainvoke("hi")  # outside a graph: a fresh id all the same
    assert llm.given[0] is not None and reply.id == llm.given[0]


_text = st.text(max_size=8)
_chunks = st.builds(
    AIMessageChunk,
    content=_text,
    id=st.none() | _text,
    name=st.none() | _text,
    tool_call_chunks=st.lists(
        st.builds(ToolCallChunk, name=st.none() | _text, args=_text, index=st.integers(0, 3)),
        max_size=2,
    ).map(tuple),
    usage=st.none() | st.builds(Usage, input_tokens=st.integers(0, 9)),
    response_metadata=st.dictionaries(_text, _text, max_size=2),
)
_messages = st.one_of(
    _chunks,
    st.builds(HumanMessage, content=_text, id=st.none() | _text, name=st.none() | _text),
    st.builds(ToolMessage, content=_text, tool_call_id=_text, id=st.none() | _text),
    st.builds(AIMessage, content=_text, id=st.none() | _text),
)


@settings(max_examples=200, deadline=None)
@given(message=_messages, new=_text)
def test_with_id_is_evolve(message: BaseMessage, new: str) -> None:
    copy = with_id(message, new)
    assert copy == attrs.evolve(message, id=new)
    assert type(copy) is type(message) and copy.id == new
    assert message.id != new or message == copy  # the original is untouched
