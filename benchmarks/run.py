"""headwater's in-process benchmarks, each beside a baseline measured in the same run.

    .venv/bin/python benchmarks/run.py                      # everything (a few minutes)
    .venv/bin/python benchmarks/run.py --quick              # tiny sizes: a smoke test
    .venv/bin/python benchmarks/run.py --only chain 'fanout-*' checkpoint-sqlite
    .venv/bin/python benchmarks/run.py --json results.json
    .venv/bin/python benchmarks/run.py --compare langgraph --langgraph-python /tmp/lgvenv/bin/python

The baseline of a workload does the equivalent work with plain async functions and
generators, no framework (``bare``); the checkpoint workloads with ``durability="sync"`` are
measured beside a bare loop committing the same rows with the same driver (``BareCommits``),
the others beside the same chain without a checkpointer, and ``ainvoke-quiet`` beside the
chain run with no plugin loaded. ``ratio`` is headwater's cost over the baseline's (2.0:
twice as slow); beside a bare commit loop, the median of the ratios of each pair of runs.
Targets come from the issues; they are reported, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import fnmatch
import itertools
import json
import operator
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, TypedDict

import anyio
import anyio.to_thread
from _timing import measure, peak_memory, stats

from headwater import END, START, Send, StateGraph, create_plugin_manager, get_stream_writer
from headwater.messages import AIMessageChunk, add_messages
from headwater.testing.fake import FakeChatModel

HERE = Path(__file__).resolve().parent
LOWER_IS_BETTER = {"µs/node", "µs/task", "MiB", "x"}

# -- results -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """What an issue asks for: a bound on headwater's median, on the ratio, and/or on how
    many times cheaper than LangGraph (``lg``: judged only with ``--compare langgraph``)."""

    value: float | None = None
    ratio: float | None = None
    source: str = ""
    lg: float | None = None

    def text(self, unit: str) -> str:
        parts = []
        if self.value is not None:
            op = "≤" if unit in LOWER_IS_BETTER else "≥"
            parts.append(f"{op} {fmt(self.value, unit)}")
        if self.ratio is not None:
            parts.append(f"ratio ≤ {self.ratio:g}")
        if self.lg is not None:
            parts.append(f"lg÷hw ≥ {self.lg:g}")
        return ", ".join(parts)

    def met(
        self, value: float, ratio: float | None, unit: str, speedup: float | None = None
    ) -> bool | None:
        """Whether the target is met; ``None`` when its only bound is LangGraph's and
        LangGraph was not measured."""
        ok = True
        if self.value is not None:
            ok = value <= self.value if unit in LOWER_IS_BETTER else value >= self.value
        if self.ratio is not None and ratio is not None:
            ok = ok and ratio <= self.ratio
        if self.lg is not None:
            if speedup is not None:
                ok = ok and speedup >= self.lg
            elif self.value is None and self.ratio is None:
                return None
        return ok


@dataclass
class Result:
    name: str
    unit: str
    headwater: dict[str, float]
    baseline: dict[str, float] | None
    baseline_kind: str
    ratio: float | None
    target: str
    ok: bool | None
    note: str = ""
    langgraph: dict[str, float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    goal: Target | None = None

    def judge_langgraph(self) -> None:
        """Judge the target again once LangGraph's number is in (``lg`` bounds)."""
        if self.goal is None or not self.headwater or self.langgraph is None:
            return
        speedup = cost_ratio(self.langgraph["median"], self.headwater["median"], self.unit)
        self.ok = self.goal.met(self.headwater["median"], self.ratio, self.unit, speedup)


def per_unit(seconds: list[float], count: int, unit: str) -> dict[str, float]:
    """Convert seconds per run into the unit: µs per item, or items per second."""
    if unit.startswith("µs"):
        return stats([s / count * 1e6 for s in seconds])
    return stats([count / s for s in seconds])


def cost_ratio(hw: float, base: float, unit: str) -> float:
    """headwater's cost over the baseline's: > 1 means headwater is slower."""
    return hw / base if unit in LOWER_IS_BETTER else base / hw


def make_result(
    name: str,
    unit: str,
    count: int,
    hw_seconds: list[float],
    base_seconds: list[float] | None,
    target: Target | None = None,
    *,
    baseline_kind: str = "bare",
    note: str = "",
) -> Result:
    hw = per_unit(hw_seconds, count, unit)
    base = per_unit(base_seconds, count, unit) if base_seconds else None
    return finish(name, unit, hw, base, target, baseline_kind=baseline_kind, note=note)


