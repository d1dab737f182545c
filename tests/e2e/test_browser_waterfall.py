"""The page's waterfall and graph picture in real Chromium, against a real uvicorn on loopback.

A MutationObserver in the page records, in DOM order of change, each bar added, each bar
closed, each first-token mark and every change of the highlighted nodes; the test then
checks that record against the run's own event log, replayed from the server.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, TypedDict

import anyio
import httpx
import pytest
from fixtures.loopback import serving
from headwater_server import create_app
from headwater_server._demo import build_demo

from headwater import END, START, StateGraph
from headwater.retrievers import InMemoryRetriever
from headwater.runtime import interrupt
from headwater.testing.fake import FakeChatModel, ScriptedError
from headwater.tools import tool


class Plan(TypedDict, total=False):
    question: str
    answer: str
    notes: list[str]


def failing_graph() -> Any:
    """A node whose model streams two tokens, then fails."""
    llm = FakeChatModel(
        [ScriptedError(RuntimeError("the model went away"), after=2, partial="one two three")],
        token_delay=0.02,
        cycle=True,
        name="planner",
    )

    async def plan(state: Plan) -> dict[str, Any]:
        return {"answer": (await llm.ainvoke(state["question"])).text}

    graph = StateGraph(Plan)
    graph.add_node("plan", plan)
    graph.add_edge(START, "plan")
    graph.add_edge("plan", END)
    return graph.compile(name="failing")


@tool
def count_words(text: str) -> int:
    """Count the words in a text."""
    return len(text.split())


def pausing_graph() -> Any:
    """``draft`` (with a tool) and ``look`` (a subgraph with a retriever) run side by side,
    then ``ask`` pauses the run for a human. ``draft`` calls its tool after ``look`` has
    started, so its tool's bar goes in above ``look``'s, under ``draft``."""
    notes = InMemoryRetriever.from_texts(["Rivers flow to the sea.", "Lakes are still."], k=1)

    async def draft(state: Plan) -> dict[str, Any]:
        await anyio.sleep(0.05)
        words = await count_words.ainvoke({"text": state["question"]})
        return {"answer": f"{words} words"}

    async def search(state: Plan) -> dict[str, Any]:
        return {"notes": [d.page_content for d in await notes.ainvoke(state["question"])]}

    look = StateGraph(Plan)  # a subgraph: its run and its node nest under the node "look"
    look.add_node("search", search)
    look.add_edge(START, "search")
    look.add_edge("search", END)

    def ask(state: Plan) -> dict[str, Any]:
        return {"answer": interrupt("Is the draft right?")}

    graph = StateGraph(Plan)
    graph.add_node("draft", draft)
    graph.add_node("look", look.compile(name="lookup"))
    graph.add_node("ask", ask)
    graph.add_edge(START, "draft")
    graph.add_edge(START, "look")
    graph.add_edge(["draft", "look"], "ask")
    graph.add_edge("ask", END)
    return graph.compile(name="pausing", checkpointer="memory:")


def slow_graph() -> Any:
    """A model that talks for a long while: long enough to be cancelled mid-stream."""
    llm = FakeChatModel([" ".join(["word"] * 400)], token_delay=0.05, cycle=True, name="talker")

    async def talk(state: Plan) -> dict[str, Any]:
        return {"answer": (await llm.ainvoke(state["question"])).text}

    graph = StateGraph(Plan)
    graph.add_node("talk", talk)
    graph.add_edge(START, "talk")
    graph.add_edge("talk", END)
    return graph.compile(name="slow")


@pytest.fixture(scope="module")
def served() -> Iterator[str]:
    graphs = {
        "demo": build_demo("memory:"),
        "failing": failing_graph(),
        "pausing": pausing_graph(),
        "slow": slow_graph(),
    }
    with serving(create_app(graphs)) as url:
        yield url + "/"


RECORDER = """() => {
    window.record = [];
    const active = new Set();
    const attr = (r, value) => {
        const t = r.target;
        if (t.matches && t.matches('g.gnode') && r.attributeName === 'class') {
            const on = (value || '').split(' ').includes('active');
            const id = t.dataset.id;
            if (on !== active.has(id)) {
                on ? active.add(id) : active.delete(id);
                window.record.push(['active', [...active].sort()]);
            }
        } else if (t.classList && t.classList.contains('wrow')) {
            if (r.attributeName === 'data-end') window.record.push(['close', t.dataset.runId]);
            if (r.attributeName === 'data-ttft') window.record.push(['ttft', t.dataset.runId]);
        }
    };
    new MutationObserver((records) => {
        // An attribute's value after record i is the old value of the next record of the
        // same target and attribute (or its value now): replay them in order.
        const after = new Array(records.length), later = new Map();
        for (let i = records.length - 1; i >= 0; i--) {
            const r = records[i];
            if (r.type !== 'attributes') continue;
            const key = r.attributeName;
            const seen = later.get(r.target) || new Map();
            after[i] = seen.has(key) ? seen.get(key) : r.target.getAttribute(key);
            seen.set(key, r.oldValue);
            later.set(r.target, seen);
        }
        records.forEach((r, i) => {
            if (r.type === 'attributes') { attr(r, after[i]); return; }
            for (const n of r.addedNodes) {
                if (n.classList && n.classList.contains('wrow'))
                    window.record.push(['open', n.dataset.runId, n.dataset.name, n.dataset.kind]);
            }
        });
    }).observe(document.body, {subtree: true, childList: true, attributes: true,
                               attributeOldValue: true,
                               attributeFilter: ['class', 'data-end', 'data-ttft']});
}"""

ROWS = """() => [...document.querySelectorAll('#waterfall .wrow')].map((r) => ({
    run_id: r.dataset.runId, parent: r.dataset.parent, name: r.dataset.name,
    kind: r.dataset.kind, state: r.dataset.state, depth: Number(r.dataset.depth),
    start: Number(r.dataset.start), end: r.dataset.end === undefined ? null : Number(r.dataset.end),
    ttft: r.dataset.ttft === undefined ? null : Number(r.dataset.ttft),
    marks: r.querySelectorAll('.wttft').length,
}))"""

GEOMETRY = """() => new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(() => {
    done([...document.querySelectorAll('#waterfall .wrow')].map((r) => {
        const box = r.querySelector('.wbar').getBoundingClientRect();
        return {run_id: r.dataset.runId, left: box.left, right: box.right};
    }));
})))"""

KINDS = {"chat_model": "model", "tool": "tool", "retriever": "retriever"}


def run_in_page(page: Any, url: str, graph: str, payload: dict[str, Any]) -> str:
    """Start a run of ``graph`` from the page; return its run id once the page is idle."""
    page.goto(url)
    page.wait_for_selector(f"#graph option[value='{graph}']", state="attached")
    page.select_option("#graph", graph)
    page.wait_for_selector("#graph-svg g.gnode[data-id='__end__']", state="attached")
    page.fill("#input", json.dumps(payload))
    page.evaluate(RECORDER)
    page.click("#start")
    page.wait_for_function(
        "['done', 'cancelled'].includes(document.querySelector('#status').textContent)"
        " || document.querySelector('#status').textContent.startsWith('error')",
        timeout=30000,
    )
    status = page.text_content("#status")
    assert status is not None
    return str(page.evaluate("runId"))


def replayed(url: str, run_id: str) -> list[tuple[str, dict[str, Any]]]:
    """The run's events, read again from the start of its log on the server."""
    events: list[tuple[str, dict[str, Any]]] = []
    with httpx.stream("GET", f"{url}runs/{run_id}/stream", timeout=10) as response:
        kind = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: ") and kind is not None and kind.startswith("on_"):
                events.append((kind, json.loads(line[6:])))
    return events


