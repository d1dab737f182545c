"""headwater-sqlite: checkpoints in SQLite — a file (WAL mode) or ``:memory:``.

Registered for the ``sqlite`` URL scheme: ``compile(checkpointer="sqlite:///app.db")``
(a relative path), ``sqlite:////var/lib/app.db`` (absolute) or ``sqlite:///:memory:``.
Queries run on worker threads, one connection per checkpointer behind a lock; several
processes may share a file (SQLite's own locking, with a busy timeout). Each write is
its own committed transaction, so a process killed mid-run loses nothing it had saved.

Example::

    app = graph.compile(checkpointer="sqlite:///checkpoints.db")
    app.invoke({"n": 1}, {"configurable": {"thread_id": "t1"}})
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import anyio.to_thread

from headwater.checkpoint import (
    Checkpoint,
    Checkpointer,
    CheckpointTuple,
    PendingWrite,
    WriteBatch,
    decode_record,
    encode_record,
)
from headwater.errors import CheckpointError
from headwater.hookspecs import hookimpl

__all__ = ["SCHEMA_VERSION", "SqliteCheckpointer", "headwater_checkpointers"]

SCHEMA_VERSION = 1
"""The table layout this version writes; older files are migrated on open."""

_MIGRATIONS: dict[int, str] = {
    1: """
        CREATE TABLE checkpoints (
            thread_id TEXT NOT NULL,
            ns TEXT NOT NULL,
            id TEXT NOT NULL,
            data BLOB NOT NULL,
            PRIMARY KEY (thread_id, ns, id)
        );
        CREATE TABLE writes (
            thread_id TEXT NOT NULL,
            ns TEXT NOT NULL,
            checkpoint_id TEXT NOT NULL,
            task_id TEXT NOT NULL,
            data BLOB NOT NULL,
            PRIMARY KEY (thread_id, ns, checkpoint_id, task_id)
        );
    """,
}

T = TypeVar("T")


class SqliteCheckpointer(Checkpointer):
    """A :class:`~headwater.checkpoint.Checkpointer` on one SQLite database.

    ``path`` is a file path or ``":memory:"``; ``busy_timeout`` (seconds) is how long a
    write waits for another process holding the file.

    Example::

        saver = SqliteCheckpointer("app.db")
        app = graph.compile(checkpointer=saver)
    """

    def __init__(self, path: str | Path, *, busy_timeout: float = 30.0) -> None:
        self.path = str(path)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(
                self.path, timeout=busy_timeout, check_same_thread=False, isolation_level=None
            )
        except sqlite3.Error as exc:
            raise CheckpointError(f"Cannot open SQLite database {self.path!r}: {exc}.") from exc
        with self._lock:
            if self.path != ":memory:":
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
            self._migrate()

    @classmethod
    def from_url(cls, url: str) -> SqliteCheckpointer:
        """``sqlite:///relative.db``, ``sqlite:////absolute.db`` or ``sqlite:///:memory:``.

        Example::

            SqliteCheckpointer.from_url("sqlite:///:memory:")
        """
        parts = urlsplit(url)
        path = unquote(parts.path)
        if parts.netloc or not path.startswith("/") or path == "/":
            raise CheckpointError(
                f"SQLite URL {url!r} is not of the form sqlite:///relative/path.db, "
                "sqlite:////absolute/path.db or sqlite:///:memory:."
            )
        return cls(path[1:])

    def _migrate(self) -> None:
        db = self._db
        db.execute("CREATE TABLE IF NOT EXISTS headwater_schema (version INTEGER NOT NULL)")
        row = db.execute("SELECT MAX(version) FROM headwater_schema").fetchone()
        current = row[0] or 0
        if current > SCHEMA_VERSION:
            raise CheckpointError(
                f"SQLite database {self.path!r} has schema version {current}, newer than this "
                f"headwater-sqlite ({SCHEMA_VERSION}); upgrade headwater-sqlite."
            )
        for version in range(current + 1, SCHEMA_VERSION + 1):
            db.execute("BEGIN IMMEDIATE")
            try:
                again = db.execute("SELECT MAX(version) FROM headwater_schema").fetchone()[0] or 0
                if again < version:  # another process may have migrated meanwhile
                    for statement in _MIGRATIONS[version].split(";"):
                        if statement.strip():
                            db.execute(statement)
                    db.execute("INSERT INTO headwater_schema (version) VALUES (?)", (version,))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def locked() -> T:
            with self._lock:
                try:
                    return fn(self._db)
                except sqlite3.Error as exc:
                    raise CheckpointError(f"SQLite error on {self.path!r}: {exc}.") from exc

        return await anyio.to_thread.run_sync(locked)

    async def aput(self, checkpoint: Checkpoint) -> None:
        """Save a checkpoint (a duplicate id is a CheckpointError)."""
        data = encode_record(checkpoint)

        def put(db: sqlite3.Connection) -> None:
            try:
                db.execute(
                    "INSERT INTO checkpoints (thread_id, ns, id, data) VALUES (?, ?, ?, ?)",
                    (checkpoint.thread_id, checkpoint.ns, checkpoint.id, data),
                )
            except sqlite3.IntegrityError:
                raise CheckpointError(
                    f"Checkpoint {checkpoint.id!r} of thread {checkpoint.thread_id!r} "
                    "already exists."
                ) from None

        await self._run(put)

    async def aput_writes(
        self, thread_id: str, ns: str, checkpoint_id: str, writes: Sequence[PendingWrite]
    ) -> None:
        """Save pending writes (a task's later write replaces its earlier one)."""
        rows = [(thread_id, ns, checkpoint_id, w.task_id, encode_record(w)) for w in writes]

        def put(db: sqlite3.Connection) -> None:
            db.execute("BEGIN")
            try:
                db.executemany(
                    "INSERT OR REPLACE INTO writes (thread_id, ns, checkpoint_id, task_id, data) "
                    "VALUES (?, ?, ?, ?, ?)",
                    rows,
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

        await self._run(put)

    async def aput_batch(self, items: Sequence[Checkpoint | WriteBatch]) -> None:
        """Save checkpoints and write batches in order, in one transaction."""
        rows: list[tuple[str, tuple[Any, ...]]] = []
        for item in items:
            if isinstance(item, Checkpoint):
                rows.append(
                    (
                        "INSERT INTO checkpoints (thread_id, ns, id, data) VALUES (?, ?, ?, ?)",
                        (item.thread_id, item.ns, item.id, encode_record(item)),
                    )
                )
            else:
                rows.extend(
                    (
                        "INSERT OR REPLACE INTO writes (thread_id, ns, checkpoint_id, task_id, "
                        "data) VALUES (?, ?, ?, ?, ?)",
                        (item.thread_id, item.ns, item.checkpoint_id, w.task_id, encode_record(w)),
                    )
                    for w in item.writes
                )

        def put(db: sqlite3.Connection) -> None:
            db.execute("BEGIN")
            try:
                for sql, args in rows:
                    db.execute(sql, args)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

        await self._run(put)

    async def aget(
        self, thread_id: str, ns: str = "", checkpoint_id: str | None = None
    ) -> CheckpointTuple | None:
        """The latest (or given) checkpoint with its pending writes."""

        def get(db: sqlite3.Connection) -> tuple[str, bytes, list[bytes]] | None:
            if checkpoint_id is None:
                row = db.execute(
                    "SELECT id, data FROM checkpoints WHERE thread_id = ? AND ns = ? "
                    "ORDER BY id DESC LIMIT 1",
                    (thread_id, ns),
                ).fetchone()
            else:
                row = db.execute(
                    "SELECT id, data FROM checkpoints WHERE thread_id = ? AND ns = ? AND id = ?",
                    (thread_id, ns, checkpoint_id),
                ).fetchone()
            if row is None:
                return None
            writes = db.execute(
                "SELECT data FROM writes WHERE thread_id = ? AND ns = ? AND checkpoint_id = ? "
                "ORDER BY task_id",
                (thread_id, ns, row[0]),
            ).fetchall()
            return row[0], row[1], [w[0] for w in writes]

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

        def get(db: sqlite3.Connection) -> list[tuple[str, bytes]]:
            sql = "SELECT id, data FROM checkpoints WHERE thread_id = ? AND ns = ?"
            args: list[Any] = [thread_id, ns]
            if before is not None:
                sql += " AND id < ?"
                args.append(before)
            sql += " ORDER BY id DESC"
            if limit is not None:
                sql += " LIMIT ?"
                args.append(limit)
            return db.execute(sql, args).fetchall()

        rows = await self._run(get)
        return [decode_record(data, thread_id, cid, Checkpoint) for cid, data in rows]

    async def adelete_thread(self, thread_id: str) -> None:
        """Delete a thread's checkpoints and writes."""

        def delete(db: sqlite3.Connection) -> None:
            db.execute("BEGIN")
            try:
                db.execute("DELETE FROM checkpoints WHERE thread_id = ?", (thread_id,))
                db.execute("DELETE FROM writes WHERE thread_id = ?", (thread_id,))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

        await self._run(delete)

    async def aclose(self) -> None:
        """Close the connection."""
        await self._run(lambda db: db.close())


@hookimpl
def headwater_checkpointers() -> Mapping[str, Callable[[str], Checkpointer]]:
    """``sqlite:///path.db`` and ``sqlite:///:memory:``.

    Example::

        headwater.checkpoint.checkpointer_from_url("sqlite:///:memory:")
    """
    return {"sqlite": SqliteCheckpointer.from_url}
