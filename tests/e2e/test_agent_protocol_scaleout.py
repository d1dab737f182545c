"""Issue 15, scaled out: the LangGraph server protocol through two `headwater serve`
instances with `--queue postgresql://… --broker redis://…` and a `headwater worker`,
driven by the official `langgraph-sdk` client."""

from __future__ import annotations

import asyncio
import os
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
from langgraph_sdk import get_client

from headwater.testing.services import service_url

PG = "postgresql://postgres@127.0.0.1:5432/test"
REDIS = "redis://127.0.0.1:6379/0"
STEPS = 8

GRAPHS = textwrap.dedent(
    """
    import operator
    from typing import Annotated, TypedDict
    import anyio
    from headwater import END, START, StateGraph, get_stream_writer, interrupt

    class Count(TypedDict):
        steps: Annotated[list[int], operator.add]

    async def step(state):
        n = len(state["steps"])
        get_stream_writer()({"step": n})
        await anyio.sleep(0.25)
        return {"steps": [n]}

    def again(state):
        return "step" if len(state["steps"]) < STEPS else END

    slow = StateGraph(Count)
    slow.add_node("step", step)
    slow.add_edge(START, "step")
    slow.add_conditional_edges("step", again, ["step", END])

    def forever(state):
        return "step" if len(state["steps"]) < 400 else END

    long = StateGraph(Count)  # runs for 100 s: a run to cancel
    long.add_node("step", step)
    long.add_edge(START, "step")
    long.add_conditional_edges("step", forever, ["step", END])

    class Review(TypedDict):
        draft: str
        verdict: str

    def ask(state):
        return {"verdict": interrupt({"question": "Publish?", "draft": state["draft"]})}

    review = StateGraph(Review)
    review.add_node("ask", ask)
    review.add_edge(START, "ask")
    review.add_edge("ask", END)
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
def urls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    pg = service_url("HEADWATER_TEST_POSTGRES_URL", PG, _pg_ping)
    rd = service_url("HEADWATER_TEST_REDIS_URL", REDIS, lambda u: redis.Redis.from_url(u).ping())
    root = tmp_path_factory.mktemp("protocol-cluster")
    (root / "protocol_graphs.py").write_text(GRAPHS)
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    targets = ["protocol_graphs:slow", "protocol_graphs:review", "protocol_graphs:long"]
    common = ["--checkpointer", pg, "--broker", rd]
    procs: dict[str, subprocess.Popen[str]] = {}
    logs = {n: open(root / f"{n}.log", "w") for n in ("A", "B", "w")}
    ports = {}
    for name in ("A", "B"):
        ports[name] = _free_port()
        procs[name] = subprocess.Popen(
            [sys.executable, "-m", "headwater", "serve", *targets, "--port", str(ports[name]),
             "--queue", pg, "--api-key", "k1", *common],
            env=env, stdout=subprocess.DEVNULL, stderr=logs[name], text=True,
        )  # fmt: skip
    procs["w"] = subprocess.Popen(
        [sys.executable, "-m", "headwater", "worker", *targets, "--queue", pg, *common,
         "--lease", "1.5", "--poll", "0.1", "--name", f"w-{uuid.uuid4().hex[:6]}"],
        env=env, stdout=subprocess.DEVNULL, stderr=logs["w"], text=True,
    )  # fmt: skip
    found = {n: f"http://127.0.0.1:{p}" for n, p in ports.items()}
    deadline = time.monotonic() + 120  # a loaded CI machine starts Python slowly
    try:
        for url in found.values():
            while True:
                try:
                    httpx.get(url + "/graphs", headers={"x-api-key": "k1"}, timeout=1)
                    break
                except httpx.HTTPError:
                    assert time.monotonic() < deadline, (root / "A.log").read_text()
                    time.sleep(0.1)
        yield found
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in procs.values():
            proc.wait(10)
        for log in logs.values():
            log.close()


def run(urls: dict[str, str], test: Any) -> None:
    async def main() -> None:
        async with (
            get_client(url=urls["A"], api_key="k1") as a,
            get_client(url=urls["B"], api_key="k1") as b,
        ):
            await test(a, b)

    asyncio.run(main())


def test_stream_on_one_instance_join_and_resume_on_the_other(urls: dict[str, str]) -> None:
    async def test(a: Any, b: Any) -> None:
        thread = await a.threads.create(metadata={"where": "A"})
        assert (await b.threads.get(thread["thread_id"]))["metadata"] == {"where": "A"}
        modes = ["values", "custom"]
        parts = [
            p
            async for p in a.runs.stream(
                thread["thread_id"], "slow", input={"steps": []}, stream_mode=modes
            )
        ]
        assert parts[0].event == "metadata"
        assert [p.data for p in parts if p.event == "custom"] == [{"step": n} for n in range(STEPS)]
        run_id = parts[0].data["run_id"]
        assert (await b.runs.get(thread["thread_id"], run_id))["status"] == "success"
        # Reconnect on the other instance after the fourth event: the rest, once.
        rest = [
            p
            async for p in b.runs.join_stream(
                thread["thread_id"], run_id, last_event_id=parts[3].id
            )
        ]
        assert [(p.event, p.data) for p in rest] == [(p.event, p.data) for p in parts[4:]]
        # Thread records live in PostgreSQL: the other instance searches and copies them.
        tag = uuid.uuid4().hex
        await a.threads.update(thread["thread_id"], metadata={"tag": tag})
        found = await b.threads.search(metadata={"tag": tag})
        assert [t["thread_id"] for t in found] == [thread["thread_id"]]
        copy = await b.threads.copy(thread["thread_id"])
        state = await a.threads.get_state(copy["thread_id"])
        assert state["values"]["steps"] == list(range(STEPS))
        await b.threads.delete(thread["thread_id"])
        left = await a.threads.search(metadata={"tag": tag})
        assert [t["thread_id"] for t in left] == [copy["thread_id"]]  # the copy's metadata

    run(urls, test)


def test_background_run_on_one_instance_joined_on_the_other(urls: dict[str, str]) -> None:
    async def test(a: Any, b: Any) -> None:
        thread = await a.threads.create()
        created = await a.runs.create(thread["thread_id"], "slow", input={"steps": []})
        parts = [p async for p in b.runs.join_stream(thread["thread_id"], created["run_id"])]
        assert parts[0].event == "metadata"
        assert parts[-1].data["steps"] == list(range(STEPS))
        assert (await b.runs.join(thread["thread_id"], created["run_id"]))["steps"] == list(
            range(STEPS)
        )
        assert [r["run_id"] for r in await b.runs.list(thread["thread_id"])] == [created["run_id"]]

    run(urls, test)


def test_interrupt_on_one_instance_resume_on_the_other(urls: dict[str, str]) -> None:
    async def test(a: Any, b: Any) -> None:
        thread = await a.threads.create()
        values = await a.runs.wait(thread["thread_id"], "review", input={"draft": "rivers"})
        assert values["__interrupt__"][0]["value"]["question"] == "Publish?"
        assert (await b.threads.get(thread["thread_id"]))["status"] == "interrupted"
        state = await b.threads.get_state(thread["thread_id"])
        assert state["tasks"][0]["interrupts"][0]["value"]["draft"] == "rivers"
        done = await b.runs.wait(thread["thread_id"], "review", command={"resume": "yes"})
        assert done["verdict"] == "yes"
        assert (await a.threads.get(thread["thread_id"]))["status"] == "idle"

    run(urls, test)


def test_cancel_from_the_other_instance(urls: dict[str, str]) -> None:
    async def test(a: Any, b: Any) -> None:
        thread = await a.threads.create()
        created = await a.runs.create(thread["thread_id"], "long", input={"steps": []})
        stream = b.runs.join_stream(thread["thread_id"], created["run_id"])
        assert (await anext(stream)).event == "metadata"  # it runs on the worker
        await b.runs.cancel(thread["thread_id"], created["run_id"], wait=True)
        rest = [p.event async for p in stream]  # the stream ends with the run
        assert "values" in rest
        got = await a.runs.get(thread["thread_id"], created["run_id"])
        assert got["status"] == "interrupted"
        assert len((await a.threads.get_state(thread["thread_id"]))["values"]["steps"]) < 400

    run(urls, test)