def finish(
    name: str,
    unit: str,
    hw: dict[str, float],
    base: dict[str, float] | None,
    target: Target | None,
    *,
    baseline_kind: str = "bare",
    note: str = "",
) -> Result:
    ratio = cost_ratio(hw["median"], base["median"], unit) if base and base["median"] else None
    return Result(
        name=name,
        unit=unit,
        headwater=hw,
        baseline=base,
        baseline_kind=baseline_kind,
        ratio=ratio,
        target=target.text(unit) if target else "",
        ok=target.met(hw["median"], ratio, unit) if target else None,
        note=note,
        goal=target,
    )


# -- sizes -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    chain: int = 200
    tokens: int = 20_000
    custom: int = 50_000
    repeats: int = 7
    heavy_repeats: int = 3
    quick: bool = False

    def fanout(self, n: int) -> int:
        return max(5, n // 50) if self.quick else n


FULL = Sizes()
QUICK = Sizes(chain=10, tokens=300, custom=500, repeats=1, heavy_repeats=1, quick=True)


# -- graphs ------------------------------------------------------------------------------


class Count(TypedDict):
    n: int


class Fan(TypedDict):
    items: Annotated[list[int], operator.add]


class Chat(TypedDict):
    messages: Annotated[list[Any], add_messages]


async def step(state: Count) -> dict[str, int]:
    return {"n": state["n"] + 1}


async def step_writing(state: Count) -> dict[str, int]:
    get_stream_writer()({"n": state["n"]})  # an event nobody consumes
    return {"n": state["n"] + 1}


def chain_graph(n: int, node: Any = step, **compile_kw: Any) -> Any:
    graph = StateGraph(Count)
    names = [f"node_{i}" for i in range(n)]
    for name in names:
        graph.add_node(name, node)
    graph.add_edge(START, names[0])
    for a, b in itertools.pairwise(names):
        graph.add_edge(a, b)
    graph.add_edge(names[-1], END)
    return graph.compile(**compile_kw)


def chain_config(n: int, **extra: Any) -> dict[str, Any]:
    return {"recursion_limit": n + 10, **extra}


async def work(arg: int) -> dict[str, list[int]]:
    return {"items": [arg]}


def fanout_graph(n: int) -> Any:
    graph = StateGraph(Fan)
    graph.add_node("work", work)
    graph.add_conditional_edges(START, lambda state: [Send("work", i) for i in range(n)], ["work"])
    graph.add_edge("work", END)
    return graph.compile()


def token_list(n: int) -> list[str]:
    return [f"t{i} " for i in range(n)]


def token_graph(n: int, *, sync: bool = False, **compile_kw: Any) -> Any:
    llm = FakeChatModel([token_list(n)], cycle=True)

    async def talk(state: Chat) -> dict[str, Any]:
        return {"messages": [await llm.ainvoke(state["messages"])]}

    def talk_sync(state: Chat) -> dict[str, Any]:
        return {"messages": [llm.invoke(state["messages"])]}

    graph = StateGraph(Chat)
    graph.add_node("talk", talk_sync if sync else talk)
    graph.add_edge(START, "talk")
    graph.add_edge("talk", END)
    return graph.compile(**compile_kw)


def custom_graph(n: int, *, sync: bool = False) -> Any:
    async def emit(state: Count) -> dict[str, int]:
        write = get_stream_writer()
        for i in range(n):
            write({"i": i})
        return {"n": n}

    def emit_sync(state: Count) -> dict[str, int]:
        write = get_stream_writer()
        for i in range(n):
            write({"i": i})
        return {"n": n}

    graph = StateGraph(Count)
    graph.add_node("emit", emit_sync if sync else emit)
    graph.add_edge(START, "emit")
    graph.add_edge("emit", END)
    return graph.compile()


async def drain(stream: Any) -> int:
    count = 0
    async for _ in stream:
        count += 1
    return count


# -- bare baselines: the same work with plain async functions and generators -------------


async def bare_chain(n: int) -> dict[str, int]:
    state: dict[str, int] = {"n": 0}
    for _ in range(n):
        state = {**state, **await step(state)}  # type: ignore[arg-type]
    return state


async def bare_updates(n: int) -> AsyncIterator[dict[str, Any]]:
    state: dict[str, int] = {"n": 0}
    for i in range(n):
        update = await step(state)  # type: ignore[arg-type]
        state = {**state, **update}
        yield {f"node_{i}": update}


async def bare_values(n: int) -> AsyncIterator[dict[str, Any]]:
    state: dict[str, int] = {"n": 0}
    yield dict(state)
    for _ in range(n):
        state = {**state, **await step(state)}  # type: ignore[arg-type]
        yield dict(state)


def _event(kind: str, name: str, run_id: str, data: dict[str, Any], step: int) -> dict[str, Any]:
    return {
        "event": kind,
        "name": name,
        "run_id": run_id,
        "parent_ids": [],
        "tags": [],
        "metadata": {"node": name, "step": step},
        "data": data,
    }


async def bare_events(n: int) -> AsyncIterator[dict[str, Any]]:
    state: dict[str, int] = {"n": 0}
    yield _event("on_chain_start", "Graph", "root", {"input": state}, 0)
    for i in range(n):
        name, run_id = f"node_{i}", str(i)
        yield _event("on_chain_start", name, run_id, {"input": state}, i + 1)
        update = await step(state)  # type: ignore[arg-type]
        state = {**state, **update}
        yield _event("on_chain_end", name, run_id, {"input": state, "output": update}, i + 1)
    yield _event("on_chain_end", "Graph", "root", {"output": state}, n + 1)


async def bare_fanout(n: int) -> list[int]:
    updates = await asyncio.gather(*(work(i) for i in range(n)))
    items: list[int] = []
    for update in updates:
        items.extend(update["items"])
    return items


async def bare_custom(n: int) -> AsyncIterator[dict[str, int]]:
    for i in range(n):
        yield {"i": i}


async def bare_tokens(n: int) -> AsyncIterator[AIMessageChunk]:
    for token in token_list(n):
        yield AIMessageChunk(content=token)


async def bare_token_consumer(n: int) -> str:
    parts = [chunk.content async for chunk in bare_tokens(n)]
    return "".join(parts)


# -- workloads ---------------------------------------------------------------------------

Bench = Callable[[Sizes], Coroutine[Any, Any, list[Result]]]
WORKLOADS: dict[str, Bench] = {}


def workload(*names: str) -> Callable[[Bench], Bench]:
    """Register a function measuring the workloads ``names`` (it returns one row each)."""

    def register(fn: Bench) -> Bench:
        for name in names:
            WORKLOADS[name] = fn
        return fn

    return register


@workload("chain")
async def chain(sizes: Sizes) -> list[Result]:
    n = sizes.chain
    app, config = chain_graph(n), chain_config(n)
    hw, base = await measure(
        lambda: app.ainvoke({"n": 0}, config), lambda: bare_chain(n), repeats=sizes.repeats
    )
    return [make_result("chain", "µs/node", n, hw, base, Target(15, lg=30))]


@workload("fanout-200", "fanout-1000", "fanout-4000")
async def fanout(sizes: Sizes) -> list[Result]:
    results = []
    for nominal in (200, 1000, 4000):
        n = sizes.fanout(nominal)
        app = fanout_graph(n)
        repeats = sizes.heavy_repeats if nominal == 4000 else sizes.repeats
        hw, base = await measure(
            lambda app=app: app.ainvoke({"items": []}),
            lambda n=n: bare_fanout(n),
            repeats=repeats,
        )
        results.append(make_result(f"fanout-{nominal}", "µs/task", n, hw, base, Target(15, lg=30)))
    return results


@workload("updates", "values", "events")
async def stream_modes(sizes: Sizes) -> list[Result]:
    n = sizes.chain
    app, config = chain_graph(n), chain_config(n)
    hw_updates, base_updates = await measure(
        lambda: drain(app.astream({"n": 0}, config, stream_mode="updates")),
        lambda: drain(bare_updates(n)),
        repeats=sizes.repeats,
    )
    hw_values, base_values = await measure(
        lambda: drain(app.astream({"n": 0}, config, stream_mode="values")),
        lambda: drain(bare_values(n)),
        repeats=sizes.repeats,
    )
    count = await drain(app.astream_events({"n": 0}, config))
    hw_events, base_events = await measure(
        lambda: drain(app.astream_events({"n": 0}, config)),
        lambda: drain(bare_events(n)),
        repeats=sizes.repeats,
    )
    events_per_s = count / stats(hw_events)["median"]
    return [
        make_result("updates", "µs/node", n, hw_updates, base_updates, Target(20, lg=25)),
        make_result("values", "µs/node", n, hw_values, base_values),
        make_result(
            "events",
            "µs/node",
            n,
            hw_events,
            base_events,
            Target(40, lg=30),
            note=f"{count} events/run, {events_per_s:,.0f} events/s",
        ),
    ]


@workload("custom", "custom-sync")
async def custom(sizes: Sizes) -> list[Result]:
    n = sizes.custom
    results = []
    for name, sync in (("custom", False), ("custom-sync", True)):
        app = custom_graph(n, sync=sync)
        hw, base = await measure(
            lambda app=app: drain(app.astream({"n": 0}, stream_mode="custom")),
            lambda: drain(bare_custom(n)),
            repeats=sizes.repeats,
        )
        # issue 16: >= 15x LangGraph and <= 3x the bare generator, async and sync nodes
        target = Target(1_000_000 if not sync else None, ratio=3, lg=15)
        results.append(make_result(name, "events/s", n, hw, base, target))
    return results


@workload("ainvoke-quiet")
async def ainvoke_quiet(sizes: Sizes) -> list[Result]:
    """Every plugin loaded and every node writing a custom event, nobody streaming: the cost
    should be that of the same chain run with no plugin at all."""
    n = sizes.chain
    config = chain_config(n)
    quiet = chain_graph(n, step_writing)
    bare_pm = chain_graph(n, step, plugin_manager=create_plugin_manager(autoload=False))
    hw, base = await measure(
        lambda: quiet.ainvoke({"n": 0}, config),
        lambda: bare_pm.ainvoke({"n": 0}, config),
        repeats=sizes.repeats,
    )
    return [
        make_result(
            "ainvoke-quiet",
            "µs/node",
            n,
            hw,
            base,
            Target(ratio=1.10),
            baseline_kind="no plugins",
            note="baseline: the chain without plugins nor writes",
        )
    ]


async def _all_tokens_events(app: Any) -> int:
    count = 0
    async for event in app.astream_events({"messages": ["go"]}):
        if event["event"] == "on_chat_model_stream":
            count += 1
    return count


async def _count_tokens_messages(app: Any) -> int:
    count = 0
    async for chunk, _metadata in app.astream({"messages": ["go"]}, stream_mode="messages"):
        count += 1 if chunk.content else 0
    return count


@workload("tokens-events", "tokens-messages-async", "tokens-messages-sync", "tokens-memory")
async def tokens(sizes: Sizes) -> list[Result]:
    n = sizes.tokens
    app, app_sync = token_graph(n), token_graph(n, sync=True)
    results = []
    for name, run, graph, target in (
        ("tokens-events", _all_tokens_events, app, Target(170_000, ratio=3, lg=25)),
        ("tokens-messages-async", _count_tokens_messages, app, Target(450_000, ratio=2.5, lg=20)),
        (
            "tokens-messages-sync",
            _count_tokens_messages,
            app_sync,
            Target(180_000, ratio=2.5, lg=15),
        ),
    ):
        hw, base = await measure(
            lambda run=run, graph=graph: run(graph),
            lambda: bare_token_consumer(n),
            repeats=sizes.repeats,
        )
        results.append(make_result(name, "tokens/s", n, hw, base, target))
    hw_mib = await peak_memory(lambda: _all_tokens_events(app))
    base_mib = await peak_memory(lambda: bare_token_consumer(n))
    results.append(
        finish(
            "tokens-memory",
            "MiB",
            stats([hw_mib]),
            stats([base_mib]),
            Target(3, ratio=1.5),
            note=f"peak tracemalloc growth, {n:,} tokens via astream_events",
        )
    )
    return results


def _otel_plugin_manager() -> tuple[Any, Any, Any] | None:
    """(headwater_otel, plugin manager with it, a TracerProvider exporting nowhere), or None
    when headwater-otel is not installed. Spans go through the SDK's batch processor to an
    exporter that drops them: headwater's cost and the SDK's, not a collector's."""
    try:
        import headwater_otel
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            SpanExporter,
            SpanExportResult,
        )
    except ImportError:
        return None

    class Discard(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(BatchSpanProcessor(Discard()))
    pm = create_plugin_manager()  # HEADWATER_LOAD_PLUGINS may leave the plugin out: add it
    if not pm.is_registered(headwater_otel):
        pm.register(headwater_otel, name="otel")
    return headwater_otel, pm, provider


@workload("tokens-otel", "tokens-otel-quiet")
async def tokens_otel(sizes: Sizes) -> list[Result]:
    """The token path with every run traced (headwater-otel on) against the same runs
    untraced: streamed (``messages`` mode) and quiet (``ainvoke``, nobody streaming)."""
    found = _otel_plugin_manager()
    names = ("tokens-otel", "tokens-otel-quiet")
    if found is None:
        return [finish(n, "tokens/s", stats([0.0]), None, None, note="skipped") for n in names]
    otel, pm, provider = found
    n = sizes.tokens
    app = token_graph(n, plugin_manager=pm)

    async def quiet(graph: Any) -> int:
        await graph.ainvoke({"messages": ["go"]})
        return n

    results = []
    try:
        for name, run in (("tokens-otel", _count_tokens_messages), ("tokens-otel-quiet", quiet)):

            async def on(run: Any = run) -> int:
                otel.enable(provider)
                return int(await run(app))

            async def off(run: Any = run) -> int:
                otel.disable()
                return int(await run(app))

            hw, base = await measure(on, off, repeats=sizes.repeats)
            results.append(
                make_result(
                    name,
                    "tokens/s",
                    n,
                    hw,
                    base,
                    Target(ratio=1.10),
                    baseline_kind="otel off",
                    note="baseline: the same runs untraced",
                )
            )
    finally:
        otel.disable()
        provider.shutdown()
    return results


CHECKPOINTERS = {
    # kind: (target with durability="sync", target with "async", repeats); issue 16
    "memory": (Target(ratio=2, lg=20), Target(ratio=2, lg=20), 7),
    "sqlite": (Target(ratio=1.5), Target(lg=40), 5),
    "postgres": (Target(ratio=1.5), Target(400), 3),
}


SYNC_REPEATS = {"sqlite": 7, "postgres": 7}
"""The sync rows alternate with their bare commit loop more often: a commit's latency on a
shared disk swings from run to run (PostgreSQL's here: 0.3 to 3 ms within a minute)."""


def paired(result: Result, hw: list[float], base: list[float], target: Target) -> Result:
    """The ratio as the median of each run over the bare loop's run right after it: the
    latency of a shared disk drifts between runs, and a pair sees the same drift. (The
    ratio of the medians is kept in ``extra``.)"""
    if not result.headwater or not base:
        return result
    result.extra["ratio_of_medians"] = result.ratio
    result.ratio = statistics.median(h / b for h, b in zip(hw, base, strict=True))
    result.ok = target.met(result.headwater["median"], result.ratio, result.unit)
    return result


def postgres_url() -> str:
    return os.environ.get(
        "HEADWATER_POSTGRES_URL",
        os.environ.get("HEADWATER_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"),
    )


def _postgres_unreachable(url: str) -> str | None:
    try:
        import psycopg

        with psycopg.connect(url, connect_timeout=3) as db:
            db.execute("SELECT 1")
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}".strip().splitlines()[0]
    return None


