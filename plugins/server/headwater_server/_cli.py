"""``headwater serve``, ``run``, ``worker`` and ``demo``, added by ``headwater_cli_commands``."""

from __future__ import annotations

import functools
import gc
import importlib
import json
import os
import socket
import sys
import time
from typing import Any

import anyio
import click

from headwater import DEFAULT_RECURSION_LIMIT, CompiledGraph
from headwater.errors import HeadwaterError
from headwater.hookspecs import hookimpl
from headwater.runtime import new_id

__all__ = ["headwater_cli_commands", "load_graph", "render_run"]


def load_graph(spec: str, checkpointer: str | None = None) -> CompiledGraph:
    """Import ``module:attribute`` (a compiled graph, a StateGraph, or a function making one).

    Example::

        load_graph("headwater_server._demo:build_demo")
    """
    from headwater import StateGraph

    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise click.BadParameter(f"expected module:graph, e.g. app.graphs:chat; got {spec!r}")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, "")  # modules in the current directory, as uvicorn finds them
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise click.BadParameter(f"cannot import {module_name!r}: {exc}") from None
    try:
        target: Any = getattr(module, attribute)
    except AttributeError:
        raise click.BadParameter(f"module {module_name!r} has no attribute {attribute!r}") from None
    try:  # a graph that fails to build, or a checkpointer that cannot open: a clear error
        if callable(target) and not isinstance(target, CompiledGraph | StateGraph):
            target = target()
        if isinstance(target, StateGraph):
            target = target.compile(checkpointer=checkpointer, name=attribute)
            checkpointer = None  # applied
    except HeadwaterError as exc:
        raise click.ClickException(f"{spec}: {exc}") from None
    if checkpointer is not None and isinstance(target, CompiledGraph):
        raise click.BadParameter(
            f"{spec!r} is already compiled; --checkpointer applies to a StateGraph target "
            "(or compile the graph with checkpointer=... yourself)"
        )
    if not isinstance(target, CompiledGraph):
        raise click.BadParameter(f"{spec!r} is {type(target).__name__}, not a graph")
    return target


NOT_SEEN: Any = object()
"""What :func:`render_run` returns when filters hid the graph's end (and its final state)."""


async def render_run(
    app: CompiledGraph,
    input: Any,
    config: dict[str, Any],
    modes: list[str],
    filters: dict[str, Any] | None = None,
) -> Any:
    """Stream a run to the terminal: tokens inline, a line per finished node, errors readable.

    ``filters`` are ``astream_events``'s ``include_*`` / ``exclude_*`` arguments.
    """
    from rich.console import Console

    console = Console(highlight=False, soft_wrap=True)
    start = time.perf_counter()
    in_tokens = False
    final: Any = NOT_SEEN

    def stamp() -> str:
        return f"[dim]{time.perf_counter() - start:6.2f}s[/dim]"

    async for event in app.astream_events(input, config, **(filters or {})):
        kind = event["event"]
        if kind == "on_chat_model_stream":
            text = getattr(event["data"]["chunk"], "content", "")
            if text:
                if not in_tokens:
                    console.print(f"{stamp()}  [cyan]{event['name']}[/cyan] ", end="")
                    in_tokens = True
                console.print(text, end="", markup=False)
            continue
        if in_tokens and kind != "on_chat_model_stream":
            console.print()
            in_tokens = False
        node = event["metadata"].get("node")
        if kind == "on_chain_start" and node == event["name"]:
            console.print(f"{stamp()}  [yellow]…[/yellow] {node}")
        elif kind == "on_chain_end" and node == event["name"]:
            console.print(f"{stamp()}  [green]✓[/green] {node}")
        elif kind == "on_chain_end" and not node:
            final = event["data"]["output"]
        elif kind == "on_custom_event" and "custom" in modes:
            console.print(f"{stamp()}    [magenta]{event['name']}[/magenta] {event['data']}")
        elif kind == "on_interrupt":
            console.print(
                f"{stamp()}  [bold yellow]paused[/bold yellow] at {event['name']}: "
                f"{event['data']['value']!r}"
            )
    return final


