"""headwater-postgres against the PostgreSQL on 127.0.0.1:5432: conformance, crash
safety, concurrency across processes, bad input."""

from __future__ import annotations

import operator
import uuid
from pathlib import Path
from typing import Annotated, Any, TypedDict

import anyio
import anyio.lowlevel
import psycopg
import pytest
from headwater_postgres import SCHEMA_VERSION, PostgresCheckpointer, _store, redact
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from headwater import START, StateGraph
from headwater.checkpoint import Checkpoint, Checkpointer, checkpointer_from_url, new_checkpoint_id
from headwater.errors import CheckpointError, QueueError
from headwater.testing.conformance import CheckpointerConformance
from headwater.testing.crash import MAX_KILL_STEP, check_crash_resume
from headwater.testing.services import service_url

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"


def _ping(url: str) -> None:
    with psycopg.connect(url, connect_timeout=3) as db:
        db.execute("SELECT 1")


@pytest.fixture(scope="module")
def pg_url() -> str:
    return service_url("HEADWATER_TEST_POSTGRES_URL", DEFAULT_URL, _ping)


class TestPostgresCheckpointer(CheckpointerConformance):
    @pytest.fixture(autouse=True)
    def _url(self, pg_url: str) -> None:
        self.url = pg_url

    async def make_checkpointer(self) -> Checkpointer:
        return await anyio.to_thread.run_sync(lambda: PostgresCheckpointer(self.url, max_size=4))

    async def write_raw(
        self, saver: Checkpointer, thread_id: str, checkpoint_id: str, data: bytes
    ) -> None:
        with psycopg.connect(self.url, autocommit=True) as db:
            db.execute(
                "INSERT INTO headwater_checkpoints (thread_id, ns, id, data) "
                "VALUES (%s, '', %s, %s)",
                (thread_id, checkpoint_id, data),
            )


def test_url_scheme_and_schema_version(pg_url: str) -> None:
    saver = checkpointer_from_url(pg_url)
    assert isinstance(saver, PostgresCheckpointer)
    with psycopg.connect(pg_url) as db:
        row = db.execute("SELECT MAX(version) FROM headwater_schema").fetchone()
    assert row is not None and row[0] == SCHEMA_VERSION
    anyio.run(saver.aclose)


def test_unreachable_server_is_a_clear_error_not_a_hang() -> None:
    url = "postgresql://someone:hunter2@127.0.0.1:1/nowhere"
    with pytest.raises(CheckpointError) as caught:
        PostgresCheckpointer(url, connect_timeout=1)
    message = str(caught.value)
    assert "127.0.0.1:1" in message and "hunter2" not in message and "***" in message


def test_redact_hides_only_the_password() -> None:
    assert redact("postgresql://me:pw@db:5432/app") == "postgresql://me:***@db:5432/app"
    assert redact("postgresql://me@db/app") == "postgresql://me@db/app"


@settings(
    max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    kill_at=st.integers(min_value=0, max_value=MAX_KILL_STEP),
    durability=st.sampled_from(["sync", "async"]),
)
def test_sigkill_at_any_step_then_resume_gives_the_uninterrupted_result(
    pg_url: str, tmp_path_factory: pytest.TempPathFactory, kill_at: int, durability: str
) -> None:
    check_crash_resume(pg_url, kill_at, tmp_path_factory.mktemp("pgcrash"), durability)


class _Counter(TypedDict):
    n: int
    log: Annotated[list[int], operator.add]


async def _step(state: _Counter) -> dict[str, object]:
    await anyio.lowlevel.checkpoint()
    return {"n": state["n"] + 1, "log": [state["n"]]}


@pytest.mark.anyio
async def test_fifty_concurrent_runs_on_one_checkpointer(pg_url: str) -> None:
    graph = StateGraph(_Counter)
    for name in "abc":
        graph.add_node(name, _step)
    graph.add_edge(START, "a")
    graph.add_edge("a", "b")
    graph.add_edge("b", "c")
    saver = await anyio.to_thread.run_sync(lambda: PostgresCheckpointer(pg_url, max_size=8))
    app = graph.compile(checkpointer=saver)
    prefix = uuid.uuid4().hex
    results: dict[int, object] = {}

    async def one(i: int) -> None:
        config = {"configurable": {"thread_id": f"{prefix}-{i}"}}
        results[i] = await app.ainvoke({"n": i, "log": []}, config)

    async with anyio.create_task_group() as tg:
        for i in range(50):
            tg.start_soon(one, i)
    assert results == {i: {"n": i + 3, "log": [i, i + 1, i + 2]} for i in range(50)}
    await saver.aclose()


