"""Incremental checkpoint encoding: a run re-encodes only the state keys written since its
last checkpoint, and the bytes it stores are exactly what encoding everything gives."""

from __future__ import annotations

import datetime
import operator
from collections.abc import Sequence
from typing import Annotated, Any, TypedDict

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headwater import END, START, Send, StateGraph, serde
from headwater.checkpoint import (
    Checkpoint,
    Checkpointer,
    MemoryCheckpointer,
    PendingTask,
    Record,
    _CheckpointEncoder,
    _created_at,
    _Deferrer,
    _Unusual,
    decode_record,
    encode_record,
    new_checkpoint_id,
)
from headwater.errors import SerdeError
from headwater.messages import AIMessage, HumanMessage, ToolCall
from headwater.testing.strategies import GraphCase, graphs

# -- values the serde stores (and a few it refuses) ---------------------------------------

_leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8)
    | st.binary(max_size=8)
    | st.dates()
    | st.builds(HumanMessage, content=st.text(max_size=8), id=st.text(max_size=4))
    | st.builds(
        AIMessage,
        content=st.text(max_size=8),
        tool_calls=st.lists(
            st.builds(ToolCall, name=st.text(min_size=1, max_size=4), args=st.just({"x": [1]})),
            max_size=2,
        ).map(tuple),
    )
)
values = st.recursive(
    _leaves,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.lists(inner, max_size=3).map(tuple)
        | st.dictionaries(st.text(max_size=6), inner, max_size=4)
        | st.dictionaries(st.integers(), inner, max_size=2)
        | st.frozensets(st.integers() | st.text(max_size=3), max_size=3)
    ),
    max_leaves=12,
)
state_keys = st.sampled_from(["messages", "n", "notes", "__type__", "é", 'q"uote'])


@st.composite
def histories(draw: st.DrawFn) -> list[tuple[dict[str, Any], set[str], Checkpoint]]:
    """Successive checkpoints of one run: each step writes some keys (a new value, or the
    very object it held, mutated in place and written again) and leaves the others."""
    state: dict[str, Any] = {}
    steps = []
    parent = None
    for step in range(draw(st.integers(1, 6))):
        written: set[str] = set()
        for key in draw(st.lists(state_keys, max_size=3, unique=True)) or (
            list(state) if step == 0 else []
        ):
            current = state.get(key)
            if isinstance(current, list) and draw(st.booleans()):
                current.append(draw(values))  # mutated in place, then written again
            else:
                state[key] = draw(values)
            written.add(key)
        tasks = tuple(
            PendingTask(
                id=f"x/{i}",
                node=draw(st.sampled_from(["a", "b", 'n"ode'])),
                triggers=tuple(draw(st.lists(st.sampled_from(["a", START]), max_size=2))),
                path=draw(st.sampled_from([("pull", "a"), ("push", 0, 3), ()])),
                has_arg=(has := draw(st.booleans())),
                arg=draw(values) if has else None,
            )
            for i in range(draw(st.integers(0, 3)))
        )
        checkpoint = Checkpoint(
            id=f"{step:020d}-{draw(st.sampled_from(['0a1b2c3d', 'ffffffff']))}",
            thread_id=draw(st.sampled_from(["t1", "thread é", 't"2'])),
            parent_id=parent,
            step=step,
            values=dict(state),
            next=tasks,
            joins=draw(st.sampled_from([(), (("a", "b"),), (("a",), ())])),
            metadata={
                "source": "loop",
                "step": step,
                "writes": {"a": {k: state[k] for k in written}},
            },
            created_at=datetime.datetime.now(datetime.UTC).isoformat(),
        )
        parent = checkpoint.id
        steps.append((dict(state), written, checkpoint))
    return steps


@settings(max_examples=200, deadline=None)
@given(histories())
def test_incremental_bytes_equal_full_encoding(
    history: list[tuple[dict[str, Any], set[str], Checkpoint]],
) -> None:
    encoder = _CheckpointEncoder()
    for _state, written, checkpoint in history:
        data = encoder.encode(checkpoint, written)
        assert data == encode_record(checkpoint)
        restored = decode_record(data, checkpoint.thread_id, checkpoint.id, Checkpoint)
        # the state restored is the state saved (compared encoded: NaN is not NaN)
        assert serde.dumps(restored.values) == serde.dumps(dict(checkpoint.values))


