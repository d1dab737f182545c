"""The plugin manager: built lazily, built-ins by module name, entry points in sorted order.

This module sits near the ground: it imports only :mod:`headwater.hookspecs` and
:mod:`headwater.errors`. The core's own hook implementations (``headwater/_builtin/``)
are listed by module name in :data:`DEFAULT_PLUGINS` and imported when a manager is made,
as datasette and llm do, so nothing below reaches up to the manager and the manager
imports nothing above it.

:meth:`PluginManager.lookup` is the one door from a name to what a plugin registered
under it: the close-match suggestion and the install hint (from :data:`REGISTRIES`) are
made there, not at each call site.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import importlib.metadata
import os
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import attrs
import pluggy

from headwater import hookspecs
from headwater.errors import PluginConflictError, PluginError, PluginLoadError

__all__ = [
    "DEFAULT_PLUGINS",
    "ENTRY_POINT_GROUP",
    "REGISTRATION_HOOKS",
    "REGISTRIES",
    "PluginManager",
    "Registry",
    "create_plugin_manager",
    "get_plugin_manager",
]

ENTRY_POINT_GROUP = "headwater"

DEFAULT_PLUGINS = ("headwater._builtin.checkpointers", "headwater._builtin.cli")
"""The core's own plugins, by module name: registered first, as ``headwater.<last part>``."""


@attrs.frozen
class Registry:
    """How errors name one registration hook's entries, and who installs the standard ones.

    Example::

        Registry("broker scheme", "schemes", known={"redis": "headwater-redis"})
    """

    label: str
    """What one entry is, in messages: ``"stream mode"``, ``"checkpointer scheme"``."""
    plural: str
    """What the list of installed entries is called: ``"modes"``, ``"schemes"``."""
    standard: str | None = None
    """The distribution with the standard entries, named when none is installed."""
    known: Mapping[str, str] = attrs.field(factory=dict)
    """Entries that standard plugins register, and the distribution to install for each."""


REGISTRIES: Mapping[str, Registry] = {
    "headwater_stream_modes": Registry(
        "stream mode",
        "modes",
        standard="headwater-streams",
        known={hookspecs.EVENTS_MODE: "headwater-streams"},
    ),
    "headwater_event_filters": Registry("filter", "filters", standard="headwater-filters"),
    "headwater_checkpointers": Registry(
        "checkpointer scheme",
        "schemes",
        known={
            "sqlite": "headwater-sqlite",
            "postgresql": "headwater-postgres",
            "postgres": "headwater-postgres",
        },
    ),
    "headwater_chat_models": Registry(
        "chat model provider",
        "providers",
        known={"openai": "headwater-openai", "anthropic": "headwater-anthropic"},
    ),
    "headwater_brokers": Registry(
        "broker scheme", "schemes", known={"redis": "headwater-redis", "rediss": "headwater-redis"}
    ),
    "headwater_run_queues": Registry(
        "run queue scheme",
        "schemes",
        known={"postgresql": "headwater-postgres", "postgres": "headwater-postgres"},
    ),
    "headwater_sinks": Registry("sink", "sinks"),
}
"""One entry per registration hook: its labels and its install-hint table."""

