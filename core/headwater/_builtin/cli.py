"""Built-in CLI commands: ``headwater demo``."""

from __future__ import annotations

import click

from headwater.hookspecs import hookimpl


@hookimpl
def headwater_cli_commands(cli: click.Group) -> None:
    """Add ``headwater demo``."""

    @cli.command()
    @click.option(
        "--question", default="Where do rivers flow?", show_default=True, help="What to ask."
    )
    def demo(question: str) -> None:
        """Run the demo agent once, streaming each step and token to the terminal."""
        from headwater._demo import run_demo

        run_demo(question=question)
