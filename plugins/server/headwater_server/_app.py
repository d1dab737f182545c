"""The HTTP edge: runs, threads, SSE and WebSocket streaming, the browser page.

It authenticates, checks what clients send (:mod:`._requests`) and streams run logs; the
run engine (:mod:`._engine`) does the rest, so another protocol can sit on the same
engine.
"""

from __future__ import annotations

import contextlib
import hmac
from collections.abc import AsyncIterator, Iterable, Mapping
from importlib import resources
from typing import Any, Literal
from urllib.parse import urlsplit

import anyio
import anyio.abc
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from headwater import DEFAULT_RECURSION_LIMIT, CompiledGraph
from headwater.broker import Broker, ExpiredPositionError, MemoryBroker, broker_from_url
from headwater.queue import RunQueue, queue_from_url

from ._engine import Engine, RunRecord
from ._frames import FRAMES, Compactor
from ._metrics import Metrics, metrics_for
from ._protocol import Protocol
from ._requests import (
    RUN_FIELDS,
    ApiError,
    Limits,
    check_thread_id,
    parse_json,
    run_request,
)
from ._runs import TERMINAL, encode_json
from ._threads import principal
from ._tracing import with_trace_context
from ._wire import plain

__all__ = ["ApiError", "create_app", "mount"]

_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "Connection": "keep-alive"}
_STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_UNREAD = object()


