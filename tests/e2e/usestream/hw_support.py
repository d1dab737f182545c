"""The scripted chat model of graph_headwater.py: lg_support's, on headwater's FakeChatModel."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from headwater.testing.fake import FakeChatModel


def ScriptedChatModel(*, script: Sequence[Any], token_delay: float, name: str) -> FakeChatModel:
    """Play ``script`` back, one reply per call, round and round, a token every delay."""
    return FakeChatModel(list(script), token_delay=token_delay, cycle=True, name=name)