def expected_bars(events: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """What the waterfall must show, worked out from the events in Python."""
    opened: list[str] = []
    closed: list[str] = []
    parent: dict[str, str] = {}
    kind: dict[str, str] = {}
    errors: set[str] = set()
    first_token: set[str] = set()
    running: dict[str, int] = {}
    active: list[list[str]] = []
    for event, data in events:
        meta = data["_event"]
        run_id = meta["run_id"]
        source, _, what = event[3:].rpartition("_")
        if what == "start":
            opened.append(run_id)
            drawn = [p for p in meta["parent_ids"] if p in kind]
            parent[run_id] = drawn[-1] if drawn else ""
            if source == "chain":
                node = meta["metadata"].get("node")
                if not meta["parent_ids"] or not node:  # the run, or a subgraph's
                    kind[run_id] = "graph"
                else:
                    kind[run_id] = "node" if node == meta["name"] else "chain"
            else:
                kind[run_id] = KINDS[source]
        elif what in ("end", "error"):
            closed.append(run_id)
            if what == "error":
                errors.add(run_id)
        elif event == "on_chat_model_stream" and run_id not in closed:
            first_token.add(run_id)
        lights = source == "chain" and what in ("start", "end", "error")
        if lights and len(meta["parent_ids"]) == 1 and kind.get(run_id) == "node":
            before = sorted(n for n, c in running.items() if c)
            running[meta["name"]] = running.get(meta["name"], 0) + (1 if what == "start" else -1)
            now = sorted(n for n, c in running.items() if c)
            if now != before:
                active.append(now)
    return {
        "opened": opened,
        "closed": closed,
        "parent": parent,
        "kind": kind,
        "errors": errors,
        "first_token": first_token,
        "active": active,
    }


def check_record(record: list[Any], want: dict[str, Any]) -> None:
    """Bars opened and closed in the events' order, first tokens marked while streaming."""
    assert [r[1] for r in record if r[0] == "open"] == want["opened"]
    assert [r[1] for r in record if r[0] == "close"] == want["closed"]
    assert [r[1] for r in record if r[0] == "active"] == want["active"] + (
        [] if not want["active"] or not want["active"][-1] else [[]]
    )
    position = {(r[0], r[1]): i for i, r in enumerate(record) if r[0] != "active"}
    for run_id in want["first_token"]:  # marked after its bar opened, before it closed
        assert position[("open", run_id)] < position[("ttft", run_id)] < position[("close", run_id)]
    assert {r[1] for r in record if r[0] == "ttft"} == want["first_token"]


def check_rows(rows: list[dict[str, Any]], want: dict[str, Any]) -> None:
    """Rows nested under their parents, in tree order, each with its start and end."""
    by_id = {r["run_id"]: r for r in rows}
    assert set(by_id) == set(want["opened"])
    order = [r["run_id"] for r in rows]
    for row in rows:
        assert row["parent"] == want["parent"][row["run_id"]]
        assert row["kind"] == want["kind"][row["run_id"]]
        assert row["end"] is not None and row["end"] >= row["start"]
        if row["parent"]:
            up = by_id[row["parent"]]
            assert row["depth"] == up["depth"] + 1
            assert order.index(row["parent"]) < order.index(row["run_id"])
            assert up["start"] <= row["start"] and row["end"] <= up["end"]
        else:
            assert row["depth"] == 0
    # A bar's subtree is the rows right below it, up to the next row of its depth or less.
    for i, row in enumerate(rows):
        j = i + 1
        while j < len(rows) and rows[j]["depth"] > row["depth"]:
            ancestor = rows[j]
            while ancestor["parent"] and ancestor["run_id"] != row["run_id"]:
                ancestor = by_id[ancestor["parent"]]
            assert ancestor["run_id"] == row["run_id"]
            j += 1
    for row in rows:
        first = row["run_id"] in want["first_token"]
        assert (row["ttft"] is not None) == first and row["marks"] == int(first)
        if row["run_id"] in want["errors"]:
            assert row["state"] == "error"


def test_bars_open_and_close_in_order_while_a_run_streams(served: str, browser: Any) -> None:
    page = browser.new_page()
    run_id = run_in_page(page, served, "demo", {"question": "Where do rivers flow?"})
    assert page.text_content("#status") == "done"
    record = page.evaluate("window.record")
    want = expected_bars(replayed(served, run_id))
    check_record(record, want)
    rows = page.evaluate(ROWS)
    check_rows(rows, want)
    # The demo: a graph, five nodes (agent twice), three model calls, a tool, a retriever.
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["kind"]] = counts.get(row["kind"], 0) + 1
    assert counts == {"graph": 1, "node": 6, "model": 3, "tool": 1, "retriever": 1}
    assert [r["name"] for r in rows if r["kind"] == "node"] == [
        "router", "retrieve", "agent", "tools", "agent", "summarise",
    ]  # fmt: skip
    assert {r["state"] for r in rows} == {"done"}
    # The bars are drawn nested too: each inside its parent's span on the time axis (give
    # or take a bar's 2 px minimum width).
    boxes = {b["run_id"]: b for b in page.evaluate(GEOMETRY)}
    for row in rows:
        if row["parent"]:
            inner, outer = boxes[row["run_id"]], boxes[row["parent"]]
            assert outer["left"] - 1 <= inner["left"] and inner["right"] <= outer["right"] + 3
    # Every node was highlighted while it ran; none is once the run is done.
    assert [r[1] for r in record if r[0] == "active" and r[1]] == [
        ["router"], ["retrieve"], ["agent"], ["tools"], ["agent"], ["summarise"],
    ]  # fmt: skip
    assert page.eval_on_selector_all("#graph-svg g.gnode.active", "els => els.length") == 0
    visited = page.eval_on_selector_all(
        "#graph-svg g.gnode.visited", "els => els.map(e => e.dataset.id).sort()"
    )
    assert visited == ["agent", "retrieve", "router", "summarise", "tools"]
    assert page.is_hidden("#waterfall-note")
    page.close()


