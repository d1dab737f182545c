"""Properties of the scheduler and the builder, over random graphs and inputs.

The graphs come from ``headwater.testing.strategies``; each knows the final state it must
reach from a sequential reference interpreter that never touches the scheduler.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import operator
import random
from collections.abc import Mapping
from typing import Annotated, Any, Literal, NotRequired, TypedDict

import anyio
import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headwater import END, START, Send, StateGraph
from headwater.errors import (
    GraphRecursionError,
    GraphValidationError,
    InvalidInputError,
    InvalidUpdateError,
)
from headwater.testing.strategies import (
    COMMUTATIVE_KEYS,
    DEFECTS,
    CaseData,
    GraphCase,
    MalformedGraph,
    Trace,
    graphs,
    inputs_for,
    malformed_graphs,
    merge_counts,
    retimed,
    states_for,
)

# No example database: nothing is written into the checkout.
quick = settings(max_examples=50, deadline=None, database=None)

# Async tests draw everything through @given, never with st.data() in the body: a draw
# that overruns raises hypothesis' StopTest inside anyio's runner task, which asyncio then
# logs as "Task exception was never retrieved" when the task is garbage-collected.


def with_retimed(cases: st.SearchStrategy[GraphCase]) -> st.SearchStrategy[Any]:
    """Pairs (case, the same case with other delays)."""
    return cases.flatmap(lambda case: st.tuples(st.just(case), retimed(case)))


def with_input(cases: st.SearchStrategy[GraphCase]) -> st.SearchStrategy[Any]:
    """Pairs (case, an input drawn by inputs_for for its compiled graph)."""
    return cases.flatmap(lambda case: st.tuples(st.just(case), inputs_for(case.compile())))


async def run(case: GraphCase, **kwargs: Any) -> dict[str, Any]:
    return await case.compile(**kwargs).ainvoke(case.input, case.config)


# -- 1. the final state does not depend on task completion order ------------------------


@pytest.mark.anyio
@quick
@given(cases=with_retimed(graphs()))
async def test_final_state_does_not_depend_on_completion_order(
    cases: tuple[GraphCase, GraphCase],
) -> None:
    case, retimed_case = cases
    expected = case.reference().values
    assert await run(case) == expected
    assert await run(retimed_case) == expected


@pytest.mark.anyio
@quick
@given(case=graphs(min_nodes=2, allow_delays=False, allow_loops=False))
async def test_sync_or_async_nodes_compute_the_same(case: GraphCase) -> None:
    flipped = attrs.evolve(case, nodes=tuple(attrs.evolve(n, sync=not n.sync) for n in case.nodes))
    assert await run(flipped) == await run(case) == case.reference().values


@pytest.mark.anyio
@quick
@given(case=graphs(allow_delays=False))
async def test_the_recursion_limit_counts_exactly_the_supersteps(case: GraphCase) -> None:
    # case.config allows exactly the supersteps the run takes: one fewer is too few.
    app = case.compile()
    assert await app.ainvoke(case.input, case.config) == case.reference().values
    if case.recursion_limit > 1:
        with pytest.raises(GraphRecursionError):
            await app.ainvoke(case.input, {"recursion_limit": case.recursion_limit - 1})


# -- 2. commutative reducers equal a sequential fold of all writes ----------------------


def fold(key: str, start: Any, writes: list[Any]) -> Any:
    reducer = {"total": operator.add, "tags": operator.or_, "visits": merge_counts}[key]
    return functools.reduce(reducer, writes, start)


@pytest.mark.anyio
@quick
@given(case=graphs(), rnd=st.randoms(use_true_random=False))
async def test_commutative_reducers_equal_a_sequential_fold(
    case: GraphCase, rnd: random.Random
) -> None:
    trace = Trace()
    final = await run(case, trace=trace)
    # Every task ran exactly once, whatever order the scheduler ran them in.
    ran = sorted(node for node, _ in trace.updates)
    assert ran == sorted(node for node, _ in case.reference().updates)
    empty = CaseData()
    for key in COMMUTATIVE_KEYS:
        writes = [update[key] for _, update in trace.updates if key in update]
        if key in case.input:
            writes.append(case.input[key])
        rnd.shuffle(writes)  # any order: the reducer is commutative
        assert final.get(key, getattr(empty, key)) == fold(key, getattr(empty, key), writes)


@pytest.mark.anyio
@quick
@given(
    n=st.integers(0, 60),
    delays=st.lists(st.none() | st.floats(0, 0.002), min_size=1, max_size=8),
    weights=st.lists(st.integers(-100, 100), min_size=1, max_size=8),
)
async def test_send_fan_out_into_commutative_keys_is_a_fold(
    n: int, delays: list[float | None], weights: list[int]
) -> None:
    class State(TypedDict, total=False):
        total: Annotated[int, operator.add]
        seen: Annotated[set[int], operator.or_]
        counts: Annotated[dict[str, int], merge_counts]

    async def item(i: int) -> dict[str, Any]:
        delay = delays[i % len(delays)]
        if delay is not None:
            await anyio.sleep(delay)
        w = weights[i % len(weights)]
        return {"total": w, "seen": {i}, "counts": {str(w % 3): 1}}

    graph = StateGraph(State)
    graph.add_node("item", item)
    graph.set_conditional_entry_point(lambda s: [Send("item", i) for i in range(n)], ["item"])
    final = await graph.compile().ainvoke({})
    ws = [weights[i % len(weights)] for i in range(n)]
    assert final.get("total", 0) == sum(ws)
    assert final.get("seen", set()) == set(range(n))
    counts: dict[str, int] = {}
    for w in ws:
        counts = merge_counts(counts, {str(w % 3): 1})
    assert final.get("counts", {}) == counts


# -- 3. a cycle without exit always reaches the recursion limit -------------------------


@pytest.mark.anyio
@quick
@given(case=graphs(endless=True, max_nodes=6, allow_delays=False), limit=st.integers(1, 50))
async def test_a_cycle_without_exit_raises_recursion_error(case: GraphCase, limit: int) -> None:
    with pytest.raises(GraphRecursionError):
        case.reference(recursion_limit=limit)
    with pytest.raises(GraphRecursionError) as info:
        await case.compile().ainvoke(case.input, {"recursion_limit": limit})
    assert str(limit) in str(info.value)


# -- 4. malformed graphs are rejected with a one-line message naming the culprit --------


@settings(max_examples=150, deadline=None, database=None)
@given(bad=malformed_graphs())
def test_every_malformed_graph_is_rejected_naming_the_culprit(bad: MalformedGraph) -> None:
    with pytest.raises(GraphValidationError) as info:
        bad.build()
    message = str(info.value)
    assert "\n" not in message, message
    assert bad.needle in message, (bad.culprit, message)


@pytest.mark.parametrize("defect", DEFECTS)
@settings(max_examples=5, deadline=None, database=None)
@given(data=st.data())
def test_each_defect_is_rejected(defect: str, data: st.DataObject) -> None:
    bad = data.draw(malformed_graphs([defect]))
    with pytest.raises(GraphValidationError) as info:
        bad.build()
    message = str(info.value)
    assert message and "\n" not in message
    assert bad.needle in message


# -- 5. states_for / inputs_for produce inputs the graph accepts ------------------------


@pytest.mark.anyio
@quick
@given(pair=with_input(graphs(allow_delays=False, max_nodes=6)))
async def test_inputs_for_a_generated_graph_are_accepted(pair: tuple[GraphCase, Any]) -> None:
    case, state = pair
    app = case.compile()
    config = {"recursion_limit": 60}
    try:
        expected = case.reference(state, recursion_limit=60).values
    except (GraphRecursionError, InvalidUpdateError) as exc:
        # Inputs steer the routers: a huge negative `visits` can keep a loop going, and
        # another route can make two nodes write `last` in one step. Same verdict, then.
        with pytest.raises(type(exc)):
            await app.ainvoke(state, config)
        return
    assert await app.ainvoke(state, config) == expected


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Inner(TypedDict):
    x: float
    y: list[int]


class TypedState(TypedDict):
    name: str
    count: Annotated[int, operator.add]
    scores: Annotated[list[float], operator.add]
    meta: dict[str, int | None]
    flags: NotRequired[set[bool]]
    mode: Literal["a", "b"]
    inner: Inner
    pair: tuple[int, str]


@dataclasses.dataclass
class DataState:
    name: str
    items: Annotated[list[dict[str, str]], operator.add] = dataclasses.field(default_factory=list)
    color: Color = Color.RED
    maybe: float | None = None
    raw: bytes = b""


@attrs.define
class AttrsState:
    name: str
    tags: Annotated[frozenset[str], operator.or_] = attrs.Factory(frozenset)
    nested: list[tuple[int, ...]] = attrs.Factory(list)
    anything: Any = None


def identity_app(schema: type[Any]) -> Any:
    def look(state: Any) -> None:
        return None

    graph = StateGraph(schema)
    graph.add_node("look", look)
    graph.add_edge(START, "look")
    graph.add_edge("look", END)
    return graph.compile()


def as_dict(state: Any) -> dict[str, Any]:
    if isinstance(state, Mapping):
        return dict(state)
    if attrs.has(type(state)):
        return attrs.asdict(state, recurse=False)
    return {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}


def states_and_inputs(schema: type[Any]) -> st.SearchStrategy[Any]:
    app = identity_app(schema)
    return st.tuples(st.just(app), states_for(schema), inputs_for(app))


@pytest.mark.anyio
@quick
@given(
    drawn=st.sampled_from([TypedState, DataState, AttrsState]).flatmap(states_and_inputs),
)
async def test_states_for_and_inputs_for_are_accepted(drawn: tuple[Any, Any, Any]) -> None:
    app, state, given_input = drawn
    if isinstance(state, Mapping):
        assert set(state) <= set(app.schema.keys)
    else:
        assert isinstance(state, app.schema.cls)
    # A node that changes nothing: the run ends with the state it started from.
    assert await app.ainvoke(state) == as_dict(state)
    final = await app.ainvoke(given_input)
    for key, value in given_input.items():
        assert final[key] == value


@settings(max_examples=10, database=None)
@given(data=st.data())
def test_inputs_for_takes_overrides(data: st.DataObject) -> None:
    drawn = data.draw(inputs_for(identity_app(TypedState), name=st.just("fixed")))
    assert drawn["name"] == "fixed"
    state = data.draw(states_for(DataState, name=st.just("x")))
    assert state.name == "x"


def test_strategies_reject_unknown_keys_and_non_graphs() -> None:
    from hypothesis.errors import InvalidArgument

    with pytest.raises(InvalidArgument, match="nope"):
        inputs_for(identity_app(TypedState), nope=st.just(1))
    with pytest.raises(InvalidArgument, match="compiled graph"):
        inputs_for(42)
    with pytest.raises(InvalidArgument, match="state schema"):
        states_for(int)


@pytest.mark.parametrize("bad", [{"unknown_key": 1}, [("name", "x")]])
def test_inputs_outside_the_strategies_are_rejected(bad: Any) -> None:
    with pytest.raises(InvalidInputError):
        identity_app(TypedState).invoke(bad)


# -- the strategies themselves ------------------------------------------------------------


@settings(max_examples=60, deadline=None, database=None)
@given(case=graphs())
def test_generated_graphs_validate_and_terminate(case: GraphCase) -> None:
    case.compile()  # valid
    ref = case.reference()
    assert ref.steps == case.recursion_limit or (ref.steps == 0 and case.recursion_limit == 1)
    assert "add_node" in repr(case)


def test_reference_follows_the_documented_write_order() -> None:
    # Writes apply in node-name order, then Send order; routers see the step's writes.
    from headwater.testing.strategies import BranchCase, Choice, NodeCase

    case = GraphCase(
        kind="typeddict",
        nodes=(
            NodeCase(name="b"),
            NodeCase(name="a"),
            NodeCase(name="w", send_target=True),
        ),
        edges=((START, "b"), (START, "a")),
        branches=(BranchCase(choice=Choice(source="b", sends=(("w", 2),))),),
    )
    ref = case.reference(recursion_limit=10)
    assert ref.tasks == (("a", "b"), ("w", "w"))
    assert ref.values["log"] == ["a@0|0", "b@0|0", "w<b.0|0", "w<b.1|0"]
