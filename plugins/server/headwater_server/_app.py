"""The ASGI app: runs, threads, SSE and WebSocket streaming, the browser page."""

from __future__ import annotations

import contextlib
import hmac
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from importlib import resources
from typing import Any, Literal

import anyio
import anyio.abc
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from headwater import CompiledGraph, serde
from headwater.broker import Broker, ExpiredPositionError, MemoryBroker, broker_from_url
from headwater.errors import HeadwaterError
from headwater.queue import RunJob, RunQueue, queue_from_url
from headwater.runtime import new_id

from ._runs import (
    TERMINAL,
    RunRecord,
    encode_event,
    encode_json,
    execute,
    follow,
    wire_entries,
)

__all__ = ["ApiError", "create_app", "mount"]

_CONFIG_KEYS = frozenset({"recursion_limit", "tags", "metadata", "configurable"})
_FILTER_KEYS = (
    "include_names",
    "include_types",
    "include_tags",
    "exclude_names",
    "exclude_types",
    "exclude_tags",
)


class ApiError(Exception):
    """A client error: HTTP ``status`` with a JSON body ``{"error", "detail"}``."""

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail

    def response(self) -> JSONResponse:
        return JSONResponse({"error": self.error, "detail": self.detail}, status_code=self.status)


class _Server:
    def __init__(
        self,
        graphs: Mapping[str, CompiledGraph],
        api_keys: frozenset[str] | None,
        on_disconnect: str,
        max_body_bytes: int,
        heartbeat: float,
        max_runs: int,
        broker: Broker,
        queue: RunQueue | None = None,
        first_message_timeout: float = 30.0,
    ) -> None:
        self.first_message_timeout = first_message_timeout
        self.broker = broker
        self.queue = queue
        self.graphs = dict(graphs)
        self.max_runs = max_runs
        self.api_keys = api_keys
        self.on_disconnect = on_disconnect
        self.max_body_bytes = max_body_bytes
        self.heartbeat = heartbeat
        self.runs: dict[str, RunRecord] = {}
        self.thread_owner: dict[str, str | None] = {}
        self.tg: anyio.abc.TaskGroup | None = None

    # -- request helpers ---------------------------------------------------------------

    def authenticate(self, headers: Mapping[str, str], query: Mapping[str, str]) -> str | None:
        if self.api_keys is None:
            return None
        header = headers.get("authorization", "")
        key = (
            header[7:].strip() if header.lower().startswith("bearer ") else query.get("api_key", "")
        )
        if not key or not any(hmac.compare_digest(key, k) for k in self.api_keys):
            raise ApiError(
                401, "unauthorized", "Send a valid API key: 'Authorization: Bearer <key>'."
            )
        return key

    async def body(self, request: Request) -> dict[str, Any]:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise ApiError(
                413, "body_too_large", f"Request body exceeds {self.max_body_bytes} bytes."
            )
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body_bytes:
                raise ApiError(
                    413, "body_too_large", f"Request body exceeds {self.max_body_bytes} bytes."
                )
            chunks.append(chunk)
        raw = b"".join(chunks)
        if not raw:
            return {}
        try:
            parsed = json.loads(raw)
        except ValueError as exc:
            raise ApiError(
                400, "malformed_json", f"Request body is not valid JSON: {exc}."
            ) from None
        if not isinstance(parsed, dict):
            raise ApiError(400, "bad_request", "Request body must be a JSON object.")
        return parsed

    def graph(self, name: Any) -> tuple[str, CompiledGraph]:
        if name is None and len(self.graphs) == 1:
            return next(iter(self.graphs.items()))
        if name is None:
            raise ApiError(400, "graph_required", f"Name the graph: one of {sorted(self.graphs)}.")
        if not isinstance(name, str) or name not in self.graphs:
            raise ApiError(
                404, "unknown_graph", f"Unknown graph {name!r}; graphs: {sorted(self.graphs)}."
            )
        return name, self.graphs[name]

    async def claim_thread(self, thread_id: Any, owner: str | None) -> str:
        if thread_id is None:
            thread_id = new_id()
        if not isinstance(thread_id, str) or not thread_id or len(thread_id) > 200:
            raise ApiError(
                400, "bad_thread_id", "thread_id must be a non-empty string (≤ 200 chars)."
            )
        known, known_owner = await self.owner_of_thread(thread_id)
        if known and known_owner != owner:
            raise ApiError(404, "unknown_thread", f"Thread {thread_id!r} not found.")
        self.thread_owner[thread_id] = owner
        return thread_id

    async def owner_of_thread(self, thread_id: str) -> tuple[bool, str | None]:
        if thread_id in self.thread_owner:
            return True, self.thread_owner[thread_id]
        if self.queue is not None:  # another server instance may have created it
            return await self.queue.thread_owner(thread_id)
        return False, None

    async def thread_of(self, thread_id: str, owner: str | None) -> str:
        known, known_owner = await self.owner_of_thread(thread_id)
        if not known or known_owner != owner:
            raise ApiError(404, "unknown_thread", f"Thread {thread_id!r} not found.")
        return thread_id

    async def run_of(self, run_id: str, owner: str | None) -> RunRecord:
        record = self.runs.get(run_id)
        if record is None and self.queue is not None:
            job = await self.queue.get(run_id)
            if job is not None:
                record = RunRecord(
                    graph=job.graph,
                    thread_id=job.thread_id,
                    owner=job.owner,
                    run_id=job.run_id,
                    status=job.status,
                    error=job.error,
                )
        if record is None or record.owner != owner:
            raise ApiError(404, "unknown_run", f"Run {run_id!r} not found.")
        return record

    def ended_probe(self, run_id: str) -> Callable[[], Awaitable[str | None]] | None:
        """In queue mode: ask the queue whether a quiet run has in fact ended."""
        queue = self.queue
        if queue is None:
            return None

        async def ended() -> str | None:
            job = await queue.get(run_id)
            if job is not None and job.status in ("done", "error", "cancelled"):
                return job.status
            return None

        return ended

    async def cancel(self, record: RunRecord) -> str:
        """Cancel a run here or, in queue mode, ask its worker to; return the status."""
        if self.queue is not None and record.run_id not in self.runs:
            await self.queue.cancel(record.run_id)
            for _ in range(50):
                job = await self.queue.get(record.run_id)
                if job is None or job.status in ("cancelled", "done", "error"):
                    break
                await anyio.sleep(0.1)
            return job.status if job is not None else "unknown"
        record.cancel()
        with anyio.move_on_after(5):
            await record.done.wait()
        return record.status

    # -- starting runs -----------------------------------------------------------------

    async def open_stream(
        self, body: Mapping[str, Any], owner: str | None
    ) -> tuple[RunRecord, AsyncIterator[tuple[str, Any]], dict[str, Any]]:
        """Validate a run request and return its record and the (not yet started) stream."""
        name, graph = self.graph(body.get("graph"))
        input = body.get("input", body.get("state"))
        config = body.get("config") or {}
        if not isinstance(config, dict) or set(config) - _CONFIG_KEYS:
            raise ApiError(400, "bad_config", f"config may only hold {sorted(_CONFIG_KEYS)}.")
        thread_id = None
        if "thread_id" in body or graph.checkpointer is not None:
            thread_id = await self.claim_thread(body.get("thread_id"), owner)
            configurable = dict(config.get("configurable") or {})
            configurable["thread_id"] = thread_id
            config = {**config, "configurable": configurable}
        spec: dict[str, Any] = {}
        try:
            if input is not None:
                graph.schema.coerce_input(input, name)
            mode = body.get("stream_mode")
            if mode is not None:
                source = graph.astream(input, config, stream_mode=mode)
                stream = wire_entries(source, mode)
                spec["stream_mode"] = mode
            else:
                filters = {k: body[k] for k in _FILTER_KEYS if body.get(k) is not None}
                named = body.get("filters")
                if named is not None and not (
                    isinstance(named, list) and all(isinstance(f, str) for f in named)
                ):
                    raise ApiError(
                        400, "bad_filter", "filters must be a list of installed filter names."
                    )
                stream = wire_entries(graph.astream_events(input, config, filters=named, **filters))
                spec.update(filters, filters=named)
        except HeadwaterError as exc:
            raise ApiError(400, type(exc).__name__, str(exc)) from None
        record = RunRecord(graph=name, thread_id=thread_id, owner=owner)
        spec["input"], spec["config"] = input, config
        return record, stream, spec

    def evict(self) -> None:
        """Forget the oldest finished runs beyond ``max_runs`` (memory stays bounded)."""
        excess = len(self.runs) - self.max_runs
        if excess <= 0:
            return
        for run_id in [r for r, record in self.runs.items() if record.finished][:excess]:
            del self.runs[run_id]
            if self.tg is not None:
                self.tg.start_soon(self.broker.delete, run_id)  # its log goes too

    async def start(self, body: Mapping[str, Any], owner: str | None) -> RunRecord:
        record, stream, spec = await self.open_stream(body, owner)
        if self.queue is not None:  # a worker executes it; this server only streams
            input, config = spec.pop("input"), spec.pop("config")
            config = {k: v for k, v in config.items() if k != "configurable"} | {
                "configurable": {
                    k: v for k, v in (config.get("configurable") or {}).items() if k != "thread_id"
                }
            }
            thread_id = record.thread_id or new_id()
            record.thread_id = thread_id
            await self.queue.enqueue(
                RunJob(
                    run_id=record.run_id,
                    graph=record.graph,
                    thread_id=thread_id,
                    input=input,
                    config=config,
                    stream=spec,
                    owner=record.owner,
                )
            )
            record.status = "queued"
            return record
        self.runs[record.run_id] = record
        assert self.tg is not None, "the app's lifespan has not started"
        await self.tg.start(self._execute, record, stream)
        return record

    async def _execute(
        self,
        record: RunRecord,
        stream: AsyncIterator[tuple[str, Any]],
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        try:
            await execute(record, stream, self.broker, task_status)
        finally:
            self.evict()

    # -- SSE -----------------------------------------------------------------------------

    def sse(
        self, run_id: str, after: str | None, *, cancel: RunRecord | None = None
    ) -> StreamingResponse:
        """Stream a run's log after ``after``; cancel ``cancel`` if the client goes away."""

        async def frames() -> AsyncIterator[str]:
            ended = False
            yield f"retry: 2000\n: run {run_id}\n\n"
            try:
                async for batch in follow(
                    self.broker, run_id, after, self.heartbeat, self.ended_probe(run_id)
                ):
                    if not batch:
                        yield ": ping\n\n"
                        continue
                    ended = batch[-1].event in TERMINAL
                    yield "".join(  # one write per batch of entries, not per event
                        f"{'id: ' + e.id + chr(10) if e.id else ''}event: {e.event}\n"
                        f"data: {e.data}\n\n"
                        for e in batch
                    )
            except ExpiredPositionError as exc:
                # A client too slow for the log's retention: the server ends its stream,
                # the run goes on (a slow client never holds a run or memory hostage).
                ended = True
                data = encode_json({"type": "expired", "message": str(exc)})
                yield f"event: error\ndata: {data}\n\n"
            finally:
                if cancel is not None and not ended and not cancel.finished:
                    with anyio.CancelScope(shield=True):
                        await self.cancel(cancel)

        return StreamingResponse(frames(), media_type="text/event-stream", headers=_SSE_HEADERS)


_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "Connection": "keep-alive"}


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
    Mount it into an existing Starlette or FastAPI app with ``app.mount("/hw", create_app(...))``.

    Example::

        import uvicorn
        from headwater_server import create_app

        uvicorn.run(create_app({"chat": chat_graph}), port=8000)
    """
    if isinstance(graphs, CompiledGraph):
        graphs = {graphs.name: graphs}
    if on_disconnect not in ("cancel", "continue"):
        raise ValueError(f"on_disconnect must be 'cancel' or 'continue'; got {on_disconnect!r}.")
    keys = frozenset(api_keys) if api_keys is not None else None
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
    server = _Server(
        graphs,
        keys,
        on_disconnect,
        max_body_bytes,
        heartbeat,
        max_runs,
        broker,
        queue,
        first_message_timeout,
    )

    def guarded(handler: Any) -> Any:
        async def endpoint(request: Request) -> Response:
            try:
                owner = server.authenticate(request.headers, request.query_params)
                response: Response = await handler(request, owner)
                return response
            except ApiError as exc:
                return exc.response()

        return endpoint

    async def index(request: Request, owner: str | None) -> Response:
        page = resources.files("headwater_server").joinpath("static/index.html").read_text()
        return HTMLResponse(page)

    async def list_graphs(request: Request, owner: str | None) -> Response:
        return JSONResponse(
            [
                {"name": n, "nodes": sorted(g.nodes), "checkpointer": g.checkpointer is not None}
                for n, g in sorted(server.graphs.items())
            ]
        )

    async def create_thread(request: Request, owner: str | None) -> Response:
        body = await server.body(request)
        return JSONResponse(
            {"thread_id": await server.claim_thread(body.get("thread_id"), owner)}, status_code=201
        )

    async def thread_state(request: Request, owner: str | None) -> Response:
        thread_id = await server.thread_of(request.path_params["thread_id"], owner)
        name, graph = server.graph(request.query_params.get("graph"))
        if graph.checkpointer is None:
            raise ApiError(400, "no_checkpointer", f"Graph {name!r} keeps no thread state.")
        snap = await graph.aget_state({"configurable": {"thread_id": thread_id}})
        return JSONResponse(serde.encode(_snapshot(snap)))

    async def thread_history(request: Request, owner: str | None) -> Response:
        thread_id = await server.thread_of(request.path_params["thread_id"], owner)
        name, graph = server.graph(request.query_params.get("graph"))
        if graph.checkpointer is None:
            raise ApiError(400, "no_checkpointer", f"Graph {name!r} keeps no thread state.")
        limit = request.query_params.get("limit")
        history = await graph.aget_state_history(
            {"configurable": {"thread_id": thread_id}},
            limit=int(limit) if limit and limit.isdigit() else None,
        )
        return JSONResponse(serde.encode([_snapshot(s) for s in history]))

    async def stream_workflow(request: Request, owner: str | None) -> Response:
        body = await server.body(request)
        record = await server.start(body, owner)
        cancel = record if server.on_disconnect == "cancel" else None
        return server.sse(record.run_id, None, cancel=cancel)

    async def create_run(request: Request, owner: str | None) -> Response:
        body = await server.body(request)
        record = await server.start(body, owner)
        return JSONResponse(
            {"run_id": record.run_id, "thread_id": record.thread_id, "status": record.status},
            status_code=202,
        )

    async def run_status(request: Request, owner: str | None) -> Response:
        record = await server.run_of(request.path_params["run_id"], owner)
        return JSONResponse(
            {
                "run_id": record.run_id,
                "graph": record.graph,
                "thread_id": record.thread_id,
                "status": record.status,
                "error": record.error,
            }
        )

    async def run_stream(request: Request, owner: str | None) -> Response:
        record = await server.run_of(request.path_params["run_id"], owner)
        last = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
        if last is not None and not server.broker.valid_id(last):
            raise ApiError(
                400,
                "bad_last_event_id",
                f"Last-Event-ID {last!r} is not an event id of this server.",
            )
        return server.sse(record.run_id, last)

    async def cancel_run(request: Request, owner: str | None) -> Response:
        record = await server.run_of(request.path_params["run_id"], owner)
        status = await server.cancel(record)
        return JSONResponse({"run_id": record.run_id, "status": status})

    async def openapi(request: Request, owner: str | None) -> Response:
        return JSONResponse(_OPENAPI)

    async def websocket_workflow(websocket: WebSocket) -> None:
        await websocket.accept()
        try:
            owner = server.authenticate(websocket.headers, websocket.query_params)
            with anyio.move_on_after(server.first_message_timeout) as waited:
                message = await websocket.receive()
            if waited.cancelled_caught:
                raise ApiError(
                    408,
                    "timeout",
                    f"No first message within {server.first_message_timeout:g} s; send "
                    '{"thread_id": ..., "state": {...}} right after connecting.',
                )
            if message["type"] == "websocket.disconnect":
                return
            first = message.get("text")
            if first is None:
                raise ApiError(
                    400, "binary_frame", "Send the first message as a JSON text frame, not binary."
                )
            try:
                body = json.loads(first)
            except ValueError:
                raise ApiError(
                    400, "malformed_json", "The first message must be a JSON object."
                ) from None
            if not isinstance(body, dict):
                raise ApiError(400, "bad_request", "The first message must be a JSON object.")
            record = await server.start(body, owner)
        except ApiError as exc:
            await websocket.send_json({"type": "error", "error": exc.error, "detail": exc.detail})
            await websocket.close(code=1008)
            return
        except WebSocketDisconnect:
            return

        async def listen() -> None:
            with contextlib.suppress(WebSocketDisconnect):
                while True:
                    message = await websocket.receive()
                    if message["type"] == "websocket.disconnect":
                        break
                    with contextlib.suppress(ValueError, AttributeError, TypeError):
                        if json.loads(message.get("text") or "null").get("type") == "cancel":
                            await server.cancel(record)
            if server.on_disconnect == "cancel" and not record.finished:
                with anyio.CancelScope(shield=True):
                    await server.cancel(record)

        async with anyio.create_task_group() as tg:
            tg.start_soon(listen)
            try:
                async for batch in follow(
                    server.broker,
                    record.run_id,
                    None,
                    server.heartbeat,
                    server.ended_probe(record.run_id),
                ):
                    for entry in batch:
                        await websocket.send_json(encode_event(entry, record.run_id))
                await websocket.close()
            except WebSocketDisconnect:
                pass
            finally:
                tg.cancel_scope.cancel()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with anyio.create_task_group() as tg:
            server.tg = tg
            try:
                yield
            finally:
                tg.cancel_scope.cancel()
                with anyio.CancelScope(shield=True):
                    await server.broker.aclose()
                    if server.queue is not None:
                        await server.queue.aclose()

    routes = [
        Route("/", guarded(index)),
        Route("/graphs", guarded(list_graphs)),
        Route("/threads", guarded(create_thread), methods=["POST"]),
        Route("/threads/{thread_id}/state", guarded(thread_state)),
        Route("/threads/{thread_id}/history", guarded(thread_history)),
        Route("/workflow/stream", guarded(stream_workflow), methods=["POST"]),
        Route("/runs", guarded(create_run), methods=["POST"]),
        Route("/runs/{run_id}", guarded(run_status)),
        Route("/runs/{run_id}/stream", guarded(run_stream)),
        Route("/runs/{run_id}/cancel", guarded(cancel_run), methods=["POST"]),
        Route("/openapi.json", guarded(openapi)),
        WebSocketRoute("/ws/workflow", websocket_workflow),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.headwater = server
    return app


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
    return op


_OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "headwater", "version": "0.1.0"},
    "paths": {
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
    },
    "components": {
        "schemas": {
            "RunRequest": {
                "type": "object",
                "properties": {
                    "graph": {"type": "string"},
                    "thread_id": {"type": "string"},
                    "input": {},
                    "state": {"description": "alias of input"},
                    "config": {"type": "object"},
                    "stream_mode": {
                        "oneOf": [
                            {"type": "string"},
                            {"type": "array", "items": {"type": "string"}},
                        ]
                    },
                    **{k: {"type": "array", "items": {"type": "string"}} for k in _FILTER_KEYS},
                    "filters": {"type": "array", "items": {"type": "string"}},
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