class _Edge:
    """Per-app settings of the HTTP edge and the helpers every endpoint uses."""

    def __init__(
        self,
        engine: Engine,
        api_keys: frozenset[str] | None,
        on_disconnect: str,
        allowed_origins: frozenset[str],
        first_message_timeout: float,
    ) -> None:
        self.engine = engine
        self.limits = engine.limits
        self.api_keys = (
            None
            if api_keys is None
            else [k.encode("utf-8", "surrogatepass") for k in sorted(api_keys)]
        )
        self.on_disconnect = on_disconnect
        self.allowed_origins = allowed_origins
        self.first_message_timeout = first_message_timeout

    def authenticate(self, headers: Mapping[str, str], query: Mapping[str, str]) -> str:
        """The request's principal (a hash of its key); 401 without a valid key."""
        if self.api_keys is None:
            return principal(None)
        header = headers.get("authorization", "")
        key = (
            header[7:].strip() if header.lower().startswith("bearer ") else query.get("api_key", "")
        )
        if not key:  # the LangGraph SDKs send their key as x-api-key
            key = headers.get("x-api-key", "").strip()
        # Headers arrive as latin-1 text, query strings as UTF-8: compare bytes, so no key
        # (non-ASCII, a lone surrogate) can make the comparison itself fail.
        given = key.encode("utf-8", "surrogatepass")
        if not key or not any(hmac.compare_digest(given, k) for k in self.api_keys):
            raise ApiError(
                401,
                "unauthorized",
                "Send a valid API key: 'Authorization: Bearer <key>' or 'x-api-key: <key>'.",
            )
        return principal(key)

    def check_origin(self, headers: Mapping[str, str]) -> None:
        """Refuse a browser request from another site (CSRF, cross-site WebSocket).

        ``Origin`` is sent by browsers on every cross-site POST and WebSocket; it must be
        this server's own origin or one of ``allowed_origins``. A request without
        ``Origin`` (curl, SDKs, servers) is not a browser's and passes.
        """
        origin = headers.get("origin")
        if origin is None or "*" in self.allowed_origins or origin in self.allowed_origins:
            return
        host = headers.get("host", "")
        parts = urlsplit(origin)
        netloc = parts.netloc.lower()
        default = {"http": ":80", "https": ":443", "ws": ":80", "wss": ":443"}.get(parts.scheme)
        if default and netloc.endswith(default):
            netloc = netloc[: -len(default)]
        ours = host.lower()
        if default and ours.endswith(default):
            ours = ours[: -len(default)]
        if not netloc or netloc != ours:
            raise ApiError(
                403,
                "forbidden_origin",
                f"Requests from origin {origin!r:.80} are not allowed; start the server with "
                "allowed_origins=[...] (--allow-origin) to let that site use it.",
            )

    async def body(self, request: Request) -> Any:
        """The request's JSON body (``None`` if empty), within the limits."""
        cached = getattr(request.state, "headwater_body", _UNREAD)
        if cached is not _UNREAD:
            return cached
        request.state.headwater_body = body = await self._read_body(request)
        return body

    async def _read_body(self, request: Request) -> Any:
        limit = self.limits.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isascii() and declared.isdigit():
            if int(declared) > limit:
                raise ApiError(413, "body_too_large", f"Request body exceeds {limit} bytes.")
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, "body_too_large", f"Request body exceeds {limit} bytes.")
            chunks.append(chunk)
        raw = b"".join(chunks)
        kind = request.headers.get("content-type")
        if (kind is not None or raw) and not _is_json(kind):
            raise ApiError(
                415,
                "unsupported_media_type",
                f"Send JSON with 'Content-Type: application/json'; got {kind!r:.60}.",
            )
        if not raw.strip():
            return None
        return parse_json(raw, self.limits)

    async def object_body(self, request: Request, fields: tuple[str, ...]) -> dict[str, Any]:
        """A JSON object body holding only ``fields`` (``{}`` if empty)."""
        body = await self.body(request)
        if body is None:
            return {}
        if not isinstance(body, dict):
            raise ApiError(400, "bad_request", "Request body must be a JSON object.")
        unknown = [k for k in body if k not in fields]
        if unknown:
            raise ApiError(
                400,
                "unknown_field",
                f"Unknown field {unknown[0]!r:.60}; accepted fields: {', '.join(fields)}.",
            )
        return body

    def graph(self, name: str | None) -> tuple[str, CompiledGraph]:
        graphs = self.engine.graphs
        if name is None and len(graphs) == 1:
            return next(iter(graphs.items()))
        if name is None:
            raise ApiError(400, "graph_required", f"Name the graph: one of {sorted(graphs)}.")
        if name not in graphs:
            raise ApiError(
                404, "unknown_graph", f"Unknown graph {name!r:.60}; graphs: {sorted(graphs)}."
            )
        return name, graphs[name]

    def sse(
        self,
        run_id: str,
        after: str | None,
        cancel: RunRecord | None,
        *,
        compact: Compactor | None = None,
    ) -> StreamingResponse:
        """Stream a run's log after ``after``; cancel ``cancel`` if the client goes away;
        with ``compact``, in compact frames (see :mod:`._frames`)."""

        async def frames() -> AsyncIterator[str]:
            ended = False
            yield f"retry: 2000\n: run {run_id}\n\n"
            self.engine.metrics.client_connected("sse")
            try:
                async for batch in self.engine.follow(run_id, after):
                    if not batch:
                        yield ": ping\n\n"
                        continue
                    ended = batch[-1].event in TERMINAL
                    yield "".join(  # one write per batch of entries, not per event
                        f"{'id: ' + e.id + chr(10) if e.id else ''}event: {e.event}\n"
                        f"data: {e.data if compact is None else compact(e.data)}\n\n"
                        for e in batch
                    )
            except ExpiredPositionError as exc:
                # A client too slow for the log's retention: the server ends its stream,
                # the run goes on (a slow client never holds a run or memory hostage).
                ended = True
                data = encode_json({"type": "expired", "message": str(exc)})
                yield f"event: error\ndata: {data}\n\n"
            finally:
                self.engine.metrics.client_disconnected("sse")
                if cancel is not None and not ended and not cancel.finished:
                    with anyio.CancelScope(shield=True):
                        await self.engine.cancel(cancel.run_id, cancel.owner)

        return StreamingResponse(frames(), media_type="text/event-stream", headers=_SSE_HEADERS)


def _frames(request: Request) -> Compactor | None:
    """The ``frames`` query parameter of a stream request: a :class:`Compactor` for
    ``compact``, ``None`` for ``full`` (the default)."""
    frames = request.query_params.get("frames", "full")
    if frames not in FRAMES:
        raise ApiError(
            400,
            "bad_frames",
            f"frames={frames!r:.40} is not a frame format; use one of: {', '.join(FRAMES)}.",
        )
    return Compactor() if frames == "compact" else None


