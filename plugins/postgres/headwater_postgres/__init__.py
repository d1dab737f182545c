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

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import anyio.to_thread
import psycopg
import psycopg_pool

from headwater.checkpoint import (
    Checkpoint,
    Checkpointer,
    CheckpointTuple,
    PendingWrite,
    decode_record,
    encode_record,
)
from headwater.errors import CheckpointError
from headwater.hookspecs import hookimpl

__all__ = ["SCHEMA_VERSION", "PostgresCheckpointer", "headwater_checkpointers", "redact"]

SCHEMA_VERSION = 1
"""The table layout this version writes; older databases are migrated on first use."""

_LOCK_KEY = 0x68656164  # advisory lock id for migrations ("head")

_MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """CREATE TABLE headwater_checkpoints (
            thread_id TEXT NOT NULL,
            ns TEXT NOT NULL,
            id TEXT NOT NULL,
            data BYTEA NOT NULL,
            PRIMARY KEY (thread_id, ns, id)
        )""",
        """CREATE TABLE headwater_writes (
            thread_id TEXT NOT NULL,
            ns TEXT NOT NULL,
            checkpoint_id TEXT NOT NULL,
            task_id TEXT NOT NULL,
            data BYTEA NOT NULL,
            PRIMARY KEY (thread_id, ns, checkpoint_id, task_id)
        )""",
    ),
}

T = TypeVar("T")


def redact(url: str) -> str:
    """The URL with its password replaced by ``***`` (for error messages).

    Example::

        redact("postgresql://me:secret@db/app")  # "postgresql://me:***@db/app"
    """
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


