"""headwater-streams: the standard stream modes and the ``astream_events`` v2 projection.

Registered through ``headwater_stream_modes`` like any third-party mode:

=========  ==============================================================================
mode       chunk
=========  ==============================================================================
values     the full state: first the input applied, then after every superstep
updates    ``{node: update}`` for every finished task (parallel nodes each get one)
messages   ``(message_chunk, metadata)`` for every chat-model token (not ``nostream``)
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

import datetime
from collections.abc import Callable, Mapping
from typing import Any

from headwater.checkpoint import StateSnapshot
from headwater.events import (
    CHECKPOINT,
    INTERRUPT,
    ON_CUSTOM_EVENT,
    PUBLIC_KINDS,
    SKIP,
    STEP_END,
    TASK_END,
    TASK_START,
    Event,
    StreamMode,
)
from headwater.hookspecs import EVENTS_MODE, hookimpl
from headwater.runtime import Run

__all__ = ["NOSTREAM_TAG", "headwater_stream_modes"]

NOSTREAM_TAG = "nostream"
"""A model or node tagged ``nostream`` keeps its tokens out of the ``messages`` mode."""


def _values(run: Run) -> StreamMode:
    return StreamMode(kinds=frozenset({STEP_END}), project=_project_values, data_only=True)


def _project_values(data: Mapping[str, Any]) -> Any:
    return data["values"]


def _project_update(data: Mapping[str, Any]) -> Any:
    if data["error"] is not None or data["interrupt"] is not None:
        return SKIP
    return {data["node"]: data["update"]}


def _updates(run: Run) -> StreamMode:
    return StreamMode(kinds=frozenset({TASK_END}), project=_project_update, data_only=True)


def _identity(data: Any) -> Any:
    return data


def _custom(run: Run) -> StreamMode:
    return StreamMode(kinds=frozenset({ON_CUSTOM_EVENT}), project=_identity, data_only=True)


def _project_message(event: Event) -> Any:
    if NOSTREAM_TAG in event.tags:
        return SKIP
    return (event.data["chunk"], event.metadata)


def _messages(run: Run) -> StreamMode:
    return StreamMode(kinds=frozenset({"on_chat_model_stream"}), project=_project_message)


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
        "result": list(update.items()) if isinstance(update, Mapping) else [],
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
    return StreamMode(kinds=PUBLIC_KINDS, project=Event.to_dict)


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
