"""Conformance suites that every backend runs — and third-party backends can run too.

Subclass :class:`CheckpointerConformance`, :class:`BrokerConformance` or
:class:`ChatModelConformance` in your test module and provide the backend;
pytest collects every check as its own test, on asyncio and trio (through anyio's pytest
plugin; define an ``anyio_backend`` fixture to choose).

Example::

    from headwater.testing.conformance import CheckpointerConformance

    class TestMyCheckpointer(CheckpointerConformance):
        async def make_checkpointer(self):
            return MyCheckpointer(dsn)

        async def write_raw(self, saver, thread_id, checkpoint_id, data):
            ...  # store `data` as the checkpoint's stored bytes, bypassing serde
"""

from __future__ import annotations

import contextlib
import itertools
import operator
import pickle
from collections.abc import AsyncIterator
from typing import Annotated, Any, TypedDict

import anyio
import attrs
import pytest

from headwater import serde
from headwater._graph import StateGraph
from headwater._types import END, START, Command, Send
from headwater.broker import Broker, BrokerEntry, ExpiredPositionError
from headwater.checkpoint import (
    Checkpoint,
    Checkpointer,
    Interrupt,
    PendingTask,
    PendingWrite,
    Record,
    new_checkpoint_id,
)
from headwater.errors import CheckpointError, InvalidInputError, SerdeError
from headwater.messages import AIMessage, AIMessageChunk, HumanMessage, ToolCall, add_messages
from headwater.models import ChatModel
from headwater.runtime import interrupt, new_id

__all__ = ["BrokerConformance", "ChatModelConformance", "CheckpointerConformance", "Reply"]


def _checkpoint(thread_id: str, step: int = 0, ns: str = "", **values: Any) -> Checkpoint:
    return Checkpoint(
        id=new_checkpoint_id(),
        thread_id=thread_id,
        ns=ns,
        step=step,
        values=values,
        next=(PendingTask(id="t/0", node="a", triggers=("__start__",), path=("pull", "a")),),
        metadata={"source": "loop", "step": step},
        created_at="2026-01-01T00:00:00+00:00",
    )


class _Flow(TypedDict):
    log: Annotated[list[str], operator.add]
    answer: str