def _open_checkpointer(kind: str, tmp: Path) -> Any:
    from headwater.checkpoint import checkpointer_from_url

    if kind == "memory":
        return checkpointer_from_url("memory:")
    if kind == "sqlite":
        return checkpointer_from_url(f"sqlite:///{tmp / 'bench.db'}")
    if kind == "sqlite-full":
        return checkpointer_from_url(f"sqlite:///{tmp / 'bench.db'}?synchronous=full")
    return checkpointer_from_url(postgres_url())


# -- bare commit loops: the database's own cost of what a durability="sync" run commits --


class BareCommits:
    """A plain loop committing, one transaction each, the very rows a checkpointed run
    stored (read back from the database), with the same driver, settings and statements
    as the checkpointer: the floor for ``durability="sync"``.

    SQLite: its own connection to the same file, WAL, ``synchronous=NORMAL`` (or ``FULL``,
    as the checkpointer), autocommit, the same ``INSERT``. PostgreSQL: one connection of a
    ``psycopg_pool`` pool with the same connection settings, held for the whole loop (no
    checkout per commit; psycopg prepares the repeated statement), autocommit, the same
    ``INSERT … ON CONFLICT``.
    """

    def __init__(self, kind: str, tmp: Path, thread_id: str, synchronous: str = "NORMAL") -> None:
        self.kind = kind
        if kind == "sqlite":
            import sqlite3

            self.db = sqlite3.connect(
                tmp / "bench.db", timeout=30.0, isolation_level=None, check_same_thread=False
            )
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute(f"PRAGMA synchronous={synchronous}")
            prefix, mark = "", "?"
            self.rows = self._read(self.db, "", "?", thread_id)
        else:
            import psycopg_pool

            self.pool = psycopg_pool.ConnectionPool(
                postgres_url(),
                min_size=1,
                max_size=10,
                open=True,
                kwargs={"autocommit": True, "connect_timeout": 10},
            )
            self.pool.wait(timeout=30)
            prefix, mark = "headwater_", "%s"
            with self.pool.connection() as db:
                self.rows = self._read(db, prefix, mark, thread_id)
        self.checkpoint_sql = (
            f"INSERT INTO {prefix}checkpoints (thread_id, ns, id, data) "
            f"VALUES ({mark}, {mark}, {mark}, {mark})"
            + (" ON CONFLICT DO NOTHING" if kind == "postgres" else "")
        )
        conflict = (
            " ON CONFLICT (thread_id, ns, checkpoint_id, task_id) DO UPDATE SET data = "
            "EXCLUDED.data"
        )
        self.write_sql = (
            f"INSERT {'OR REPLACE ' if kind == 'sqlite' else ''}INTO {prefix}writes "
            f"(thread_id, ns, checkpoint_id, task_id, data) "
            f"VALUES ({mark}, {mark}, {mark}, {mark}, {mark})"
            + (conflict if kind == "postgres" else "")
        )
        self.bytes = sum(len(data) for _, rows in self.rows for *_, data in rows)

    @staticmethod
    def _read(db: Any, prefix: str, mark: str, thread_id: str) -> list[tuple[str, list[Any]]]:
        """The run's commits in order: each checkpoint, then its pending writes (if any)."""
        found = db.execute(
            f"SELECT ns, id, data FROM {prefix}checkpoints WHERE thread_id = {mark} ORDER BY id",
            (thread_id,),
        ).fetchall()
        writes = db.execute(
            f"SELECT ns, checkpoint_id, task_id, data FROM {prefix}writes "
            f"WHERE thread_id = {mark} ORDER BY checkpoint_id, task_id",
            (thread_id,),
        ).fetchall()
        commits: list[tuple[str, list[Any]]] = []
        for ns, cid, data in found:
            commits.append(("checkpoint", [(ns, cid, bytes(data))]))
            batch = [(w[0], w[1], w[2], bytes(w[3])) for w in writes if w[1] == cid]
            if batch:
                commits.append(("writes", batch))
        return commits

    @property
    def commits(self) -> int:
        return len(self.rows)

    def run(self) -> None:
        """Commit every row again under a new thread id, one transaction per commit."""
        thread = uuid.uuid4().hex
        if self.kind == "sqlite":
            db = self.db
            for what, rows in self.rows:
                if what == "checkpoint":
                    db.execute(self.checkpoint_sql, (thread, *rows[0]))
                else:
                    db.execute("BEGIN")
                    db.executemany(self.write_sql, [(thread, *r) for r in rows])
                    db.execute("COMMIT")
            return
        with self.pool.connection() as pg:  # held: no checkout per commit
            for what, rows in self.rows:
                if what == "checkpoint":
                    pg.execute(self.checkpoint_sql, (thread, *rows[0]))
                else:
                    with pg.transaction(), pg.cursor() as cursor:
                        cursor.executemany(self.write_sql, [(thread, *r) for r in rows])

    def close(self) -> None:
        if self.kind == "sqlite":
            self.db.close()
        else:
            self.pool.close()


