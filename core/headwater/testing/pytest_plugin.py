"""headwater's pytest plugin (entry point ``pytest11``): fixtures for testing your graphs.

Installed with headwater-core; nothing to configure.

* ``fake_chat_model`` — a factory: ``fake_chat_model(["Hello"], token_delay=0.01)``
  returns a :class:`~headwater.testing.fake.FakeChatModel`.
* ``collect_events`` — ``await collect_events(app, input, config=None, **filters)``
  returns every ``astream_events`` dict of a run (exceptions propagate).
* ``collect_stream`` — ``await collect_stream(app, input, config=None, stream_mode=...)``
  returns every chunk ``astream`` yields.

Example::

    @pytest.mark.anyio
    async def test_tokens(fake_chat_model, collect_events):
        llm = fake_chat_model(["Hi there"])
        app = build_graph(llm)
        events = await collect_events(app, {"messages": ["hello"]})
        streamed = [e for e in events if e["event"] == "on_chat_model_stream"]
        assert "".join(e["data"]["chunk"].content for e in streamed) == "Hi there"
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import pytest

from headwater.testing.fake import FakeChatModel, Script

__all__ = ["collect_events", "collect_stream", "fake_chat_model"]


@pytest.fixture
def fake_chat_model() -> Callable[..., FakeChatModel]:
    """A factory of scripted chat models.

    Example::

        def test_x(fake_chat_model):
            llm = fake_chat_model(["one", "two"], cycle=True)
    """

    def make(responses: Sequence[Script], **kwargs: Any) -> FakeChatModel:
        return FakeChatModel(responses, **kwargs)

    return make


@pytest.fixture
def collect_events() -> Callable[..., Awaitable[list[dict[str, Any]]]]:
    """Run a graph and return all of its ``astream_events`` dicts.

    Example::

        events = await collect_events(app, state, include_types=["on_chain_end"])
    """

    async def collect(
        app: Any, input: Any, config: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> list[dict[str, Any]]:
        return [event async for event in app.astream_events(input, config, **kwargs)]

    return collect


@pytest.fixture
def collect_stream() -> Callable[..., Awaitable[list[Any]]]:
    """Run a graph and return every chunk of ``astream``.

    Example::

        chunks = await collect_stream(app, state, stream_mode=["updates", "custom"])
    """

    async def collect(
        app: Any, input: Any, config: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> list[Any]:
        return [chunk async for chunk in app.astream(input, config, **kwargs)]

    return collect
