"""The plugin system: hooks, the plugin manager, entry-point loading and its errors.

Plugins here are either objects registered on a fresh manager
(``create_plugin_manager(autoload=False, plugins=[...])``) or throwaway *distributions*
written to a temporary directory (package + ``.dist-info``) and put on ``sys.path``, so
``importlib.metadata`` discovers their entry points exactly as it would after ``pip
install``. Every hook of ``headwater.hookspecs`` has a ``test_hook_<name>`` here or in
``test_cli.py`` (checked by ``test_every_hook_has_a_test``).
"""

from __future__ import annotations

import json
import operator
import subprocess
import sys
import types
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, TypedDict

import anyio
import anyio.lowlevel
import pytest
from fixtures.plugin_dists import Install, installing, plugin_env, write_plugin_distribution

import headwater
from headwater import END, START, StateGraph, create_plugin_manager, hookspecs
from headwater._plugins import REGISTRATION_HOOKS, get_plugin_manager
from headwater.broker import MemoryBroker, broker_from_url
from headwater.checkpoint import MemoryCheckpointer
from headwater.errors import PluginConflictError, PluginError, PluginLoadError
from headwater.events import SKIP, Event, EventFilter, StreamMode, Subscription
from headwater.models import init_chat_model
from headwater.runtime import Run, Task
from headwater.testing.fake import FakeChatModel

HERE = Path(__file__).parent


class State(TypedDict):
    n: int


class Log(TypedDict):
    log: Annotated[list[str], operator.add]


async def inc(state: State) -> dict[str, int]:
    return {"n": state["n"] + 1}


def chain(*names: str, pm: Any, node: Callable[..., Any] = inc) -> headwater.CompiledGraph:
    """START -> names[0] -> ... -> END, every node ``node``."""
    graph = StateGraph(State)
    previous = START
    for name in names:
        graph.add_node(name, node)
        graph.add_edge(previous, name)
        previous = name
    graph.add_edge(previous, END)
    return graph.compile(name="chain", plugin_manager=pm)


def fresh(*plugins: Any) -> headwater.PluginManager:
    """A manager with the built-ins and ``plugins`` only (no entry points)."""
    return create_plugin_manager(autoload=False, plugins=plugins)


def module_plugin(name: str, **hooks: Callable[..., Any]) -> types.ModuleType:
    """A plugin module named ``name`` implementing ``hooks`` (hook name -> function)."""
    module = types.ModuleType(name)
    for hook_name, fn in hooks.items():
        setattr(module, hook_name, headwater.hookimpl(fn))
    return module


@pytest.fixture(autouse=True)
def _no_plugin_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The outer environment must not change what these tests load or print."""
    monkeypatch.delenv("HEADWATER_LOAD_PLUGINS", raising=False)
    monkeypatch.delenv("HEADWATER_TRACE_PLUGINS", raising=False)


@pytest.fixture
def install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Install]:
    """Install throwaway distributions for this test (see ``fixtures.plugin_dists``)."""
    with installing(tmp_path, monkeypatch) as install:
        yield install


MODE_PLUGIN = """
import headwater
from headwater.events import StreamMode


@headwater.hookimpl
def headwater_stream_modes():
    return {{"{mode}": lambda run: StreamMode(kinds=frozenset(), project=repr)}}
"""


# -- throwaway distributions: discovery, order, errors -------------------------------------


THROWAWAY = '''
"""A throwaway headwater plugin, installed by tests/core/test_plugins.py."""
import attrs

import headwater
from headwater.events import SKIP, StreamMode


@attrs.frozen
class Note:
    text: str


@headwater.hookimpl
def headwater_stream_modes():
    def node_names(run):
        return StreamMode(
            kinds=frozenset({"on_chain_start"}),
            project=lambda e: e.name if "node" in e.metadata else SKIP,
        )

    return {"node_names": node_names}


@headwater.hookimpl
def headwater_serde_types():
    return {"throwaway.Note": Note}


@headwater.hookimpl
def headwater_run_start(run):
    print("throwaway: run_start", run.graph_name, flush=True)


@headwater.hookimpl
def headwater_run_end(run, error):
    print("throwaway: run_end", run.graph_name, repr(error), flush=True)
'''

USE_THROWAWAY = """
import json
from typing import TypedDict

import anyio

import headwater
from headwater import END, START, StateGraph, serde


class S(TypedDict):
    n: int


async def double(state):
    return {"n": state["n"] * 2}


graph = StateGraph(S)
graph.add_node("double", double)
graph.add_edge(START, "double")
graph.add_edge("double", END)
app = graph.compile(name="tiny")  # the process-wide plugin manager


async def node_names():
    return [chunk async for chunk in app.astream({"n": 1}, stream_mode="node_names")]


result = {"invoke": app.invoke({"n": 2}), "node_names": anyio.run(node_names)}
import headwater_throwaway

