"""headwater-postgres: checkpoints in PostgreSQL, for many processes and workers.

Registered for the ``postgresql`` and ``postgres`` URL schemes:
``compile(checkpointer="postgresql://user@host:5432/db")``. Connections come from a
``psycopg_pool`` pool; the schema is created and migrated on first use under an advisory
lock, so any number of processes may start at once. psycopg's async driver works only on
asyncio, so queries run on worker threads with the pooled sync driver: the checkpointer
works the same on asyncio and trio.

Example::

    app = graph.compile(checkpointer="postgresql://postgres@127.0.0.1:5432/test")
    app.invoke({"n": 1}, {"configurable": {"thread_id": "t1"}})
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from headwater.hookspecs import hookimpl

if TYPE_CHECKING:
    from headwater.checkpoint import Checkpointer
    from headwater_postgres._store import (
        SCHEMA_VERSION,
        PostgresCheckpointer,
        PostgresRunQueue,
        redact,
    )

__all__ = [
    "SCHEMA_VERSION",
    "PostgresCheckpointer",
    "PostgresRunQueue",
    "headwater_checkpointers",
    "headwater_run_queues",
    "redact",
]

# Every process that uses headwater loads every installed plugin, so loading this one must
# not import psycopg and its pool: the implementation is imported on first use.
_LAZY = {
    name: "headwater_postgres._store"
    for name in ("SCHEMA_VERSION", "PostgresCheckpointer", "PostgresRunQueue", "redact")
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _queue_from_url(url: str) -> PostgresRunQueue:
    from headwater_postgres._store import PostgresRunQueue

    return PostgresRunQueue.from_url(url)


def _checkpointer_from_url(url: str) -> Checkpointer:
    from headwater_postgres._store import PostgresCheckpointer

    return PostgresCheckpointer.from_url(url)


@hookimpl
def headwater_run_queues() -> Mapping[str, Callable[[str], Any]]:
    """``postgresql://…`` and ``postgres://…``.

    Example::

        headwater.queue.queue_from_url("postgresql://postgres@127.0.0.1/test")
    """
    return {"postgresql": _queue_from_url, "postgres": _queue_from_url}


@hookimpl
def headwater_checkpointers() -> Mapping[str, Callable[[str], Checkpointer]]:
    """``postgresql://…`` and ``postgres://…``.

    Example::

        headwater.checkpoint.checkpointer_from_url("postgresql://postgres@127.0.0.1/test")
    """
    return {"postgresql": _checkpointer_from_url, "postgres": _checkpointer_from_url}
