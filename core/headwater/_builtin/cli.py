"""Built-in CLI commands that a plugin supplies for real: ``headwater demo``.

The demo agent lives in headwater-server. Without it, ``headwater demo`` is still a
command, one that says what to install; with it, the server's ``demo`` takes its place
(a built-in fallback gives way to a plugin's command of the same name).
"""

from __future__ import annotations

import click

from headwater._cli import fallback
from headwater.hookspecs import hookimpl


@hookimpl
def headwater_cli_commands(cli: click.Group) -> None:
    """Add ``headwater demo`` (a fallback: headwater-server's own ``demo`` replaces it)."""

    @cli.command()
    @click.option(
        "--question", default="Where do rivers flow?", show_default=True, help="What to ask."
    )
    @fallback
    def demo(question: str) -> None:
        """Run the demo agent once, streaming each step and token to the terminal."""
        raise click.ClickException(
            "headwater demo runs the demo agent of headwater-server, which is not installed: "
            "pip install headwater-server (or pip install headwater, with every standard plugin)."
        )
