"""The quickstart as a Jupyter notebook, executed in a real IPython kernel (issue 12, item 1).

Every cell of a notebook runs inside the kernel's event loop, so this is where the sync API
(``app.invoke(...)``, ``stream``, ``get_state`` …) meets a running loop. The notebook is
made from ``docs/quickstart.md`` as a reader would paste it (its runnable Python blocks, in
order, with the prose as Markdown cells), plus cells that check the sync API there: tokens
must reach a sync ``stream()`` while the model is still generating.
"""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from fixtures.markdown import fenced_blocks
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent.parent
QUICKSTART = ROOT / "docs" / "quickstart.md"
CELL_TIMEOUT = 120

CHECKS = [
    # The sync API in a cell: the loop is running.
    """
import sniffio
assert sniffio.current_async_library() == "asyncio"  # this cell runs on the kernel's loop

llm = FakeChatModel(["Downhill, to the sea."], cycle=True)  # the page's script is spent
config = {"configurable": {"thread_id": "notebook"}}
final = chat.invoke({"messages": ["Where do rivers go?"]}, config)
assert final["messages"][-1].content
assert chat.get_state(config).values == final
assert [s.metadata["source"] for s in chat.get_state_history(config)][-1] == "input"
chat.update_state(config, {"messages": ["An extra note."]})
assert chat.get_state(config).values["messages"][-1].content == "An extra note."
assert len(app.batch([{"topic": "lakes"}, {"topic": "seas"}])) == 2
""",
    # Tokens reach a sync stream() live: the model's second token waits for the cell to
    # have seen the first.
    """
import threading
from typing import Any

import anyio

from headwater.messages import AIMessageChunk
from headwater.models import ChatModel


class Gated(ChatModel):
    provider = "gated"

    def __init__(self, gate):
        super().__init__(model="gated")
        self.gate = gate

    async def _astream(self, messages, **kwargs):
        yield AIMessageChunk(content="first")
        opened = await anyio.to_thread.run_sync(self.gate.wait, 60)
        yield AIMessageChunk(content=" live" if opened else " NOT LIVE")


gate = threading.Event()
gated = Gated(gate)


def sync_chat(state: Chat) -> dict:
    return {"messages": [gated.invoke(state["messages"])]}  # a sync node: tokens stream anyway


live = StateGraph(Chat)
live.add_node("sync_chat", sync_chat)
live.add_edge(START, "sync_chat")
live.add_edge("sync_chat", END)
tokens = []
for token, metadata in live.compile().stream({"messages": ["hi"]}, stream_mode="messages"):
    tokens.append(token.content)
    gate.set()
assert tokens == ["first", " live"], tokens
print("LIVE", tokens)
""",
]


def quickstart_notebook() -> nbformat.NotebookNode:
    notebook = nbformat.v4.new_notebook()
    lines = QUICKSTART.read_text(encoding="utf-8").splitlines()
    cursor = 0
    for block in fenced_blocks(QUICKSTART):
        start = block.line - 2  # the fence line
        prose = "\n".join(lines[cursor:start]).strip()
        if prose:
            notebook.cells.append(nbformat.v4.new_markdown_cell(prose))
        cursor = start + block.code.count("\n") + 2
        if block.info == "python" and block.run:
            notebook.cells.append(nbformat.v4.new_code_cell(block.code))
        else:
            fence = f"```{block.info}\n{block.code}```"
            notebook.cells.append(nbformat.v4.new_markdown_cell(fence))
    notebook.cells.extend(nbformat.v4.new_code_cell(code.strip()) for code in CHECKS)
    return notebook


def test_the_quickstart_notebook_is_the_page(tmp_path: Path) -> None:
    notebook = quickstart_notebook()
    code = [c.source for c in notebook.cells if c.cell_type == "code"][: -len(CHECKS)]
    assert code == [b.code for b in fenced_blocks(QUICKSTART) if b.info == "python" and b.run]
    assert any("app.invoke(" in c for c in code)  # a sync call the kernel's loop must allow


def test_the_quickstart_runs_in_a_jupyter_kernel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")  # no deprecation warning from jupyter_core
    monkeypatch.setenv("HOME", str(tmp_path))  # no kernel state from the user's profile
    for name in [k for k in os.environ if k.startswith("HEADWATER_")]:
        monkeypatch.delenv(name)
    notebook = quickstart_notebook()
    client = NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},  # files the page writes land here
    )
    client.execute()
    outputs = [
        out.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if out.get("output_type") == "stream"
    ]
    text = "".join(outputs)
    assert "{'plan': {'outline': ['What rivers are', 'Why rivers matter']}}" in text
    assert "Rivers run to the sea." in text
    assert "LIVE ['first', ' live']" in text
    errors = [
        out
        for cell in notebook.cells
        for out in cell.get("outputs", [])
        if out.get("output_type") == "error"
    ]
    assert errors == []
