"""What checkpoints need from the core: the ``memory:`` schemes and the stored types.

The in-process checkpointer and broker (``memory:``), and the core's own types that
checkpoints and transports store (messages, documents, ``Send``, ``Command``, checkpoint
records), registered through ``headwater_serde_types`` exactly as a plugin's are.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from headwater import checkpoint, messages, retrievers
from headwater._types import Command, Send
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


_STORED_TYPES: tuple[type, ...] = (
    messages.SystemMessage,
    messages.HumanMessage,
    messages.AIMessage,
    messages.AIMessageChunk,
    messages.ToolMessage,
    messages.RemoveMessage,
    messages.ToolCall,
    messages.ToolCallChunk,
    messages.InvalidToolCall,
    messages.Usage,
    retrievers.Document,
    Send,
    Command,
    checkpoint.Checkpoint,
    checkpoint.PendingTask,
    checkpoint.PendingWrite,
    checkpoint.Interrupt,
)


@hookimpl
def headwater_serde_types() -> Mapping[str, type]:
    """The core's attrs classes that state, events and checkpoints may hold."""
    return {cls.__name__: cls for cls in _STORED_TYPES}
