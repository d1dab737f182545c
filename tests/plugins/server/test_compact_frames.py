"""Compact SSE frames (``?frames=compact``): each event header once per source, then by
reference; expanded, exactly the full frames; fewer bytes per token. Real uvicorn."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from fixtures.graphs import chat_graph
from fixtures.loopback import serving
from headwater_server import create_app
from headwater_server._frames import Compactor
from hypothesis import given, settings
from hypothesis import strategies as st

from headwater.testing.fake import FakeChatModel

TOKENS = 300


def chat_app() -> Any:
    llm = FakeChatModel([" ".join(f"w{i}" for i in range(TOKENS))], cycle=True)
    return create_app({"chat": chat_graph(llm)})


def frames(text: str) -> list[tuple[str | None, str, str]]:
    """(id, event, data) of each SSE frame of ``text``."""
    out = []
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            if line and not line.startswith(":"):
                key, _, value = line.partition(": ")
                fields[key] = value
        if "event" in fields:
            out.append((fields.get("id"), fields["event"], fields["data"]))
    return out


def expand(items: list[tuple[str | None, str, str]]) -> list[tuple[str | None, str, Any]]:
    """What a compact-frames client does: remember each header by its ref."""
    headers: dict[int, Any] = {}
    out = []
    for id_, event, data in items:
        body = json.loads(data)
        header = body.get("_event") if isinstance(body, dict) else None
        if isinstance(header, dict) and "ref" in header:
            if len(header) == 1:
                body["_event"] = headers[header["ref"]]
            else:
                ref = header.pop("ref")
                headers[ref] = header
        out.append((id_, event, body))
    return out


BODY = {"graph": "chat", "state": {"messages": ["hi"]}}


def test_compact_frames_expand_to_the_full_ones_in_fewer_bytes() -> None:
    app = chat_app()
    with serving(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        started = client.post("/runs", json=BODY).json()
        run = started["run_id"]
        full_text = client.get(f"/runs/{run}/stream").text
        compact_text = client.get(f"/runs/{run}/stream?frames=compact").text
    full, compact = frames(full_text), frames(compact_text)
    assert [(i, e) for i, e, _ in compact] == [(i, e) for i, e, _ in full]
    assert expand(compact) == [(i, e, json.loads(d)) for i, e, d in full]
    tokens = [d for _, e, d in compact if e == "on_chat_model_stream"]
    assert len(tokens) >= TOKENS
    assert sum('"ref"' in d and '"metadata"' in d for d in tokens) == 1  # one header, in full
    full_bytes = sum(len(d) for _, e, d in full if e == "on_chat_model_stream")
    compact_bytes = sum(len(d) for d in tokens)
    assert compact_bytes * 2.5 < full_bytes  # the header was most of each token's frame


def test_a_reconnecting_compact_client_gets_the_headers_again() -> None:
    app = chat_app()
    with serving(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        run = client.post("/runs", json=BODY).json()["run_id"]
        first = frames(client.get(f"/runs/{run}/stream?frames=compact").text)
        middle = [i for i, e, _ in first if e == "on_chat_model_stream"][TOKENS // 2]
        rest = frames(
            client.get(f"/runs/{run}/stream?frames=compact", headers={"Last-Event-ID": middle}).text
        )
        # and a stream started with compact frames on /workflow/stream
        with client.stream("POST", "/workflow/stream?frames=compact", json=BODY) as response:
            live = frames(response.read().decode())
    expanded = expand(rest)  # every ref resolves: the headers came again on this connection
    assert expanded[0][2]["_event"]["event"] == "on_chat_model_stream"
    assert "metadata" in expanded[0][2]["_event"]
    assert [i for i, _, _ in rest] == [i for i, _, _ in first][len(first) - len(rest) :]
    assert sum(e == "on_chat_model_stream" for _, e, _ in live) >= TOKENS
    assert all(
        "metadata" in body["_event"]
        for _, e, body in expand(live)
        if isinstance(body, dict) and "_event" in body
    )


@pytest.mark.parametrize("value", ["tiny", "", "COMPACT", "compact,full"])
def test_an_unknown_frame_format_is_a_400_naming_the_formats(value: str) -> None:
    app = chat_app()
    with serving(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        run = client.post("/runs", json=BODY).json()["run_id"]
        for response in (
            client.get(f"/runs/{run}/stream", params={"frames": value}),
            client.post("/workflow/stream", params={"frames": value}, json=BODY),
        ):
            assert response.status_code == 400
            assert response.json()["error"] == "bad_frames"
            assert "full, compact" in response.json()["detail"]


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
_headers = st.fixed_dictionaries(
    {
        "event": st.sampled_from(["on_chat_model_stream", "on_chain_end"]),
        "run_id": st.text(max_size=4),
    },
    optional={"metadata": st.dictionaries(st.sampled_from(["_event", "event", "x"]), _json)},
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.dictionaries(st.text(max_size=5), _json, max_size=3), _headers), max_size=12
    )
)
def test_expanded_compact_frames_are_the_full_frames(frames_in: list[tuple[Any, Any]]) -> None:
    """Whatever the fields and headers (look-alike ``_event`` keys inside them too)."""
    compact = Compactor()
    full = [
        json.dumps({**fields, "_event": header}, separators=(",", ":"))
        for fields, header in frames_in
    ]
    out = [(None, "e", compact(data)) for data in full]
    assert expand(out) == [(None, "e", json.loads(data)) for data in full]
