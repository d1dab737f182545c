"""The ``headwater`` command line: ``plugins`` built in, everything else from plugins."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from headwater._plugins import (
    REGISTRATION_HOOKS,
    PluginManager,
    _tag,
    create_plugin_manager,
    get_plugin_manager,
)
from headwater.errors import PluginConflictError, PluginError

BUILTIN = "headwater (built in)"

_FALLBACK = "_headwater_fallback"

F = TypeVar("F", bound=Callable[..., Any])


def fallback(fn: F) -> F:
    """Mark a built-in command as a fallback: a plugin's command of the same name replaces
    it instead of conflicting with it (put it under ``@cli.command()``)."""
    setattr(fn, _FALLBACK, True)
    return fn


def _is_fallback(command: click.Command) -> bool:
    return getattr(command.callback, _FALLBACK, False) is True


@click.group()
@click.version_option(package_name="headwater-core", prog_name="headwater")
def cli() -> None:
    """headwater: run graphs of Python functions and stream everything that happens."""


@cli.command("plugins")
def plugins_command() -> None:
    """Print the installed plugins as JSON (exit 1 if one failed to load or conflicts)."""
    pm = create_plugin_manager(raise_errors=False)
    errors = list(pm.load_errors)
    for hook_name in REGISTRATION_HOOKS:  # conflicts surface here, not at the first run
        try:
            pm.registrations(hook_name)
        except PluginError as exc:
            errors.append(exc)
    try:
        build_cli(pm)
    except PluginError as exc:
        errors.append(exc)
    click.echo(json.dumps(describe_plugins(pm, errors), indent=2))
    if errors:
        sys.exit(1)


def describe_plugins(
    pm: PluginManager, errors: list[PluginError] | None = None
) -> list[dict[str, Any]]:
    """One JSON-ready row per plugin: name, distribution, version, module, hooks, error.

    An error about a registered plugin goes into its row; a plugin that failed to load
    gets a row of its own (``module`` ``None``, no hooks).
    """
    if errors is None:
        errors = list(pm.load_errors)
    by_plugin: dict[str | None, list[str]] = {}
    for error in errors:
        by_plugin.setdefault(getattr(error, "plugin_name", None), []).append(str(error))
    rows: list[dict[str, Any]] = []
    dist: str | None
    version: str | None
    for name, plugin in sorted(pm.list_name_plugin(), key=lambda item: item[0]):
        if plugin is None:  # a blocked name
            continue
        if name in pm.distributions:
            dist, version = pm.distributions[name]
        elif name.startswith("headwater."):
            dist, version = "headwater-core", _core_version()
        else:  # registered by the embedder, not installed
            dist = version = None
        messages = by_plugin.pop(name, [])
        rows.append(
            {
                "name": name,
                "distribution": dist,
                "version": version,
                "module": getattr(plugin, "__name__", type(plugin).__name__),
                "hooks": sorted(h.name for h in pm.get_hookcallers(plugin) or ()),
                "error": "\n".join(messages) or None,
            }
        )
    for error in errors:
        failed = getattr(error, "plugin_name", None)
        if failed not in by_plugin:  # already reported in its plugin's row
            continue
        rows.append(
            {
                "name": failed,
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
    """The root group with every plugin's commands added (a name taken twice raises)."""
    group = click.Group(name="headwater", commands=dict(cli.commands), help=cli.help)
    group.params = list(cli.params)
    owners = {name: BUILTIN for name in group.commands}
    staging = click.Group()
    for plugin_name, _ in pm.call_each("headwater_cli_commands", cli=staging):
        for name, command in staging.commands.items():
            if name in group.commands and _is_fallback(group.commands[name]):
                del group.commands[name]  # a built-in fallback gives way to the real one
            if name in group.commands:
                error = PluginConflictError(
                    f"CLI command {name!r} is added by both {owners[name]} and "
                    f"{pm.describe(plugin_name)}. Uninstall or block one of them "
                    "(HEADWATER_LOAD_PLUGINS=<the plugins to load>)."
                )
                _tag(error, plugin_name, *pm.distributions.get(plugin_name, (None, None)))
                raise error
            group.add_command(command, name)
            owners[name] = pm.describe(plugin_name)
        staging.commands.clear()
    return group


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``headwater`` console script.

    A broken or conflicting plugin ends any command (but ``plugins``) with a one-line
    error naming it, and exit status 1.
    """
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["plugins"]:
        cli.main(args=args, prog_name="headwater")
        return
    try:
        group = build_cli(get_plugin_manager())
        group.main(args=args, prog_name="headwater")
    except PluginError as exc:
        message = " ".join(str(exc).split())  # one line, whatever the cause's text
        click.echo(
            f"headwater: {message} Run `headwater plugins` to see every plugin's status.",
            err=True,
        )
        sys.exit(1)
