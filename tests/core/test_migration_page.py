"""The migration page (docs/migrating-from-langgraph.md) cannot drift from the code.

* Every bullet under "Behavioural differences" is pinned by one test here, registered by
  the bullet's bold words with :func:`pins`; a bullet without a pin, or a pin without a
  bullet, fails :func:`test_every_difference_on_the_page_is_pinned`.
* Every headwater import in the imports table runs.
* Every LangGraph name users import (recorded from langgraph 1.2.24) is on the page,
  mapped or listed as absent with what to use instead; the absent ones are absent.

The LangGraph side of each difference was observed by running the same code against
langgraph 1.2.24 / langchain-core 1.8.3.
"""

from __future__ import annotations

import operator
import re
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypedDict

import anyio
import pytest

import headwater
from headwater import DEFAULT_RECURSION_LIMIT, END, START, Command, MessagesState, StateGraph
from headwater.errors import (
    CheckpointError,
    GraphValidationError,
    HeadwaterError,
    InvalidInputError,
    InvalidUpdateError,
    SerdeError,
    UnknownStreamModeError,
    UnsupportedVersionError,
)
from headwater.messages import AIMessage, ToolCall
from headwater.retry import RetryPolicy
from headwater.testing.fake import FakeChatModel
from headwater.tools import ToolNode, tool, tools_condition

PAGE = Path(__file__).resolve().parents[2] / "docs" / "migrating-from-langgraph.md"
TEXT = PAGE.read_text(encoding="utf-8")

PINS: dict[str, str] = {}


