"""The browser page in real Chromium (Debian's, driven by Playwright) against `headwater serve`."""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def served() -> Iterator[str]:
    port = _free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "headwater",
            "serve",
            "headwater_server._demo:build_demo",
            "--port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 20
    while True:
        try:
            httpx.get(url + "graphs", timeout=1).raise_for_status()
            break
        except httpx.HTTPError:
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
            assert time.monotonic() < deadline, "headwater serve did not come up"
            time.sleep(0.1)
    try:
        yield url
    finally:
        process.terminate()
        process.wait(10)
        if process.stdout is not None:
            process.stdout.close()


def test_page_streams_a_run_live(served: str, browser: object, tmp_path: Path) -> None:
    page = browser.new_page()  # type: ignore[attr-defined]
    page.goto(served)
    page.wait_for_selector("#graph option[value='demo']", state="attached")
    page.fill("#input", '{"question": "Where do rivers flow?"}')
    # Record every text the tokens panel shows, to prove tokens arrive incrementally.
    page.evaluate(
        """() => {
            const panel = document.querySelector('#tokens');
            window.seenTexts = [];
            new MutationObserver(() => window.seenTexts.push(panel.textContent))
                .observe(panel, {childList: true, characterData: true, subtree: true});
        }"""
    )
    page.click("#start")
    page.wait_for_selector("#nodes li.done:text('router')")
    assert page.text_content("#status").startswith("running")  # progress while it runs
    page.wait_for_function(
        "document.querySelector('#status').textContent === 'done'", timeout=30000
    )
    seen = page.evaluate("window.seenTexts")
    distinct = [t for i, t in enumerate(seen) if t and t not in seen[:i]]
    assert len(distinct) >= 10  # many intermediate texts, each growing from the last
    assert all(b.startswith(a) for a, b in itertools.pairwise(distinct))
    final_tokens = page.text_content("#tokens")
    assert "Rivers begin in mountains" in final_tokens
    assert final_tokens.endswith("In short: rivers run from the hills to the sea.")
    nodes = page.eval_on_selector_all("#nodes li.done", "els => els.map(e => e.textContent)")
    assert nodes == ["router", "retrieve", "agent", "tools", "summarise"]
    assert '"summary": "In short: rivers run from the hills to the sea."' in page.text_content(
        "#state"
    )
    total = page.eval_on_selector_all("#log div", "els => els.length")
    page.fill("#filter", "on_tool")
    visible = page.eval_on_selector_all(
        "#log div", "els => els.filter(e => e.style.display !== 'none').length"
    )
    assert 0 < visible < total
    shot = os.environ.get("HEADWATER_SCREENSHOT", str(tmp_path / "page.png"))
    page.screenshot(path=shot, full_page=True)
    assert Path(shot).stat().st_size > 10_000


def test_page_shows_a_bad_input_error(served: str, browser: object) -> None:
    page = browser.new_page()  # type: ignore[attr-defined]
    page.goto(served)
    page.wait_for_selector("#graph option[value='demo']", state="attached")
    page.fill("#input", '{"nonsense": true}')
    page.click("#start")
    page.wait_for_selector("#status.error")
    assert "unknown key(s) ['nonsense']" in page.text_content("#status")