def test_migration_is_safe_when_many_processes_start_at_once(pg_url: str, tmp_path: Path) -> None:
    import subprocess
    import sys

    code = (
        "import sys; from headwater_postgres import PostgresCheckpointer as P; "
        "P(sys.argv[1]); print('ok')"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, pg_url], stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    outputs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert outputs == ["ok"] * 4


# -- the run queue ------------------------------------------------------------------------


@pytest.mark.anyio
async def test_queue_claim_lease_takeover_and_cancel(pg_url: str) -> None:
    from headwater_postgres import PostgresRunQueue

    from headwater.queue import RunJob, queue_from_url

    queue = await anyio.to_thread.run_sync(lambda: queue_from_url(pg_url))
    assert isinstance(queue, PostgresRunQueue)
    run, graph, thread = uuid.uuid4().hex, f"g-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    await queue.enqueue(
        RunJob(run_id=run, graph=graph, thread_id=thread, input={"n": 1}, config={"a": 1})
    )
    job = await queue.get(run)
    assert job is not None and job.status == "queued" and job.input == {"n": 1}

    # A worker serving other graphs never takes it (nor does this test take other runs).
    assert await queue.claim("w0", lease=0.5, graphs=["some-other-graph"]) is None
    claimed = await queue.claim("w1", lease=0.5, graphs=[graph])
    assert claimed is not None and claimed.run_id == run and claimed.attempts == 1
    assert (await queue.renew(run, "w1", lease=0.5)) is not None
    assert await queue.renew(run, "w2", lease=0.5) is None  # not w2's lease

    await anyio.sleep(1.0)  # w1 "dies": its lease expires
    taken = await queue.claim("w2", lease=30, graphs=[graph])
    assert (
        taken is not None and taken.run_id == run and taken.attempts == 2 and taken.worker == "w2"
    )
    assert await queue.renew(run, "w1", lease=30) is None  # w1 lost it

    await queue.cancel(run)
    renewed = await queue.renew(run, "w2", lease=30)
    assert renewed is not None and renewed.cancel_requested
    await queue.finish(run, "w2", "cancelled")
    final = await queue.get(run)
    assert final is not None and final.status == "cancelled"

    queued = uuid.uuid4().hex
    await queue.enqueue(RunJob(run_id=queued, graph="g", thread_id=thread))
    await queue.cancel(queued)
    cancelled = await queue.get(queued)
    assert cancelled is not None and cancelled.status == "cancelled"
    await queue.aclose()


async def _queue(pg_url: str) -> Any:
    from headwater.queue import queue_from_url

    return await anyio.to_thread.run_sync(lambda: queue_from_url(pg_url))


@pytest.mark.anyio
async def test_queue_multitask_strategies_keep_one_run_per_thread(pg_url: str) -> None:
    from headwater.queue import RunJob, ThreadBusyError

    queue = await _queue(pg_url)
    graph, thread = f"g-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex

    def job() -> RunJob:
        return RunJob(run_id=uuid.uuid4().hex, graph=graph, thread_id=thread)

    first, second, third = job(), job(), job()
    assert await queue.enqueue(first) == []
    with pytest.raises(ThreadBusyError, match="busy with run") as busy:
        await queue.enqueue(second)  # reject is the default
    assert busy.value.run_ids == [first.run_id]
    assert await queue.get(second.run_id) is None  # nothing was added
    assert await queue.enqueue(second, multitask="enqueue") == []
    running = await queue.claim("w1", lease=30, graphs=[graph])
    assert running is not None and running.run_id == first.run_id
    assert await queue.claim("w2", lease=30, graphs=[graph]) is None  # second waits its turn

    superseded = await queue.enqueue(third, multitask="interrupt")
    assert {(j.run_id, j.status, j.cancel_reason) for j in superseded} == {
        (first.run_id, "running", "interrupt"),
        (second.run_id, "cancelled", "interrupt"),  # queued: cancelled at once
    }
    assert await queue.claim("w2", lease=30, graphs=[graph]) is None  # first still running
    renewed = await queue.renew(first.run_id, "w1", lease=30)
    assert renewed is not None and renewed.cancel_requested
    await queue.finish(first.run_id, "w1", "cancelled")
    started = await queue.claim("w2", lease=30, graphs=[graph])
    assert started is not None and started.run_id == third.run_id

    with pytest.raises(QueueError, match="Unknown multitask strategy"):
        await queue.enqueue(job(), multitask="later")
    await queue.aclose()


