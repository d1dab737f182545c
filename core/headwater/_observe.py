"""Events for calls made inside a node: chat models, tools, retrievers.

An :class:`Observed` call belongs to the node running in the current context: its
events carry the node's tags and metadata, the node's run id as parent, a name (its own
or the node's) and a run id of its own. Outside a run, or in a run nobody streams, it
emits nothing and costs one context-variable lookup.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from headwater.runtime import Run, current_task, new_id

__all__ = ["Observed"]


class Observed:
    """One observed call: ``emit("start" | "stream" | "end" | "error", data)``."""

    __slots__ = ("kinds", "metadata", "name", "parent_ids", "run", "run_id", "tags")

    def __init__(
        self,
        family: str,
        name: str | None,
        tags: Sequence[str] = (),
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        task = current_task.get()
        self.run: Run | None = None
        self.run_id = ""
        self.name = name or ""
        self.parent_ids: tuple[str, ...] = ()
        self.tags: tuple[str, ...] = tuple(tags)
        self.metadata: Mapping[str, Any] = metadata or {}
        self.kinds = {
            phase: f"on_{family}_{phase}" for phase in ("start", "stream", "end", "error")
        }
        if task is None:
            return
        if name is None:
            self.name = task.node
        run = task.run
        if not run.streaming:
            return
        self.run = run
        self.run_id = new_id()
        self.parent_ids = (*run.parent_ids, run.run_id, task.run_id)
        self.tags = task.event_tags + tuple(t for t in tags if t not in task.event_tags)
        self.metadata = {**task.event_metadata, **(metadata or {})}

    def emit(self, phase: str, data: Mapping[str, Any]) -> None:
        """Emit ``on_<family>_<phase>`` if anybody wants it."""
        run = self.run
        if run is None:
            return
        kind = self.kinds[phase]
        subs = run.subscriptions(kind)
        if subs:
            run.emit(
                subs, kind, self.name, self.run_id, self.parent_ids, self.tags, self.metadata, data
            )

    async def relieve(self) -> None:
        """Wait while a consumer of the run is behind (backpressure between chunks)."""
        run = self.run
        if run is not None and run._valves:
            await run.relieve()
