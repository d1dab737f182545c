"""Built-in ``memory:`` schemes: the in-process checkpointer and broker."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from headwater.broker import Broker, MemoryBroker
from headwater.checkpoint import Checkpointer, MemoryCheckpointer
from headwater.hookspecs import hookimpl


def _memory(url: str) -> Checkpointer:
    return MemoryCheckpointer()


@hookimpl
def headwater_checkpointers() -> Mapping[str, Callable[[str], Checkpointer]]:
    """``memory:`` — checkpoints kept in this process."""
    return {"memory": _memory}


def _memory_broker(url: str) -> Broker:
    return MemoryBroker()


@hookimpl
def headwater_brokers() -> Mapping[str, Callable[[str], Broker]]:
    """``memory:`` — run event logs kept in this process."""
    return {"memory": _memory_broker}
