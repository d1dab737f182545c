"""Built-in CLI commands: ``headwater demo``."""

from __future__ import annotations

import click

from headwater.hookspecs import hookimpl


@hookimpl
def headwater_cli_commands(cli: click.Group) -> None:
    """Add ``headwater demo``."""

    @cli.command()
    @click.option(
        "--topic", default="rivers", show_default=True, help="What the demo writes about."
    )
    @click.option("--delay", default=0.15, show_default=True, help="Seconds each node works.")
    def demo(topic: str, delay: float) -> None:
        """Run the demo graph and print each step as it completes."""
        from headwater._demo import run_demo

        run_demo(topic=topic, delay=delay)
