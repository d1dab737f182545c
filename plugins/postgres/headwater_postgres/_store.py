"""The PostgreSQL checkpointer and run queue; imported on first use (psycopg is slow to import)."""

from __future__ import annotations

import contextlib
import os
import threading
import time
import weakref
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import anyio
import anyio.to_thread
import psycopg
import psycopg_pool
from psycopg import pq
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

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
from headwater.queue import MULTITASK_STRATEGIES, QueueError, RunJob, RunQueue, ThreadBusyError

__all__ = [
    "SCHEMA_VERSION",
    "PostgresCheckpointer",
    "PostgresRunQueue",
    "redact",
]

SCHEMA_VERSION = 3
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
    2: (
        """CREATE TABLE headwater_runs (
            run_id TEXT PRIMARY KEY,
            graph TEXT NOT NULL,
            thread_id TEXT NOT NULL,
            owner TEXT,
            input JSONB,
            config JSONB NOT NULL,
            stream JSONB NOT NULL,
            status TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            worker TEXT,
            lease_until TIMESTAMPTZ,
            error TEXT,
            cancel_requested BOOLEAN NOT NULL DEFAULT FALSE,
            created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
        )""",
        "CREATE INDEX headwater_runs_claim ON headwater_runs (status, created_at)",
    ),
    3: (
        "ALTER TABLE headwater_runs ADD COLUMN cancel_reason TEXT",
        "ALTER TABLE headwater_runs ADD COLUMN seq BIGSERIAL",
        # At most one running run per thread from now on: older versions could run two.
        "UPDATE headwater_runs r SET status = 'error', lease_until = NULL, "
        "error = 'Stopped by the schema upgrade: another run of its thread was running.' "
        "WHERE status = 'running' AND EXISTS (SELECT 1 FROM headwater_runs o WHERE "
        "o.thread_id = r.thread_id AND o.status = 'running' AND o.seq < r.seq)",
        "CREATE UNIQUE INDEX headwater_runs_one_running ON headwater_runs (thread_id) "
        "WHERE status = 'running'",
        "CREATE INDEX headwater_runs_thread ON headwater_runs (thread_id, seq)",
    ),
}

T = TypeVar("T")

_PUT_CHECKPOINT = (
    "INSERT INTO headwater_checkpoints (thread_id, ns, id, data) "
    "VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING"
)
_PUT_WRITE = (
    "INSERT INTO headwater_writes (thread_id, ns, checkpoint_id, task_id, data) "
    "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (thread_id, ns, checkpoint_id, task_id) "
    "DO UPDATE SET data = EXCLUDED.data"
)


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


_REOPEN_SECONDS = 5.0
"""After the loop's connection failed, writes go through the writer thread this long."""


class _LoopConnectionError(Exception):
    """The loop's connection failed (the write's outcome is unknown: it is not retried)."""


