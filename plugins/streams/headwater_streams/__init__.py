"""headwater-streams: the standard stream modes and the ``astream_events`` v2 projection.

Registered through ``headwater_stream_modes`` like any third-party mode:

=========  ==============================================================================
mode       chunk
=========  ==============================================================================
values     the full state: first the input applied (or, resuming a thread, its saved
           state), then after every superstep that wrote something
updates    ``{node: update}`` for every finished task (parallel nodes each get one;
           ``{node: None}`` for a node that wrote nothing)
messages   ``(message_chunk, metadata)`` for every chat-model token (not ``nostream``),
           and ``(message, metadata)`` once for each message a node returns that no
           model streamed (tool results, hand-built messages)
custom     each stream-writer payload, in order
debug      ``{"type", "step", "timestamp", "payload"}`` for task starts, task results
           and checkpoints
tasks      the payloads of ``debug`` alone: task starts and task results
checkpoints  each saved checkpoint (graphs compiled with a checkpointer only)
events     the ``astream_events`` v2 dicts (used by ``astream_events``)
=========  ==============================================================================

Example::

    async for chunk in app.astream(state, stream_mode=["updates", "custom"]):
        mode, payload = chunk
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import attrs

from headwater import Command
from headwater.checkpoint import StateSnapshot
from headwater.events import (
    CHECKPOINT,
    INTERRUPT,
    ON_CHAIN_STREAM,
    ON_CUSTOM_EVENT,
    PUBLIC_KINDS,
    SKIP,
    STEP_END,
    TASK_END,
    TASK_START,
    Chunks,
    Event,
    StreamMode,
)
from headwater.hookspecs import EVENTS_MODE, hookimpl
from headwater.messages import BaseMessage, with_id
from headwater.runtime import Run, new_id

__all__ = ["NOSTREAM_TAG", "headwater_stream_modes"]

NOSTREAM_TAG = "nostream"
"""A model or node tagged ``nostream`` keeps its tokens out of the ``messages`` mode."""


def _values(run: Run) -> StreamMode:
    return StreamMode(kinds=frozenset({STEP_END}), project=_project_values, data_only=True)


def _project_values(data: Mapping[str, Any]) -> Any:
    if data["writes"] == {}:
        return SKIP  # a superstep that wrote nothing (LangGraph yields nothing for it)
    return data["values"]  # after a step that wrote, or the saved state a resume starts from


def _project_update(data: Mapping[str, Any]) -> Any:
    if data["error"] is not None or data["interrupt"] is not None:
        return SKIP
    return {data["node"]: data["update"] or None}  # {} and None both read {node: None}


def _updates(run: Run) -> StreamMode:
    return StreamMode(kinds=frozenset({TASK_END}), project=_project_update, data_only=True)


def _identity(data: Any) -> Any:
    return data


def _custom(run: Run) -> StreamMode:
    return StreamMode(kinds=frozenset({ON_CUSTOM_EVENT}), project=_identity, data_only=True)


_MODEL_STREAM = "on_chat_model_stream"
_MODEL_END = "on_chat_model_end"


def _messages_in(values: Any) -> Iterator[BaseMessage]:
    """The messages among ``values``: messages, or lists and tuples of them."""
    for value in values:
        if isinstance(value, BaseMessage):
            yield value
        elif isinstance(value, list | tuple):
            for item in value:
                if isinstance(item, BaseMessage):
                    yield item


def _fields(state: Any) -> Iterable[Any]:
    """A node input's values: a mapping's, or an attrs class's or dataclass's fields."""
    if isinstance(state, Mapping):
        return state.values()
    if attrs.has(type(state)):
        return [getattr(state, f.name) for f in attrs.fields(type(state))]
    if dataclasses.is_dataclass(state) and not isinstance(state, type):
        return [getattr(state, f.name) for f in dataclasses.fields(state)]
    return ()


def _look(message: BaseMessage) -> tuple[Any, ...]:
    """What a message says, without its id (to recognise it once it has one)."""
    return (
        type(message),
        repr(message.content),
        message.name,
        getattr(message, "tool_call_id", None),
    )


def _messages(run: Run) -> StreamMode:
    """Model tokens as they stream, and the messages nodes return that no model streamed.

    As in LangGraph: a message a node returns (a ``ToolNode``'s ``ToolMessage``, a
    hand-built ``AIMessage``, a ``nostream`` model's reply) is yielded once, whole, with
    the node's metadata; a reply whose tokens were streamed, and messages the node got in
    its input (a node returning the whole list back), are not repeated. A streamed chunk
    carries the id of the reply it builds (the model call's run id), so a client can join
    the chunks of one message, as LangChain's do. A message without an id is given one,
    as LangGraph does; when it comes back with the id the reducer gave it (a subgraph
    node's output, streamed with ``subgraphs=True``), it is recognised and not repeated.
    Made per run: it remembers what it has yielded.
    """
    seen: set[str] = set()
    unnamed: collections.Counter[tuple[Any, ...]] = collections.Counter()

    def project(event: Event) -> Any:
        kind = event.event
        if kind == _MODEL_STREAM:
            if NOSTREAM_TAG in event.tags:
                return SKIP
            chunk = event.data["chunk"]
            if isinstance(chunk, BaseMessage) and chunk.id is None:  # a hand-emitted chunk:
                chunk = with_id(chunk, event.run_id)  # its call's id, as models give it
            return (chunk, event.metadata)
        if kind == _MODEL_END:
            reply = event.data["response"]
            if reply.id is not None and NOSTREAM_TAG not in event.tags:
                seen.add(reply.id)  # streamed already: not again when the node returns it
            return SKIP
        data = event.data
        if kind == TASK_START:
            seen.update(m.id for m in _messages_in(_fields(data["input"])) if m.id is not None)
            return SKIP
        # The node's output (on_chain_stream comes before the task's updates chunk, so its
        # messages do too, as in LangGraph).
        update = data["chunk"]
        if isinstance(update, Command):
            update = update.update
        if not isinstance(update, Mapping) or not event.parent_ids:  # not the graph's own
            return SKIP
        out = []
        for message in _messages_in(update.values()):
            if message.id is None:
                unnamed[_look(message)] += 1
                message = attrs.evolve(message, id=new_id())
            elif message.id in seen:
                continue
            else:
                look = _look(message)
                if unnamed[look]:  # yielded before it had this id
                    unnamed[look] -= 1
                    seen.add(message.id)
                    continue
            seen.add(message.id)
            out.append((message, event.metadata))
        return Chunks(out)

    return StreamMode(
        kinds=frozenset({_MODEL_STREAM, _MODEL_END, TASK_START, ON_CHAIN_STREAM}),
        project=project,
        bind=_bind_messages,
    )


def _skip(data: Any) -> Any:
    return SKIP


def _bind_messages(
    kind: str,
    name: str,
    run_id: str,
    parent_ids: tuple[str, ...],
    tags: tuple[str, ...],
    metadata: Mapping[str, Any],
    ns: tuple[str, ...],
) -> Callable[[Any], Any] | None:
    """One model call's tokens: ``(chunk, metadata)`` each, as ``project`` gives them."""
    if kind != _MODEL_STREAM:
        return None
    if NOSTREAM_TAG in tags:
        return _skip

    def project(data: Any) -> Any:
        chunk = data["chunk"]
        if isinstance(chunk, BaseMessage) and chunk.id is None:  # as project(): the call's id
            chunk = with_id(chunk, run_id)
        return (chunk, metadata)

    return project


def _task_payload(event: Event) -> Any:
    data = event.data
    if event.name == INTERRUPT:  # the run's summary of its interrupts, not a task
        return SKIP
    if event.event == TASK_START:
        return {
            "id": event.run_id,
            "name": event.name,
            "input": data["input"],
            "triggers": list(data["triggers"]),
        }
    update = data["update"]
    error = data["error"]
    return {
        "id": event.run_id,
        "name": event.name,
        "result": dict(update) if isinstance(update, Mapping) else {},
        "error": None if error is None else f"{type(error).__name__}: {error}",
        "interrupts": [] if data["interrupt"] is None else [data["interrupt"]],
    }


def _tasks(run: Run) -> StreamMode:
    return StreamMode(kinds=frozenset({TASK_START, TASK_END}), project=_task_payload)


def _checkpoint_payload(snapshot: StateSnapshot) -> dict[str, Any]:
    return {
        "config": snapshot.config,
        "parent_config": snapshot.parent_config,
        "values": snapshot.values,
        "metadata": snapshot.metadata,
        "next": list(snapshot.next),
        "tasks": [
            {"id": t.id, "name": t.node, "triggers": list(t.triggers)} for t in snapshot.tasks
        ],
    }


def _checkpoints(run: Run) -> StreamMode:
    return StreamMode(
        kinds=frozenset({CHECKPOINT}),
        project=_checkpoint_payload,
        data_only=True,
        needs_checkpointer=True,
    )


def _project_debug(event: Event) -> Any:
    if event.event == CHECKPOINT:
        kind, step, payload = (
            "checkpoint",
            event.data.metadata.get("step"),
            _checkpoint_payload(event.data),
        )
    else:
        kind = "task" if event.event == TASK_START else "task_result"
        step, payload = event.metadata.get("step"), _task_payload(event)
        if payload is SKIP:
            return SKIP
    return {
        "type": kind,
        "step": step,
        "timestamp": datetime.datetime.now(datetime.UTC).isoformat(),
        "payload": payload,
    }


def _debug(run: Run) -> StreamMode:
    return StreamMode(kinds=frozenset({TASK_START, TASK_END, CHECKPOINT}), project=_project_debug)


def _events(run: Run) -> StreamMode:
    return StreamMode(
        kinds=PUBLIC_KINDS, project=Event.to_dict, bind=_bind_event, finish=_finish_event
    )


class _Queued:
    """A bound source's event waiting in the queue: its data and the maker of its dict
    (the dict, several times larger, is made when the consumer takes it)."""

    __slots__ = ("data", "make")

    def __init__(self, make: Callable[[Any], dict[str, Any]], data: Any) -> None:
        self.make = make
        self.data = data


def _finish_event(chunk: Any) -> Any:
    return chunk.make(chunk.data) if type(chunk) is _Queued else chunk


def _bind_event(
    kind: str,
    name: str,
    run_id: str,
    parent_ids: tuple[str, ...],
    tags: tuple[str, ...],
    metadata: Mapping[str, Any],
    ns: tuple[str, ...],
) -> Callable[[Any], Any]:
    """One source's events as :meth:`Event.to_dict` gives them. As in LangChain, the
    events of one source (a model call's tokens) share one ``tags`` list and one
    ``metadata`` dict, made once: a token's event costs one dict, not three."""
    shared_tags = list(tags)
    shared_metadata = dict(metadata)

    def to_dict(data: Any) -> dict[str, Any]:
        return {
            "event": kind,
            "name": name,
            "run_id": run_id,
            "parent_ids": list(parent_ids),
            "tags": shared_tags,
            "metadata": shared_metadata,
            "data": data,
        }

    return lambda data: _Queued(to_dict, data)


@hookimpl
def headwater_stream_modes() -> Mapping[str, Callable[[Run], StreamMode]]:
    """The standard stream modes.

    Example::

        sorted(headwater.get_plugin_manager().registrations("headwater_stream_modes"))
        # ['custom', 'debug', 'events', 'messages', 'tasks', 'updates', 'values']
    """
    return {
        "values": _values,
        "updates": _updates,
        "messages": _messages,
        "custom": _custom,
        "debug": _debug,
        "tasks": _tasks,
        "checkpoints": _checkpoints,
        EVENTS_MODE: _events,
    }
