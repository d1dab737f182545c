"""A saved checkpoint is a snapshot: nodes that later mutate the state in place (or the
caller mutating what it got back) never change it, and restoring it gives the state as
it was saved. Property-tested on the memory checkpointer, which keeps immutable values
unencoded until read."""

from __future__ import annotations

import copy
import itertools
from typing import Any, TypedDict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headwater import END, START, StateGraph
from headwater.checkpoint import MemoryCheckpointer

KEYS = ("a", "b", "c")


class Bag(TypedDict, total=False):
    a: Any
    b: Any
    c: Any


_leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=6)
    | st.lists(st.integers(), max_size=2).map(tuple)
)
values = st.recursive(
    _leaves,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)
# What one node does to one key: write a new value; or mutate the value it holds in place
# (a list or dict) and write it again; or mutate it in place and not write it.
actions = st.tuples(
    st.sampled_from(KEYS), st.sampled_from(["new", "mutate+write", "mutate"]), values
)


def _mutate(value: Any, marker: Any) -> bool:
    if isinstance(value, list):
        value.append(marker)
        if value and isinstance(value[0], list | dict):
            _mutate(value[0], marker)  # and something nested, written earlier
        return True
    if isinstance(value, dict):
        value[f"m{len(value)}"] = marker
        return True
    return False


def _node(step: int, plan: list[tuple[str, str, Any]], saved: list[dict[str, Any]]) -> Any:
    def node(state: Bag) -> dict[str, Any]:
        update: dict[str, Any] = {}
        for key, action, value in plan:
            if action != "new" and key in state and _mutate(state[key], f"step {step}"):
                if action == "mutate+write":
                    update[key] = state[key]
            else:
                update[key] = copy.deepcopy(value)
        saved.append(copy.deepcopy(update))  # what the checkpoint of this step records
        return update

    return node


@pytest.mark.anyio
@settings(max_examples=60, deadline=None)
@given(
    plans=st.lists(st.lists(actions, max_size=3), min_size=1, max_size=5),
    first=st.dictionaries(st.sampled_from(KEYS), values, max_size=3),
    durability=st.sampled_from(["sync", "async"]),
)
async def test_saved_checkpoints_do_not_change_and_restore_equal_states(
    plans: list[list[tuple[str, str, Any]]], first: dict[str, Any], durability: str
) -> None:
    saved: list[dict[str, Any]] = []
    graph = StateGraph(Bag)
    names = [f"n{i}" for i in range(len(plans))]
    for i, (name, plan) in enumerate(zip(names, plans, strict=True)):
        graph.add_node(name, _node(i + 1, plan, saved))
    graph.add_edge(START, names[0])
    for x, y in itertools.pairwise(names):
        graph.add_edge(x, y)
    graph.add_edge(names[-1], END)
    app = graph.compile(checkpointer=MemoryCheckpointer())
    config = {"configurable": {"thread_id": "t"}, "durability": durability}

    final = await app.ainvoke(copy.deepcopy(first), config)
    # Each checkpoint holds every key as it was when last written.
    expected = [copy.deepcopy(first)]
    for update in saved:
        expected.append({**expected[-1], **update})

    for key in KEYS:  # the caller mutating the final state changes nothing stored
        if key in final:
            _mutate(final[key], "caller")
    history = list(reversed(await app.aget_state_history(config)))
    assert [h.metadata["step"] for h in history] == list(range(len(plans) + 1))
    assert [h.values for h in history] == expected
    assert [h.metadata["writes"] for h in history[1:]] == [
        {name: update} if update else {} for name, update in zip(names, saved, strict=True)
    ]

    # Reading any checkpoint back (time travel) gives the state saved, however often it
    # is read and the copy read mutated.
    for snapshot, state in zip(history, expected, strict=True):
        again = await app.aget_state(snapshot.config)
        assert again.values == state
        for key in KEYS:
            if key in again.values:
                _mutate(again.values[key], "reader")
        assert (await app.aget_state(snapshot.config)).values == state