async def _checkpoint_rows(kind: str, sizes: Sizes) -> list[Result]:
    sync_target, async_target, repeats = CHECKPOINTERS[kind]
    repeats = min(repeats, sizes.repeats)
    n = sizes.chain
    names = [f"checkpoint-{kind}-{d}" for d in ("sync", "async")]
    if kind == "postgres":
        problem = await anyio.to_thread.run_sync(_postgres_unreachable, postgres_url())
        if problem:
            print(f"note: skipping checkpoint-postgres, {postgres_url()} unreachable ({problem})")
            return [
                Result(
                    name=name,
                    unit="µs/node",
                    headwater={},
                    baseline=None,
                    baseline_kind="no checkpointer",
                    ratio=None,
                    target=target.text("µs/node"),
                    ok=None,
                    note="skipped",
                )
                for name, target in zip(names, (sync_target, async_target), strict=True)
            ]
    with tempfile.TemporaryDirectory() as tmp:
        saver = await anyio.to_thread.run_sync(_open_checkpointer, kind, Path(tmp))
        bare: BareCommits | None = None
        try:
            app = chain_graph(n, checkpointer=saver)
            plain = chain_graph(n)

            def run(durability: str, thread: str | None = None) -> Any:
                configurable = {"thread_id": thread or uuid.uuid4().hex}
                config = chain_config(n, configurable=configurable, durability=durability)
                return app.ainvoke({"n": 0}, config)

            def run_plain() -> Any:
                return plain.ainvoke({"n": 0}, chain_config(n))

            results = []
            if kind == "memory":
                hw, base = await measure(lambda: run("sync"), run_plain, repeats=repeats)
                results.append(
                    make_result(
                        names[0],
                        "µs/node",
                        n,
                        hw,
                        base,
                        sync_target,
                        baseline_kind="no checkpointer",
                    )
                )
            else:
                first = uuid.uuid4().hex
                await run("sync", first)
                bare = await anyio.to_thread.run_sync(BareCommits, kind, Path(tmp), first)

                async def commit_loop() -> None:
                    assert bare is not None
                    bare.run()  # blocking on purpose: the database's own cost, no hand-off

                hw, base, chain = await measure(
                    lambda: run("sync"), commit_loop, run_plain, repeats=SYNC_REPEATS[kind]
                )
                result = paired(
                    make_result(
                        names[0], "µs/node", n, hw, base, sync_target, baseline_kind="bare commit"
                    ),
                    hw,
                    base,
                    sync_target,
                )
                no_checkpointer = stats(chain)["median"] / n * 1e6
                result.note = (
                    f"{bare.commits} commits, {bare.bytes / bare.commits:.0f} B each; "
                    f"{result.headwater['median'] / no_checkpointer:.1f}x the chain without one "
                    f"({no_checkpointer:.1f} µs/node)"
                )
                result.extra["no_checkpointer"] = per_unit(chain, n, "µs/node")
                results.append(result)
            hw, base = await measure(lambda: run("async"), run_plain, repeats=repeats)
            results.append(
                make_result(
                    names[1], "µs/node", n, hw, base, async_target, baseline_kind="no checkpointer"
                )
            )
            return results
        finally:
            if bare is not None:
                await anyio.to_thread.run_sync(bare.close)
            close = getattr(saver, "aclose", None)
            if close is not None:
                await close()


