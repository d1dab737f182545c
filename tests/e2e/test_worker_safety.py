"""Issue 13 with real worker processes (PostgreSQL queue, Redis broker): a poison run
fails after its attempts instead of killing every worker forever; a cancel takes effect
within a lease even when the node is stuck or the worker frozen; a node's sys.exit()
fails its run, not its worker; runs on one thread never overlap across workers."""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redis
from fixtures.loopback import serving
from headwater_server import create_app

from headwater.testing.services import service_url

from .test_scaleout import PG, REDIS, _pg_ping, frames

LEASE = 1.5

GRAPH = textwrap.dedent(
    """
    import operator, os, sys, time
    from typing import Annotated, TypedDict
    import anyio
    from headwater import END, START, StateGraph, get_stream_writer

    class State(TypedDict):
        mode: str
        steps: Annotated[list[str], operator.add]

    def crash(state):
        os._exit(1)  # the worker process dies: a poison run

    def leave(state):
        sys.exit(5)  # an argparse error, a tool calling exit()

    def hang(state):
        time.sleep(120)  # a blocking call no cancellation reaches
        return {}

    async def step(state):
        tag = state["mode"]
        get_stream_writer()({"step": len(state.get("steps") or [])})
        await anyio.sleep(0.1)
        return {"steps": [tag]}

    def again(state):
        return "step" if (state.get("steps") or []).count(state["mode"]) < 6 else END

    def route(state):
        return state["mode"] if state["mode"] in ("crash", "leave", "hang") else "step"

    graph = StateGraph(State)
    for name, fn in (("crash", crash), ("leave", leave), ("hang", hang), ("step", step)):
        graph.add_node(name, fn)
    graph.add_conditional_edges(START, route, ["crash", "leave", "hang", "step"])
    graph.add_conditional_edges("step", again, ["step", END])
    for name in ("crash", "leave", "hang"):
        graph.add_edge(name, END)
    """
)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    pg = service_url("HEADWATER_TEST_POSTGRES_URL", PG, _pg_ping)
    rd = service_url("HEADWATER_TEST_REDIS_URL", REDIS, lambda u: redis.Redis.from_url(u).ping())
    root = tmp_path_factory.mktemp("safety")
    module = f"safety_graph_{uuid.uuid4().hex[:8]}"
    (root / f"{module}.py").write_text(GRAPH)
    sys.path.insert(0, str(root))
    try:
        graph = importlib.import_module(module).graph.compile(name="graph", checkpointer=pg)
        yield {"pg": pg, "redis": rd, "root": root, "target": f"{module}:graph", "graph": graph}
    finally:
        sys.path.remove(str(root))


class Workers:
    def __init__(self, env: dict[str, Any]) -> None:
        self.env = env
        self.procs: list[subprocess.Popen[str]] = []

    def spawn(self, *extra: str) -> subprocess.Popen[str]:
        e = self.env
        proc = subprocess.Popen(
            [sys.executable, "-m", "headwater", "worker", e["target"], "--queue", e["pg"],
             "--broker", e["redis"], "--checkpointer", e["pg"], "--lease", str(LEASE),
             "--poll", "0.1", *extra],
            cwd=e["root"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(e["root"]), *sys.path])},
        )  # fmt: skip
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
            proc.wait(10)
            if proc.stderr is not None:
                proc.stderr.close()


@pytest.fixture
def workers(env: dict[str, Any]) -> Iterator[Workers]:
    pool = Workers(env)
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture
def server(env: dict[str, Any]) -> Iterator[str]:
    app = create_app({"graph": env["graph"]}, queue=env["pg"], broker=env["redis"])
    with serving(app) as url:
        yield url


def run(url: str, mode: str, thread: str | None = None, **body: Any) -> httpx.Response:
    return httpx.post(
        f"{url}/runs",
        json={"thread_id": thread or uuid.uuid4().hex, "input": {"mode": mode}, **body},
        timeout=10,
    )


def follow(url: str, run_id: str, deadline: float = 60) -> list[dict[str, str]]:
    with (
        httpx.Client(timeout=deadline) as client,
        client.stream("GET", f"{url}/runs/{run_id}/stream") as response,
    ):
        assert response.status_code == 200, response.read()
        return list(frames(response))


def status(url: str, run_id: str) -> dict[str, Any]:
    reply: dict[str, Any] = httpx.get(f"{url}/runs/{run_id}", timeout=10).json()
    return reply


