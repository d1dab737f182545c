"""The example plugin of docs/plugins/, installed as a distribution and used for real.

``docs/plugins/example`` is copied, with a ``.dist-info`` built from its own
``pyproject.toml``, into a temporary directory on ``sys.path`` (as the plugin tests do
with throwaway distributions), so entry-point discovery finds it exactly as it would
after ``pip install docs/plugins/example``. Then its stream mode, named filter and sink
run through the public API.
"""

from __future__ import annotations

import ast
import json
import operator
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, TypedDict

import pytest
from fixtures.plugin_dists import Install, installing, plugin_env, write_plugin_distribution

import headwater
from headwater import END, START, Command, StateGraph, create_plugin_manager, interrupt, serde
from headwater.errors import InvalidFilterError, InvalidInputError
from headwater.messages import AIMessage
from headwater.testing.fake import FakeChatModel

EXAMPLE = Path(__file__).parents[2] / "docs" / "plugins" / "example"
TOP_LEVEL_AWAIT = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT


def example_distribution() -> tuple[str, str, dict[str, str], dict[str, str]]:
    """(name, version, entry points, modules) of the example, read from its own files."""
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    modules = {
        str(path.relative_to(EXAMPLE)): path.read_text(encoding="utf-8")
        for path in sorted((EXAMPLE / "headwater_example").iterdir())
        if path.is_file() and path.suffix in (".py", ".typed")
    }
    return (
        project["name"],
        project["version"],
        dict(project["entry-points"]["headwater"]),
        modules,
    )


@pytest.fixture
def install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Install]:
    monkeypatch.delenv("HEADWATER_LOAD_PLUGINS", raising=False)
    monkeypatch.delenv("HEADWATER_TRACE_PLUGINS", raising=False)
    with installing(tmp_path, monkeypatch) as install:
        yield install


@pytest.fixture
def pm(install: Install) -> headwater.PluginManager:
    """A plugin manager that found the installed example through its entry point."""
    name, version, entry_points, modules = example_distribution()
    install(name, entry_points, modules, version=version)
    return create_plugin_manager()


class State(TypedDict, total=False):
    n: Annotated[int, operator.add]
    log: Annotated[list[str], operator.add]
    reply: str


def step(name: str) -> Any:
    def node(state: State) -> dict[str, Any]:
        return {"n": 1, "log": [name]}

    return node


def fan_out(pm: headwater.PluginManager) -> headwater.CompiledGraph:
    """START -> a -> (b, c in parallel) -> d -> END."""
    graph = StateGraph(State)
    for name in "abcd":
        graph.add_node(name, step(name))
    graph.add_edge(START, "a")
    graph.add_edge("a", "b")
    graph.add_edge("a", "c")
    graph.add_edge(["b", "c"], "d")
    graph.add_edge("d", END)
    return graph.compile(name="fan_out", plugin_manager=pm)


def failing(pm: headwater.PluginManager, node: str = "fetch") -> headwater.CompiledGraph:
    def broken(state: State) -> dict[str, Any]:
        raise ConnectionError("upstream is down")

    graph = StateGraph(State)
    graph.add_node("prepare", step("prepare"))
    graph.add_node(node, broken)
    graph.add_edge(START, "prepare")
    graph.add_edge("prepare", node)
    graph.add_edge(node, END)
    return graph.compile(name="failing", plugin_manager=pm)


def _definitions(tree: ast.Module) -> dict[str, str]:
    """Top-level functions, classes and assignments by name, docstrings left out."""
    found: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            for inner in ast.walk(node):
                body = getattr(inner, "body", None)
                if (
                    isinstance(inner, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
                    and body
                    and isinstance(body[0], ast.Expr)
                    and isinstance(body[0].value, ast.Constant)
                    and isinstance(body[0].value.value, str)
                ):
                    inner.body = body[1:] or [ast.Pass()]
            found[node.name] = ast.dump(node)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name):
                    found[target.id] = ast.dump(node)
        elif isinstance(node, ast.Import | ast.ImportFrom) and not (
            isinstance(node, ast.ImportFrom) and node.module == "__future__"
        ):
            found[ast.unparse(node)] = ast.dump(node)
    return found


def test_the_tutorial_shows_the_example_code() -> None:
    """docs/plugins/writing.md builds the plugin from the example's own code, all of it."""
    source = (EXAMPLE / "headwater_example" / "__init__.py").read_text(encoding="utf-8")
    example = _definitions(ast.parse(source))
    page = (EXAMPLE.parent / "writing.md").read_text(encoding="utf-8")
    shown: dict[str, str] = {}
    for block in re.findall(r"^```python\n(.*?)^```", page, re.M | re.S):
        tree = compile(block, "writing.md", "exec", ast.PyCF_ONLY_AST | TOP_LEVEL_AWAIT)
        shown.update(_definitions(tree))
    missing = sorted(set(example) - set(shown) - {"__all__"})
    assert missing == [], f"not shown in writing.md: {missing}"
    differ = sorted(name for name in example if name in shown and shown[name] != example[name])
    assert differ == [], f"writing.md differs from the example in: {differ}"


