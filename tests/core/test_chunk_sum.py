"""AIMessageChunk.merge / ChunkSum: the same sum as folding with +, in linear time."""

from __future__ import annotations

import functools
import operator
import tracemalloc

from hypothesis import given, settings
from hypothesis import strategies as st

from headwater.messages import AIMessageChunk, ChunkSum, ToolCallChunk, Usage

texts = st.text(max_size=5)
blocks = st.lists(
    st.fixed_dictionaries({"type": st.just("text"), "text": texts}), min_size=0, max_size=2
)
tool_chunks = st.builds(
    ToolCallChunk,
    name=st.none() | st.sampled_from(["add", "search"]),
    args=texts,
    id=st.none() | st.sampled_from(["c1", "c2"]),
    index=st.none() | st.integers(0, 2),
)
chunks = st.builds(
    AIMessageChunk,
    content=texts | blocks,
    id=st.none() | st.sampled_from(["", "m1", "m2"]),
    name=st.none() | st.sampled_from(["a", "b"]),
    tool_call_chunks=st.lists(tool_chunks, max_size=2).map(tuple),
    usage=st.none() | st.builds(Usage, st.integers(0, 9), st.integers(0, 9)),
    response_metadata=st.dictionaries(st.sampled_from(["model", "stop"]), texts, max_size=2),
)


@settings(max_examples=300, deadline=None, database=None)
@given(parts=st.lists(chunks, min_size=1, max_size=200))
def test_merge_equals_the_fold_of_plus(parts: list[AIMessageChunk]) -> None:
    assert AIMessageChunk.merge(parts) == functools.reduce(operator.add, parts, AIMessageChunk())


text_chunks = chunks.filter(lambda chunk: isinstance(chunk.content, str))


@settings(max_examples=200, deadline=None, database=None)
@given(a=text_chunks, b=text_chunks, c=text_chunks)
def test_plus_is_associative(a: AIMessageChunk, b: AIMessageChunk, c: AIMessageChunk) -> None:
    assert (a + b) + c == a + (b + c)


def test_merge_of_nothing_is_an_empty_chunk_and_of_one_is_that_chunk() -> None:
    assert AIMessageChunk.merge([]) == AIMessageChunk()
    one = AIMessageChunk(content="x", id="m")
    assert AIMessageChunk.merge([one]) == one


def test_fragments_of_one_call_join_whatever_chunk_they_came_in() -> None:
    first = AIMessageChunk(
        tool_call_chunks=(
            ToolCallChunk(name="add", args='{"a"', id="c1", index=0),
            ToolCallChunk(args=": 1", index=0),
        )
    )
    total = first + AIMessageChunk(tool_call_chunks=(ToolCallChunk(args="}", index=0),))
    assert total.tool_call_chunks == (ToolCallChunk(name="add", args='{"a": 1}', id="c1", index=0),)


def test_summing_keeps_no_chunk_and_little_memory() -> None:
    tokens = [AIMessageChunk(content=f" w{i % 10}") for i in range(20_000)]
    total = ChunkSum()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for chunk in tokens:
            total.add(chunk)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert total.result().content == "".join(f" w{i % 10}" for i in range(20_000))
    # 60 kB of text: buffered as blocks of 64 pieces, not 20,000 objects (≈ 1.2 MB).
    assert grown < 300_000, grown