def _is_json(content_type: str | None) -> bool:
    if content_type is None:
        return False
    kind = content_type.split(";", 1)[0].strip().lower()
    return kind == "application/json" or (
        kind.startswith("application/") and kind.endswith("+json")
    )


def create_app(
    graphs: CompiledGraph | Mapping[str, CompiledGraph],
    *,
    api_keys: Iterable[str] | None = None,
    on_disconnect: Literal["cancel", "continue"] = "cancel",
    max_body_bytes: int = 1_048_576,
    heartbeat: float = 15.0,
    max_runs: int = 1000,
    broker: Broker | str | None = None,
    queue: RunQueue | str | None = None,
    first_message_timeout: float = 30.0,
    allowed_origins: Iterable[str] = (),
    max_recursion_limit: int = DEFAULT_RECURSION_LIMIT,
    max_run_timeout: float | None = None,
    max_depth: int = 100,
    lease: float = 30.0,
    max_active_runs: int = 1000,
    metrics: bool | Metrics = False,
) -> Starlette:
    """The headwater ASGI app serving ``graphs`` (one graph, or a mapping name → graph).

    ``api_keys`` turns on bearer-token auth (a thread belongs to the key that created it);
    ``on_disconnect`` says what happens to a run whose streaming client goes away;
    ``max_body_bytes`` caps request bodies; ``heartbeat`` is the SSE keep-alive interval;
    ``max_runs`` bounds how many finished runs this process remembers; ``broker`` (an
    instance or a URL such as ``redis://…``) carries run logs: in-process by default,
    shared with other server instances through Redis. With ``queue`` (an instance or a
    URL such as ``postgresql://…``) this server executes nothing itself: it enqueues runs
    for ``headwater worker`` processes and streams them from the broker. A WebSocket
    client must send its first message within ``first_message_timeout`` seconds.

    ``allowed_origins`` lists the web origins (``https://app.example.com``, or ``*``)
    whose pages may call this server from a browser (CORS); other sites' POSTs and
    WebSockets get 403. ``max_recursion_limit`` caps a run's ``recursion_limit``,
    ``max_run_timeout`` its ``timeout`` (seconds; ``None``: no cap), ``max_depth`` the
    nesting of request JSON. ``lease`` (seconds) is how long a server instance holds a
    thread for a run between renewals (a crashed instance's threads free up after it).
    ``max_active_runs`` bounds the runs this process executes or holds queued at once
    (more get 503). ``metrics=True`` serves Prometheus metrics on ``GET /metrics``
    (behind the API key when keys are set); off by default.
    Mount it into an existing Starlette or FastAPI app with :func:`mount`.

    Example::

        import uvicorn
        from headwater_server import create_app

        uvicorn.run(create_app({"chat": chat_graph}), port=8000)
    """
    if isinstance(graphs, CompiledGraph):
        graphs = {graphs.name: graphs}
    if on_disconnect not in ("cancel", "continue"):
        raise ValueError(f"on_disconnect must be 'cancel' or 'continue'; got {on_disconnect!r}.")
    if type(max_recursion_limit) is not int or max_recursion_limit < 1:
        raise ValueError(f"max_recursion_limit must be an int >= 1; got {max_recursion_limit!r}.")
    if max_run_timeout is not None and not max_run_timeout > 0:
        raise ValueError(f"max_run_timeout must be > 0 seconds; got {max_run_timeout!r}.")
    keys = frozenset(api_keys) if api_keys is not None else None
    if keys is not None and not all(isinstance(k, str) and k for k in keys):
        raise ValueError("api_keys must be non-empty strings.")
    if broker is None:
        broker = MemoryBroker()
    elif isinstance(broker, str):
        broker = broker_from_url(broker)
    if isinstance(queue, str):
        queue = queue_from_url(queue)
    if queue is not None and isinstance(broker, MemoryBroker):
        raise ValueError(
            "A run queue needs a shared broker (e.g. broker='redis://…'): workers publish "
            "events in other processes."
        )
    origins = frozenset(allowed_origins)
    limits = Limits(
        max_body_bytes=max_body_bytes,
        max_depth=max_depth,
        max_recursion_limit=max_recursion_limit,
        max_run_timeout=max_run_timeout,
    )
    engine = Engine(
        graphs,
        broker=broker,
        queue=queue,
        limits=limits,
        heartbeat=heartbeat,
        max_runs=max_runs,
        lease=lease,
        max_active_runs=max_active_runs,
        metrics=metrics_for(metrics, "server"),
    )
    edge = _Edge(engine, keys, on_disconnect, origins, first_message_timeout)
    protocol = Protocol(edge)

    def guarded(handler: Any) -> Any:
        async def endpoint(request: Request) -> Response:
            try:
                if request.method in _STATE_CHANGING:
                    edge.check_origin(request.headers)
                owner = edge.authenticate(request.headers, request.query_params)
                response: Response = await handler(request, owner)
                return response
            except ApiError as exc:
                return exc.response()

        return endpoint

    async def index(request: Request, owner: str) -> Response:
        page = resources.files("headwater_server").joinpath("static/index.html").read_text()
        return HTMLResponse(page)

    drawings: dict[str, dict[str, Any]] = {}  # one per served graph: graphs do not change

    async def graph_drawing(request: Request, owner: str) -> Response:
        name, graph = edge.graph(request.path_params["name"])
        drawing = drawings.get(name)
        if drawing is None:
            view = graph.get_graph()
            drawing = {"graph": name, **view.to_json(), "mermaid": view.draw_mermaid()}
            drawings[name] = drawing = plain(drawing)
        return JSONResponse(drawing)

    async def list_graphs(request: Request, owner: str) -> Response:
        return JSONResponse(
            [
                {"name": n, "nodes": sorted(g.nodes), "checkpointer": g.checkpointer is not None}
                for n, g in sorted(engine.graphs.items())
            ]
        )

    def thread_graph(request: Request) -> tuple[str, str, CompiledGraph]:
        thread_id = check_thread_id(request.path_params["thread_id"], limits)
        name, graph = edge.graph(request.query_params.get("graph"))
        if graph.checkpointer is None:
            raise ApiError(400, "no_checkpointer", f"Graph {name!r} keeps no thread state.")
        return thread_id, name, graph

    async def thread_history(request: Request, owner: str) -> Response:
        thread_id, _, graph = thread_graph(request)
        await engine.check_thread(thread_id, owner)
        raw = request.query_params.get("limit")
        limit = limits.default_history_limit
        if raw is not None:
            if not (raw.isascii() and raw.isdigit() and 1 <= int(raw) <= limits.max_history_limit):
                raise ApiError(
                    400,
                    "bad_limit",
                    f"limit must be an int from 1 to {limits.max_history_limit}; got {raw!r:.40}.",
                )
            limit = int(raw)
        history = await graph.aget_state_history(
            {"configurable": {"thread_id": thread_id}}, limit=limit
        )
        return JSONResponse(plain([_snapshot(s) for s in history]))

    async def run_body(request: Request) -> Any:
        body = await edge.body(request)
        run = run_request({} if body is None else body, engine.graphs, limits)
        return with_trace_context(run, request.headers)  # a traceparent: the run's parent

    async def stream_workflow(request: Request, owner: str) -> Response:
        compact = _frames(request)
        record = await engine.start(await run_body(request), owner)
        cancel = record if edge.on_disconnect == "cancel" else None
        return edge.sse(record.run_id, None, cancel, compact=compact)

    async def create_run(request: Request, owner: str) -> Response:
        body = await edge.body(request)
        if isinstance(body, dict) and "assistant_id" in body:  # the LangGraph protocol's
            return await protocol.create_run(request, owner)
        record = await engine.start(await run_body(request), owner)
        return JSONResponse(
            {"run_id": record.run_id, "thread_id": record.thread_id, "status": record.status},
            status_code=202,
        )

    async def run_status(request: Request, owner: str) -> Response:
        info = await engine.info(request.path_params["run_id"], owner)
        return JSONResponse(
            {
                "run_id": info.run_id,
                "graph": info.graph,
                "thread_id": info.thread_id,
                "status": info.status,
                "error": info.error,
                "reason": info.reason,
            }
        )

    async def run_stream(request: Request, owner: str) -> Response:
        compact = _frames(request)
        info = await engine.info(request.path_params["run_id"], owner)
        last = request.headers.get("last-event-id")
        if last is None:
            last = request.query_params.get("last_event_id")
        if last is not None and not engine.broker.valid_id(last):
            raise ApiError(
                400,
                "bad_last_event_id",
                f"Last-Event-ID {last!r:.60} is not an event id of this server.",
            )
        return edge.sse(info.run_id, last, None, compact=compact)

    async def cancel_run(request: Request, owner: str) -> Response:
        await edge.object_body(request, ())
        run_id = request.path_params["run_id"]
        status = await engine.cancel(run_id, owner)
        return JSONResponse({"run_id": run_id, "status": status})

    async def openapi(request: Request, owner: str) -> Response:
        return JSONResponse(_OPENAPI)

    async def prometheus(request: Request, owner: str) -> Response:
        if not engine.metrics.enabled:
            raise ApiError(
                404,
                "metrics_off",
                "Metrics are off on this server; start it with metrics=True "
                "(headwater serve --metrics).",
            )
        if engine.queue is not None:
            with contextlib.suppress(Exception):  # the queue is away: the last depth stays
                engine.metrics.queue_depth(await engine.queue.depth())
        body, content_type = engine.metrics.exposition()
        return Response(body, media_type=content_type)

    async def websocket_workflow(websocket: WebSocket) -> None:
        try:
            edge.check_origin(websocket.headers)
        except ApiError:
            await websocket.close(code=1008)  # before accepting: the handshake gets 403
            return
        await websocket.accept()
        try:
            owner = edge.authenticate(websocket.headers, websocket.query_params)
            with anyio.move_on_after(edge.first_message_timeout) as waited:
                message = await websocket.receive()
            if waited.cancelled_caught:
                raise ApiError(
                    408,
                    "timeout",
                    f"No first message within {edge.first_message_timeout:g} s; send "
                    '{"thread_id": ..., "state": {...}} right after connecting.',
                )
            if message["type"] == "websocket.disconnect":
                return
            first = message.get("text")
            if first is None:
                raise ApiError(
                    400, "binary_frame", "Send the first message as a JSON text frame, not binary."
                )
            if len(first) > limits.max_body_bytes:
                raise ApiError(
                    413, "body_too_large", f"Message exceeds {limits.max_body_bytes} bytes."
                )
            try:
                body = parse_json(first, limits, "The first message")
            except ApiError as exc:
                if exc.error == "malformed_json":
                    raise ApiError(
                        400, "malformed_json", "The first message must be a JSON object."
                    ) from None
                raise
            run = with_trace_context(run_request(body, engine.graphs, limits), websocket.headers)
            record = await engine.start(run, owner)
        except ApiError as exc:
            with contextlib.suppress(Exception):
                await websocket.send_json(
                    {"type": "error", "error": exc.error, "detail": exc.detail}
                )
                await websocket.close(code=1008)
            return
        except WebSocketDisconnect:
            return
        await _stream_socket(websocket, edge, record, owner)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with anyio.create_task_group() as tg:
            engine.tg = tg
            tg.start_soon(engine.watch)
            try:
                yield
            finally:
                with anyio.CancelScope(shield=True):
                    await engine.shutdown()
                tg.cancel_scope.cancel()
                with anyio.CancelScope(shield=True):
                    await engine.broker.aclose()
                    if engine.queue is not None:
                        await engine.queue.aclose()

    routes = [
        Route("/", guarded(index)),
        Route("/graphs/{name}/drawing", guarded(graph_drawing)),
        Route("/graphs", guarded(list_graphs)),
        # Both APIs': the protocol's answers are a superset of headwater's own.
        Route("/threads", guarded(protocol.create_thread), methods=["POST"]),
        Route("/threads/{thread_id}/state", guarded(protocol.get_state), methods=["GET"]),
        Route("/threads/{thread_id}/history", guarded(thread_history)),
        Route("/workflow/stream", guarded(stream_workflow), methods=["POST"]),
        Route("/runs", guarded(create_run), methods=["POST"]),
        Route("/runs/{run_id}", guarded(run_status)),
        Route("/runs/{run_id}/stream", guarded(run_stream)),
        Route("/runs/{run_id}/cancel", guarded(cancel_run), methods=["POST"]),
        Route("/openapi.json", guarded(openapi)),
        Route("/metrics", guarded(prometheus)),
        WebSocketRoute("/ws/workflow", websocket_workflow),
        *protocol.routes(guarded),
    ]
    middleware = []
    if origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=sorted(origins),
                allow_methods=["GET", "POST", "PATCH", "PUT", "DELETE"],
                allow_headers=[
                    "Authorization",
                    "Content-Type",
                    "Last-Event-ID",
                    "x-api-key",
                    "Cache-Control",
                    "Accept",
                    "traceparent",
                    "tracestate",
                ],
                expose_headers=["Location", "Content-Location"],
            )
        )
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=middleware,
        exception_handlers={HTTPException: _http_error},
    )
    app.state.headwater = engine
    return app


