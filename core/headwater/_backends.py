"""The only place in core that names a concrete event loop (asyncio or trio).

Everything else is written against anyio. What is here is what anyio does not offer, or
offers at a cost that shows on a per-token path:

* :func:`spawn_system_task`: a task owned by no task group (a streamed run's producer,
  see :mod:`headwater._stream`).
* one-shot wake-ups (:func:`wakeup`, :func:`wake`, :func:`sleep_on`, :func:`sleep_on_for`):
  on asyncio a bare future of the loop, woken with ``set_result`` and timed out with a
  ``call_later`` handle: no cancel scope, no :class:`anyio.Event` per wait. On any other
  backend an :class:`anyio.Event`, with :func:`anyio.move_on_after` for the timeout.
* :func:`task_cancelling`: whether asyncio itself is cancelling the current task.

Example::

    loop = running_loop()          # asyncio's loop, or None on trio
    ready = wakeup(loop)
    ...                            # elsewhere, on the same loop: wake(ready)
    await sleep_on_for(ready, 5.0)  # woken, or 5 seconds passed
"""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import sniffio

__all__ = [
    "running_loop",
    "sleep_on",
    "sleep_on_for",
    "spawn_system_task",
    "task_cancelling",
    "wake",
    "wakeup",
]

_background: set[Any] = set()  # strong references to spawned asyncio tasks


def running_loop() -> Any:
    """The running asyncio event loop, or ``None`` on any other backend (trio)."""
    if sniffio.current_async_library() != "asyncio":
        return None
    import asyncio

    return asyncio.get_running_loop()


def spawn_system_task(fn: Callable[[], Awaitable[None]]) -> Any:
    """Start ``fn()`` as a task owned by no task group (its caller cancels it through a
    cancel scope of its own); return :func:`running_loop`'s loop."""
    if sniffio.current_async_library() == "trio":
        import trio

        trio.lowlevel.spawn_system_task(fn, context=contextvars.copy_context())
        return None
    import asyncio

    loop = asyncio.get_running_loop()
    task: asyncio.Task[None] = loop.create_task(fn())  # type: ignore[arg-type]
    _background.add(task)
    task.add_done_callback(_background.discard)
    return loop


def wakeup(loop: Any) -> Any:
    """A new one-shot wake-up for a task on ``loop`` (from :func:`running_loop`)."""
    return anyio.Event() if loop is None else loop.create_future()


def wake(handle: Any) -> None:
    """Wake the task sleeping on ``handle`` (harmless if it was woken or gave up)."""
    if isinstance(handle, anyio.Event):
        handle.set()
    elif not handle.done():
        handle.set_result(None)


async def sleep_on(handle: Any) -> None:
    """Sleep until :func:`wake` is called on ``handle``."""
    if isinstance(handle, anyio.Event):
        await handle.wait()
    else:
        await handle


async def sleep_on_for(handle: Any, seconds: float) -> None:
    """Sleep until :func:`wake` is called on ``handle`` or ``seconds`` have passed."""
    if isinstance(handle, anyio.Event):
        with anyio.move_on_after(seconds):
            await handle.wait()
        return
    timer = handle.get_loop().call_later(seconds, _time_out, handle)
    try:
        await handle
    finally:
        timer.cancel()


def _time_out(handle: Any) -> None:
    if not handle.done():
        handle.set_result(None)


def task_cancelling() -> bool:
    """Whether asyncio is cancelling the current task (``Task.cancelling()``); always
    ``False`` on other backends, where only cancel scopes cancel."""
    if sniffio.current_async_library() != "asyncio":
        return False
    import asyncio

    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