class _LoopConnection:
    """One connection that commits a single record on the caller's event loop.

    A write handed to a thread costs two thread wake-ups on top of the round trip; on a
    virtual machine whose CPUs doze while PostgreSQL flushes, each can take 50-150 µs
    (measured here: a 340 µs commit took 490 µs through a thread). Here the statement is
    sent with libpq in non-blocking mode and the loop waits for the socket itself, as
    psycopg's own async connections do, but with ``anyio.wait_readable`` so that it works
    on asyncio and trio and from any event loop. The statements are prepared once.
    """

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn
        self.pid = os.getpid()
        # A checkpointer dropped without aclose() closes this connection quietly, as its
        # pool's are (psycopg warns about an open connection it collects; a finalizer runs
        # before the collector finalizes the connection, even within a cycle).
        self._finalizer = weakref.finalize(self, _close_quietly, conn, self.pid)
        pg = conn.pgconn
        for name, sql in ((b"hw_put_checkpoint", _PUT_CHECKPOINT), (b"hw_put_write", _PUT_WRITE)):
            numbered = sql
            for i in range(1, 6):
                numbered = numbered.replace("%s", f"${i}", 1)
            result = pg.prepare(name, numbered.encode())
            if result.status != pq.ExecStatus.COMMAND_OK:
                conn.close()
                raise _LoopConnectionError(_message(result.error_message))
        pg.nonblocking = 1
        self.pg = pg
        self.fd = pg.socket

    async def put(self, record: Record) -> None:
        value = record.value
        text = [record.thread_id.encode(), record.ns.encode(), record.checkpoint_id.encode()]
        if isinstance(value, Checkpoint):
            name, params, formats = b"hw_put_checkpoint", [*text, record.data], [0, 0, 0, 1]
        else:
            name = b"hw_put_write"
            params, formats = [*text, value.task_id.encode(), record.data], [0, 0, 0, 0, 1]
        pg = self.pg
        cancelled: BaseException | None = None
        try:
            pg.send_query_prepared(name, params, param_formats=formats)
            try:
                result = await self._result()
            except BaseException as exc:
                if not isinstance(exc, anyio.get_cancelled_exc_class()):
                    raise
                with anyio.CancelScope(shield=True):  # cancelled: see the commit to its end
                    result = await self._result()
                cancelled = exc
        except psycopg.Error as exc:
            raise _LoopConnectionError(str(exc)) from exc
        if cancelled is not None:
            raise cancelled
        if result is None or result.status != pq.ExecStatus.COMMAND_OK:
            detail = _message(result.error_message) if result is not None else "no result"
            if pg.status == pq.ConnStatus.OK and result is not None:
                # the server refused the statement: the connection itself is fine
                raise CheckpointError(f"PostgreSQL refused a checkpoint write: {detail}")
            raise _LoopConnectionError(detail)
        if isinstance(value, Checkpoint) and result.command_tuples != 1:
            PostgresCheckpointer._duplicate(record)

    async def _result(self) -> pq.abc.PGresult | None:
        """The statement's result, once the connection is idle again: libpq's
        ``PQgetResult`` blocks unless ``PQisBusy`` said otherwise, for the last one (the
        end of the command) too, so the loop waits for the socket before every call."""
        pg, fd = self.pg, self.fd
        while pg.flush():
            await anyio.wait_writable(fd)
        first: pq.abc.PGresult | None = None
        while True:
            pg.consume_input()
            if pg.is_busy():
                await anyio.wait_readable(fd)
                continue
            result = pg.get_result()
            if result is None:
                return first
            if first is None:
                first = result

    def close(self) -> None:
        self._finalizer()


def _close_quietly(conn: psycopg.Connection[Any], pid: int) -> None:
    if pid == os.getpid():  # a forked child leaves its parent's socket alone
        with contextlib.suppress(Exception):
            conn.close()


