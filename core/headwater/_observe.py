"""Events for calls made inside a node: chat models, tools, retrievers.

An :class:`Observed` call belongs to the node running in the current context: its
events carry the node's tags and metadata, the node's run id as parent, a name (its own
or the node's) and a run id of its own. Outside a run, or in a run nobody streams, it
emits nothing and costs one context-variable lookup.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from headwater._bus import Emitter
from headwater._ids import new_id
from headwater.runtime import current_task

__all__ = ["Observed"]

_PHASES = ("start", "stream", "end", "error")
_KINDS: dict[str, dict[str, str]] = {}


def _kinds(family: str) -> dict[str, str]:
    """``{"start": "on_<family>_start", …}``, made once per family."""
    kinds = _KINDS.get(family)
    if kinds is None:
        kinds = _KINDS[family] = {phase: f"on_{family}_{phase}" for phase in _PHASES}
    return kinds


class Observed:
    """One observed call: ``emit("start" | "stream" | "end" | "error", data)``.

    ``emitter`` is ``None`` when nobody streams the run (or outside a run); the hottest
    loops (a model's chunks) call it directly, with ``kinds[phase]``.
    """

    __slots__ = ("emitter", "kinds", "name")

    def __init__(
        self,
        family: str,
        name: str | None,
        tags: Sequence[str] = (),
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        task = current_task.get()
        self.emitter: Emitter | None = None
        self.name = name or ""
        self.kinds = _kinds(family)
        if task is None:
            return
        if name is None:
            self.name = task.node
        run = task.run
        if not run.bus.streaming:
            return
        task_tags = task.event_tags
        self.emitter = run.bus.emitter(
            (
                self.name,
                new_id(),
                (*run.parent_ids, run.run_id, task.run_id),
                task_tags + tuple(t for t in tags if t not in task_tags),
                {**task.event_metadata, **(metadata or {})},
            )
        )

    def emit(self, phase: str, data: Mapping[str, Any]) -> None:
        """Emit ``on_<family>_<phase>`` if anybody wants it."""
        emitter = self.emitter
        if emitter is not None:
            emitter.emit(self.kinds[phase], data)