class PostgresCheckpointer(Checkpointer):
    """A :class:`~headwater.checkpoint.Checkpointer` on PostgreSQL.

    ``url`` is a libpq URL; ``min_size``/``max_size`` size the pool; ``connect_timeout``
    bounds how long the first connection may take (an unreachable server is a clear
    :class:`~headwater.errors.CheckpointError`, not a hang).

    Example::

        saver = PostgresCheckpointer("postgresql://postgres@127.0.0.1:5432/test", max_size=8)
    """

    def __init__(
        self, url: str, *, min_size: int = 1, max_size: int = 10, connect_timeout: float = 10.0
    ) -> None:
        self.url = url
        self._pool = psycopg_pool.ConnectionPool(
            url,
            min_size=min_size,
            max_size=max_size,
            open=False,
            kwargs={"autocommit": True, "connect_timeout": max(1, int(connect_timeout))},
        )
        try:
            self._pool.open(wait=True, timeout=connect_timeout)
        except psycopg_pool.PoolTimeout as exc:
            self._pool.close()
            raise CheckpointError(
                f"Cannot connect to PostgreSQL at {redact(url)} within {connect_timeout:g} s. "
                "Check that the server is running and that the URL's host, port, database and "
                "user are right."
            ) from exc
        self._migrate()

    @classmethod
    def from_url(cls, url: str) -> PostgresCheckpointer:
        """Factory for ``postgresql://`` URLs (the ``headwater_checkpointers`` hook)."""
        return cls(url)

    def _migrate(self) -> None:
        with self._pool.connection() as db, db.transaction():
            db.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
            db.execute("CREATE TABLE IF NOT EXISTS headwater_schema (version INTEGER NOT NULL)")
            row = db.execute("SELECT MAX(version) FROM headwater_schema").fetchone()
            current = (row[0] if row else None) or 0
            if current > SCHEMA_VERSION:
                raise CheckpointError(
                    f"PostgreSQL database at {redact(self.url)} has headwater schema version "
                    f"{current}, newer than this headwater-postgres ({SCHEMA_VERSION}); upgrade "
                    "headwater-postgres on this worker."
                )
            for version in range(current + 1, SCHEMA_VERSION + 1):
                for statement in _MIGRATIONS[version]:
                    db.execute(statement)
                db.execute("INSERT INTO headwater_schema (version) VALUES (%s)", (version,))

    async def _run(self, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        def pooled() -> T:
            try:
                with self._pool.connection() as db:
                    return fn(db)
            except psycopg.Error as exc:
                raise CheckpointError(
                    f"PostgreSQL error at {redact(self.url)}: {type(exc).__name__}: {exc}".strip()
                ) from exc
            except psycopg_pool.PoolTimeout as exc:
                raise CheckpointError(
                    f"No PostgreSQL connection available at {redact(self.url)}: {exc}."
                ) from exc

        return await anyio.to_thread.run_sync(pooled)

    async def aput(self, checkpoint: Checkpoint) -> None:
        """Save a checkpoint (a duplicate id is a CheckpointError)."""
        data = encode_record(checkpoint)

        def put(db: psycopg.Connection[Any]) -> int:
            cursor = db.execute(
                "INSERT INTO headwater_checkpoints (thread_id, ns, id, data) "
                "VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
                (checkpoint.thread_id, checkpoint.ns, checkpoint.id, data),
            )
            return cursor.rowcount

        if await self._run(put) != 1:
            raise CheckpointError(
                f"Checkpoint {checkpoint.id!r} of thread {checkpoint.thread_id!r} already exists."
            )

    async def aput_writes(
        self, thread_id: str, ns: str, checkpoint_id: str, writes: Sequence[PendingWrite]
    ) -> None:
        """Save pending writes (a task's later write replaces its earlier one)."""
        rows = [(thread_id, ns, checkpoint_id, w.task_id, encode_record(w)) for w in writes]

        def put(db: psycopg.Connection[Any]) -> None:
            with db.transaction(), db.cursor() as cursor:
                cursor.executemany(
                    "INSERT INTO headwater_writes (thread_id, ns, checkpoint_id, task_id, data) "
                    "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (thread_id, ns, checkpoint_id, "
                    "task_id) DO UPDATE SET data = EXCLUDED.data",
                    rows,
                )

        await self._run(put)

    async def aget(
        self, thread_id: str, ns: str = "", checkpoint_id: str | None = None
    ) -> CheckpointTuple | None:
        """The latest (or given) checkpoint with its pending writes."""

        def get(db: psycopg.Connection[Any]) -> tuple[str, bytes, list[bytes]] | None:
            if checkpoint_id is None:
                row = db.execute(
                    "SELECT id, data FROM headwater_checkpoints WHERE thread_id = %s AND ns = %s "
                    "ORDER BY id DESC LIMIT 1",
                    (thread_id, ns),
                ).fetchone()
            else:
                row = db.execute(
                    "SELECT id, data FROM headwater_checkpoints "
                    "WHERE thread_id = %s AND ns = %s AND id = %s",
                    (thread_id, ns, checkpoint_id),
                ).fetchone()
            if row is None:
                return None
            writes = db.execute(
                "SELECT data FROM headwater_writes WHERE thread_id = %s AND ns = %s "
                "AND checkpoint_id = %s ORDER BY task_id",
                (thread_id, ns, row[0]),
            ).fetchall()
            return row[0], bytes(row[1]), [bytes(w[0]) for w in writes]

        found = await self._run(get)
        if found is None:
            return None
        found_id, data, writes = found
        checkpoint = decode_record(data, thread_id, found_id, Checkpoint)
        return CheckpointTuple(
            checkpoint,
            tuple(decode_record(w, thread_id, found_id, PendingWrite) for w in writes),
        )

    async def alist(
        self, thread_id: str, ns: str = "", *, limit: int | None = None, before: str | None = None
    ) -> list[Checkpoint]:
        """Checkpoints newest first."""

        def get(db: psycopg.Connection[Any]) -> list[tuple[str, bytes]]:
            sql = "SELECT id, data FROM headwater_checkpoints WHERE thread_id = %s AND ns = %s"
            args: list[Any] = [thread_id, ns]
            if before is not None:
                sql += " AND id < %s"
                args.append(before)
            sql += " ORDER BY id DESC"
            if limit is not None:
                sql += " LIMIT %s"
                args.append(limit)
            return [(r[0], bytes(r[1])) for r in db.execute(sql, args).fetchall()]

        rows = await self._run(get)
        return [decode_record(data, thread_id, cid, Checkpoint) for cid, data in rows]

    async def adelete_thread(self, thread_id: str) -> None:
        """Delete a thread's checkpoints and writes."""

        def delete(db: psycopg.Connection[Any]) -> None:
            with db.transaction():
                db.execute("DELETE FROM headwater_checkpoints WHERE thread_id = %s", (thread_id,))
                db.execute("DELETE FROM headwater_writes WHERE thread_id = %s", (thread_id,))

        await self._run(delete)

    async def aclose(self) -> None:
        """Close the pool."""
        await anyio.to_thread.run_sync(self._pool.close)


@hookimpl
def headwater_checkpointers() -> Mapping[str, Callable[[str], Checkpointer]]:
    """``postgresql://…`` and ``postgres://…``.

    Example::

        headwater.checkpoint.checkpointer_from_url("postgresql://postgres@127.0.0.1/test")
    """
    return {"postgresql": PostgresCheckpointer.from_url, "postgres": PostgresCheckpointer.from_url}