note = headwater_throwaway.Note("hi")
result["serde"] = serde.decode(serde.encode(note)) == note
pm = headwater.get_plugin_manager()
result["distribution"] = pm.distributions["throwaway"]
result["plugins"] = sorted(name for name, _ in pm.list_name_plugin())
print("result:", json.dumps(result), flush=True)
"""


@pytest.fixture(scope="module")
def throwaway_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], dict[str, Any]]:
    """Install headwater-throwaway, run a graph in a fresh interpreter: (plugin lines, result)."""
    root = write_plugin_distribution(
        tmp_path_factory.mktemp("throwaway"),
        "headwater-throwaway",
        entry_points={"throwaway": "headwater_throwaway"},
        modules={"headwater_throwaway/__init__.py": THROWAWAY},
        version="0.1.0",
    )
    done = subprocess.run(
        [sys.executable, "-c", USE_THROWAWAY],
        env=plugin_env(root, load="throwaway"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    *lines, last = done.stdout.splitlines()
    return lines, json.loads(last.removeprefix("result: "))


def test_installed_distribution_is_discovered_and_its_hooks_are_called(
    throwaway_run: tuple[list[str], dict[str, Any]],
) -> None:
    lines, result = throwaway_run
    assert result["invoke"] == {"n": 4}
    assert result["distribution"] == ["headwater-throwaway", "0.1.0"]
    assert result["plugins"] == ["headwater.checkpointers", "headwater.cli", "throwaway"]
    assert result["node_names"] == ["double"]  # the plugin's stream mode
    # headwater_run_start / headwater_run_end: once per run (invoke, then astream).
    assert lines == [
        "throwaway: run_start tiny",
        "throwaway: run_end tiny None",
        "throwaway: run_start tiny",
        "throwaway: run_end tiny None",
    ]


def test_entry_points_load_in_sorted_order(
    install: Install, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HEADWATER_LOAD_PLUGINS", "b,a")
    log = "import order_log\norder_log.LOADED.append(__name__)\n"
    install(
        "headwater-ab",
        {"b": "hw_order_b", "a": "hw_order_a"},  # listed b first in entry_points.txt
        {
            "order_log.py": "LOADED = []\n",
            "hw_order_b.py": log + MODE_PLUGIN.format(mode="from_b"),
            "hw_order_a.py": log + MODE_PLUGIN.format(mode="from_a"),
        },
    )
    pm = create_plugin_manager()
    assert sys.modules["order_log"].LOADED == ["hw_order_a", "hw_order_b"]
    names = [name for name, _ in pm.list_name_plugin()]
    assert names[-2:] == ["a", "b"]  # after the built-ins, sorted by entry-point name
    assert list(pm.registrations("headwater_stream_modes"))[-2:] == ["from_a", "from_b"]


def test_plugin_failing_to_import_names_entry_point_distribution_version_and_cause(
    install: Install, monkeypatch: pytest.MonkeyPatch
) -> None:
    install(
        "headwater-broken",
        {"broken": "hw_broken"},
        {"hw_broken.py": "import hw_sdk_that_is_not_installed\n"},
        version="0.3.1",
    )
    install("headwater-fine", {"fine": "hw_fine"}, {"hw_fine.py": MODE_PLUGIN.format(mode="ok")})
    monkeypatch.setenv("HEADWATER_LOAD_PLUGINS", "broken,fine")
    with pytest.raises(PluginLoadError) as raised:
        create_plugin_manager()
    message = str(raised.value)
    assert "Plugin 'broken'" in message
    assert "entry point broken = hw_broken" in message
    assert "distribution headwater-broken 0.3.1" in message
    assert "ModuleNotFoundError: No module named 'hw_sdk_that_is_not_installed'" in message
    assert isinstance(raised.value.__cause__, ModuleNotFoundError)

    pm = create_plugin_manager(raise_errors=False)  # recorded; the other plugin still loads
    [error] = pm.load_errors
    assert isinstance(error, PluginLoadError)
    assert str(error) == message
    assert (error.plugin_name, error.distribution, error.version) == (  # type: ignore[attr-defined]
        "broken",
        "headwater-broken",
        "0.3.1",
    )
    assert pm.has_plugin("fine") and not pm.has_plugin("broken")


def test_plugin_raising_import_error_at_import_is_a_load_error(install: Install) -> None:
    install(
        "headwater-sdkless",
        {"sdkless": "hw_sdkless"},
        {"hw_sdkless.py": "raise ImportError('install the vendor SDK: pip install vendor')\n"},
    )
    with pytest.raises(PluginLoadError, match=r"Plugin 'sdkless' .* ImportError: install the"):
        create_plugin_manager()


def test_hook_with_wrong_parameter_names_is_a_load_error_naming_the_plugin(
    install: Install, monkeypatch: pytest.MonkeyPatch
) -> None:
    install(
        "headwater-badsig",
        {"badsig": "hw_badsig"},
        {
            "hw_badsig.py": """
                import headwater

                @headwater.hookimpl
                def headwater_run_end(run, err):
                    pass
            """
        },
    )
    monkeypatch.setenv("HEADWATER_LOAD_PLUGINS", "badsig")
    with pytest.raises(PluginLoadError, match=r"Plugin 'badsig' .*headwater-badsig 0\.1\.0"):
        create_plugin_manager()


def test_misspelled_hook_fails_loudly_with_did_you_mean(
    install: Install, monkeypatch: pytest.MonkeyPatch
) -> None:
    install(
        "headwater-typo",
        {"typo": "hw_typo"},
        {
            "hw_typo.py": """
                import headwater

                @headwater.hookimpl
                def headwater_stream_mode():
                    return {"x": None}
            """
        },
    )
    monkeypatch.setenv("HEADWATER_LOAD_PLUGINS", "typo")
    with pytest.raises(PluginLoadError) as raised:
        create_plugin_manager()
    message = str(raised.value)
    assert "plugin 'typo' (distribution headwater-typo 0.1.0)" in message.lower()
    assert "unknown hook 'headwater_stream_mode'" in message
    assert "Did you mean 'headwater_stream_modes'?" in message

    pm = create_plugin_manager(raise_errors=False)
    assert [str(e) for e in pm.load_errors] == [message]


def test_check_pending_on_a_fresh_manager() -> None:
    class Typo:
        @headwater.hookimpl
        def headwater_run_starts(self, run: Run) -> None:
            pass

    with pytest.raises(PluginLoadError, match="Did you mean 'headwater_run_start'"):
        fresh(Typo())
    pm = fresh()
    pm.register(Typo())
    with pytest.raises(PluginLoadError, match="unknown hook 'headwater_run_starts'"):
        pm.check_pending()


def test_optional_unknown_hook_is_allowed() -> None:
    class Future:
        @headwater.hookimpl(optionalhook=True)
        def headwater_hook_of_a_later_version(self) -> None:
            pass

    pm = fresh(Future())
    pm.check_pending()
    assert pm.load_errors == []


def test_two_distributions_with_the_same_plugin_name_conflict(
    install: Install, monkeypatch: pytest.MonkeyPatch
) -> None:
    install("headwater-dup-one", {"dup": "hw_dup_one"}, {"hw_dup_one.py": "x = 1\n"})
    install("headwater-dup-two", {"dup": "hw_dup_two"}, {"hw_dup_two.py": "x = 2\n"})
    monkeypatch.setenv("HEADWATER_LOAD_PLUGINS", "dup")
    with pytest.raises(PluginConflictError) as raised:
        create_plugin_manager()
    message = str(raised.value)
    assert "Two plugins are both named 'dup'" in message
    assert "headwater-dup-one" in message and "headwater-dup-two" in message
    pm = create_plugin_manager(raise_errors=False)
    assert [type(e) for e in pm.load_errors] == [PluginConflictError]


def test_two_plugins_registered_under_one_name_conflict() -> None:
    first = module_plugin("first_plugin")
    second = module_plugin("second_plugin")
    pm = fresh()
    pm.register(first, name="same")
    with pytest.raises(PluginConflictError) as raised:
        pm.register(second, name="same")
    assert str(raised.value).startswith(
        "Two plugins are both named 'same': plugin 'same' (first_plugin) and second_plugin."
    )
    assert pm.get_plugin("same") is first


def test_two_distributions_registering_one_stream_mode_conflict_naming_both(
    install: Install, monkeypatch: pytest.MonkeyPatch
) -> None:
    install("headwater-one", {"one": "hw_one"}, {"hw_one.py": MODE_PLUGIN.format(mode="same")})
    install("headwater-two", {"two": "hw_two"}, {"hw_two.py": MODE_PLUGIN.format(mode="same")})
    monkeypatch.setenv("HEADWATER_LOAD_PLUGINS", "one,two")
    pm = create_plugin_manager()  # loading is fine: registrations are merged lazily
    with pytest.raises(PluginConflictError) as raised:
        pm.registrations("headwater_stream_modes")
    message = str(raised.value)
    assert message.startswith(
        "Stream mode 'same' is registered by both plugin 'one' (distribution headwater-one "
        "0.1.0) and plugin 'two' (distribution headwater-two 0.1.0)."
    )
    pm = create_plugin_manager(block=["two"])
    assert list(pm.registrations("headwater_stream_modes")) == ["same"]


def test_entry_point_may_name_an_object(install: Install) -> None:
    install(
        "headwater-obj",
        {"obj": "hw_obj:PLUGIN"},
        {
            "hw_obj.py": """
                import headwater

                class Plugin:
                    @headwater.hookimpl
                    def headwater_sinks(self):
                        return {"null": object}

                PLUGIN = Plugin()
            """
        },
    )
    pm = create_plugin_manager()  # every installed plugin too: other sinks may be there
    assert pm.registrations("headwater_sinks")["null"] is object
    assert pm.distributions["obj"] == ("headwater-obj", "0.1.0")


# -- HEADWATER_LOAD_PLUGINS, block, HEADWATER_TRACE_PLUGINS ---------------------------------


@pytest.fixture
def two_plugins(install: Install) -> None:
    install("headwater-pa", {"pa": "hw_pa"}, {"hw_pa.py": MODE_PLUGIN.format(mode="mode_a")})
    install("headwater-pb", {"pb": "hw_pb"}, {"hw_pb.py": MODE_PLUGIN.format(mode="mode_b")})


def loaded(pm: headwater.PluginManager) -> list[str]:
    return sorted(
        name
        for name, plugin in pm.list_name_plugin()
        if plugin is not None and not name.startswith("headwater.")  # None: blocked
    )


@pytest.mark.usefixtures("two_plugins")
def test_load_plugins_env_selects_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEADWATER_LOAD_PLUGINS", "pa")
    assert loaded(create_plugin_manager()) == ["pa"]
    assert "hw_pb" not in sys.modules  # not even imported
    monkeypatch.setenv("HEADWATER_LOAD_PLUGINS", " pb , pa ")
    assert loaded(create_plugin_manager()) == ["pa", "pb"]
    monkeypatch.setenv("HEADWATER_LOAD_PLUGINS", "")
    pm = create_plugin_manager()
    assert loaded(pm) == []
    assert sorted(name for name, _ in pm.list_name_plugin()) == [
        "headwater.checkpointers",
        "headwater.cli",
    ]  # the core's built-ins are not entry points


@pytest.mark.usefixtures("two_plugins")
def test_without_load_plugins_env_every_installed_plugin_loads() -> None:
    pm = create_plugin_manager(raise_errors=False)  # whatever else is installed loads too
    assert {"pa", "pb"} <= set(loaded(pm))


@pytest.mark.usefixtures("two_plugins")
def test_load_plugins_env_naming_an_uninstalled_plugin_fails_with_did_you_mean(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HEADWATER_LOAD_PLUGINS", "pa,pbb")
    with pytest.raises(PluginLoadError, match=r"names plugin 'pbb'.*Did you mean 'pb'\?"):
        create_plugin_manager()
    pm = create_plugin_manager(raise_errors=False)
    assert loaded(pm) == ["pa"]
    assert [e.plugin_name for e in pm.load_errors] == ["pbb"]  # type: ignore[attr-defined]


@pytest.mark.usefixtures("two_plugins")
def test_block_keeps_plugins_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEADWATER_LOAD_PLUGINS", "pa,pb")
    pm = create_plugin_manager(block=["pa"])
    assert loaded(pm) == ["pb"]
    assert "hw_pa" not in sys.modules
    assert pm.is_blocked("pa")
    core = create_plugin_manager(autoload=False, block=["headwater.cli"])
    assert not core.has_plugin("headwater.cli")
    assert core.has_plugin("headwater.checkpointers")


def test_trace_plugins_env_prints_hook_calls(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    modes = module_plugin("traced_modes", headwater_stream_modes=lambda: {"m": repr})
    quiet = fresh(modes)
    chain("a", pm=quiet).invoke({"n": 0})
    quiet.registrations("headwater_stream_modes")
    assert capsys.readouterr().err == ""

    monkeypatch.setenv("HEADWATER_TRACE_PLUGINS", "1")
    traced = fresh(modes)
    chain("a", pm=traced).invoke({"n": 0})
    err = capsys.readouterr().err
    for hook in ("headwater_event_subscribers", "headwater_run_start", "headwater_run_end"):
        assert f"{hook} [hook]" in err
    traced.registrations("headwater_stream_modes")
    err = capsys.readouterr().err
    assert "headwater_stream_modes [hook]" in err
    assert "plugin: traced_modes" in err


# -- the manager itself --------------------------------------------------------------------


def test_get_plugin_manager_is_built_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEADWATER_LOAD_PLUGINS", "")
    get_plugin_manager.cache_clear()
    try:
        pm = headwater.get_plugin_manager()
        assert headwater.get_plugin_manager() is pm
        assert isinstance(pm, headwater.PluginManager)
        assert pm is not create_plugin_manager()
    finally:
        get_plugin_manager.cache_clear()  # later tests rebuild it with their environment


def test_builtins_then_given_plugins_then_entry_points(install: Install) -> None:
    install("headwater-ep", {"ep": "hw_ep"}, {"hw_ep.py": MODE_PLUGIN.format(mode="ep")})
    given = module_plugin("given_plugin", headwater_stream_modes=lambda: {"given": repr})
    pm = create_plugin_manager(plugins=[given], raise_errors=False)
    names = [name for name, _ in pm.list_name_plugin()]
    assert names[:3] == ["headwater.checkpointers", "headwater.cli", "given_plugin"]
    assert names.index("ep") > 2
    modes = list(pm.registrations("headwater_stream_modes"))
    assert modes.index("given") < modes.index("ep")


def test_registrations_are_cached_and_invalidated_on_register_and_unregister() -> None:
    calls: list[str] = []

    def modes() -> dict[str, Any]:
        calls.append("a")
        return {"a": repr}

    pm = fresh(module_plugin("plug_a", headwater_stream_modes=modes))
    first = pm.registrations("headwater_stream_modes")
    assert pm.registrations("headwater_stream_modes") is first
    assert first == {"a": repr}
    assert calls == ["a"]  # the factory hook ran once

    b = module_plugin("plug_b", headwater_stream_modes=lambda: {"b": str})
    pm.register(b)
    assert pm.registrations("headwater_stream_modes") == {"a": repr, "b": str}
    assert calls == ["a", "a"]
    pm.unregister(b)
    assert pm.registrations("headwater_stream_modes") == {"a": repr}
    assert calls == ["a", "a", "a"]
    pm.set_blocked("plug_a")
    assert pm.registrations("headwater_stream_modes") == {}


@pytest.mark.parametrize("hook_name", REGISTRATION_HOOKS)
def test_registration_hooks_merge_in_order_and_conflicts_name_both(hook_name: str) -> None:
    first = module_plugin("plug_first", **{hook_name: lambda: {"x": 1, "y": 2}})
    nothing = module_plugin("plug_nothing", **{hook_name: lambda: None})
    second = module_plugin("plug_second", **{hook_name: lambda: {"z": 3}})
    pm = fresh(first, nothing, second)
    merged = pm.registrations(hook_name)
    assert {k: merged[k] for k in ("x", "y", "z")} == {"x": 1, "y": 2, "z": 3}

    clash = module_plugin("plug_clash", **{hook_name: lambda: {"y": 4}})
    pm.register(clash)
    with pytest.raises(PluginConflictError) as raised:
        pm.registrations(hook_name)
    message = str(raised.value)
    assert "'y' is registered by both plugin 'plug_first' and plugin 'plug_clash'" in message


class Missing(Exception):
    """What the lookup tests ask PluginManager.lookup to raise."""


def test_lookup_finds_what_a_plugin_registered() -> None:
    pm = fresh(module_plugin("plug_brokers", headwater_brokers=lambda: {"carrier": repr}))
    assert pm.lookup("headwater_brokers", "carrier", error=Missing) is repr


def test_lookup_of_a_misspelling_suggests_the_closest_installed_name() -> None:
    pm = fresh(module_plugin("plug_brokers", headwater_brokers=lambda: {"carrier": repr}))
    with pytest.raises(Missing) as raised:
        pm.lookup("headwater_brokers", "carier", error=Missing, where=" in 'carier://x'")
    assert str(raised.value) == (
        "Unknown broker scheme 'carier' in 'carier://x'. Did you mean 'carrier'? "
        "Installed schemes: carrier, memory."
    )


def test_lookup_of_a_standard_name_says_what_to_install() -> None:
    pm = create_plugin_manager(autoload=False)
    with pytest.raises(Missing) as raised:
        pm.lookup("headwater_brokers", "redis", error=Missing)
    assert str(raised.value) == (
        "Unknown broker scheme 'redis'. Installed schemes: memory. "
        "Install it with: pip install headwater-redis."
    )
    with pytest.raises(Missing, match=r"Did you mean 'openai'\?.*pip install headwater-openai"):
        pm.lookup("headwater_chat_models", "opanai", error=Missing)


def test_lookup_with_nothing_installed_names_the_standard_distribution() -> None:
    pm = create_plugin_manager(autoload=False)
    with pytest.raises(Missing) as raised:
        pm.lookup("headwater_event_filters", "only_b", error=Missing, unknown="Nope.")
    assert str(raised.value) == (
        "Nope. Installed filters: (none). Install headwater-filters for the standard "
        "filters: pip install headwater-filters."
    )


def test_registration_hook_returning_a_non_mapping_names_the_plugin() -> None:
    pm = fresh(module_plugin("plug_list", headwater_checkpointers=lambda: ["memory"]))
    with pytest.raises(PluginLoadError, match=r"Plugin 'plug_list': headwater_checkpointers\(\)"):
        pm.registrations("headwater_checkpointers")


def test_registration_hook_raising_names_the_plugin() -> None:
    def broken() -> None:
        raise RuntimeError("vendor SDK missing")

    pm = fresh(module_plugin("plug_raises", headwater_chat_models=broken))
    with pytest.raises(PluginLoadError) as raised:
        pm.registrations("headwater_chat_models")
    assert str(raised.value).startswith(
        "Plugin 'plug_raises' failed in headwater_chat_models(): RuntimeError: vendor SDK missing."
    )
    assert isinstance(raised.value.__cause__, RuntimeError)


def test_every_registration_hook_is_merged() -> None:
    # A new registration hook must be added to _plugins._REGISTRATION_LABELS so that
    # `headwater plugins` checks it for conflicts. headwater_serde_types is merged by
    # headwater.serde itself (the same class may be registered twice).
    zero_argument = {
        name
        for name in hookspecs.__all__
        if name.startswith("headwater_")
        and not getattr(hookspecs, name).__code__.co_argcount
        and name != "headwater_serde_types"
    }
    assert zero_argument == set(REGISTRATION_HOOKS)


def test_every_hook_has_a_test() -> None:
    sources = (HERE / "test_plugins.py").read_text() + (HERE / "test_cli.py").read_text()
    hooks = [n for n in hookspecs.__all__ if n.startswith("headwater_")]
    assert hooks
    missing = [h for h in hooks if f"def test_hook_{h}(" not in sources]
    assert missing == []


# -- registration hooks, one test each ------------------------------------------------------


def test_hook_headwater_stream_modes() -> None:
    class Modes:
        @headwater.hookimpl
        def headwater_stream_modes(self) -> dict[str, Any]:
            def node_names(run: Run) -> StreamMode:
                assert isinstance(run, Run)
                return StreamMode(
                    kinds=frozenset({"on_chain_start"}),
                    project=lambda e: e.name if "node" in e.metadata else SKIP,
                )

            return {"node_names": node_names}

    app = chain("a", "b", pm=fresh(Modes()))
    assert list(app.stream({"n": 0}, stream_mode="node_names")) == ["a", "b"]


def events_mode(run: Run) -> StreamMode:
    """The ``events`` projection ``astream_events`` needs, as headwater-streams supplies it."""
    return StreamMode(kinds=frozenset({"on_chain_start", "on_chain_end"}), project=Event.to_dict)


@pytest.mark.anyio
async def test_hook_headwater_event_filters() -> None:
    made: list[Any] = []

    def only_node(argument: Any) -> EventFilter:
        made.append(argument)
        return EventFilter(accept=lambda kind, name, tags, metadata: name == argument)

    class Filters:
        @headwater.hookimpl
        def headwater_stream_modes(self) -> dict[str, Any]:
            return {"events": events_mode}

        @headwater.hookimpl
        def headwater_event_filters(self) -> dict[str, Any]:
            return {"only_b": lambda _arg: only_node("b")}

    app = chain("a", "b", pm=fresh(Filters()))
    seen = [
        (e["event"], e["name"])
        async for e in app.astream_events({"n": 0}, version="v2", filters=["only_b"])
    ]
    assert seen == [("on_chain_start", "b"), ("on_chain_end", "b")]
    assert made == ["b"]  # the factory ran once for the run


@pytest.mark.anyio
@pytest.mark.parametrize(("group", "expected"), [("either", ["a", "b"]), (None, [])])
async def test_keyword_filters_sharing_an_any_of_group_widen_the_stream(
    group: str | None, expected: list[str]
) -> None:
    def named(node: str) -> Callable[[Any], EventFilter]:
        return lambda _arg: EventFilter(
            accept=lambda kind, name, tags, metadata: name == node, any_of=group
        )

    class Filters:
        @headwater.hookimpl
        def headwater_stream_modes(self) -> dict[str, Any]:
            return {"events": events_mode}

        @headwater.hookimpl
        def headwater_event_filters(self) -> dict[str, Any]:
            return {"include_names": named("a"), "include_tags": named("b")}

    app = chain("a", "b", pm=fresh(Filters()))
    stream = app.astream_events({"n": 0}, include_names=["x"], include_tags=["y"])
    names = sorted({e["name"] async for e in stream})
    assert names == expected  # one group: either passes; no group: both must pass


def test_hook_headwater_checkpointers() -> None:
    urls: list[str] = []

    class Scratch:
        @headwater.hookimpl
        def headwater_checkpointers(self) -> dict[str, Any]:
            def make(url: str) -> MemoryCheckpointer:
                urls.append(url)
                return MemoryCheckpointer()

            return {"scratch": make}

    pm = fresh(Scratch())
    graph = StateGraph(State)
    graph.add_node("a", inc)
    graph.add_edge(START, "a")
    app = graph.compile(checkpointer="scratch://here", plugin_manager=pm)
    assert isinstance(app.checkpointer, MemoryCheckpointer)
    assert urls == ["scratch://here"]
    config = {"configurable": {"thread_id": "t"}}
    assert app.invoke({"n": 1}, config) == {"n": 2}
    assert app.get_state(config).values == {"n": 2}


def test_hook_headwater_brokers() -> None:
    class Scratch:
        @headwater.hookimpl
        def headwater_brokers(self) -> dict[str, Any]:
            return {"scratch": lambda url: MemoryBroker()}

    assert isinstance(broker_from_url("scratch://x", plugin_manager=fresh(Scratch())), MemoryBroker)


def test_hook_headwater_run_queues() -> None:
    def factory(url: str) -> None:
        raise AssertionError("not called by registration")

    class Queues:
        @headwater.hookimpl
        def headwater_run_queues(self) -> dict[str, Any]:
            return {"scratch": factory}

    assert fresh(Queues()).registrations("headwater_run_queues") == {"scratch": factory}


def test_hook_headwater_chat_models() -> None:
    class Provider:
        @headwater.hookimpl
        def headwater_chat_models(self) -> dict[str, Any]:
            return {"scratch": lambda model, **kw: FakeChatModel(["hi"], model=model, **kw)}

    llm = init_chat_model("scratch:tiny-1", plugin_manager=fresh(Provider()))
    assert isinstance(llm, FakeChatModel)
    assert llm.model == "tiny-1"


def test_hook_headwater_sinks() -> None:
    class NullSink:
        pass

    class Sinks:
        @headwater.hookimpl
        def headwater_sinks(self) -> dict[str, Any]:
            return {"null": NullSink}

    assert fresh(Sinks()).registrations("headwater_sinks") == {"null": NullSink}


def test_hook_headwater_serde_types(throwaway_run: tuple[list[str], dict[str, Any]]) -> None:
    # Called once per process, on the process-wide manager: so in the fresh interpreter of
    # throwaway_run, where headwater-throwaway registers an attrs class that must round-trip.
    _, result = throwaway_run
    assert result["serde"] is True


# -- execution hooks, through a fresh manager ----------------------------------------------


class Lifecycle:
    """Records run_start / run_end calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any]] = []
        self.runs: list[Run] = []

    @headwater.hookimpl
    def headwater_run_start(self, run: Run) -> None:
        self.runs.append(run)
        self.calls.append(("start", run.graph_name, run.input))

    @headwater.hookimpl
    def headwater_run_end(self, run: Run, error: BaseException | None) -> None:
        assert run is self.runs[-1]
        self.calls.append(("end", run.graph_name, error))


