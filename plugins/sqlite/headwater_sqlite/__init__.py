"""headwater-sqlite: checkpoints in SQLite — a file (WAL mode) or ``:memory:``.

Registered for the ``sqlite`` URL scheme: ``compile(checkpointer="sqlite:///app.db")``
(a relative path), ``sqlite:////var/lib/app.db`` (absolute) or ``sqlite:///:memory:``;
``?synchronous=full`` makes every commit survive a power loss too (see
``docs/checkpointers.md``). Queries run on one long-lived thread per checkpointer, with
one connection; writes that queue up meanwhile are committed together. Several
processes may share a file (SQLite's own locking, with a busy timeout). A write is
committed before the run goes on, so a process killed mid-run loses nothing it had saved.

Example::

    app = graph.compile(checkpointer="sqlite:///checkpoints.db")
    app.invoke({"n": 1}, {"configurable": {"thread_id": "t1"}})
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

from headwater.checkpoint import (
    Checkpoint,
    Checkpointer,
    CheckpointTuple,
    DatabaseThread,
    PendingWrite,
    Record,
    WriteBatch,
    decode_record,
    records_of,
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


_SYNCHRONOUS = ("normal", "full")
_HERE_BYTES = 64 * 1024
"""Records up to this size may be committed on the event loop (see ``_commit_here``)."""
_WAL_CHECKPOINT_PAGES = 1000
"""About how many pages those commits add to the WAL before the thread checkpoints it
(SQLite's own ``wal_autocheckpoint`` default; a commit adds a few pages)."""
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6

_PUT_CHECKPOINT = "INSERT INTO checkpoints (thread_id, ns, id, data) VALUES (?, ?, ?, ?)"
_PUT_WRITE = (
    "INSERT OR REPLACE INTO writes (thread_id, ns, checkpoint_id, task_id, data) "
    "VALUES (?, ?, ?, ?, ?)"
)


class SqliteCheckpointer(Checkpointer):
    """A :class:`~headwater.checkpoint.Checkpointer` on one SQLite database.

    ``path`` is a file path or ``":memory:"``; ``busy_timeout`` (seconds) is how long a
    write waits for another process holding the file; ``synchronous`` is ``"normal"``
    (commits survive the process being killed; a power loss may undo the last ones) or
    ``"full"`` (every commit is flushed to the disk before the run goes on: it survives a
    power loss too, at the cost of one flush per checkpoint).

    Example::

        saver = SqliteCheckpointer("app.db")
        strict = SqliteCheckpointer("app.db", synchronous="full")
        app = graph.compile(checkpointer=saver)
    """

    def __init__(
        self, path: str | Path, *, busy_timeout: float = 30.0, synchronous: str = "normal"
    ) -> None:
        self.path = str(path)
        if synchronous not in _SYNCHRONOUS:
            raise CheckpointError(
                f"SQLite synchronous={synchronous!r} is not one of {', '.join(_SYNCHRONOUS)}: "
                "'normal' survives a process crash, 'full' a power loss too."
            )
        self.synchronous = synchronous
        try:
            self._db = sqlite3.connect(
                self.path, timeout=busy_timeout, check_same_thread=False, isolation_level=None
            )
        except sqlite3.Error as exc:
            raise CheckpointError(f"Cannot open SQLite database {self.path!r}: {exc}.") from exc
        if self.path != ":memory:":
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous.upper()}")
        self._migrate()
        # From here on, only this thread uses the connection.
        self._thread = DatabaseThread(self._commit, name=f"headwater-sqlite {self.path}")
        # Small commits that need neither a flush nor a wait are made on the spot, on the
        # event loop, through a second connection that never waits (see _commit_here).
        self._here: sqlite3.Connection | None = None
        self._here_lock = threading.Lock()
        self._here_pages = 0  # about how many pages those commits added to the WAL
        if self.path != ":memory:" and synchronous == "normal":
            here = sqlite3.connect(
                self.path, timeout=0, check_same_thread=False, isolation_level=None
            )
            here.execute("PRAGMA synchronous=NORMAL")
            here.execute("PRAGMA wal_autocheckpoint=0")  # WAL checkpoints flush: the thread's
            self._here = here

    @classmethod
    def from_url(cls, url: str) -> SqliteCheckpointer:
        """``sqlite:///relative.db``, ``sqlite:////absolute.db`` or ``sqlite:///:memory:``,
        optionally ``?synchronous=full``.

        Example::

            SqliteCheckpointer.from_url("sqlite:///:memory:")
            SqliteCheckpointer.from_url("sqlite:///app.db?synchronous=full")
        """
        parts = urlsplit(url)
        path = unquote(parts.path)
        if parts.netloc or not path.startswith("/") or path == "/":
            raise CheckpointError(
                f"SQLite URL {url!r} is not of the form sqlite:///relative/path.db, "
                "sqlite:////absolute/path.db or sqlite:///:memory:."
            )
        query = parse_qs(parts.query, keep_blank_values=True)
        unknown = sorted(set(query) - {"synchronous"})
        if unknown or any(len(v) != 1 for v in query.values()):
            raise CheckpointError(
                f"SQLite URL {url!r} has unknown or repeated parameter(s) "
                f"{unknown or sorted(query)}; the one known parameter is "
                "synchronous=normal|full."
            )
        synchronous = query.get("synchronous", ["normal"])[0].lower()
        return cls(path[1:], synchronous=synchronous)

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

    def _commit(self, records: Sequence[Record], db: sqlite3.Connection | None = None) -> None:
        """On the thread: commit ``records`` in one transaction (all or nothing)."""
        db = self._db if db is None else db
        try:
            if len(records) == 1:
                self._put(db, records[0])  # one statement: its own transaction
                return
            db.execute("BEGIN IMMEDIATE")
            try:
                for record in records:
                    self._put(db, record)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise CheckpointError(f"SQLite error on {self.path!r}: {exc}.") from exc

    @staticmethod
    def _put(db: sqlite3.Connection, record: Record) -> None:
        value = record.value
        if isinstance(value, Checkpoint):
            try:
                db.execute(
                    _PUT_CHECKPOINT,
                    (record.thread_id, record.ns, record.checkpoint_id, record.data),
                )
            except sqlite3.IntegrityError:
                raise CheckpointError(
                    f"Checkpoint {record.checkpoint_id!r} of thread {record.thread_id!r} "
                    "already exists."
                ) from None
        else:
            db.execute(
                _PUT_WRITE,
                (record.thread_id, record.ns, record.checkpoint_id, value.task_id, record.data),
            )

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            try:
                return fn(self._db)
            except sqlite3.Error as exc:
                raise CheckpointError(f"SQLite error on {self.path!r}: {exc}.") from exc

        return await self._thread.call(call)

    async def aput_records(self, records: Sequence[Record]) -> None:
        """Save encoded checkpoints and writes in order, in one transaction."""
        if self._here is not None and len(records) == 1 and self._commit_here(records):
            return
        await self._thread.commit(records)

    def _commit_here(self, records: Sequence[Record]) -> bool:
        """Commit on the calling thread if that cannot wait: whether it was done.

        With ``synchronous=NORMAL`` a WAL commit flushes nothing: it copies a few pages
        into the operating system's cache (about as long as encoding the record), which
        costs less than handing it to a thread and back. So a small commit is made here —
        unless another connection holds the write lock (SQLITE_BUSY at once, as this
        connection has no busy timeout) or this one is in use: those go to the thread.
        WAL checkpoints, which do flush, are left to the thread.
        """
        size = sum(len(r.data) for r in records)
        if size > _HERE_BYTES or not self._here_lock.acquire(blocking=False):
            return False
        try:
            assert self._here is not None
            self._commit(records, self._here)
        except CheckpointError as exc:
            cause = exc.__cause__
            if isinstance(cause, sqlite3.OperationalError) and (
                getattr(cause, "sqlite_errorcode", 0) & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED)
            ):
                return False  # nothing was written: the thread waits for the lock
            raise
        finally:
            self._here_lock.release()
        self._here_pages += 2 + size // 4096  # a table and an index page, and the data
        if self._here_pages >= _WAL_CHECKPOINT_PAGES:
            self._here_pages = 0
            with contextlib.suppress(CheckpointError):  # closing: no WAL checkpoint is due
                self._thread.post(self._checkpoint_wal)
        return True

    def _checkpoint_wal(self) -> None:
        """On the thread: copy the WAL into the database, so that the next writer starts
        it over. Commits on the loop wait meanwhile (they go to this thread): a checkpoint
        that overlaps a write may complete and still leave the WAL to grow."""
        with self._here_lock:
            try:
                self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except sqlite3.Error:
                pass  # another connection is checkpointing: the next one catches up

    async def aput(self, checkpoint: Checkpoint) -> None:
        """Save a checkpoint (a duplicate id is a CheckpointError)."""
        await self.aput_records([Record.of(checkpoint)])

    async def aput_writes(
        self, thread_id: str, ns: str, checkpoint_id: str, writes: Sequence[PendingWrite]
    ) -> None:
        """Save pending writes (a task's later write replaces its earlier one)."""
        batch = WriteBatch(thread_id, ns, checkpoint_id, tuple(writes))
        await self.aput_records(Record.writes(batch))

    async def aput_batch(self, items: Sequence[Checkpoint | WriteBatch]) -> None:
        """Save checkpoints and write batches in order, in one transaction."""
        await self.aput_records(records_of(items))

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
        """Close the connection (and stop its thread)."""
        try:
            await self._run(lambda db: db.close())
        except CheckpointError:
            return  # closed already
        await self._thread.aclose()
        if self._here is not None:
            with self._here_lock:
                self._here.close()


@hookimpl
def headwater_checkpointers() -> Mapping[str, Callable[[str], Checkpointer]]:
    """``sqlite:///path.db`` and ``sqlite:///:memory:``.

    Example::

        headwater.checkpoint.checkpointer_from_url("sqlite:///:memory:")
    """
    return {"sqlite": SqliteCheckpointer.from_url}
