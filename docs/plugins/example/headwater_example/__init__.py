"""headwater-example: a complete, small headwater plugin.

It adds, through the same hooks the standard plugins use:

* the stream mode ``progress`` (``astream(..., stream_mode="progress")``): one chunk per
  task start and end, with a running count of finished tasks, to drive a progress bar;
* the event filter ``errors_only`` (``astream_events(..., filters=["errors_only"])``):
  only the ``on_*_error`` events, optionally only those whose name matches;
* the sink ``jsonl``: every public event of a run, one JSON object per line, in a file.
  A run writes one when its config asks for it:
  ``config={"configurable": {"events_jsonl": "run.jsonl"}}``.

Example::

    async for chunk in app.astream(state, stream_mode="progress"):
        print(f"{chunk['finished']} tasks done; {chunk['node']} is {chunk['status']}")
"""

from __future__ import annotations

import fnmatch
import json
import os
from collections.abc import Callable, Iterable, Mapping
from typing import IO, Any

import anyio.to_thread

import headwater
from headwater import serde
from headwater.errors import InvalidFilterError, InvalidInputError, SerdeError
from headwater.events import (
    INTERRUPT,
    PUBLIC_KINDS,
    SKIP,
    TASK_END,
    TASK_START,
    Event,
    EventFilter,
    StreamMode,
    Subscription,
)
from headwater.runtime import Run

__all__ = [
    "CONFIG_KEY",
    "ERROR_KINDS",
    "JsonlSink",
    "errors_only",
    "headwater_event_filters",
    "headwater_event_subscribers",
    "headwater_run_end",
    "headwater_sinks",
    "headwater_stream_modes",
    "progress",
]


def progress(run: Run) -> StreamMode:
    """The ``progress`` stream mode of one run: a chunk per task start and task end.

    Each chunk is ``{"node", "step", "status", "finished"}``: ``status`` is
    ``"running"`` when a task starts, then ``"done"``, ``"failed"``, or ``"paused"``
    (the task called ``interrupt()``: it runs again when the thread is resumed);
    ``finished`` counts the run's tasks that have ended so far (paused ones not
    included). The factory is called once per run, so the counter belongs to that run.

    Example::

        async for chunk in app.astream(state, stream_mode="progress"):
            ...  # {"node": "fetch", "step": 1, "status": "done", "finished": 1}
    """
    finished = 0

    def project(event: Event) -> Any:
        nonlocal finished
        if event.event == TASK_START:
            status = "running"
        elif event.name == INTERRUPT:  # the run's summary of its interrupts: already reported
            return SKIP
        elif event.data.get("interrupt") is not None:
            status = "paused"
        else:
            finished += 1
            status = "done" if event.data["error"] is None else "failed"
        return {
            "node": event.name,
            "step": event.metadata.get("step"),
            "status": status,
            "finished": finished,
        }

    return StreamMode(kinds=frozenset({TASK_START, TASK_END}), project=project)


ERROR_KINDS = frozenset(kind for kind in PUBLIC_KINDS if kind.endswith("_error"))
"""The public error kinds: ``on_chain_error``, ``on_chat_model_error``, ``on_tool_error`` …"""


def errors_only(names: Any) -> EventFilter:
    """The ``errors_only`` event filter: keep only ``on_*_error`` events.

    ``names`` is ``None`` (``filters=["errors_only"]``: every error) or a list of event
    names or glob patterns (``filters=[("errors_only", ["fetch*"])]``: only errors of
    matching nodes, models, tools …). The kinds are decided at run start, so no other
    event is even built; the names before an error event is built.

    Example::

        async for event in app.astream_events(state, filters=[("errors_only", ["fetch"])]):
            print(event["name"], event["data"]["error"])
    """
    if names is None:
        return EventFilter(kinds=ERROR_KINDS)
    if isinstance(names, str):
        names = [names]
    if not isinstance(names, Iterable) or not all(isinstance(n, str) for n in names):
        raise InvalidFilterError(
            f"errors_only takes nothing or a list of names or glob patterns, e.g. "
            f"('errors_only', ['fetch', '*_llm']); got {type(names).__name__}: {names!r:.60}."
        )
    patterns = list(names)

    def accept(kind: str, name: str, tags: tuple[str, ...], metadata: Mapping[str, Any]) -> bool:
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)

    return EventFilter(kinds=ERROR_KINDS, accept=accept)


CONFIG_KEY = "events_jsonl"
"""The ``config["configurable"]`` key naming the file a run's events go to."""