REGISTRATION_HOOKS = tuple(sorted(REGISTRIES))
"""The hooks merged by :meth:`PluginManager.registrations` (``headwater plugins`` checks them)."""


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
        """Register ``plugin``; a second plugin under a taken name is a conflict.

        Example::

            pm.register(MyPlugin(), name="mine")
            pm.register(OtherPlugin(), name="mine")  # PluginConflictError naming both
        """
        plugin_name = name or self.get_canonical_name(plugin)
        existing = self.get_plugin(plugin_name)
        if existing is not None and existing is not plugin:
            error = PluginConflictError(
                f"Two plugins are both named {plugin_name!r}: {self.describe(plugin_name)} and "
                f"{_describe(plugin)}. Uninstall or block one of them."
            )
            _tag(error, plugin_name, *self.distributions.get(plugin_name, (None, None)))
            raise error
        self._registrations.clear()
        return super().register(plugin, name=name)

    def unregister(self, plugin: Any = None, name: str | None = None) -> Any:
        """Unregister a plugin (and forget cached registrations).

        Example::

            pm.unregister(name="mine")
        """
        self._registrations.clear()
        return super().unregister(plugin, name)

    def describe(self, plugin_name: str) -> str:
        """How error messages name a plugin: its name, and its distribution when known.

        Example::

            pm.describe("sqlite")  # "plugin 'sqlite' (distribution headwater-sqlite 0.1.0)"
        """
        if plugin_name in self.distributions:
            dist, version = self.distributions[plugin_name]
            return f"plugin {plugin_name!r} (distribution {dist} {version})"
        plugin = self.get_plugin(plugin_name)
        if plugin is None:
            return f"plugin {plugin_name!r}"
        label = _describe(plugin)
        if plugin_name == str(id(plugin)):  # an object registered without a name
            return f"an unnamed plugin ({label})"
        return (
            f"plugin {plugin_name!r}"
            if label == plugin_name
            else f"plugin {plugin_name!r} ({label})"
        )

    def call_each(self, hook_name: str, **kwargs: Any) -> Iterator[tuple[str, Any]]:
        """Call each implementation of a hook in registration order: ``(plugin, result)``.

        For hooks whose results must be told apart by plugin (registrations, CLI
        commands). Calls are traced like pluggy's own (``HEADWATER_TRACE_PLUGINS=1``); an
        exception from an implementation becomes a ``PluginLoadError`` naming the plugin.

        Example::

            for plugin_name, modes in pm.call_each("headwater_stream_modes"):
                print(plugin_name, sorted(modes or {}))
        """
        caller = getattr(self.hook, hook_name)
        trace = self.trace.root.get("hook")
        # get_hookimpls() lists plain implementations in registration order (pluggy
        # *calls* them in reverse, last registered first).
        for impl in caller.get_hookimpls():
            if impl.hookwrapper or impl.wrapper:
                continue
            self.trace.root.indent += 1
            trace(hook_name, {"plugin": impl.plugin_name, **kwargs})
            try:
                result = impl.function(**kwargs)
            except PluginError:
                raise
            except Exception as exc:
                error = PluginLoadError(
                    f"{_upper_first(self.describe(impl.plugin_name))} failed in {hook_name}(): "
                    f"{type(exc).__name__}: {exc}. Fix or uninstall it, or leave it out with "
                    "HEADWATER_LOAD_PLUGINS=<the plugins to load>."
                )
                _tag(
                    error, impl.plugin_name, *self.distributions.get(impl.plugin_name, (None, None))
                )
                raise error from exc
            else:
                trace("finish", hook_name, "-->", result)
            finally:
                self.trace.root.indent -= 1
            yield impl.plugin_name, result

    def registrations(self, hook_name: str) -> dict[str, Any]:
        """Merged ``{name: thing}`` of a registration hook, cached; conflicts raise.

        Example::

            pm.registrations("headwater_checkpointers")["sqlite"]
        """
        try:
            return self._registrations[hook_name]
        except KeyError:
            pass
        registry = REGISTRIES.get(hook_name)
        label = _upper_first(registry.label) if registry is not None else hook_name
        merged: dict[str, Any] = {}
        owners: dict[str, str] = {}
        for plugin_name, result in self.call_each(hook_name):
            if result is None:
                continue
            if not isinstance(result, Mapping):
                error: PluginError = PluginLoadError(
                    f"{_upper_first(self.describe(plugin_name))}: {hook_name}() must return a "
                    f"mapping of name to factory (or None); got {type(result).__name__}."
                )
                _tag(error, plugin_name, *self.distributions.get(plugin_name, (None, None)))
                raise error
            for key, value in result.items():
                if key in merged:
                    error = PluginConflictError(
                        f"{label} {key!r} is registered by both {self.describe(owners[key])} "
                        f"and {self.describe(plugin_name)}. Uninstall or block one of them "
                        f"(HEADWATER_LOAD_PLUGINS, or create_plugin_manager(block=...))."
                    )
                    _tag(error, plugin_name, *self.distributions.get(plugin_name, (None, None)))
                    raise error
                merged[key] = value
                owners[key] = plugin_name
        self._registrations[hook_name] = merged
        return merged

    def lookup(
        self,
        hook_name: str,
        name: str,
        *,
        error: type[Exception],
        where: str = "",
        unknown: str | None = None,
    ) -> Any:
        """What a registration hook registered under ``name``; else ``error`` saying so.

        The message opens with ``unknown`` (default ``"Unknown <label> 'name'<where>."``),
        suggests the closest installed or standard name, lists what is installed and
        says which distribution to install, from :data:`REGISTRIES`.

        Example::

            factory = pm.lookup("headwater_brokers", "redis", error=BrokerError,
                                where=" in 'redis://localhost'")
            # BrokerError: Unknown broker scheme 'redis' in 'redis://localhost'.
            # Installed schemes: memory. Install it with: pip install headwater-redis.
        """
        found = self.registrations(hook_name)
        try:
            return found[name]
        except (KeyError, TypeError):  # TypeError: an unhashable name from bad input
            pass
        registry = REGISTRIES.get(hook_name) or Registry(hook_name, "names")
        installed = sorted(found)
        message = unknown or f"Unknown {registry.label} {name!r}{where}."
        dist = registry.known.get(name) if isinstance(name, str) else None
        hint = "" if dist is None else f" Install it with: pip install {dist}."
        if dist is None and isinstance(name, str):  # a misspelling: suggest the closest name
            candidates = sorted({*installed, *registry.known} - {name})
            close = difflib.get_close_matches(name, candidates, n=1)
            if close:
                message += f" Did you mean {close[0]!r}?"
                if close[0] in registry.known:
                    dist = registry.known[close[0]]
                    hint = f" {close[0]!r} comes with {dist}: pip install {dist}."
        message += f" Installed {registry.plural}: {', '.join(installed) or '(none)'}."
        if hint:
            message += hint
        elif not installed and registry.standard is not None:
            message += (
                f" Install {registry.standard} for the standard {registry.plural}: "
                f"pip install {registry.standard}."
            )
        raise error(message)

    def make(
        self,
        hook_name: str,
        name: str,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        error: type[Exception],
        expected: type,
        where: str = "",
        unknown: str | None = None,
        expectation: str | None = None,
    ) -> Any:
        """:meth:`lookup` the factory registered under ``name``, call it with ``args`` and
        ``kwargs``, and check that it made an ``expected``; else ``error`` naming the
        factory and what it returned (``expectation`` says what was missing).

        Example::

            saver = pm.make("headwater_checkpointers", "sqlite", ["sqlite:///app.db"],
                            error=CheckpointError, expected=Checkpointer)
        """
        factory = self.lookup(hook_name, name, error=error, where=where, unknown=unknown)
        made = factory(*args, **(kwargs or {}))
        if not isinstance(made, expected):
            label = REGISTRIES[hook_name].label if hook_name in REGISTRIES else hook_name
            wanted = expectation or f"not a {expected.__module__}.{expected.__qualname__}"
            raise error(
                f"{_upper_first(label)} {name!r} is broken: the factory of {label} {name!r} "
                f"returned {type(made).__name__}, {wanted}. Fix or uninstall the plugin "
                "that registers it."
            )
        return made

    def from_url(self, hook_name: str, url: str, *, error: type[Exception], expected: type) -> Any:
        """:meth:`make` what a URL names: the factory registered for its scheme, called
        with the whole URL (checkpointers, brokers, run queues).

        Example::

            broker = pm.from_url("headwater_brokers", "redis://localhost:6379/0",
                                 error=BrokerError, expected=Broker)
        """
        scheme = urlsplit(url).scheme if isinstance(url, str) else ""
        return self.make(
            hook_name, scheme, [url], error=error, expected=expected, where=f" in {url!r}"
        )

    def check_pending(self) -> None:
        """Fail loudly when a plugin implements a hook headwater does not have (a typo).

        Raises :class:`~headwater.errors.PluginLoadError` naming the plugin and the hook,
        with the closest real hook name as a suggestion.

        Example::

            pm.check_pending()  # PluginLoadError: ... unknown hook 'headwater_stream_mode'.
                                # Did you mean 'headwater_stream_modes'? ...
        """
        for error in self.pending_errors():
            raise error

    def pending_errors(self) -> list[PluginLoadError]:
        """One error per implementation of an unknown hook (what ``check_pending`` raises).

        Example::

            for error in pm.pending_errors():
                print(error)
        """
        specs = sorted(n for n in dir(hookspecs) if n.startswith("headwater_"))
        errors: list[PluginLoadError] = []
        for name, caller in sorted(vars(self.hook).items()):
            if not isinstance(caller, pluggy.HookCaller) or caller.has_spec():
                continue
            for impl in caller.get_hookimpls():
                if impl.optionalhook:
                    continue
                close = difflib.get_close_matches(name, specs, n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                error = PluginLoadError(
                    f"{_upper_first(self.describe(impl.plugin_name))} implements unknown hook "
                    f"{name!r}.{hint} headwater's hooks: {', '.join(specs)}."
                )
                _tag(
                    error, impl.plugin_name, *self.distributions.get(impl.plugin_name, (None, None))
                )
                errors.append(error)
        return errors


def _describe(plugin: Any) -> str:
    """A module or class by its name; an instance by its class (``an instance of m.Cls``)."""
    name = getattr(plugin, "__name__", None)
    if isinstance(name, str) and name:
        return name
    kind = type(plugin)
    return f"an instance of {kind.__module__}.{kind.__qualname__}"


def _upper_first(text: str) -> str:
    return text[:1].upper() + text[1:]


def _tag(
    error: PluginError, plugin_name: str | None, distribution: str | None, version: str | None
) -> None:
    """Attach the plugin an error is about, for ``headwater plugins`` to report it."""
    error.plugin_name = plugin_name  # type: ignore[attr-defined]
    error.distribution = distribution  # type: ignore[attr-defined]
    error.version = version  # type: ignore[attr-defined]


def _selected(env: str | None) -> set[str] | None:
    if env is None:
        return None
    return {p.strip() for p in env.split(",") if p.strip()}


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
    the core's built-ins; ``block`` names plugins never to load (entry-point names, or
    ``headwater.cli`` / ``headwater.checkpointers`` for the built-ins). With
    ``raise_errors=False`` a plugin that fails to load, or implements an unknown hook, is
    recorded in ``load_errors`` instead of raising :class:`~headwater.errors.PluginError`.
    ``HEADWATER_TRACE_PLUGINS=1`` prints every hook call to stderr.

    Example::

        pm = create_plugin_manager(autoload=False, plugins=[my_test_plugin])
        app = graph.compile(plugin_manager=pm)
    """
    pm = PluginManager()
    for name in block:
        pm.set_blocked(name)
    for module_name in DEFAULT_PLUGINS:
        builtin = "headwater." + module_name.rsplit(".", 1)[-1]
        if not pm.is_blocked(builtin):  # a blocked built-in is not even imported
            pm.register(importlib.import_module(module_name), name=builtin)
    for plugin in plugins:
        pm.register(plugin)
    if autoload:
        _load_entry_points(pm, raise_errors=raise_errors)
    pending = pm.pending_errors()
    if pending and raise_errors:
        raise pending[0]
    pm.load_errors.extend(pending)
    if os.environ.get("HEADWATER_TRACE_PLUGINS") == "1":
        pm.trace.root.setwriter(lambda message: sys.stderr.write(message))
        pm.enable_tracing()
    return pm


def _load_entry_points(pm: PluginManager, *, raise_errors: bool) -> None:
    only = _selected(os.environ.get("HEADWATER_LOAD_PLUGINS"))
    eps = sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)

    def fail(error: PluginError, name: str | None, dist: str | None, version: str | None) -> None:
        _tag(error, name, dist, version)
        if raise_errors:
            raise error
        pm.load_errors.append(error)

    if only is not None:
        installed = sorted({ep.name for ep in eps})
        for name in sorted(only.difference(installed)):
            close = difflib.get_close_matches(name, installed, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            fail(
                PluginLoadError(
                    f"HEADWATER_LOAD_PLUGINS names plugin {name!r}, which is not installed.{hint} "
                    f"Installed plugins: {', '.join(installed) or '(none)'}."
                ),
                name,
                None,
                None,
            )
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
            other_version = other.dist.version if other.dist is not None else "?"
            fail(
                PluginConflictError(
                    f"Two plugins are both named {ep.name!r}: entry point {other.value!r} from "
                    f"distribution {other_dist} {other_version} and entry point {ep.value!r} "
                    f"from distribution {dist} {version}. Uninstall one of them."
                ),
                ep.name,
                dist,
                version,
            )
            continue
        seen[ep.name] = ep
        try:
            plugin = ep.load()
        except Exception as exc:
            error = PluginLoadError(
                f"Plugin {ep.name!r} (entry point {ep.name} = {ep.value}, from distribution "
                f"{dist} {version}) failed to load: {type(exc).__name__}: {exc}. Fix or "
                f"uninstall it (pip uninstall {dist}), or leave it out with "
                "HEADWATER_LOAD_PLUGINS=<the plugins to load>."
            )
            error.__cause__ = exc
            fail(error, ep.name, dist, version)
            continue
        if pm.is_registered(plugin):  # also passed in plugins=[...]: keep that registration
            continue
        try:
            pm.register(plugin, name=ep.name)
        except PluginConflictError as exc:
            fail(exc, ep.name, dist, version)
            continue
        except Exception as exc:  # pluggy's validation: a hook implemented with a bad signature
            error = PluginLoadError(
                f"Plugin {ep.name!r} (entry point {ep.name} = {ep.value}, from distribution "
                f"{dist} {version}) could not be registered: {type(exc).__name__}: {exc}"
            )
            error.__cause__ = exc
            fail(error, ep.name, dist, version)
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
