"""Run the tasks of one superstep concurrently, cheaply.

Spawning a task in an anyio task group costs ~17 µs on asyncio and ~23 µs on trio; most
graph nodes that do no I/O finish without ever suspending. So each node coroutine is
started *eagerly* inside a worker task that already exists (the caller's own task for
the first one), each in its own copy of the context. If it completes without suspending,
no task was spawned for it. If it suspends, the worker hands the remaining coroutines to
a freshly spawned worker and keeps driving the suspended one itself until it finishes.

A coroutine therefore never moves between tasks: anyio cancel scopes, trio's task-bound
traps and ``current_task()`` all see one task from its first step to its last.

The first error cancels the siblings still running (and skips those not yet started);
it is returned, not raised, so the caller re-raises the original exception rather than
an ``ExceptionGroup``.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
import threading
import types
from collections.abc import Callable, Coroutine, Generator, Iterator
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread

from headwater import _backends
from headwater._bus import Bus

__all__ = [
    "Carried",
    "abandonable",
    "cancel_pending",
    "carry",
    "in_thread",
    "run_all",
    "run_one",
    "run_one_noting",
]

Factory = Callable[[], Coroutine[Any, Any, Any]]


@types.coroutine
def _drive(
    coro: Coroutine[Any, Any, Any], ctx: contextvars.Context, yielded: Any
) -> Generator[Any, Any, Any]:
    """Continue driving ``coro`` (already started, suspended at ``yielded``) in ``ctx``."""
    while True:
        try:
            sent = yield yielded
        except GeneratorExit:
            # Closed from outside: the node's own handling turns what it raises into a
            # failure of the run, which close() would pass on; closing is what happens.
            with contextlib.suppress(Exception):
                coro.close()
            raise
        except BaseException as exc:
            try:
                yielded = ctx.run(coro.throw, exc)
            except StopIteration as stop:
                return stop.value
        else:
            try:
                yielded = ctx.run(coro.send, sent)
            except StopIteration as stop:
                return stop.value


async def run_one(factory: Factory) -> Any:
    """Run one coroutine to completion in a context of its own (no task spawned)."""
    ctx = contextvars.copy_context()
    coro = ctx.run(factory)
    try:
        yielded = ctx.run(coro.send, None)
    except StopIteration as stop:
        return stop.value
    return await _drive(coro, ctx, yielded)


async def run_one_noting(factory: Factory) -> tuple[Any, bool]:
    """:func:`run_one`, also saying whether the coroutine ever suspended (``False``: it
    ran to completion without giving the event loop a turn, so nothing else ran)."""
    ctx = contextvars.copy_context()
    coro = ctx.run(factory)
    try:
        yielded = ctx.run(coro.send, None)
    except StopIteration as stop:
        return stop.value, False
    return await _drive(coro, ctx, yielded), True


class _Step:
    __slots__ = ("error", "factories", "results", "tg")

    def __init__(self, factories: list[Factory], tg: anyio.abc.TaskGroup) -> None:
        self.factories = factories
        self.results: list[Any] = [None] * len(factories)
        self.error: tuple[int, BaseException] | None = None
        self.tg = tg

    def fail(self, index: int, exc: BaseException) -> None:
        if self.error is None:
            self.error = (index, exc)
            self.tg.cancel_scope.cancel()


async def _worker(step: _Step, queue: Iterator[int]) -> None:
    for index in queue:
        if step.error is not None:
            return
        ctx = contextvars.copy_context()
        try:
            coro = ctx.run(step.factories[index])
            yielded = ctx.run(coro.send, None)
        except StopIteration as stop:
            step.results[index] = stop.value
            continue
        except BaseException as exc:
            _failed(step, index, exc)
            return
        # It suspended: let a new worker take the rest, and see this one through here.
        step.tg.start_soon(_worker, step, queue)
        try:
            step.results[index] = await _drive(coro, ctx, yielded)
        except BaseException as exc:
            _failed(step, index, exc)
        return


def _failed(step: _Step, index: int, exc: BaseException) -> None:
    """Record a coroutine's failure; a real cancellation (or the worker being closed)
    propagates. A ``SystemExit``, ``KeyboardInterrupt`` … is a failure too, returned to
    the caller: raised out of a spawned asyncio task, it would stop the event loop."""
    if isinstance(exc, GeneratorExit) or (
        isinstance(exc, anyio.get_cancelled_exc_class()) and cancel_pending()
    ):
        raise exc
    step.fail(index, exc)


async def run_all(
    factories: list[Factory],
) -> tuple[list[Any], tuple[int, BaseException] | None]:
    """Run coroutines from ``factories`` concurrently.

    Returns ``(results, error)``: results in input order, and ``(index, exception)`` of
    the first failure (after which the others were cancelled) or ``None``.
    """
    async with anyio.create_task_group() as tg:
        step = _Step(factories, tg)
        await _worker(step, iter(range(len(factories))))
    return step.results, step.error


def cancel_pending() -> bool:
    """Whether the current task is being cancelled: an enclosing cancel scope (the run's,
    a timeout's, a task group whose sibling failed, the caller's) was cancelled or is past
    its deadline, or, on asyncio, the task itself was cancelled.

    Called only where a ``BaseException`` is being handled, to tell a real cancellation
    from a ``CancelledError`` that node code raised by itself.
    """
    deadline = anyio.current_effective_deadline()
    if deadline == -math.inf or (deadline != math.inf and deadline <= anyio.current_time()):
        return True
    return _backends.task_cancelling()


class Carried(Exception):
    """A ``BaseException`` that is not an ``Exception``, raised in a worker thread and
    carried back to the event loop as an ``Exception`` (see :func:`carry`)."""

    def __init__(self, exc: BaseException) -> None:
        super().__init__(exc)
        self.exc = exc


def carry(fn: Callable[..., Any], *args: Any) -> Any:
    """Call ``fn`` in a worker thread; a ``SystemExit``, ``GeneratorExit`` … it raises
    comes back as :class:`Carried`.

    The event loop hands a thread's exception to the awaiting coroutine with
    ``coro.throw()``, and ``throw(GeneratorExit())`` through ``await`` closes every
    coroutine on the way instead of raising in them: no ``except`` would ever see it.
    The caller re-raises ``Carried.exc`` with a plain ``raise``, which propagates as usual.
    """
    try:
        return fn(*args)
    except Exception:
        raise
    except BaseException as exc:
        raise Carried(exc) from None


class _Thread:
    """A sync call in a worker thread that a timeout may abandon (see :func:`abandonable`)."""

    __slots__ = ("finished", "ident", "lock", "muted")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ident = 0
        self.finished = False
        self.muted = False

    def run(self, bus: Bus | None, fn: Callable[..., Any], *args: Any) -> Any:
        self.ident = threading.get_ident()
        try:
            return fn(*args)
        finally:
            with self.lock:
                self.finished = True
                if self.muted and bus is not None:  # the pool reuses threads: unmute
                    bus.mute_thread(self.ident, False)

    def abandon(self, bus: Bus | None) -> None:
        if bus is None:
            return
        with self.lock:
            if self.ident and not self.finished:
                self.muted = True
                bus.mute_thread(self.ident, True)


async def abandonable(bus: Bus | None, fn: Callable[..., Any], *args: Any) -> Any:
    """Call sync ``fn`` in a worker thread under a deadline (a run's or a node's timeout).

    A thread cannot be stopped: when the deadline passes, the run stops waiting for it
    at once. The thread runs on until ``fn`` returns; its result is discarded, and the
    events it emits from then on (stream writer, tools, models) are dropped. A node that
    can stop early may poll ``anyio.from_thread.check_cancelled()``.
    """
    thread = _Thread()
    streaming = bus if bus is not None and bus.streaming else None
    if streaming is not None:
        streaming.threads_starting()
    try:
        out = await anyio.to_thread.run_sync(
            functools.partial(thread.run, bus, fn, *args), abandon_on_cancel=True
        )
    except BaseException:
        thread.abandon(bus)
        if streaming is not None:
            streaming.threads_done(raise_errors=False)  # the node's own error is what counts
        raise
    if streaming is not None:
        streaming.threads_done()
    return out


async def in_thread(
    bus: Bus | None, fn: Callable[..., Any], *args: Any, abandon: bool = False
) -> Any:
    """Call sync ``fn`` in a worker thread, from a node (a sync tool): what it raises comes
    back as it was (:func:`carry`); with ``abandon`` (the task has a timeout) its thread
    is abandoned when cancelled (:func:`abandonable`), so a timeout ends the run at once."""
    try:
        if not abandon:
            return await anyio.to_thread.run_sync(carry, fn, *args)
        return await abandonable(bus, carry, fn, *args)
    except Carried as carried:
        raise carried.exc from None