def freeze_startup_objects() -> None:
    """Collect once, then hide everything alive at start-up from later collections.

    A long-running ``headwater serve`` or ``headwater worker`` holds tens of thousands of
    start-up objects (imports, plugins, the compiled graphs, the app) that a full garbage
    collection would otherwise rescan again and again while tokens stream; measured, that
    cost the token path about a quarter of its throughput (docs/performance.md, "Garbage
    collection"). Called by the commands right before they start serving, never by the
    library itself: a library must not change its host process's collector.

    Example::

        freeze_startup_objects()
        assert gc.get_freeze_count() > 0
    """
    gc.collect()
    gc.freeze()


def _load_all(specs: tuple[str, ...], checkpointer: str | None) -> dict[str, CompiledGraph]:
    loaded: dict[str, CompiledGraph] = {}
    for spec in specs:
        graph = load_graph(spec, checkpointer)
        loaded[graph.name if graph.name not in loaded else spec] = graph
    return loaded


@hookimpl
def headwater_cli_commands(cli: click.Group) -> None:
    """Add ``headwater serve``, ``headwater worker``, ``headwater run`` and ``headwater demo``."""

    @cli.command()
    @click.option(
        "--question", default="Where do rivers flow?", show_default=True, help="What to ask."
    )
    def demo(question: str) -> None:
        """Run the demo agent once, streaming each step and token to the terminal."""
        from ._demo import run_demo

        run_demo(question=question)

    @cli.command()
    @click.argument("graphs", nargs=-1, required=True)
    @click.option("--host", default="127.0.0.1", show_default=True)
    @click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
    @click.option(
        "--api-key", "api_keys", multiple=True, help="Require this bearer token (repeatable)."
    )
    @click.option(
        "--checkpointer",
        default=None,
        help="Checkpointer URL for StateGraph targets, e.g. sqlite:///runs.db.",
    )
    @click.option(
        "--on-disconnect",
        type=click.Choice(["cancel", "continue"]),
        default="cancel",
        show_default=True,
    )
    @click.option(
        "--broker", default=None, help="Event broker URL shared by servers, e.g. redis://…"
    )
    @click.option(
        "--queue", default=None, help="Run queue URL (postgresql://…): workers execute the runs."
    )
    @click.option(
        "--allow-origin",
        "allowed_origins",
        multiple=True,
        help="A web origin whose pages may call this server (CORS; repeatable, or '*').",
    )
    @click.option(
        "--max-recursion-limit",
        default=DEFAULT_RECURSION_LIMIT,
        show_default=True,
        type=click.IntRange(min=1),
        help="Largest recursion_limit a run may ask for.",
    )
    @click.option(
        "--max-run-timeout",
        default=None,
        type=click.FloatRange(min=0, min_open=True),
        help="Largest timeout (seconds) a run may ask for (default: no cap).",
    )
    @click.option(
        "--otel",
        is_flag=True,
        help="Trace every run with OpenTelemetry (needs headwater-otel; OTEL_* variables "
        "say where the spans go).",
    )
    @click.option(
        "--metrics",
        is_flag=True,
        help="Serve Prometheus metrics on GET /metrics (behind the API key, if any).",
    )
    def serve(
        graphs: tuple[str, ...],
        host: str,
        port: int,
        api_keys: tuple[str, ...],
        checkpointer: str | None,
        on_disconnect: str,
        broker: str | None,
        queue: str | None,
        allowed_origins: tuple[str, ...],
        max_recursion_limit: int,
        max_run_timeout: float | None,
        otel: bool,
        metrics: bool,
    ) -> None:
        """Serve graphs (module:graph …) over HTTP: SSE, WebSocket, runs API, browser page."""
        import uvicorn

        from ._app import create_app

        if otel:
            _enable_otel()
        loaded = _load_all(graphs, checkpointer)
        try:
            app = create_app(
                loaded,
                api_keys=api_keys or None,
                on_disconnect=on_disconnect,  # type: ignore[arg-type]
                broker=broker,
                queue=queue,
                allowed_origins=allowed_origins,
                max_recursion_limit=max_recursion_limit,
                max_run_timeout=max_run_timeout,
                metrics=metrics,
            )
        except (HeadwaterError, ValueError) as exc:
            raise click.ClickException(str(exc)) from None
        listening = _bind(host, port)  # a port in use fails here, before "serving on"
        port = listening.getsockname()[1]
        access = (
            f"API key required ({len(api_keys)} key{'s' if len(api_keys) > 1 else ''})"
            if api_keys
            else "OPEN: no API key, anyone who can reach this address can run the graphs"
        )
        click.echo(
            f"headwater: serving {', '.join(sorted(loaded))} on http://{_show(host)}:{port}/ "
            f"({access})"
        )
        config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5)
        freeze_startup_objects()
        _graceful_server(config, app.state.headwater).run(sockets=[listening])

    @cli.command()
    @click.argument("graphs", nargs=-1, required=True)
    @click.option("--queue", required=True, help="Run queue URL, e.g. postgresql://…")
    @click.option("--broker", required=True, help="Event broker URL, e.g. redis://…")
    @click.option("--checkpointer", default=None, help="Checkpointer URL for StateGraph targets.")
    @click.option(
        "--lease", default=30.0, show_default=True, help="Lease seconds (renewed at 1/3)."
    )
    @click.option("--poll", default=0.5, show_default=True, help="Seconds between empty claims.")
    @click.option("--name", default=None, help="Worker name (default: host and a random id).")
    @click.option(
        "--concurrency",
        default=8,
        show_default=True,
        type=click.IntRange(min=1),
        help="Runs executed at once by this process.",
    )
    @click.option(
        "--max-attempts",
        default=3,
        show_default=True,
        type=click.IntRange(min=1),
        help="Claims of one run before it fails (a run that kills its worker).",
    )
    @click.option(
        "--otel",
        is_flag=True,
        help="Trace every run with OpenTelemetry (needs headwater-otel; OTEL_* variables "
        "say where the spans go).",
    )
    @click.option(
        "--metrics-port",
        default=None,
        type=click.IntRange(0, 65535),
        help="Serve Prometheus metrics on this port (/metrics; 0: any free port).",
    )
    @click.option(
        "--metrics-host",
        default="127.0.0.1",
        show_default=True,
        help="Address of the metrics port (0.0.0.0 for a scraper on another host).",
    )
    def worker(
        graphs: tuple[str, ...],
        queue: str,
        broker: str,
        checkpointer: str | None,
        lease: float,
        poll: float,
        name: str | None,
        concurrency: int,
        max_attempts: int,
        otel: bool,
        metrics_port: int | None,
        metrics_host: str,
    ) -> None:
        """Claim queued runs and execute them, publishing their events to the broker."""
        from headwater.broker import broker_from_url
        from headwater.queue import queue_from_url

        from ._metrics import OFF, Metrics
        from ._worker import work

        if otel:
            _enable_otel()
        loaded = _load_all(graphs, checkpointer)
        try:
            the_queue = queue_from_url(queue)
            the_broker = broker_from_url(broker)
        except HeadwaterError as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(f"headwater: worker for {', '.join(sorted(loaded))} on {queue.split('@')[-1]}")
        kept: Metrics = OFF
        if metrics_port is not None:
            kept = _metrics_port(metrics_host, metrics_port)
        freeze_startup_objects()
        anyio.run(
            functools.partial(
                work,
                loaded,
                the_queue,
                the_broker,
                lease=lease,
                poll=poll,
                worker=name,
                concurrency=concurrency,
                max_attempts=max_attempts,
                metrics=kept,
            )
        )

    @cli.command()
    @click.argument("graph")
    @click.option(
        "--input",
        "input_json",
        default="{}",
        show_default=True,
        help="The input state as JSON ('null' resumes).",
    )
    @click.option("--thread-id", default=None, help="Thread to run on (with a checkpointer).")
    @click.option("--checkpointer", default=None, help="Checkpointer URL for a StateGraph target.")
    @click.option(
        "--stream-mode",
        "modes",
        multiple=True,
        default=("custom",),
        show_default=True,
        type=click.Choice(["custom", "none"]),
        help="Extra output besides tokens and node lines: custom events, or none.",
    )
    @click.option(
        "--include-types",
        multiple=True,
        help="Show only these run types (chain, chat_model, tool …) or event types.",
    )
    @click.option("--exclude-types", multiple=True, help="Hide these run types or event types.")
    def run(
        graph: str,
        input_json: str,
        thread_id: str | None,
        checkpointer: str | None,
        modes: tuple[str, ...],
        include_types: tuple[str, ...],
        exclude_types: tuple[str, ...],
    ) -> None:
        """Run a graph once and render its stream in the terminal."""
        app = load_graph(graph, checkpointer)
        try:
            input = json.loads(input_json)
        except ValueError as exc:
            raise click.BadParameter(f"--input is not valid JSON: {exc}") from None
        config: dict[str, Any] = {}
        if thread_id is None and app.checkpointer is not None:
            thread_id = new_id()
            click.echo(f"thread: {thread_id}", err=True)
        if thread_id is not None:
            config["configurable"] = {"thread_id": thread_id}
        try:
            filters = {
                name: list(value)
                for name, value in (
                    ("include_types", include_types),
                    ("exclude_types", exclude_types),
                )
                if value
            }
            final = anyio.run(render_run, app, input, config, list(modes), filters)
        except HeadwaterError as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            sys.exit(1)
        except Exception as exc:
            notes = "".join(f"\n  {n}" for n in getattr(exc, "__notes__", ()))
            click.secho(
                f"error in the graph: {type(exc).__name__}: {exc}{notes}", fg="red", err=True
            )
            sys.exit(1)
        if final is not NOT_SEEN:
            click.echo(json.dumps(_plain(final), indent=2, default=str))