class CheckpointerConformance:
    """The checks every :class:`~headwater.checkpoint.Checkpointer` must pass.

    Override :meth:`make_checkpointer` (required) and :meth:`write_raw` (to run the
    fail-closed checks on corrupted rows; they are skipped with a reason otherwise).

    Example::

        class TestMemory(CheckpointerConformance):
            async def make_checkpointer(self):
                return MemoryCheckpointer()
    """

    async def make_checkpointer(self) -> Checkpointer:
        """Return a fresh, empty backend (each test gets its own)."""
        raise NotImplementedError("Override make_checkpointer() to return your backend.")

    async def write_raw(
        self, saver: Checkpointer, thread_id: str, checkpoint_id: str, data: bytes
    ) -> None:
        """Store ``data`` verbatim as checkpoint ``checkpoint_id`` of ``thread_id``."""
        pytest.skip(
            f"{type(self).__name__} does not implement write_raw(); corrupted-row checks skipped"
        )

    @pytest.fixture
    async def saver(self) -> AsyncIterator[Checkpointer]:
        """A fresh backend, closed after the test."""
        made = await self.make_checkpointer()
        try:
            yield made
        finally:
            await made.aclose()

    @pytest.mark.anyio
    async def test_round_trip_of_rich_values(self, saver: Checkpointer) -> None:
        thread = new_id()
        values: dict[str, Any] = {
            "messages": [
                HumanMessage(content="hi", id="1"),
                AIMessage(content="", tool_calls=(ToolCall(name="f", args={"x": [1]}, id="c"),)),
            ],
            "pair": (1, "two"),
            "tags": {"a", "b"},
            "nested": {"k": [None, True, 2.5]},
        }
        cp = _checkpoint(thread, **values)
        await saver.aput(cp)
        found = await saver.aget(thread)
        assert found is not None
        assert found.checkpoint == cp
        assert found.writes == ()

    @pytest.mark.anyio
    async def test_latest_by_id_and_missing(self, saver: Checkpointer) -> None:
        thread = new_id()
        assert await saver.aget(thread) is None
        first, second = _checkpoint(thread, 0, n=1), _checkpoint(thread, 1, n=2)
        await saver.aput(first)
        await saver.aput(second)
        latest = await saver.aget(thread)
        assert latest is not None and latest.checkpoint.id == second.id
        by_id = await saver.aget(thread, "", first.id)
        assert by_id is not None and by_id.checkpoint.values == {"n": 1}
        assert await saver.aget(thread, "", "no-such-checkpoint") is None

    @pytest.mark.anyio
    async def test_list_newest_first_with_limit_and_before(self, saver: Checkpointer) -> None:
        thread = new_id()
        made = [_checkpoint(thread, i, n=i) for i in range(5)]
        for cp in made:
            await saver.aput(cp)
        listed = await saver.alist(thread)
        assert [c.id for c in listed] == [c.id for c in reversed(made)]
        assert [c.id for c in await saver.alist(thread, limit=2)] == [made[4].id, made[3].id]
        before = await saver.alist(thread, before=made[2].id)
        assert [c.id for c in before] == [made[1].id, made[0].id]

    @pytest.mark.anyio
    async def test_pending_writes_last_one_wins_per_task(self, saver: Checkpointer) -> None:
        thread = new_id()
        cp = _checkpoint(thread)
        await saver.aput(cp)
        await saver.aput_writes(
            thread, "", cp.id, [PendingWrite(task_id="t/0", node="a", update={"n": 1})]
        )
        await saver.aput_writes(
            thread,
            "",
            cp.id,
            [
                PendingWrite(task_id="t/1", node="b", goto=(Send("c", {"x": 1}),)),
                PendingWrite(task_id="t/0", node="a", update={"n": 2}),
            ],
        )
        found = await saver.aget(thread)
        assert found is not None
        writes = {w.task_id: w for w in found.writes}
        assert writes["t/0"].update == {"n": 2}
        assert writes["t/1"].goto == (Send("c", {"x": 1}),)
        later = _checkpoint(thread, 1)
        await saver.aput(later)
        latest = await saver.aget(thread)
        assert latest is not None and latest.writes == ()

    @pytest.mark.anyio
    async def test_interrupt_writes_round_trip(self, saver: Checkpointer) -> None:
        thread = new_id()
        cp = _checkpoint(thread)
        await saver.aput(cp)
        write = PendingWrite(
            task_id="t/0",
            node="a",
            interrupt=Interrupt(value={"q": "ok?"}, id="t/0:0", node="a"),
            resume=("yes",),
        )
        await saver.aput_writes(thread, "", cp.id, [write])
        found = await saver.aget(thread)
        assert found is not None and found.writes == (write,)

    @pytest.mark.anyio
    async def test_threads_and_namespaces_are_isolated(self, saver: Checkpointer) -> None:
        a, b = new_id(), new_id()
        await saver.aput(_checkpoint(a, n="a"))
        await saver.aput(_checkpoint(b, n="b"))
        await saver.aput(_checkpoint(a, ns="sub", n="a-sub"))
        got_a, got_b = await saver.aget(a), await saver.aget(b)
        got_sub = await saver.aget(a, "sub")
        assert got_a is not None and got_a.checkpoint.values == {"n": "a"}
        assert got_b is not None and got_b.checkpoint.values == {"n": "b"}
        assert got_sub is not None and got_sub.checkpoint.values == {"n": "a-sub"}
        assert len(await saver.alist(a)) == 1

    @pytest.mark.anyio
    async def test_delete_thread(self, saver: Checkpointer) -> None:
        a, b = new_id(), new_id()
        cp = _checkpoint(a)
        await saver.aput(cp)
        await saver.aput_writes(a, "", cp.id, [PendingWrite(task_id="t/0", node="a")])
        await saver.aput(_checkpoint(b))
        await saver.adelete_thread(a)
        assert await saver.aget(a) is None
        assert await saver.alist(a) == []
        assert await saver.aget(b) is not None

    @pytest.mark.anyio
    async def test_duplicate_checkpoint_id_is_rejected(self, saver: Checkpointer) -> None:
        cp = _checkpoint(new_id())
        await saver.aput(cp)
        with pytest.raises(CheckpointError):
            await saver.aput(cp)

    @pytest.mark.anyio
    async def test_encoded_records_round_trip_in_order(self, saver: Checkpointer) -> None:
        thread = new_id()
        first, second = _checkpoint(thread, 0, n=0), _checkpoint(thread, 1, n=1)
        writes = [
            Record(
                thread_id=thread,
                ns="",
                checkpoint_id=second.id,
                value=PendingWrite(task_id=f"{second.id}/0", node="a", update={"n": n}),
            )
            for n in (2, 3)  # the same task twice: the later one wins
        ]
        await saver.aput_records([Record.of(first), Record.of(second), *writes])
        found = await saver.aget(thread)
        assert found is not None and found.checkpoint == second
        assert [w.update for w in found.writes] == [{"n": 3}]
        assert [c.id for c in await saver.alist(thread)] == [second.id, first.id]

    @pytest.mark.anyio
    async def test_a_duplicate_among_concurrent_saves_fails_only_its_own(
        self, saver: Checkpointer
    ) -> None:
        thread = new_id()
        taken = _checkpoint(thread, 0)
        await saver.aput(taken)
        fresh = [_checkpoint(thread, step, n=step) for step in range(1, 20)]
        failed: list[str] = []

        async def save(checkpoint: Checkpoint) -> None:
            try:
                await saver.aput_records([Record.of(checkpoint)])
            except CheckpointError:
                failed.append(checkpoint.id)

        async with anyio.create_task_group() as tg:
            for i, checkpoint in enumerate(fresh):
                tg.start_soon(save, checkpoint)
                if i == 9:
                    tg.start_soon(save, taken)  # saved before: refused, alone
        assert failed == [taken.id]
        assert {c.id for c in await saver.alist(thread)} == {taken.id} | {c.id for c in fresh}

    @pytest.mark.anyio
    async def test_async_durability_has_written_every_step_when_the_run_returns(
        self, saver: Checkpointer
    ) -> None:
        async def step(state: _Flow) -> dict[str, Any]:
            return {"log": ["x"]}  # never yields: the writer runs only when the run ends

        graph = StateGraph(_Flow)
        names = [f"s{i}" for i in range(40)]
        for name in names:
            graph.add_node(name, step)
        graph.add_edge(START, names[0])
        for a, b in itertools.pairwise(names):
            graph.add_edge(a, b)
        app = graph.compile(checkpointer=saver)
        config = {"configurable": {"thread_id": new_id()}, "durability": "async"}
        final = await app.ainvoke({"log": []}, {**config, "recursion_limit": 50})
        history = await app.aget_state_history(config)
        assert len(history) == 41  # the input and every step, not only the input
        assert history[0].values == final

    @pytest.mark.anyio
    async def test_many_concurrent_threads(self, saver: Checkpointer) -> None:
        threads = [new_id() for _ in range(50)]

        async def one(thread: str) -> None:
            for step in range(3):
                await saver.aput(_checkpoint(thread, step, n=step))

        async with anyio.create_task_group() as tg:
            for thread in threads:
                tg.start_soon(one, thread)
        for thread in threads:
            found = await saver.aget(thread)
            assert found is not None and found.checkpoint.values == {"n": 2}

    @pytest.mark.anyio
    async def test_corrupted_rows_fail_closed(self, saver: Checkpointer) -> None:
        thread = new_id()
        bad = {
            "pickle": pickle.dumps({"values": {}}),
            "unknown type tag": b'{"__type__": "os.system", "command": "echo pwned"}',
            "wrong field type": (
                b'{"headwater": 1, "record": {"__type__": "Checkpoint", "id": 5, "thread_id": "t"}}'
            ),
            "no format version": b'{"__type__": "Checkpoint", "id": "x", "thread_id": "t"}',
            "newer format": b'{"headwater": 999, "record": null}',
        }
        for label, data in bad.items():
            checkpoint_id = new_checkpoint_id()
            await self.write_raw(saver, thread, checkpoint_id, data)
            with pytest.raises(CheckpointError) as caught:
                await saver.aget(thread, "", checkpoint_id)
            message = str(caught.value)
            assert thread in message and checkpoint_id in message, (label, message)
            if label == "newer format":
                assert "format version 999" in message and "upgrade" in message

    @pytest.mark.anyio
    async def test_unserialisable_state_names_the_key_and_writes_nothing(
        self, saver: Checkpointer
    ) -> None:
        async def bad(state: _Flow) -> dict[str, Any]:
            return {"answer": object()}

        graph = StateGraph(_Flow)
        graph.add_node("bad", bad)
        graph.add_edge(START, "bad")
        app = graph.compile(checkpointer=saver)
        config = {"configurable": {"thread_id": new_id()}}
        with pytest.raises(
            SerdeError, match=r"builtins\.object at \$\.record\.(update|values)\.answer"
        ):
            await app.ainvoke({"log": []}, config)
        history = await app.aget_state_history(config)
        assert [h.metadata["source"] for h in history] == ["input"]  # nothing half-written
        found = await saver.aget(config["configurable"]["thread_id"])
        assert found is not None and found.writes == ()

    @pytest.mark.anyio
    async def test_graph_interrupt_and_resume(self, saver: Checkpointer) -> None:
        def ask(state: _Flow) -> dict[str, Any]:
            return {"answer": interrupt("continue?"), "log": ["ask"]}

        async def side(state: _Flow) -> dict[str, Any]:
            return {"log": ["side"]}

        graph = StateGraph(_Flow)
        graph.add_node("ask", ask)
        graph.add_node("side", side)
        graph.add_edge(START, "ask")
        graph.add_edge(START, "side")
        graph.add_edge("ask", END)
        app = graph.compile(checkpointer=saver)
        config = {"configurable": {"thread_id": new_id()}}
        paused = await app.ainvoke({"log": []}, config)
        assert [i.value for i in paused["__interrupt__"]] == ["continue?"]
        final = await app.ainvoke(Command(resume="yes"), config)
        assert final == {"log": ["ask", "side"], "answer": "yes"}
        history = await app.aget_state_history(config)
        assert [h.metadata["source"] for h in history] == ["loop", "input"]

    @pytest.mark.anyio
    async def test_values_nested_too_deep_are_a_serde_error_not_a_recursion_error(
        self, saver: Checkpointer
    ) -> None:
        thread = new_id()
        for depth in (serde.MAX_DEPTH + 1, 2_000, 100_000):
            with pytest.raises(SerdeError, match="nested deeper than"):
                await saver.aput(_checkpoint(thread, deep=_nested(depth)))
        assert await saver.aget(thread) is None  # nothing half-written

        async def deepen(state: _Flow) -> dict[str, Any]:
            return {"answer": _nested(5_000)}

        graph = StateGraph(_Flow)
        graph.add_node("deepen", deepen)
        graph.add_edge(START, "deepen")
        app = graph.compile(checkpointer=saver)
        config = {"configurable": {"thread_id": new_id()}}
        with pytest.raises(SerdeError, match=r"\$\.record\.(update|values)\.answer"):
            await app.ainvoke({"log": []}, config)
        history = await app.aget_state_history(config)
        assert [h.metadata["source"] for h in history] == ["input"]

    @pytest.mark.anyio
    async def test_input_nested_too_deep_is_invalid_input_and_writes_nothing(
        self, saver: Checkpointer
    ) -> None:
        graph = StateGraph(_Flow)
        graph.add_node("a", lambda state: {"log": ["a"]})
        graph.add_edge(START, "a")
        app = graph.compile(checkpointer=saver)
        config = {"configurable": {"thread_id": new_id()}}
        for depth in (2_000, 100_000):
            with pytest.raises(InvalidInputError, match=r"Input of graph .* nested deeper"):
                await app.ainvoke({"log": [], "answer": _nested(depth)}, config)
            with pytest.raises(InvalidInputError, match="must be a mapping"):
                await app.ainvoke(_nested(depth), config)  # not even a mapping
        assert await app.aget_state_history(config) == []
        await app.ainvoke({"log": []}, config)
        with pytest.raises(InvalidInputError, match="update_state"):
            await app.aupdate_state(config, {"answer": _nested(2_000)})

    @pytest.mark.anyio
    async def test_stored_rows_nested_too_deep_fail_closed(self, saver: Checkpointer) -> None:
        thread = new_id()
        for depth in (serde.MAX_DEPTH + 1, 900, 100_000):
            checkpoint_id = new_checkpoint_id()
            inner = b"[" * depth + b"]" * depth
            await self.write_raw(
                saver, thread, checkpoint_id, b'{"headwater": 1, "record": ' + inner + b"}"
            )
            with pytest.raises(CheckpointError) as caught:
                await saver.aget(thread, "", checkpoint_id)
            assert thread in str(caught.value) and "nested deeper" in str(caught.value)

    @pytest.mark.anyio
    async def test_lone_surrogates_in_state_round_trip(self, saver: Checkpointer) -> None:
        thread = new_id()
        odd: dict[str, Any] = {
            "text": "a\ud800b",
            "low": "\udfff",
            "reversed": "\udc00\ud800",
            "key": {"k\ud801": 1},
        }
        cp = _checkpoint(thread, **odd)
        await saver.aput(cp)
        found = await saver.aget(thread)
        assert found is not None and found.checkpoint.values == odd

        async def echo(state: _Flow) -> dict[str, Any]:
            return {"answer": state["answer"] + "\udc80", "log": ["\ud83d"]}

        graph = StateGraph(_Flow)
        graph.add_node("echo", echo)
        graph.add_edge(START, "echo")
        app = graph.compile(checkpointer=saver)
        config = {"configurable": {"thread_id": new_id()}}
        final = await app.ainvoke({"log": [], "answer": "x\udfff"}, config)
        assert final == {"log": ["\ud83d"], "answer": "x\udfff\udc80"}
        assert (await app.aget_state(config)).values == final
        bad = {"configurable": {"thread_id": "t\ud800"}}
        with pytest.raises(InvalidInputError, match=r"thread_id.*lone surrogate"):
            await app.ainvoke({"log": []}, bad)
        with pytest.raises(InvalidInputError, match=r"thread_id.*lone surrogate"):
            await app.aget_state(bad)

    @pytest.mark.anyio
    async def test_resuming_a_thread_whose_next_node_was_removed(self, saver: Checkpointer) -> None:
        def build(*nodes: str) -> Any:
            graph = StateGraph(_Flow)
            previous = START
            for name in nodes:
                graph.add_node(name, lambda state, name=name: {"log": [name]})
                graph.add_edge(previous, name)
                previous = name
            pause = ["review"] if "review" in nodes else []
            return graph.compile(checkpointer=saver, interrupt_before=pause)

        thread = new_id()
        config = {"configurable": {"thread_id": thread}}
        paused = await build("draft", "review").ainvoke({"log": []}, config)
        assert paused["__interrupt__"][0].node == "review"
        redeployed = build("draft", "publish")  # 'review' is gone
        with pytest.raises(CheckpointError) as caught:
            await redeployed.ainvoke(None, config)
        message = str(caught.value)
        assert repr(thread) in message and "'review'" in message and "publish" in message
        # new input still goes on from the thread's state, through the new graph
        final = await redeployed.ainvoke({"log": []}, config)
        assert final["log"] == ["draft", "draft", "publish"]


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