@pytest.mark.anyio
async def test_hook_headwater_run_start() -> None:
    lifecycle = Lifecycle()
    app = chain("a", pm=fresh(lifecycle))
    config = {"tags": ["t1"], "configurable": {"user": "u"}}
    assert await app.ainvoke({"n": 1}, config) == {"n": 2}
    assert await app.ainvoke({"n": 5}) == {"n": 6}
    assert [c[:3] for c in lifecycle.calls] == [
        ("start", "chain", {"n": 1}),
        ("end", "chain", None),
        ("start", "chain", {"n": 5}),
        ("end", "chain", None),
    ]
    first, second = lifecycle.runs
    assert first.run_id != second.run_id
    assert first.config["configurable"] == {"user": "u"}
    assert first.tags == ("t1",)


@pytest.mark.anyio
async def test_hook_headwater_run_end() -> None:
    lifecycle = Lifecycle()

    async def fails(state: State) -> dict[str, int]:
        raise ValueError("boom")

    app = chain("a", pm=fresh(lifecycle), node=fails)
    with pytest.raises(ValueError, match="boom") as raised:
        await app.ainvoke({"n": 1})
    assert [c[0] for c in lifecycle.calls] == ["start", "end"]
    assert lifecycle.calls[1][2] is raised.value  # the exception that ended the run