async def _stream_socket(websocket: WebSocket, edge: _Edge, record: RunRecord, owner: str) -> None:
    """Send a run's events over the socket while listening for ``{"type": "cancel"}``.

    Anything else the client sends is ignored — a frame that is not JSON, too deep or too
    big included; a client that goes away cancels the run (``on_disconnect="cancel"``).
    """
    engine = edge.engine
    limits = edge.limits

    async def cancel() -> None:
        with anyio.CancelScope(shield=True):
            await engine.cancel(record.run_id, owner)

    async def listen() -> None:
        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                text = message.get("text")
                if not text or len(text) > limits.max_body_bytes:
                    continue
                try:
                    frame = parse_json(text, limits, "A message")
                except ApiError:
                    continue
                if isinstance(frame, dict) and frame.get("type") == "cancel":
                    await cancel()
        except (WebSocketDisconnect, RuntimeError):
            pass
        if edge.on_disconnect == "cancel":
            await cancel()

    async with anyio.create_task_group() as tg:
        tg.start_soon(listen)
        engine.metrics.client_connected("websocket")
        try:
            async for batch in engine.follow(record.run_id, None):
                for entry in batch:
                    await websocket.send_json(_socket_message(entry, record.run_id))
            await websocket.close()
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass
        finally:
            engine.metrics.client_disconnected("websocket")
            tg.cancel_scope.cancel()


