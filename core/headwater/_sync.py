"""Sync entry points (``invoke``, ``batch``) onto async implementations.

From a worker thread of a run (a sync node), the call runs on the run's event loop, so
its events reach the stream live; from plain sync code with no loop, in a fresh one; on
the event loop's own thread it is refused, since blocking there would stall every task.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
import anyio.from_thread
import sniffio

from headwater.errors import HeadwaterError

__all__ = ["on_event_loop", "run_sync"]

T = TypeVar("T")


def on_event_loop() -> bool:
    """Whether this thread is running an async event loop right now."""
    try:
        sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        return False
    return True


def run_sync(fn: Callable[[], Awaitable[T]], *, what: str, instead: str) -> T:
    """Run ``fn()`` to completion from sync code and return its result.

    ``what`` names the sync call (``"ChatModel.invoke()"``) and ``instead`` what to do
    on the event loop thread, for the error raised there.
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
    if on_event_loop():
        raise HeadwaterError(
            f"{what} was called on the event loop thread, where it would block every other "
            f"task. {instead}"
        )
    return anyio.run(call)
