"""Built-in checkpointer scheme: ``memory:``."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from headwater.checkpoint import Checkpointer, MemoryCheckpointer
from headwater.hookspecs import hookimpl


def _memory(url: str) -> Checkpointer:
    return MemoryCheckpointer()


@hookimpl
def headwater_checkpointers() -> Mapping[str, Callable[[str], Checkpointer]]:
    """``memory:`` — checkpoints kept in this process."""
    return {"memory": _memory}