@workload("checkpoint-memory-sync", "checkpoint-memory-async")
async def checkpoint_memory(sizes: Sizes) -> list[Result]:
    return await _checkpoint_rows("memory", sizes)


@workload("checkpoint-sqlite-sync", "checkpoint-sqlite-async")
async def checkpoint_sqlite(sizes: Sizes) -> list[Result]:
    return await _checkpoint_rows("sqlite", sizes)


@workload("checkpoint-sqlite-full")
async def checkpoint_sqlite_full(sizes: Sizes) -> list[Result]:
    """``durability="sync"`` on SQLite with ``synchronous=full`` (a flush per commit)
    beside the same commits made by a bare loop at ``PRAGMA synchronous=FULL``."""
    name, n, repeats = "checkpoint-sqlite-full", sizes.chain, sizes.heavy_repeats
    target = Target(ratio=1.5)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            saver = await anyio.to_thread.run_sync(_open_checkpointer, "sqlite-full", Path(tmp))
        except Exception as exc:  # a headwater-sqlite without the setting
            print(f"note: skipping {name}: {type(exc).__name__}: {exc}")
            return [
                Result(
                    name=name,
                    unit="µs/node",
                    headwater={},
                    baseline=None,
                    baseline_kind="bare commit",
                    ratio=None,
                    target=target.text("µs/node"),
                    ok=None,
                    note="skipped",
                )
            ]
        app = chain_graph(n, checkpointer=saver)
        bare: BareCommits | None = None

        def run(thread: str | None = None) -> Any:
            configurable = {"thread_id": thread or uuid.uuid4().hex}
            return app.ainvoke({"n": 0}, chain_config(n, configurable=configurable))

        try:
            first = uuid.uuid4().hex
            await run(first)
            bare = await anyio.to_thread.run_sync(BareCommits, "sqlite", Path(tmp), first, "FULL")

            async def commit_loop() -> None:
                assert bare is not None
                bare.run()

            hw, base = await measure(run, commit_loop, repeats=repeats)
            result = make_result(name, "µs/node", n, hw, base, target, baseline_kind="bare commit")
            result = paired(result, hw, base, target)
            result.note = f"{bare.commits} commits, each flushed (fsync)"
            return [result]
        finally:
            if bare is not None:
                await anyio.to_thread.run_sync(bare.close)
            await saver.aclose()


