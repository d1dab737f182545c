"""The event bus of a run: subscriptions, emission, backpressure and the worker-thread inbox.

One room for one mechanism (as pluggy keeps its hook-call loop alone in ``_callers.py``):
this module imports nothing of headwater but :mod:`headwater.events`.

* A root run owns a :class:`Bus`; each subgraph run gets a :meth:`Bus.child` that shares
  the root's subscriptions, sequence numbers, valves and inbox, with its own namespace.
* Subscriptions are added before the run starts and resolved once per kind
  (:meth:`Bus.subscriptions`); a kind nobody wants is never built.
* Producers emit through an :class:`Emitter`, bound once per source (a task, a chat-model,
  tool or retriever call, the graph run itself) to the header every event of that source
  carries: ``name``, ``run_id``, ``parent_ids``, ``tags``, ``metadata``.
* A subscription that wants only an event's ``data`` (:attr:`Subscription.bind`) gets it
  directly when it is the only one for the kind: no id, no header, no :class:`Event`.
* A source emitting many events of one kind (a chat model's tokens) binds them once
  (:meth:`Emitter.sink`): when every subscription for the kind binds a data-only callable
  for that source (:attr:`Subscription.bind_source`), its events go straight to those
  callables, however many subscriptions there are.
* Consumers with bounded queues register valves (:meth:`Bus.add_valve`); producers wait
  at their await points while one is full (:meth:`Bus.pressure`). An async node is
  driven through :meth:`Bus.paced`, so it waits at its own await points too.
* Events emitted in a worker thread (a sync node) reach the event loop in order, in
  batches, through the inbox; a thread far ahead of its consumers waits.

Example::

    bus = Bus()
    bus.subscribe(Subscription(callback=print, kinds=frozenset({"on_custom_event"})))
    emit = bus.emitter(("node", run_id, (parent_id,), ("tag",), {"node": "node"}))
    emit.emit("on_custom_event", {"progress": 0.5})
"""

from __future__ import annotations

import threading
import types
from collections.abc import Awaitable, Callable, Coroutine, Generator, Mapping
from typing import Any, TypeVar

import anyio
import anyio.from_thread
import anyio.lowlevel
import sniffio

from headwater.events import Event, Subscription

__all__ = ["Bus", "Emitter", "Header"]

T = TypeVar("T")

Header = tuple[str, str, tuple[str, ...], tuple[str, ...], Mapping[str, Any]]
"""What every event of one source carries: ``(name, run_id, parent_ids, tags, metadata)``."""

Valve = Callable[[], Awaitable[None] | None]
"""``valve()``: ``None`` while a consumer has room, else an awaitable that completes when
it has room again."""

Put = Callable[[Any], None]
"""A data-only sink: takes an event's ``data`` (see :attr:`Subscription.bind`)."""

SourcePut = Callable[[Any], bool | None]
"""A data-only sink bound for one source's events of one kind (see
:attr:`Subscription.bind_source`): takes an event's ``data``; returns true once nobody
wants the source's later events of that kind."""

_NOBODY: tuple[Subscription, ...] = ()


class _Every(frozenset[str]):
    """:attr:`Bus.wanted` when some subscription takes every kind."""

    def __contains__(self, kind: object) -> bool:
        return True


_EVERY = _Every()

_INBOX_LIMIT = 1024
"""Events worker threads may emit before one waits for them to be delivered and for
consumers to have room: bounds memory, gives backpressure."""