def test_an_error_colours_its_bars_and_clears_the_highlight(served: str, browser: Any) -> None:
    page = browser.new_page()
    run_id = run_in_page(page, served, "failing", {"question": "plan it"})
    assert "the model went away" in (page.text_content("#status") or "")
    want = expected_bars(replayed(served, run_id))
    assert len(want["errors"]) == 3  # the model call, its node and the graph run
    check_record(page.evaluate("window.record"), want)
    rows = page.evaluate(ROWS)
    check_rows(rows, want)
    assert [(r["kind"], r["name"], r["state"]) for r in rows] == [
        ("graph", "failing", "error"),
        ("node", "plan", "error"),
        ("model", "planner", "error"),
    ]
    assert rows[2]["ttft"] is not None  # two tokens came before the failure
    colours = page.eval_on_selector_all(
        "#waterfall .wbar", "els => els.map(e => getComputedStyle(e).backgroundColor)"
    )
    assert colours == ["rgb(198, 40, 40)"] * 3  # --bad
    assert page.eval_on_selector_all("#graph-svg g.gnode.active", "els => els.length") == 0
    failed = page.eval_on_selector_all(
        "#graph-svg g.gnode.failed", "els => els.map(e => e.dataset.id)"
    )
    assert failed == ["plan"]
    page.close()