def _with_run_id(checkpoint: Checkpoint, run_id: str) -> Checkpoint:
    return attrs.evolve(checkpoint, metadata={**checkpoint.metadata, "run_id": run_id})


@settings(max_examples=200, deadline=None)
@given(histories(), st.sampled_from(["run-1", 'r"é']))
def test_deferred_checkpoints_give_the_bytes_of_when_they_were_saved(
    history: list[tuple[dict[str, Any], set[str], Checkpoint]], run_id: str
) -> None:
    """The memory checkpointer's unencoded form: read after later steps mutated the state
    in place, it still gives exactly the full encoding of the checkpoint as saved."""
    deferrer = _Deferrer()
    saved = []
    for _state, written, checkpoint in history:
        expected = encode_record(_with_run_id(checkpoint, run_id))  # as of this step
        try:
            deferred = deferrer.defer(
                checkpoint.thread_id,
                checkpoint.ns,
                checkpoint.id,
                checkpoint.parent_id,
                checkpoint.step,
                0,
                checkpoint.values,
                [(t.id, t.node, t.triggers, t.path, t.has_arg, t.arg) for t in checkpoint.next],
                checkpoint.joins,
                checkpoint.metadata["source"],
                checkpoint.metadata["writes"],
                run_id,
                written,
            )
        except (_Unusual, SerdeError, TypeError, RecursionError):
            continue  # the caller encodes this one in full (the canonical bytes or error)
        saved.append((deferred, expected))
    for deferred, expected in saved:  # after every later step's in-place mutations
        data = deferred.data()
        at = data.index(b'"created_at"')
        assert data[:at] == expected[: expected.index(b'"created_at"')]
        assert data[at:] == b'"created_at":"' + _created_at(0).encode() + b'"}}'


def test_a_key_not_written_keeps_its_last_written_form() -> None:
    """As in LangGraph: a value mutated in place and not written again is not re-recorded."""
    encoder = _CheckpointEncoder()
    notes: list[str] = ["a"]
    first = Checkpoint(id=new_checkpoint_id(), thread_id="t", values={"notes": notes})
    encoder.encode(first, {"notes"})
    notes.append("mutated in place")
    second = Checkpoint(id=new_checkpoint_id(), thread_id="t", values={"notes": notes})
    restored = decode_record(encoder.encode(second, ()), "t", second.id, Checkpoint)
    assert restored.values == {"notes": ["a"]}
    restored = decode_record(encoder.encode(second, {"notes"}), "t", second.id, Checkpoint)
    assert restored.values == {"notes": ["a", "mutated in place"]}


def test_an_unserialisable_value_raises_the_full_encodings_error() -> None:
    checkpoint = Checkpoint(id=new_checkpoint_id(), thread_id="t", values={"bad": object()})
    with pytest.raises(SerdeError, match=r"builtins\.object at \$\.record\.values\.bad"):
        _CheckpointEncoder().encode(checkpoint, {"bad"})


# -- whole runs: what a run stores is what encoding its checkpoints in full gives --------


class _FullEncodingCheck(MemoryCheckpointer):
    """Fails any record whose bytes differ from encoding its value in full."""

    def __init__(self) -> None:
        super().__init__()
        self.checked = 0

    async def aput_records(self, records: Sequence[Record]) -> None:
        for record in records:
            assert record.data == encode_record(record.value)
            self.checked += 1
        await super().aput_records(records)


@pytest.mark.anyio
@settings(max_examples=40, deadline=None)
@given(case=graphs(allow_delays=False), durability=st.sampled_from(["sync", "async"]))
async def test_random_graph_runs_store_exactly_the_full_encoding(
    case: GraphCase, durability: str
) -> None:
    saver = _FullEncodingCheck()
    app = case.compile(checkpointer=saver)
    config = {**case.config, "configurable": {"thread_id": "t"}, "durability": durability}
    final = await app.ainvoke(case.input, config)
    assert final == case.reference().values
    assert saver.checked >= 2  # the input and at least one step
    assert (await app.aget_state(config)).values == serde.loads(serde.dumps(final))


