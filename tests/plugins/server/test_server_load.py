"""The server under load and abuse: 200 concurrent SSE clients, clients that never read,
WebSocket clients sending garbage, binary frames or nothing."""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import anyio
import httpx
from fixtures.graphs import chat_graph
from fixtures.loopback import serving
from headwater_server import create_app
from httpx_ws import connect_ws

from headwater.broker import MemoryBroker
from headwater.testing.fake import FakeChatModel

from .test_server import frames

TOKENS = 500


def token_graph(tokens: int = TOKENS) -> Any:
    return chat_graph(FakeChatModel([[f"t{i} " for i in range(tokens)]], cycle=True), name="tokens")


def test_200_concurrent_sse_clients_each_get_every_token_once_in_order() -> None:
    app = create_app({"tokens": token_graph()}, max_runs=50)
    expected = [f"t{i} " for i in range(TOKENS)]
    results: list[list[str]] = []
    failures: list[str] = []

    async def client(url: str, http: httpx.AsyncClient) -> None:
        body = {"input": {"messages": ["go"]}, "include_types": ["on_chat_model_stream"]}
        tokens: list[str] = []
        last_id = 0
        async with http.stream("POST", f"{url}/workflow/stream", json=body) as response:
            frame: dict[str, str] = {}
            async for line in response.aiter_lines():
                if line:
                    if not line.startswith(":"):
                        key, _, value = line.partition(": ")
                        frame[key] = value
                    continue
                if frame.get("event") == "on_chat_model_stream":
                    if int(frame["id"]) <= last_id:
                        failures.append(f"ids out of order: {frame['id']} after {last_id}")
                    last_id = int(frame["id"])
                    text = json.loads(frame["data"])["chunk"]["content"]
                    if text:  # the last chunk carries only the usage
                        tokens.append(text)
                frame = {}
        results.append(tokens)

    async def main(url: str) -> None:
        limits = httpx.Limits(max_connections=250, max_keepalive_connections=250)
        async with httpx.AsyncClient(timeout=120, limits=limits) as http:
            async with anyio.create_task_group() as tg:
                for _ in range(200):
                    tg.start_soon(client, url, http)

    with serving(app) as url:
        anyio.run(main, url)
        server = app.state.headwater
        assert len(server.runs) <= 51  # finished runs are evicted...
        broker = server.broker
        assert isinstance(broker, MemoryBroker)
        deadline = time.monotonic() + 5
        while len(broker._logs) > 51 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(broker._logs) <= 51  # ...and so are their logs: memory stays bounded
    assert failures == []
    assert len(results) == 200
    assert all(tokens == expected for tokens in results)


def test_an_sse_client_that_never_reads_slows_nothing_and_grows_nothing() -> None:
    app = create_app({"tokens": token_graph(20_000)}, broker=MemoryBroker(retention=2_000))
    with serving(app) as url:
        host, port = url.removeprefix("http://").split(":")
        body = json.dumps({"input": {"messages": ["go"]}}).encode()
        stuck = socket.create_connection((host, int(port)))
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.sendall(
            b"POST /workflow/stream HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )  # ...and never read a byte of the answer
        try:
            server = app.state.headwater
            deadline = time.monotonic() + 60
            while not server.runs or not all(r.finished for r in server.runs.values()):
                assert time.monotonic() < deadline, "the run was held up by a client not reading"
                time.sleep(0.05)
            assert [r.status for r in server.runs.values()] == ["done"]  # not cancelled
            (log,) = server.broker._logs.values()
            assert len(log.entries) <= 2 * 2_000  # the run's log stayed within retention
        finally:
            stuck.close()


def test_websocket_garbage_binary_and_silence_get_clear_errors() -> None:
    app = create_app({"tokens": token_graph(5)}, first_message_timeout=0.5)
    with serving(app) as url, httpx.Client(timeout=10) as client:
        with connect_ws(f"{url}/ws/workflow", client) as ws:
            ws.send_bytes(b"\x00\x01binary")
            reply = json.loads(ws.receive_text())
        assert reply["error"] == "binary_frame"
        with connect_ws(f"{url}/ws/workflow", client) as ws:
            ws.send_text('{"graph": "tokens", "state": {"messages": ["x"]}, "stream_mode": 7}')
            assert json.loads(ws.receive_text())["error"] == "UnknownStreamModeError"
        with connect_ws(f"{url}/ws/workflow", client) as ws:
            ws.send_text("[1, 2, 3]")
            assert json.loads(ws.receive_text())["error"] == "bad_request"
        with connect_ws(f"{url}/ws/workflow", client) as ws:  # says nothing at all
            reply = json.loads(ws.receive_text())
        assert reply["error"] == "timeout" and "first message" in reply["detail"]
        with connect_ws(f"{url}/ws/workflow", client) as ws:  # garbage after a good start
            ws.send_text(json.dumps({"state": {"messages": ["hi"]}}))
            ws.send_bytes(b"\xff\xfe")
            ws.send_text("not json at all")
            ws.send_text('{"type": 5}')
            kinds = []
            while not kinds or kinds[-1] != "end":
                kinds.append(json.loads(ws.receive_text())["type"])
        assert kinds[0] == "on_chain_start" and kinds[-1] == "end"
        assert client.get(f"{url}/graphs").status_code == 200  # the server is still up
    _ = frames  # shared SSE parser (imported so both files parse alike)