class Bus:
    """The event bus of one (sub)graph run; subgraph runs share their root run's.

    Example::

        run.bus.subscribe(Subscription(callback=seen.append))   # before the run starts
        waiting = run.bus.pressure()                            # in a producer
        if waiting is not None:
            await waiting
    """

    __slots__ = (
        "_by_kind",
        "_direct",
        "_inbox",
        "_seq",
        "_subs",
        "_valves",
        "_wanted",
        "_woken",
        "loop_thread",
        "ns",
    )

    def __init__(self, ns: tuple[str, ...] = (), *, _root: Bus | None = None) -> None:
        self.ns = ns
        """The namespace of the (sub)graph whose events this bus emits (``()``: the root)."""
        self.loop_thread: int = threading.get_ident() if _root is None else _root.loop_thread
        """The event loop's thread: emitting from any other thread goes through the inbox."""
        self._subs: list[Subscription] = [] if _root is None else _root._subs
        self._seq: list[int] = [0] if _root is None else _root._seq
        self._valves: list[Valve] = [] if _root is None else _root._valves
        self._woken: list[int] = [0] if _root is None else _root._woken  # see wakeups
        self._inbox: _Inbox = _Inbox(self) if _root is None else _root._inbox
        self._by_kind: dict[str, tuple[Subscription, ...]] = {}
        self._direct: dict[str, Put | None] = {}
        self._wanted: frozenset[str] | None = None

    def child(self, ns: tuple[str, ...]) -> Bus:
        """The bus of a subgraph run in namespace ``ns``: it shares this bus's subscribers.

        Example::

            sub_bus = run.bus.child((*run.ns, f"{node}:{task_id}"))
        """
        return Bus(ns, _root=self)

    # -- subscriptions (fixed when the run starts) -------------------------------------

    def subscribe(self, subscription: Subscription) -> None:
        """Add a subscription before the run starts (``astream``, sinks and hooks do this).

        Example::

            run.bus.subscribe(Subscription(callback=print, kinds=frozenset({"on_chain_end"})))
        """
        self._subs.append(subscription)
        self._by_kind.clear()
        self._direct.clear()
        self._wanted = None

    @property
    def streaming(self) -> bool:
        """Whether anything subscribed to the run's events.

        Example::

            if run.bus.streaming:
                ...  # only then is there anything to emit
        """
        return bool(self._subs)

    @property
    def wanted(self) -> frozenset[str]:
        """The kinds some subscription wants: ``kind in bus.wanted`` is a cheap test to
        make before building an event's data (a subscription's ``accept`` may still turn
        the event down).

        Example::

            if "on_chain_start" in run.bus.wanted:
                emit.emit("on_chain_start", {"input": state})
        """
        wanted = self._wanted
        if wanted is None:
            subs = self._subs
            if any(s.kinds is None for s in subs):
                wanted = _EVERY
            else:
                wanted = frozenset().union(*(s.kinds for s in subs if s.kinds is not None))
            self._wanted = wanted
        return wanted

    def subscriptions(self, kind: str) -> tuple[Subscription, ...]:
        """The subscriptions that want ``kind`` (empty: nobody; do not build the event).

        Example::

            if run.bus.subscriptions("on_custom_event"):
                ...
        """
        try:
            return self._by_kind[kind]
        except KeyError:
            found = tuple(s for s in self._subs if s.kinds is None or kind in s.kinds)
            self._by_kind[kind] = found or _NOBODY
            return found

    def direct(self, kind: str) -> Put | None:
        """A data-only sink for ``kind`` in this bus's namespace (see
        :attr:`Subscription.bind`): when the one subscription for ``kind`` wants nothing
        but events' ``data``; else ``None``. Call it on the event-loop thread only.

        Example::

            put = run.bus.direct("task_end")
            if put is not None:
                put({"node": "a", "update": {...}, "error": None, "interrupt": None})
        """
        try:
            return self._direct[kind]
        except KeyError:
            subs = self.subscriptions(kind)
            only = subs[0] if len(subs) == 1 else None
            put = None
            if only is not None and only.bind is not None and only.accept is None:
                put = only.bind(kind, self.ns)
            self._direct[kind] = put
            return put

    def put_from_thread(self, put: Put, data: Any) -> None:
        """Hand ``data`` to ``put`` (a :meth:`direct` sink) from a worker thread: queued
        with the thread's other events and delivered, in order, on the event loop.

        Example::

            run.bus.put_from_thread(put, {"progress": 0.5})   # in a sync node's thread
        """
        self._inbox.put(put, (data,))

    def emitter(
        self, header: Header | None = None, *, make_header: Callable[[], Header] | None = None
    ) -> Emitter:
        """An :class:`Emitter` whose events carry ``header``, or ``make_header()``'s result,
        made on the first event that needs more than its data.

        Example::

            emit = run.bus.emitter((graph_name, run.run_id, run.parent_ids, run.tags, {}))
            emit.emit("on_chain_start", {"input": state})
        """
        return Emitter(self, header, make_header)

    # -- delivery ----------------------------------------------------------------------

    def _deliver(
        self, subs: tuple[Subscription, ...], kind: str, header: Header, data: Any, name: str | None
    ) -> None:
        """Deliver one event to ``subs``, building the :class:`Event` once if needed;
        ``name``, when given, replaces the header's."""
        if threading.get_ident() != self.loop_thread:
            self._inbox.put(self._deliver, (subs, kind, header, data, name))
            return
        own_name, run_id, parent_ids, tags, metadata = header
        if name is None:
            name = own_name
        event = None
        number = 0
        for sub in subs:
            accept = sub.accept
            if accept is not None and not accept(kind, name, tags, metadata):
                continue
            if not number:
                seq = self._seq
                seq[0] += 1
                number = seq[0]
            if sub.raw:
                sub.callback(kind, name, run_id, parent_ids, tags, metadata, data, number, self.ns)
                continue
            if event is None:
                event = Event(
                    event=kind,
                    name=name,
                    run_id=run_id,
                    parent_ids=parent_ids,
                    tags=tags,
                    metadata=metadata,
                    data=data,
                    seq=number,
                    ns=self.ns,
                )
            sub.callback(event)

    # -- backpressure ------------------------------------------------------------------

    def add_valve(self, valve: Valve) -> None:
        """Register a backpressure valve, asked by producers at their await points.

        A consumer whose bounded queue is full returns an awaitable from ``valve()`` that
        completes when there is room again; ``None`` means no pressure.

        Example::

            run.bus.add_valve(lambda: None if queue_has_room() else wait_for_room())
        """
        self._valves.append(valve)

    def pressure(self) -> Awaitable[None] | None:
        """``None`` while every consumer has room; else an awaitable to wait on until all
        of them have room again. Cheap enough to ask after every chunk.

        Example::

            waiting = run.bus.pressure()
            if waiting is not None:
                await waiting
        """
        for valve in self._valves:
            waiting = valve()
            if waiting is not None:
                return self._relieve(waiting)
        return None

    async def _relieve(self, waiting: Awaitable[None]) -> None:
        await waiting
        for valve in self._valves:  # then every consumer, until all of them have room
            more = valve()
            if more is not None:
                await more

    def flooding(self) -> bool:
        """Whether some consumer's queue is full, asked without waiting for it.

        Example::

            if run.bus.flooding():
                print("the consumer is behind")
        """
        for valve in self._valves:
            waiting = valve()
            if waiting is not None:
                close = getattr(waiting, "close", None)
                if close is not None:  # an unawaited coroutine: no warning for it
                    close()
                return True
        return False

    @property
    def wakeups(self) -> int:
        """How many times the event loop has resumed a node driven by :meth:`paced`: if
        it has not changed between two points of a node's code, the node did not
        suspend in between (nothing else ran on the loop).

        Example::

            before = run.bus.wakeups
        """
        return self._woken[0]

    async def relieve(self) -> None:
        """Wait until every consumer has room again (backpressure).

        Example::

            await run.bus.relieve()
        """
        waiting = self.pressure()
        if waiting is not None:
            await waiting

    def paced(self, coro: Awaitable[T]) -> Awaitable[T]:
        """Await ``coro`` (an async node) so that it is held back at its own await points.

        A node writing events (``writer(...)`` is a plain call) can only be made to wait
        where it suspends. Each time ``coro`` has been woken up, before it goes on, this
        waits for every consumer to have room (:meth:`pressure`). So an async node that
        writes in a loop and awaits anything between writes never runs further ahead of
        its consumers than their queues allow; one that never awaits runs to its end.
        Without a bounded consumer (no valve), or for an awaitable that is not a
        coroutine, ``coro`` itself is returned.

        Example::

            out = await run.bus.paced(node(state))
        """
        if not self._valves or type(coro) is not types.CoroutineType:
            return coro
        return _paced(coro, self, sniffio.current_async_library() == "trio")

    # -- worker threads ----------------------------------------------------------------

    def threads_starting(self) -> None:
        """Call on the loop before a sync node starts in a worker thread: lets its events
        be handed back in batches.

        Example::

            run.bus.threads_starting()
            out = await anyio.to_thread.run_sync(node, state)
            run.bus.threads_done()
        """
        inbox = self._inbox
        if inbox.token is None:
            inbox.token = anyio.lowlevel.current_token()

    def threads_done(self, *, raise_errors: bool = True) -> None:
        """Call on the loop after a sync node's thread returns: its events are all
        delivered before anything emitted next (an error in delivering them is raised
        here, unless ``raise_errors`` is false).

        Example::

            run.bus.threads_done()
        """
        self._inbox.settle(raise_errors=raise_errors)

    def mute_thread(self, ident: int, muted: bool) -> None:
        """Drop (``muted``) or deliver again the events emitted by worker thread
        ``ident``: a sync node whose thread a timeout abandoned speaks no more.

        Example::

            run.bus.mute_thread(thread_ident, True)
        """
        with self._inbox.lock:
            if muted:
                self._inbox.muted.add(ident)
            else:
                self._inbox.muted.discard(ident)


