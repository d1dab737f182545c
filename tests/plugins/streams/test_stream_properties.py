"""Properties of the stream projections, over random graphs and random token streams.

- folding the ``updates`` stream step by step with the schema's reducers gives each
  ``values`` chunk, and the last one is what ``ainvoke`` returns;
- in ``astream_events``, every start event has exactly one end or error event after it,
  whether the run succeeds, hits the recursion limit, or a model fails mid-stream;
- for any tokens and chunking, the streamed chunks add up to the model's final message;
  across any mix of sync and async nodes running in parallel, each node's tokens arrive
  exactly once and in order, in ``astream_events`` and in the ``messages`` mode alike.
"""

from __future__ import annotations

import collections
import re
import typing
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, TypedDict

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headwater import START, StateGraph, create_plugin_manager, hookimpl
from headwater.errors import GraphRecursionError
from headwater.events import Subscription
from headwater.messages import AIMessageChunk, AnyMessage, add_messages
from headwater.testing.fake import FakeChatModel, ScriptedError, split_tokens
from headwater.testing.strategies import GraphCase, graphs

pytestmark = pytest.mark.anyio

# No example database: nothing is written into the checkout.
quick = settings(max_examples=40, deadline=None, database=None)


# -- folding updates gives values ----------------------------------------------------------


def as_dict(state: Any) -> dict[str, Any]:
    if isinstance(state, Mapping):
        return dict(state)
    return {name: getattr(state, name) for name in typing.get_type_hints(type(state))}


def reducers_of(schema: type[Any]) -> dict[str, Any]:
    hints = typing.get_type_hints(schema, include_extras=True)
    return {
        key: (hint.__metadata__[0] if typing.get_origin(hint) is Annotated else None)
        for key, hint in hints.items()
    }


def fold_step(state: dict[str, Any], step: list[tuple[str, Any]], reducers: dict[str, Any]) -> None:
    # The scheduler applies a step's writes in node-name order (stable for Sends).
    for _, update in sorted(step, key=lambda pair: pair[0]):
        for key, value in as_dict(update or {}).items():
            reducer = reducers[key]
            state[key] = reducer(state[key], value) if reducer and key in state else value


def comparable(state: Mapping[str, Any]) -> dict[str, Any]:
    # `log` concatenates in write order; the order of a step's Send tasks on the stream
    # is their completion order, so compare it as a multiset. Every other key is exact.
    out = dict(state)
    if "log" in out:
        out["log"] = collections.Counter(out["log"])
    return out


@quick
@given(case=graphs())
async def test_folding_updates_gives_every_values_chunk(case: GraphCase) -> None:
    app = case.compile()
    reducers = reducers_of(case.schema)
    # The first values chunk is the input applied; an input that writes nothing has none
    # (as in LangGraph), and the state starts from the schema's defaults.
    state: dict[str, Any] | None = None if case.input else dict(app.schema.defaults())
    step: list[tuple[str, Any]] = []
    async for mode, chunk in app.astream(
        case.input, case.config, stream_mode=["updates", "values"]
    ):
        if mode == "updates":
            ((node, update),) = chunk.items()
            step.append((node, update))
            continue
        values = as_dict(chunk)
        if state is None:  # the first values chunk is the input, before any node ran
            assert step == []
            state = values
        else:
            fold_step(state, step, reducers)
            assert comparable(state) == comparable(values)
        step = []
    assert step == [], "updates after the last values chunk"
    assert state is not None
    final = as_dict(await app.ainvoke(case.input, case.config))
    assert final == as_dict(case.reference().values)
    assert comparable(state) == comparable(final)


# -- every start has one end or error ------------------------------------------------------


def assert_paired(events: Sequence[Mapping[str, Any]]) -> None:
    started: dict[str, str] = {}
    finished: set[str] = set()
    for event in events:
        kind, run_id = event["event"], event["run_id"]
        family, _, phase = kind.removeprefix("on_").rpartition("_")
        if phase == "start":
            assert run_id not in started, f"two starts for run {run_id}: {kind}"
            started[run_id] = family
        elif phase in ("end", "error"):
            assert started.get(run_id) == family, f"{kind} without its start ({event['name']})"
            assert run_id not in finished, f"a second end/error for {event['name']}: {kind}"
            finished.add(run_id)
        elif phase == "stream":
            assert run_id in started and run_id not in finished, f"{kind} outside its run"
        for parent in event["parent_ids"]:
            assert parent in started, f"{kind} names parent {parent} that never started"
    assert finished == set(started), "runs that never ended: " + ", ".join(
        sorted(set(started) - finished)
    )