def test_an_interrupt_colours_the_paused_node_and_its_graph(served: str, browser: Any) -> None:
    page = browser.new_page()
    run_id = run_in_page(page, served, "pausing", {"question": "check it"})
    assert page.text_content("#status") == "done"
    events = replayed(served, run_id)
    assert [k for k, _ in events].count("on_interrupt") == 1
    want = expected_bars(events)
    check_record(page.evaluate("window.record"), want)
    rows = page.evaluate(ROWS)
    check_rows(rows, want)
    assert [(r["kind"], r["name"], r["state"]) for r in rows] == [
        ("graph", "pausing", "interrupted"),
        ("node", "draft", "done"),
        ("tool", "count_words", "done"),
        ("node", "look", "done"),
        ("graph", "lookup", "done"),
        ("node", "search", "done"),
        ("retriever", "InMemoryRetriever", "done"),
        ("node", "ask", "interrupted"),
    ]
    assert [r["depth"] for r in rows] == [0, 1, 2, 1, 2, 3, 4, 1]
    opened = [r[1] for r in page.evaluate("window.record") if r[0] == "open"]
    assert opened.index(rows[3]["run_id"]) < opened.index(rows[2]["run_id"])  # look, then tool
    colours = page.eval_on_selector_all(
        "#waterfall .wbar", "els => els.map(e => getComputedStyle(e).backgroundColor)"
    )
    assert colours[0] == colours[7] == "rgb(224, 161, 0)"
    assert "rgb(224, 161, 0)" not in colours[1:7]
    paused = page.eval_on_selector_all(
        "#graph-svg g.gnode.interrupted", "els => els.map(e => e.dataset.id)"
    )
    assert paused == ["ask"]
    assert page.eval_on_selector_all("#graph-svg g.gnode.active", "els => els.length") == 0
    page.close()