def _message(data: bytes | None) -> str:
    return (data or b"").decode("utf-8", "replace").strip()


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
        try:  # one direct attempt first: a refused connection fails now, with its cause
            psycopg.connect(url, connect_timeout=max(1, int(connect_timeout))).close()
        except psycopg.Error as exc:
            raise CheckpointError(
                f"Cannot connect to PostgreSQL at {redact(url)}: {str(exc).strip()}. Check that "
                "the server is running and that the URL's host, port, database and user are right."
            ) from exc
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
        # Writes go through one long-lived thread (no hand-off to a fresh worker per
        # write; writes queued meanwhile share a transaction); reads use the pool.
        self._writer = DatabaseThread(self._commit, name=f"headwater-postgres {redact(url)}")
        # A single write is made on the caller's event loop, on a connection of its own
        # (see _LoopConnection); opened on first use, through the writer thread.
        self._connect_timeout = connect_timeout
        self._here: _LoopConnection | None = None
        self._here_lock = threading.Lock()
        self._here_broken = 0.0  # when the last one failed: wait before opening another
        self._closed = False

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

    def _error(self, exc: BaseException) -> CheckpointError:
        if isinstance(exc, psycopg_pool.PoolTimeout):
            return CheckpointError(
                f"No PostgreSQL connection available at {redact(self.url)}: {exc}."
            )
        return CheckpointError(
            f"PostgreSQL error at {redact(self.url)}: {type(exc).__name__}: {exc}".strip()
        )

    def _commit(self, records: Sequence[Record]) -> None:
        """On the writer thread: commit ``records`` in one transaction (all or nothing).

        One record is one statement in autocommit mode (one round trip); several are
        pipelined inside a transaction (two round trips: the statements, the commit)."""
        try:
            with self._pool.connection() as db:
                if len(records) == 1:
                    self._put(db, records[0])
                    return
                with db.pipeline() as pipeline, db.transaction():
                    cursors = [self._put(db, record, check=False) for record in records]
                    pipeline.sync()  # the row counts, before the commit
                    for record, cursor in zip(records, cursors, strict=True):
                        if cursor is not None and cursor.rowcount != 1:
                            self._duplicate(record)  # rolls the transaction back
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise self._error(exc) from exc

    def _put(
        self, db: psycopg.Connection[Any], record: Record, check: bool = True
    ) -> psycopg.Cursor[Any] | None:
        value = record.value
        if isinstance(value, Checkpoint):
            cursor = db.execute(
                _PUT_CHECKPOINT, (record.thread_id, record.ns, record.checkpoint_id, record.data)
            )
            if check and cursor.rowcount != 1:
                self._duplicate(record)
            return cursor
        db.execute(
            _PUT_WRITE,
            (record.thread_id, record.ns, record.checkpoint_id, value.task_id, record.data),
        )
        return None

    @staticmethod
    def _duplicate(record: Record) -> None:
        raise CheckpointError(
            f"Checkpoint {record.checkpoint_id!r} of thread {record.thread_id!r} already exists."
        )

    async def aput_records(self, records: Sequence[Record]) -> None:
        """Save encoded checkpoints and writes in order, in one transaction (one commit)."""
        if len(records) == 1 and not self._closed and self._here_lock.acquire(blocking=False):
            try:  # (held across awaits: another caller meanwhile takes the thread)
                here = await self._loop_connection()
                if here is not None:
                    try:
                        await here.put(records[0])
                    except _LoopConnectionError as exc:
                        self._drop_here()
                        raise self._error(exc.__cause__ or exc) from exc
                    return
            finally:
                if self._closed:
                    self._drop_here()
                self._here_lock.release()
        await self._writer.commit(records)

    async def _loop_connection(self) -> _LoopConnection | None:
        """The connection for writes on the event loop (the caller holds ``_here_lock``):
        opened now if there is none, unless opening one failed in the last few seconds."""
        here = self._here
        if here is not None and here.pid == os.getpid():
            return here
        self._here = None  # a forked child: the parent's socket is not ours to use
        if time.monotonic() - self._here_broken < _REOPEN_SECONDS:
            return None
        try:
            self._here = await self._writer.call(self._open_here)
        except (psycopg.Error, _LoopConnectionError):
            self._here_broken = time.monotonic()
            return None
        return self._here

    def _open_here(self) -> _LoopConnection:
        return _LoopConnection(
            psycopg.connect(
                self.url, autocommit=True, connect_timeout=max(1, int(self._connect_timeout))
            )
        )

    def _drop_here(self) -> None:
        here, self._here = self._here, None
        self._here_broken = time.monotonic()
        if here is not None:
            here.close()

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
        """Save checkpoints and write batches in order, in one transaction (one commit)."""
        await self.aput_records(records_of(items))

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
        """Close the pool and the loop's connection (and stop the writer thread)."""
        self._closed = True
        if self._here_lock.acquire(blocking=False):  # else the write using it closes it
            try:
                self._drop_here()
            finally:
                self._here_lock.release()
        await self._writer.aclose()
        await anyio.to_thread.run_sync(self._pool.close)


_JOB_COLUMNS = (
    "run_id, graph, thread_id, owner, input, config, stream, status, attempts, worker, "
    "error, cancel_requested, cancel_reason, "
    "extract(epoch FROM created_at)::float8 AS enqueued_at"
)


def _job(row: Mapping[str, Any]) -> RunJob:
    return RunJob(
        run_id=row["run_id"],
        graph=row["graph"],
        thread_id=row["thread_id"],
        owner=row["owner"],
        input=row["input"],
        config=row["config"],
        stream=row["stream"],
        status=row["status"],
        attempts=row["attempts"],
        worker=row["worker"],
        error=row["error"],
        cancel_requested=row["cancel_requested"],
        cancel_reason=row["cancel_reason"],
        enqueued_at=row["enqueued_at"],
    )


