"""The scripted chat model of agent_headwater.py: lg_support's, on headwater's FakeChatModel."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from headwater.testing.fake import FakeChatModel


def ScriptedChatModel(*, script: Sequence[Any], name: str | None = None) -> FakeChatModel:
    """Play ``script`` back, one reply per call (text streamed word by word, tool calls)."""
    return FakeChatModel(list(script), name=name)