@pytest.mark.anyio
async def test_hook_headwater_run_end_on_cancellation() -> None:
    lifecycle = Lifecycle()
    started = anyio.Event()

    async def waits(state: State) -> dict[str, int]:
        started.set()
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    app = chain("a", pm=fresh(lifecycle), node=waits)
    async with anyio.create_task_group() as tg:
        tg.start_soon(app.ainvoke, {"n": 1})
        await started.wait()
        tg.cancel_scope.cancel()
    assert [c[0] for c in lifecycle.calls] == ["start", "end"]
    assert isinstance(lifecycle.calls[1][2], anyio.get_cancelled_exc_class())


@pytest.mark.anyio
async def test_async_run_hooks_are_awaited() -> None:
    log: list[str] = []

    class Slow:
        @headwater.hookimpl
        async def headwater_run_start(self, run: Run) -> None:
            await anyio.lowlevel.checkpoint()
            log.append("start")

        @headwater.hookimpl
        async def headwater_run_end(self, run: Run, error: BaseException | None) -> None:
            await anyio.lowlevel.checkpoint()
            log.append(f"end {error!r}")

    async def node(state: State) -> dict[str, int]:
        log.append("node")
        return {"n": 1}

    await chain("a", pm=fresh(Slow()), node=node).ainvoke({"n": 0})
    assert log == ["start", "node", "end None"]


