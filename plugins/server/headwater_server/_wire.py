"""Wire JSON: what the server sends to clients is plain JSON, as a JavaScript client expects.

Tuples and sets are arrays; messages are LangChain-style dicts (``type``, ``content``,
``id``, ``tool_calls`` as ``[{name, args, id}]``, ``usage_metadata``,
``response_metadata`` …, the shape of ``langchain_core`` messages' ``model_dump()``);
errors are ``{"type", "message"}``; dates are ISO strings. headwater's serde type tags
(``{"__type__": ...}``) stay inside checkpoints and never reach a client.

Example::

    from headwater_server._wire import dumps

    dumps(AIMessageChunk(content="Hel"))  # '{"content":"Hel",...,"type":"AIMessageChunk",...}'
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import enum
import json
import math
import uuid
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

import attrs

from headwater.messages import AIMessage, AIMessageChunk, BaseMessage, ToolMessage

__all__ = ["MAX_DEPTH", "EventEncoder", "dumps", "plain"]

MAX_DEPTH = 200
"""Deepest nesting a value sent to a client may have (deeper: a clear error)."""

_SCALARS = (str, int, bool, type(None))


def plain(value: Any, depth: int = 0) -> Any:
    """``value`` as plain JSON data (dicts with string keys, lists, scalars).

    Example::

        plain(("a", {"b": {1, 2}}))  # ["a", {"b": [1, 2]}]
    """
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return value
    if depth > MAX_DEPTH:
        raise ValueError(f"a value nested deeper than {MAX_DEPTH} levels cannot be sent")
    depth += 1
    if kind is dict:
        return {
            (k if type(k) is str else _key(k)): (v if type(v) is str else plain(v, depth))
            for k, v in value.items()
        }
    if kind is list or kind is tuple:
        return [v if type(v) is str else plain(v, depth) for v in value]
    if isinstance(value, BaseMessage):
        return message_dict(value, depth)
    return _other(value, depth)


def _other(value: Any, depth: int) -> Any:
    if isinstance(value, _SCALARS):  # subclasses of str and int (enums aside)
        if isinstance(value, enum.Enum):
            return plain(value.value, depth)
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return plain(dict(value), depth - 1)
    if isinstance(value, list | tuple):
        return [plain(v, depth) for v in value]
    if isinstance(value, set | frozenset):
        items = [plain(v, depth) for v in value]
        try:
            return sorted(items)
        except TypeError:
            return items
    if isinstance(value, BaseException):
        return {"type": type(value).__name__, "message": str(value)}
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return plain(value.value, depth)
    if isinstance(value, uuid.UUID | PurePath):
        return str(value)
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(bytes(value)).decode("ascii")
    if attrs.has(type(value)):
        return {
            f.name: plain(getattr(value, f.name), depth)
            for f in attrs.fields(type(value))
            if not f.name.startswith("_")
        }
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: plain(getattr(value, f.name), depth)
            for f in dataclasses.fields(value)
            if not f.name.startswith("_")
        }
    dump = getattr(value, "model_dump", None)  # pydantic models (LangChain's messages too)
    if callable(dump):
        try:
            return plain(dump(), depth)
        except Exception:
            pass
    return str(value)


def _key(key: Any) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, bool | int | float) or key is None:
        return json.dumps(key)
    if isinstance(key, enum.Enum):
        return str(key.value)
    return str(key)


def message_dict(message: BaseMessage, depth: int = 0) -> dict[str, Any]:
    """A message as LangChain's ``model_dump()`` shapes it.

    Example::

        message_dict(HumanMessage(content="hi"))
        # {"content": "hi", "additional_kwargs": {}, "response_metadata": {},
        #  "type": "human", "name": None, "id": None}
    """
    content = message.content
    extra = getattr(message, "additional_kwargs", None)
    metadata = getattr(message, "response_metadata", None)
    out: dict[str, Any] = {
        "content": content if type(content) is str else plain(content, depth),
        "additional_kwargs": plain(extra, depth) if extra else {},
        "response_metadata": plain(metadata, depth) if metadata else {},
        "type": message.type,
        "name": message.name,
        "id": message.id,
    }
    if isinstance(message, AIMessage | AIMessageChunk):
        calls = message.tool_calls
        out["tool_calls"] = (
            [
                {"name": c.name, "args": plain(c.args, depth), "id": c.id, "type": "tool_call"}
                for c in calls
            ]
            if calls
            else []
        )
        invalid = getattr(message, "invalid_tool_calls", ())
        out["invalid_tool_calls"] = (
            [
                {
                    "name": c.name,
                    "args": c.args,
                    "id": c.id,
                    "error": c.error,
                    "type": "invalid_tool_call",
                }
                for c in invalid
            ]
            if invalid
            else []
        )
        usage = message.usage
        out["usage_metadata"] = (
            None
            if usage is None
            else {
                "input_tokens": usage.input_tokens,
                "output_tokens": usage.output_tokens,
                "total_tokens": usage.total_tokens,
            }
        )
        if isinstance(message, AIMessageChunk):
            chunks = message.tool_call_chunks
            out["tool_call_chunks"] = (
                [
                    {
                        "name": c.name,
                        "args": c.args,
                        "id": c.id,
                        "index": c.index,
                        "type": "tool_call_chunk",
                    }
                    for c in chunks
                ]
                if chunks
                else []
            )
            out["chunk_position"] = None
    elif isinstance(message, ToolMessage):
        out["tool_call_id"] = message.tool_call_id
        out["artifact"] = plain(getattr(message, "artifact", None), depth)
        out["status"] = message.status
    return out


def dumps(value: Any) -> str:
    """Compact JSON text of ``value`` as :func:`plain` makes it (ASCII only).

    Example::

        dumps({"pair": ("a", 1)})  # '{"pair":["a",1]}'
    """
    return json.dumps(plain(value), separators=(",", ":"), allow_nan=False)


_META_KEYS = ("event", "name", "run_id", "parent_ids", "tags", "metadata")


class EventEncoder:
    """The wire JSON of ``astream_events`` dicts: the event's ``data`` fields at the top
    level (``JSON.parse(e.data).chunk.content`` works as the spec's browser code expects)
    plus ``_event`` with its type, name, run id, parent ids, tags and metadata.

    Those describe where an event came from and repeat for every token of one model call,
    so their JSON is made once per ``(type, run_id)`` and reused. ``extra`` goes into
    every ``_event`` (a worker's ``attempt``).

    Example::

        encode = EventEncoder()
        encode({"event": "on_chain_end", "name": "n", "run_id": "r", "parent_ids": [],
                "tags": [], "metadata": {}, "data": {"output": 1}})
    """

    def __init__(self, extra: Mapping[str, Any] | None = None) -> None:
        self._extra = dict(extra or {})
        self._meta: dict[tuple[str, str], str] = {}

    def __call__(self, event: Mapping[str, Any]) -> str:
        key = (event["event"], event["run_id"])
        meta = self._meta.get(key)
        if meta is None:
            if len(self._meta) >= 4096:  # a long run of many calls: keep the cache small
                self._meta.clear()
            meta = dumps({**{k: event[k] for k in _META_KEYS}, **self._extra})
            self._meta[key] = meta
        data = event["data"]
        if isinstance(data, Mapping):
            fields = dict(data)
            fields.pop("_event", None)
        else:
            fields = {"value": data}
        body = dumps(fields)
        return f'{body[:-1]}{"," if fields else ""}"_event":{meta}}}'
