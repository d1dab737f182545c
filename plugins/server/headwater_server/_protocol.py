"""The LangGraph server protocol (Agent Protocol routes) on headwater's run engine.

The official clients — Python ``langgraph-sdk``, JavaScript ``@langchain/langgraph-sdk``
and its ``useStream`` hook — talk to these routes unchanged, beside headwater's own on
the same app with the same API keys (``x-api-key`` or ``Authorization: Bearer``) and
the same thread ownership. Every served graph is an assistant whose ``graph_id`` is its
name, addressable by that name or its id. Runs go through the same engine (queue,
broker, workers) as headwater's own; their logs hold the protocol's events (``metadata``
first, then ``<mode>`` or ``<mode>|<namespace>``), so a stream can be joined or resumed
(``Last-Event-ID``) on any instance. See ``docs/agent-protocol.md``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING, Any

import anyio
import attrs
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from headwater import CompiledGraph
from headwater.broker import ExpiredPositionError
from headwater.checkpoint import Checkpointer, MemoryCheckpointer, StateSnapshot
from headwater.errors import HeadwaterError

from ._records import ThreadRecords, now
from ._requests import ApiError, check_thread_id, run_request
from ._runs import TERMINAL
from ._tracing import with_trace_context
from ._wire import dumps, plain

if TYPE_CHECKING:
    from ._app import _Edge
    from ._engine import Engine, RunRecord

__all__ = ["ASSISTANT_NAMESPACE", "Protocol", "assistant_id_of"]

ASSISTANT_NAMESPACE = uuid.UUID("6ba7b821-9dad-11d1-80b4-00c04fd430c8")
"""Assistant ids are ``uuid5(ASSISTANT_NAMESPACE, graph name)``, as LangGraph's server
makes them."""

_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_MODES = {
    "values": "values",
    "updates": "updates",
    "messages-tuple": "messages",
    "messages": "messages",
    "custom": "custom",
    "events": "events",
    "debug": "debug",
    "tasks": "tasks",
    "checkpoints": "checkpoints",
}
_RUN_FIELDS = (
    "assistant_id",
    "input",
    "command",
    "config",
    "context",
    "metadata",
    "stream_mode",
    "stream_subgraphs",
    "stream_resumable",
    "interrupt_before",
    "interrupt_after",
    "multitask_strategy",
    "if_not_exists",
    "on_disconnect",
    "on_completion",
    "durability",
    "checkpoint_during",
    "feedback_keys",
    "webhook",
    "checkpoint",
    "checkpoint_id",
    "after_seconds",
    "strict_resume",
    "langsmith_tracer",
)
_UNSUPPORTED_RUN_FIELDS = ("webhook", "after_seconds")
_LIVE = ("pending", "queued", "running")
_RUN_STATUS = {
    "pending": "pending",
    "queued": "pending",
    "running": "running",
    "done": "success",
    "error": "error",
    "cancelled": "interrupted",
}
_MAX_SCAN = 10_000
"""Most threads a search looks through."""


def assistant_id_of(graph_name: str) -> str:
    """The assistant id of the graph served as ``graph_name``.

    Example::

        assistant_id_of("chat")  # "a5b1…" — the same on every server
    """
    return str(uuid.uuid5(ASSISTANT_NAMESPACE, graph_name))


def _fields(body: Any, fields: tuple[str, ...], what: str) -> dict[str, Any]:
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise ApiError(400, "bad_request", f"{what} must be a JSON object.")
    unknown = [k for k in body if k not in fields]
    if unknown:
        raise ApiError(
            400,
            "unknown_field",
            f"Unknown field {unknown[0]!r:.60} in {what}; accepted fields: {', '.join(fields)}.",
        )
    return body


def _object(value: Any, field: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ApiError(400, "bad_request", f"{field} must be an object; got {value!r:.60}.")
    return value


def _int(value: Any, field: str, low: int, high: int, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    if type(value) is not int or not low <= value <= high:
        raise ApiError(
            400, "bad_request", f"{field} must be an int from {low} to {high}; got {value!r:.40}."
        )
    return value


def _choice(value: Any, field: str, choices: tuple[str, ...], default: str) -> str:
    if value is None:
        return default
    if value not in choices:
        raise ApiError(
            400, "bad_request", f"{field} must be one of {list(choices)}; got {value!r:.40}."
        )
    return str(value)


def _checkpoint(config: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not config:
        return None
    conf = config.get("configurable") or {}
    return {
        "thread_id": conf.get("thread_id"),
        "checkpoint_ns": "",
        "checkpoint_id": conf.get("checkpoint_id"),
        "checkpoint_map": None,
    }


def thread_state(snap: StateSnapshot) -> dict[str, Any]:
    """A snapshot as the protocol's ``ThreadState`` (with headwater's ``config`` keys)."""
    interrupts = [plain(i) for i in snap.interrupts]
    tasks = []
    for task in snap.tasks:
        mine = [
            i
            for i, raw in zip(interrupts, snap.interrupts, strict=True)
            if raw.id.startswith(task.id + ":") or (raw.node == task.node and ":" not in raw.id)
        ]
        tasks.append(
            {
                "id": task.id,
                "name": task.node,
                "path": plain(task.path),
                "error": None,
                "interrupts": mine,
                "checkpoint": None,
                "state": None,
                "result": None,
            }
        )
    return {
        "values": plain(snap.values),
        "next": list(snap.next),
        "tasks": tasks,
        "checkpoint": _checkpoint(snap.config),
        "parent_checkpoint": _checkpoint(snap.parent_config),
        "metadata": plain(snap.metadata),
        "created_at": snap.created_at or None,
        "interrupts": interrupts,
        "config": plain(snap.config),
        "parent_config": plain(snap.parent_config),
    }


class Protocol:
    """The protocol's routes on ``edge`` (its engine, limits and authentication)."""

    def __init__(self, edge: _Edge) -> None:
        self.edge = edge
        self.engine: Engine = edge.engine
        self.limits = edge.limits
        savers = self.engine.owners.checkpointers
        saver: Checkpointer = savers[0] if savers else MemoryCheckpointer()
        self.records = ThreadRecords(saver)
        self.created = now()

    # -- assistants --------------------------------------------------------------------

    def assistant(self, name: str) -> dict[str, Any]:
        graph = self.engine.graphs[name]
        return {
            "assistant_id": assistant_id_of(name),
            "graph_id": name,
            "name": name,
            "description": None,
            "config": {},
            "context": {},
            "metadata": {"created_by": "system"},
            "version": 1,
            "created_at": self.created,
            "updated_at": self.created,
            "headwater": {"nodes": sorted(graph.nodes), "checkpointer": bool(graph.checkpointer)},
        }

    def graph_name(self, assistant_id: Any, field: str = "assistant_id") -> str:
        graphs = self.engine.graphs
        if isinstance(assistant_id, str):
            if assistant_id in graphs:
                return str(assistant_id)
            for name in graphs:
                if assistant_id_of(name) == assistant_id:
                    return name
        raise ApiError(
            404,
            "unknown_assistant",
            f"Assistant {assistant_id!r:.80} not found ({field}); assistants are the served "
            f"graphs, by name or id: {sorted(graphs)}.",
        )

    async def search_assistants(self, request: Request, owner: str) -> Response:
        body = _fields(
            await self.edge.body(request),
            ("metadata", "graph_id", "name", "limit", "offset", "sort_by", "sort_order", "select"),
            "an assistant search",
        )
        metadata = _object(body.get("metadata"), "metadata")
        limit = _int(body.get("limit"), "limit", 1, 1000, 10)
        offset = _int(body.get("offset"), "offset", 0, 1_000_000, 0)
        found = [
            self.assistant(n)
            for n in sorted(self.engine.graphs)
            if body.get("graph_id") in (None, n)
            and (body.get("name") is None or str(body["name"]) in n)
            and all(self.assistant(n)["metadata"].get(k) == v for k, v in metadata.items())
        ]
        return JSONResponse(_select(found[offset : offset + limit], body.get("select")))

    async def count_assistants(self, request: Request, owner: str) -> Response:
        body = _fields(
            await self.edge.body(request), ("metadata", "graph_id", "name"), "an assistant count"
        )
        names = [n for n in self.engine.graphs if body.get("graph_id") in (None, n)]
        return JSONResponse(len(names))

    async def get_assistant(self, request: Request, owner: str) -> Response:
        return JSONResponse(self.assistant(self.graph_name(request.path_params["assistant_id"])))

    async def assistant_graph(self, request: Request, owner: str) -> Response:
        name = self.graph_name(request.path_params["assistant_id"])
        raw = request.query_params.get("xray", "false").lower()
        xray: bool | int = raw in ("true", "1") or (int(raw) if raw.isdigit() else False)
        return JSONResponse(plain(self.engine.graphs[name].get_graph(xray=xray).to_json()))

    async def assistant_schemas(self, request: Request, owner: str) -> Response:
        name = self.graph_name(request.path_params["assistant_id"])
        schema = _state_schema(self.engine.graphs[name])
        return JSONResponse(
            {
                "graph_id": name,
                "input_schema": schema,
                "output_schema": schema,
                "state_schema": schema,
                "config_schema": None,
                "context_schema": None,
            }
        )

    async def assistant_subgraphs(self, request: Request, owner: str) -> Response:
        self.graph_name(request.path_params["assistant_id"])
        return JSONResponse({})

    # -- threads -----------------------------------------------------------------------

    async def owned_thread(self, given: Any, owner: str) -> str:
        thread_id = check_thread_id(given, self.limits)
        await self.engine.check_thread(thread_id, owner)
        found = await self.records.get(thread_id)
        if found is not None and found.get("deleted"):
            raise ApiError(404, "unknown_thread", f"Thread {thread_id!r} not found.")
        return thread_id

    def thread_graph(self, record: Mapping[str, Any] | None) -> tuple[str, CompiledGraph]:
        graphs = self.engine.graphs
        record = record or {}
        name = record.get("graph_id") or (record.get("metadata") or {}).get("graph_id")
        if isinstance(name, str) and name in graphs:
            return name, graphs[name]
        stateful = [n for n, g in graphs.items() if g.checkpointer is not None]
        name = stateful[0] if stateful else next(iter(graphs))
        return name, graphs[name]

    async def record(self, thread_id: str) -> dict[str, Any]:
        found = await self.records.get(thread_id)
        if found is None or found.get("deleted"):  # made by headwater's own routes
            found = {"thread_id": thread_id, "created_at": None, "updated_at": None}
            found.update(metadata={}, graph_id=None)
        return found

    async def snapshot(self, thread_id: str, record: Mapping[str, Any]) -> StateSnapshot | None:
        _, graph = self.thread_graph(record)
        if graph.checkpointer is None:
            return None
        return await graph.aget_state({"configurable": {"thread_id": thread_id}})

    async def thread(self, thread_id: str, owner: str, record: dict[str, Any]) -> dict[str, Any]:
        snap = await self.snapshot(thread_id, record)
        status = "idle"
        runs = await self.records.runs(thread_id, 1)
        last = None
        if runs:
            try:
                last = (await self.engine.info(str(runs[0].get("run_id")), owner)).status
            except ApiError:
                last = None
            if last in _LIVE and await self.engine.ended(str(runs[0]["run_id"])) is None:
                status = "busy"
        interrupts: dict[str, list[Any]] = {}
        if status == "idle" and last == "error":
            status = "error"
        elif status == "idle" and snap is not None and (snap.interrupts or snap.next):
            status = "interrupted"
        if snap is not None:
            for task in thread_state(snap)["tasks"]:
                if task["interrupts"]:
                    interrupts[task["id"]] = task["interrupts"]
        created = record.get("created_at") or (snap.created_at if snap else None) or self.created
        return {
            "thread_id": thread_id,
            "created_at": created,
            "updated_at": record.get("updated_at") or created,
            "metadata": record.get("metadata") or {},
            "status": status,
            "config": {},
            "values": plain(snap.values) if snap is not None and snap.values else None,
            "interrupts": interrupts,
        }

    async def create_thread(self, request: Request, owner: str) -> Response:
        body = _fields(
            await self.edge.body(request),
            ("thread_id", "metadata", "if_exists", "supersteps", "graph_id", "ttl"),
            "a thread",
        )
        metadata = _object(body.get("metadata"), "metadata")
        if_exists = _choice(body.get("if_exists"), "if_exists", ("raise", "do_nothing"), "raise")
        graph_id = body.get("graph_id", metadata.get("graph_id"))
        if graph_id is not None:
            graph_id = self.graph_name(graph_id, "graph_id")
        if body.get("supersteps") is not None:
            raise ApiError(
                501, "not_implemented", "POST /threads with supersteps is not supported."
            )
        thread_id = body.get("thread_id")
        if thread_id is not None:
            thread_id = check_thread_id(thread_id, self.limits)
            if await self.engine.owners.owner_of(thread_id) is not None:
                existing = await self.records.get(thread_id)
                known = await self.engine.owners.owner_of(thread_id) == owner
                if existing is not None and existing.get("deleted"):
                    existing = None
                    if known:
                        await self.records.put(thread_id, owner, metadata, graph_id)
                        made = await self.records.get(thread_id)
                        assert made is not None
                        return JSONResponse(
                            await self.thread(thread_id, owner, made), status_code=201
                        )
                if known and (if_exists == "do_nothing" or existing is None):
                    if existing is None:
                        existing = await self.records.put(thread_id, owner, metadata, graph_id)
                    return JSONResponse(await self.thread(thread_id, owner, existing))
                if known:
                    raise ApiError(409, "thread_exists", f"Thread {thread_id!r} already exists.")
        thread_id = await self.engine.claim_thread(thread_id, owner)
        record = await self.records.put(thread_id, owner, metadata, graph_id)
        return JSONResponse(await self.thread(thread_id, owner, record), status_code=201)

    async def get_thread(self, request: Request, owner: str) -> Response:
        thread_id = await self.owned_thread(request.path_params["thread_id"], owner)
        return JSONResponse(await self.thread(thread_id, owner, await self.record(thread_id)))

    async def update_thread(self, request: Request, owner: str) -> Response:
        thread_id = await self.owned_thread(request.path_params["thread_id"], owner)
        body = _fields(await self.edge.body(request), ("metadata", "ttl"), "a thread update")
        record = await self.record(thread_id)
        metadata = {**(record.get("metadata") or {}), **_object(body.get("metadata"), "metadata")}
        record = await self.records.put(
            thread_id,
            owner,
            metadata,
            record.get("graph_id"),
            created_at=record.get("created_at"),
            new=False,
        )
        return JSONResponse(await self.thread(thread_id, owner, record))

    async def delete_thread(self, request: Request, owner: str) -> Response:
        thread_id = await self.owned_thread(request.path_params["thread_id"], owner)
        for saver in self.engine.owners.checkpointers:
            await saver.adelete_thread(thread_id)
        await self.records.delete(thread_id)
        return Response(status_code=204)

    async def search_threads(self, request: Request, owner: str) -> Response:
        body = _fields(
            await self.edge.body(request),
            (
                "metadata",
                "values",
                "ids",
                "status",
                "limit",
                "offset",
                "sort_by",
                "sort_order",
                "select",
                "extract",
            ),
            "a thread search",
        )
        found = await self.find_threads(body, owner)
        limit = _int(body.get("limit"), "limit", 1, 1000, 10)
        offset = _int(body.get("offset"), "offset", 0, _MAX_SCAN, 0)
        return JSONResponse(_select(found[offset : offset + limit], body.get("select")))

    async def count_threads(self, request: Request, owner: str) -> Response:
        body = _fields(
            await self.edge.body(request), ("metadata", "values", "status"), "a thread count"
        )
        return JSONResponse(len(await self.find_threads(body, owner)))

    async def find_threads(self, body: Mapping[str, Any], owner: str) -> list[dict[str, Any]]:
        metadata = _object(body.get("metadata"), "metadata")
        values = _object(body.get("values"), "values")
        status = body.get("status")
        if status is not None:
            _choice(status, "status", ("idle", "busy", "interrupted", "error"), "idle")
        ids = body.get("ids")
        if ids is not None and (
            not isinstance(ids, list) or not all(isinstance(i, str) for i in ids)
        ):
            raise ApiError(400, "bad_request", f"ids must be a list of strings; got {ids!r:.60}.")
        sort_by = _choice(
            body.get("sort_by"),
            "sort_by",
            ("thread_id", "status", "created_at", "updated_at"),
            "created_at",
        )
        order = _choice(body.get("sort_order"), "sort_order", ("asc", "desc"), "desc")
        candidates = ids if ids is not None else await self.records.owned(owner, _MAX_SCAN)
        out = []
        for thread_id in candidates[:_MAX_SCAN]:
            if await self.engine.owners.owner_of(thread_id) != owner:
                continue
            record = await self.records.get(thread_id)
            if record is None or record.get("deleted"):
                continue
            meta = record.get("metadata") or {}
            if any(meta.get(k) != v for k, v in metadata.items()):
                continue
            thread = await self.thread(thread_id, owner, record)
            if status is not None and thread["status"] != status:
                continue
            held = thread["values"] or {}
            if any(held.get(k) != v for k, v in values.items()):
                continue
            out.append(thread)
        out.sort(key=lambda t: str(t.get(sort_by) or ""), reverse=order == "desc")
        return out

    async def copy_thread(self, request: Request, owner: str) -> Response:
        thread_id = await self.owned_thread(request.path_params["thread_id"], owner)
        await self.edge.body(request)
        record = await self.record(thread_id)
        copy = await self.engine.claim_thread(None, owner)
        # The thread's graph's checkpointer only (two instances may share one database).
        own = self.thread_graph(record)[1].checkpointer
        for saver in [own] if own is not None else []:
            before: str | None = None
            while True:
                page = await saver.alist(thread_id, limit=100, before=before)
                if not page:
                    break
                for checkpoint in reversed(page):
                    found = await saver.aget(thread_id, "", checkpoint.id)
                    await saver.aput(attrs.evolve(checkpoint, thread_id=copy))
                    if found is not None and found.writes:
                        await saver.aput_writes(copy, "", checkpoint.id, found.writes)
                before = page[-1].id
        new = await self.records.put(
            copy, owner, record.get("metadata") or {}, record.get("graph_id")
        )
        return JSONResponse(await self.thread(copy, owner, new))

    async def get_state(self, request: Request, owner: str) -> Response:
        thread_id = await self.owned_thread(request.path_params["thread_id"], owner)
        checkpoint_id = request.path_params.get("checkpoint_id")
        return JSONResponse(await self.state_at(thread_id, checkpoint_id, request))

    async def state_at(
        self, thread_id: str, checkpoint_id: str | None, request: Request
    ) -> dict[str, Any]:
        record = await self.record(thread_id)
        name = request.query_params.get("graph")
        if name is not None:
            record = {**record, "graph_id": self.edge.graph(name)[0]}
        name, graph = self.thread_graph(record)
        if graph.checkpointer is None:
            raise ApiError(400, "no_checkpointer", f"Graph {name!r} keeps no thread state.")
        configurable = {"thread_id": thread_id}
        if checkpoint_id is not None:
            configurable["checkpoint_id"] = check_thread_id(
                checkpoint_id, self.limits, "checkpoint_id"
            )
        return thread_state(await graph.aget_state({"configurable": configurable}))

    async def post_state_checkpoint(self, request: Request, owner: str) -> Response:
        thread_id = await self.owned_thread(request.path_params["thread_id"], owner)
        body = _fields(await self.edge.body(request), ("checkpoint", "subgraphs"), "the request")
        checkpoint = _object(body.get("checkpoint"), "checkpoint")
        return JSONResponse(
            await self.state_at(thread_id, checkpoint.get("checkpoint_id"), request)
        )

    async def update_state(self, request: Request, owner: str) -> Response:
        thread_id = await self.owned_thread(request.path_params["thread_id"], owner)
        body = _fields(
            await self.edge.body(request),
            ("values", "as_node", "checkpoint", "checkpoint_id"),
            "a state update",
        )
        if body.get("checkpoint") is not None or body.get("checkpoint_id") is not None:
            raise ApiError(
                501,
                "not_implemented",
                "POST /threads/{thread_id}/state from a given checkpoint is not supported; "
                "updates apply to the thread's latest state.",
            )
        values = body.get("values")
        if isinstance(values, list):
            raise ApiError(
                501, "not_implemented", "A list of state updates is not supported; send one."
            )
        values = _object(values, "values")
        as_node = body.get("as_node")
        if as_node is not None and not isinstance(as_node, str):
            raise ApiError(400, "bad_request", f"as_node must be a node name; got {as_node!r:.40}.")
        name, graph = self.thread_graph(await self.record(thread_id))
        if graph.checkpointer is None:
            raise ApiError(400, "no_checkpointer", f"Graph {name!r} keeps no thread state.")
        try:
            config = await graph.aupdate_state(
                {"configurable": {"thread_id": thread_id}}, values, as_node
            )
        except HeadwaterError as exc:
            raise ApiError(400, type(exc).__name__, str(exc)) from None
        return JSONResponse({"checkpoint": _checkpoint(config), "configurable": config})

    async def history(self, request: Request, owner: str) -> Response:
        thread_id = await self.owned_thread(request.path_params["thread_id"], owner)
        body = _fields(
            await self.edge.body(request),
            ("limit", "before", "metadata", "checkpoint"),
            "a history request",
        )
        limit = _int(body.get("limit"), "limit", 1, self.limits.max_history_limit, 10)
        metadata = _object(body.get("metadata"), "metadata")
        before = body.get("before")
        if isinstance(before, dict):
            before = (before.get("configurable") or before).get("checkpoint_id")
        configurable = {"thread_id": thread_id}
        if before is not None:
            configurable["checkpoint_id"] = check_thread_id(before, self.limits, "before")
        name, graph = self.thread_graph(await self.record(thread_id))
        if graph.checkpointer is None:
            raise ApiError(400, "no_checkpointer", f"Graph {name!r} keeps no thread state.")
        # Filtering by metadata reads further back: at most ten pages of `limit`.
        most = limit if not metadata else min(limit * 10, self.limits.max_history_limit)
        snaps = await graph.aget_state_history({"configurable": configurable}, limit=most)
        states = [
            thread_state(s)
            for s in snaps
            if all(s.metadata.get(k) == v for k, v in metadata.items())
        ]
        return JSONResponse(states[:limit])

    # -- runs --------------------------------------------------------------------------

    async def start(
        self, request: Request, owner: str, thread_id: str | None
    ) -> tuple[RunRecord, dict[str, Any]]:
        """Check a run request and start it; its record and the protocol's Run."""
        body = _fields(await self.edge.body(request), _RUN_FIELDS, "a run request")
        name = self.graph_name(body.get("assistant_id"))
        for field in _UNSUPPORTED_RUN_FIELDS:
            if body.get(field) is not None:
                raise ApiError(501, "not_implemented", f"The run field {field!r} is not supported.")
        pauses: dict[str, Any] = {}
        for field in ("interrupt_before", "interrupt_after"):
            names = body.get(field)
            if names is None:
                continue
            nodes = self.engine.graphs[name].nodes
            if names != "*" and (not isinstance(names, list) or not all(n in nodes for n in names)):
                raise ApiError(
                    400,
                    "bad_request",
                    f"{field} must be '*' or a list of the graph's nodes {sorted(nodes)}; "
                    f"got {names!r:.80}.",
                )
            pauses[field] = names
        modes = body.get("stream_mode", "values")
        if isinstance(modes, str):
            modes = [modes]
        if not isinstance(modes, list) or not all(m in _MODES for m in modes):
            raise ApiError(
                400,
                "bad_stream_mode",
                f"stream_mode must be one or a list of {list(_MODES)}; got {modes!r:.80}.",
            )
        modes = list(dict.fromkeys(modes or ["values"]))
        command = body.get("command")
        if command is not None:
            command = _fields(command, ("resume", "update", "goto"), "command")
            if body.get("input") is not None:
                raise ApiError(400, "bad_request", "Send input or command, not both.")
        metadata = _object(body.get("metadata"), "metadata")
        context = _object(body.get("context"), "context")
        config = dict(_object(body.get("config"), "config"))
        config.pop("callbacks", None)
        configurable = dict(_object(config.get("configurable"), "config.configurable"))
        configurable.update(context)
        for key in ("thread_id", "checkpoint_id", "checkpoint_ns", "assistant_id", "graph_id"):
            configurable.pop(key, None)
        config["configurable"] = configurable
        run_meta = {**_object(config.get("metadata"), "config.metadata"), **metadata}
        if run_meta:
            config["metadata"] = run_meta
        multitask = _choice(
            body.get("multitask_strategy"),
            "multitask_strategy",
            ("reject", "enqueue", "interrupt", "rollback"),
            "enqueue" if thread_id is not None else "reject",
        )
        if_not_exists = _choice(
            body.get("if_not_exists"), "if_not_exists", ("create", "reject"), "reject"
        )
        on_disconnect = _choice(
            body.get("on_disconnect"), "on_disconnect", ("cancel", "continue"), "continue"
        )
        on_completion = _choice(
            body.get("on_completion"), "on_completion", ("delete", "keep"), "delete"
        )
        for flag in ("stream_subgraphs", "stream_resumable"):
            if body.get(flag) is not None and not isinstance(body[flag], bool):
                raise ApiError(400, "bad_request", f"{flag} must be true or false.")
        graph = self.engine.graphs[name]
        stateless = thread_id is None
        await self._check_fork(body, thread_id, graph)
        if thread_id is None:
            thread_id = await self.engine.claim_thread(None, owner)
            await self.records.put(thread_id, owner, {}, name, new=False)
        else:
            thread_id = check_thread_id(thread_id, self.limits)
            known = await self.engine.owners.owner_of(thread_id)
            if known is not None and known != owner:
                raise ApiError(404, "unknown_thread", f"Thread {thread_id!r} not found.")
            existing = await self.records.get(thread_id)
            if existing is not None and existing.get("deleted"):
                known, existing = None, None
            if known is None:
                if if_not_exists == "reject":
                    raise ApiError(
                        404,
                        "unknown_thread",
                        f"Thread {thread_id!r} not found; create it first or send "
                        "if_not_exists='create'.",
                    )
                await self.engine.claim_thread(thread_id, owner)
                await self.records.put(thread_id, owner, {}, name)
            elif existing is None or existing.get("graph_id") is None:
                await self.records.put(
                    thread_id,
                    owner,
                    (existing or {}).get("metadata") or {},
                    name,
                    created_at=(existing or {}).get("created_at"),
                    new=existing is None,
                )
        native = {
            "graph": name,
            "input": body.get("input"),
            "config": config,
            "thread_id": thread_id,
            "stream_mode": sorted({_MODES[m] for m in modes}),
            "multitask_strategy": multitask,
        }
        checked = run_request(native, self.engine.graphs, self.limits)
        spec = {
            "modes": modes,
            "subgraphs": bool(body.get("stream_subgraphs")),
            "command": command,
            **pauses,
        }
        # a traceparent header makes the run a child of the caller's span, as on native routes
        checked = with_trace_context(attrs.evolve(checked, protocol=spec), request.headers)
        if graph.checkpointer is None and command is not None:
            raise ApiError(400, "no_checkpointer", f"Graph {name!r} keeps no state to resume.")
        record = await self.engine.start(checked, owner)
        stamp = now()
        run = {
            "run_id": record.run_id,
            "thread_id": thread_id,
            "assistant_id": assistant_id_of(name),
            "created_at": stamp,
            "updated_at": stamp,
            "metadata": metadata,
            "multitask_strategy": multitask,
            "kwargs": {"stream_mode": modes, "on_disconnect": on_disconnect},
            "status": "pending",
        }
        await self.records.add_run(thread_id, run)
        if stateless and on_completion == "delete":
            assert self.engine.tg is not None
            self.engine.tg.start_soon(self._delete_when_done, record.run_id, thread_id)
        return record, run

    async def _check_fork(
        self, body: Mapping[str, Any], thread_id: str | None, graph: CompiledGraph
    ) -> None:
        """A run starts from its thread's latest checkpoint: ``checkpoint`` or
        ``checkpoint_id`` may name that one (``useStream`` sends it), no other."""
        wanted = body.get("checkpoint_id")
        checkpoint = body.get("checkpoint")
        if checkpoint is not None:
            wanted = wanted or _object(checkpoint, "checkpoint").get("checkpoint_id")
        if wanted is None:
            return
        latest = None
        if thread_id is not None and graph.checkpointer is not None:
            found = await graph.checkpointer.alist(check_thread_id(thread_id, self.limits), limit=1)
            latest = found[0].id if found else None
        if wanted != latest:
            raise ApiError(
                501,
                "not_implemented",
                "A run from an earlier checkpoint (checkpoint, checkpoint_id) is not supported; "
                "runs continue from the thread's latest checkpoint.",
            )

    async def _delete_when_done(self, run_id: str, thread_id: str) -> None:
        try:
            async for _ in self.engine.follow(run_id, None):
                pass
            await anyio.sleep(1.0)  # a client waiting for the run reads its state first
            for saver in self.engine.owners.checkpointers:
                await saver.adelete_thread(thread_id)
            await self.records.delete(thread_id)
        except Exception:  # the database went away: the thread stays
            return

    def run_paths(self, thread_id: str, run_id: str) -> dict[str, str]:
        base = f"/threads/{thread_id}/runs/{run_id}"
        return {"Location": f"{base}/stream", "Content-Location": base}

    async def create_run(self, request: Request, owner: str) -> Response:
        thread_id = request.path_params.get("thread_id")
        _, run = await self.start(request, owner, thread_id)
        headers = self.run_paths(run["thread_id"], run["run_id"])
        headers["Location"] = headers["Content-Location"]
        return JSONResponse(run, headers=headers)

    async def stream_run(self, request: Request, owner: str) -> Response:
        thread_id = request.path_params.get("thread_id")
        record, run = await self.start(request, owner, thread_id)
        cancel = record if run["kwargs"]["on_disconnect"] == "cancel" else None
        return self.sse(record.run_id, run["thread_id"], None, cancel, owner, None)

    async def wait_run(self, request: Request, owner: str) -> Response:
        thread_id = request.path_params.get("thread_id")
        record, run = await self.start(request, owner, thread_id)
        values = await self.result(record.run_id, run["thread_id"], owner)
        headers = self.run_paths(run["thread_id"], run["run_id"])
        headers["Location"] = headers["Content-Location"] + "/join"
        return JSONResponse(values, headers=headers)

    async def result(self, run_id: str, thread_id: str, owner: str) -> Any:
        """Wait for a run to end; the thread's values then (with ``__interrupt__``), or
        ``{"__error__": ...}`` if it failed."""
        last = None
        async for batch in self.engine.follow(run_id, None):
            for entry in batch:
                if entry.event in TERMINAL:
                    last = entry
        if last is not None and last.event == "error":
            body = json.loads(last.data)
            return {"__error__": {"error": body.get("type"), "message": body.get("message")}}
        snap = await self.snapshot(thread_id, await self.record(thread_id))
        if snap is None:
            return None
        values = plain(snap.values)
        if snap.interrupts and isinstance(values, dict):
            values["__interrupt__"] = [plain(i) for i in snap.interrupts]
        return values

    async def run_of(self, request: Request, owner: str) -> tuple[str, str, dict[str, Any]]:
        thread_id = await self.owned_thread(request.path_params["thread_id"], owner)
        run_id = request.path_params["run_id"]
        info = await self.engine.info(run_id, owner)
        if info.thread_id != thread_id:
            raise ApiError(404, "unknown_run", f"Run {run_id!r:.80} not found.")
        for run in await self.records.runs(thread_id, 1000):
            if run.get("run_id") == run_id:
                return thread_id, run_id, {**run, "status": _RUN_STATUS.get(info.status, "error")}
        raise ApiError(404, "unknown_run", f"Run {run_id!r:.80} not found.")

    async def get_run(self, request: Request, owner: str) -> Response:
        _, _, run = await self.run_of(request, owner)
        return JSONResponse(run)

    async def list_runs(self, request: Request, owner: str) -> Response:
        thread_id = await self.owned_thread(request.path_params["thread_id"], owner)
        limit = _int(request.query_params.get("limit"), "limit", 1, 1000, 10)
        offset = _int(request.query_params.get("offset"), "offset", 0, 100_000, 0)
        status = request.query_params.get("status")
        out = []
        for run in (await self.records.runs(thread_id, offset + limit))[offset:]:
            try:
                info = await self.engine.info(str(run.get("run_id")), owner)
                run = {**run, "status": _RUN_STATUS.get(info.status, "error")}
            except ApiError:
                run = {**run, "status": "error"}
            if status is None or run["status"] == status:
                out.append(run)
        return JSONResponse(out)

    async def cancel_run(self, request: Request, owner: str) -> Response:
        _, run_id, _ = await self.run_of(request, owner)
        await self.edge.body(request)
        action = _choice(
            request.query_params.get("action"), "action", ("interrupt", "rollback"), "interrupt"
        )
        wait = request.query_params.get("wait", "0").lower() in ("1", "true")
        reason = "rollback" if action == "rollback" else "cancel"
        status = await self.engine.cancel(run_id, owner, reason)
        if wait:
            await self.engine.ended(run_id)
        return JSONResponse({"run_id": run_id, "status": _RUN_STATUS.get(status, status)})

    async def join_run(self, request: Request, owner: str) -> Response:
        thread_id, run_id, _ = await self.run_of(request, owner)
        return JSONResponse(await self.result(run_id, thread_id, owner))

    async def join_stream(self, request: Request, owner: str) -> Response:
        thread_id, run_id, _ = await self.run_of(request, owner)
        last = request.headers.get("last-event-id")
        if last in ("-1", "0", ""):
            last = None
        if last is not None and not self.engine.broker.valid_id(last):
            raise ApiError(
                400,
                "bad_last_event_id",
                f"Last-Event-ID {last!r:.60} is not an event id of this server.",
            )
        wanted = [m for m in request.query_params.getlist("stream_mode") if m]
        for mode in wanted:
            if mode not in _MODES:
                raise ApiError(400, "bad_stream_mode", f"stream_mode must be among {list(_MODES)}.")
        cancel = None
        if request.query_params.get("cancel_on_disconnect", "false").lower() in ("1", "true"):
            cancel = self.engine.runs.get(run_id)
        keep = None
        if wanted:
            keep = {"metadata", *("messages" if m == "messages-tuple" else m for m in wanted)}
        return self.sse(run_id, thread_id, last, cancel, owner, keep)

    async def delete_run(self, request: Request, owner: str) -> Response:
        thread_id, run_id, run = await self.run_of(request, owner)
        if run["status"] in ("pending", "running"):
            raise ApiError(
                409, "run_active", f"Run {run_id!r} is still {run['status']}; cancel it first."
            )
        await self.records.delete_run(thread_id, run_id)
        return Response(status_code=204)

    def sse(
        self,
        run_id: str,
        thread_id: str,
        after: str | None,
        cancel: RunRecord | None,
        owner: str,
        keep: set[str] | None,
    ) -> StreamingResponse:
        """Stream a run's log in the protocol's framing: ids (for ``Last-Event-ID``),
        ``event: <mode>[|<namespace>]``, an ``error`` event if it failed; the stream
        ends when the run does."""
        engine = self.engine

        async def frames() -> AsyncIterator[str]:
            ended = False
            try:
                with engine.metrics.client("sse"):
                    async for batch in engine.follow(run_id, after):
                        if not batch:
                            yield ": heartbeat\n\n"
                            continue
                        parts = []
                        for e in batch:
                            if e.event in TERMINAL:
                                ended = True
                                if e.event == "error":
                                    body = json.loads(e.data)
                                    data = dumps(
                                        {"error": body.get("type"), "message": body.get("message")}
                                    )
                                    parts.append(f"event: error\ndata: {data}\n\n")
                                continue
                            if keep is not None and e.event.split("|", 1)[0] not in keep:
                                continue
                            parts.append(
                                f"{'id: ' + e.id + chr(10) if e.id else ''}event: {e.event}\n"
                                f"data: {e.data}\n\n"
                            )
                        if parts:
                            yield "".join(parts)
            except ExpiredPositionError as exc:
                ended = True
                data = dumps({"error": "ExpiredPosition", "message": str(exc)})
                yield f"event: error\ndata: {data}\n\n"
            finally:
                if cancel is not None and not ended and not cancel.finished:
                    with anyio.CancelScope(shield=True):
                        await engine.cancel(cancel.run_id, owner)

        headers = {**_SSE_HEADERS, **self.run_paths(thread_id, run_id)}
        return StreamingResponse(frames(), media_type="text/event-stream", headers=headers)

    async def cancel_many(self, request: Request, owner: str) -> Response:
        body = _fields(
            await self.edge.body(request), ("thread_id", "run_ids", "status"), "a cancel request"
        )
        run_ids = body.get("run_ids") or []
        if not isinstance(run_ids, list) or not all(isinstance(r, str) for r in run_ids):
            raise ApiError(400, "bad_request", "run_ids must be a list of run ids.")
        if body.get("status") is not None:
            raise ApiError(501, "not_implemented", "POST /runs/cancel by status is not supported.")
        for run_id in run_ids[:1000]:
            await self.engine.cancel(run_id, owner)
        return Response(status_code=204)

    def not_implemented(self, what: str) -> Callable[[Request, str], Any]:
        async def endpoint(request: Request, owner: str) -> Response:
            raise ApiError(
                501,
                "not_implemented",
                f"{request.method} {what} is not supported by headwater (see "
                "docs/agent-protocol.md).",
            )

        return endpoint

    # -- routes ------------------------------------------------------------------------

    def routes(self, guarded: Callable[[Any], Any]) -> list[Route]:
        """The protocol's routes (``guarded`` adds authentication and error handling)."""
        r = Route
        g = guarded
        t = "/threads/{thread_id}"
        run = t + "/runs/{run_id}"
        todo = self.not_implemented
        return [
            r("/assistants/search", g(self.search_assistants), methods=["POST"]),
            r("/assistants/count", g(self.count_assistants), methods=["POST"]),
            r("/assistants", g(todo("/assistants")), methods=["POST"]),
            r("/assistants/{assistant_id}", g(self.get_assistant), methods=["GET"]),
            r("/assistants/{assistant_id}", g(todo("/assistants/{id}")), methods=["PATCH"]),
            r("/assistants/{assistant_id}", g(todo("/assistants/{id}")), methods=["DELETE"]),
            r("/assistants/{assistant_id}/graph", g(self.assistant_graph), methods=["GET"]),
            r("/assistants/{assistant_id}/schemas", g(self.assistant_schemas), methods=["GET"]),
            r("/assistants/{assistant_id}/subgraphs", g(self.assistant_subgraphs)),
            r("/assistants/{assistant_id}/subgraphs/{ns}", g(self.assistant_subgraphs)),
            r(
                "/assistants/{assistant_id}/versions",
                g(todo("/assistants/{id}/versions")),
                methods=["POST"],
            ),
            r(
                "/assistants/{assistant_id}/latest",
                g(todo("/assistants/{id}/latest")),
                methods=["POST"],
            ),
            r("/threads/search", g(self.search_threads), methods=["POST"]),
            r("/threads/count", g(self.count_threads), methods=["POST"]),
            r("/threads/prune", g(todo("/threads/prune")), methods=["POST"]),
            r(t, g(self.get_thread), methods=["GET"]),
            r(t, g(self.update_thread), methods=["PATCH"]),
            r(t, g(self.delete_thread), methods=["DELETE"]),
            r(t + "/copy", g(self.copy_thread), methods=["POST"]),
            r(t + "/state", g(self.update_state), methods=["POST"]),
            r(t + "/state/checkpoint", g(self.post_state_checkpoint), methods=["POST"]),
            r(t + "/state/{checkpoint_id}", g(self.get_state), methods=["GET"]),
            r(t + "/history", g(self.history), methods=["POST"]),
            r(t + "/stream", g(todo("/threads/{id}/stream"))),
            r(t + "/runs", g(self.create_run), methods=["POST"]),
            r(t + "/runs", g(self.list_runs), methods=["GET"]),
            r(t + "/runs/stream", g(self.stream_run), methods=["POST"]),
            r(t + "/runs/wait", g(self.wait_run), methods=["POST"]),
            r("/runs/stream", g(self.stream_run), methods=["POST"]),
            r("/runs/wait", g(self.wait_run), methods=["POST"]),
            r("/runs/cancel", g(self.cancel_many), methods=["POST"]),
            r("/runs/batch", g(todo("/runs/batch")), methods=["POST"]),
            r("/runs/crons", g(todo("/runs/crons")), methods=["POST"]),
            r("/runs/crons/search", g(todo("/runs/crons/search")), methods=["POST"]),
            r(t + "/runs/crons", g(todo("/threads/{id}/runs/crons")), methods=["POST"]),
            r("/store/items", g(todo("/store/items")), methods=["GET", "PUT", "DELETE"]),
            r("/store/items/search", g(todo("/store/items/search")), methods=["POST"]),
            r("/store/namespaces", g(todo("/store/namespaces")), methods=["POST"]),
            r(run, g(self.get_run), methods=["GET"]),
            r(run, g(self.delete_run), methods=["DELETE"]),
            r(run + "/cancel", g(self.cancel_run), methods=["POST"]),
            r(run + "/join", g(self.join_run), methods=["GET"]),
            r(run + "/stream", g(self.join_stream), methods=["GET"]),
        ]


def _select(items: list[dict[str, Any]], select: Any) -> list[dict[str, Any]]:
    if select is None:
        return items
    if not isinstance(select, list) or not all(isinstance(s, str) for s in select):
        raise ApiError(400, "bad_request", "select must be a list of field names.")
    return [{k: v for k, v in item.items() if k in select} for item in items]


def _state_schema(graph: CompiledGraph) -> dict[str, Any]:
    """A JSON schema naming the state's keys (their types are not described)."""
    return {
        "title": graph.name,
        "type": "object",
        "properties": {str(k): {} for k in sorted(graph.schema.keys)},
    }
