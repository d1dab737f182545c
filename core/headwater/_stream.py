"""Streaming a run: ``astream``, ``astream_events`` and ``stream``.

A run being streamed executes in a background task owned by its :class:`RunStream`. Its
events reach the consumer through one bounded queue of batches; stream-mode projections
and filters are applied on the producer side, on the event-loop thread, before anything
is queued.

The queue is a plain deque, not an anyio memory stream: producer and consumer both run
on the event-loop thread and never block on it (the producer waits through the run's
valve, at its next await point), so the only await left is the consumer's wait for the
next batch, which the producer ends when it hands one over: one scheduling round per
batch, where a memory stream's ``receive()`` costs a checkpoint and a handshake. That wait
is a :mod:`headwater._backends` wake-up (a bare future on asyncio: an
:class:`anyio.Event` costs measurably more when a producer hands over a batch per token).

Why a background task and not an async generator holding a task group: the spec's
``async for chunk in app.astream(...)`` must also work when the consumer ``break``s, raises
or is cancelled. An async generator that yields inside a task group is closed later, in
another task, where its cancel scope can no longer exit; a plain iterator object can
cancel its run synchronously the moment it is dropped (``__del__``), closed (``aclose``)
or its consumer is cancelled while waiting. For ``__del__`` to run on ``break``, nothing
but the consumer may refer to the :class:`RunStream` handle: the background task and the
run's subscriptions hold its inner :class:`_Pipe` only. The background task is an
asyncio task or a trio system task; its cancel scope is cancelled from the consumer's
side and ``aclose()`` waits until it has finished, so no task, thread callback or queue
is left.

Backpressure: when the queue holds more than its bound, the run's producers wait at their
next await point (end of a node, end of a step, the next token of a chat model; a sync
node in a worker thread waits at once) until the consumer has caught up (emptied the
queue). Memory therefore stays bounded by the queue plus what a producer emits between
two await points.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import anyio.from_thread

from headwater import _backends
from headwater.errors import (
    HeadwaterError,
    InvalidFilterError,
    UnknownStreamModeError,
    UnsupportedVersionError,
)
from headwater.events import SKIP, Accept, Chunks, Event, EventFilter, StreamMode, Subscription
from headwater.hookspecs import EVENTS_MODE
from headwater.runtime import Run

if TYPE_CHECKING:
    from headwater._plugins import PluginManager
    from headwater.checkpoint import Checkpointer

__all__ = ["BUFFER_SIZE", "Encode", "RunStream", "open_stream", "open_event_stream", "stream_sync"]

BUFFER_SIZE = 4096
"""Items a stream's queue holds before producers wait for the consumer."""

BATCH_SIZE = 256
"""Items per batch on the queue: producers append to a batch, which is handed over when
full or at once while the consumer is waiting, so no item waits for company."""

Encode = Callable[[str, tuple[str, ...], Any], Any]
"""``encode(mode, ns, chunk)``: what a stream queues for one projected chunk — one item,
or :class:`~headwater.events.Chunks` of several."""

_MODES = "headwater_stream_modes"
_FILTERS = "headwater_event_filters"


class Streamable(Protocol):
    """What a stream needs of the graph it runs (a compiled graph)."""

    name: str
    checkpointer: Checkpointer | None

    @property
    def plugin_manager(self) -> PluginManager: ...

    def prepare_run(self, input: Any, config: Mapping[str, Any] | None) -> Run: ...

    async def execute(self, run: Run, input: Any) -> dict[str, Any]: ...


def _put_shaped(batch: list[Any], item: Any) -> None:
    """Queue what a stream's shaper made of one chunk: one item, or :class:`Chunks` of
    several (an encoder that turns one chunk into several wire entries)."""
    if item.__class__ is Chunks:
        batch.extend(item)
    else:
        batch.append(item)


def _ignore(data: Any) -> bool:
    """The sink of a source whose events a stream does not want (nor any later one)."""
    return True