@pytest.mark.anyio
async def test_hook_headwater_step_end() -> None:
    log: list[Any] = []
    runs: list[Run] = []

    class Steps:
        @headwater.hookimpl
        def headwater_run_start(self, run: Run) -> None:
            runs.append(run)

        @headwater.hookimpl
        async def headwater_step_end(self, run: Run, step: int) -> None:
            assert run is runs[0]
            await anyio.lowlevel.checkpoint()
            log.append(step)  # awaited before the next step starts

    def node(name: str) -> Callable[[Log], Any]:
        async def run(state: Log) -> dict[str, list[str]]:
            log.append(name)
            return {"log": [name]}

        return run

    graph = StateGraph(Log)
    for name in "abcd":
        graph.add_node(name, node(name))
    graph.add_edge(START, "a")
    graph.add_edge("a", "b")
    graph.add_edge("a", "c")
    graph.add_edge(["b", "c"], "d")
    app = graph.compile(plugin_manager=fresh(Steps()))
    assert await app.ainvoke({"log": []}) == {"log": ["a", "b", "c", "d"]}
    assert [x for x in log if isinstance(x, int)] == [1, 2, 3]  # once per superstep
    assert log.index(1) < log.index("b") and log.index(2) < log.index("d")
    assert log[-1] == 3