@types.coroutine
def _paced(coro: Coroutine[Any, Any, T], bus: Bus, sticky: bool) -> Generator[Any, Any, T]:
    """:meth:`Bus.paced`: pass ``coro``'s suspensions through to the event loop and,
    whenever the loop wakes it up, wait for room before handing it what it waited for.

    A cancellation while waiting for room: on trio (``sticky``) ``coro`` gets what it
    waited for, and the cancellation (which trio raises again at its next checkpoint);
    on asyncio it gets the cancellation in its place, as an asyncio task cancelled
    between a wake-up and its next step does.
    """
    send = coro.send
    woken = bus._woken
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            if error is None:
                yielded = send(value)
            else:
                thrown, error = error, None
                yielded = coro.throw(thrown)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        try:
            value = yield yielded
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:  # the loop throws a cancellation into the node
            error = exc
            continue
        woken[0] += 1
        if bus._valves:
            waiting = bus.pressure()
            if waiting is not None:
                try:
                    yield from waiting.__await__()
                except GeneratorExit:
                    coro.close()
                    raise
                except BaseException as exc:
                    if not (sticky and isinstance(exc, anyio.get_cancelled_exc_class())):
                        error = exc


class Emitter:
    """Emits the events of one source, all carrying one header.

    Bound once per source: a task (one node execution), one chat-model, tool or retriever
    call, or the graph run itself. The header is ``(name, run_id, parent_ids, tags,
    metadata)``; an emitter made with ``make_header`` builds it on the first event that
    needs it, so a task whose events all go to data-only sinks never makes its id or
    metadata. Safe to call from a worker thread started by the scheduler.

    Example::

        emit = run.bus.emitter(make_header=task_header)
        emit.emit("on_chain_start", {"input": state})
        emit.emit("on_interrupt", data, name="review")   # another name, same header
    """

    __slots__ = ("_by_kind", "_direct", "_header", "_make_header", "bus")

    def __init__(
        self, bus: Bus, header: Header | None, make_header: Callable[[], Header] | None
    ) -> None:
        self.bus = bus
        """The bus this emitter emits into."""
        self._direct = bus._direct  # the bus's per-kind caches (cleared, never replaced)
        self._by_kind = bus._by_kind
        self._header = header
        self._make_header = make_header

    @property
    def header(self) -> Header:
        """``(name, run_id, parent_ids, tags, metadata)`` of this source's events."""
        header = self._header
        if header is None:
            assert self._make_header is not None
            header = self._header = self._make_header()
        return header

    def emit(self, kind: str, data: Any, name: str | None = None) -> None:
        """Emit an event of ``kind`` (built only if some subscription wants it).

        ``name`` replaces the header's name for this one event.

        Example::

            emit.emit("on_tool_end", {"output": 3})
        """
        try:
            direct = self._direct[kind]
        except KeyError:
            direct = self.bus.direct(kind)
        bus = self.bus
        if direct is not None and threading.get_ident() == bus.loop_thread:
            direct(data)  # the one subscriber wants just the data: no id, no metadata
            return
        try:
            subs = self._by_kind[kind]
        except KeyError:
            subs = bus.subscriptions(kind)
        if subs:
            bus._deliver(subs, kind, self._header or self.header, data, name)

    def sink(self, kind: str) -> SourcePut | None:
        """A data-only callable for this source's events of ``kind``, bound once, or
        ``None`` (use :meth:`emit`). Call it on this thread only, with each event's data.

        It is offered when this is the event-loop thread and *every* subscription for
        ``kind`` binds a data-only callable for this source
        (:attr:`Subscription.bind_source`, asked here with this emitter's header): one
        subscription's callable itself, or one that hands the data to each of them in
        subscription order. If any subscription has no ``bind_source`` or declines
        (returns ``None``), the source's events take :meth:`emit`, for all of them.
        Events delivered this way take no sequence number and build no :class:`Event`.

        The callable returns true once nobody wants this source's later events of
        ``kind`` (a tracer that has seen the first token, a stream that filters the
        source out): the source may then stop making them. Calling it again is harmless.

        Example::

            put = emit.sink("on_chat_model_stream")   # once per model call
            wanted = True
            for chunk in chunks:
                if put is None:
                    emit.emit("on_chat_model_stream", {"chunk": chunk})
                elif wanted and put({"chunk": chunk}):
                    wanted = False                     # nobody wants the next ones
        """
        bus = self.bus
        if threading.get_ident() != bus.loop_thread:
            return None
        try:
            subs = self._by_kind[kind]
        except KeyError:
            subs = bus.subscriptions(kind)
        binders = [bind for sub in subs if (bind := sub.bind_source) is not None]
        if not subs or len(binders) != len(subs):
            return None  # (before any is asked: a bind_source may then not be called)
        header = self.header
        puts: list[SourcePut] = []
        for bind in binders:
            put = bind(kind, bus.ns, header)
            if put is None:
                return None
            puts.append(put)
        return puts[0] if len(puts) == 1 else _fan_out(puts)

    def emit_to(self, subs: tuple[Subscription, ...], kind: str, data: Any) -> None:
        """Emit to subscriptions already looked up with :meth:`Bus.subscriptions`, for
        the hottest emitters (a node's stream writer) that keep them (any thread).

        Example::

            subs = run.bus.subscriptions("on_custom_event")   # once
            if subs:
                emit.emit_to(subs, "on_custom_event", payload)
        """
        self.bus._deliver(subs, kind, self._header or self.header, data, None)

    def __repr__(self) -> str:
        name = self._header[0] if self._header is not None else "…"
        return f"Emitter(name={name!r}, ns={self.bus.ns!r})"


