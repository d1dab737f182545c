"""Reading what clients send: JSON bodies and run requests, checked field by field.

Every problem is an :class:`ApiError` (a JSON 4xx) naming the field and what is expected;
nothing a client sends reaches a graph, a checkpointer or a socket unchecked (too deep,
lone surrogates, wrong types, unknown keys).
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Mapping
from typing import Any

import attrs
from starlette.responses import JSONResponse

from headwater import DEFAULT_RECURSION_LIMIT
from headwater.queue import MULTITASK_STRATEGIES

__all__ = [
    "ApiError",
    "Limits",
    "RunRequest",
    "check_thread_id",
    "parse_json",
    "run_request",
]


class ApiError(Exception):
    """A client error: HTTP ``status`` with a JSON body ``{"error", "detail"}``.

    Example::

        raise ApiError(404, "unknown_run", "Run 'r1' not found.")
    """

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail

    def response(self) -> JSONResponse:
        """The JSON response of this error."""
        return JSONResponse({"error": self.error, "detail": self.detail}, status_code=self.status)


@attrs.frozen(kw_only=True)
class Limits:
    """The server's limits on what a request may ask for (see ``docs/server.md``).

    Example::

        Limits(max_recursion_limit=200, max_run_timeout=600)
    """

    max_body_bytes: int = 1_048_576
    max_depth: int = 100
    max_recursion_limit: int = DEFAULT_RECURSION_LIMIT
    max_run_timeout: float | None = None
    default_history_limit: int = 10
    max_history_limit: int = 1000
    max_tags: int = 64
    max_id_length: int = 200


_FILTER_KEYS = (
    "include_names",
    "include_types",
    "include_tags",
    "exclude_names",
    "exclude_types",
    "exclude_tags",
)
RUN_FIELDS = (
    "graph",
    "input",
    "state",
    "thread_id",
    "config",
    "stream_mode",
    *_FILTER_KEYS,
    "filters",
    "multitask_strategy",
    "timeout",
)
CONFIG_FIELDS = ("recursion_limit", "tags", "metadata", "configurable", "timeout")


@attrs.frozen(kw_only=True)
class RunRequest:
    """A checked request for a run, independent of the protocol that carried it.

    ``config`` holds only what the client may set (never ``thread_id``, which is
    ``thread_id`` here); ``stream_mode`` is ``None`` for ``astream_events`` (then
    ``filters`` and ``named_filters`` apply); ``multitask`` is one of
    :data:`headwater.queue.MULTITASK_STRATEGIES`; ``timeout`` is in seconds.

    Example::

        RunRequest(graph="chat", input={"messages": ["hi"]}, thread_id="t1")
    """

    graph: str
    input: Any = None
    config: Mapping[str, Any] = attrs.field(factory=dict)
    thread_id: str | None = None
    stream_mode: Any = None
    filters: Mapping[str, list[str]] = attrs.field(factory=dict)
    named_filters: list[str] | None = None
    multitask: str = "reject"
    timeout: float | None = None
    protocol: Mapping[str, Any] | None = None
    """A LangGraph-protocol run: ``modes`` (as the client named them), ``subgraphs``,
    ``command`` (``stream_mode`` then holds the core modes they need)."""

    def stream_spec(self) -> dict[str, Any]:
        """What a worker needs to open the same stream (plain JSON)."""
        if self.protocol is not None:
            return {"stream_mode": self.stream_mode, "protocol": dict(self.protocol)}
        if self.stream_mode is not None:
            return {"stream_mode": self.stream_mode}
        return {**self.filters, "filters": self.named_filters}


def parse_json(raw: bytes | str, limits: Limits, what: str = "Request body") -> Any:
    """Parse JSON text, refusing what would break later: nesting deeper than
    ``limits.max_depth`` and strings that are not valid Unicode (lone surrogates).

    Example::

        parse_json(b'{"input": {}}', Limits())
    """
    try:
        value = json.loads(raw)
    except RecursionError:
        raise ApiError(
            400, "too_deep", f"{what} is nested deeper than {limits.max_depth} levels."
        ) from None
    except ValueError as exc:  # also UnicodeDecodeError: the bytes are not UTF-8
        raise ApiError(400, "malformed_json", f"{what} is not valid JSON: {exc}.") from None
    _check_value(value, limits.max_depth, what)
    return value


def _check_value(value: Any, max_depth: int, what: str) -> None:
    stack: list[tuple[Any, str, int]] = [(value, "", 0)]
    while stack:
        item, path, depth = stack.pop()
        if depth > max_depth:
            raise ApiError(
                400, "too_deep", f"{what} is nested deeper than {max_depth} levels (at {path})."
            )
        if isinstance(item, str):
            _check_text(item, path, what)
        elif isinstance(item, dict):
            for key, sub in item.items():
                _check_text(key, f"{path}.{key[:40]}" if path else key[:40], what)
                stack.append((sub, f"{path}.{key[:40]}" if path else key[:40], depth + 1))
        elif isinstance(item, list):
            for i, sub in enumerate(item):
                stack.append((sub, f"{path}[{i}]", depth + 1))


def _check_text(text: str, path: str, what: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        where = f" at {path!r}" if path else ""
        raise ApiError(
            400,
            "bad_string",
            f"{what} holds a string that is not valid Unicode{where} (a lone surrogate "
            "escape such as \\ud800): send text as UTF-8.",
        ) from None


def check_thread_id(thread_id: Any, limits: Limits, field: str = "thread_id") -> str:
    """A thread id as a client may give it: a non-empty printable string, not too long.

    Example::

        check_thread_id("support-42", Limits())
    """
    if (
        not isinstance(thread_id, str)
        or not thread_id
        or len(thread_id) > limits.max_id_length
        or not thread_id.isprintable()
    ):
        raise ApiError(
            400,
            "bad_thread_id",
            f"{field} must be a non-empty string of printable characters "
            f"(≤ {limits.max_id_length}); got {thread_id!r:.60}.",
        )
    return thread_id


def _string_list(value: Any, field: str, limit: int, code: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ApiError(400, code, f"{field} must be a list of strings; got {value!r:.60}.")
    if len(value) > limit:
        raise ApiError(400, code, f"{field} may hold at most {limit} entries.")
    return value


def _seconds(value: Any, field: str, limits: Limits) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ApiError(
            400, "bad_timeout", f"{field} must be a positive number of seconds; got {value!r:.40}."
        )
    if limits.max_run_timeout is not None and value > limits.max_run_timeout:
        raise ApiError(
            400,
            "bad_timeout",
            f"{field} {value:g} exceeds this server's maximum of {limits.max_run_timeout:g} s.",
        )
    return float(value)


def run_request(body: Any, graphs: Mapping[str, Any], limits: Limits) -> RunRequest:
    """Check a run request (a parsed JSON body) and return it as a :class:`RunRequest`.

    Example::

        run_request({"input": {"messages": ["hi"]}}, {"chat": chat}, Limits())
    """
    if not isinstance(body, dict):
        raise ApiError(400, "bad_request", "A run request must be a JSON object.")
    unknown = [k for k in body if k not in RUN_FIELDS]
    if unknown:
        close = difflib.get_close_matches(unknown[0], RUN_FIELDS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ApiError(
            400,
            "unknown_field",
            f"Unknown field {unknown[0]!r:.60} in the run request.{hint} Accepted fields: "
            f"{', '.join(RUN_FIELDS)}.",
        )
    name = body.get("graph")
    if name is None:
        if len(graphs) != 1:
            raise ApiError(400, "graph_required", f"Name the graph: one of {sorted(graphs)}.")
        name = next(iter(graphs))
    elif not isinstance(name, str) or name not in graphs:
        raise ApiError(
            404, "unknown_graph", f"Unknown graph {name!r:.60}; graphs: {sorted(graphs)}."
        )
    if "input" in body and "state" in body:
        raise ApiError(400, "bad_request", "Send the input as 'input' or 'state', not both.")
    input = body.get("input", body.get("state"))

    config = body.get("config")
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise ApiError(400, "bad_config", f"config must be an object; got {config!r:.60}.")
    extra = [k for k in config if k not in CONFIG_FIELDS]
    if extra:
        raise ApiError(
            400,
            "bad_config",
            f"config may only hold {list(CONFIG_FIELDS)}; got {extra[0]!r:.60}.",
        )
    checked: dict[str, Any] = {}
    if "recursion_limit" in config:
        limit = config["recursion_limit"]
        if type(limit) is not int or not 1 <= limit <= limits.max_recursion_limit:
            raise ApiError(
                400,
                "bad_config",
                "config.recursion_limit must be an int from 1 to "
                f"{limits.max_recursion_limit} (this server's maximum); got {limit!r:.40}.",
            )
        checked["recursion_limit"] = limit
    if config.get("tags") is not None:
        checked["tags"] = _string_list(config["tags"], "config.tags", limits.max_tags, "bad_config")
    if config.get("metadata") is not None:
        if not isinstance(config["metadata"], dict):
            raise ApiError(
                400,
                "bad_config",
                f"config.metadata must be an object; got {config['metadata']!r:.60}.",
            )
        checked["metadata"] = config["metadata"]
    configurable = config.get("configurable")
    if configurable is None:
        configurable = {}
    if not isinstance(configurable, dict):
        raise ApiError(
            400,
            "bad_config",
            f"config.configurable must be an object; got {configurable!r:.60}.",
        )
    configurable = dict(configurable)

    thread_id = body.get("thread_id")
    nested = configurable.pop("thread_id", None)
    if nested is not None:
        nested = check_thread_id(nested, limits, "config.configurable.thread_id")
        if thread_id is not None and thread_id != nested:
            raise ApiError(
                400,
                "bad_thread_id",
                "thread_id and config.configurable.thread_id differ; send one of them.",
            )
        thread_id = nested
    if thread_id is not None:
        thread_id = check_thread_id(thread_id, limits)
    if "checkpoint_id" in configurable:
        raise ApiError(
            400,
            "bad_config",
            "config.configurable.checkpoint_id is not supported for runs: a run continues "
            "from its thread's latest checkpoint.",
        )
    checked["configurable"] = configurable

    timeout = body.get("timeout", config.get("timeout"))
    if "timeout" in body and "timeout" in config:
        raise ApiError(400, "bad_timeout", "Send timeout or config.timeout, not both.")
    if timeout is not None:
        timeout = _seconds(timeout, "timeout", limits)
        checked["timeout"] = timeout

    mode = body.get("stream_mode")
    filters: dict[str, list[str]] = {}
    named = None
    if mode is not None:
        if not isinstance(mode, str) and not (
            isinstance(mode, list) and mode and all(isinstance(m, str) for m in mode)
        ):
            raise ApiError(
                400,
                "UnknownStreamModeError",
                f"stream_mode must be a mode name or a non-empty list of them; got {mode!r:.60}.",
            )
        if isinstance(mode, list) and len(mode) > 16:
            raise ApiError(400, "UnknownStreamModeError", "stream_mode lists at most 16 modes.")
    else:
        for key in _FILTER_KEYS:
            if body.get(key) is not None:
                filters[key] = _string_list(body[key], key, 1000, "InvalidFilterError")
        named = body.get("filters")
        if named is not None and not (
            isinstance(named, list) and all(isinstance(f, str) for f in named)
        ):
            raise ApiError(400, "bad_filter", "filters must be a list of installed filter names.")

    multitask = body.get("multitask_strategy", "reject")
    if multitask not in MULTITASK_STRATEGIES:
        raise ApiError(
            400,
            "bad_multitask_strategy",
            f"multitask_strategy must be one of {list(MULTITASK_STRATEGIES)}; "
            f"got {multitask!r:.40}.",
        )
    return RunRequest(
        graph=name,
        input=input,
        config=checked,
        thread_id=thread_id,
        stream_mode=mode,
        filters=filters,
        named_filters=named,
        multitask=multitask,
        timeout=timeout,
    )
