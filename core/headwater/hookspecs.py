"""The plugin contract: every hook headwater calls, with its exact signature.

This module *is* the reference documentation for plugin authors. A plugin is a module
(or object) with functions marked ``@headwater.hookimpl`` whose names match the specs
below; it is installed by declaring an entry point in the ``headwater`` group::

    # pyproject.toml of distribution "headwater-hello"
    [project.entry-points.headwater]
    hello = "headwater_hello"

    # headwater_hello/__init__.py
    import headwater

    @headwater.hookimpl
    def headwater_cli_commands(cli):
        @cli.command()
        def hello():
            print("hello from a plugin")

There are two kinds of hooks:

* **Registration hooks** (plural nouns) return a mapping ``{name: thing}``. headwater calls
  each once per plugin manager and caches the merged result. Two plugins claiming the
  same name is a :class:`~headwater.errors.PluginConflictError` naming both.
* **Execution hooks** are called once per run, per step or per task — never per event.
  Per-event work goes through the plain callables returned by
  :func:`headwater_event_subscribers`, which the emitter calls directly.

pluggy is synchronous. Where a hook may do I/O, an implementation may be an ordinary
function returning an awaitable (for example an ``async def`` function, whose call
returns a coroutine); the caller awaits it. Each spec says whether that is allowed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import click

    from headwater.events import Subscription
    from headwater.runtime import NodeMiddleware, Run, Task

__all__ = [
    "EVENTS_MODE",
    "hookimpl",
    "hookspec",
    "headwater_brokers",
    "headwater_chat_models",
    "headwater_checkpointers",
    "headwater_cli_commands",
    "headwater_event_filters",
    "headwater_event_subscribers",
    "headwater_run_end",
    "headwater_run_queues",
    "headwater_run_start",
    "headwater_serde_types",
    "headwater_sinks",
    "headwater_step_end",
    "headwater_stream_modes",
    "headwater_wrap_node",
]

PROJECT_NAME = "headwater"

EVENTS_MODE = "events"
"""The stream mode ``astream_events`` streams: whichever plugin registers a mode under this
name (``headwater-streams`` does) supplies the ``astream_events`` projection.

Example::

    @headwater.hookimpl
    def headwater_stream_modes():
        return {EVENTS_MODE: lambda run: StreamMode(kinds=PUBLIC_KINDS, project=Event.to_dict)}
"""

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
"""Marker for hook specifications of project ``"headwater"`` (used in this module only).

Example::

    @hookspec
    def headwater_stream_modes() -> Mapping[str, Any] | None:
        ...  # the docstring documents the hook
"""

hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
"""Marker for hook implementations; re-exported as ``headwater.hookimpl``.

Example::

    @headwater.hookimpl
    def headwater_stream_modes():
        return {"shout": make_shout_mode}
