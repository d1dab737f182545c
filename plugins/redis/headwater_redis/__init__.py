"""headwater-redis: runs' event logs on Redis Streams, shared by every server and worker.

Registered for ``redis://`` and ``rediss://`` through ``headwater_brokers``. Each run's
log is one stream (``headwater:run:<run_id>``) appended with ``XADD … MAXLEN ~ N``, so
memory stays bounded; entry ids are Redis stream ids, which is what SSE sends as ``id:``
so a client reconnecting to *any* server with ``Last-Event-ID`` continues exactly after
the last event it saw. A log expires ``ttl`` seconds after its last write.

redis-py's async client runs on asyncio only (uvicorn and ``headwater worker`` are
asyncio); on trio the broker says so instead of failing deep inside.

Example::

    from headwater.broker import broker_from_url

    broker = broker_from_url("redis://127.0.0.1:6379/0")
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from headwater.hookspecs import hookimpl

if TYPE_CHECKING:
    from headwater_redis._broker import RedisBroker

__all__ = ["RedisBroker", "headwater_brokers"]

# Every process that uses headwater loads every installed plugin, so loading this one must
# not import redis-py (most of a second): the broker module is imported on first use.
_LAZY = {"RedisBroker": "headwater_redis._broker"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _from_url(url: str) -> RedisBroker:
    from headwater_redis._broker import RedisBroker

    return RedisBroker.from_url(url)


@hookimpl
def headwater_brokers() -> Mapping[str, Callable[[str], Any]]:
    """``redis://…`` and ``rediss://…``.

    Example::

        headwater.broker.broker_from_url("redis://127.0.0.1:6379/0")
    """
    return {"redis": _from_url, "rediss": _from_url}