@pytest.mark.anyio
async def test_hook_headwater_wrap_node() -> None:
    seen: list[tuple[str, int, tuple[str, ...]]] = []
    attempts: dict[str, int] = {}

    class Retry:
        @headwater.hookimpl
        def headwater_wrap_node(self, task: Task) -> Any:
            seen.append((task.node, task.step, task.triggers))
            if task.node != "flaky":
                return None  # leave other nodes alone

            async def retry(call_next: Callable[[Task], Any], task: Task) -> Any:
                for attempt in range(3):
                    try:
                        return await call_next(task)
                    except ConnectionError:
                        if attempt == 2:
                            raise
                raise AssertionError("unreachable")

            return retry

    def flaky(state: State) -> dict[str, int]:  # sync: runs in a worker thread
        attempts["flaky"] = attempts.get("flaky", 0) + 1
        if attempts["flaky"] < 3:
            raise ConnectionError("try again")
        return {"n": state["n"] * 10}

    graph = StateGraph(State)
    graph.add_node("a", inc)
    graph.add_node("flaky", flaky)
    graph.add_edge(START, "a")
    graph.add_edge("a", "flaky")
    app = graph.compile(plugin_manager=fresh(Retry()))
    assert await app.ainvoke({"n": 1}) == {"n": 20}
    assert attempts == {"flaky": 3}
    assert seen == [("a", 1, ("__start__",)), ("flaky", 2, ("a",))]  # once per task


