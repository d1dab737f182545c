"""The plugin manager: built lazily, entry points loaded in sorted order, errors named."""

from __future__ import annotations

import difflib
import functools
import importlib.metadata
import os
import sys
from collections.abc import Iterable, Mapping
from typing import Any

import pluggy

from headwater import hookspecs
from headwater.errors import PluginConflictError, PluginError, PluginLoadError

__all__ = ["ENTRY_POINT_GROUP", "PluginManager", "create_plugin_manager", "get_plugin_manager"]

ENTRY_POINT_GROUP = "headwater"

_REGISTRATION_LABELS = {
    "headwater_stream_modes": "Stream mode",
    "headwater_event_filters": "Event filter",
    "headwater_checkpointers": "Checkpointer scheme",
    "headwater_chat_models": "Chat model provider",
    "headwater_brokers": "Broker scheme",
    "headwater_run_queues": "Run queue scheme",
    "headwater_sinks": "Sink",
}


class PluginManager(pluggy.PluginManager):
    """headwater's pluggy manager: merged, cached registrations and recorded load errors.

    Example::

        pm = headwater.create_plugin_manager(autoload=False, plugins=[my_plugin])
        pm.registrations("headwater_stream_modes")  # {"values": factory, ...}
    """

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT_NAME)
        self.add_hookspecs(hookspecs)
        self.load_errors: list[PluginError] = []
        self.distributions: dict[str, tuple[str, str]] = {}  # plugin name -> (dist, version)
        self._registrations: dict[str, dict[str, Any]] = {}

    def register(self, plugin: Any, name: str | None = None) -> str | None:
        """Register ``plugin``; a second plugin under a taken name is a conflict."""
        plugin_name = name or self.get_canonical_name(plugin)
        existing = self.get_plugin(plugin_name)
        if existing is not None and existing is not plugin:
            raise PluginConflictError(
                f"Two plugins are both named {plugin_name!r}: {_describe(existing)} and "
                f"{_describe(plugin)}. Uninstall or block one of them."
            )
        self._registrations.clear()
        return super().register(plugin, name=name)

    def unregister(self, plugin: Any = None, name: str | None = None) -> Any:
        """Unregister a plugin (and forget cached registrations)."""
        self._registrations.clear()
        return super().unregister(plugin, name)

    def registrations(self, hook_name: str) -> dict[str, Any]:
        """Merged ``{name: thing}`` of a registration hook, cached; conflicts raise.

        Example::

            pm.registrations("headwater_checkpointers")["sqlite"]
        """
        try:
            return self._registrations[hook_name]
        except KeyError:
            pass
        caller = getattr(self.hook, hook_name)
        label = _REGISTRATION_LABELS.get(hook_name, hook_name)
        merged: dict[str, Any] = {}
        owners: dict[str, str] = {}
        for impl in reversed(caller.get_hookimpls()):  # registration order
            result = impl.function()
            if result is None:
                continue
            if not isinstance(result, Mapping):
                raise PluginLoadError(
                    f"Plugin {impl.plugin_name!r}: {hook_name}() must return a mapping of name "
                    f"to factory (or None); got {type(result).__name__}."
                )
            for key, value in result.items():
                if key in merged:
                    raise PluginConflictError(
                        f"{label} {key!r} is registered by both plugin {owners[key]!r} and "
                        f"plugin {impl.plugin_name!r}. Uninstall or block one of them "
                        f"(HEADWATER_LOAD_PLUGINS, or create_plugin_manager(block=...))."
                    )
                merged[key] = value
                owners[key] = impl.plugin_name
        self._registrations[hook_name] = merged
        return merged

    def check_pending(self) -> None:
        """Fail loudly when a plugin implements a hook headwater does not have (a typo)."""
        specs = [n for n in dir(hookspecs) if n.startswith("headwater_")]
        for name, caller in vars(self.hook).items():
            if not isinstance(caller, pluggy.HookCaller) or caller.has_spec():
                continue
            for impl in caller.get_hookimpls():
                if impl.optionalhook:
                    continue
                close = difflib.get_close_matches(name, specs, n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise PluginLoadError(
                    f"Plugin {impl.plugin_name!r} implements unknown hook {name!r}.{hint} "
                    f"headwater's hooks: {', '.join(specs)}."
                )


def _describe(plugin: Any) -> str:
    return getattr(plugin, "__name__", None) or repr(plugin)


def _selected(env: str | None) -> set[str] | None:
    if env is None:
        return None
    return {p.strip() for p in env.split(",") if p.strip()}


def _builtin_plugins() -> list[Any]:
    from headwater._builtin import checkpointers, cli

    return [checkpointers, cli]


def create_plugin_manager(
    autoload: bool = True,
    plugins: Iterable[Any] = (),
    block: Iterable[str] = (),
    *,
    raise_errors: bool = True,
) -> PluginManager:
    """Make a fresh plugin manager (for tests and embedders).

    ``autoload`` loads the ``headwater`` entry points (filtered by
    ``HEADWATER_LOAD_PLUGINS``), sorted by name; ``plugins`` are registered first, after
    the core's built-ins; ``block`` names plugins never to load. With
    ``raise_errors=False`` a plugin that fails to load is recorded in ``load_errors``
    instead of raising :class:`~headwater.errors.PluginLoadError`.

    Example::

        pm = create_plugin_manager(autoload=False, plugins=[my_test_plugin])
        app = graph.compile(plugin_manager=pm)
    """
    pm = PluginManager()
    for name in block:
        pm.set_blocked(name)
    for plugin in _builtin_plugins():
        pm.register(plugin, name="headwater." + plugin.__name__.rsplit(".", 1)[-1])
    for plugin in plugins:
        pm.register(plugin)
    if autoload:
        _load_entry_points(pm, raise_errors=raise_errors)
    try:
        pm.check_pending()
    except PluginLoadError as exc:
        if raise_errors:
            raise
        pm.load_errors.append(exc)
    if os.environ.get("HEADWATER_TRACE_PLUGINS") == "1":
        pm.trace.root.setwriter(lambda message: sys.stderr.write(message))
        pm.enable_tracing()
    return pm


def _load_entry_points(pm: PluginManager, *, raise_errors: bool) -> None:
    only = _selected(os.environ.get("HEADWATER_LOAD_PLUGINS"))
    eps = sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)
    seen: dict[str, importlib.metadata.EntryPoint] = {}
    for ep in eps:
        if only is not None and ep.name not in only:
            continue
        if pm.is_blocked(ep.name):
            continue
        dist = ep.dist.name if ep.dist is not None else "(unknown distribution)"
        version = ep.dist.version if ep.dist is not None else "?"
        if ep.name in seen:
            other = seen[ep.name]
            other_dist = other.dist.name if other.dist is not None else "?"
            conflict = PluginConflictError(
                f"Two plugins are both named {ep.name!r}: entry point {other.value!r} from "
                f"{other_dist} and entry point {ep.value!r} from {dist}. Uninstall one of them."
            )
            if raise_errors:
                raise conflict
            pm.load_errors.append(conflict)
            continue
        seen[ep.name] = ep
        try:
            plugin = ep.load()
            pm.register(plugin, name=ep.name)
        except Exception as exc:
            error = PluginLoadError(
                f"Plugin {ep.name!r} (entry point {ep.name} = {ep.value}, from distribution "
                f"{dist} {version}) failed to load: {type(exc).__name__}: {exc}. Fix or "
                f"uninstall it (pip uninstall {dist}), or leave it out with "
                "HEADWATER_LOAD_PLUGINS=<the plugins to load>."
            )
            error.plugin_name = ep.name  # type: ignore[attr-defined]
            error.distribution = dist  # type: ignore[attr-defined]
            error.version = version  # type: ignore[attr-defined]
            if raise_errors:
                raise error from exc
            error.__cause__ = exc
            pm.load_errors.append(error)
            continue
        pm.distributions[ep.name] = (dist, version)


@functools.cache
def get_plugin_manager() -> PluginManager:
    """The process-wide plugin manager, built (and entry points loaded) on first use.

    Example::

        pm = headwater.get_plugin_manager()
        sorted(pm.registrations("headwater_stream_modes"))
    """
    return create_plugin_manager()
