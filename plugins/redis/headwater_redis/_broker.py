"""The Redis Streams broker; imported on first use (redis-py takes a while to import)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions
import sniffio

from headwater.broker import Broker, BrokerEntry, BrokerError, ExpiredPositionError

__all__ = ["RedisBroker"]

_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")


def _redact(url: str) -> str:
    return re.sub(r"//([^:/@]*):[^@/]*@", r"//\1:***@", url)


class RedisBroker(Broker):
    """A :class:`~headwater.broker.Broker` on Redis Streams.

    ``maxlen`` bounds each run's log (approximately, Redis's ``~`` trimming); ``ttl``
    (seconds) expires a log after its last write. Records and claims (shared by every
    server instance: runs' owners and statuses, which run a thread is busy with) are
    keys under ``namespace`` with their own expiry. ``socket_timeout`` (seconds) bounds
    every command, so a dead connection fails instead of hanging; a blocking read waits
    at most half of it (and then returns no entries, as when ``block`` runs out).

    Example::

        broker = RedisBroker("redis://127.0.0.1:6379/0", maxlen=10_000)
    """

    def __init__(
        self,
        url: str,
        *,
        maxlen: int = 10_000,
        ttl: int = 24 * 3600,
        prefix: str = "headwater:run:",
        namespace: str = "headwater:",
        socket_timeout: float = 30.0,
    ) -> None:
        if not socket_timeout > 0:
            raise BrokerError(f"socket_timeout must be > 0 seconds; got {socket_timeout!r}.")
        self.url = url
        self.socket_timeout = socket_timeout
        self.maxlen = maxlen
        self.ttl = ttl
        self.prefix = prefix
        self.namespace = namespace
        self._client: aioredis.Redis | None = None

    @classmethod
    def from_url(cls, url: str) -> RedisBroker:
        """Factory for ``redis://`` URLs (the ``headwater_brokers`` hook)."""
        return cls(url)

    def _redis(self) -> aioredis.Redis:
        if sniffio.current_async_library() != "asyncio":
            raise BrokerError(
                "The Redis broker needs asyncio (redis-py's async client is asyncio-only); "
                "run the server or worker on asyncio."
            )
        if self._client is None:
            self._client = aioredis.from_url(
                self.url,
                socket_connect_timeout=5,
                socket_timeout=self.socket_timeout,
                decode_responses=True,
            )
        return self._client

    def _key(self, run_id: str) -> str:
        return self.prefix + run_id

    def _fail(self, exc: Exception) -> BrokerError:
        return BrokerError(f"Redis at {_redact(self.url)}: {type(exc).__name__}: {exc}")

    async def ping(self) -> None:
        """Check the server answers (a clear BrokerError naming the URL otherwise)."""
        try:
            await self._redis().ping()
        except redis.exceptions.RedisError as exc:
            raise self._fail(exc) from exc

    def valid_id(self, entry_id: str) -> bool:
        """Redis stream ids look like ``1700000000000-0`` (two 64-bit numbers)."""
        if not _ID.fullmatch(entry_id):
            return False
        ms, seq = entry_id.split("-")
        return int(ms) < 2**64 and int(seq) < 2**64

    async def publish(self, run_id: str, event: str, data: str) -> str:
        """``XADD`` the entry (trimming the log to about ``maxlen``)."""
        client = self._redis()
        key = self._key(run_id)
        try:
            async with client.pipeline(transaction=False) as pipe:
                pipe.xadd(key, {"event": event, "data": data}, maxlen=self.maxlen, approximate=True)
                pipe.expire(key, self.ttl)
                entry_id, _ = await pipe.execute()
        except redis.exceptions.RedisError as exc:
            raise self._fail(exc) from exc
        return str(entry_id)

    async def publish_many(self, run_id: str, entries: Sequence[tuple[str, str]]) -> list[str]:
        """``XADD`` every entry and renew the expiry, in one round trip."""
        if not entries:
            return []
        client = self._redis()
        key = self._key(run_id)
        try:
            async with client.pipeline(transaction=False) as pipe:
                for event, data in entries:
                    pipe.xadd(
                        key, {"event": event, "data": data}, maxlen=self.maxlen, approximate=True
                    )
                pipe.expire(key, self.ttl)
                *ids, _ = await pipe.execute()
        except redis.exceptions.RedisError as exc:
            raise self._fail(exc) from exc
        return [str(entry_id) for entry_id in ids]

    async def read(self, run_id: str, after: str | None, *, block: float) -> list[BrokerEntry]:
        """``XREAD`` entries after ``after``, blocking up to ``block`` seconds."""
        client = self._redis()
        key = self._key(run_id)
        position = after or "0-0"
        try:
            if after:
                first: Any = await client.xrange(key, count=1)
                if first and _older(after, str(first[0][0])):
                    await self._check_kept(client, key, run_id, after)
            # A read blocking longer than the socket timeout would fail as a timeout.
            block = min(block, self.socket_timeout / 2)
            found: Any = await client.xread(
                {key: position}, count=1000, block=int(block * 1000) if block > 0 else None
            )
        except redis.exceptions.RedisError as exc:
            raise self._fail(exc) from exc
        return [
            BrokerEntry(str(i), f["event"], f["data"]) for _, entries in found for i, f in entries
        ]

    async def _check_kept(self, client: aioredis.Redis, key: str, run_id: str, after: str) -> None:
        """``after`` precedes the oldest entry: expired only if the log was trimmed (``0-0``
        on an untrimmed log is its start, not an expired position)."""
        info: Any = await client.xinfo_stream(key)
        if int(info.get("entries-added") or 0) > int(info.get("length") or 0):
            raise ExpiredPositionError(
                f"Entry {after} of run {run_id!r} is no longer kept (oldest: "
                f"{(info.get('first-entry') or ['?'])[0]}); restart from the thread's state."
            )

    async def last(self, run_id: str) -> BrokerEntry | None:
        """``XREVRANGE … COUNT 1``: the newest entry."""
        try:
            found: Any = await self._redis().xrevrange(self._key(run_id), count=1)
        except redis.exceptions.RedisError as exc:
            raise self._fail(exc) from exc
        if not found:
            return None
        entry_id, fields = found[0]
        return BrokerEntry(str(entry_id), fields["event"], fields["data"])

    # -- records and claims --------------------------------------------------------------

    async def put_record(self, key: str, fields: Mapping[str, str], ttl: float) -> None:
        """``HSET`` the fields (after deleting the old ones) with an expiry, atomically."""
        name = f"{self.namespace}rec:{key}"
        try:
            async with self._redis().pipeline(transaction=True) as pipe:
                pipe.delete(name)
                if fields:
                    pipe.hset(name, mapping=dict(fields))
                pipe.pexpire(name, max(1, int(ttl * 1000)))
                await pipe.execute()
        except redis.exceptions.RedisError as exc:
            raise self._fail(exc) from exc

    async def get_record(self, key: str) -> dict[str, str] | None:
        """``HGETALL``."""
        try:
            found: Any = await self._redis().hgetall(f"{self.namespace}rec:{key}")
        except redis.exceptions.RedisError as exc:
            raise self._fail(exc) from exc
        return dict(found) if found else None

    async def claim(self, key: str, value: str, ttl: float) -> str | None:
        """Set the claim key if free or ours (renewing its expiry), in one script."""
        try:
            held: Any = await self._redis().eval(
                _CLAIM, 1, f"{self.namespace}claim:{key}", value, max(1, int(ttl * 1000))
            )
        except redis.exceptions.RedisError as exc:
            raise self._fail(exc) from exc
        return None if held is None else str(held)

    async def release(self, key: str, value: str) -> None:
        """Delete the claim key if ``value`` holds it."""
        try:
            await self._redis().eval(_RELEASE, 1, f"{self.namespace}claim:{key}", value)
        except redis.exceptions.RedisError as exc:
            raise self._fail(exc) from exc

    async def delete(self, run_id: str) -> None:
        """Delete the run's stream."""
        try:
            await self._redis().delete(self._key(run_id))
        except redis.exceptions.RedisError as exc:
            raise self._fail(exc) from exc

    async def aclose(self) -> None:
        """Close the connection pool."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None


_CLAIM = """
local held = redis.call('GET', KEYS[1])
if held and held ~= ARGV[1] then return held end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return nil
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return nil
"""


def _older(a: str, b: str) -> bool:
    ams, aseq = (int(x) for x in a.split("-"))
    bms, bseq = (int(x) for x in b.split("-"))
    return (ams, aseq) < (bms, bseq)
