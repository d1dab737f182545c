"""Every exception headwater raises on purpose.

All of them derive from :class:`HeadwaterError`, so ``except HeadwaterError`` catches
anything headwater itself rejected, while an exception raised by your own node code
propagates unchanged (with a note naming the node it came from) — unless it is a
``BaseException`` that is not an ``Exception`` (``SystemExit``, ``KeyboardInterrupt`` …):
that fails the run as a :class:`NodeError`, never the process.

The tree::

    HeadwaterError
    ├── GraphValidationError       (also ValueError)
    ├── GraphInterrupt             (control flow: interrupt())
    ├── GraphRecursionError        (also RecursionError)
    ├── InvalidInputError          (also ValueError)
    ├── InvalidUpdateError         (also ValueError)
    ├── InvalidRouteError          (also ValueError)
    ├── NodeError
    │   └── NodeCancelledError
    ├── RunTimeoutError            (also TimeoutError)
    ├── StreamWriterError          (also RuntimeError)
    ├── UnknownStreamModeError     (also ValueError)
    ├── UnsupportedVersionError    (also ValueError)
    ├── InvalidFilterError         (also ValueError)
    ├── ChatModelError
    ├── CheckpointError
    ├── BrokerError
    │   └── ExpiredPositionError
    ├── QueueError
    ├── SerdeError                 (also ValueError)
    └── PluginError
        ├── PluginLoadError
        └── PluginConflictError

Each message says what was wrong, what was expected and how to fix it::

    >>> from headwater import StateGraph, errors
    >>> from typing import TypedDict
    >>> class S(TypedDict):
    ...     x: int
    >>> g = StateGraph(S)
    >>> g.add_edge("__start__", "missing")
    >>> try:
    ...     g.compile()
    ... except errors.GraphValidationError as e:
    ...     print(e)  # doctest: +ELLIPSIS
    Edge '__start__' -> 'missing' points to unknown node 'missing'. Known nodes: (none). ...
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BrokerError",
    "ChatModelError",
    "CheckpointError",
    "ExpiredPositionError",
    "GraphRecursionError",
    "GraphInterrupt",
    "GraphValidationError",
    "HeadwaterError",
    "InvalidFilterError",
    "InvalidInputError",
    "InvalidRouteError",
    "InvalidUpdateError",
    "NodeCancelledError",
    "NodeError",
    "PluginConflictError",
    "PluginError",
    "PluginLoadError",
    "QueueError",
    "RunTimeoutError",
    "SerdeError",
    "StreamWriterError",
    "UnknownStreamModeError",
    "UnsupportedVersionError",
]


class HeadwaterError(Exception):
    """Base class of every error headwater raises on purpose.

    Example::

        try:
            graph.invoke({"x": 1})
        except HeadwaterError as e:
            print("headwater rejected it:", e)
    """


class GraphValidationError(HeadwaterError, ValueError):
    """The graph as built cannot run: raised by ``add_*`` calls and by ``compile()``.

    The message is one line naming the culprit node, edge, key or reducer.

    Example::

        graph.add_edge("a", "nowhere")
        graph.compile()  # GraphValidationError: Edge 'a' -> 'nowhere' points to unknown node ...
    """


class GraphInterrupt(HeadwaterError):
    """Raised by ``interrupt(value)`` inside a node to pause the run (control flow).

    The scheduler catches it: the step's other tasks finish, their results are saved, and
    the run stops with the interrupt reported to the stream. Don't catch it in node code
    (an ``except Exception`` around ``interrupt()`` would swallow the pause).

    Example::

        answer = interrupt("Approve?")   # raises GraphInterrupt the first time
    """

    def __init__(self, interrupt: Any) -> None:
        super().__init__(
            f"Run paused by interrupt({interrupt.value!r}) in node {interrupt.node!r}."
        )
        self.interrupt = interrupt


class GraphRecursionError(HeadwaterError, RecursionError):
    """A run took more supersteps than ``config["recursion_limit"]`` allows (default 10,007,
    as in LangGraph 1.2).

    Example::

        graph.invoke(state, {"recursion_limit": 100})  # allow longer loops
    """


class InvalidUpdateError(HeadwaterError, ValueError):
    """A node returned something that cannot be applied to the state.

    Raised for a non-mapping return value, an unknown key, or two writes to a key
    without a reducer in one superstep.

    Example::

        def node(state):
            return 42  # InvalidUpdateError: Node 'node' returned int; expected ...
    """


class InvalidInputError(InvalidUpdateError):
    """The input or config given to a run is not acceptable.

    A state the graph's schema does not accept, a malformed config, a checkpointed run
    without a thread id. A subclass of :class:`InvalidUpdateError` (and so of
    ``ValueError``): code written for LangGraph, which reports bad input as
    ``InvalidUpdateError``, catches it unchanged.

    Example::

        graph.invoke([1, 2])  # InvalidInputError: Graph input must be a mapping ...
    """


class InvalidRouteError(HeadwaterError, ValueError):
    """A router or a ``Command(goto=...)`` named a destination the graph does not have.

    Example::

        graph.add_conditional_edges("a", lambda s: "nope", {"yes": "b"})
        # at run time: InvalidRouteError: Router of 'a' returned 'nope' ...
    """


class NodeError(HeadwaterError):
    """A node raised a ``BaseException`` that is not an ``Exception``: it fails the run.

    ``SystemExit`` (``sys.exit()`` in a tool, an ``argparse`` error), ``KeyboardInterrupt``,
    ``GeneratorExit`` or your own ``BaseException`` subclass, raised by a node or by code
    it called (a tool, a model, a middleware, a router), would otherwise stop the event
    loop and every other run of the process (a served graph's ``sys.exit()`` would stop
    the server). The run fails with this error instead; the original exception is its
    ``__cause__``, and ``node`` names the node (``None`` when it came from outside any
    node: a reducer or a hook). Exceptions (``Exception`` subclasses) are never wrapped,
    and a real cancellation of the run is not an error.

    Example::

        try:
            app.invoke(state)
        except NodeError as e:
            print(e.node, type(e.__cause__).__name__)  # 'parse_args' SystemExit
    """

    def __init__(self, message: str, *, node: str | None = None) -> None:
        super().__init__(message)
        self.node = node


class NodeCancelledError(NodeError):
    """A node raised ``CancelledError`` itself, while nothing was cancelling the run.

    ``asyncio.CancelledError`` (or ``trio.Cancelled``) raised by node code with no
    cancellation pending is a failure of that node, not a cancellation: it would
    otherwise look like a run that stopped early, or even succeeded. A real cancellation
    (the consumer left, ``aclose()``, an enclosing cancel scope or task group, a sibling
    task failing, a timeout) is never turned into this error.

    Example::

        async def node(state):
            raise asyncio.CancelledError  # -> NodeCancelledError naming the node
    """


class RunTimeoutError(HeadwaterError, TimeoutError):
    """A run, or one attempt of a node, took longer than its timeout.

    ``config={"timeout": seconds}`` bounds a whole run (``node`` is ``None``);
    ``add_node(..., timeout=seconds)`` bounds each attempt of that node (``node`` names
    it). The work is cancelled; a sync node's worker thread cannot be stopped, so it is
    abandoned and its late result discarded. With a checkpointer, the thread keeps the
    state as of the last finished step and can be resumed with ``invoke(None, config)``.
    A node's timeout is a ``TimeoutError``, which a node's
    :class:`~headwater.retry.RetryPolicy` retries by default; a run's timeout is never
    retried.

    Example::

        try:
            app.invoke(state, {"timeout": 30})
        except RunTimeoutError as e:
            print(e.timeout, e.node)  # 30 None
    """

    def __init__(
        self, message: str, *, timeout: float | None = None, node: str | None = None
    ) -> None:
        super().__init__(message)
        self.timeout = timeout
        self.node = node


class StreamWriterError(HeadwaterError, RuntimeError):
    """A stream writer was used outside a running node, or called with bad arguments.

    Example::

        from headwater import get_stream_writer
        get_stream_writer()  # StreamWriterError: no run is active in this context ...
    """


class UnknownStreamModeError(HeadwaterError, ValueError):
    """``stream_mode`` named a mode no installed plugin provides.

    Example::

        graph.astream(state, stream_mode="value")
        # UnknownStreamModeError: Unknown stream mode 'value'. Did you mean 'values'? ...
    """


class UnsupportedVersionError(HeadwaterError, ValueError):
    """``astream_events`` was asked for a version other than ``"v2"`` (v1 was removed).

    Example::

        app.astream_events(state, version="v1")
        # UnsupportedVersionError: astream_events(version='v1') was removed ...
    """


class InvalidFilterError(HeadwaterError, ValueError):
    """An event filter is not callable, names no installed filter, or has a bad argument.

    Example::

        app.astream_events(state, filters=["no_such_filter"])
        # InvalidFilterError: filters=[...] names unknown filter 'no_such_filter' ...
    """


class ChatModelError(HeadwaterError):
    """A chat model's provider failed, refused the request, or sent an unreadable response.

    Raised by chat-model adapters for HTTP errors (the message names the status and the
    provider's own message; ``status_code`` holds the status), unreachable servers and
    broken streams (malformed or truncated). The run's ``on_chat_model_error`` event
    carries it.

    Example::

        try:
            reply = await llm.ainvoke("hi")
        except ChatModelError as e:
            if e.status_code == 429:
                ...  # rate limited: try again later
    """

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class CheckpointError(HeadwaterError):
    """A checkpoint could not be written or read back safely.

    Example::

        graph.invoke(None, {"configurable": {"thread_id": "t"}})  # nothing to resume
    """


class BrokerError(HeadwaterError):
    """An event broker could not be reached or answered with an error.

    Example::

        broker_from_url("redis://127.0.0.1:1/0")  # BrokerError naming the URL
    """


class ExpiredPositionError(BrokerError):
    """A reader asked for entries after an id the broker no longer keeps.

    The client must restart from the thread's state (``GET /threads/{id}/state``).

    Example::

        await broker.read(run_id, after="1-0", block=0)  # raises if 1-0 was trimmed
    """


class QueueError(HeadwaterError):
    """A run queue could not be reached, or was asked something impossible.

    Example::

        queue_from_url("postgresql://127.0.0.1:1/x")  # QueueError naming the URL
    """


class SerdeError(HeadwaterError, ValueError):
    """A value could not be converted to or from headwater's JSON-safe wire form.

    Example::

        headwater.serde.dumps(object())  # SerdeError naming the type
    """


class PluginError(HeadwaterError):
    """Base class of plugin problems (loading, conflicts, misspelled hooks).

    Example::

        try:
            headwater.get_plugin_manager()
        except PluginError as e:
            print(e)
    """


class PluginLoadError(PluginError):
    """A plugin's entry point failed to import or to register.

    The message names the entry point, its distribution and version, and the cause;
    the original exception is chained as ``__cause__``.

    Example::

        PluginLoadError: Plugin 'broken' (entry point broken = headwater_broken, from
        distribution headwater-broken 0.1.0) failed to load: ModuleNotFoundError: ...
    """


class PluginConflictError(PluginError):
    """Two plugins registered the same name (stream mode, filter, scheme, provider, command).

    Nothing is renamed or silently overridden; the message names both plugins.

    Example::

        PluginConflictError: Stream mode 'values' is registered by both plugin
        'headwater_streams' and plugin 'my_plugin'. Uninstall or block one of them ...
    """
