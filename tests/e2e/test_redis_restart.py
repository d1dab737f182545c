"""A Redis restart in the middle of a run: the run goes on, clients reconnect and end.

Uses a private redis-server on its own port (the shared one is never restarted)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
import redis

from headwater.testing.services import require_services, service_url

from .test_scaleout import GRAPH, PG, STEPS, _free_port, _pg_ping, frames


def _start_redis(port: int, workdir: Path) -> subprocess.Popen[bytes]:
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while True:
        try:
            redis.Redis(port=port).ping()
            return server
        except redis.ConnectionError:
            assert time.monotonic() < deadline, "private redis-server did not start"
            time.sleep(0.05)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    if shutil.which("redis-server") is None:
        if require_services():
            pytest.fail("redis-server is not installed")
        pytest.skip("redis-server is not installed")
    yield _free_port(), tmp_path


def test_runs_survive_a_redis_restart(private_redis: tuple[int, Path]) -> None:
    pg = service_url("HEADWATER_TEST_POSTGRES_URL", PG, _pg_ping)
    port, root = private_redis
    server_redis = _start_redis(port, root)
    broker = f"redis://127.0.0.1:{port}/0"
    (root / "scaleout_graph.py").write_text(GRAPH)
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    common = ["scaleout_graph:counter", "--checkpointer", pg, "--broker", broker, "--queue", pg]
    http_port = _free_port()
    logs = [open(root / name, "w") for name in ("serve.log", "worker.log")]
    procs = [
        subprocess.Popen([sys.executable, "-m", "headwater", "serve", *common,
                          "--port", str(http_port)],
                         env=env, stdout=subprocess.DEVNULL, stderr=logs[0]),
        subprocess.Popen([sys.executable, "-m", "headwater", "worker", *common, "--poll", "0.1",
                          "--name", f"restart-{uuid.uuid4().hex[:6]}"],
                         env=env, stdout=subprocess.DEVNULL, stderr=logs[1]),
    ]  # fmt: skip
    url = f"http://127.0.0.1:{http_port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(url + "/graphs", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, (root / "serve.log").read_text()
                time.sleep(0.1)
        thread = uuid.uuid4().hex
        run_id = httpx.post(
            f"{url}/runs", json={"thread_id": thread, "input": {"steps": []}}
        ).json()["run_id"]
        seen = []
        with (
            httpx.Client(timeout=30) as client,
            client.stream("GET", f"{url}/runs/{run_id}/stream") as response,
        ):
            for frame in frames(response):
                seen.append(frame)
                if frame["event"] == "on_custom_event" and json.loads(frame["data"])["step"] == 3:
                    break
        server_redis.send_signal(signal.SIGKILL)  # Redis dies mid-run, losing every stream
        server_redis.wait(10)
        time.sleep(0.5)
        server_redis = _start_redis(port, root)
        rest: list[dict[str, str]] = []
        for _ in range(40):  # reconnect with Last-Event-ID until the stream ends
            try:
                with (
                    httpx.Client(timeout=30) as client,
                    client.stream(
                        "GET",
                        f"{url}/runs/{run_id}/stream",
                        headers={"Last-Event-ID": seen[-1]["id"]},
                    ) as response,
                ):
                    for frame in frames(response):
                        rest.append(frame)
                    if rest and rest[-1]["event"] in ("end", "error", "cancelled"):
                        break
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        assert rest and rest[-1]["event"] == "end"
        steps_after = [
            json.loads(f["data"])["step"] for f in rest if f["event"] == "on_custom_event"
        ]
        assert steps_after == sorted(steps_after) and (
            not steps_after or steps_after[-1] == STEPS - 1
        )
        with psycopg.connect(pg) as db:
            row = db.execute(
                "SELECT status FROM headwater_runs WHERE run_id = %s", (run_id,)
            ).fetchone()
        assert row is not None and row[0] == "done"
        state = httpx.get(f"{url}/threads/{thread}/state", timeout=10).json()
        assert state["values"]["steps"] == list(range(STEPS))  # the run itself lost nothing
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(10)
        server_redis.terminate()
        server_redis.wait(10)
        for log in logs:
            log.close()