def pins(lead: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register the decorated test as the pin of the page's bullet whose bold words are
    ``lead``."""

    def register(test: Callable[..., Any]) -> Callable[..., Any]:
        assert lead not in PINS, f"two pins for {lead!r}"
        PINS[lead] = test.__name__
        return test

    return register


def bullets() -> list[str]:
    section = TEXT.split("## Behavioural differences", 1)[1]
    return re.findall(r"^\* \*\*(.+?)\*\*", section, flags=re.M)


def test_every_difference_on_the_page_is_pinned() -> None:
    on_page = bullets()
    assert len(on_page) == len(set(on_page)), "two bullets with the same bold words"
    assert sorted(set(on_page) - set(PINS)) == [], "bullets without a pinning test"
    assert sorted(set(PINS) - set(on_page)) == [], "pins of bullets no longer on the page"


# -- the tables --------------------------------------------------------------------------


def table_rows(heading: str) -> list[tuple[str, str]]:
    section = TEXT.split(heading, 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) == 2 and not set(cells[0]) <= {"-"}:
            rows.append((cells[0], cells[1]))
    return rows[1:]  # without the header


def test_every_headwater_import_in_the_table_runs() -> None:
    imports = [
        code
        for _, right in table_rows("## Imports and API")
        for code in re.findall(r"`(from headwater\w*(?:\.\w+)* import [^`]+)`", right)
    ]
    assert len(imports) >= 15
    for code in imports:
        exec(code.removesuffix(", …"), {})


LANGGRAPH_NAMES = {  # what LangGraph 1.2 users import (a curated part of the public API)
    "langgraph.graph": [
        "END", "MessageGraph", "MessagesState", "START", "StateGraph", "add_messages",
    ],
    "langgraph.graph.message": ["REMOVE_ALL_MESSAGES"],
    "langgraph.types": [
        "All", "CachePolicy", "Command", "Durability", "Interrupt", "Overwrite", "RetryPolicy",
        "Send", "StateSnapshot", "StreamMode", "StreamPart", "StreamWriter", "TimeoutPolicy",
        "interrupt",
    ],
    "langgraph.prebuilt": [
        "InjectedState", "InjectedStore", "ToolCallTransformer", "ToolNode", "ToolRuntime",
        "ValidationNode", "create_react_agent", "tools_condition",
    ],
    "langgraph.errors": [
        "EmptyInputError", "GraphInterrupt", "GraphRecursionError", "InvalidUpdateError",
        "NodeInterrupt", "ParentCommand",
    ],
    "langgraph.config": ["get_config", "get_store", "get_stream_writer"],
    "langgraph.func": ["entrypoint", "task"],
    "langgraph.runtime": ["Runtime", "get_runtime"],
    "langgraph.checkpoint.memory": ["InMemorySaver", "MemorySaver"],
    "langgraph.constants": ["TAG_NOSTREAM"],
}  # fmt: skip


@pytest.mark.parametrize(
    "name", sorted({n for names in LANGGRAPH_NAMES.values() for n in names}), ids=str
)
def test_every_langgraph_name_is_on_the_page(name: str) -> None:
    code = " ".join(re.findall(r"`([^`]+)`", TEXT))
    assert re.search(rf"\b{re.escape(name)}\b", code), f"{name} is not on the migration page"


def test_names_listed_as_absent_are_absent() -> None:
    absent = [
        name
        for left, _ in table_rows("## Not in headwater, and what to use instead")
        for cell in re.findall(r"`([^`]+)`", left)
        for name in re.findall(r"[A-Za-z_]\w*", cell)
        if name not in ("Command", "PARENT", "graph", "interrupt_before")
    ]
    assert "create_react_agent" in absent and "Runtime" in absent
    import headwater.checkpoint
    import headwater.errors
    import headwater.messages
    import headwater.tools

    for module in (
        headwater,
        headwater.tools,
        headwater.messages,
        headwater.errors,
        headwater.checkpoint,
    ):
        present = [n for n in absent if n in getattr(module, "__all__", ())]
        assert present == [], f"{module.__name__} has {present}: move them to the imports table"


# -- shared graphs ---------------------------------------------------------------------------


class Log(TypedDict, total=False):
    log: Annotated[list[str], operator.add]
    n: int


def chain(*nodes: tuple[str, Callable[..., Any]], **compile_args: Any) -> Any:
    graph = StateGraph(Log)
    previous = START
    for name, fn in nodes:
        graph.add_node(name, fn)
        graph.add_edge(previous, name)
        previous = name
    graph.add_edge(previous, END)
    return graph.compile(**compile_args)


def logs(name: str) -> Callable[[Log], dict[str, Any]]:
    def node(state: Log) -> dict[str, Any]:
        return {"log": [name]}

    return node


def chat_app(llm: FakeChatModel, *, tags: tuple[str, ...] = ()) -> Any:
    async def chatbot(state: MessagesState) -> dict[str, Any]:
        return {"messages": [await llm.ainvoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("chatbot", chatbot, tags=list(tags))
    graph.add_edge(START, "chatbot")
    graph.add_edge("chatbot", END)
    return graph.compile()


async def events_of(
    app: Any, input: Any, config: Any = None, **kwargs: Any
) -> list[dict[str, Any]]:
    return [e async for e in app.astream_events(input, config, **kwargs)]


THREAD = {"configurable": {"thread_id": "t"}}

# -- running a graph ------------------------------------------------------------------------


@pins("The sync API works where an event loop is running")
@pytest.mark.anyio
async def test_sync_api_in_a_running_loop() -> None:
    app = chain(("a", logs("a")), checkpointer="memory:")
    assert app.invoke({}, THREAD) == {"log": ["a"]}  # an async test: the loop is running
    assert app.get_state(THREAD).values == {"log": ["a"]}

    async def impatient(state: Log) -> dict[str, Any]:
        app.invoke({}, THREAD)
        return {}

    with pytest.raises(HeadwaterError, match=r"await graph\.ainvoke"):
        await chain(("impatient", impatient)).ainvoke({})


@pins("`recursion_limit` counts supersteps exactly")
@pytest.mark.anyio
async def test_recursion_limit_counts_supersteps() -> None:
    assert DEFAULT_RECURSION_LIMIT == 10_007
    three = chain(("a", logs("a")), ("b", logs("b")), ("c", logs("c")))
    assert await three.ainvoke({}, {"recursion_limit": 3}) == {"log": ["a", "b", "c"]}
    with pytest.raises(headwater.errors.GraphRecursionError):
        await three.ainvoke({}, {"recursion_limit": 2})
    await three.ainvoke({}, {"recursion_limit": 1_000_000})
    with pytest.raises(InvalidInputError, match=r"config\['timeout'\]"):
        await three.ainvoke({}, {"recursion_limit": 1_000_001})


@pins("Input must match the state schema")
@pytest.mark.anyio
async def test_input_must_match_the_schema() -> None:
    app = chain(("a", logs("a")), checkpointer="memory:")
    with pytest.raises(InvalidInputError, match=r"unknown key\(s\) \['unknown'\]"):
        await app.ainvoke({"unknown": 1}, THREAD)
    for bad in ([1, 2], 42, "hi"):
        with pytest.raises(InvalidUpdateError):  # LangGraph 1.2: InvalidUpdateError
            await app.ainvoke(bad, THREAD)
        with pytest.raises(ValueError):
            await app.ainvoke(bad, THREAD)
    with pytest.raises(CheckpointError, match="no checkpoint to resume from"):
        await app.ainvoke(None, {"configurable": {"thread_id": "fresh"}})


@pins('A graph\'s default name is `"Graph"`')
@pytest.mark.anyio
async def test_default_graph_name() -> None:
    events = await events_of(chain(("a", logs("a"))), {})
    assert (events[0]["event"], events[0]["name"]) == ("on_chain_start", "Graph")
    named = chain(("a", logs("a")), name="pipeline")
    assert (await events_of(named, {}))[-1]["name"] == "pipeline"


@pins("`get_graph()` draws routers' possible destinations")
def test_get_graph_draws_unannotated_routers_everywhere() -> None:
    graph = StateGraph(Log)
    graph.add_node("a", logs("a"))
    graph.add_node("b", logs("b"))
    graph.add_edge(START, "a")
    graph.add_conditional_edges("a", lambda state: "b")
    graph.add_edge("b", END)
    view = graph.compile().get_graph()
    assert {e.target for e in view.edges if e.source == "a"} == {"a", "b", "__end__"}
    assert "| a |" in view.draw_ascii()


# -- events and streaming -------------------------------------------------------------------


@pins("A chat model without an explicit `name` takes the name of the node it runs in")
@pytest.mark.anyio
async def test_model_events_are_named_after_the_node() -> None:
    events = await events_of(chat_app(FakeChatModel(["hi"])), {"messages": ["x"]})
    model_events = [e for e in events if e["event"].startswith("on_chat_model")]
    assert {e["name"] for e in model_events} == {"chatbot"}
    assert model_events[0]["metadata"]["ls_model_name"] == "fake-model"
    named = await events_of(chat_app(FakeChatModel(["hi"], name="writer")), {"messages": ["x"]})
    assert {e["name"] for e in named if e["event"].startswith("on_chat_model")} == {"writer"}


@pins("Event metadata has headwater's short keys beside LangGraph's `langgraph_*` keys")
@pytest.mark.anyio
async def test_metadata_has_both_key_sets_and_no_step_tags() -> None:
    events = await events_of(chat_app(FakeChatModel(["hi"])), {"messages": ["x"]})
    token = next(e for e in events if e["event"] == "on_chat_model_stream")
    meta = token["metadata"]
    assert {"node", "step", "triggers", "path", "checkpoint_ns"} <= set(meta)
    assert meta["langgraph_node"] == meta["node"] == "chatbot"
    assert meta["langgraph_step"] == meta["step"] == 1
    assert meta["langgraph_path"] == ["__pregel_pull", "chatbot"]
    assert meta["langgraph_triggers"] == ["branch:to:chatbot"]
    node_start = next(
        e for e in events if e["event"] == "on_chain_start" and e["name"] == "chatbot"
    )
    assert meta["langgraph_checkpoint_ns"] == f"chatbot:{node_start['run_id']}"
    assert "ls_integration" not in meta
    assert not any(":step:" in t for e in events for t in e["tags"])


@pins("`add_node(..., tags=[...])`")
@pytest.mark.anyio
async def test_node_tags_reach_the_models_inside() -> None:
    events = await events_of(chat_app(FakeChatModel(["hi"]), tags=("chat",)), {"messages": ["x"]})
    inside = [e for e in events if e["name"] == "chatbot"]
    assert inside and all("chat" in e["tags"] for e in inside)
    assert any(e["event"] == "on_chat_model_stream" for e in inside)


@pins("Event `data` keys")
@pytest.mark.anyio
async def test_event_data_keys() -> None:
    @tool
    def add(a: int, b: int) -> int:
        """Add."""
        return a + b

    async def both(state: MessagesState) -> dict[str, Any]:
        await add.ainvoke({"a": 1, "b": 2})
        return {"messages": [await FakeChatModel(["hi"]).ainvoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("both", both)
    graph.add_edge(START, "both")
    keys = {}
    for e in await events_of(graph.compile(), {"messages": ["x"]}):
        keys.setdefault(e["event"], set(e["data"]))
    assert keys == {
        "on_chain_start": {"input"},
        "on_tool_start": {"input"},
        "on_tool_end": {"output"},
        "on_chat_model_start": {"messages", "input"},
        "on_chat_model_stream": {"chunk"},
        "on_chat_model_end": {"response", "output"},
        "on_chain_stream": {"chunk"},
        "on_chain_end": {"output"},
    }


@pins("Failures are events")
@pytest.mark.anyio
async def test_failures_are_events() -> None:
    def broken(state: Log) -> dict[str, Any]:
        raise KeyError("missing")

    seen = []
    with pytest.raises(KeyError):
        async for e in chain(("broken", broken)).astream_events({}):
            seen.append((e["event"], e["name"]))
    assert seen[-2:] == [("on_chain_error", "broken"), ("on_chain_error", "Graph")]


@pins("Routers are not traced")
@pytest.mark.anyio
async def test_routers_emit_no_events() -> None:
    def route(state: Log) -> str:
        return END

    graph = StateGraph(Log)
    graph.add_node("a", logs("a"))
    graph.add_edge(START, "a")
    graph.add_conditional_edges("a", route)
    names = {e["name"] for e in await events_of(graph.compile(), {})}
    assert names == {"Graph", "a"}  # LangGraph 1.2 also has 'route'


@pins('`version="v2"` is the default and the only version')
@pytest.mark.anyio
async def test_only_v2() -> None:
    app = chain(("a", logs("a")))
    assert len(await events_of(app, {})) == len(await events_of(app, {}, version="v2"))
    with pytest.raises(UnsupportedVersionError, match="version='v2'"):
        await events_of(app, {}, version="v1")


@pins("Filters")
@pytest.mark.anyio
async def test_filters_any_include_no_exclude_globs_and_named() -> None:
    app = chain(("a_node", logs("a")), ("b_node", logs("b")))
    picked = await events_of(app, {}, include_types=["on_chain_start"], include_names=["b_*"])
    assert {(e["event"], e["name"]) for e in picked} == {
        ("on_chain_start", "Graph"),
        ("on_chain_start", "a_node"),
        ("on_chain_start", "b_node"),
        ("on_chain_stream", "b_node"),
        ("on_chain_end", "b_node"),
    }
    dropped = await events_of(app, {}, include_names=["*_node"], exclude_names=["a_node"])
    assert {e["name"] for e in dropped} == {"b_node"}
    by_node = await events_of(app, {}, filters=[("include_nodes", ["a_node"])])
    assert {e["name"] for e in by_node} == {"a_node"}
    chains = await events_of(app, {}, include_types=["chain"])
    assert {e["event"] for e in chains} == {"on_chain_start", "on_chain_stream", "on_chain_end"}
    assert await events_of(app, {}, exclude_types=["chain"]) == []
    with pytest.raises(headwater.errors.InvalidFilterError, match="Did you mean 'tool'"):
        app.astream_events({}, include_types=["tools"])


@pins("Backpressure")
@pytest.mark.anyio
async def test_leaving_early_cancels_the_run() -> None:
    ran = []

    async def first(state: Log) -> dict[str, Any]:
        ran.append("first")
        return {"log": ["first"]}

    async def second(state: Log) -> dict[str, Any]:
        ran.append("second started")
        await anyio.sleep(30)
        ran.append("second finished")
        return {"log": ["second"]}

    stream = chain(("first", first), ("second", second)).astream({}, stream_mode="updates")
    async with stream:  # leaving the block closes the stream, waiting for the run to stop
        async for _ in stream:
            break
    assert "second finished" not in ran


@pins("A pause by `interrupt_before` / `interrupt_after` names its node")
@pytest.mark.anyio
async def test_static_pauses_name_their_node() -> None:
    app = chain(("a", logs("a")), ("b", logs("b")), checkpointer="memory:", interrupt_before=["b"])
    updates = [c async for c in app.astream({}, THREAD, stream_mode="updates")]
    assert updates[0] == {"a": {"log": ["a"]}}
    ((pause,),) = [c["__interrupt__"] for c in updates[1:]]
    assert (pause.node, pause.value) == ("b", None)  # LangGraph 1.2: {'__interrupt__': ()}
    result = await app.ainvoke({}, {"configurable": {"thread_id": "other"}})
    assert [i.node for i in result["__interrupt__"]] == ["b"]  # LangGraph 1.2: no such key


@pins("Task triggers name what scheduled the task")
@pytest.mark.anyio
async def test_triggers_name_nodes_not_channels() -> None:
    app = chain(("prep", logs("prep")), ("work", logs("work")))
    tasks = [c async for c in app.astream({}, stream_mode="tasks") if "triggers" in c]
    assert [(t["name"], t["triggers"]) for t in tasks] == [
        ("prep", ["__start__"]),  # LangGraph 1.2: ('branch:to:prep',)
        ("work", ["prep"]),
    ]


@pins("An unknown `stream_mode` raises")
def test_unknown_stream_mode_raises() -> None:
    with pytest.raises(UnknownStreamModeError, match="Did you mean 'values'"):
        list(chain(("a", logs("a"))).stream({}, stream_mode="value"))


# -- models, tools and threads ---------------------------------------------------------------


@pins("Models always stream.")
@pytest.mark.anyio
async def test_models_always_stream() -> None:
    llm = FakeChatModel(["one two three"], streaming=False)
    events = await events_of(chat_app(llm), {"messages": ["x"]})
    chunks = [e["data"]["chunk"] for e in events if e["event"] == "on_chat_model_stream"]
    assert [c.content for c in chunks if c.content] == ["one", " two", " three"]


@pins("A reply's id is its model call's run id")
@pytest.mark.anyio
async def test_a_replys_id_is_its_model_calls_run_id() -> None:
    llm = FakeChatModel(["one two three"], cycle=True)
    events = await events_of(chat_app(llm), {"messages": ["x"]})
    streamed = [e for e in events if e["event"] == "on_chat_model_stream"]
    (end,) = [e for e in events if e["event"] == "on_chat_model_end"]
    run_id = end["run_id"]
    assert {e["data"]["chunk"].id for e in streamed} == {run_id}  # LangChain: lc_run--<id>
    assert end["data"]["output"].id == run_id and not run_id.startswith("lc_run--")


@pins("No blocking calls in async nodes.")
@pytest.mark.anyio
async def test_no_blocking_calls_in_async_nodes() -> None:
    llm = FakeChatModel(["hi"])

    async def blocking(state: MessagesState) -> dict[str, Any]:
        return {"messages": [llm.invoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("blocking", blocking)
    graph.add_edge(START, "blocking")
    with pytest.raises(HeadwaterError, match=r"await llm\.ainvoke"):
        await graph.compile().ainvoke({"messages": ["x"]})
    assert FakeChatModel(["fine"]).invoke("x").content == "fine"  # outside a run: works


@pins("Sync nodes run in worker threads")
@pytest.mark.anyio
async def test_sync_nodes_run_in_worker_threads() -> None:
    loop_thread = threading.get_ident()
    seen = []

    def sync_node(state: Log) -> dict[str, Any]:
        headwater.get_stream_writer()({"from": "thread"})
        seen.append((threading.get_ident(), headwater.get_config()["configurable"]))
        return {}

    chunks = [c async for c in chain(("sync_node", sync_node)).astream({}, stream_mode="custom")]
    assert chunks == [{"from": "thread"}]
    assert seen[0][0] != loop_thread and seen[0][1] == {}


@pins("Writes are applied in a deterministic order")
@pytest.mark.anyio
async def test_writes_in_node_name_order() -> None:
    async def slow(state: Log) -> dict[str, Any]:
        await anyio.sleep(0.02)
        return {"log": ["a_slow"]}

    async def fast(state: Log) -> dict[str, Any]:
        return {"log": ["b_fast"]}

    graph = StateGraph(Log)
    graph.add_node("a_slow", slow)
    graph.add_node("b_fast", fast)
    graph.add_edge(START, "a_slow")
    graph.add_edge(START, "b_fast")
    assert await graph.compile().ainvoke({}) == {"log": ["a_slow", "b_fast"]}


# -- checkpoints and state -------------------------------------------------------------------


@pins("Nothing is ever pickled.")
@pytest.mark.anyio
async def test_nothing_is_pickled() -> None:
    class Opaque:
        pass

    class Holder(TypedDict, total=False):
        thing: Any

    graph = StateGraph(Holder)
    graph.add_node("a", lambda state: {"thing": Opaque()})
    graph.add_edge(START, "a")
    with pytest.raises(SerdeError, match="thing"):
        await graph.compile(checkpointer="memory:").ainvoke({}, THREAD)


@pins("No step -1 checkpoint")
@pytest.mark.anyio
async def test_no_step_minus_one_checkpoint() -> None:
    app = chain(("a", logs("a")), ("b", logs("b")), checkpointer="memory:")
    await app.ainvoke({"n": 1}, THREAD)
    history = [
        (s.metadata["step"], s.metadata["source"], s.values)
        for s in await app.aget_state_history(THREAD)
    ]
    # LangGraph 1.2: four entries, the oldest (-1, 'input', {}) with next ('__start__',).
    assert history == [
        (2, "loop", {"n": 1, "log": ["a", "b"]}),
        (1, "loop", {"n": 1, "log": ["a"]}),
        (0, "input", {"n": 1}),
    ]


@pins("Runs continue from the thread's latest checkpoint.")
@pytest.mark.anyio
async def test_checkpoint_id_does_not_fork() -> None:
    app = chain(("a", logs("a")), checkpointer="memory:")
    await app.ainvoke({}, THREAD)
    oldest = (await app.aget_state_history(THREAD))[-1]
    assert (await app.aget_state(oldest.config)).values == {}  # reads it...
    final = await app.ainvoke({}, oldest.config)  # ...but a run continues from the latest
    assert final == {"log": ["a", "a"]}


@pins('`durability` is `"sync"` by default')
@pytest.mark.anyio
async def test_durability_sync_by_default() -> None:
    seen_steps = []

    async def look(state: Log) -> dict[str, Any]:
        seen_steps.append((await app.aget_state(THREAD)).metadata["step"])
        return {}

    app = chain(("a", logs("a")), ("look", look), checkpointer="memory:")
    await app.ainvoke({}, THREAD)
    assert seen_steps == [1]  # the step before was saved before this one started
    with pytest.raises(InvalidInputError, match="durability"):
        await app.ainvoke({}, {**THREAD, "durability": "exit"})


@pins("Checkpoint metadata")
@pytest.mark.anyio
async def test_checkpoint_metadata() -> None:
    app = chain(("a", logs("a")), checkpointer="memory:")
    await app.ainvoke({}, THREAD)
    metadata = (await app.aget_state(THREAD)).metadata
    assert set(metadata) == {"source", "step", "writes", "run_id"}
    assert metadata["writes"] == {"a": {"log": ["a"]}}


@pins("`Command(goto=...)` targets")
def test_command_targets_are_declared() -> None:
    def jump(state: Log) -> Command:  # type: ignore[type-arg]
        return Command(goto="b")

    def build(**node_args: Any) -> Any:
        graph = StateGraph(Log)
        graph.add_node("a", jump, **node_args)
        graph.add_node("b", logs("b"))
        graph.add_edge(START, "a")
        return graph.compile()

    with pytest.raises(GraphValidationError, match="'b' is unreachable"):
        build(destinations=[])
    assert build(destinations=["b"]).invoke({}) == {"log": ["b"]}


@pins("A stored checkpoint that does not decode raises `CheckpointError`")
def test_undecodable_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    app = chain(("a", logs("a")), checkpointer=f"sqlite:///{path}")
    app.invoke({}, THREAD)
    with sqlite3.connect(path) as db:
        db.execute("UPDATE checkpoints SET data = ?", (b"not json",))
    with pytest.raises(CheckpointError, match="'t'"):
        app.get_state(THREAD)


@pins("`retry=` instead of `retry_policy=`")
@pytest.mark.anyio
async def test_retry_and_transient_errors() -> None:
    attempts: list[str] = []

    def flaky(error: Exception) -> Callable[[Log], dict[str, Any]]:
        def node(state: Log) -> dict[str, Any]:
            attempts.append(type(error).__name__)
            if len(attempts) == 1:
                raise error
            return {}

        return node

    for error, runs in ((ConnectionError("blip"), 2), (ValueError("bug"), 1)):
        attempts.clear()
        graph = StateGraph(Log)
        graph.add_node("n", flaky(error), retry=RetryPolicy(initial_interval=0.0, jitter=False))
        graph.add_edge(START, "n")
        try:
            await graph.compile().ainvoke({})
        except ValueError:
            pass
        assert len(attempts) == runs
    with pytest.raises(TypeError, match="retry_policy"):
        StateGraph(Log).add_node("n", logs("n"), retry_policy=RetryPolicy())  # type: ignore[call-arg]


@pins("No `cache_policy`, `Store` or `Runtime` context injection")
def test_no_cache_store_or_runtime() -> None:
    with pytest.raises(TypeError, match="cache_policy"):
        StateGraph(Log).add_node("n", logs("n"), cache_policy=None)  # type: ignore[call-arg]

    def wants_runtime(state: Log, *, runtime: Any) -> dict[str, Any]:
        return {}

    with pytest.raises(GraphValidationError, match="runtime"):
        StateGraph(Log).add_node("n", wants_runtime)


# -- errors ---------------------------------------------------------------------------------


@pins("A node's exception propagates unchanged")
def test_node_exceptions_propagate_unchanged() -> None:
    def broken(state: Log) -> dict[str, Any]:
        raise KeyError("missing")

    with pytest.raises(KeyError) as info:
        chain(("broken", broken)).invoke({})
    assert info.value.__notes__ == ["While running node 'broken' (step 1) of graph 'Graph'."]


# -- the agent loop that replaces create_react_agent ----------------------------------------


@pytest.mark.anyio
async def test_the_agent_loop_instead_of_create_react_agent() -> None:
    @tool
    def add(a: int, b: int) -> int:
        """Add."""
        return a + b

    call = AIMessage(content="", tool_calls=(ToolCall(name="add", args={"a": 2, "b": 3}, id="c"),))
    llm = FakeChatModel([call, "5."]).bind_tools([add])

    async def agent(state: MessagesState) -> dict[str, Any]:
        return {"messages": [await llm.ainvoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("agent", agent)
    graph.add_node("tools", ToolNode([add]))
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", tools_condition)
    graph.add_edge("tools", "agent")
    final = await graph.compile().ainvoke({"messages": [("user", "2 + 3?")]})
    assert [m.type for m in final["messages"]] == ["human", "ai", "tool", "ai"]


# -- safety: timeouts, deep values, a node's BaseException --------------------------------


@pins("Timeouts")
@pytest.mark.anyio
async def test_timeouts_take_seconds_raise_run_timeout_error_and_allow_sync_nodes() -> None:
    from headwater.errors import RunTimeoutError

    release = threading.Event()

    def stuck(state: Log) -> dict[str, Any]:  # sync: LangGraph refuses its timeout
        release.wait(20)
        return {"log": ["late"]}

    graph = StateGraph(Log)
    graph.add_node("stuck", stuck, timeout=0.05)
    graph.add_edge(START, "stuck")
    try:
        with anyio.fail_after(15), pytest.raises(RunTimeoutError) as caught:
            await graph.compile().ainvoke({})
    finally:
        release.set()
    assert isinstance(caught.value, TimeoutError) and caught.value.node == "stuck"
    assert RetryPolicy().should_retry(caught.value)  # retried by default, as in LangGraph

    async def forever(state: Log) -> dict[str, Any]:
        await anyio.sleep(30)
        return {}

    with anyio.fail_after(15), pytest.raises(RunTimeoutError) as caught:
        await chain(("forever", forever)).ainvoke({}, {"timeout": 0.05})
    assert caught.value.node is None


@pins("Checkpointed values nest at most `serde.MAX_DEPTH` (256) JSON levels")
@pytest.mark.anyio
async def test_deep_values_and_removed_nodes_are_clear_errors() -> None:
    deep: Any = 1
    for _ in range(2_000):
        deep = [deep]

    def deepen(state: Log) -> dict[str, Any]:
        return {"log": deep}

    with pytest.raises(SerdeError, match="nested deeper than 256 levels"):
        await chain(("deepen", deepen), checkpointer="memory:").ainvoke({}, THREAD)
    app = chain(("a", logs("a")), checkpointer="memory:")
    with pytest.raises(InvalidInputError, match="nested deeper"):
        await app.ainvoke({"log": deep}, THREAD)
    saver = headwater.checkpoint.MemoryCheckpointer()
    paused = chain(("a", logs("a")), ("b", logs("b")), checkpointer=saver, interrupt_before=["b"])
    await paused.ainvoke({}, THREAD)
    with pytest.raises(CheckpointError, match=r"Thread 't' cannot be resumed.*\['b'\]"):
        await chain(("a", logs("a")), checkpointer=saver).ainvoke(None, THREAD)


@pins("A node's `sys.exit()` fails its run, not the process")
@pytest.mark.anyio
async def test_a_node_base_exception_is_a_node_error() -> None:
    import asyncio
    import sys

    from headwater.errors import NodeCancelledError, NodeError

    def exits(state: Log) -> dict[str, Any]:
        sys.exit(2)

    async def cancels(state: Log) -> dict[str, Any]:
        raise asyncio.CancelledError

    with pytest.raises(NodeError) as caught:
        await chain(("exits", exits)).ainvoke({})
    assert caught.value.node == "exits" and isinstance(caught.value.__cause__, SystemExit)
    with pytest.raises(NodeCancelledError):
        await chain(("cancels", cancels)).ainvoke({})