async def collect_events(app: Any, *args: Any) -> tuple[list[dict[str, Any]], BaseException | None]:
    events: list[dict[str, Any]] = []
    try:
        async for event in app.astream_events(*args, version="v2"):
            events.append(event)
    except Exception as exc:
        return events, exc
    return events, None


@quick
@given(case=graphs(max_nodes=6))
async def test_every_start_event_has_one_end(case: GraphCase) -> None:
    events, error = await collect_events(case.compile(), case.input, case.config)
    assert error is None
    assert_paired(events)
    assert events[-1]["event"] == "on_chain_end" and events[-1]["parent_ids"] == []


@quick
@given(case=graphs(endless=True, max_nodes=5, allow_delays=False), limit=st.integers(1, 12))
async def test_a_run_stopped_by_the_recursion_limit_closes_every_start(
    case: GraphCase, limit: int
) -> None:
    events, error = await collect_events(case.compile(), case.input, {"recursion_limit": limit})
    assert isinstance(error, GraphRecursionError)
    assert_paired(events)
    assert events[-1]["event"] == "on_chain_error" and events[-1]["parent_ids"] == []


# -- token streams -------------------------------------------------------------------------

tokens = st.lists(st.text(min_size=1, max_size=6), min_size=1, max_size=12)


@attrs.frozen
class LLMNode:
    name: str
    sync: bool
    tokens: list[str]
    fail_after: int | None  # raise after this many tokens; None: answer in full


llm_nodes = st.lists(
    st.builds(
        LLMNode,
        name=st.from_regex(r"[a-z]{1,6}", fullmatch=True),
        sync=st.booleans(),
        tokens=tokens,
        fail_after=st.none(),
    ),
    min_size=1,
    max_size=4,
    unique_by=lambda node: node.name,
)


class Chat(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]


def parallel_llm_graph(nodes: Sequence[LLMNode], *, token_delay: float = 0.0) -> Any:
    """Every node starts at START, in parallel; each calls its own model once."""
    graph = StateGraph(Chat)
    for spec in nodes:
        script: Any = list(spec.tokens)
        if spec.fail_after is not None:
            script = ScriptedError(
                RuntimeError(f"{spec.name} failed"),
                after=spec.fail_after,
                partial="".join(f" {t}" for t in spec.tokens),
            )
        llm = FakeChatModel([script], token_delay=token_delay)
        if spec.sync:

            def node(state: Chat, llm: FakeChatModel = llm) -> dict[str, Any]:
                return {"messages": [llm.invoke(state["messages"])]}

        else:

            async def node(state: Chat, llm: FakeChatModel = llm) -> dict[str, Any]:  # type: ignore[misc]
                return {"messages": [await llm.ainvoke(state["messages"])]}

        graph.add_node(spec.name, node)
        graph.add_edge(START, spec.name)
    return graph.compile()


