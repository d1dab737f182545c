"""headwater's pytest plugin and hypothesis strategies, as a user's test suite uses them.

``pytester`` writes a user's test module into a temporary project and runs pytest on it
in a subprocess: the fixtures must arrive through the ``pytest11`` entry point alone
(nothing is imported or configured), and a property that does not hold must be reported
as a failing test with hypothesis's (shrunk) failing example.
"""

from __future__ import annotations

import importlib.metadata

import pytest

pytest_plugins = ["pytester"]

USER_TESTS = """
import operator
from typing import Annotated, TypedDict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headwater import END, START, StateGraph
from headwater.testing.fake import FakeChatModel
from headwater.testing.strategies import graphs, inputs_for, states_for


class Chat(TypedDict):
    messages: Annotated[list[str], operator.add]
    reply: str


@pytest.fixture
def anyio_backend():
    return "asyncio"


def build_chat(llm):
    async def talk(state):
        reply = await llm.ainvoke(state["messages"][-1])
        return {"reply": reply.content, "messages": [reply.content]}

    graph = StateGraph(Chat)
    graph.add_node("talk", talk)
    graph.add_edge(START, "talk")
    graph.add_edge("talk", END)
    return graph.compile()


@pytest.mark.anyio
async def test_tokens(fake_chat_model, collect_events):
    llm = fake_chat_model(["Hi there"])
    assert isinstance(llm, FakeChatModel)
    events = await collect_events(build_chat(llm), {"messages": ["hello"]})
    chunks = [e["data"]["chunk"] for e in events if e["event"] == "on_chat_model_stream"]
    assert [c.content for c in chunks if c.content] == ["Hi", " there"]
    assert events[-1]["event"] == "on_chain_end"


@pytest.mark.anyio
async def test_filters_pass_through(fake_chat_model, collect_events):
    app = build_chat(fake_chat_model(["one two"]))
    events = await collect_events(app, {"messages": ["x"]}, include_types=["on_chain_end"])
    assert {e["event"] for e in events} == {"on_chain_end"}


@pytest.mark.anyio
async def test_updates(fake_chat_model, collect_stream):
    app = build_chat(fake_chat_model(["Hello"]))
    chunks = await collect_stream(app, {"messages": ["hi"]}, stream_mode="updates")
    assert chunks == [{"talk": {"reply": "Hello", "messages": ["Hello"]}}]


class Counter(TypedDict):
    n: int
    label: str


def halve(state):
    return {"n": state["n"] // 2, "label": state["label"].strip()}


counter = StateGraph(Counter)
counter.add_node("halve", halve)
counter.add_edge(START, "halve")
counter.add_edge("halve", END)
counter_app = counter.compile()


@settings(max_examples=30, deadline=None)
@given(inputs_for(counter_app))
def test_any_input_runs(state):
    assert set(counter_app.invoke(state)) == {"n", "label"}


@settings(max_examples=30, deadline=None)
@given(inputs_for(counter_app, n=st.integers(min_value=0)))
def test_halving_a_natural_stays_natural(state):
    assert counter_app.invoke(state)["n"] >= 0


@settings(max_examples=30, deadline=None)
@given(states_for(Chat))
def test_states_for(state):
    assert isinstance(state["messages"], list) and isinstance(state["reply"], str)


@settings(max_examples=15, deadline=None)
@given(graphs(max_nodes=4))
def test_random_graphs_reach_the_reference(case):
    assert case.compile().invoke(case.input, case.config) == case.reference().values


@settings(max_examples=200, deadline=None)
@given(inputs_for(counter_app))
def test_deliberately_false_property(state):
    assert counter_app.invoke(state)["n"] >= 0  # false for negative n
"""


def test_the_plugin_is_registered_under_pytest11() -> None:
    entry_points = importlib.metadata.entry_points(group="pytest11")
    assert {ep.name: ep.value for ep in entry_points}["headwater"] == (
        "headwater.testing.pytest_plugin"
    )


@pytest.fixture
def pytester(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """The user's suite needs the standard stream modes and filters, nothing else."""
    monkeypatch.setenv("HEADWATER_LOAD_PLUGINS", "streams,filters")
    monkeypatch.delenv("HEADWATER_TRACE_PLUGINS", raising=False)
    return pytester


def test_fixtures_and_strategies_in_a_users_suite(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user=USER_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=7, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*test_deliberately_false_property(*",
            "*'n': -1,*",
            "FAILED test_user.py::test_deliberately_false_property - *",
        ]
    )


def test_fixtures_are_listed(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("--fixtures", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(
        ["*fixtures defined from headwater.testing.pytest_plugin*"], consecutive=False
    )
    for name in ("fake_chat_model", "collect_events", "collect_stream"):
        result.stdout.fnmatch_lines([f"{name}*"])