@pytest.mark.anyio
async def test_a_poison_run_is_reaped_after_its_attempts(pg_url: str) -> None:
    from headwater.queue import RunJob

    queue = await _queue(pg_url)
    graph = f"g-{uuid.uuid4().hex[:8]}"
    run = uuid.uuid4().hex
    await queue.enqueue(RunJob(run_id=run, graph=graph, thread_id=uuid.uuid4().hex))
    for attempt in (1, 2):
        claimed = await queue.claim(f"w{attempt}", lease=0.2, graphs=[graph], max_attempts=2)
        assert claimed is not None and claimed.attempts == attempt
        assert await queue.reap(max_attempts=2, graphs=[graph]) == []  # lease still held
        await anyio.sleep(0.4)  # the worker "dies"
    assert await queue.claim("w3", lease=0.2, graphs=[graph], max_attempts=2) is None
    reaped = await queue.reap(max_attempts=2, graphs=[graph])
    assert [(j.run_id, j.status) for j in reaped] == [(run, "error")]
    assert "claimed 2 times" in (reaped[0].error or "")
    assert await queue.reap(max_attempts=2, graphs=[graph]) == []

    cancelled = uuid.uuid4().hex  # a cancel of a run whose worker died takes effect
    await queue.enqueue(RunJob(run_id=cancelled, graph=graph, thread_id=uuid.uuid4().hex))
    assert await queue.claim("w4", lease=0.2, graphs=[graph]) is not None
    await queue.cancel(cancelled)
    await anyio.sleep(0.4)
    assert await queue.claim("w5", lease=30, graphs=[graph]) is None  # never claimed again
    assert [(j.run_id, j.status) for j in await queue.reap(graphs=[graph])] == [
        (cancelled, "cancelled")
    ]
    await queue.aclose()


def test_unreachable_queue_names_the_url() -> None:
    from headwater.queue import QueueError, queue_from_url

    with pytest.raises(QueueError, match=r"127\.0\.0\.1:1"):
        queue_from_url("postgresql://127.0.0.1:1/nowhere")


def _cp(thread: str, step: int) -> Checkpoint:
    return Checkpoint(id=new_checkpoint_id(), thread_id=thread, step=step, values={"n": step})


@pytest.mark.anyio
async def test_a_lost_loop_connection_fails_one_write_then_the_thread_takes_over(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    saver = await anyio.to_thread.run_sync(lambda: PostgresCheckpointer(pg_url, max_size=2))
    thread = uuid.uuid4().hex
    first, lost, after = _cp(thread, 0), _cp(thread, 1), _cp(thread, 2)
    await saver.aput(first)  # opens the connection the event loop writes on
    here = saver._here
    assert here is not None
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (here.pg.backend_pid,))
    with pytest.raises(CheckpointError, match="PostgreSQL error"):
        await saver.aput(lost)  # its outcome is unknown: reported, not retried
    assert saver._here is None
    await saver.aput(after)  # through the writer thread and the pool meanwhile
    assert saver._here is None
    monkeypatch.setattr(_store, "_REOPEN_SECONDS", 0.0)
    await saver.aput(_cp(thread, 3))  # and a new connection once the pause is over
    assert saver._here is not None and saver._here is not here
    ids = {c.id for c in await saver.alist(thread)}
    assert {first.id, after.id} <= ids
    await saver.aclose()


@pytest.mark.anyio
async def test_a_write_on_the_loop_cancelled_midway_is_still_committed(pg_url: str) -> None:
    saver = await anyio.to_thread.run_sync(lambda: PostgresCheckpointer(pg_url, max_size=2))
    thread = uuid.uuid4().hex
    await saver.aput(_cp(thread, 0))
    checkpoint = _cp(thread, 1)
    with anyio.CancelScope() as scope:
        scope.cancel()  # cancelled from the first await on: the socket wait
        await saver.aput(checkpoint)
    found = await saver.aget(thread)
    assert found is not None and found.checkpoint.id == checkpoint.id
    await saver.aput(_cp(thread, 2))  # the connection is usable: no result left pending
    assert saver._here is not None
    await saver.aclose()


def test_a_checkpointer_dropped_without_aclose_closes_its_loop_connection_quietly(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gc
    import sys
    import time

    from headwater import checkpoint

    monkeypatch.setattr(checkpoint, "_IDLE_SECONDS", 0.05)
    unraisable: list[object] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda info: unraisable.append(info.exc_value))

    async def write() -> Any:
        saver = PostgresCheckpointer(pg_url, max_size=2)
        await saver.aput(_cp(uuid.uuid4().hex, 0))
        assert saver._here is not None
        return saver._here.conn

    conn = anyio.run(write)
    for _ in range(100):  # the writer thread ends when idle; then the checkpointer is garbage
        gc.collect()
        if conn.closed:
            break
        time.sleep(0.05)
    assert conn.closed
    assert unraisable == []
