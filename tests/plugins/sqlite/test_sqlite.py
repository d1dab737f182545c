"""headwater-sqlite: conformance, crash safety across processes, concurrency, bad input."""

from __future__ import annotations

import itertools
import operator
import re
import sqlite3
from pathlib import Path
from typing import Annotated, TypedDict

import anyio
import anyio.lowlevel
import pytest
from headwater_sqlite import SCHEMA_VERSION, SqliteCheckpointer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from headwater import START, StateGraph
from headwater.checkpoint import Checkpointer, checkpointer_from_url
from headwater.errors import CheckpointError
from headwater.testing.conformance import CheckpointerConformance
from headwater.testing.crash import MAX_KILL_STEP, check_crash_resume


class TestSqliteFile(CheckpointerConformance):
    @pytest.fixture(autouse=True)
    def _dir(self, tmp_path: Path) -> None:
        self.path = tmp_path / "checkpoints.db"

    async def make_checkpointer(self) -> Checkpointer:
        return SqliteCheckpointer(self.path)

    async def write_raw(
        self, saver: Checkpointer, thread_id: str, checkpoint_id: str, data: bytes
    ) -> None:
        with sqlite3.connect(self.path) as db:
            db.execute(
                "INSERT INTO checkpoints (thread_id, ns, id, data) VALUES (?, '', ?, ?)",
                (thread_id, checkpoint_id, data),
            )


class TestSqliteMemory(CheckpointerConformance):
    async def make_checkpointer(self) -> Checkpointer:
        return checkpointer_from_url("sqlite:///:memory:")

    async def write_raw(
        self, saver: Checkpointer, thread_id: str, checkpoint_id: str, data: bytes
    ) -> None:
        assert isinstance(saver, SqliteCheckpointer)
        saver._db.execute(
            "INSERT INTO checkpoints (thread_id, ns, id, data) VALUES (?, '', ?, ?)",
            (thread_id, checkpoint_id, data),
        )


def test_file_uses_wal_and_records_schema_version(tmp_path: Path) -> None:
    SqliteCheckpointer(tmp_path / "a.db")
    with sqlite3.connect(tmp_path / "a.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert (
            db.execute("SELECT MAX(version) FROM headwater_schema").fetchone()[0] == SCHEMA_VERSION
        )


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    SqliteCheckpointer(tmp_path / "a.db")
    with sqlite3.connect(tmp_path / "a.db") as db:
        db.execute("INSERT INTO headwater_schema (version) VALUES (99)")
    with pytest.raises(CheckpointError, match="schema version 99"):
        SqliteCheckpointer(tmp_path / "a.db")


@pytest.mark.parametrize("url", ["sqlite://host/x.db", "sqlite:", "sqlite:///"])
def test_bad_urls_name_the_expected_form(url: str) -> None:
    with pytest.raises(CheckpointError, match=re.escape("sqlite:///relative/path.db")):
        checkpointer_from_url(url)


def test_misspelled_scheme_suggests_sqlite() -> None:
    with pytest.raises(CheckpointError, match="Did you mean 'sqlite'"):
        checkpointer_from_url("sqllite:///x.db")


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    kill_at=st.integers(min_value=0, max_value=MAX_KILL_STEP),
    durability=st.sampled_from(["sync", "async"]),
)
def test_sigkill_at_any_step_then_resume_gives_the_uninterrupted_result(
    tmp_path_factory: pytest.TempPathFactory, kill_at: int, durability: str
) -> None:
    tmp = tmp_path_factory.mktemp("crash")
    check_crash_resume(f"sqlite:///{tmp / 'crash.db'}", kill_at, tmp, durability)


class _Counter(TypedDict):
    n: int
    log: Annotated[list[int], operator.add]


async def _step(state: _Counter) -> dict[str, object]:
    await anyio.lowlevel.checkpoint()
    return {"n": state["n"] + 1, "log": [state["n"]]}


@pytest.mark.anyio
async def test_fifty_concurrent_runs_on_one_checkpointer(tmp_path: Path) -> None:
    graph = StateGraph(_Counter)
    graph.add_node("a", _step)
    graph.add_node("b", _step)
    graph.add_node("c", _step)
    graph.add_edge(START, "a")
    graph.add_edge("a", "b")
    graph.add_edge("b", "c")
    saver = SqliteCheckpointer(tmp_path / "many.db")
    app = graph.compile(checkpointer=saver)
    results: dict[int, object] = {}

    async def one(i: int) -> None:
        config = {"configurable": {"thread_id": f"t{i}"}}
        results[i] = await app.ainvoke({"n": i, "log": []}, config)

    async with anyio.create_task_group() as tg:
        for i in range(50):
            tg.start_soon(one, i)
    assert results == {i: {"n": i + 3, "log": [i, i + 1, i + 2]} for i in range(50)}
    for i in (0, 49):
        history = await app.aget_state_history({"configurable": {"thread_id": f"t{i}"}})
        assert [h.metadata["step"] for h in history] == [3, 2, 1, 0]
    await saver.aclose()