def test_a_cancelled_run_greys_its_open_bars(served: str, browser: Any) -> None:
    page = browser.new_page()
    page.goto(served)
    page.wait_for_selector("#graph option[value='slow']", state="attached")
    page.select_option("#graph", "slow")
    page.wait_for_selector("#graph-svg g.gnode[data-id='talk']", state="attached")
    page.click("#start")
    # Mid-stream: the model's bar is open with its first-token mark, its node highlighted.
    page.wait_for_selector("#waterfall .wrow[data-kind='model'][data-state='running'] .wttft")
    assert page.eval_on_selector_all(
        "#graph-svg g.gnode.active", "els => els.map(e => e.dataset.id)"
    ) == ["talk"]
    assert (page.text_content("#status") or "").startswith("running")
    page.click("#cancel")
    page.wait_for_function("document.querySelector('#status').textContent === 'cancelled'")
    ended = {
        data["_event"]["run_id"]: kind.rpartition("_")[2]
        for kind, data in replayed(served, str(page.evaluate("runId")))
        if kind.endswith(("_end", "_error"))
    }
    rows = page.evaluate(ROWS)
    assert [(r["kind"], r["name"]) for r in rows] == [
        ("graph", "slow"), ("node", "talk"), ("model", "talker"),
    ]  # fmt: skip
    for row in rows:
        assert row["end"] is not None
        closed = ended.get(row["run_id"])
        assert row["state"] == {None: "cancelled", "end": "done", "error": "error"}[closed]
    assert page.eval_on_selector_all("#graph-svg g.gnode.active", "els => els.length") == 0
    page.close()


def test_the_waterfall_and_the_log_are_capped(served: str, browser: Any) -> None:
    page = browser.new_page()
    page.goto(served)
    assert page.get_attribute("#waterfall", "data-max-bars") == "2000"
    page.wait_for_selector("#graph option[value='demo']", state="attached")
    assert page.get_attribute("#log", "data-max-lines") == "5000"
    page.evaluate("document.querySelector('#waterfall').dataset.maxBars = '5'")
    page.evaluate("document.querySelector('#log').dataset.maxLines = '7'")
    page.click("#start")
    page.wait_for_function("document.querySelector('#status').textContent === 'done'")
    lines = page.eval_on_selector_all("#log div", "els => els.map(e => e.textContent)")
    assert lines[-1] == "on_chain_end  demo" and len(lines) == 7  # the newest lines
    rows = page.evaluate(ROWS)
    assert [r["name"] for r in rows] == ["demo", "router", "retrieve", "InMemoryRetriever", "agent"]
    assert all(r["end"] is not None for r in rows)  # the drawn bars still close
    assert page.is_visible("#waterfall-note")
    assert page.text_content("#waterfall-note") == "Showing the first 5 runs; 7 more not drawn."
    page.close()


def test_a_page_opened_with_a_key_lists_and_draws_the_graphs(browser: Any) -> None:
    with serving(create_app({"pausing": pausing_graph()}, api_keys=["alice-key"])) as url:
        page = browser.new_page()
        page.goto(url + "/?api_key=alice-key")
        page.wait_for_selector("#graph-svg g.gnode[data-id='__end__']", state="attached")
        boxes = page.eval_on_selector_all("#graph-svg g.gnode", "els => els.map(e => e.dataset.id)")
        assert sorted(boxes) == ["__end__", "__start__", "ask", "draft", "look"]
        arrows = page.eval_on_selector_all(
            "#graph-svg path.gedge",
            "els => els.map(e => e.dataset.source + '>' + e.dataset.target)",
        )
        assert sorted(arrows) == [
            "__start__>draft", "__start__>look", "ask>__end__", "draft>ask", "look>ask",
        ]  # fmt: skip
        page.close()