def by_node(pairs: Sequence[tuple[str, str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = collections.defaultdict(list)
    for node, token in pairs:
        out[node].append(token)
    return dict(out)


@quick
@given(nodes=llm_nodes, delay=st.sampled_from([0.0, 0.0005]))
async def test_tokens_arrive_once_and_in_order_per_node_in_astream_events(
    nodes: list[LLMNode], delay: float
) -> None:
    app = parallel_llm_graph(nodes, token_delay=delay)
    events, error = await collect_events(app, {"messages": ["go"]})
    assert error is None
    assert_paired(events)
    streamed = by_node(
        [
            (e["name"], e["data"]["chunk"].content)
            for e in events
            if e["event"] == "on_chat_model_stream" and e["data"]["chunk"].content
        ]
    )
    assert streamed == {n.name: n.tokens for n in nodes}
    for end in (e for e in events if e["event"] == "on_chat_model_end"):
        # The chunks add up to the final message.
        chunks = [
            e["data"]["chunk"]
            for e in events
            if e["event"] == "on_chat_model_stream" and e["run_id"] == end["run_id"]
        ]
        total = sum(chunks[1:], chunks[0])
        assert isinstance(total, AIMessageChunk)
        assert total.to_message().content == end["data"]["output"].content
        assert end["data"]["output"].content == "".join(streamed[end["name"]])


@quick
@given(nodes=llm_nodes)
async def test_tokens_arrive_once_and_in_order_per_node_in_messages_mode(
    nodes: list[LLMNode],
) -> None:
    app = parallel_llm_graph(nodes)
    pairs = []
    async for chunk, metadata in app.astream({"messages": ["go"]}, stream_mode="messages"):
        if chunk.content:
            pairs.append((metadata["node"], chunk.content))
    assert by_node(pairs) == {n.name: n.tokens for n in nodes}


@st.composite
def with_one_failing(draw: st.DrawFn) -> tuple[list[LLMNode], LLMNode]:
    nodes = draw(llm_nodes)
    index = draw(st.integers(0, len(nodes) - 1))
    failing = attrs.evolve(nodes[index], fail_after=draw(st.integers(0, len(nodes[index].tokens))))
    nodes[index] = failing
    return nodes, failing


@quick
@given(drawn=with_one_failing())
async def test_a_model_failing_mid_stream_closes_every_start(
    drawn: tuple[list[LLMNode], LLMNode],
) -> None:
    nodes, failing = drawn
    events, error = await collect_events(parallel_llm_graph(nodes), {"messages": ["go"]})
    assert isinstance(error, RuntimeError) and str(error) == f"{failing.name} failed"
    assert_paired(events)
    errors = [e for e in events if e["event"] == "on_chat_model_error"]
    assert [e["name"] for e in errors] == [failing.name]
    streamed = [
        e["data"]["chunk"].content
        for e in events
        if e["event"] == "on_chat_model_stream" and e["name"] == failing.name
    ]
    partial = "".join(f" {t}" for t in failing.tokens)
    assert streamed == split_tokens(partial)[: failing.fail_after]  # all that came before


# -- the per-call token fast path gives exactly what the general path gives ---------------


@attrs.frozen
class TalkNode:
    name: str
    sync: bool
    tokens: list[str]
    tags: tuple[str, ...]
    calls: int  # model calls in the node


talk_nodes = st.lists(
    st.builds(
        TalkNode,
        name=st.from_regex(r"[a-z]{1,6}", fullmatch=True),
        sync=st.booleans(),
        tokens=tokens,
        tags=st.sampled_from([(), ("nostream",), ("keep",), ("keep", "nostream")]),
        calls=st.integers(1, 2),
    ),
    min_size=1,
    max_size=3,
    unique_by=lambda node: node.name,
)


class Watcher:
    """Subscribes to every event: the stream is then not the run's only subscriber, so
    every token takes the general path (Bus._deliver, an Event, the mode's project)."""

    @hookimpl
    def headwater_event_subscribers(self, run: Any) -> list[Subscription]:
        return [Subscription(callback=lambda event: None)]


def chain_of_models(nodes: Sequence[TalkNode], plugin_manager: Any) -> Any:
    """The nodes one after the other, each calling a model tagged with its tags."""
    graph = StateGraph(Chat)
    previous = START
    for spec in nodes:
        llm = FakeChatModel([list(spec.tokens)], cycle=True, tags=list(spec.tags))
        if spec.sync:

            def node(state: Chat, llm: FakeChatModel = llm, n: int = spec.calls) -> Any:
                return {"messages": [llm.invoke(state["messages"]) for _ in range(n)]}

        else:

            async def node(state: Chat, llm: FakeChatModel = llm, n: int = spec.calls) -> Any:  # type: ignore[misc]
                return {"messages": [await llm.ainvoke(state["messages"]) for _ in range(n)]}

        graph.add_node(spec.name, node)
        graph.add_edge(previous, spec.name)
        previous = spec.name
    return graph.compile(plugin_manager=plugin_manager)


UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def renumbered(items: Any, ids: dict[str, str]) -> Any:
    """``items`` with every run id and message id replaced by its order of appearance."""
    if isinstance(items, str):  # an id, or one inside a string ("node:<task id>")
        return UUID.sub(lambda m: ids.setdefault(m.group(), f"#{len(ids)}"), items)
    if isinstance(items, Mapping):
        return {k: renumbered(v, ids) for k, v in items.items()}
    if isinstance(items, list | tuple):
        return type(items)(renumbered(v, ids) for v in items)
    if attrs.has(type(items)):
        return renumbered(attrs.asdict(items, recurse=False), ids) | {"type": type(items)}
    return items


@settings(max_examples=30, deadline=None, database=None)
@given(
    nodes=talk_nodes,
    mode=st.sampled_from(["events", "messages", "messages+custom"]),
    include_tags=st.sampled_from([None, ["keep"]]),
)
async def test_the_token_fast_path_yields_what_the_general_path_yields(
    nodes: list[TalkNode], mode: str, include_tags: list[str] | None
) -> None:
    fast = chain_of_models(nodes, create_plugin_manager())
    general = chain_of_models(nodes, create_plugin_manager(plugins=[Watcher()]))

    async def run(app: Any) -> list[Any]:
        if mode == "events":
            stream = app.astream_events({"messages": ["go"]}, include_tags=include_tags)
        elif mode == "messages":
            stream = app.astream({"messages": ["go"]}, stream_mode="messages")
        else:
            stream = app.astream({"messages": ["go"]}, stream_mode=["messages", "custom"])
        return renumbered([item async for item in stream], {})

    assert await run(fast) == await run(general)


# -- several subscriptions binding a call's tokens keep the fast path, and get the same ---


class Binder:
    """A second subscriber to the tokens, wanting the first ``wants`` of each model call
    (a tracer timing the first token wants one). With ``bind``, it binds each call
    (``Subscription.bind_source``), so the tokens keep the fast path and reach it and the
    stream through one bound callable each; without, every token takes the general path.
    """

    def __init__(self, *, bind: bool, wants: int) -> None:
        self.bind = bind
        self.wants = wants
        self.got: dict[str, list[Any]] = {}  # model call id -> the tokens' data it kept
        self.seqs: list[int] = []  # sequence numbers of the model calls' start and end
        self.handed: list[int] = []  # bound: how many tokens each call handed over

    def keep(self, run_id: str, data: Any) -> bool:
        got = self.got.setdefault(run_id, [])
        if len(got) < self.wants:
            got.append(data)
        return len(got) >= self.wants

    def on_event(
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
        if kind == "on_chat_model_stream":
            self.keep(run_id, data)
        else:
            self.seqs.append(seq)

    def bind_source(self, kind: str, ns: tuple[str, ...], header: Any) -> Any:
        run_id = header[1]
        index = len(self.handed)

        def put(data: Any) -> bool:
            if index == len(self.handed):  # the first token of this call
                self.handed.append(0)
            self.handed[index] += 1
            return self.keep(run_id, data)

        return put

    @hookimpl
    def headwater_event_subscribers(self, run: Any) -> list[Subscription]:
        kinds = frozenset({"on_chat_model_start", "on_chat_model_stream", "on_chat_model_end"})
        return [
            Subscription(
                callback=self.on_event,
                kinds=kinds,
                raw=True,
                bind_source=self.bind_source if self.bind else None,
            )
        ]

    def kept(self) -> list[Any]:
        """What it kept, call by call in the order they streamed (ids renumbered)."""
        return renumbered(list(self.got.values()), {})


@settings(max_examples=30, deadline=None, database=None)
@given(
    nodes=talk_nodes,
    mode=st.sampled_from(["events", "messages", "ainvoke"]),
    include_tags=st.sampled_from([None, ["keep"]]),
    binders=st.integers(1, 2),
    wants=st.integers(0, 3),
)
async def test_tokens_bound_by_several_subscriptions_reach_each_as_on_the_general_path(
    nodes: list[TalkNode], mode: str, include_tags: list[str] | None, binders: int, wants: int
) -> None:
    watchers: list[Binder] = []

    async def run(bind: bool) -> tuple[list[Any], list[list[Any]], list[list[int]]]:
        watchers[:] = [Binder(bind=bind, wants=wants) for _ in range(binders)]
        app = chain_of_models(nodes, create_plugin_manager(plugins=watchers))
        if mode == "ainvoke":  # nobody streams: the binders are the tokens' only subscribers
            out = [await app.ainvoke({"messages": ["go"]})]
        elif mode == "events":
            stream = app.astream_events({"messages": ["go"]}, include_tags=include_tags)
            out = [item async for item in stream]
        else:
            out = [item async for item in app.astream({"messages": ["go"]}, stream_mode="messages")]
        return renumbered(out, {}), [w.kept() for w in watchers], [w.seqs for w in watchers]

    fast, fast_kept, fast_seqs = await run(bind=True)
    # A bound callable that has had enough is handed no more, whoever else wants them.
    chunks = [len(node.tokens) + 1 for node in nodes for _ in range(node.calls)]  # + usage
    for watcher in watchers:
        assert watcher.handed == [min(max(wants, 1), n) for n in chunks]
    general, general_kept, general_seqs = await run(bind=False)
    assert fast == general
    assert fast_kept == general_kept
    calls = sum(node.calls for node in nodes)
    assert all(len(kept) == calls for kept in fast_kept)
    # Bound tokens take no sequence number: a call's end comes right after its start.
    for seqs in fast_seqs:
        assert len(seqs) == 2 * calls
        assert all(end - start == 1 for start, end in zip(seqs[::2], seqs[1::2], strict=True))
    for seqs in general_seqs:  # and there each token takes one
        assert all(end - start > 1 for start, end in zip(seqs[::2], seqs[1::2], strict=True))


# -- a mode's bind gives what its project gives, event by event ----------------------------

_names = st.from_regex(r"[a-z]{1,5}", fullmatch=True)
_bound_events = st.fixed_dictionaries(
    {
        "kind": st.sampled_from(
            ["on_chat_model_stream", "on_chain_start", "on_chain_end", "on_custom_event"]
        ),
        "name": _names,
        "run_id": _names,
        "parent_ids": st.lists(_names, max_size=2).map(tuple),
        "tags": st.lists(st.sampled_from(["keep", "nostream", "x"]), max_size=2).map(tuple),
        "metadata": st.dictionaries(_names, st.integers(), max_size=3),
        "ns": st.sampled_from([(), ("sub:1",)]),
        "text": st.text(max_size=4),
        "with_id": st.booleans(),
    }
)


@settings(max_examples=200, deadline=None, database=None)
@given(spec=_bound_events, name=st.sampled_from(["events", "messages"]))
def test_a_modes_bind_gives_what_its_project_gives(spec: dict[str, Any], name: str) -> None:
    """The contract the stream relies on when it uses ``bind`` instead of building an
    :class:`Event` (for a model call's tokens, and for any event a mode can bind)."""
    from headwater_streams import headwater_stream_modes

    from headwater.events import SKIP, Event
    from headwater.runtime import Run

    chunk = AIMessageChunk(content=spec["text"], id="m1" if spec["with_id"] else None)
    data: Any = {"chunk": chunk} if spec["kind"] == "on_chat_model_stream" else {"x": 1}
    header = (spec["name"], spec["run_id"], spec["parent_ids"], spec["tags"], spec["metadata"])
    run = Run(graph_name="g", config={}, input={}, plugin_manager=create_plugin_manager())
    mode = headwater_stream_modes()[name](run)
    assert mode.bind is not None
    bound = mode.bind(spec["kind"], *header, spec["ns"])
    if bound is None:
        return  # the mode projects these events from the Event itself
    event = Event(
        event=spec["kind"], name=spec["name"], run_id=spec["run_id"],
        parent_ids=spec["parent_ids"], tags=spec["tags"], metadata=spec["metadata"],
        data=data, seq=1, ns=spec["ns"],
    )  # fmt: skip
    finish = mode.finish or (lambda item: item)
    got, expected = bound(data), mode.project(event)
    assert (got is SKIP) == (expected is SKIP)
    if got is not SKIP:
        assert finish(got) == finish(expected)