@workload("checkpoint-postgres-sync", "checkpoint-postgres-async")
async def checkpoint_postgres(sizes: Sizes) -> list[Result]:
    return await _checkpoint_rows("postgres", sizes)


def scaling_row(results: dict[str, Result]) -> Result | None:
    """fanout: per-task cost at 4000 over the cost at 200 (the issue asks for ≤ 1.3x)."""
    small, big = results.get("fanout-200"), results.get("fanout-4000")
    if small is None or big is None or not small.baseline or not big.baseline:
        return None
    hw = big.headwater["median"] / small.headwater["median"]
    base = big.baseline["median"] / small.baseline["median"]
    return finish(
        "fanout-scaling",
        "x",
        stats([hw]),
        stats([base]),
        Target(1.3),
        note="µs/task at 4000 over µs/task at 200",
    )


# -- the LangGraph half ------------------------------------------------------------------


def run_langgraph(names: list[str], quick: bool, python: str | None) -> dict[str, Any]:
    """LangGraph's numbers for ``names``: in-process if importable, else under ``python``."""
    script = HERE / "_langgraph.py"
    args = [*names, *(["--quick"] if quick else [])]
    if python is None:
        try:
            import langgraph  # noqa: F401
        except ImportError:
            print(
                "note: --compare langgraph: langgraph is not importable here; pass "
                "--langgraph-python PATH (see benchmarks/README.md)"
            )
            return {}
        python = sys.executable
    done = subprocess.run([python, str(script), *args], capture_output=True, text=True)
    if done.returncode != 0:
        print(f"note: the LangGraph half failed:\n{done.stderr[-2000:]}")
        return {}
    report: dict[str, Any] = json.loads(done.stdout)
    return report


