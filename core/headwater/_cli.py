"""The ``headwater`` command line: ``plugins`` built in, everything else from plugins."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from headwater._plugins import PluginManager, create_plugin_manager, get_plugin_manager
from headwater.errors import PluginConflictError, PluginError


@click.group()
@click.version_option(package_name="headwater-core", prog_name="headwater")
def cli() -> None:
    """headwater: run graphs of Python functions and stream everything that happens."""


@cli.command("plugins")
def plugins_command() -> None:
    """Print the installed plugins as JSON (exit 1 if one failed to load)."""
    pm = create_plugin_manager(raise_errors=False)
    click.echo(json.dumps(describe_plugins(pm), indent=2))
    if pm.load_errors:
        sys.exit(1)


def describe_plugins(pm: PluginManager) -> list[dict[str, Any]]:
    """One JSON-ready row per plugin: name, version, module, hooks, error."""
    rows: list[dict[str, Any]] = []
    for name, plugin in sorted(pm.list_name_plugin(), key=lambda item: item[0]):
        dist, version = pm.distributions.get(name, ("headwater-core", _core_version()))
        rows.append(
            {
                "name": name,
                "distribution": dist,
                "version": version,
                "module": getattr(plugin, "__name__", type(plugin).__name__),
                "hooks": sorted(h.name for h in pm.get_hookcallers(plugin) or ()),
                "error": None,
            }
        )
    for error in pm.load_errors:
        rows.append(
            {
                "name": getattr(error, "plugin_name", None),
                "distribution": getattr(error, "distribution", None),
                "version": getattr(error, "version", None),
                "module": None,
                "hooks": [],
                "error": str(error),
            }
        )
    return rows


def _core_version() -> str:
    from importlib.metadata import version

    return version("headwater-core")


def build_cli(pm: PluginManager) -> click.Group:
    """The root group with every plugin's commands added (conflicts raise)."""
    group = click.Group(name="headwater", commands=dict(cli.commands), help=cli.help)
    group.params = list(cli.params)
    for impl in reversed(pm.hook.headwater_cli_commands.get_hookimpls()):
        staging = click.Group()
        impl.function(cli=staging)
        for name, command in staging.commands.items():
            if name in group.commands:
                raise PluginConflictError(
                    f"CLI command {name!r} of plugin {impl.plugin_name!r} is already defined "
                    "(built in or by another plugin). Uninstall or block one of them."
                )
            group.add_command(command, name)
    return group


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``headwater`` console script."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["plugins"]:
        cli.main(args=args, prog_name="headwater")
        return
    try:
        group = build_cli(get_plugin_manager())
    except PluginError as exc:
        click.echo(f"headwater: {exc}", err=True)
        click.echo("Run `headwater plugins` to see every plugin's status.", err=True)
        sys.exit(1)
    group.main(args=args, prog_name="headwater")
