"""A LangGraph 1.2 program runs on headwater with only its imports changed (issue 12).

``langgraph_port/agent_langgraph.py`` is a chat agent written for LangGraph 1.2:
``StateGraph`` over a ``MessagesState`` subclass, ``ToolNode`` and ``tools_condition``, a
hand-built message, ``astream(stream_mode=["updates", "messages", "values"])``,
``astream_events(include_types=["chat_model", "tool"])``, ``aget_state`` and a sync
``get_state`` in async code. ``expected.json`` is what it printed under langgraph 1.2.24.
``agent_headwater.py`` is the same file with only the imports changed (checked here), and
must print exactly the same.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

HERE = Path(__file__).resolve().parent / "langgraph_port"
EXPECTED = json.loads((HERE / "expected.json").read_text(encoding="utf-8"))
LANGGRAPH_PYTHON = os.environ.get("HEADWATER_LANGGRAPH_PYTHON", "/work/lgvenv/bin/python")


def body(path: Path) -> list[str]:
    """The program after its docstring and imports."""
    lines = path.read_text(encoding="utf-8").split('"""', 2)[2].splitlines()
    last_import = max(i for i, line in enumerate(lines) if line.startswith(("from ", "import ")))
    return lines[last_import + 1 :]


def test_the_port_changes_only_the_imports() -> None:
    assert body(HERE / "agent_headwater.py") == body(HERE / "agent_langgraph.py")
    imports = [
        line
        for line in (HERE / "agent_headwater.py").read_text(encoding="utf-8").splitlines()
        if line.startswith(("from ", "import "))
    ]
    assert not any("langgraph" in line or "langchain" in line for line in imports)


def load_port() -> ModuleType:
    """A fresh copy of the headwater program (its model's script and memory start over)."""
    sys.path.insert(0, str(HERE))
    try:
        spec = importlib.util.spec_from_file_location(
            "agent_headwater_port", HERE / "agent_headwater.py"
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(HERE))


@pytest.mark.anyio
async def test_the_port_prints_what_langgraph_printed() -> None:
    program = load_port()
    assert json.loads(json.dumps(await program.main())) == EXPECTED


def test_the_port_runs_as_a_script() -> None:
    done = subprocess.run(
        [sys.executable, "agent_headwater.py"],
        cwd=HERE,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == EXPECTED


@pytest.mark.skipif(
    not Path(LANGGRAPH_PYTHON).exists(),
    reason=f"no LangGraph reference environment at {LANGGRAPH_PYTHON} to re-record with",
)
def test_the_recording_is_what_langgraph_prints() -> None:
    done = subprocess.run(
        [LANGGRAPH_PYTHON, "agent_langgraph.py"],
        cwd=HERE,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == EXPECTED
