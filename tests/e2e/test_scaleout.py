"""Scale-out with real processes: two `headwater serve` and two `headwater worker` sharing
PostgreSQL (queue, checkpoints) and Redis (events)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest
import redis

from headwater.testing.services import service_url

PG = "postgresql://postgres@127.0.0.1:5432/test"
REDIS = "redis://127.0.0.1:6379/0"
STEPS = 12

GRAPH = textwrap.dedent(
    """
    import operator, time
    from typing import Annotated, TypedDict
    import anyio
    from headwater import END, START, StateGraph, get_stream_writer

    class State(TypedDict):
        steps: Annotated[list[int], operator.add]

    async def step(state):
        n = len(state["steps"])
        get_stream_writer()({"step": n})
        await anyio.sleep(0.15)
        return {"steps": [n]}

    def again(state):
        return "step" if len(state["steps"]) < STEPS else END

    counter = StateGraph(State)
    counter.add_node("step", step)
    counter.add_edge(START, "step")
    counter.add_conditional_edges("step", again, ["step", END])
    """
).replace("STEPS", str(STEPS))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pg_ping(url: str) -> None:
    with psycopg.connect(url, connect_timeout=3) as db:
        db.execute("SELECT 1")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    pg = service_url("HEADWATER_TEST_POSTGRES_URL", PG, _pg_ping)
    rd = service_url("HEADWATER_TEST_REDIS_URL", REDIS, lambda u: redis.Redis.from_url(u).ping())
    root = tmp_path_factory.mktemp("cluster")
    (root / "scaleout_graph.py").write_text(GRAPH)
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    target = "scaleout_graph:counter"
    common = ["--checkpointer", pg, "--broker", rd]
    procs: dict[str, subprocess.Popen[str]] = {}
    logs = {n: open(root / f"{n}.log", "w") for n in ("A", "B", "w1", "w2")}
    ports = {}
    for name in ("A", "B"):
        ports[name] = _free_port()
        procs[name] = subprocess.Popen(
            [sys.executable, "-m", "headwater", "serve", target, "--port", str(ports[name]),
             "--queue", pg, *common],
            env=env, stdout=subprocess.DEVNULL, stderr=logs[name], text=True,
        )  # fmt: skip
    for name in ("w1", "w2"):
        procs[name] = subprocess.Popen(
            [sys.executable, "-m", "headwater", "worker", target, "--queue", pg, *common,
             "--lease", "1.5", "--poll", "0.1", "--name", f"{name}-{uuid.uuid4().hex[:6]}"],
            env=env, stdout=subprocess.DEVNULL, stderr=logs[name], text=True,
        )  # fmt: skip
    urls = {n: f"http://127.0.0.1:{p}" for n, p in ports.items()}
    deadline = time.monotonic() + 30
    for url in urls.values():
        while True:
            try:
                httpx.get(url + "/graphs", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, (root / "A.log").read_text()
                time.sleep(0.1)
    try:
        yield {"urls": urls, "procs": procs, "pg": pg, "root": root}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in procs.values():
            proc.wait(10)
        for log in logs.values():
            log.close()


def frames(response: httpx.Response) -> Iterator[dict[str, str]]:
    frame: dict[str, str] = {}
    for line in response.iter_lines():
        if not line:
            if "event" in frame:
                yield frame
            frame = {}
        elif not line.startswith(":"):
            key, _, value = line.partition(": ")
            frame[key] = value


def read_all(url: str, run_id: str, last: str | None = None) -> list[dict[str, str]]:
    headers = {"Last-Event-ID": last} if last else {}
    with (
        httpx.Client(timeout=30) as client,
        client.stream("GET", f"{url}/runs/{run_id}/stream", headers=headers) as response,
    ):
        assert response.status_code == 200, response.read()
        return list(frames(response))


def start(url: str) -> tuple[str, str]:
    thread = uuid.uuid4().hex
    reply = httpx.post(
        f"{url}/runs", json={"thread_id": thread, "input": {"steps": []}}, timeout=10
    )
    assert reply.status_code == 202, reply.text
    return reply.json()["run_id"], thread


def test_start_on_one_server_stream_from_the_other(cluster: dict[str, Any]) -> None:
    a, b = cluster["urls"]["A"], cluster["urls"]["B"]
    run_id, thread = start(a)
    events = read_all(b, run_id)
    assert events[-1]["event"] == "end"
    customs = [json.loads(e["data"])["step"] for e in events if e["event"] == "on_custom_event"]
    assert customs == list(range(STEPS))
    assert httpx.get(f"{b}/runs/{run_id}", timeout=10).json()["status"] == "done"
    state = httpx.get(f"{a}/threads/{thread}/state", timeout=10).json()
    assert state["values"]["steps"] == list(range(STEPS))


def test_reconnect_with_last_event_id_to_another_server(cluster: dict[str, Any]) -> None:
    a, b = cluster["urls"]["A"], cluster["urls"]["B"]
    run_id, _ = start(a)
    seen: list[dict[str, str]] = []
    with (
        httpx.Client(timeout=30) as client,
        client.stream("GET", f"{a}/runs/{run_id}/stream") as response,
    ):
        for frame in frames(response):
            seen.append(frame)
            if len(seen) == 6:
                break  # the connection drops mid-run
    rest = read_all(b, run_id, last=seen[-1]["id"])
    everything = read_all(a, run_id)
    assert seen + rest == everything  # no gap, no duplicate
    assert rest[-1]["event"] == "end"
    bad = httpx.get(f"{b}/runs/{run_id}/stream", headers={"Last-Event-ID": "nonsense"}, timeout=10)
    assert bad.status_code == 400


def test_killed_worker_loses_its_lease_and_the_other_finishes_the_run(
    cluster: dict[str, Any],
) -> None:
    a, b = cluster["urls"]["A"], cluster["urls"]["B"]
    run_id, thread = start(a)
    worker = None
    with (
        httpx.Client(timeout=30) as client,
        client.stream("GET", f"{b}/runs/{run_id}/stream") as response,
    ):
        for frame in frames(response):
            if frame["event"] == "on_custom_event" and json.loads(frame["data"])["step"] == 4:
                with psycopg.connect(cluster["pg"]) as db:
                    row = db.execute(
                        "SELECT worker FROM headwater_runs WHERE run_id = %s", (run_id,)
                    ).fetchone()
                worker = row[0] if row else None
                break
    assert worker is not None
    victim = next(n for n in ("w1", "w2") if worker.startswith(n))
    cluster["procs"][victim].send_signal(signal.SIGKILL)
    cluster["procs"][victim].wait(10)
    events = read_all(b, run_id)
    kinds = [e["event"] for e in events]
    assert kinds[-1] == "end" and "resumed" in kinds
    resumed_at = kinds.index("resumed")
    assert json.loads(events[resumed_at]["data"]) == {"attempt": 2}
    after = [
        json.loads(e["data"]) for e in events[resumed_at + 1 :] if e["event"].startswith("on_")
    ]
    assert after and all(e["_event"]["attempt"] == 2 for e in after)  # re-emitted events are marked
    state = httpx.get(f"{b}/threads/{thread}/state", timeout=10).json()
    assert state["values"]["steps"] == list(range(STEPS))  # same as an uninterrupted run
    assert httpx.get(f"{a}/runs/{run_id}", timeout=10).json()["status"] == "done"


def test_a_worker_executes_several_runs_at_once(cluster: dict[str, Any]) -> None:
    # 4 runs of 1.8 s each, 2 workers: every run is claimed within a poll (0.1 s), long
    # before any finishes, so some worker holds two at once, which one-at-a-time could not.
    a = cluster["urls"]["A"]
    runs = [start(a)[0] for _ in range(4)]
    most = 0
    deadline = time.monotonic() + 60
    with psycopg.connect(cluster["pg"], autocommit=True) as db:
        while True:
            rows = db.execute(
                "SELECT worker, count(*) FILTER (WHERE status = 'running'), "
                "count(*) FILTER (WHERE status IN ('done', 'error')) "
                "FROM headwater_runs WHERE run_id = ANY(%s) GROUP BY worker",
                (runs,),
            ).fetchall()
            most = max([most, *(running for worker, running, _ in rows if worker)])
            if sum(finished for _, _, finished in rows) == len(runs):
                break
            assert time.monotonic() < deadline, rows
            time.sleep(0.05)
    assert most >= 2
    statuses = {httpx.get(f"{a}/runs/{r}", timeout=10).json()["status"] for r in runs}
    assert statuses == {"done"}