class _Pipe:
    """A run being streamed: its queue, its producer (the background task) and its
    consumer side. Only the :class:`RunStream` handle refers to it from the consumer's
    side; the background task and the run's subscriptions refer to it alone, never to the
    handle, so dropping the handle (``break``) is seen at once by ``RunStream.__del__``.
    """

    def __init__(
        self,
        graph: Streamable,
        run: Run,
        input: Any,
        routes: Mapping[str, list[tuple[str, StreamMode]]],
        shape: Callable[[str, tuple[str, ...], Any], Any] | None,
        *,
        nested: bool,
        accept: Accept | None = None,
        predicates: tuple[Callable[[Event], bool], ...] = (),
        buffer_size: int = BUFFER_SIZE,
    ) -> None:
        self._graph = graph
        self._run = run
        self._input = input
        self._routes = routes
        self._shape = shape
        modes = list({id(mode): mode for pairs in routes.values() for _, mode in pairs}.values())
        # A single mode's chunks are finished as the consumer takes them; shaped ones at once.
        self._finish = modes[0].finish if shape is None and len(modes) == 1 else None
        self._nested = nested
        self._predicates = predicates
        self._accept = accept
        self._batch_size = max(1, min(BATCH_SIZE, buffer_size))
        self._bound = max(1, buffer_size // self._batch_size)  # batches queued before waiting
        self._batch: list[Any] = []  # the producer's open batch
        self._queue: collections.deque[list[Any]] = collections.deque()  # handed-over batches
        self._full = False  # the queue went past its bound: producers wait until it is empty
        self._local: collections.deque[Any] = collections.deque()  # the consumer's batch
        # Set while the consumer waits for a batch; the producer wakes it (see _backends:
        # a bare future of _loop on asyncio, cheaper than an anyio.Event per batch).
        self._wakeup: Any = None
        self._loop: Any = None
        self._finished = False  # the producer has handed over its last batch
        self._closed = False  # the consumer side has ended: nothing more is queued
        self._room: anyio.Event | None = None  # set when the consumer has caught up
        self._error: BaseException | None = None
        self._scope: anyio.CancelScope | None = None
        self._done: anyio.Event | None = None
        self._closing = False
        self._thread = threading.get_ident()
        run.bus.subscribe(
            Subscription(
                callback=self._on_emit,
                kinds=frozenset(routes),
                accept=accept,
                raw=True,
                bind=self._bind,
                bind_source=self._bind_source,
            )
        )
        run.bus.add_valve(self._valve)

    @property
    def run_id(self) -> str:
        """The id of the run being streamed (also the graph's ``on_chain_start`` run_id)."""
        return self._run.run_id

    # -- producer side (event-loop thread) ------------------------------------------

    def _on_emit(
        self,
        kind: str,
        name: str,
        run_id: str,
        parent_ids: tuple[str, ...],
        tags: tuple[str, ...],
        metadata: Mapping[str, Any],
        data: Any,
        seq: int,
        ns: tuple[str, ...],
    ) -> None:
        if ns and not self._nested:
            return
        event = None
        if self._predicates:
            event = Event(
                event=kind, name=name, run_id=run_id, parent_ids=parent_ids, tags=tags,
                metadata=metadata, data=data, seq=seq, ns=ns,
            )  # fmt: skip
            for predicate in self._predicates:
                if not predicate(event):
                    return
        shape = self._shape
        for mode_name, mode in self._routes[kind]:
            if mode.data_only:
                chunk = mode.project(data)
            elif (
                event is None
                and mode.bind is not None
                and (bound := mode.bind(kind, name, run_id, parent_ids, tags, metadata, ns))
            ):  # equal to project(event), without building the event
                chunk = bound(data)
            else:
                if event is None:
                    event = Event(
                        event=kind, name=name, run_id=run_id, parent_ids=parent_ids, tags=tags,
                        metadata=metadata, data=data, seq=seq, ns=ns,
                    )  # fmt: skip
                chunk = mode.project(event)
            if chunk is SKIP:
                continue
            batch = self._batch
            if shape is not None and mode.finish is not None:  # shaped: finished at once
                finish = mode.finish
                chunk = Chunks(map(finish, chunk)) if chunk.__class__ is Chunks else finish(chunk)
            if chunk.__class__ is Chunks:  # several chunks for one event
                for one in chunk:
                    if shape is None:
                        batch.append(one)
                    else:
                        _put_shaped(batch, shape(mode_name, ns, one))
            elif shape is None:
                batch.append(chunk)
            else:
                _put_shaped(batch, shape(mode_name, ns, chunk))
            if self._wakeup is not None or len(batch) >= self._batch_size:
                self._flush()

    def _bind(self, kind: str, ns: tuple[str, ...]) -> Callable[[Any], None] | None:
        """:attr:`Subscription.bind`: a data-only sink for one kind, when one mode alone
        wants it as it is (no predicates, no ``(mode, chunk)`` shaping)."""
        if self._predicates or self._shape is not None or (ns and not self._nested):
            return None
        routes = self._routes.get(kind, ())
        if len(routes) != 1 or not routes[0][1].data_only:
            return None
        return self._queue_projected(routes[0][1].project)

    def _queue_projected(self, project: Callable[[Any], Any]) -> Callable[[Any], None]:
        """A data-only sink queueing ``project(data)`` as it is (unless SKIP)."""
        size = self._batch_size

        def put(data: Any) -> None:
            chunk = project(data)
            if chunk is not SKIP:
                batch = self._batch
                batch.append(chunk)
                if self._wakeup is not None or len(batch) >= size:
                    self._flush()

        return put

    def _bind_source(
        self, kind: str, ns: tuple[str, ...], header: Any
    ) -> Callable[[Any], bool | None] | None:
        """:attr:`Subscription.bind_source`: a data-only sink for one source's events of
        ``kind``, when its one mode binds a projection for them (no predicates)."""
        if self._predicates:
            return None
        routes = self._routes.get(kind, ())
        if len(routes) != 1 or routes[0][1].bind is None:
            return None
        if ns and not self._nested:
            return _ignore
        name, run_id, parent_ids, tags, metadata = header
        accept = self._accept
        if accept is not None and not accept(kind, name, tags, metadata):
            return _ignore
        mode_name, mode = routes[0]
        assert mode.bind is not None
        project = mode.bind(kind, name, run_id, parent_ids, tags, metadata, ns)
        if project is None:
            return None
        shape = self._shape
        size = self._batch_size
        if shape is not None and mode.finish is not None:  # shaped: finished at once
            bound, finish = project, mode.finish

            def project(data: Any) -> Any:
                chunk = bound(data)
                return chunk if chunk is SKIP else finish(chunk)

        if shape is None:
            return self._queue_projected(project)

        def put_shaped(data: Any) -> None:
            chunk = project(data)
            if chunk is not SKIP:
                batch = self._batch
                _put_shaped(batch, shape(mode_name, ns, chunk))
                if self._wakeup is not None or len(batch) >= size:
                    self._flush()

        return put_shaped

    def _flush(self) -> None:
        batch = self._batch
        if not batch:
            return
        self._batch = []
        if self._closed:
            return  # the consumer has gone; the run is being cancelled
        queue = self._queue
        if len(queue) >= self._bound:
            self._full = True
        queue.append(batch)
        if self._wakeup is not None:
            self._wake()

    def _wake(self) -> None:
        wakeup, self._wakeup = self._wakeup, None
        if wakeup is not None:
            _backends.wake(wakeup)

    def _valve(self) -> Awaitable[None] | None:
        return self._wait_for_room() if self._full and not self._closing else None

    async def _wait_for_room(self) -> None:
        if self._room is None:
            self._room = anyio.Event()
        await self._room.wait()

    def _caught_up(self) -> None:
        room, self._room = self._room, None
        if room is not None:
            room.set()

    async def _produce(self) -> None:
        try:
            with anyio.CancelScope() as scope:
                self._scope = scope
                if self._closing:
                    scope.cancel()
                try:
                    await self._graph.execute(self._run, self._input)
                except Exception as exc:
                    self._error = exc
        finally:
            self._flush()
            self._finished = True
            self._wake()
            assert self._done is not None
            self._done.set()

    # -- consumer side ---------------------------------------------------------------

    async def __anext__(self) -> Any:
        local = self._local
        if local:
            return local.popleft()
        if self._done is None:
            if self._closing:
                raise StopAsyncIteration
            self._done = anyio.Event()
            self._loop = _backends.spawn_system_task(self._produce)
        while True:
            batch = self._take()
            if batch is not None:
                finish = self._finish
                local.extend(batch if finish is None else map(finish, batch))
                return local.popleft()
            wakeup = self._wakeup = _backends.wakeup(self._loop)
            try:
                await _backends.sleep_on(wakeup)
            except BaseException:
                self._wakeup = None
                self._cancel()
                raise

    def _take(self) -> list[Any] | None:
        """The next batch in order: queued, then the producer's open batch; ``None`` when
        there is none yet. Ends the stream (raises) once the run has finished and
        everything was taken, or the consumer side was closed."""
        queue = self._queue
        if queue:
            batch = queue.popleft()
            if not queue and self._full:
                self._full = False
                self._caught_up()
            return batch
        if self._batch:
            batch, self._batch = self._batch, []
            return batch
        if self._finished or self._closed:
            self._end()
        return None

    @property
    def ready(self) -> bool:
        """Whether the next item (or the end of the stream) can be taken without waiting."""
        return bool(self._local or self._queue or self._batch or self._finished or self._closed)

    def _end(self) -> None:
        self._closed = True
        error, self._error = self._error, None
        if error is not None:
            raise error
        raise StopAsyncIteration

    def _cancel(self) -> None:
        self._closing = True
        if self._scope is not None:
            self._scope.cancel()
        self._closed = True
        self._queue.clear()
        self._full = False
        self._caught_up()

    async def aclose(self) -> None:
        """Cancel the run (if still going) and wait until its tasks have finished."""
        self._cancel()
        if self._done is not None:
            with anyio.CancelScope(shield=True):
                await self._done.wait()

    def abandon(self) -> None:
        """The consumer dropped its handle: cancel the run (it cannot be awaited here)."""
        done = self._done
        if done is not None and not done.is_set() and threading.get_ident() == self._thread:
            self._cancel()
        elif done is None:  # never iterated: nothing runs, just release the queue
            self._closing = True
            self._closed = True

    async def next_batch(self, limit: int | None = None) -> list[Any] | None:
        """Wait for at least one item and return everything already available (about
        ``limit`` items at most, whole queued batches: the rest stays queued, and the run
        stays held back while the queue is full).

        ``None`` once the stream has ended. Used by the sync :func:`stream_sync`.
        """
        try:
            first = await self.__anext__()
        except StopAsyncIteration:
            return None
        batch = [first, *self._local]
        self._local.clear()
        finish = self._finish
        while (limit is None or len(batch) < limit) and (more := self._take_quietly()) is not None:
            batch.extend(more if finish is None else map(finish, more))
        return batch

    def _take_quietly(self) -> list[Any] | None:
        try:
            return self._take()
        except StopAsyncIteration:
            return None
        except Exception as exc:  # the run failed: raised by the next call, after this batch
            self._error = exc
            return None


class RunStream(AsyncIterator[Any]):
    """The async iterator ``astream()`` and ``astream_events()`` return.

    Iterate it with ``async for``; leaving the loop early (``break``, an exception, the
    consumer being cancelled) cancels the run. ``await stream.aclose()`` cancels it and
    waits until its tasks have finished; ``async with`` does the same on exit.

    Example::

        async with app.astream(state, stream_mode="updates") as stream:
            async for chunk in stream:
                print(chunk)
    """

    __slots__ = ("_pipe",)

    def __init__(self, pipe: _Pipe) -> None:
        self._pipe = pipe

    @property
    def run_id(self) -> str:
        """The id of the run being streamed (also the graph's ``on_chain_start`` run_id)."""
        return self._pipe.run_id

    def __aiter__(self) -> RunStream:
        return self

    def __anext__(self) -> Awaitable[Any]:
        return self._pipe.__anext__()  # the pipe's own awaitable: no extra frame per item

    async def aclose(self) -> None:
        """Cancel the run (if still going) and wait until its tasks have finished."""
        await self._pipe.aclose()

    @property
    def ready(self) -> bool:
        """Whether the next item, or the end of the stream, is there to take without
        waiting (a publisher that yields the loop now and then can skip yielding when
        the next call would wait anyway).

        Example::

            batch = await stream.next_batch(512)
            if stream.ready:
                await anyio.lowlevel.checkpoint()
        """
        return self._pipe.ready

    async def __aenter__(self) -> RunStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._pipe.aclose()

    async def next_batch(self, limit: int | None = None) -> list[Any] | None:
        """Wait for at least one item and return everything already available, or about
        ``limit`` items at most (whole batches of the queue; the rest stays queued and
        holds the run back while the queue is full). ``None`` once the stream has ended.

        Example::

            while (items := await stream.next_batch(512)) is not None:
                await send(items)
        """
        return await self._pipe.next_batch(limit)

    def __del__(self) -> None:
        # Dropped by its consumer (``break`` out of ``async for``): the run must stop.
        pipe = getattr(self, "_pipe", None)
        if pipe is not None:
            pipe.abandon()


# -- building streams --------------------------------------------------------------------


def _modes(pm: PluginManager, stream_mode: Any) -> tuple[list[str], bool]:
    if isinstance(stream_mode, str):
        names, single = [stream_mode], True
    elif (
        isinstance(stream_mode, list | tuple)
        and stream_mode
        and all(isinstance(m, str) for m in stream_mode)
    ):
        names, single = list(dict.fromkeys(stream_mode)), False
    else:
        installed = sorted(pm.registrations(_MODES))
        raise UnknownStreamModeError(
            f"stream_mode must be a mode name or a non-empty list of mode names, e.g. "
            f"'values' or ['updates', 'custom']; got {type(stream_mode).__name__}: "
            f"{stream_mode!r:.80}. Installed modes: {', '.join(installed) or '(none)'}."
        )
    for name in names:
        pm.lookup(_MODES, name, error=UnknownStreamModeError)
    return names, single


def _routes(
    run: Run, pm: PluginManager, names: Iterable[str]
) -> dict[str, list[tuple[str, StreamMode]]]:
    routes: dict[str, list[tuple[str, StreamMode]]] = {}
    for name in names:
        mode: StreamMode = pm.make(
            _MODES, name, [run], error=UnknownStreamModeError, expected=StreamMode
        )
        for kind in mode.kinds:
            routes.setdefault(kind, []).append((name, mode))
    return routes


def _shaper(single: bool, subgraphs: bool) -> Callable[[str, tuple[str, ...], Any], Any] | None:
    if single and not subgraphs:
        return None
    if single:
        return lambda name, ns, chunk: (ns, chunk)
    if not subgraphs:
        return lambda name, ns, chunk: (name, chunk)
    return lambda name, ns, chunk: (ns, name, chunk)


def open_stream(
    graph: Streamable,
    input: Any,
    config: Mapping[str, Any] | None,
    stream_mode: Any,
    subgraphs: bool,
    encode: Encode | None = None,
) -> RunStream:
    """Validate the arguments and build the stream of ``astream()`` (or, with
    ``encode``, of :func:`headwater.sinks.open_encoded_stream`)."""
    pm = graph.plugin_manager
    names, single = _modes(pm, stream_mode)
    run = graph.prepare_run(input, config)
    routes = _routes(run, pm, names)
    if graph.checkpointer is None:
        for name, mode in (m for modes in routes.values() for m in modes):
            if mode.needs_checkpointer:
                raise UnknownStreamModeError(
                    f"Stream mode {name!r} reports checkpoints, and graph {graph.name!r} has no "
                    "checkpointer: compile it with checkpointer='memory:' (or sqlite:///…)."
                )
    shape = _shaper(single, subgraphs) if encode is None else encode
    return RunStream(_Pipe(graph, run, input, routes, shape, nested=subgraphs))


def _event_filters(pm: PluginManager, args: Mapping[str, Any], filters: Any) -> list[EventFilter]:
    def named(name: str, arg: Any, how: str) -> EventFilter:
        unknown = f"{how} names unknown filter {name!r}."
        made: EventFilter = pm.make(
            _FILTERS, name, [arg], error=InvalidFilterError, expected=EventFilter, unknown=unknown
        )
        return made

    out: list[EventFilter] = []
    groups: dict[str, list[EventFilter]] = {}
    for name, arg in args.items():  # keyword filters: those sharing an any_of group are OR'd
        if arg is not None:
            made = named(name, arg, f"astream_events({name}=...)")
            if made.any_of is None:
                out.append(made)
            else:
                groups.setdefault(made.any_of, []).append(made)
    out.extend(_any_of(group) for group in groups.values())
    if filters is None:
        return out
    if isinstance(filters, str | EventFilter) or callable(filters):
        filters = [filters]
    if not isinstance(filters, list | tuple):
        raise InvalidFilterError(
            f"filters must be a list of filters (callables taking an Event, names of "
            f"installed filters, (name, argument) pairs, or EventFilter objects); got "
            f"{type(filters).__name__}."
        )
    for f in filters:
        if isinstance(f, EventFilter):
            out.append(f)
        elif isinstance(f, str):
            out.append(named(f, None, "filters=[...]"))
        elif isinstance(f, tuple) and len(f) == 2 and isinstance(f[0], str):
            out.append(named(f[0], f[1], "filters=[...]"))
        elif callable(f):
            out.append(EventFilter(predicate=f))
        else:
            installed = sorted(pm.registrations(_FILTERS))
            raise InvalidFilterError(
                f"filters=[...] contains {type(f).__name__} {f!r:.60}; expected a callable "
                "taking an Event and returning bool, the name of an installed filter, a "
                "(name, argument) pair, or an EventFilter. Installed filters: "
                f"{', '.join(installed) or '(none)'}."
            )
    return out


def _header_ok(f: EventFilter, kind: str, name: str, tags: tuple[str, ...], md: Any) -> bool:
    return (f.kinds is None or kind in f.kinds) and (
        f.accept is None or f.accept(kind, name, tags, md)
    )


def _any_of(filters: list[EventFilter]) -> EventFilter:
    """An event passes when it passes any one of ``filters`` (one ``any_of`` group)."""
    if len(filters) == 1:
        return filters[0]
    kinds: frozenset[str] | None = frozenset()
    for f in filters:
        kinds = None if kinds is None or f.kinds is None else kinds | f.kinds
    if any(f.predicate is not None for f in filters):

        def predicate(e: Event) -> bool:
            return any(
                _header_ok(f, e.event, e.name, e.tags, e.metadata)
                and (f.predicate is None or f.predicate(e))
                for f in filters
            )

        return EventFilter(kinds=kinds, predicate=predicate)
    return EventFilter(
        kinds=kinds,
        accept=lambda kind, name, tags, md: any(
            _header_ok(f, kind, name, tags, md) for f in filters
        ),
    )


def _all_accept(accepts: list[Accept]) -> Accept | None:
    if not accepts:
        return None
    if len(accepts) == 1:
        return accepts[0]
    return lambda kind, name, tags, md: all(a(kind, name, tags, md) for a in accepts)


def open_event_stream(
    graph: Streamable,
    input: Any,
    config: Mapping[str, Any] | None,
    version: str,
    filter_args: Mapping[str, Any],
    filters: Any,
    encode: Encode | None = None,
) -> RunStream:
    """Validate the arguments and build the stream of ``astream_events()`` (or, with
    ``encode``, of :func:`headwater.sinks.open_encoded_stream`)."""
    if version != "v2":
        if version == "v1":
            raise UnsupportedVersionError(
                "astream_events(version='v1') was removed (as in LangGraph 1.0); use "
                "version='v2', the default and only version."
            )
        raise UnsupportedVersionError(
            f"Unknown astream_events version {version!r}; the only version is 'v2' (the default)."
        )
    pm = graph.plugin_manager
    pm.lookup(
        _MODES,
        EVENTS_MODE,
        error=UnknownStreamModeError,
        unknown=f"astream_events needs the {EVENTS_MODE!r} projection, which no installed "
        "plugin provides.",
    )
    event_filters = _event_filters(pm, filter_args, filters)
    run = graph.prepare_run(input, config)
    routes = _routes(run, pm, [EVENTS_MODE])
    for f in event_filters:
        if f.kinds is not None:
            routes = {k: v for k, v in routes.items() if k in f.kinds}
    accept = _all_accept([f.accept for f in event_filters if f.accept is not None])
    predicates = tuple(f.predicate for f in event_filters if f.predicate is not None)
    return RunStream(
        _Pipe(
            graph,
            run,
            input,
            routes,
            _shaper(True, False) if encode is None else encode,
            nested=True,
            accept=accept,
            predicates=predicates,
        )
    )


def stream_sync(make: Callable[[], RunStream]) -> Iterator[Any]:
    """Iterate a stream from sync code: the run executes on an event loop in a thread.

    That works in plain code and on a thread running an event loop of its own (a Jupyter
    cell); in a node on the event loop's thread it is refused, as blocking would stall
    the run.
    """
    from headwater._sync import in_running_node, on_event_loop

    if on_event_loop() and in_running_node():
        raise HeadwaterError(
            "stream() was called in a node on the event loop thread, where it would block "
            "every other task of the run. In an async node use `async for chunk in "
            "graph.astream(...)`."
        )
    with anyio.from_thread.start_blocking_portal() as portal:
        stream = portal.call(make)
        try:
            while True:
                batch = portal.call(stream.next_batch)
                if batch is None:
                    return
                yield from batch
        finally:
            portal.call(stream.aclose)