# -- output ------------------------------------------------------------------------------


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit.endswith("/s"):
        return f"{value:,.0f}"
    if unit in ("MiB", "x"):
        return f"{value:.2f}"
    return f"{value:.1f}" if value < 1000 else f"{value:,.0f}"


def table(results: list[Result], langgraph: bool) -> str:
    rows = table_rows(results, langgraph)
    header = rows[0]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def markdown_table(results: list[Result], langgraph: bool) -> str:
    """The table as Markdown (for docs/performance.md)."""
    rows = table_rows(results, langgraph)
    lines = ["| " + " | ".join(row) + " |" for row in rows]
    lines.insert(1, "|" + "---|" * len(rows[0]))
    return "\n".join(lines) + "\n"


def table_rows(results: list[Result], langgraph: bool) -> list[list[str]]:
    header = ["workload", "unit", "headwater", "(min-max)", "baseline", "ratio", "target", ""]
    if langgraph:
        header += ["langgraph", "lg÷hw"]
    rows = [header]
    for r in results:
        hw = r.headwater
        spread = f"{fmt(hw['min'], r.unit)}-{fmt(hw['max'], r.unit)}" if hw else ""
        base = f"{fmt(r.baseline['median'], r.unit)} {r.baseline_kind}" if r.baseline else "—"
        status = "" if r.ok is None else ("pass" if r.ok else "MISS")
        row = [
            r.name,
            r.unit,
            fmt(hw.get("median"), r.unit) if hw else r.note,
            spread,
            base,
            f"{r.ratio:.2f}x" if r.ratio is not None else "—",
            r.target or "—",
            status,
        ]
        if langgraph:
            lg = r.langgraph["median"] if r.langgraph else None
            speedup = cost_ratio(lg, hw["median"], r.unit) if lg and hw else None
            row += [fmt(lg, r.unit), f"{speedup:.1f}x" if speedup else "—"]
        rows.append(row)
    return rows


