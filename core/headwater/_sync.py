"""Sync entry points (``invoke``, ``batch``, ``get_state`` …) onto async implementations.

Where the sync call is made decides where the work runs:

* in a worker thread of a run (a sync node): on the run's event loop, so its events reach
  the run's stream live while the node waits;
* in plain sync code with no loop running: in a fresh event loop, in this thread;
* on a thread that is running an event loop *outside* any node — a Jupyter cell,
  ``python -m asyncio``, an ``async def`` test, an async web handler: on a helper thread
  with an event loop of its own (the caller's backend, the caller's context variables),
  as LangGraph's sync API works there. The caller's loop waits meanwhile, as it would for
  any blocking call; interrupting the wait (Ctrl-C) cancels the work;
* on the event loop's thread *inside a running node*: refused, since blocking there would
  stall every other task of the run (``await ...ainvoke()`` instead).
"""

from __future__ import annotations

import contextvars
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import anyio.from_thread
import anyio.lowlevel
import sniffio

from headwater.errors import HeadwaterError

__all__ = ["in_helper_thread", "in_running_node", "on_event_loop", "run_sync", "running_library"]

T = TypeVar("T")


def running_library() -> str | None:
    """The async library whose event loop this thread is running now, or ``None``.

    Code run as a plain callback of an asyncio loop (the ``python -m asyncio`` REPL runs
    each statement so) is outside any task, where sniffio cannot tell: asyncio's own
    record of the running loop can.
    """
    try:
        return sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        pass
    asyncio = sys.modules.get("asyncio")  # not imported: no asyncio loop can be running
    if asyncio is not None and asyncio.events._get_running_loop() is not None:
        return "asyncio"
    return None


def on_event_loop() -> bool:
    """Whether this thread is running an async event loop right now."""
    return running_library() is not None


def in_running_node() -> bool:
    """Whether this code runs inside a node of a running graph (on its event loop)."""
    from headwater.runtime import current_task

    return current_task.get() is not None


def run_sync(fn: Callable[[], Awaitable[T]], *, what: str, instead: str) -> T:
    """Run ``fn()`` to completion from sync code and return its result (see the module
    docstring for where it runs).

    ``what`` names the sync call (``"ChatModel.invoke()"``) and ``instead`` what to do
    inside an async node, for the error raised there.
    """
    started = False

    async def call() -> T:
        nonlocal started
        started = True
        return await fn()

    try:
        return anyio.from_thread.run(call)
    except RuntimeError:
        if started:  # raised by fn itself: never run it a second time
            raise
    if not on_event_loop():
        return anyio.run(call)
    if in_running_node():
        raise HeadwaterError(
            f"{what} was called in a node on the event loop thread, where it would block "
            f"every other task of the run. {instead}"
        )
    return in_helper_thread(call, running_library() or "asyncio")


class _Helper:
    """One call on a helper thread with its own event loop, cancellable from outside."""

    def __init__(self, fn: Callable[[], Awaitable[Any]]) -> None:
        self.fn = fn
        self.outcome: tuple[bool, Any] | None = None
        self.token: anyio.lowlevel.EventLoopToken | None = None
        self.scope: anyio.CancelScope | None = None
        self.cancelled = False
        self.ready = threading.Event()

    async def main(self) -> Any:
        with anyio.CancelScope() as scope:
            self.scope = scope
            self.token = anyio.lowlevel.current_token()
            self.ready.set()
            if self.cancelled:
                scope.cancel()
            return await self.fn()
        raise KeyboardInterrupt  # cancelled: the caller's wait was interrupted

    def cancel(self) -> None:
        self.cancelled = True
        if self.ready.is_set() and self.scope is not None:
            try:
                anyio.from_thread.run_sync(self.scope.cancel, token=self.token)
            except RuntimeError:  # its loop has already finished
                pass


def in_helper_thread(fn: Callable[[], Awaitable[T]], backend: str = "asyncio") -> T:
    """Run ``fn()`` in a new thread on an event loop of ``backend``; wait for its result.

    The thread sees a copy of the caller's context variables. If the wait is interrupted
    (``KeyboardInterrupt``), the work is cancelled before the interruption propagates.
    """
    helper = _Helper(fn)
    context = contextvars.copy_context()
    # The copy says which async library the caller's thread runs; the helper runs its own.
    context.run(sniffio.current_async_library_cvar.set, None)
    done = threading.Event()

    def target() -> None:
        try:
            helper.outcome = (True, context.run(lambda: anyio.run(helper.main, backend=backend)))
        except BaseException as exc:  # handed to the waiting caller
            helper.outcome = (False, exc)
        finally:
            done.set()

    # Waits on an Event, not Thread.join(): a join interrupted by KeyboardInterrupt can
    # leave the thread looking finished while it still runs (CPython before 3.13).
    thread = threading.Thread(target=target, name="headwater-sync", daemon=True)
    try:
        thread.start()
        done.wait()
    except BaseException:  # interrupted while waiting (even while the thread was starting)
        helper.cancel()
        if thread.ident is not None:
            done.wait()
        raise
    assert helper.outcome is not None
    ok, value = helper.outcome
    if ok:
        return value  # type: ignore[no-any-return]
    raise value