class BrokerConformance:
    """The checks every :class:`~headwater.broker.Broker` must pass.

    Override :meth:`make_broker` to return a fresh backend keeping about ``retention``
    entries per run.

    Example::

        class TestMyBroker(BrokerConformance):
            async def make_broker(self, retention):
                return MyBroker(maxlen=retention)
    """

    async def make_broker(self, retention: int) -> Broker:
        """Return a fresh backend keeping about ``retention`` entries per run."""
        raise NotImplementedError("Override make_broker(retention) to return your backend.")

    @pytest.mark.anyio
    async def test_publish_and_read_in_order(self) -> None:
        broker = await self.make_broker(1000)
        run = new_id()
        ids = [await broker.publish(run, f"e{i}", f'{{"i": {i}}}') for i in range(5)]
        entries = await broker.read(run, None, block=0)
        assert [(e.id, e.event, e.data) for e in entries] == [
            (ids[i], f"e{i}", f'{{"i": {i}}}') for i in range(5)
        ]
        assert all(broker.valid_id(i) for i in ids) and not broker.valid_id("not an id!")
        after = await broker.read(run, ids[2], block=0)
        assert [e.id for e in after] == ids[3:]
        assert await broker.read(run, ids[-1], block=0) == []
        await broker.aclose()

    @pytest.mark.anyio
    async def test_publish_many_appends_in_order_between_single_publishes(self) -> None:
        broker = await self.make_broker(1000)
        run = new_id()
        first = await broker.publish(run, "start", "{}")
        assert await broker.publish_many(run, []) == []
        many = await broker.publish_many(run, [(f"t{i}", f'"{i}"') for i in range(50)])
        last = await broker.publish(run, "end", "{}")
        entries = await broker.read(run, None, block=0)
        assert [e.id for e in entries] == [first, *many, last]
        assert [e.event for e in entries] == ["start", *(f"t{i}" for i in range(50)), "end"]
        assert entries[1].data == '"0"'
        await broker.aclose()

    @pytest.mark.anyio
    async def test_runs_are_isolated_and_deletable(self) -> None:
        broker = await self.make_broker(1000)
        a, b = new_id(), new_id()
        await broker.publish(a, "x", "1")
        await broker.publish(b, "y", "2")
        assert [e.event for e in await broker.read(a, None, block=0)] == ["x"]
        await broker.delete(a)
        assert await broker.read(a, None, block=0) == []
        assert [e.event for e in await broker.read(b, None, block=0)] == ["y"]
        await broker.aclose()

    @pytest.mark.anyio
    async def test_blocking_read_wakes_on_publish(self) -> None:
        broker = await self.make_broker(1000)
        run = new_id()
        first = await broker.publish(run, "start", "{}")
        got: list[Any] = []

        async def reader() -> None:
            got.extend(await broker.read(run, first, block=5))

        async with anyio.create_task_group() as tg:
            tg.start_soon(reader)
            await anyio.sleep(0.05)
            await broker.publish(run, "later", "{}")
        assert [e.event for e in got] == ["later"]
        assert await broker.read(run, first, block=0.01) != []
        assert await broker.read(new_id(), None, block=0.01) == []
        await broker.aclose()

    @pytest.mark.anyio
    async def test_expired_position_is_reported(self) -> None:
        broker = await self.make_broker(3)
        run = new_id()
        ids = [await broker.publish(run, "e", str(i)) for i in range(400)]
        with pytest.raises(ExpiredPositionError, match="restart from the thread's state"):
            await broker.read(run, ids[0], block=0)
        recent = await broker.read(run, ids[-3], block=0)
        assert [e.data for e in recent] == ["398", "399"]
        await broker.aclose()

    @pytest.mark.anyio
    async def test_the_start_of_an_untrimmed_log_is_not_expired(self) -> None:
        broker = await self.make_broker(1000)
        run = new_id()
        ids = [await broker.publish(run, "e", str(i)) for i in range(3)]
        zero = "0-0" if broker.valid_id("0-0") else "0"
        assert [e.id for e in await broker.read(run, zero, block=0)] == ids
        await broker.aclose()

    @pytest.mark.anyio
    async def test_last_is_the_newest_entry(self) -> None:
        broker = await self.make_broker(1000)
        run = new_id()
        assert await broker.last(run) is None
        await broker.publish(run, "start", "{}")
        last = await broker.publish(run, "end", '{"ok": true}')
        assert await broker.last(run) == BrokerEntry(last, "end", '{"ok": true}')
        await broker.aclose()

    @pytest.mark.anyio
    async def test_odd_ids_are_not_valid(self) -> None:
        broker = await self.make_broker(1000)
        for odd in ("", "abc", "-1", "1.5", " 1", "1\n", "\u0661", "9" * 40, "1-2-3", "\ud800"):
            assert not broker.valid_id(odd), odd
        await broker.aclose()

    @pytest.mark.anyio
    async def test_records_replace_and_expire(self) -> None:
        broker = await self.make_broker(1000)
        key = f"conformance:{new_id()}"
        assert await broker.get_record(key) is None
        await broker.put_record(key, {"a": "1", "b": "2"}, ttl=60)
        await broker.put_record(key, {"a": "3"}, ttl=60)
        assert await broker.get_record(key) == {"a": "3"}
        await broker.put_record(key, {"a": "4"}, ttl=0.05)
        await anyio.sleep(0.2)
        assert await broker.get_record(key) is None
        await broker.aclose()

    @pytest.mark.anyio
    async def test_a_claim_has_one_holder_until_released_or_expired(self) -> None:
        broker = await self.make_broker(1000)
        key = f"conformance:{new_id()}"
        assert await broker.claim(key, "run-1", ttl=60) is None
        assert await broker.claim(key, "run-1", ttl=60) is None  # renewed by its holder
        assert await broker.claim(key, "run-2", ttl=60) == "run-1"
        await broker.release(key, "run-2")  # not the holder: no effect
        assert await broker.claim(key, "run-2", ttl=60) == "run-1"
        await broker.release(key, "run-1")
        assert await broker.claim(key, "run-2", ttl=0.05) is None
        await anyio.sleep(0.2)
        assert await broker.claim(key, "run-3", ttl=60) is None  # the lease ran out
        await broker.release(key, "run-3")
        await broker.aclose()

    @pytest.mark.anyio
    async def test_many_readers_see_the_same_log(self) -> None:
        broker = await self.make_broker(1000)
        run = new_id()
        for i in range(20):
            await broker.publish(run, "e", str(i))
        seen: list[list[str]] = []

        async def reader() -> None:
            seen.append([e.data for e in await broker.read(run, None, block=0)])

        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(reader)
        assert seen == [[str(i) for i in range(20)]] * 10
        await broker.aclose()