def selected(patterns: list[str] | None) -> list[str]:
    if not patterns:
        return list(WORKLOADS)
    names = [
        name
        for name in WORKLOADS
        if any(fnmatch.fnmatch(name, p) or name.startswith(p + "-") for p in patterns)
    ]
    unknown = [
        p
        for p in patterns
        if not any(fnmatch.fnmatch(n, p) or n.startswith(p + "-") for n in WORKLOADS)
    ]
    if unknown:
        sys.exit(f"unknown workload(s) {unknown}; known: {', '.join(WORKLOADS)}")
    return names


async def run_all(names: list[str], sizes: Sizes) -> list[Result]:
    results: list[Result] = []
    done: set[Bench] = set()
    for name in names:
        fn = WORKLOADS[name]
        if fn in done:
            continue
        done.add(fn)
        print(f"… {fn.__name__}", file=sys.stderr, flush=True)
        results += [r for r in await fn(sizes) if r.name in names]
    by_name = {r.name: r for r in results}
    extra = scaling_row(by_name)
    if extra is not None:
        results.append(extra)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repeat")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="workloads (globs allowed)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--markdown", metavar="PATH", help="also write the table as Markdown")
    parser.add_argument("--compare", choices=["langgraph"], help="run LangGraph's equivalents")
    parser.add_argument(
        "--langgraph-python", metavar="PATH", help="interpreter that has langgraph installed"
    )
    args = parser.parse_args(argv)
    names = selected(args.only)
    sizes = QUICK if args.quick else FULL
    results = anyio.run(run_all, names, sizes, backend="asyncio")
    lg: dict[str, Any] = {}
    if args.compare == "langgraph":
        lg = run_langgraph(names, args.quick, args.langgraph_python)
        for r in results:
            if r.name in lg.get("results", {}):
                r.langgraph = lg["results"][r.name]
                r.judge_langgraph()
    print(
        f"headwater benchmarks ({'quick' if args.quick else 'full'}; python "
        f"{platform.python_version()}, {os.cpu_count()} cores; median of repeats)"
    )
    if lg:
        print(f"langgraph {lg.get('version', '?')}: lg÷hw = how many times headwater is cheaper")
    print(table(results, bool(lg)))
    for r in results:
        if r.note and r.headwater:
            print(f"  {r.name}: {r.note}")
    if args.json:
        report = {
            "quick": args.quick,
            "python": platform.python_version(),
            "cores": os.cpu_count(),
            "langgraph_version": lg.get("version"),
            "results": [asdict(r) for r in results],
        }
        Path(args.json).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(markdown_table(results, bool(lg)), encoding="utf-8")


if __name__ == "__main__":
    main()