class Log(TypedDict):
    items: Annotated[list[Any], operator.add]
    last: Any


@pytest.mark.anyio
@pytest.mark.parametrize("durability", ["sync", "async"])
async def test_a_stored_checkpoint_does_not_change_when_the_state_is_mutated_later(
    durability: str,
) -> None:
    kept: dict[str, Any] = {"box": [1]}

    def first(state: Log) -> dict[str, Any]:
        return {"items": [kept], "last": kept["box"]}

    def second(state: Log) -> dict[str, Any]:
        kept["box"].append("mutated by a later step")  # the objects of step 1, in place
        state["items"][0]["new"] = True
        return {"items": ["two"]}

    graph = StateGraph(Log)
    graph.add_node("first", first)
    graph.add_node("second", second)
    graph.add_edge(START, "first")
    graph.add_edge("first", "second")
    graph.add_edge("second", END)
    saver: Checkpointer = MemoryCheckpointer()
    app = graph.compile(checkpointer=saver)
    config = {"configurable": {"thread_id": "t"}, "durability": durability}
    final = await app.ainvoke({"items": []}, config)
    final["items"].append("mutated by the caller")
    history = await app.aget_state_history(config)
    after_first = next(s for s in history if s.metadata["step"] == 1)
    assert after_first.values == {"items": [{"box": [1]}], "last": [1]}
    assert after_first.metadata["writes"] == {"first": {"items": [{"box": [1]}], "last": [1]}}


@pytest.mark.anyio
async def test_send_arguments_are_encoded_with_their_tasks() -> None:
    class Fan(TypedDict):
        got: Annotated[list[Any], operator.add]

    def fan(state: Fan) -> list[Send]:
        return [Send("item", {"i": i, "t": (i, "x")}) for i in range(3)]

    def item(arg: dict[str, Any]) -> dict[str, Any]:
        return {"got": [arg["t"]]}

    graph = StateGraph(Fan)
    graph.add_node("item", item)
    graph.add_conditional_edges(START, fan, ["item"])
    graph.add_edge("item", END)
    saver = _FullEncodingCheck()
    app = graph.compile(checkpointer=saver)
    final = await app.ainvoke({"got": []}, {"configurable": {"thread_id": "t"}})
    assert final == {"got": [(0, "x"), (1, "x"), (2, "x")]}
    first = (await app.aget_state_history({"configurable": {"thread_id": "t"}}))[-1]
    assert [t.arg for t in first.tasks] == [{"i": i, "t": (i, "x")} for i in range(3)]


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 253_402_300_799 * 10**9), st.integers(0, 999_999))
def test_created_at_is_datetimes_isoformat(seconds_ns: int, micros: int) -> None:
    now = (seconds_ns // 10**9) * 10**9 + micros * 1000 + seconds_ns % 1000
    expected = datetime.datetime.fromtimestamp(now // 10**9, datetime.UTC).replace(
        microsecond=(now // 1000) % 10**6
    )
    assert _created_at(now) == expected.isoformat()


@pytest.mark.parametrize("depth", range(serde.MAX_DEPTH - 6, serde.MAX_DEPTH + 1))
@pytest.mark.parametrize("where", ["values", "metadata", "arg"])
def test_depth_counts_as_in_the_whole_record(depth: int, where: str) -> None:
    deep: Any = 1
    for _ in range(depth):
        deep = [deep]
    checkpoint = Checkpoint(
        id=new_checkpoint_id(),
        thread_id="t",
        values={"deep": deep} if where == "values" else {},
        next=(PendingTask(id="x/0", node="a", has_arg=True, arg=deep),) if where == "arg" else (),
        metadata={"writes": deep} if where == "metadata" else {},
    )
    try:
        full: bytes | str = encode_record(checkpoint)
    except SerdeError as exc:
        full = str(exc)
    try:
        incremental: bytes | str = _CheckpointEncoder().encode(checkpoint, {"deep"})
    except SerdeError as exc:
        incremental = str(exc)
    assert incremental == full