def wait_status(url: str, run_id: str, wanted: set[str], seconds: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while (found := status(url, run_id))["status"] not in wanted:
        assert time.monotonic() < deadline, found
        time.sleep(0.1)
    return found


def test_a_poison_run_fails_after_its_attempts_and_the_workers_live_on(
    server: str, workers: Workers
) -> None:
    run_id = run(server, "crash").json()["run_id"]
    deaths = 0
    survivor = None
    deadline = time.monotonic() + 120
    while status(server, run_id)["status"] != "error":
        assert time.monotonic() < deadline, f"still {status(server, run_id)} after {deaths} deaths"
        proc = workers.spawn("--max-attempts", "3")
        while proc.poll() is None and status(server, run_id)["status"] != "error":
            time.sleep(0.1)
        if proc.poll() is None:
            survivor = proc
        else:
            deaths += 1
    assert deaths == 3  # claimed three times, then given up
    final = status(server, run_id)
    assert "claimed 3 times" in final["error"]
    events = follow(server, run_id)
    assert [json.loads(e["data"])["attempt"] for e in events if e["event"] == "resumed"] == [2, 3]
    assert events[-1]["event"] == "error"
    assert json.loads(events[-1]["data"])["type"] == "RunAttemptsExhausted"
    assert survivor is not None and survivor.poll() is None  # the last worker serves on
    ok = run(server, "ok").json()["run_id"]
    assert follow(server, ok)[-1]["event"] == "end"


def test_sys_exit_in_a_node_fails_the_run_not_the_worker(server: str, workers: Workers) -> None:
    worker = workers.spawn()
    left = run(server, "leave").json()["run_id"]
    events = follow(server, left)
    assert events[-1]["event"] == "error" and "SystemExit" in events[-1]["data"]
    assert worker.poll() is None
    ok = run(server, "ok").json()["run_id"]
    assert follow(server, ok)[-1]["event"] == "end"
    assert status(server, left)["status"] == "error"


def test_a_cancel_ends_a_stuck_run_within_a_lease(server: str, workers: Workers) -> None:
    worker = workers.spawn()
    stuck = run(server, "hang").json()["run_id"]
    wait_status(server, stuck, {"running"})
    time.sleep(0.5)  # inside the node, in its blocking call
    reply = httpx.post(f"{server}/runs/{stuck}/cancel", timeout=30).json()
    assert reply["status"] == "cancelled"
    events = follow(server, stuck, deadline=20)  # the node would sleep 120 s
    assert events[-1]["event"] == "cancelled"
    assert worker.poll() is None
    ok = run(server, "ok").json()["run_id"]
    assert follow(server, ok)[-1]["event"] == "end"  # another slot carries on


def test_a_cancel_ends_the_run_of_a_frozen_worker(server: str, workers: Workers) -> None:
    worker = workers.spawn()
    frozen = run(server, "ok").json()["run_id"]
    wait_status(server, frozen, {"running"})
    worker.send_signal(signal.SIGSTOP)  # it holds the run and renews nothing
    try:
        deadline = time.monotonic() + 30
        while (reply := httpx.post(f"{server}/runs/{frozen}/cancel", timeout=30).json())[
            "status"
        ] != "cancelled":
            assert time.monotonic() < deadline, reply
        events = follow(server, frozen, deadline=20)
        assert events[-1]["event"] == "cancelled"
    finally:
        worker.send_signal(signal.SIGCONT)
    # Thawed, the worker finds its lease gone and publishes nothing after the end.
    time.sleep(LEASE)
    assert follow(server, frozen, deadline=20)[-1]["event"] == "cancelled"


def test_runs_on_one_thread_never_overlap_across_workers_and_servers(
    env: dict[str, Any], workers: Workers
) -> None:
    for _ in range(2):
        workers.spawn("--concurrency", "4")
    graphs = {"graph": env["graph"]}
    with (
        serving(create_app(graphs, queue=env["pg"], broker=env["redis"])) as a,
        serving(create_app(graphs, queue=env["pg"], broker=env["redis"])) as b,
    ):
        thread = uuid.uuid4().hex
        first = run(a, "A", thread).json()["run_id"]
        refused = run(b, "B", thread)
        assert refused.status_code == 409 and first in refused.json()["detail"]
        queued = [run(url, tag, thread, multitask_strategy="enqueue") for url, tag in
                  ((b, "C"), (a, "D"), (b, "E"))]  # fmt: skip
        assert [q.status_code for q in queued] == [202] * 3
        for run_id in [first, *(q.json()["run_id"] for q in queued)]:
            assert follow(a, run_id)[-1]["event"] == "end"
        state = httpx.get(f"{b}/threads/{thread}/state", timeout=10).json()["values"]
        assert state["steps"] == ["A"] * 6 + ["C"] * 6 + ["D"] * 6 + ["E"] * 6
        with psycopg.connect(env["pg"]) as db:
            rows = db.execute(
                "SELECT status, attempts FROM headwater_runs WHERE thread_id = %s", (thread,)
            ).fetchall()
        assert rows == [("done", 1)] * 4


def test_the_worker_cli_checks_max_attempts(env: dict[str, Any]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "headwater", "worker", env["target"], "--queue", env["pg"],
         "--broker", env["redis"], "--max-attempts", "0"],
        cwd=env["root"], capture_output=True, text=True, timeout=60,
        env={**os.environ},
    )  # fmt: skip
    assert done.returncode == 2 and "--max-attempts" in done.stderr
    assert Path(env["root"]).exists()