def test_installed_through_its_entry_point(pm: headwater.PluginManager) -> None:
    assert pm.distributions["example"] == ("headwater-example", "0.1.0")
    assert "progress" in pm.registrations("headwater_stream_modes")
    assert "errors_only" in pm.registrations("headwater_event_filters")
    assert "jsonl" in pm.registrations("headwater_sinks")
    hooks = {h.name for h in pm.get_hookcallers(pm.get_plugin("example")) or ()}
    assert hooks == {
        "headwater_event_filters",
        "headwater_event_subscribers",
        "headwater_run_end",
        "headwater_sinks",
        "headwater_stream_modes",
    }


def test_headwater_plugins_lists_it(tmp_path: Path) -> None:
    name, version, entry_points, modules = example_distribution()
    root = write_plugin_distribution(
        tmp_path, name, entry_points=entry_points, modules=modules, version=version
    )
    done = subprocess.run(
        [sys.executable, "-m", "headwater", "plugins"],
        env=plugin_env(root),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    rows = {row["name"]: row for row in json.loads(done.stdout)}
    assert rows["example"]["distribution"] == "headwater-example"
    assert rows["example"]["module"] == "headwater_example"
    assert "headwater_stream_modes" in rows["example"]["hooks"]
    assert rows["example"]["error"] is None


# -- the "progress" stream mode ------------------------------------------------------------


@pytest.mark.anyio
async def test_progress_counts_finished_tasks(pm: headwater.PluginManager) -> None:
    chunks = [c async for c in fan_out(pm).astream({"n": 0}, stream_mode="progress")]
    assert len(chunks) == 8  # a start and an end per task
    assert [c["finished"] for c in chunks if c["status"] == "done"] == [1, 2, 3, 4]
    assert chunks[-1] == {"node": "d", "step": 3, "status": "done", "finished": 4}
    by_step = sorted({(c["step"], c["node"]) for c in chunks})
    assert by_step == [(1, "a"), (2, "b"), (2, "c"), (3, "d")]
    for c in chunks:  # every task starts before it ends
        if c["status"] == "done":
            assert {"node": c["node"], "step": c["step"], "status": "running"} in [
                {k: d[k] for k in ("node", "step", "status")} for d in chunks
            ]


@pytest.mark.anyio
async def test_progress_with_other_modes_and_a_failure(pm: headwater.PluginManager) -> None:
    seen: list[tuple[str, Any]] = []
    with pytest.raises(ConnectionError):
        async for mode, chunk in failing(pm).astream({"n": 0}, stream_mode=["updates", "progress"]):
            seen.append((mode, chunk))
    progress = [c for m, c in seen if m == "progress"]
    assert progress[-1] == {"node": "fetch", "step": 2, "status": "failed", "finished": 2}
    assert ("updates", {"prepare": {"n": 1, "log": ["prepare"]}}) in seen


@pytest.mark.anyio
async def test_each_run_counts_from_zero(pm: headwater.PluginManager) -> None:
    app = fan_out(pm)
    for _ in range(2):
        chunks = [c async for c in app.astream({"n": 0}, stream_mode="progress")]
        assert chunks[0]["finished"] == 0 and chunks[-1]["finished"] == 4


@pytest.mark.anyio
async def test_progress_of_a_paused_and_resumed_run(pm: headwater.PluginManager) -> None:
    def ask(state: State) -> dict[str, Any]:
        return {"reply": interrupt("Approve?")}

    graph = StateGraph(State)
    graph.add_node("prepare", step("prepare"))
    graph.add_node("ask", ask)
    graph.add_edge(START, "prepare")
    graph.add_edge("prepare", "ask")
    graph.add_edge("ask", END)
    app = graph.compile(checkpointer="memory:", plugin_manager=pm)
    config = {"configurable": {"thread_id": "t1"}}
    paused = [c async for c in app.astream({"n": 0}, config, stream_mode="progress")]
    assert paused[-1] == {"node": "ask", "step": 2, "status": "paused", "finished": 1}
    resumed = [c async for c in app.astream(Command(resume="yes"), config, stream_mode="progress")]
    assert resumed[-1] == {"node": "ask", "step": 2, "status": "done", "finished": 1}


# -- the "errors_only" filter --------------------------------------------------------------


@pytest.mark.anyio
async def test_errors_only_keeps_error_events(pm: headwater.PluginManager) -> None:
    events: list[dict[str, Any]] = []
    with pytest.raises(ConnectionError):
        async for event in failing(pm).astream_events({"n": 0}, filters=["errors_only"]):
            events.append(event)
    assert [(e["event"], e["name"]) for e in events] == [
        ("on_chain_error", "fetch"),
        ("on_chain_error", "failing"),
    ]
    assert isinstance(events[0]["data"]["error"], ConnectionError)


@pytest.mark.anyio
async def test_errors_only_with_name_patterns(pm: headwater.PluginManager) -> None:
    events: list[dict[str, Any]] = []
    with pytest.raises(ConnectionError):
        async for event in failing(pm, node="fetch_prices").astream_events(
            {"n": 0}, filters=[("errors_only", ["fetch*"])]
        ):
            events.append(event)
    assert [e["name"] for e in events] == ["fetch_prices"]


@pytest.mark.anyio
async def test_errors_only_of_a_successful_run_is_empty(pm: headwater.PluginManager) -> None:
    assert [e async for e in fan_out(pm).astream_events({"n": 0}, filters=["errors_only"])] == []


@pytest.mark.anyio
async def test_errors_only_rejects_a_bad_argument(pm: headwater.PluginManager) -> None:
    with pytest.raises(InvalidFilterError, match="errors_only takes nothing or a list"):
        async for _ in fan_out(pm).astream_events({"n": 0}, filters=[("errors_only", 42)]):
            pass


# -- the "jsonl" sink ----------------------------------------------------------------------


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.anyio
async def test_jsonl_sink_writes_every_public_event(
    pm: headwater.PluginManager, tmp_path: Path
) -> None:
    llm = FakeChatModel(["Rivers flow downhill."])

    async def talk(state: State) -> dict[str, Any]:
        reply = await llm.ainvoke("Tell me about rivers")
        return {"reply": reply.content}

    graph = StateGraph(State)
    graph.add_node("talk", talk)
    graph.add_edge(START, "talk")
    graph.add_edge("talk", END)
    app = graph.compile(name="chat", plugin_manager=pm)
    path = tmp_path / "run.jsonl"
    config = {"configurable": {"events_jsonl": str(path)}}

    expected = [e async for e in app.astream_events({}, config)]  # the same run, streamed
    lines = read_lines(path)
    assert [(line["event"], line["name"]) for line in lines] == [
        (e["event"], e["name"]) for e in expected
    ]
    assert [line["seq"] for line in lines] == sorted(line["seq"] for line in lines)
    tokens = [
        serde.decode(line["data"])["chunk"].content
        for line in lines
        if line["event"] == "on_chat_model_stream"
    ]
    assert "".join(tokens) == "Rivers flow downhill."
    end = serde.decode(lines[-1]["data"])
    assert (
        lines[-1]["event"] == "on_chain_end" and end["output"]["reply"] == "Rivers flow downhill."
    )
    response = next(line for line in lines if line["event"] == "on_chat_model_end")
    assert isinstance(serde.decode(response["data"])["response"], AIMessage)

    import headwater_example

    assert headwater_example._open_sinks == {}  # closed at run end


@pytest.mark.anyio
async def test_jsonl_sink_records_failures_and_appends(
    pm: headwater.PluginManager, tmp_path: Path
) -> None:
    path = tmp_path / "runs.jsonl"
    config = {"configurable": {"events_jsonl": str(path)}}
    await fan_out(pm).ainvoke({"n": 0}, config)
    first = len(read_lines(path))
    with pytest.raises(ConnectionError):
        await failing(pm).ainvoke({"n": 0}, config)
    lines = read_lines(path)[first:]
    assert lines[-1]["event"] == "on_chain_error" and lines[-1]["name"] == "failing"
    assert "upstream is down" in json.dumps(lines[-1]["data"])


def test_no_config_key_no_file(pm: headwater.PluginManager, tmp_path: Path) -> None:
    fan_out(pm).invoke({"n": 0})
    assert list(tmp_path.glob("*.jsonl")) == []


def test_bad_sink_path_is_a_clear_error(pm: headwater.PluginManager, tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="cannot open"):
        fan_out(pm).invoke({"n": 0}, {"configurable": {"events_jsonl": str(tmp_path / "no/x")}})
    with pytest.raises(InvalidInputError, match="names the file"):
        fan_out(pm).invoke({"n": 0}, {"configurable": {"events_jsonl": 42}})


def test_sink_factory_from_the_registry(pm: headwater.PluginManager, tmp_path: Path) -> None:
    make = pm.registrations("headwater_sinks")["jsonl"]
    sink = make(tmp_path / "ends.jsonl", kinds=["on_chain_end"])
    try:
        assert sink.subscription().kinds == frozenset({"on_chain_end"})
    finally:
        sink.close()
    with pytest.raises(InvalidInputError, match="unknown event kinds"):
        make(tmp_path / "x.jsonl", kinds=["on_chain_ended"])


def test_the_jsonl_sink_named_in_a_runs_config(pm: headwater.PluginManager, tmp_path: Path) -> None:
    path = tmp_path / "named.jsonl"
    fan_out(pm).invoke({"n": 0}, {"sinks": [f"jsonl:{path}"]})
    kinds = [record["event"] for record in read_lines(path)]
    assert kinds[0] == "on_chain_start" and kinds[-1] == "on_chain_end"
    assert all(not k.startswith(("task_", "step_")) for k in kinds)  # public events only
    with pytest.raises(InvalidInputError, match="jsonl sink writes to a file"):
        fan_out(pm).invoke({"n": 0}, {"sinks": ["jsonl:"]})  # no target: a clear error
