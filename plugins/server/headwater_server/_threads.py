"""Who owns a thread, stored durably beside the thread itself.

A thread belongs to the API key that first used it. The owner is written into the
graphs' checkpointer (the database that holds the thread's state) as a small record
under a reserved thread id, so it survives restarts and every server instance sharing
that database sees it; the API key itself is never stored, only a hash of it. A thread
that has checkpoints but no owner record (written by a script, or before ownership was
recorded) belongs to nobody with an API key: only an open server (no keys) may use it.

Graphs without a checkpointer keep no thread state; their thread ids are claimed in the
broker instead (Redis when shared, this process otherwise), with an expiry.
"""

from __future__ import annotations

import collections
import datetime
import hashlib

from headwater.broker import Broker
from headwater.checkpoint import Checkpoint, Checkpointer
from headwater.errors import CheckpointError

__all__ = ["ANONYMOUS", "OWNER_PREFIX", "ThreadOwners", "principal"]

ANONYMOUS = "-"
"""The owner of everything on an open server (no API keys)."""

OWNER_PREFIX = "\x1fowner:"
"""Owner records live under thread id ``OWNER_PREFIX + thread_id`` (a control character
no client thread id may hold, so no client can read or write them)."""

_BROKER_TTL = 30 * 24 * 3600.0
"""Seconds a broker-held claim on a thread id of a graph without checkpointer lasts
after its last use."""


def principal(api_key: str | None) -> str:
    """Who a request acts for: a hash of its API key (``ANONYMOUS`` without keys).

    Example::

        principal("s3cret")  # "key:2bb80d53…"
    """
    if api_key is None:
        return ANONYMOUS
    digest = hashlib.sha256(api_key.encode("utf-8", "surrogatepass")).hexdigest()
    return f"key:{digest[:40]}"


class ThreadOwners:
    """Claims and checks thread ownership in ``checkpointers`` (every distinct one of the
    served graphs, the first being where ownership is read), else in ``broker``.

    Ownership never changes once written, so confirmed owners are cached (at most
    ``cache_size`` threads).

    Example::

        owners = ThreadOwners([saver], broker)
        assert await owners.claim("t1", principal("alice-key"))
    """

    def __init__(
        self, checkpointers: list[Checkpointer], broker: Broker, cache_size: int = 10_000
    ) -> None:
        self.checkpointers = checkpointers
        self.broker = broker
        self.cache_size = cache_size
        self._cache: collections.OrderedDict[str, str] = collections.OrderedDict()

    def _remember(self, thread_id: str, owner: str) -> None:
        self._cache[thread_id] = owner
        self._cache.move_to_end(thread_id)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    async def owner_of(self, thread_id: str) -> str | None:
        """The thread's owner; ``None`` for a thread nobody has used. A thread with
        state but no owner record is :data:`ANONYMOUS`'s."""
        cached = self._cache.get(thread_id)
        if cached is not None:
            return cached
        if not self.checkpointers:
            return None
        saver = self.checkpointers[0]
        found = await saver.aget(OWNER_PREFIX + thread_id)
        if found is not None:
            owner = str(found.checkpoint.metadata.get("owner", ""))
            self._remember(thread_id, owner)
            return owner
        if await saver.alist(thread_id, limit=1):
            return ANONYMOUS
        return None

    async def claim(self, thread_id: str, owner: str) -> bool:
        """Make ``owner`` the owner of a thread nobody has used; whether it is theirs."""
        if not self.checkpointers:
            holder = await self.broker.claim(f"owner:{thread_id}", owner, _BROKER_TTL)
            return holder is None
        known = await self.owner_of(thread_id)
        if known is not None:
            return known == owner
        for saver in self.checkpointers:
            if not await self._put(saver, thread_id, owner):
                return False
        self._remember(thread_id, owner)
        return True

    async def _put(self, saver: Checkpointer, thread_id: str, owner: str) -> bool:
        record = Checkpoint(
            id="owner",
            thread_id=OWNER_PREFIX + thread_id,
            metadata={"owner": owner, "thread_id": thread_id},
            created_at=datetime.datetime.now(datetime.UTC).isoformat(),
        )
        try:
            await saver.aput(record)  # ids are unique: of two racing claims, one wins
            return True
        except CheckpointError:
            found = await saver.aget(OWNER_PREFIX + thread_id)
            if found is None:
                raise
            return str(found.checkpoint.metadata.get("owner", "")) == owner