class PostgresRunQueue(RunQueue):
    """A :class:`~headwater.queue.RunQueue` in PostgreSQL.

    Workers claim runs with ``SELECT … FOR UPDATE SKIP LOCKED`` and hold them under a
    lease they renew by heartbeat; a run whose lease expired is claimed again (its
    ``attempts`` grows) and resumed from its last checkpoint by the new worker.

    Example::

        queue = PostgresRunQueue("postgresql://postgres@127.0.0.1:5432/test")
    """

    def __init__(self, url: str, *, max_size: int = 10, connect_timeout: float = 10.0) -> None:
        self._store = PostgresCheckpointer(url, max_size=max_size, connect_timeout=connect_timeout)
        self.url = url

    @classmethod
    def from_url(cls, url: str) -> PostgresRunQueue:
        """Factory for ``postgresql://`` URLs (the ``headwater_run_queues`` hook)."""
        try:
            return cls(url)
        except CheckpointError as exc:
            raise QueueError(str(exc)) from exc

    async def _query(self, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        try:
            return await self._store._run(fn)
        except CheckpointError as exc:
            raise QueueError(str(exc)) from exc

    async def _one(self, sql: str, args: tuple[Any, ...]) -> RunJob | None:
        def query(db: psycopg.Connection[Any]) -> RunJob | None:
            with db.cursor(row_factory=dict_row) as cursor:
                row = cursor.execute(sql, args).fetchone()
                return _job(row) if row else None

        return await self._query(query)

    async def _all(self, sql: str, args: tuple[Any, ...]) -> list[RunJob]:
        def query(db: psycopg.Connection[Any]) -> list[RunJob]:
            with db.cursor(row_factory=dict_row) as cursor:
                return [_job(row) for row in cursor.execute(sql, args).fetchall()]

        return await self._query(query)

    async def enqueue(self, job: RunJob, *, multitask: str = "reject") -> list[RunJob]:
        """Add a run under a multitask strategy, atomically with the check of its thread."""
        if multitask not in MULTITASK_STRATEGIES:
            raise QueueError(
                f"Unknown multitask strategy {multitask!r}; use one of "
                f"{list(MULTITASK_STRATEGIES)}."
            )

        def put(db: psycopg.Connection[Any]) -> list[RunJob]:
            with db.transaction(), db.cursor(row_factory=dict_row) as cursor:
                # One enqueue per thread at a time, in every process.
                cursor.execute(
                    "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                    (f"headwater-thread:{job.thread_id}",),
                )
                active = [
                    _job(row)
                    for row in cursor.execute(
                        f"SELECT {_JOB_COLUMNS} FROM headwater_runs WHERE thread_id = %s "
                        "AND status IN ('queued', 'running') ORDER BY seq",
                        (job.thread_id,),
                    ).fetchall()
                ]
                if active and multitask == "reject":
                    raise ThreadBusyError(job.thread_id, [a.run_id for a in active])
                superseded: list[RunJob] = []
                if active and multitask in ("interrupt", "rollback"):
                    superseded = [
                        _job(row)
                        for row in cursor.execute(
                            "UPDATE headwater_runs SET cancel_requested = TRUE, "
                            "cancel_reason = %s, status = CASE WHEN status = 'queued' THEN "
                            "'cancelled' ELSE status END, updated_at = now() "
                            f"WHERE run_id = ANY(%s) RETURNING {_JOB_COLUMNS}",
                            (multitask, [a.run_id for a in active]),
                        ).fetchall()
                    ]
                cursor.execute(
                    "INSERT INTO headwater_runs (run_id, graph, thread_id, owner, input, config, "
                    "stream, status) VALUES (%s, %s, %s, %s, %s, %s, %s, 'queued')",
                    (
                        job.run_id,
                        job.graph,
                        job.thread_id,
                        job.owner,
                        Jsonb(job.input),
                        Jsonb(dict(job.config)),
                        Jsonb(dict(job.stream)),
                    ),
                )
                return superseded

        try:
            return await self._store._run(put)
        except CheckpointError as exc:
            raise QueueError(str(exc)) from exc

    async def claim(
        self,
        worker: str,
        lease: float,
        graphs: Collection[str] | None = None,
        *,
        max_attempts: int = 3,
    ) -> RunJob | None:
        """Take the oldest startable run (of one of ``graphs``, if given)."""
        wanted = None if graphs is None else sorted(graphs)
        sql = (
            "UPDATE headwater_runs SET status = 'running', worker = %s, "
            "attempts = attempts + 1, lease_until = now() + make_interval(secs => %s), "
            "updated_at = now() WHERE run_id = (SELECT r.run_id FROM headwater_runs r WHERE "
            "((r.status = 'queued' AND NOT r.cancel_requested AND NOT EXISTS (SELECT 1 FROM "
            "headwater_runs o WHERE o.thread_id = r.thread_id AND o.run_id <> r.run_id AND "
            "(o.status = 'running' OR (o.status = 'queued' AND o.seq < r.seq)))) OR "
            "(r.status = 'running' AND r.lease_until < now() AND NOT r.cancel_requested "
            "AND r.attempts < %s)) "
            "AND (%s::text[] IS NULL OR r.graph = ANY(%s::text[])) "
            "ORDER BY r.seq FOR UPDATE SKIP LOCKED LIMIT 1) "
            f"RETURNING {_JOB_COLUMNS}"
        )
        args = (worker, lease, max_attempts, wanted, wanted)

        def query(db: psycopg.Connection[Any]) -> RunJob | None:
            try:
                with db.cursor(row_factory=dict_row) as cursor:
                    row = cursor.execute(sql, args).fetchone()
                    return _job(row) if row else None
            except psycopg.errors.UniqueViolation:
                return None  # another worker started a run of that thread just now

        return await self._query(query)

    async def reap(
        self, *, max_attempts: int | None = None, graphs: Collection[str] | None = None
    ) -> list[RunJob]:
        """End expired runs that were cancelled or used up their attempts."""
        wanted = None if graphs is None else sorted(graphs)
        limit = max_attempts if max_attempts is not None else 2**31 - 1
        return await self._all(
            "UPDATE headwater_runs SET status = CASE WHEN cancel_requested THEN 'cancelled' "
            "ELSE 'error' END, error = CASE WHEN cancel_requested THEN NULL ELSE "
            "'Run ' || run_id || ' was claimed ' || attempts || ' times and its worker "
            "stopped each time (crashed, was killed or lost its lease); it is not retried "
            "again (headwater worker --max-attempts).' END, lease_until = NULL, "
            "updated_at = now() WHERE status = 'running' AND lease_until < now() AND "
            "(cancel_requested OR attempts >= %s) "
            "AND (%s::text[] IS NULL OR graph = ANY(%s::text[])) "
            f"RETURNING {_JOB_COLUMNS}",
            (limit, wanted, wanted),
        )

    async def renew(self, run_id: str, worker: str, lease: float) -> RunJob | None:
        """Extend the lease (``None``: lost)."""
        return await self._one(
            "UPDATE headwater_runs SET lease_until = now() + make_interval(secs => %s), "
            "updated_at = now() WHERE run_id = %s AND worker = %s AND status = 'running' "
            f"RETURNING {_JOB_COLUMNS}",
            (lease, run_id, worker),
        )

    async def finish(self, run_id: str, worker: str, status: str, error: str | None = None) -> None:
        """Record the end of a run."""
        await self._one(
            "UPDATE headwater_runs SET status = %s, error = %s, lease_until = NULL, "
            "updated_at = now() WHERE run_id = %s AND worker = %s AND status = 'running' "
            f"RETURNING {_JOB_COLUMNS}",
            (status, error, run_id, worker),
        )

    async def cancel(self, run_id: str, reason: str = "cancel") -> RunJob | None:
        """Request cancellation."""
        return await self._one(
            "UPDATE headwater_runs SET cancel_requested = TRUE, cancel_reason = "
            "COALESCE(cancel_reason, %s), status = CASE WHEN status = 'queued' THEN "
            "'cancelled' ELSE status END, updated_at = now() "
            f"WHERE run_id = %s RETURNING {_JOB_COLUMNS}",
            (reason, run_id),
        )

    async def depth(self) -> int | None:
        """How many runs are queued (waiting to be claimed)."""

        def query(db: psycopg.Connection[Any]) -> int:
            row = db.execute("SELECT count(*) FROM headwater_runs WHERE status = 'queued'")
            found = row.fetchone()
            return int(found[0]) if found else 0

        return await self._query(query)

    async def get(self, run_id: str) -> RunJob | None:
        """A run's record."""
        return await self._one(
            f"SELECT {_JOB_COLUMNS} FROM headwater_runs WHERE run_id = %s", (run_id,)
        )

    async def aclose(self) -> None:
        """Close the pool."""
        await self._store.aclose()