@pytest.mark.anyio
async def test_wrap_node_middlewares_compose_first_registered_outermost() -> None:
    log: list[str] = []

    def wrapper(label: str) -> Any:
        class Wrap:
            @headwater.hookimpl
            def headwater_wrap_node(self, task: Task) -> Any:
                async def middleware(call_next: Callable[[Task], Any], task: Task) -> Any:
                    log.append(f"{label} before {task.node}")
                    out = await call_next(task)
                    log.append(f"{label} after")
                    return {"n": out["n"] * 2} if label == "outer" else out

                return middleware

        return Wrap()

    async def node(state: State) -> dict[str, int]:
        log.append("node")
        return {"n": state["n"] + 1}

    app = chain("a", pm=fresh(wrapper("outer"), wrapper("inner")), node=node)
    assert await app.ainvoke({"n": 1}) == {"n": 4}  # the middleware may change the update
    assert log == ["outer before a", "inner before a", "node", "inner after", "outer after"]


@pytest.mark.anyio
async def test_hook_headwater_event_subscribers() -> None:
    events: list[Event] = []
    ends: list[str] = []
    calls: list[str] = []

    class Watch:
        @headwater.hookimpl
        def headwater_event_subscribers(self, run: Run) -> list[Subscription]:
            calls.append("subscribers")
            return [
                Subscription(
                    callback=events.append, kinds=frozenset({"on_chain_start", "on_chain_end"})
                ),
                Subscription(
                    callback=lambda e: ends.append(e.name), kinds=frozenset({"on_chain_end"})
                ),
            ]

        @headwater.hookimpl
        def headwater_run_start(self, run: Run) -> None:
            calls.append("run_start")

    class Nobody:
        @headwater.hookimpl
        def headwater_event_subscribers(self, run: Run) -> None:
            return None

    app = chain("a", "b", pm=fresh(Watch(), Nobody()))
    assert await app.ainvoke({"n": 0}) == {"n": 2}
    assert calls == ["subscribers", "run_start"]  # resolved once, before the run starts
    assert [(e.event, e.name) for e in events] == [
        ("on_chain_start", "chain"),
        ("on_chain_start", "a"),
        ("on_chain_end", "a"),
        ("on_chain_start", "b"),
        ("on_chain_end", "b"),
        ("on_chain_end", "chain"),
    ]
    assert ends == ["a", "b", "chain"]
    graph_start, a_start, a_end = events[:3]
    assert graph_start.data == {"input": {"n": 0}}
    assert a_start.metadata["node"] == "a" and a_start.metadata["step"] == 1
    assert a_start.parent_ids == (graph_start.run_id,)
    assert a_end.run_id == a_start.run_id
    assert events[-1].data == {"output": {"n": 2}}
    assert [e.seq for e in events] == sorted(e.seq for e in events)