# -- chat models ----------------------------------------------------------------------------


@attrs.frozen
class Reply:
    """One scripted answer of a chat model under :class:`ChatModelConformance`.

    ``tokens`` stream as text, in that chunking; ``tool_calls`` are ``(id, name,
    arguments JSON text)`` (the text may be malformed on purpose); with ``cut_after``
    the stream breaks after that many tokens (a connection cut, a provider error event).

    Example::

        Reply(tokens=("Rivers", " run"))
        Reply(tool_calls=(("call_1", "add", '{"a": 1, "b": 2}'),))
    """

    tokens: tuple[str, ...] = ()
    tool_calls: tuple[tuple[str, str, str], ...] = ()
    cut_after: int | None = None


class _Chat(TypedDict):
    messages: Annotated[list[Any], add_messages]


class ChatModelConformance:
    """The behaviour every chat-model adapter must have, as a pytest suite to subclass.

    Implement :meth:`make_model`: a model of your adapter that answers its next calls
    with ``replies``, in order (for an HTTP provider: script a local server speaking the
    provider's wire format, and point the model at it). The suite checks live token
    streaming into ``astream_events`` and ``messages`` from async and sync nodes, that
    the chunks add up to the response, tool calls (well-formed and malformed), a stream
    cut mid-way, and a caller that stops reading early.

    Example::

        class TestMyModel(ChatModelConformance):
            def make_model(self, replies):
                server.script = [to_wire(r) for r in replies]
                return MyChatModel(model="m", base_url=server.url)
    """

    def make_model(self, replies: list[Reply]) -> ChatModel:
        """Return a model that answers its next calls with ``replies``, in order."""
        raise NotImplementedError("Override make_model(replies) to return your adapter.")

    def _graph(self, model: ChatModel, *, sync: bool) -> Any:
        def sync_node(state: _Chat) -> dict[str, Any]:
            return {"messages": [model.invoke(state["messages"])]}

        async def async_node(state: _Chat) -> dict[str, Any]:
            return {"messages": [await model.ainvoke(state["messages"])]}

        graph = StateGraph(_Chat)
        graph.add_node("talk", sync_node if sync else async_node, tags=["llm"])
        graph.add_edge(START, "talk")
        graph.add_edge("talk", END)
        return graph.compile()

    @pytest.mark.anyio
    @pytest.mark.parametrize("sync", [False, True], ids=["async_node", "sync_node"])
    async def test_tokens_stream_as_events_in_order_and_add_up_to_the_response(
        self, sync: bool
    ) -> None:
        tokens = ("Rivers", " run", " to", " the", " sea.")
        model = self.make_model([Reply(tokens=tokens)])
        events = [
            e async for e in self._graph(model, sync=sync).astream_events({"messages": ["go"]})
        ]
        streams = [e for e in events if e["event"] == "on_chat_model_stream"]
        assert [c for e in streams if (c := e["data"]["chunk"].text)] == list(tokens)
        assert {e["name"] for e in streams} == {"talk"}  # unnamed models take the node's name
        (start,) = [e for e in events if e["event"] == "on_chat_model_start"]
        assert start["metadata"]["ls_provider"] == model.provider
        assert start["metadata"]["ls_model_name"] == model.model
        assert "llm" in start["tags"]
        (end,) = [e for e in events if e["event"] == "on_chat_model_end"]
        total = AIMessageChunk.merge(e["data"]["chunk"] for e in streams).to_message()
        assert end["data"]["output"].text == total.text == "".join(tokens)
        assert events[-1]["data"]["output"]["messages"][-1].text == "".join(tokens)

    @pytest.mark.anyio
    async def test_messages_mode_yields_each_token_once(self) -> None:
        tokens = ("One", " two", " three")
        app = self._graph(self.make_model([Reply(tokens=tokens)]), sync=False)
        got = [
            chunk.text
            async for chunk, metadata in app.astream({"messages": ["go"]}, stream_mode="messages")
            if chunk.text and metadata["node"] == "talk"
        ]
        assert got == list(tokens)

    @pytest.mark.anyio
    async def test_tool_calls_are_parsed_into_the_response(self) -> None:
        calls = (("call_1", "add", '{"a": 1, "b": 2}'), ("call_2", "add", '{"a": 3, "b": 4}'))
        reply = await self.make_model([Reply(tool_calls=calls)]).ainvoke("add these")
        assert [(c.id, c.name, dict(c.args)) for c in reply.tool_calls] == [
            ("call_1", "add", {"a": 1, "b": 2}),
            ("call_2", "add", {"a": 3, "b": 4}),
        ]
        assert reply.invalid_tool_calls == ()

    @pytest.mark.anyio
    async def test_malformed_tool_arguments_become_invalid_tool_calls(self) -> None:
        calls = (("call_1", "add", '{"a": 1,'),)
        reply = await self.make_model([Reply(tool_calls=calls)]).ainvoke("add")
        assert reply.tool_calls == ()
        (bad,) = reply.invalid_tool_calls
        assert (bad.id, bad.name, bad.args) == ("call_1", "add", '{"a": 1,')
        assert "not valid JSON" in bad.error

    @pytest.mark.anyio
    async def test_a_stream_cut_mid_way_fails_after_the_tokens_before_it(self) -> None:
        tokens = ("Rivers", " run", " far")
        model = self.make_model([Reply(tokens=tokens, cut_after=2)])
        events: list[dict[str, Any]] = []
        with pytest.raises(Exception):  # noqa: B017 - adapters raise their own error types
            async for event in self._graph(model, sync=False).astream_events({"messages": []}):
                events.append(event)
        streamed = [e["data"]["chunk"].text for e in events if e["event"] == "on_chat_model_stream"]
        assert [t for t in streamed if t] == list(tokens[:2])
        kinds = [e["event"] for e in events]
        assert "on_chat_model_error" in kinds and "on_chat_model_end" not in kinds

    @pytest.mark.anyio
    async def test_a_caller_that_stops_reading_ends_the_call(self) -> None:
        model = self.make_model([Reply(tokens=("a", " b", " c", " d"))])
        with anyio.fail_after(10):  # the adapter must close its stream, not hang
            async with contextlib.aclosing(model.astream("go")) as stream:
                async for chunk in stream:
                    if chunk.text:
                        break