def _socket_message(entry: Any, run_id: str) -> dict[str, Any]:
    """A log entry as the spec's WebSocket message ``{"type", "name", "data", ...}``."""
    import json

    data = json.loads(entry.data)
    meta = data.pop("_event", None) if isinstance(data, dict) else None
    if meta is None:
        return {"type": entry.event, "data": data, "run_id": run_id, "id": entry.id}
    return {
        "type": entry.event,
        "name": meta["name"],
        "data": data,
        "run_id": meta["run_id"],
        "parent_ids": meta["parent_ids"],
        "tags": meta["tags"],
        "metadata": meta["metadata"],
        "id": entry.id,
    }


_HTTP_ERRORS = {404: "not_found", 405: "method_not_allowed"}


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own errors (no such path, wrong method) as JSON, like every other."""
    assert isinstance(exc, HTTPException)
    code = _HTTP_ERRORS.get(exc.status_code, "http_error")
    detail = f"{request.method} {request.url.path} — {exc.detail}"
    headers = dict(exc.headers or {})
    return JSONResponse(
        {"error": code, "detail": detail}, status_code=exc.status_code, headers=headers
    )


def _snapshot(snap: Any) -> dict[str, Any]:
    return {
        "values": snap.values,
        "next": list(snap.next),
        "config": snap.config,
        "metadata": snap.metadata,
        "created_at": snap.created_at,
        "parent_config": snap.parent_config,
        "interrupts": [{"value": i.value, "id": i.id, "node": i.node} for i in snap.interrupts],
    }


def _op(summary: str, body: bool = False, sse: bool = False) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {
            "200": {"description": "OK"},
            "4XX": {"description": "JSON error {error, detail}"},
        },
    }
    if body:
        op["requestBody"] = {
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/RunRequest"}}}
        }
    if sse:
        op["responses"]["200"] = {
            "description": "Server-sent events",
            "content": {"text/event-stream": {}},
        }
        op["parameters"] = [
            {
                "name": "frames",
                "in": "query",
                "required": False,
                "description": "compact: each event header (_event) once per source, then "
                '{"ref": N}',
                "schema": {"type": "string", "enum": list(FRAMES), "default": "full"},
            }
        ]
    return op


_STRINGS = {"type": "array", "items": {"type": "string"}}
_OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "headwater", "version": "0.1.0"},
    "paths": {
        "/graphs/{name}/drawing": {"get": _op("A graph's nodes and edges, and as Mermaid")},
        "/graphs": {"get": _op("List graphs")},
        "/threads": {"post": _op("Create a thread")},
        "/threads/{thread_id}/state": {"get": _op("A thread's latest state")},
        "/threads/{thread_id}/history": {"get": _op("A thread's checkpoints, newest first")},
        "/workflow/stream": {"post": _op("Start a run and stream it (SSE)", body=True, sse=True)},
        "/runs": {"post": _op("Start a run in the background", body=True)},
        "/runs/{run_id}": {"get": _op("A run's status")},
        "/runs/{run_id}/stream": {
            "get": _op("Stream a run (SSE, Last-Event-ID resumes)", sse=True)
        },
        "/runs/{run_id}/cancel": {"post": _op("Cancel a run")},
        "/metrics": {"get": _op("Prometheus metrics (text format), when switched on")},
    },
    "components": {
        "schemas": {
            "RunRequest": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "graph": {"type": "string"},
                    "thread_id": {"type": "string"},
                    "input": {},
                    "state": {"description": "alias of input"},
                    "config": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "recursion_limit": {"type": "integer", "minimum": 1},
                            "tags": _STRINGS,
                            "metadata": {"type": "object"},
                            "configurable": {"type": "object"},
                            "timeout": {"type": "number", "exclusiveMinimum": 0},
                        },
                    },
                    "stream_mode": {"oneOf": [{"type": "string"}, _STRINGS]},
                    **{
                        k: _STRINGS
                        for k in RUN_FIELDS
                        if k.startswith(("include_", "exclude_")) or k == "filters"
                    },
                    "multitask_strategy": {
                        "enum": ["reject", "enqueue", "interrupt", "rollback"],
                        "default": "reject",
                    },
                    "timeout": {"type": "number", "exclusiveMinimum": 0},
                },
            }
        }
    },
}


def mount(
    app: Starlette, path: str, graphs: CompiledGraph | Mapping[str, CompiledGraph], **options: Any
) -> Starlette:
    """Mount headwater into an existing Starlette or FastAPI ``app`` at ``path``.

    Starlette does not run a mounted app's lifespan, so this also wraps ``app``'s own
    lifespan to start headwater's (its task group for runs, the broker). ``options`` are
    :func:`create_app`'s. Returns the headwater app.

    Example::

        from fastapi import FastAPI
        from headwater_server import mount

        api = FastAPI()
        mount(api, "/headwater", {"chat": chat_graph}, api_keys=["s3cret"])
    """
    served = create_app(graphs, **options)
    app.mount(path, served)
    outer = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def both(parent: Any) -> AsyncIterator[Any]:
        async with served.router.lifespan_context(served), outer(parent) as state:
            yield state

    app.router.lifespan_context = both
    return served
