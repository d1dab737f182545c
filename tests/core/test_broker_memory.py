"""The memory: broker passes the public broker conformance suite."""

from __future__ import annotations

from typing import Any

import anyio
import anyio.lowlevel
import pytest

from headwater.broker import (
    Broker,
    BrokerError,
    ExpiredPositionError,
    MemoryBroker,
    broker_from_url,
)
from headwater.testing.conformance import BrokerConformance


class TestMemoryBroker(BrokerConformance):
    async def make_broker(self, retention: int) -> Broker:
        return MemoryBroker(retention=retention)


def test_broker_urls() -> None:
    assert isinstance(broker_from_url("memory:"), MemoryBroker)
    with pytest.raises(BrokerError, match="Did you mean 'memory'"):
        broker_from_url("memroy:")


@pytest.mark.anyio
async def test_one_run_is_bounded_by_bytes_not_only_by_count() -> None:
    broker = MemoryBroker(retention=100_000, max_run_bytes=64 * 1024, max_bytes=2**30)
    run = "big"
    first = await broker.publish(run, "e", "x" * 1000)
    for _ in range(1000):  # ~1 MB of entries, far under the count bound
        await broker.publish(run, "e", "x" * 1000)
    assert broker.total_bytes <= 64 * 1024
    with pytest.raises(ExpiredPositionError):
        await broker.read(run, first, block=0)
    assert len(await broker.read(run, None, block=0)) >= 20  # the newest entries stay


@pytest.mark.anyio
async def test_all_logs_together_are_bounded_and_the_least_recent_go_first() -> None:
    broker = MemoryBroker(max_run_bytes=2**20, max_bytes=200 * 1024)
    for n in range(50):  # 50 finished runs of ~20 KB each: 1 MB
        await broker.publish_many(f"run-{n}", [("token", "y" * 200)] * 100)
    assert broker.total_bytes <= 200 * 1024
    assert await broker.read("run-49", None, block=0)  # the newest run is whole
    with pytest.raises(ExpiredPositionError):  # the oldest was dropped, and readers learn it
        await broker.read("run-0", "5", block=0)


@pytest.mark.anyio
async def test_a_log_is_dropped_ttl_seconds_after_its_last_write() -> None:
    broker = MemoryBroker(ttl=0.1)
    await broker.publish("old", "end", "{}")
    await anyio.sleep(0.3)
    await broker.publish("new", "start", "{}")
    assert await broker.read("old", None, block=0) == []
    assert broker.total_bytes < 1000


@pytest.mark.parametrize(
    "kwargs", [{"retention": 0}, {"max_bytes": -1}, {"max_run_bytes": 1.5}, {"ttl": 0}]
)
def test_bad_bounds_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(BrokerError, match="MemoryBroker"):
        MemoryBroker(**kwargs)


@pytest.mark.anyio
async def test_every_follower_woken_by_a_publish_reads_every_entry() -> None:
    broker = MemoryBroker()
    expected = [f"e{n}" for n in range(60)]

    async def follow(into: list[str]) -> None:
        after = None
        while True:
            entries = await broker.read("run", after, block=5)
            for entry in entries:
                if entry.event == "end":
                    return
                into.append(entry.event)
            if entries:
                after = entries[-1].id

    seen: list[list[str]] = [[] for _ in range(5)]
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for into in seen:
                tg.start_soon(follow, into)
            await anyio.sleep(0.01)  # every follower is waiting
            assert broker.waiting == 5
            for n, event in enumerate(expected):
                if n % 3:
                    await broker.publish("run", event, "{}")
                else:
                    await broker.publish_many("run", [(event, "{}")])
                if n % 2:
                    await anyio.lowlevel.checkpoint()  # some wake between publishes
            await broker.publish("run", "end", "{}")
    assert seen == [expected] * 5
    assert broker.waiting == 0


@pytest.mark.anyio
async def test_a_read_that_times_out_leaves_no_waiter_behind() -> None:
    broker = MemoryBroker()
    for _ in range(3):
        assert await broker.read("quiet", None, block=0.01) == []
    assert broker.waiting == 0
    assert not broker._waiters  # nothing kept per run either
    await broker.publish("quiet", "late", "{}")  # wakes nobody, fails nothing
    assert [e.event for e in await broker.read("quiet", None, block=0.01)] == ["late"]


@pytest.mark.anyio
async def test_a_cancelled_read_leaves_no_waiter_behind() -> None:
    broker = MemoryBroker()
    with anyio.move_on_after(0.05):
        await broker.read("quiet", None, block=10)
    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(lambda: broker.read("quiet", None, block=10))
        await anyio.sleep(0.01)
        assert broker.waiting == 3
        tg.cancel_scope.cancel()
    assert broker.waiting == 0
    assert not broker._waiters
    await broker.publish("quiet", "late", "{}")
    assert [e.event for e in await broker.read("quiet", None, block=1)] == ["late"]


@pytest.mark.anyio
async def test_a_waiting_read_is_woken_when_its_log_is_deleted() -> None:
    broker = MemoryBroker()
    await broker.publish("run", "start", "{}")
    async with anyio.create_task_group() as tg:
        with anyio.fail_after(2):
            tg.start_soon(lambda: broker.read("run", "1", block=10))
            await anyio.sleep(0.01)
            assert broker.waiting == 1
            await broker.delete("run")
    assert broker.waiting == 0
