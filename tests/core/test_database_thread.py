"""DatabaseThread: one long-lived thread running a blocking driver for async callers."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import anyio
import pytest

from headwater import checkpoint
from headwater.checkpoint import (
    Checkpoint,
    DatabaseThread,
    PendingWrite,
    Record,
    new_checkpoint_id,
)
from headwater.errors import CheckpointError


def _record(thread_id: str = "t", *, bad: bool = False) -> Record:
    cid = new_checkpoint_id()
    value = Checkpoint(id=cid, thread_id=thread_id, values={"bad": bad})
    return Record(thread_id=thread_id, ns="", checkpoint_id=cid, value=value)


class _Store:
    """A fake all-or-nothing store: records its transactions; ``bad`` records fail theirs."""

    def __init__(self, delay: float = 0.0) -> None:
        self.transactions: list[list[str]] = []
        self.threads: set[str] = set()
        self.delay = delay

    def commit(self, records: Sequence[Record]) -> None:
        self.threads.add(threading.current_thread().name)
        time.sleep(self.delay)
        values = [r.value for r in records]
        if any(isinstance(v, Checkpoint) and v.values.get("bad") for v in values):
            raise CheckpointError("a bad record")
        self.transactions.append([r.checkpoint_id for r in records])

    @property
    def committed(self) -> set[str]:
        return {cid for t in self.transactions for cid in t}


@pytest.mark.anyio
async def test_calls_run_in_order_on_one_named_thread_and_return_or_raise() -> None:
    store = _Store()
    db = DatabaseThread(store.commit, name="test-db")
    seen: list[int] = []

    def boom() -> None:
        raise ValueError("from the thread")

    try:
        for i in range(5):
            assert await db.call(lambda i=i: seen.append(i) or threading.current_thread().name) == (
                "test-db"
            )
        assert seen == [0, 1, 2, 3, 4]
        with pytest.raises(ValueError, match="from the thread"):
            await db.call(boom)
        await db.commit([_record()])
        assert store.threads == {"test-db"}
    finally:
        await db.aclose()


@pytest.mark.anyio
async def test_commits_queued_meanwhile_share_one_transaction() -> None:
    store = _Store(delay=0.05)
    db = DatabaseThread(store.commit)
    records = [_record() for _ in range(6)]
    try:
        async with anyio.create_task_group() as tg:
            for record in records:
                tg.start_soon(db.commit, [record])
        assert store.committed == {r.checkpoint_id for r in records}
        assert len(store.transactions) < len(records)  # the first alone, the rest together
        assert max(len(t) for t in store.transactions) > 1
    finally:
        await db.aclose()


@pytest.mark.anyio
async def test_a_bad_record_fails_only_its_own_caller() -> None:
    store = _Store(delay=0.05)
    db = DatabaseThread(store.commit)
    good = [_record() for _ in range(4)]
    bad = _record(bad=True)
    errors: dict[str, BaseException] = {}

    async def commit(record: Record) -> None:
        try:
            await db.commit([record])
        except CheckpointError as exc:
            errors[record.checkpoint_id] = exc

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(commit, good[0])  # occupies the thread: the others queue up
            await anyio.sleep(0.01)
            for record in [good[1], bad, *good[2:]]:
                tg.start_soon(commit, record)
        assert list(errors) == [bad.checkpoint_id]
        assert store.committed == {r.checkpoint_id for r in good}
    finally:
        await db.aclose()


@pytest.mark.anyio
async def test_a_cancelled_caller_still_waits_for_its_commit() -> None:
    store = _Store(delay=0.2)
    db = DatabaseThread(store.commit)
    record = _record()
    try:
        with anyio.move_on_after(0.02):
            await db.commit([record])
        assert record.checkpoint_id in store.committed  # it returned only once committed
    finally:
        await db.aclose()


@pytest.mark.anyio
async def test_closed_thread_refuses_work_and_closing_twice_is_fine() -> None:
    db = DatabaseThread(_Store().commit, name="closing")
    await db.call(lambda: None)
    await db.aclose()
    await db.aclose()
    with pytest.raises(CheckpointError, match="closing is closed"):
        await db.call(lambda: None)


@pytest.mark.anyio
async def test_an_idle_thread_ends_and_the_next_call_starts_another(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(checkpoint, "_IDLE_SECONDS", 0.05)
    db = DatabaseThread(_Store().commit, name="idle")
    first = await db.call(threading.get_ident)
    for _ in range(500):  # it ends after its idle time
        if db._thread is None:
            break
        await anyio.sleep(0.02)
    assert db._thread is None
    assert not any(t.name == "idle" for t in threading.enumerate() if t.ident == first)
    assert await db.call(lambda: threading.current_thread().name) == "idle"
    await db.aclose()


def test_event_loops_in_several_threads_share_one_database_thread() -> None:
    store = _Store()
    db = DatabaseThread(store.commit)
    done: list[Any] = []

    def loop(backend: str) -> None:
        async def work() -> None:
            for _ in range(20):
                await db.commit([_record()])
            done.append(await db.call(lambda: backend))

        anyio.run(work, backend=backend)

    threads = [threading.Thread(target=loop, args=(b,)) for b in ("asyncio", "trio", "asyncio")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(done) == ["asyncio", "asyncio", "trio"]
    assert len(store.committed) == 60
    anyio.run(db.aclose)


@pytest.mark.anyio
async def test_post_runs_later_without_waiting_and_drops_errors() -> None:
    db = DatabaseThread(_Store().commit)
    ran = threading.Event()

    def fails() -> None:
        raise RuntimeError("dropped")

    try:
        db.post(fails)
        db.post(ran.set)
        await db.call(lambda: None)  # after both, in order
        assert ran.is_set()
    finally:
        await db.aclose()


class _ThirdParty(checkpoint.Checkpointer):
    """A backend written before ``aput_records``: it knows aput, aput_writes, aput_batch."""

    def __init__(self) -> None:
        self.batches: list[list[Any]] = []
        self.inner = checkpoint.MemoryCheckpointer()

    async def aput(self, checkpoint: Checkpoint) -> None:
        await self.inner.aput(checkpoint)

    async def aput_writes(
        self, thread_id: str, ns: str, checkpoint_id: str, writes: Sequence[PendingWrite]
    ) -> None:
        await self.inner.aput_writes(thread_id, ns, checkpoint_id, writes)

    async def aput_batch(self, items: Sequence[Checkpoint | checkpoint.WriteBatch]) -> None:
        self.batches.append(list(items))
        await super().aput_batch(items)

    async def aget(self, thread_id: str, ns: str = "", checkpoint_id: str | None = None) -> Any:
        return await self.inner.aget(thread_id, ns, checkpoint_id)

    async def alist(self, thread_id: str, ns: str = "", **kw: Any) -> Any:
        return await self.inner.alist(thread_id, ns, **kw)

    async def adelete_thread(self, thread_id: str) -> None:
        await self.inner.adelete_thread(thread_id)


@pytest.mark.anyio
async def test_the_default_aput_records_goes_through_aput_batch() -> None:
    saver = _ThirdParty()
    first = _record("t1")
    writes = [
        Record(
            thread_id="t1",
            ns="",
            checkpoint_id=first.checkpoint_id,
            value=PendingWrite(task_id=f"x/{i}", node="a", update={"n": i}),
        )
        for i in range(2)
    ]
    await saver.aput_records([first, *writes])
    assert [[type(i).__name__ for i in b] for b in saver.batches] == [["Checkpoint", "WriteBatch"]]
    found = await saver.aget("t1")
    assert found is not None and [w.task_id for w in found.writes] == ["x/0", "x/1"]
