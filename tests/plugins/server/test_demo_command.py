"""``headwater demo``: headwater-server's demo agent, streamed to the terminal."""

from __future__ import annotations

import headwater_server
from click.testing import CliRunner

from headwater import create_plugin_manager
from headwater._cli import build_cli


def test_the_server_plugin_supplies_the_demo_command() -> None:
    group = build_cli(create_plugin_manager(autoload=False, plugins=[headwater_server]))
    result = CliRunner().invoke(group, ["demo", "--question", "Where do rivers flow?"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("headwater demo: router -> retriever")
    assert any("✓ router" in line for line in lines)
    assert any("retrieved 2 notes" in line for line in lines)
    assert any("tool count_words" in line for line in lines)
    assert lines[-1] == "summary: In short: rivers run from the hills to the sea."