def _enable_otel() -> None:
    """``--otel``: trace every run of this process with headwater-otel."""
    try:
        otel = importlib.import_module("headwater_otel")
    except ImportError:
        raise click.ClickException(
            "--otel needs the OpenTelemetry plugin: pip install headwater-otel"
        ) from None
    otel.enable()


def _metrics_port(host: str, port: int) -> Any:
    """Serve a worker's Prometheus metrics on ``host:port`` (a daemon thread)."""
    from prometheus_client import start_http_server

    from ._metrics import PrometheusMetrics

    metrics = PrometheusMetrics("worker")
    try:
        server, _ = start_http_server(port, host, registry=metrics.registry)
    except OSError as exc:
        raise click.ClickException(
            f"cannot serve metrics on {_show(host)}:{port}: {exc.strerror or exc}"
        ) from None
    bound = server.server_port
    click.echo(f"headwater: metrics on http://{_show(host)}:{bound}/metrics")
    return metrics


def _graceful_server(config: Any, engine: Any) -> Any:
    """uvicorn's server, whose Ctrl-C first ends the runs and streams (each run gets its
    terminal event), so the connections close and the process exits at once."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            super().handle_exit(sig, frame)
            engine.request_shutdown()

    return Server(config)


def _bind(host: str, port: int) -> socket.socket:
    """Listen on ``host:port`` now, so that a port in use is a clear error at once."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise click.ClickException(
            f"cannot listen on {_show(host)}:{port}: {exc.strerror or exc}"
            + (" (another process uses that port; pick another with --port)" if port else "")
        ) from None
    # Connections accepted on it inherit TCP_NODELAY: without it, the last small write of
    # each SSE stream waited for a delayed ACK (+40 ms a run, measured by serve.py).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _show(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _plain(value: Any) -> Any:
    from ._wire import plain

    try:
        return plain(value)
    except ValueError:
        return repr(value)
