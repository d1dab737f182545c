"""Issue 13's operator paper cuts, through the real ``headwater`` command: Ctrl-C stops a
server with clients connected (each run gets its terminal event, no traceback); graphs
are imported from the current directory as uvicorn does; the startup line says when the
server is open; a port in use is an error before any "serving on" line; ``headwater run
--stream-mode`` checks its value."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

GRAPH = textwrap.dedent(
    """
    import operator
    from typing import Annotated, TypedDict
    import anyio
    from headwater import END, START, StateGraph, get_stream_writer

    class State(TypedDict):
        steps: Annotated[list[int], operator.add]

    async def step(state):
        get_stream_writer()({"step": len(state["steps"])})
        await anyio.sleep(0.2)
        return {"steps": [len(state["steps"])]}

    def again(state):
        return "step" if len(state["steps"]) < 200 else END

    slow = StateGraph(State)
    slow.add_node("step", step)
    slow.add_edge(START, "step")
    slow.add_conditional_edges("step", again, ["step", END])
    """
)

HEADWATER = str(Path(sys.executable).with_name("headwater"))  # the console script


@pytest.fixture
def here(tmp_path: Path) -> Path:
    (tmp_path / "cli_graphs.py").write_text(GRAPH)
    return tmp_path


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # the graph module is found in the current directory alone
    return env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def served(here: Path) -> Iterator[dict[str, Any]]:
    port = _free_port()
    proc = subprocess.Popen(
        [HEADWATER, "serve", "cli_graphs:slow", "--port", str(port)],
        cwd=here, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(f"{url}/graphs", timeout=1).raise_for_status()
            break
        except httpx.HTTPError:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.1)
    try:
        yield {"proc": proc, "url": url}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_ctrl_c_stops_the_server_promptly_and_every_run_gets_its_end(
    served: dict[str, Any],
) -> None:
    url, proc = served["url"], served["proc"]
    seen: dict[str, list[str]] = {"stream": [], "follower": []}

    def read(name: str, method: str, path: str, body: Any = None) -> None:
        with (
            httpx.Client(timeout=60) as client,
            client.stream(method, url + path, json=body) as response,
        ):
            for line in response.iter_lines():
                if line.startswith("event: "):
                    seen[name].append(line[7:])

    body = {"input": {"steps": []}, "config": {"recursion_limit": 300}}  # 40 s of steps
    background = client_run = httpx.post(f"{url}/runs", json=body).json()
    follow = f"/runs/{client_run['run_id']}/stream"
    readers = [
        threading.Thread(target=read, args=("stream", "POST", "/workflow/stream", body)),
        threading.Thread(target=read, args=("follower", "GET", follow)),
    ]
    for reader in readers:
        reader.start()
    deadline = time.monotonic() + 30
    while not (seen["stream"] and seen["follower"]):
        assert time.monotonic() < deadline, seen
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=20)  # the slow runs would take 40 s more
    for reader in readers:
        reader.join(10)
    assert seen["stream"][-1] == "cancelled" and seen["follower"][-1] == "cancelled"
    assert "Traceback" not in err, err
    assert "serving slow on http://127.0.0.1:" in out
    assert "OPEN" in out  # the startup line says anyone can use it
    assert background["status"] == "running"


def test_the_startup_line_says_an_api_key_is_required(here: Path) -> None:
    port = _free_port()
    proc = subprocess.Popen(
        [HEADWATER, "serve", "cli_graphs:slow", "--port", str(port), "--api-key", "k1"],
        cwd=here, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "serving slow" in line and "API key required" in line and "OPEN" not in line
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=20)


def test_a_port_in_use_fails_before_any_serving_line(here: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [HEADWATER, "serve", "cli_graphs:slow", "--port", str(port)],
            cwd=here, env=_env(), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert done.returncode != 0
    assert "serving" not in done.stdout
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr


def test_headwater_run_imports_from_the_current_directory(here: Path) -> None:
    (here / "tiny.py").write_text(
        "from typing import TypedDict\nfrom headwater import START, StateGraph\n"
        "class S(TypedDict):\n    n: int\n"
        "g = StateGraph(S)\ng.add_node('inc', lambda s: {'n': s['n'] + 1})\n"
        "g.add_edge(START, 'inc')\n"
    )
    done = subprocess.run(
        [HEADWATER, "run", "tiny:g", "--input", '{"n": 1}'],
        cwd=here, env=_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout[done.stdout.index("{") :]) == {"n": 2}


def test_headwater_run_checks_its_stream_mode(here: Path) -> None:
    done = subprocess.run(
        [HEADWATER, "run", "cli_graphs:slow", "--stream-mode", "valuez"],
        cwd=here, env=_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert "Invalid value for '--stream-mode'" in done.stderr and "custom" in done.stderr


def test_the_demo_keeps_one_checkpoint_file_per_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    import headwater_server._demo as demo

    here = demo.demo_db_path()
    assert here == demo.demo_db_path()  # stable across runs
    assert os.path.dirname(here) == tempfile.gettempdir()
    assert os.path.basename(here) != "headwater-demo.db"  # not one file shared by all
    monkeypatch.setattr(
        demo, "__file__", "/elsewhere/checkout/plugins/server/headwater_server/_demo.py"
    )
    assert demo.demo_db_path() != here
