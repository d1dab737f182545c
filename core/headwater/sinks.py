"""Sinks: carry a run's events somewhere else (a file, a queue, a socket), by name.

A plugin registers sink factories with the ``headwater_sinks`` hook. A run names the
sinks it wants in its config, as ``"name:target"`` strings (the target, which may be
empty, goes to the factory): ``config={"sinks": ["jsonl:run.jsonl"]}``. The run opens
each sink when it starts, subscribes it to the run's events, and closes it after the
run's last event (also when the run fails or is cancelled). A sink works the same for
``invoke``, ``astream``, ``astream_events`` and runs served by ``headwater serve``.

A sink is any object with ``subscription()``, returning the
:class:`~headwater.events.Subscription` that receives the events (called on the event
loop: be quick, buffer any I/O; ``kinds=PUBLIC_KINDS`` for the events
``astream_events`` shows), and ``close()``, which may return an awaitable.

Example::

    @headwater.hookimpl
    def headwater_sinks():
        return {"jsonl": JsonlSink}  # JsonlSink(target) has subscription() and close()

    app.invoke({"topic": "rivers"}, {"sinks": ["jsonl:events.jsonl"]})

A consumer that sends a run's chunks on in its own format (a server writing wire entries
to a broker) opens the run with :func:`open_encoded_stream`: the stream modes' projections
subscribe to the bus as ``astream`` does, and each projected chunk is encoded at once, on
the producer side, into what the consumer reads in batches from one bounded queue.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from headwater._stream import Encode, RunStream, Streamable, open_event_stream, open_stream
from headwater.errors import InvalidInputError
from headwater.events import Subscription

if TYPE_CHECKING:
    from headwater._plugins import PluginManager

__all__ = ["RunStream", "Sink", "close_sinks", "open_encoded_stream", "open_sinks"]


@runtime_checkable
class Sink(Protocol):
    """What a ``headwater_sinks`` factory returns for one run.

    Example::

        class PrintSink:
            def subscription(self):
                return Subscription(callback=lambda e: print(e.event, e.name))

            def close(self):
                print("run over")
    """

    def subscription(self) -> Subscription:
        """The subscription that receives this run's events."""

    def close(self) -> Awaitable[None] | None:
        """Called once after the run's last event."""


async def open_sinks(specs: Any, plugin_manager: PluginManager) -> list[Sink]:
    """Make the sinks a run's ``config["sinks"]`` names (``["name:target", ...]``).

    Raises :class:`~headwater.errors.InvalidInputError` naming what is wrong: not a list
    of strings, a name no installed plugin registers (with the installed names), or a
    factory that did not return a sink. Sinks opened before the failure are closed.

    Example::

        sinks = await open_sinks(["jsonl:run.jsonl"], get_plugin_manager())
    """
    if isinstance(specs, str) or not isinstance(specs, list | tuple):
        raise InvalidInputError(
            f"config['sinks'] must be a list of 'name:target' strings, e.g. "
            f"['jsonl:run.jsonl']; got {type(specs).__name__}: {specs!r:.80}."
        )
    opened: list[Sink] = []
    try:
        for spec in specs:
            if not isinstance(spec, str) or not spec:
                raise InvalidInputError(
                    f"Each entry of config['sinks'] is a 'name:target' string; got {spec!r:.80}."
                )
            name, _, target = spec.partition(":")
            sink: Sink = plugin_manager.make(
                "headwater_sinks",
                name,
                [target],
                error=InvalidInputError,
                expected=Sink,
                where=f" in config['sinks'] entry {spec!r}",
                expectation="which has no subscription() and close()",
            )
            opened.append(sink)
    except BaseException:
        await close_sinks(opened)
        raise
    return opened


async def close_sinks(sinks: list[Sink]) -> None:
    """Close every sink (all of them, even if one fails; the first error is raised).

    Example::

        await close_sinks(sinks)
    """
    first: BaseException | None = None
    for sink in sinks:
        try:
            result = sink.close()
            if inspect.isawaitable(result):
                await result
        except Exception as exc:
            first = first or exc
    if first is not None:
        raise first


def open_encoded_stream(
    graph: Streamable,
    input: Any,
    config: Mapping[str, Any] | None,
    encode: Encode,
    *,
    stream_mode: str | Sequence[str] | None = None,
    subgraphs: bool = False,
    filters: Sequence[Any] | None = None,
    **filter_args: Any,
) -> RunStream:
    """Open (without starting) a run whose chunks come out already encoded.

    The run is projected as ``graph.astream(input, config, stream_mode=...,
    subgraphs=...)`` projects it — or, with ``stream_mode=None``, as
    ``graph.astream_events(input, config, filters=..., **filter_args)`` does — and each
    chunk is handed, as it is projected, to ``encode(mode, ns, chunk)`` (``mode`` is the
    stream mode's name, ``"events"`` for ``astream_events``; ``ns`` the namespace of the
    (sub)graph, ``()`` for the root). What ``encode`` returns is queued in place of the
    chunk: one item, or :class:`~headwater.events.Chunks` of several (none for an empty
    one). So a chunk is shaped once, straight into the consumer's format, and reaches the
    consumer through the stream's one bounded queue, with its backpressure: a consumer
    that falls behind holds the run back at its next await point.

    Read the items with ``async for`` or, cheaper for a consumer that sends them on in
    batches, with :meth:`RunStream.next_batch`. Raises the same errors as ``astream`` and
    ``astream_events`` for a bad mode, filter or config.

    Example::

        def encode(mode, ns, chunk):
            return (mode, json.dumps(chunk))

        async with open_encoded_stream(app, state, None, encode, stream_mode="updates") as s:
            while (batch := await s.next_batch()) is not None:
                await send(batch)       # [("updates", '{"node": {...}}'), ...]
    """
    if stream_mode is None:
        return open_event_stream(graph, input, config, "v2", filter_args, filters, encode)
    if filter_args or filters is not None:
        raise InvalidInputError(
            "open_encoded_stream() takes event filters only for astream_events' events "
            f"(stream_mode=None); got stream_mode={stream_mode!r:.60} with filters."
        )
    return open_stream(graph, input, config, stream_mode, subgraphs, encode)
