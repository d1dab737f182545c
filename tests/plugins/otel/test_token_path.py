"""Tracing keeps the token fast path: a model call's tokens reach the stream and the
tracer through callables bound once per call (``Subscription.bind_source``), never as
events built one by one; and the spans are the same as when every token takes the
general path — time to first token (the first chunk with content, not an empty one) and
token usage included."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider

from headwater import END, START, StateGraph, create_plugin_manager, hookimpl
from headwater.events import Subscription
from headwater.testing.fake import FakeChatModel
from tests.fixtures.otlp import OtlpReceiver, ReceivedSpan, SpanTree
from tests.plugins.otel.test_spans import Chat

pytestmark = pytest.mark.anyio

PAUSE = 0.02
TOKENS = ["", "Rivers", " flow", " downhill."]  # an empty chunk first: not the first token
PROMPT = "Where do rivers go?"


class Sequencer:
    """Records the sequence numbers of model calls' start and end events. It does not
    subscribe to tokens, so it leaves their path as it is: a bound token takes no sequence
    number (end right after start), a token built as an event takes one."""

    def __init__(self) -> None:
        self.seqs: list[int] = []

    def record(
        self,
        kind: str,
        name: str,
        run_id: str,
        parent_ids: tuple[str, ...],
        tags: tuple[str, ...],
        metadata: Mapping[str, Any],
        data: Any,
        seq: int,
        ns: tuple[str, ...],
    ) -> None:
        self.seqs.append(seq)

    @hookimpl
    def headwater_event_subscribers(self, run: Any) -> list[Subscription]:
        kinds = frozenset({"on_chat_model_start", "on_chat_model_end"})
        return [Subscription(callback=self.record, kinds=kinds, raw=True)]


class Everything:
    """Subscribes to every event without binding any: every token takes the general
    path (an Event each, delivered to every subscription's callback)."""

    @hookimpl
    def headwater_event_subscribers(self, run: Any) -> list[Subscription]:
        return [Subscription(callback=lambda event: None)]


def graph(name: str, plugins: list[Any], *, sync: bool) -> Any:
    llm = FakeChatModel([TOKENS], token_delay=PAUSE)

    async def talk(state: Chat) -> dict[str, Any]:
        return {"messages": [await llm.ainvoke(state["messages"])]}

    def talk_sync(state: Chat) -> dict[str, Any]:  # the model runs on the loop, live
        return {"messages": [llm.invoke(state["messages"])]}

    builder = StateGraph(Chat)
    builder.add_node("talk", talk_sync if sync else talk)
    builder.add_edge(START, "talk")
    builder.add_edge("talk", END)
    return builder.compile(name=name, plugin_manager=create_plugin_manager(plugins=plugins))


async def consume(app: Any, consumer: str) -> list[str]:
    """Run ``app`` as ``consumer`` does; the contents of the chunks it streamed."""
    state = {"messages": [PROMPT]}
    if consumer == "messages":
        return [chunk.content async for chunk, _ in app.astream(state, stream_mode="messages")]
    if consumer == "events":
        return [
            event["data"]["chunk"].content
            async for event in app.astream_events(state)
            if event["event"] == "on_chat_model_stream"
        ]
    await app.ainvoke(state)
    return []


def shape(tree: SpanTree) -> list[tuple[Any, ...]]:
    """What must not differ between two runs: the tree, and each span's kind, status,
    attribute names and event names (ids and times do)."""
    by_line = zip(tree.render(), sorted(tree.spans, key=lambda s: s.start), strict=True)
    return [
        (line, s.kind, s.status, sorted(s.attributes), [e.name for e in s.events])
        for line, s in by_line
    ]


def trace_of(spans: list[ReceivedSpan], graph_name: str) -> SpanTree:
    (root,) = [s for s in spans if s.name == f"invoke_workflow {graph_name}"]
    return SpanTree([s for s in spans if s.trace_id == root.trace_id])


def assert_first_token_and_usage(chat: ReceivedSpan, attributes: Mapping[str, Any]) -> None:
    first = chat.event("headwater.first_token")
    ttft = first.attributes["gen_ai.response.time_to_first_chunk"]
    assert ttft == attributes["gen_ai.response.time_to_first_chunk"]
    assert ttft >= 2 * PAUSE  # the second chunk, the first with content (lower bound only)
    assert chat.start <= first.time <= chat.end
    assert 0 <= ttft * 1e9 <= chat.end - chat.start
    assert attributes["gen_ai.usage.input_tokens"] == len(PROMPT.split())
    assert attributes["gen_ai.usage.output_tokens"] == len(TOKENS)
    assert [e.name for e in chat.events].count("headwater.first_token") == 1


@pytest.mark.parametrize("consumer", ["messages", "events", "ainvoke"])
@pytest.mark.parametrize("sync", [False, True], ids=["async-node", "sync-node"])
async def test_traced_tokens_keep_the_fast_path_and_the_spans_stay_the_same(
    receiver: tuple[OtlpReceiver, str], provider: TracerProvider, consumer: str, sync: bool
) -> None:
    fast_seq, general_seq = Sequencer(), Sequencer()
    fast = graph("fast", [fast_seq], sync=sync)
    general = graph("general", [general_seq, Everything()], sync=sync)

    streamed = await consume(fast, consumer)
    assert streamed == await consume(general, consumer)
    if consumer != "ainvoke":
        assert streamed == [*TOKENS, ""]  # every chunk, the usage chunk last
    (start, end) = fast_seq.seqs
    assert end == start + 1  # tracing did not make the tokens into events
    (start, end) = general_seq.seqs
    assert end == start + 1 + len(TOKENS) + 1  # there, each chunk was one

    provider.force_flush()
    spans = receiver[0].wait_for(lambda spans: len(spans) >= 6)
    fast_tree, general_tree = trace_of(spans, "fast"), trace_of(spans, "general")
    assert fast_tree.render() == ["invoke_workflow fast", "  talk", "    chat fake-model"]
    assert shape(fast_tree) == [
        (line.replace("general", "fast"), *rest) for line, *rest in shape(general_tree)
    ]
    for tree in (fast_tree, general_tree):
        chat = tree.named("chat fake-model")
        assert_first_token_and_usage(chat, chat.attributes)


async def test_two_model_calls_at_once_each_get_their_own_first_token(
    receiver: tuple[OtlpReceiver, str], provider: TracerProvider
) -> None:
    """Two calls streaming at the same time, one still waiting for its first token while
    the other has had its own: each span gets its own call's first token."""
    slow = FakeChatModel([["", "", "late"]], token_delay=3 * PAUSE, name="slow")
    quick = FakeChatModel([["now", " more", " more"]], token_delay=PAUSE, name="quick")

    async def left(state: Chat) -> dict[str, Any]:
        return {"messages": [await slow.ainvoke(state["messages"])]}

    async def right(state: Chat) -> dict[str, Any]:
        return {"messages": [await quick.ainvoke(state["messages"])]}

    builder = StateGraph(Chat)
    builder.add_node("left", left)
    builder.add_node("right", right)
    builder.add_edge(START, "left")
    builder.add_edge(START, "right")
    chunks = [
        chunk.content
        async for chunk, _ in builder.compile(name="both").astream(
            {"messages": [PROMPT]}, stream_mode="messages"
        )
    ]
    assert sorted(chunks) == sorted(["", "", "late", "", "now", " more", " more", ""])
    provider.force_flush()
    tree = trace_of(receiver[0].wait_for(lambda spans: len(spans) >= 5), "both")
    by_name = {s.attributes["headwater.name"]: s for s in tree.spans if s.kind == "CLIENT"}
    late = by_name["slow"].attributes["gen_ai.response.time_to_first_chunk"]
    now = by_name["quick"].attributes["gen_ai.response.time_to_first_chunk"]
    assert late >= 9 * PAUSE  # its third chunk, not the other call's first token
    assert now >= PAUSE
    for chat in by_name.values():
        assert [e.name for e in chat.events].count("headwater.first_token") == 1
