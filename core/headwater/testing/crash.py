"""Crash-safety harness for checkpoint backends: SIGKILL a real process, resume, compare.

Example::

    from headwater.testing.crash import check_crash_resume

    def test_crash(tmp_path):
        check_crash_resume("sqlite:///" + str(tmp_path / "x.db"), kill_at=3, workdir=tmp_path)
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

__all__ = ["GRAPH_SCRIPT", "MAX_KILL_STEP", "check_crash_resume"]

MAX_KILL_STEP = 5
"""The largest ``kill_at`` the scripted graph reaches."""

GRAPH_SCRIPT = textwrap.dedent(
    """
    import operator, os, signal, sys
    from typing import Annotated, TypedDict
    import anyio
    from headwater import END, START, StateGraph, Send

    class State(TypedDict):
        n: int
        log: Annotated[list, operator.add]

    KILL_AT = int(os.environ.get("KILL_AT", "-1"))

    def maybe_die(step):
        if step == KILL_AT and not os.path.exists(os.environ["MARK"]):
            open(os.environ["MARK"], "w").close()
            os.kill(os.getpid(), signal.SIGKILL)

    async def work(state):
        maybe_die(state["n"])
        return {"n": state["n"] + 1, "log": [f"work{state['n']}"]}

    async def fan(item):
        return {"log": [f"fan{item}"]}

    def route(state):
        if state["n"] >= 6:
            return END
        if state["n"] % 3 == 0:
            return [Send("fan", state["n"] * 10 + i) for i in range(3)]
        return "work"

    graph = StateGraph(State)
    graph.add_node("work", work)
    graph.add_node("fan", fan)
    graph.add_edge(START, "work")
    graph.add_conditional_edges("work", route, ["work", "fan", END])
    graph.add_edge("fan", "work")
    app = graph.compile(checkpointer=sys.argv[1])
    config = {
        "configurable": {"thread_id": os.environ["THREAD"]},
        "durability": os.environ.get("DURABILITY", "sync"),
    }
    first = None if sys.argv[2] == "resume" else {"n": 0, "log": []}
    print(repr(anyio.run(app.ainvoke, first, config)))
    """
)


def _run(
    script: Path, url: str, mode: str, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(script), url, mode],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=120,
        check=False,
    )


def check_crash_resume(url: str, kill_at: int, workdir: Path, durability: str = "sync") -> None:
    """Kill a run with SIGKILL inside step ``kill_at``, resume it in a new process, and
    assert the final state equals an uninterrupted run's (on the same backend).

    The scripted graph loops through ``work`` nodes with ``Send`` fan-outs in between;
    ``kill_at`` (0 ... :data:`MAX_KILL_STEP`) picks where the process dies; with
    ``durability="async"`` the resumed run may repeat steps whose checkpoints were still
    in flight, and must still end in the same state.
    """
    script = workdir / "crash_graph.py"
    script.write_text(GRAPH_SCRIPT)
    reference = _run(
        script, url, "start", {"THREAD": uuid.uuid4().hex, "MARK": str(workdir / "unused")}
    )
    assert reference.returncode == 0, reference.stderr
    env = {
        "KILL_AT": str(kill_at),
        "MARK": str(workdir / "killed"),
        "THREAD": uuid.uuid4().hex,
        "DURABILITY": durability,
    }
    killed = _run(script, url, "start", env)
    assert killed.returncode == -9, (killed.returncode, killed.stderr)
    resumed = _run(script, url, "resume", env)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout == reference.stdout, (resumed.stdout, reference.stdout)