def _chain(saver: Checkpointer, length: int = 3) -> object:
    graph = StateGraph(_Counter)
    names = [f"s{i}" for i in range(length)]
    for name in names:
        graph.add_node(name, _step)
    graph.add_edge(START, names[0])
    for a, b in itertools.pairwise(names):
        graph.add_edge(a, b)
    return graph.compile(checkpointer=saver)


@pytest.mark.parametrize(
    ("make", "level"),
    [
        (lambda p: SqliteCheckpointer(p), 1),
        (lambda p: SqliteCheckpointer(p, synchronous="full"), 2),
        (lambda p: checkpointer_from_url(f"sqlite:///{p}?synchronous=FULL"), 2),
        (lambda p: checkpointer_from_url(f"sqlite:///{p}?synchronous=normal"), 1),
    ],
)
def test_synchronous_setting_reaches_every_connection(
    tmp_path: Path, make: object, level: int
) -> None:
    saver = make(tmp_path / "s.db")  # type: ignore[operator]
    assert isinstance(saver, SqliteCheckpointer)
    assert saver._db.execute("PRAGMA synchronous").fetchone()[0] == level
    if level == 2:  # every commit flushes: none is made on the event loop
        assert saver._here is None
    else:
        assert saver._here is not None
        assert saver._here.execute("PRAGMA synchronous").fetchone()[0] == level
    app = _chain(saver)
    assert app.invoke({"n": 0, "log": []}, {"configurable": {"thread_id": "t"}})["n"] == 3  # type: ignore[attr-defined]
    anyio.run(saver.aclose)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sqlite:///x.db?synchronous=off", "synchronous='off' is not one of normal, full"),
        ("sqlite:///x.db?sync=full", "unknown or repeated parameter(s) ['sync']"),
        ("sqlite:///x.db?synchronous=full&synchronous=normal", "unknown or repeated"),
    ],
)
def test_bad_url_parameters_are_named(url: str, message: str) -> None:
    with pytest.raises(CheckpointError, match=re.escape(message)):
        checkpointer_from_url(url)


@pytest.mark.anyio
async def test_a_write_lock_held_elsewhere_never_blocks_the_event_loop(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    saver = SqliteCheckpointer(path)
    app = _chain(saver, 4)
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # another connection (or process) holds the write lock
    ticks = 0
    result: dict[str, object] = {}

    async def run() -> None:
        result.update(await app.ainvoke({"n": 0, "log": []}, {"configurable": {"thread_id": "t"}}))  # type: ignore[attr-defined]

    async def ticker() -> None:
        nonlocal ticks
        while not result:
            ticks += 1
            await anyio.sleep(0.005)

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            tg.start_soon(ticker)
            await anyio.sleep(0.3)
            assert not result  # the run waits for the lock, on the checkpointer's thread,
            assert ticks >= 10  # while the loop goes on
            other.execute("COMMIT")
    assert result["n"] == 4
    history = await app.aget_state_history({"configurable": {"thread_id": "t"}})  # type: ignore[attr-defined]
    assert [h.metadata["step"] for h in history] == [4, 3, 2, 1, 0]
    other.close()
    await saver.aclose()


@pytest.mark.anyio
async def test_the_wal_stays_bounded_when_commits_are_made_on_the_loop(tmp_path: Path) -> None:
    path = tmp_path / "wal.db"
    saver = SqliteCheckpointer(path)
    app = _chain(saver, 50)
    config = {"recursion_limit": 100}
    for i in range(60):  # ~3,000 commits of ~600 bytes: far beyond 1,000 WAL pages unchecked
        await app.ainvoke({"n": 0, "log": []}, {**config, "configurable": {"thread_id": f"t{i}"}})  # type: ignore[attr-defined]
    await saver._thread.call(lambda: None)  # any WAL checkpoint posted meanwhile is done
    wal = path.with_name(path.name + "-wal")
    assert wal.stat().st_size < 8 * 2**20
    found = await saver.aget("t59")
    assert found is not None and found.checkpoint.values["n"] == 50
    await saver.aclose()
