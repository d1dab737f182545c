"""One run's events become OpenTelemetry spans: :class:`OtelSink`.

Every ``*_start`` event opens a span, its ``*_end`` / ``*_error`` event ends it; spans
nest by the events' ``parent_ids`` (the last known one is the parent). The callback runs
synchronously where the event is emitted, so a span's start and end times are the
moments its events were emitted, not when an exporter got to them.

While a graph, node, model, tool or retriever span is open, it is also the *current*
OpenTelemetry span of the code it covers: spans made by the application or by other
instrumentations (an HTTP client under a chat model, a database call in a tool) nest
under it.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Final

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from headwater.errors import InvalidInputError
from headwater.events import Subscription
from headwater.messages import ToolMessage
from headwater_otel import _genai
from headwater_otel._context import TRACEPARENT, from_metadata
from headwater_otel._provider import resolve_provider
from headwater_otel._settings import capture_content

__all__ = ["KINDS", "OtelSink"]

try:
    _VERSION = version("headwater-otel")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    _VERSION = "0"

_log = logging.getLogger("headwater_otel")

_STREAM: Final = "on_chat_model_stream"

KINDS: Final = frozenset(
    {
        "on_chain_start",
        "on_chain_end",
        "on_chain_error",
        "on_interrupt",
        "on_chat_model_start",
        _STREAM,
        "on_chat_model_end",
        "on_chat_model_error",
        "on_tool_start",
        "on_tool_end",
        "on_tool_error",
        "on_retriever_start",
        "on_retriever_end",
        "on_retriever_error",
    }
)
"""The event kinds the sink turns into spans (and span events)."""

_GRAPH, _NODE, _CHAT, _TOOL, _RETRIEVER = range(5)
_CHAINS = frozenset({_GRAPH, _NODE})
_CHATS = frozenset({_CHAT})
_TOOLS = frozenset({_TOOL})
_RETRIEVERS = frozenset({_RETRIEVER})

_DESCRIPTION_LIMIT = 1024


class _Open:
    """A span that has started and not ended, with what it needs to end it."""

    __slots__ = ("context", "needs_thread", "role", "span", "start", "token")

    def __init__(self, span: Span, role: int, context: Context, start: int) -> None:
        self.span = span
        self.role = role
        self.context = context
        self.start = start
        self.token: object | None = None
        self.needs_thread = role == _GRAPH


class OtelSink:
    """The ``otel`` sink: a run's graph, node, model, tool and retriever calls as spans.

    Registered as ``otel`` (``config={"sinks": ["otel"]}``); with an OTLP endpoint in the
    environment every run gets one without asking. ``tracer_provider`` defaults to the
    one :func:`headwater_otel.enable` was given, else the application's global provider,
    else one built from the ``OTEL_*`` environment variables; ``capture_content``
    defaults to ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT`` (off).

    Example::

        app.invoke({"messages": ["hi"]}, {"sinks": ["otel"]})

        sink = OtelSink(tracer_provider=provider, capture_content=True)  # by hand
        run.bus.subscribe(sink.subscription())
    """

    def __init__(
        self,
        target: str = "",
        *,
        tracer_provider: Any = None,
        capture_content: bool | None = None,
    ) -> None:
        if target:
            raise InvalidInputError(
                f"The otel sink takes no target; got 'otel:{target}'. It exports where the "
                "OTEL_EXPORTER_OTLP_* environment variables say (or to the TracerProvider "
                "given to headwater_otel.enable()): use config={'sinks': ['otel']}."
            )
        provider = tracer_provider if tracer_provider is not None else resolve_provider()
        self._tracer = provider.get_tracer("headwater", _VERSION)
        self._content = _capture() if capture_content is None else bool(capture_content)
        self._open: dict[str, _Open] = {}
        self._first: dict[str, _Open] = {}  # chat spans still waiting for their first token
        self._failures = 0
        self._handlers: dict[str, Callable[..., None]] = {
            "on_chain_start": self._start_chain,
            "on_chain_end": self._end,
            "on_chain_error": functools.partial(self._error, _CHAINS),
            "on_interrupt": self._interrupt,
            "on_chat_model_start": self._start_chat,
            "on_chat_model_end": self._end_chat,
            "on_chat_model_error": functools.partial(self._error, _CHATS),
            "on_tool_start": self._start_tool,
            "on_tool_end": self._end_tool,
            "on_tool_error": functools.partial(self._error, _TOOLS),
            "on_retriever_start": self._start_retriever,
            "on_retriever_end": self._end_retriever,
            "on_retriever_error": functools.partial(self._error, _RETRIEVERS),
        }

    def __repr__(self) -> str:
        return f"OtelSink(open_spans={len(self._open)})"

    # -- the Sink protocol -----------------------------------------------------------------

    def subscription(self) -> Subscription:
        """The subscription that receives the run's events (raw: no event object is built).

        A model call's tokens come through a callable bound once per call
        (:attr:`~headwater.events.Subscription.bind_source`) that only looks for the first
        one, so tracing leaves the token fast path to whoever streams the run.

        Example::

            run.bus.subscribe(OtelSink().subscription())
        """
        return Subscription(
            callback=self._on_event, kinds=KINDS, raw=True, bind_source=self._bind_source
        )

    def close(self) -> None:
        """End every span still open (marked as cut off); called after the run's last event.

        Nothing is flushed here: the span processor exports in the background.

        Example::

            sink.close()
        """
        leftovers = list(self._open.values())
        self._open.clear()
        self._first.clear()
        for open_ in reversed(leftovers):  # the latest opened (the innermost) first
            span = open_.span
            if span.is_recording():
                span.set_attribute("error.type", "headwater.unfinished")
                span.set_status(Status(StatusCode.ERROR, "the run ended before this span did"))
            span.end()

    # -- events ----------------------------------------------------------------------------

    def _on_event(
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
        if kind == _STREAM:  # the token path: one dict lookup until the first token
            if self._first:
                self._first_token(run_id, data)
            return
        try:
            self._handlers[kind](name, run_id, parent_ids, tags, metadata, data)
        except Exception:  # tracing never fails a run
            self._failures += 1
            if self._failures == 1:
                _log.exception("headwater-otel: could not record a %s event", kind)

    def _bind_source(
        self, kind: str, ns: tuple[str, ...], header: Any
    ) -> Callable[[Any], bool] | None:
        """One model call's tokens: what :meth:`_on_event` does with each of them (look
        for the first one while the call's span waits for it), without the other fields.
        Says it wants no more once the span has its first token (or has ended)."""
        if kind != _STREAM:
            return None
        run_id = header[1]
        first = self._first
        first_token = self._first_token

        def put(data: Any) -> bool:
            if run_id in first:
                first_token(run_id, data)
                return run_id not in first
            return True

        return put

    def _first_token(self, run_id: str, data: Any) -> None:
        open_ = self._first.get(run_id)
        if open_ is None:
            return
        chunk = data.get("chunk") if isinstance(data, Mapping) else None
        if chunk is None or not (
            getattr(chunk, "content", None) or getattr(chunk, "tool_call_chunks", None)
        ):
            return  # a role-only or empty chunk is not the first token yet
        del self._first[run_id]
        now = time.time_ns()
        seconds = (now - open_.start) / 1e9
        span = open_.span
        span.set_attribute("gen_ai.response.time_to_first_chunk", seconds)
        span.add_event(
            "headwater.first_token", {"gen_ai.response.time_to_first_chunk": seconds}, now
        )

    # -- opening and ending spans ----------------------------------------------------------

    def _parent(self, parent_ids: tuple[str, ...]) -> _Open | None:
        spans = self._open
        for parent_id in reversed(parent_ids):
            found = spans.get(parent_id)
            if found is not None:
                return found
        return None

    def _begin(
        self,
        role: int,
        span_name: str,
        kind: SpanKind,
        run_id: str,
        parent: _Open | None,
        metadata: Mapping[str, Any],
        attributes: dict[str, Any],
    ) -> _Open | None:
        if run_id in self._open:  # an id already in use (events sent by hand): ignored
            return None
        if parent is not None:
            base: Context | None = parent.context
        elif isinstance(metadata, Mapping) and TRACEPARENT in metadata:
            base = from_metadata(metadata)
        else:
            base = None  # the current context: a caller's span becomes the run's parent
        start = time.time_ns()
        span = self._tracer.start_span(
            span_name, context=base, kind=kind, attributes=attributes, start_time=start
        )
        open_ = _Open(span, role, trace.set_span_in_context(span, base), start)
        open_.token = otel_context.attach(open_.context)
        self._open[run_id] = open_
        return open_

    def _take(self, run_id: str, roles: frozenset[int]) -> _Open | None:
        """The open span of ``run_id`` if it is of one of ``roles`` (an end of another
        family with the same id does not end it), removed from the open ones."""
        open_ = self._open.get(run_id)
        if open_ is None or open_.role not in roles:
            return None
        del self._open[run_id]
        return open_

    def _finish(self, open_: _Open) -> None:
        open_.span.end()
        token = open_.token
        # Only where this span is still the current one (the same task, nothing opened
        # since and left open): elsewhere there is nothing of ours to restore.
        if token is not None and otel_context.get_current() is open_.context:
            otel_context.detach(token)  # type: ignore[arg-type]

    def _end(
        self,
        name: str,
        run_id: str,
        parent_ids: tuple[str, ...],
        tags: tuple[str, ...],
        metadata: Mapping[str, Any],
        data: Any,
    ) -> None:
        open_ = self._take(run_id, _CHAINS)
        if open_ is None:
            return
        interrupt = data.get("interrupt") if isinstance(data, Mapping) else None
        if interrupt is not None and open_.span.is_recording():
            self._mark_interrupt(
                open_.span,
                getattr(interrupt, "id", None),
                getattr(interrupt, "node", None),
                getattr(interrupt, "value", None),
            )
        self._finish(open_)

    def _error(
        self,
        roles: frozenset[int],
        name: str,
        run_id: str,
        parent_ids: tuple[str, ...],
        tags: tuple[str, ...],
        metadata: Mapping[str, Any],
        data: Any,
    ) -> None:
        open_ = self._take(run_id, roles)
        if open_ is None:
            return
        if open_.role == _CHAT:
            self._first.pop(run_id, None)
        error = data.get("error") if isinstance(data, Mapping) else None
        span = open_.span
        if span.is_recording():
            if isinstance(error, Exception):
                span.record_exception(error, escaped=True)
                span.set_attribute("error.type", _genai.error_type(error))
                description = f"{type(error).__name__}: {error}"
                span.set_status(Status(StatusCode.ERROR, description[:_DESCRIPTION_LIMIT]))
            elif isinstance(error, BaseException):  # cancelled, or its consumer left early
                span.set_attribute("error.type", _genai.error_type(error))
                span.set_attribute("headwater.cancelled", True)
                span.set_status(Status(StatusCode.ERROR, "cancelled"))
            else:
                span.set_attribute("error.type", "_OTHER")
                span.set_status(Status(StatusCode.ERROR, f"{error!r:.200}"))
        self._finish(open_)

    def _interrupt(
        self,
        name: str,
        run_id: str,
        parent_ids: tuple[str, ...],
        tags: tuple[str, ...],
        metadata: Mapping[str, Any],
        data: Any,
    ) -> None:
        open_ = self._open.get(run_id)  # the paused graph run's own span
        if open_ is None or open_.role != _GRAPH or not open_.span.is_recording():
            return
        if not isinstance(data, Mapping):
            return
        self._mark_interrupt(open_.span, data.get("id"), data.get("node"), data.get("value"))

    def _mark_interrupt(self, span: Span, interrupt_id: Any, node: Any, value: Any) -> None:
        """An interrupt is a pause, not a failure: the span says so, its status stays unset."""
        attributes: dict[str, Any] = {"headwater.interrupt.id": str(interrupt_id or "")}
        if node is not None:
            attributes["headwater.node"] = str(node)
        if self._content and value is not None:
            attributes["headwater.interrupt.value"] = _genai.plain_json(value)
        span.set_attribute("headwater.interrupted", True)
        span.add_event("headwater.interrupt", attributes)

    # -- graphs and nodes ------------------------------------------------------------------

    def _start_chain(
        self,
        name: str,
        run_id: str,
        parent_ids: tuple[str, ...],
        tags: tuple[str, ...],
        metadata: Mapping[str, Any],
        data: Any,
    ) -> None:
        parent = self._parent(parent_ids) if parent_ids else None
        if parent is not None and parent.role == _GRAPH:  # a node task of that graph run
            attributes = _task_attributes(metadata, tags, run_id)
            node = metadata.get("node") or name
            attributes["headwater.node"] = str(node)
            opened = self._begin(
                _NODE, str(node), SpanKind.INTERNAL, run_id, parent, metadata, attributes
            )
            if opened is not None and parent.needs_thread:
                _fill_thread(parent, metadata)
            return
        attributes = {
            "gen_ai.operation.name": "invoke_workflow",
            "gen_ai.agent.name": name,
            "headwater.graph": name,
            "headwater.run_id": run_id,
        }
        if tags:
            attributes["headwater.tags"] = [str(t) for t in tags]
        self._begin(
            _GRAPH,
            f"invoke_workflow {name}",
            SpanKind.INTERNAL,
            run_id,
            parent,
            metadata,
            attributes,
        )

    # -- models, tools, retrievers ---------------------------------------------------------

    def _start_chat(
        self,
        name: str,
        run_id: str,
        parent_ids: tuple[str, ...],
        tags: tuple[str, ...],
        metadata: Mapping[str, Any],
        data: Any,
    ) -> None:
        model = str(metadata.get("ls_model_name") or "")
        attributes = _task_attributes(metadata, tags, run_id)
        attributes["gen_ai.operation.name"] = "chat"
        attributes["gen_ai.provider.name"] = str(metadata.get("ls_provider") or "_OTHER")
        attributes["gen_ai.request.stream"] = True
        attributes["headwater.name"] = name
        if model:
            attributes["gen_ai.request.model"] = model
        open_ = self._begin(
            _CHAT,
            f"chat {model}" if model else "chat",
            SpanKind.CLIENT,
            run_id,
            self._parent(parent_ids),
            metadata,
            attributes,
        )
        if open_ is None:
            return
        self._first[run_id] = open_
        if self._content and open_.span.is_recording() and isinstance(data, Mapping):
            messages = _genai.input_messages(data.get("messages"))
            if messages is not None:
                open_.span.set_attribute("gen_ai.input.messages", messages)

    def _end_chat(
        self,
        name: str,
        run_id: str,
        parent_ids: tuple[str, ...],
        tags: tuple[str, ...],
        metadata: Mapping[str, Any],
        data: Any,
    ) -> None:
        open_ = self._take(run_id, _CHATS)
        if open_ is None:
            return
        self._first.pop(run_id, None)
        span = open_.span
        if span.is_recording() and isinstance(data, Mapping):
            response = data.get("response", data.get("output"))
            usage = getattr(response, "usage", None)
            if usage is not None:
                span.set_attribute("gen_ai.usage.input_tokens", int(usage.input_tokens))
                span.set_attribute("gen_ai.usage.output_tokens", int(usage.output_tokens))
            meta = getattr(response, "response_metadata", None)
            finish = None
            if isinstance(meta, Mapping):
                finish = meta.get("finish_reason") or meta.get("stop_reason")
                if finish:
                    span.set_attribute("gen_ai.response.finish_reasons", [str(finish)])
                if meta.get("model_name"):
                    span.set_attribute("gen_ai.response.model", str(meta["model_name"]))
                if meta.get("id"):
                    span.set_attribute("gen_ai.response.id", str(meta["id"]))
            if self._content:
                output = _genai.output_messages(response, str(finish) if finish else None)
                if output is not None:
                    span.set_attribute("gen_ai.output.messages", output)
        self._finish(open_)

    def _start_tool(
        self,
        name: str,
        run_id: str,
        parent_ids: tuple[str, ...],
        tags: tuple[str, ...],
        metadata: Mapping[str, Any],
        data: Any,
    ) -> None:
        attributes = _task_attributes(metadata, tags, run_id)
        attributes["gen_ai.operation.name"] = "execute_tool"
        attributes["gen_ai.tool.name"] = name
        attributes["gen_ai.tool.type"] = "function"
        open_ = self._begin(
            _TOOL,
            f"execute_tool {name}",
            SpanKind.INTERNAL,
            run_id,
            self._parent(parent_ids),
            metadata,
            attributes,
        )
        if open_ is None:
            return
        if self._content and open_.span.is_recording() and isinstance(data, Mapping):
            open_.span.set_attribute(
                "gen_ai.tool.call.arguments", _genai.plain_json(data.get("input"))
            )

    def _end_tool(
        self,
        name: str,
        run_id: str,
        parent_ids: tuple[str, ...],
        tags: tuple[str, ...],
        metadata: Mapping[str, Any],
        data: Any,
    ) -> None:
        open_ = self._take(run_id, _TOOLS)
        if open_ is None:
            return
        if self._content and open_.span.is_recording() and isinstance(data, Mapping):
            output = data.get("output")
            if isinstance(output, ToolMessage):  # called with a tool call: the answer's content
                output = output.content
            open_.span.set_attribute("gen_ai.tool.call.result", _genai.plain_json(output))
        self._finish(open_)

    def _start_retriever(
        self,
        name: str,
        run_id: str,
        parent_ids: tuple[str, ...],
        tags: tuple[str, ...],
        metadata: Mapping[str, Any],
        data: Any,
    ) -> None:
        attributes = _task_attributes(metadata, tags, run_id)
        attributes["gen_ai.operation.name"] = "retrieval"
        attributes["gen_ai.data_source.id"] = name
        open_ = self._begin(
            _RETRIEVER,
            f"retrieval {name}",
            SpanKind.CLIENT,
            run_id,
            self._parent(parent_ids),
            metadata,
            attributes,
        )
        if open_ is None:
            return
        if self._content and open_.span.is_recording() and isinstance(data, Mapping):
            query = data.get("query")
            if query is not None:
                open_.span.set_attribute("gen_ai.retrieval.query.text", _genai.plain_json(query))

    def _end_retriever(
        self,
        name: str,
        run_id: str,
        parent_ids: tuple[str, ...],
        tags: tuple[str, ...],
        metadata: Mapping[str, Any],
        data: Any,
    ) -> None:
        open_ = self._take(run_id, _RETRIEVERS)
        if open_ is None:
            return
        span = open_.span
        if span.is_recording() and isinstance(data, Mapping):
            docs = data.get("documents", data.get("output"))
            if isinstance(docs, Sequence) and not isinstance(docs, str):
                span.set_attribute("headwater.retrieval.documents.count", len(docs))
                if self._content:
                    encoded = _genai.documents(docs)
                    if encoded is not None:
                        span.set_attribute("gen_ai.retrieval.documents", encoded)
        self._finish(open_)


def _capture() -> bool:
    return capture_content()


def _task_attributes(
    metadata: Mapping[str, Any], tags: tuple[str, ...], run_id: str
) -> dict[str, Any]:
    """headwater's metadata of an event inside a node, as span attributes."""
    attributes: dict[str, Any] = {"headwater.run_id": run_id}
    node = metadata.get("node")
    if node is not None:
        attributes["headwater.node"] = str(node)
    step = metadata.get("step")
    if isinstance(step, int):
        attributes["headwater.step"] = step
    triggers = metadata.get("triggers")
    if isinstance(triggers, list | tuple):
        attributes["headwater.triggers"] = [str(t) for t in triggers]
    path = metadata.get("path")
    if isinstance(path, list | tuple):
        attributes["headwater.path"] = [str(p) for p in path]
    thread_id = metadata.get("thread_id")
    if thread_id is not None:
        attributes["headwater.thread_id"] = str(thread_id)
        attributes["gen_ai.conversation.id"] = str(thread_id)
    namespace = metadata.get("checkpoint_ns")
    if namespace:
        attributes["headwater.checkpoint_ns"] = str(namespace)
    if tags:
        attributes["headwater.tags"] = [str(t) for t in tags]
    return attributes


def _fill_thread(graph: _Open, metadata: Mapping[str, Any]) -> None:
    """A graph run's span learns its thread (and namespace) from its first node."""
    graph.needs_thread = False
    span = graph.span
    if not span.is_recording():
        return
    thread_id = metadata.get("thread_id")
    if thread_id is not None:
        span.set_attribute("headwater.thread_id", str(thread_id))
        span.set_attribute("gen_ai.conversation.id", str(thread_id))
    namespace = metadata.get("checkpoint_ns")
    if namespace:
        span.set_attribute("headwater.checkpoint_ns", str(namespace))