def test_event_subscriber_accept_decides_before_the_event_is_built() -> None:
    asked: list[tuple[str, str]] = []
    got: list[str] = []

    def accept(kind: str, name: str, tags: tuple[str, ...], metadata: Mapping[str, Any]) -> bool:
        asked.append((kind, name))
        return name == "b"

    class Watch:
        @headwater.hookimpl
        def headwater_event_subscribers(self, run: Run) -> list[Subscription]:
            return [
                Subscription(
                    callback=lambda e: got.append(e.event),
                    kinds=frozenset({"on_chain_end"}),
                    accept=accept,
                )
            ]

    chain("a", "b", pm=fresh(Watch())).invoke({"n": 0})
    assert asked == [("on_chain_end", "a"), ("on_chain_end", "b"), ("on_chain_end", "chain")]
    assert got == ["on_chain_end"]


def test_errors_are_plugin_errors() -> None:
    assert issubclass(PluginLoadError, PluginError)
    assert issubclass(PluginConflictError, PluginError)
    assert issubclass(PluginError, headwater.errors.HeadwaterError)


def test_a_conflict_between_unnamed_plugin_objects_names_their_classes() -> None:
    class First:
        @headwater.hookimpl
        def headwater_sinks(self) -> dict[str, Any]:
            return {"audit": object}

    class Second(First):
        pass

    pm = create_plugin_manager(autoload=False, plugins=[First(), Second()])
    with pytest.raises(PluginConflictError) as raised:
        pm.registrations("headwater_sinks")
    message = str(raised.value)
    assert "an unnamed plugin (an instance of" in message and ".First)" in message
    assert ".Second)" in message and "object at 0x" not in message
