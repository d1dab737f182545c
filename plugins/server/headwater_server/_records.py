"""Thread and run records of the LangGraph server protocol, stored beside the threads.

The protocol's threads carry metadata, a creation time and the graph they run; its runs
are listed per thread. Both are small records kept in the graphs' checkpointer (the
database that holds the threads' state, so every server instance sharing it sees
them), under reserved thread ids beginning with a control character no client thread
id may hold — as thread owners are (:mod:`._threads`):

* ``\\x1fthread:<thread id>``: the thread's record; its newest checkpoint is current;
* ``\\x1fthreads:<owner>``: one entry per thread the owner created (for search);
* ``\\x1fruns:<thread id>``: one entry per run on the thread, and one per deleted run.

No table is added: the records are checkpoints with metadata and no state.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

from headwater.checkpoint import Checkpoint, Checkpointer, new_checkpoint_id

__all__ = ["ThreadRecords", "now"]

_THREAD = "\x1fthread:"
_INDEX = "\x1fthreads:"
_RUNS = "\x1fruns:"
_COMPACT = 16
"""Versions of a thread record kept before the older ones are dropped."""


def now() -> str:
    """The current time as ISO text (UTC)."""
    return datetime.datetime.now(datetime.UTC).isoformat()


class ThreadRecords:
    """Protocol records of threads and runs in ``saver``.

    Example::

        records = ThreadRecords(saver)
        await records.put("t1", owner, {"user": "ada"}, "chat")
    """

    def __init__(self, saver: Checkpointer) -> None:
        self.saver = saver

    async def _add(self, key: str, metadata: Mapping[str, Any]) -> None:
        checkpoint_id = new_checkpoint_id()
        await self.saver.aput(
            Checkpoint(id=checkpoint_id, thread_id=key, metadata=dict(metadata), created_at=now())
        )

    async def get(self, thread_id: str) -> dict[str, Any] | None:
        """The thread's record (``thread_id``, ``created_at``, ``updated_at``,
        ``metadata``, ``graph_id``; ``deleted`` once deleted), ``None`` if it has none."""
        found = await self.saver.alist(_THREAD + thread_id, limit=1)
        if not found:
            return None
        return dict(found[0].metadata)

    async def put(
        self,
        thread_id: str,
        owner: str,
        metadata: Mapping[str, Any],
        graph_id: str | None,
        *,
        created_at: str | None = None,
        new: bool = True,
    ) -> dict[str, Any]:
        """Write the thread's record (a new thread with ``new``: listed for its owner)."""
        stamp = now()
        record = {
            "thread_id": thread_id,
            "created_at": created_at or stamp,
            "updated_at": stamp,
            "metadata": dict(metadata),
            "graph_id": graph_id,
        }
        key = _THREAD + thread_id
        versions = await self.saver.alist(key, limit=_COMPACT)
        if len(versions) >= _COMPACT:
            await self.saver.adelete_thread(key)  # keep the record's versions bounded
        await self._add(key, record)
        if new:
            await self._add(_INDEX + owner, {"thread_id": thread_id})
        return record

    async def delete(self, thread_id: str) -> None:
        """Forget the thread's record and its runs; what is left says it was deleted
        (``{"deleted": True}``: its id stays its owner's, to create again)."""
        await self.saver.adelete_thread(_THREAD + thread_id)
        await self.saver.adelete_thread(_RUNS + thread_id)
        await self._add(_THREAD + thread_id, {"thread_id": thread_id, "deleted": True})

    async def owned(self, owner: str, most: int) -> list[str]:
        """Ids of up to ``most`` threads ``owner`` created, newest first (deleted ones
        included: their record is gone)."""
        seen: set[str] = set()
        out: list[str] = []
        before: str | None = None
        while len(out) < most:
            page = await self.saver.alist(_INDEX + owner, limit=200, before=before)
            if not page:
                break
            for entry in page:
                thread_id = str(entry.metadata.get("thread_id", ""))
                if thread_id and thread_id not in seen:
                    seen.add(thread_id)
                    out.append(thread_id)
            before = page[-1].id
        return out[:most]

    async def add_run(self, thread_id: str, run: Mapping[str, Any]) -> None:
        """Record a run on the thread (``run_id``, ``assistant_id``, ``metadata`` …)."""
        await self._add(_RUNS + thread_id, run)

    async def delete_run(self, thread_id: str, run_id: str) -> None:
        """Mark a run deleted: it is listed no more."""
        await self._add(_RUNS + thread_id, {"deleted": run_id})

    async def runs(self, thread_id: str, most: int) -> list[dict[str, Any]]:
        """Up to ``most`` of the thread's runs, newest first."""
        deleted: set[str] = set()
        out: list[dict[str, Any]] = []
        before: str | None = None
        while len(out) < most:
            page = await self.saver.alist(_RUNS + thread_id, limit=200, before=before)
            if not page:
                break
            for entry in page:
                gone = entry.metadata.get("deleted")
                if gone is not None:
                    deleted.add(str(gone))
                elif entry.metadata.get("run_id") not in deleted:
                    out.append(dict(entry.metadata))
            before = page[-1].id
        return out[:most]
