"""The wire JSON of events (EventEncoder): the same document as encoding each whole."""

from __future__ import annotations

import json
from typing import Any

import pytest
from headwater_server._runs import EventEncoder, encode_json

from headwater.messages import AIMessageChunk


def event(data: Any, *, kind: str = "on_chat_model_stream", run_id: str = "r1") -> dict[str, Any]:
    return {
        "event": kind,
        "name": "chat_node",
        "run_id": run_id,
        "parent_ids": ["g", "t"],
        "tags": ["llm"],
        "metadata": {"node": "chat_node", "ls_provider": "fake"},
        "data": data,
    }


def expected(e: dict[str, Any], **extra: Any) -> Any:
    data = e["data"]
    payload = dict(data) if isinstance(data, dict) else {"value": data}
    payload["_event"] = {k: e[k] for k in ("event", "name", "run_id", "parent_ids", "tags",
                                           "metadata")} | extra  # fmt: skip
    return json.loads(encode_json(payload))


@pytest.mark.parametrize(
    "data",
    [
        {"chunk": AIMessageChunk(content="Hel")},
        {},  # no fields: the document is {"_event": ...}
        {"output": {"n": 1}, "_event": "a field of the same name is replaced"},
        "a plain value",
        [1, 2],
    ],
)
def test_each_event_encodes_as_its_data_fields_plus_event_meta(data: Any) -> None:
    e = event(data)
    assert json.loads(EventEncoder()(e)) == expected(e)


def test_meta_is_reused_per_type_and_run_and_extra_fields_reach_it() -> None:
    encode = EventEncoder({"attempt": 2})
    first, second = event({"chunk": "a"}), event({"chunk": "b"})
    other_run = event({"chunk": "c"}, run_id="r2")
    end = event({"output": "x"}, kind="on_chat_model_end")
    for e in (first, second, other_run, end):
        assert json.loads(encode(e)) == expected(e, attempt=2)
    assert len(encode._meta) == 3  # (stream, r1), (stream, r2), (end, r1)
