"""add_node(..., retry=RetryPolicy(...)): failed nodes run again, only success writes."""

from __future__ import annotations

import operator
from typing import Annotated, Any, TypedDict

import pytest

from headwater import START, RetryPolicy, StateGraph, interrupt
from headwater.errors import ChatModelError, GraphValidationError
from headwater.retry import default_retry_on
from headwater.testing.fake import FakeChatModel, ScriptedError

pytestmark = pytest.mark.anyio

NOW = RetryPolicy(initial_interval=0, jitter=False)  # no waiting in tests


class State(TypedDict, total=False):
    log: Annotated[list[str], operator.add]
    answer: str


def graph_of(fn: Any, retry: RetryPolicy | None) -> Any:
    graph = StateGraph(State)
    graph.add_node("flaky", fn, retry=retry)
    graph.add_edge(START, "flaky")
    return graph.compile()


def failing(times: int, error: BaseException, *, sync: bool = False) -> tuple[Any, list[int]]:
    calls: list[int] = []

    def attempt() -> dict[str, Any]:
        calls.append(len(calls) + 1)
        if len(calls) <= times:
            raise error
        return {"log": [f"ok on {len(calls)}"]}

    if sync:
        return (lambda state: attempt()), calls

    async def node(state: State) -> dict[str, Any]:
        return attempt()

    return node, calls


@pytest.mark.parametrize("sync", [False, True])
async def test_a_transient_failure_is_retried_and_only_the_success_writes(sync: bool) -> None:
    node, calls = failing(2, TimeoutError("slow upstream"), sync=sync)
    app = graph_of(node, NOW)
    events = [e async for e in app.astream_events({"log": []})]
    assert calls == [1, 2, 3]
    assert events[-1]["data"]["output"] == {"log": ["ok on 3"]}
    flaky = [e["event"] for e in events if e["name"] == "flaky"]
    # one task, however many attempts
    assert flaky == ["on_chain_start", "on_chain_stream", "on_chain_end"]


async def test_giving_up_raises_the_last_error_with_the_attempt_count() -> None:
    node, calls = failing(10, ConnectionError("refused"))
    with pytest.raises(ConnectionError, match="refused") as caught:
        await graph_of(node, RetryPolicy(max_attempts=4, initial_interval=0)).ainvoke({})
    assert calls == [1, 2, 3, 4]
    assert "Node 'flaky' failed 4 attempts in all." in caught.value.__notes__


@pytest.mark.parametrize(
    ("retry_on", "error", "retried"),
    [
        (default_retry_on, KeyError("bug"), False),  # a bug would only fail again
        (default_retry_on, ChatModelError("overloaded", status_code=529), True),
        (default_retry_on, ChatModelError("bad request", status_code=400), False),
        (default_retry_on, ChatModelError("stream cut"), True),
        (KeyError, KeyError("k"), True),
        ((KeyError, ValueError), ValueError("v"), True),
        ((KeyError, ValueError), TimeoutError(), False),
        (lambda exc: "again" in str(exc), RuntimeError("try again"), True),
        (lambda exc: "again" in str(exc), RuntimeError("give up"), False),
    ],
)
async def test_retry_on_decides_what_is_retried(
    retry_on: Any, error: BaseException, retried: bool
) -> None:
    node, calls = failing(1, error)
    app = graph_of(node, RetryPolicy(initial_interval=0, retry_on=retry_on))
    if retried:
        assert await app.ainvoke({}) == {"log": ["ok on 2"]}
    else:
        with pytest.raises(type(error)):
            await app.ainvoke({})
    assert len(calls) == (2 if retried else 1)


async def test_without_a_policy_nothing_is_retried() -> None:
    node, calls = failing(1, TimeoutError())
    with pytest.raises(TimeoutError):
        await graph_of(node, None).ainvoke({})
    assert calls == [1]


async def test_a_model_failing_mid_stream_is_retried_and_its_partial_tokens_stay_visible() -> None:
    llm = FakeChatModel(
        [
            ScriptedError(ChatModelError("connection reset"), after=2, partial="Rivers run far"),
            "Rivers run to the sea.",
        ]
    )

    async def answer(state: State) -> dict[str, Any]:
        return {"answer": (await llm.ainvoke("where?")).text}

    app = graph_of(answer, NOW)
    events = [e async for e in app.astream_events({})]
    kinds = [e["event"] for e in events if e["event"].startswith("on_chat_model")]
    assert kinds.count("on_chat_model_start") == 2
    assert kinds.count("on_chat_model_error") == 1 and kinds.count("on_chat_model_end") == 1
    assert events[-1]["data"]["output"] == {"answer": "Rivers run to the sea."}


async def test_interrupt_is_never_retried() -> None:
    calls: list[int] = []

    def ask(state: State) -> dict[str, Any]:
        calls.append(1)
        return {"answer": interrupt("name?")}

    graph = StateGraph(State)
    graph.add_node("ask", ask, retry=RetryPolicy(retry_on=lambda exc: True, initial_interval=0))
    graph.add_edge(START, "ask")
    app = graph.compile(checkpointer="memory:")
    out = await app.ainvoke({}, {"configurable": {"thread_id": "t"}})
    assert [i.value for i in out["__interrupt__"]] == ["name?"]
    assert calls == [1]


def test_delays_grow_exponentially_up_to_the_cap() -> None:
    policy = RetryPolicy(initial_interval=1, backoff_factor=3, max_interval=20, jitter=False)
    assert [policy.delay(n) for n in (1, 2, 3, 4)] == [1, 3, 9, 20]
    jittered = RetryPolicy(initial_interval=2)
    assert all(1 <= jittered.delay(1) <= 3 for _ in range(100))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_attempts": 0}, r"max_attempts=\.\.\.\) is the number of attempts"),
        ({"max_attempts": 2.5}, r"an int >= 1"),
        ({"initial_interval": -1}, r"initial_interval=\.\.\.\) must be a number >= 0"),
        ({"backoff_factor": 0}, r"backoff_factor=\.\.\.\) must be a number > 0"),
        ({"retry_on": "TimeoutError"}, r"exception class, a tuple of them, or a function"),
        ({"retry_on": (KeyError, "x")}, r"exception class, a tuple of them"),
        ({"retry_on": ()}, r"exception class, a tuple of them"),
        ({"retry_on": int}, r"exception class"),
    ],
)
def test_a_bad_policy_is_a_clear_error(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(GraphValidationError, match=message):
        RetryPolicy(**kwargs)


def test_retry_must_be_a_policy_and_not_on_a_subgraph() -> None:
    graph = StateGraph(State)
    with pytest.raises(GraphValidationError, match=r"retry of node 'n' must be a headwater"):
        graph.add_node("n", lambda s: {}, retry=3)  # type: ignore[arg-type]
    sub = graph_of(lambda s: {}, None)
    with pytest.raises(GraphValidationError, match=r"subgraph, which cannot be retried"):
        StateGraph(State).add_node("sub", sub, retry=NOW)
