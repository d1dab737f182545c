"""The memory: checkpointer passes the public conformance suite."""

from __future__ import annotations

from headwater.checkpoint import Checkpointer, MemoryCheckpointer
from headwater.testing.conformance import CheckpointerConformance


class TestMemoryCheckpointer(CheckpointerConformance):
    async def make_checkpointer(self) -> Checkpointer:
        return MemoryCheckpointer()

    async def write_raw(
        self, saver: Checkpointer, thread_id: str, checkpoint_id: str, data: bytes
    ) -> None:
        assert isinstance(saver, MemoryCheckpointer)
        saver._checkpoints.setdefault((thread_id, ""), {})[checkpoint_id] = data