class JsonlSink:
    """The ``jsonl`` sink: writes events as JSON Lines, one ``astream_events`` dict a line.

    Each line is the event's ``astream_events`` shape plus its ``seq`` number, encoded
    with :mod:`headwater.serde` (so ``serde.decode(json.loads(line))`` rebuilds messages
    and other registered types). A value serde cannot encode is replaced by
    ``{"unserialisable": "<why>"}`` instead of failing the run. Lines are appended
    through a buffered file, so an event costs no system call; :meth:`close` flushes.

    Example::

        sink = JsonlSink("run.jsonl")
        run.bus.subscribe(sink.subscription())
        ...
        sink.close()
    """

    def __init__(self, path: str | os.PathLike[str], *, kinds: Iterable[str] | None = None) -> None:
        if not isinstance(path, str | os.PathLike) or not os.fspath(path):
            raise InvalidInputError(
                f"The jsonl sink writes to a file: give a path such as 'run.jsonl'; got "
                f"{type(path).__name__}: {path!r:.60}."
            )
        self.path = os.fspath(path)
        self.kinds = PUBLIC_KINDS if kinds is None else frozenset(kinds)
        unknown = sorted(self.kinds - PUBLIC_KINDS)
        if unknown:
            raise InvalidInputError(
                f"The jsonl sink got unknown event kinds {unknown}; choose among "
                f"{sorted(PUBLIC_KINDS)}."
            )
        try:
            self._file: IO[str] = open(self.path, "a", encoding="utf-8")
        except OSError as exc:
            raise InvalidInputError(
                f"The jsonl sink cannot open {self.path!r} for appending: {exc.strerror}. "
                "Give a path in a directory that exists and is writable."
            ) from exc

    def subscription(self) -> Subscription:
        """The subscription that writes this sink's events (return it from a hook).

        Example::

            return [JsonlSink("run.jsonl").subscription()]
        """
        return Subscription(callback=self.write, kinds=self.kinds)

    def write(self, event: Event) -> None:
        """Append one event as a line.

        Example::

            sink.write(event)
        """
        record = event.to_dict()
        record["seq"] = event.seq
        try:
            encoded = serde.encode(record)
        except SerdeError as exc:
            record["data"] = {"unserialisable": str(exc)}
            encoded = serde.encode(record)
        self._file.write(json.dumps(encoded, separators=(",", ":")) + "\n")

    def close(self) -> None:
        """Flush and close the file (idempotent).

        Example::

            sink.close()
        """
        self._file.close()


_open_sinks: dict[str, JsonlSink] = {}  # run_id -> the sink a running run writes to


@headwater.hookimpl
def headwater_stream_modes() -> Mapping[str, Callable[[Run], StreamMode]]:
    """Register the ``progress`` stream mode.

    Example::

        app.astream(state, stream_mode="progress")
    """
    return {"progress": progress}


@headwater.hookimpl
def headwater_event_filters() -> Mapping[str, Callable[[Any], EventFilter]]:
    """Register the ``errors_only`` event filter.

    Example::

        app.astream_events(state, filters=["errors_only"])
    """
    return {"errors_only": errors_only}


@headwater.hookimpl
def headwater_sinks() -> Mapping[str, Callable[..., JsonlSink]]:
    """Register the ``jsonl`` sink factory, ``JsonlSink(path, *, kinds=None)``.

    Example::

        sink = pm.registrations("headwater_sinks")["jsonl"]("run.jsonl")
    """
    return {"jsonl": JsonlSink}


@headwater.hookimpl
def headwater_event_subscribers(run: Run) -> list[Subscription] | None:
    """Attach a ``jsonl`` sink to a run whose config names a file.

    Example::

        app.invoke(state, {"configurable": {"events_jsonl": "run.jsonl"}})
    """
    path = run.config.get("configurable", {}).get(CONFIG_KEY)
    if path is None:
        return None
    if not isinstance(path, str | os.PathLike):
        raise InvalidInputError(
            f"config['configurable'][{CONFIG_KEY!r}] names the file the jsonl sink writes "
            f"the run's events to, e.g. 'run.jsonl'; got {type(path).__name__}: {path!r:.60}."
        )
    sink = JsonlSink(path)
    _open_sinks[run.run_id] = sink
    return [sink.subscription()]


@headwater.hookimpl
def headwater_run_end(run: Run, error: BaseException | None) -> Any:
    """Close the run's sink, if it has one, in a worker thread (the scheduler awaits it).

    Example::

        # called by the scheduler once the run's last event was emitted
    """
    sink = _open_sinks.pop(run.run_id, None)
    if sink is None:
        return None
    return anyio.to_thread.run_sync(sink.close)