def _fan_out(puts: list[SourcePut]) -> SourcePut:
    """One data-only callable handing each event's data to every one of ``puts``, in
    order (an error in one stops the event there, as :meth:`Bus._deliver` does). A put
    that says it wants no more is left out from then on (a tracer that has seen a call's
    first token); once every one has said so, so does this one."""
    live = list(puts)

    def fan(data: Any) -> bool:
        finished: list[SourcePut] | None = None  # (no list made per event, usually)
        for put in live:
            if put(data):
                finished = finished or []
                finished.append(put)
        if finished:
            for put in finished:
                live.remove(put)
        return not live

    return fan


class _Inbox:
    """Events emitted from worker threads (sync nodes), handed to the event loop in batches.

    The first event into an empty inbox schedules one drain on the loop without waiting
    (``run_sync_soon``); later events join that batch. So a sync node writing 50,000
    progress events pays one loop wake-up per batch, not per event, and its events still
    arrive at once when it writes only now and then. Every :data:`_INBOX_LIMIT` events
    (drained or not) the thread waits until they are delivered and consumers have room:
    drains alone never wait for a consumer, so a thread whose events the loop drains as
    fast as it writes them would otherwise run ahead of a slow consumer without limit.
    """

    __slots__ = ("error", "items", "lock", "muted", "root", "since", "token")

    def __init__(self, root: Bus) -> None:
        self.root = root
        self.lock = threading.Lock()
        self.items: list[tuple[Callable[..., None], tuple[Any, ...]]] = []
        self.token: anyio.lowlevel.EventLoopToken | None = None
        self.error: BaseException | None = None
        self.muted: set[int] = set()  # abandoned threads (see Bus.mute_thread)
        self.since = 0  # events put since a thread last waited for consumers to have room

    def put(self, deliver: Callable[..., None], args: tuple[Any, ...]) -> None:
        """Queue ``deliver(*args)`` (one event) from a worker thread (never called on
        the loop thread)."""
        if self.muted and threading.get_ident() in self.muted:
            return
        if self.error is not None:
            error, self.error = self.error, None
            raise error
        with self.lock:
            items = self.items
            items.append((deliver, args))
            count = len(items)
            self.since += 1
            since = self.since
        token = self.token
        if since >= _INBOX_LIMIT or token is None:
            anyio.from_thread.run(self.deliver)
        elif count == 1:
            token.backend_class.run_sync_soon(self.drain, (), token.native_token)

    def drain(self) -> None:
        """Deliver every queued event, in order, on the event-loop thread."""
        with self.lock:
            items, self.items = self.items, []
        for deliver, args in items:
            try:
                deliver(*args)
            except BaseException as exc:  # re-raised in the emitting thread or its node
                if self.error is None:
                    self.error = exc

    async def deliver(self) -> None:
        """Drain, then wait until every consumer has room (backpressure)."""
        self.since = 0
        self.drain()
        await self.root.relieve()
        if self.error is not None:
            error, self.error = self.error, None
            raise error

    def settle(self, *, raise_errors: bool) -> None:
        """On the loop after a sync node returns: deliver what it left, raise what failed."""
        if self.items:
            self.drain()
        if self.error is not None:
            error, self.error = self.error, None
            if raise_errors:
                raise error