"""


# ---------------------------------------------------------------------------------------
# Registration hooks: called once per plugin manager, results merged and cached.
# ---------------------------------------------------------------------------------------


@hookspec
def headwater_stream_modes() -> Mapping[str, Any] | None:
    """Register stream modes for ``astream(stream_mode=...)``.

    **Called:** once per plugin manager; the merged result is cached.

    **Returns:** a mapping of mode name to a factory ``factory(run) -> StreamMode``
    (:class:`headwater.events.StreamMode`), called once per run that asks for the mode;
    or ``None`` to register nothing. Two plugins registering one name is a
    ``PluginConflictError``. The mode named :data:`EVENTS_MODE` (``"events"``) is what
    ``astream_events`` streams.

    **Async:** no.

    Example::

        @headwater.hookimpl
        def headwater_stream_modes():
            def node_names(run):
                return StreamMode(kinds=frozenset({"on_chain_start"}),
                                  project=lambda e: e.name if "node" in e.metadata else SKIP)
            return {"node_names": node_names}
    """


@hookspec
def headwater_event_filters() -> Mapping[str, Any] | None:
    """Register named event filters for ``astream_events(filters=[...])``.

    The ``include_*`` / ``exclude_*`` keyword arguments of ``astream_events`` are themselves
    named filters (``include_names``, ``exclude_types`` …) supplied by ``headwater-filters``;
    keyword filters that share an ``EventFilter.any_of`` group pass an event when any one
    of them does (how ``include_*`` arguments combine).

    **Called:** once per plugin manager; the merged result is cached.

    **Returns:** a mapping of filter name to a factory ``factory(argument) -> EventFilter``
    (:class:`headwater.events.EventFilter`), called once per run that uses the filter;
    or ``None``.

    **Async:** no.

    Example::

        @headwater.hookimpl
        def headwater_event_filters():
            tokens = frozenset({"on_chat_model_stream"})
            return {"only_tokens": lambda _arg: EventFilter(kinds=tokens)}
    """


@hookspec
def headwater_checkpointers() -> Mapping[str, Any] | None:
    """Register checkpointer backends by URL scheme (``memory``, ``sqlite``, ``postgresql``).

    ``compile(checkpointer="sqlite:///app.db")`` looks the scheme up here.

    **Called:** once per plugin manager; the merged result is cached.

    **Returns:** a mapping of URL scheme to a factory ``factory(url: str) -> Checkpointer``;
    or ``None``.

    **Async:** no (the checkpointer's own methods are async).

    Example::

        @headwater.hookimpl
        def headwater_checkpointers():
            return {"sqlite": SqliteCheckpointer.from_url}
    """


@hookspec
def headwater_brokers() -> Mapping[str, Any] | None:
    """Register event brokers by URL scheme (``memory``, ``redis``).

    A broker carries runs' event logs between API servers and workers
    (``headwater serve --broker redis://…``).

    **Called:** once per plugin manager; the merged result is cached.

    **Returns:** a mapping of URL scheme to a factory ``factory(url: str) -> Broker``
    (:class:`headwater.broker.Broker`); or ``None``.

    **Async:** no (the broker's own methods are async).

    Example::

        @headwater.hookimpl
        def headwater_brokers():
            return {"redis": RedisBroker.from_url}
    """


@hookspec
def headwater_run_queues() -> Mapping[str, Any] | None:
    """Register run queues by URL scheme (``postgresql``) for servers and workers.

    ``headwater serve --queue URL`` enqueues runs there; ``headwater worker --queue URL``
    claims and executes them.

    **Called:** once per plugin manager; the merged result is cached.

    **Returns:** a mapping of URL scheme to a factory ``factory(url: str) -> RunQueue``
    (:class:`headwater.queue.RunQueue`); or ``None``.

    **Async:** no (the queue's own methods are async).

    Example::

        @headwater.hookimpl
        def headwater_run_queues():
            return {"postgresql": PostgresRunQueue.from_url}
    """


@hookspec
def headwater_chat_models() -> Mapping[str, Any] | None:
    """Register chat-model providers for ``init_chat_model("provider:model")``.

    **Called:** once per plugin manager; the merged result is cached.

    **Returns:** a mapping of provider prefix to a factory
    ``factory(model: str, **kwargs) -> ChatModel``; or ``None``.

    **Async:** no.

    Example::

        @headwater.hookimpl
        def headwater_chat_models():
            return {"openai": lambda model, **kw: ChatOpenAI(model=model, **kw)}
    """


@hookspec
def headwater_sinks() -> Mapping[str, Any] | None:
    """Register sinks that carry a run's events somewhere else (a file, a queue, a socket).

    A run names the sinks it wants in its config, ``config={"sinks": ["name:target"]}``;
    the run calls ``factory(target)`` when it starts, subscribes the returned sink's
    ``subscription()`` and calls its ``close()`` (which may return an awaitable) after
    the run's last event. See :mod:`headwater.sinks`.

    **Called:** once per plugin manager; the merged result is cached.

    **Returns:** a mapping of sink name to a sink factory; or ``None``.

    **Async:** no.

    Example::

        @headwater.hookimpl
        def headwater_sinks():
            return {"jsonl": JsonlSink}  # app.invoke(state, {"sinks": ["jsonl:run.jsonl"]})
    """


@hookspec
def headwater_serde_types() -> Mapping[str, type] | None:
    """Register attrs classes that checkpoints and transports may store and rebuild.

    ``headwater.serde`` rebuilds only registered types (never pickle), so a plugin whose
    values live in graph state or event data registers them here.

    **Called:** once per process, the first time anything is (de)serialised.

    **Returns:** a mapping of stable type name to attrs class; or ``None``. A name
    already taken by another class is a ``SerdeError``.

    **Async:** no.

    Example::

        @headwater.hookimpl
        def headwater_serde_types():
            return {"myplugin.Citation": Citation}
    """


@hookspec
def headwater_cli_commands(cli: click.Group) -> None:
    """Add commands to the ``headwater`` command line.

    **Called:** once each time the ``headwater`` CLI starts.

    **Parameters:** ``cli`` — the root :class:`click.Group`; add commands with
    ``cli.add_command(cmd)`` or the ``@cli.command()`` decorator. A name another plugin
    already added is a ``PluginConflictError``.

    **Returns:** ``None``.

    **Async:** no.

    Example::

        @headwater.hookimpl
        def headwater_cli_commands(cli):
            @cli.command()
            def hello():
                click.echo("hello")
    """


# ---------------------------------------------------------------------------------------
# Execution hooks: called per run, per step or per task — never per event.
# ---------------------------------------------------------------------------------------


@hookspec
def headwater_run_start(run: Run) -> Any:
    """A graph run is starting (before its first event).

    **Called:** once per run, after the run's subscribers are resolved.

    **Parameters:** ``run`` — the :class:`headwater.runtime.Run` (``run_id``, ``graph_name``,
    ``config``, ``input``).

    **Returns:** ``None``, or an awaitable that the scheduler awaits before the first step.

    **Async:** yes (return an awaitable).

    Example::

        @headwater.hookimpl
        def headwater_run_start(run):
            log.info("run %s of %s started", run.run_id, run.graph_name)
    """


@hookspec
def headwater_run_end(run: Run, error: BaseException | None) -> Any:
    """A graph run has finished, successfully (``error is None``) or not.

    **Called:** once per run, after its last event, also when it failed or was cancelled.

    **Parameters:** ``run`` — the :class:`headwater.runtime.Run`; ``error`` — the exception
    that ended the run, or ``None`` on success.

    **Returns:** ``None``, or an awaitable that the scheduler awaits (shielded from
    cancellation).

    **Async:** yes (return an awaitable).

    Example::

        @headwater.hookimpl
        def headwater_run_end(run, error):
            metrics.count("runs", ok=error is None)
    """


@hookspec
def headwater_wrap_node(task: Task) -> NodeMiddleware | None:
    """Wrap one execution of a node: retries, timing, tracing, rate limits.

    **Called:** once per task (one node execution), only while at least one plugin
    implements this hook; the middlewares are composed once per task, first registered
    outermost.

    **Parameters:** ``task`` — the :class:`headwater.runtime.Task` about to run (``node``,
    ``step``, ``input``, ``triggers``, ``path``, ``tags``, ``metadata``).

    **Returns:** an async middleware ``async def middleware(call_next, task)`` that must
    ``return await call_next(task)`` (or retry it, or raise); or ``None`` to leave this
    task alone.

    **Async:** the middleware is ``async``; the hook itself is not.

    Example::

        @headwater.hookimpl
        def headwater_wrap_node(task):
            async def timed(call_next, task):
                start = time.perf_counter()
                try:
                    return await call_next(task)
                finally:
                    print(task.node, time.perf_counter() - start)
            return timed
    """


@hookspec
def headwater_step_end(run: Run, step: int) -> Any:
    """A superstep has finished and its writes have been applied to the state.

    **Called:** once per superstep, only while at least one plugin implements this hook.

    **Parameters:** ``run`` — the :class:`headwater.runtime.Run`; ``step`` — the number of
    the step that ended (the input is step 0, the first node step is 1).

    **Returns:** ``None``, or an awaitable that the scheduler awaits before the next step.

    **Async:** yes (return an awaitable).

    Example::

        @headwater.hookimpl
        def headwater_step_end(run, step):
            print(f"step {step} of run {run.run_id} done")
    """


@hookspec
def headwater_event_subscribers(run: Run) -> list[Subscription] | None:
    """Subscribe to a run's events.

    This is the only way into the event stream, and it is resolved once: the emitter
    keeps the returned subscriptions and calls them directly for every matching event
    (no pluggy call per event). An event kind nobody subscribed to is never built.

    **Called:** once per root run, before ``headwater_run_start``; a subgraph's run shares
    its root run's subscriptions (and its events reach them).

    **Parameters:** ``run`` — the :class:`headwater.runtime.Run` about to start.

    **Returns:** a list of :class:`headwater.events.Subscription` (a callback and the
    event kinds it wants, ``None`` meaning all); or ``None`` for no subscription. The
    callbacks are synchronous, run on the event-loop thread, and must be quick: hand the
    event to a queue if there is I/O to do.

    **Async:** no.

    Example::

        @headwater.hookimpl
        def headwater_event_subscribers(run):
            return [Subscription(callback=print, kinds=frozenset({"on_chain_error"}))]
    """
