"""The ``headwater`` command line: ``headwater plugins`` and commands added by plugins.

In-process tests drive the click commands with ``CliRunner``; a few run the real console
script in a subprocess against throwaway plugin distributions (see
``tests/fixtures/plugin_dists.py``), to prove what a user sees: JSON on stdout, exit
status 1, and a one-line error instead of a traceback.
"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner
from fixtures.plugin_dists import Install, installing, plugin_env, write_plugin_distribution

import headwater
from headwater import create_plugin_manager
from headwater._cli import build_cli, cli, main
from headwater._plugins import get_plugin_manager
from headwater.errors import PluginConflictError, PluginLoadError

HEADWATER = Path(sys.executable).with_name("headwater")  # the installed console script

ROW_KEYS = {"name", "distribution", "version", "module", "hooks", "error"}

HELLO = """
import click

import headwater
from headwater.events import StreamMode


@headwater.hookimpl
def headwater_cli_commands(cli):
    @cli.command()
    @click.option("--name", default="world")
    def hello(name):
        \"\"\"Say hello.\"\"\"
        click.echo(f"hello {name} from a plugin")


@headwater.hookimpl
def headwater_stream_modes():
    return {"hello": lambda run: StreamMode(kinds=frozenset(), project=repr)}
"""

BROKEN = "import hw_sdk_that_is_not_installed\n"


def command_plugin(command: str, text: str) -> str:
    return f"""
import click

import headwater


@headwater.hookimpl
def headwater_cli_commands(cli):
    @cli.command({command!r})
    def command():
        click.echo({text!r})
"""


@pytest.fixture(autouse=True)
def _no_plugin_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("HEADWATER_LOAD_PLUGINS", raising=False)
    monkeypatch.delenv("HEADWATER_TRACE_PLUGINS", raising=False)
    get_plugin_manager.cache_clear()  # main() uses the process-wide manager
    yield
    get_plugin_manager.cache_clear()


@pytest.fixture
def install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Install]:
    with installing(tmp_path, monkeypatch) as install:
        yield install


def run_plugins() -> tuple[int, list[dict[str, Any]]]:
    result = CliRunner().invoke(cli, ["plugins"])
    assert result.exception is None or isinstance(result.exception, SystemExit)
    return result.exit_code, json.loads(result.stdout)


def by_name(rows: list[dict[str, Any]]) -> dict[str | None, dict[str, Any]]:
    return {row["name"]: row for row in rows}


# -- headwater plugins ---------------------------------------------------------------------


def test_plugins_prints_json_rows(install: Install, monkeypatch: pytest.MonkeyPatch) -> None:
    install("headwater-hello", {"hello": "hw_hello"}, {"hw_hello.py": HELLO}, version="0.2.0")
    monkeypatch.setenv("HEADWATER_LOAD_PLUGINS", "hello")
    code, rows = run_plugins()
    assert code == 0
    assert all(set(row) == ROW_KEYS for row in rows)
    assert [row["name"] for row in rows] == ["headwater.checkpointers", "headwater.cli", "hello"]
    assert by_name(rows)["hello"] == {
        "name": "hello",
        "distribution": "headwater-hello",
        "version": "0.2.0",
        "module": "hw_hello",
        "hooks": ["headwater_cli_commands", "headwater_stream_modes"],
        "error": None,
    }
    core = by_name(rows)["headwater.cli"]
    assert core["distribution"] == "headwater-core"
    assert core["version"] == importlib.metadata.version("headwater-core")
    assert core["hooks"] == ["headwater_cli_commands"]


def test_plugins_reports_a_misspelled_hook_in_the_plugins_row(
    install: Install, monkeypatch: pytest.MonkeyPatch
) -> None:
    typo = "import headwater\n\n\n@headwater.hookimpl\ndef headwater_sink():\n    return {}\n"
    install("headwater-typo", {"typo": "hw_typo"}, {"hw_typo.py": typo})
    monkeypatch.setenv("HEADWATER_LOAD_PLUGINS", "typo")
    code, rows = run_plugins()
    assert code == 1
    error = by_name(rows)["typo"]["error"]
    assert "unknown hook 'headwater_sink'" in error
    assert "Did you mean 'headwater_sinks'?" in error
    assert by_name(rows)["headwater.cli"]["error"] is None


def test_plugins_reports_registration_conflicts(
    install: Install, monkeypatch: pytest.MonkeyPatch
) -> None:
    install("headwater-hello", {"hello": "hw_hello"}, {"hw_hello.py": HELLO})
    other = HELLO.replace("def hello(name)", "def hello2(name)")  # same stream mode only
    install("headwater-hello2", {"hello2": "hw_hello2"}, {"hw_hello2.py": other})
    monkeypatch.setenv("HEADWATER_LOAD_PLUGINS", "hello,hello2")
    code, rows = run_plugins()
    assert code == 1
    assert by_name(rows)["hello"]["error"] is None
    assert by_name(rows)["hello2"]["error"].startswith(
        "Stream mode 'hello' is registered by both plugin 'hello' (distribution "
        "headwater-hello 0.1.0) and plugin 'hello2' (distribution headwater-hello2 0.1.0)."
    )


def test_plugins_command_exits_1_and_lists_a_plugin_that_failed_to_load(
    tmp_path: Path,
) -> None:
    broken = write_plugin_distribution(
        tmp_path / "broken",
        "headwater-broken",
        entry_points={"broken": "hw_broken"},
        modules={"hw_broken.py": BROKEN},
        version="0.3.1",
    )
    hello = write_plugin_distribution(
        tmp_path / "hello",
        "headwater-hello",
        entry_points={"hello": "hw_hello"},
        modules={"hw_hello.py": HELLO},
    )
    assert HEADWATER.exists()
    done = subprocess.run(
        [str(HEADWATER), "plugins"],
        env=plugin_env(broken, hello, load="broken,hello"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    rows = by_name(json.loads(done.stdout))
    assert rows["hello"]["error"] is None
    failed = rows["broken"]
    assert failed["distribution"] == "headwater-broken"
    assert failed["version"] == "0.3.1"
    assert failed["module"] is None and failed["hooks"] == []
    assert failed["error"].startswith(
        "Plugin 'broken' (entry point broken = hw_broken, from distribution headwater-broken "
        "0.3.1) failed to load: ModuleNotFoundError: No module named "
        "'hw_sdk_that_is_not_installed'."
    )


# -- commands added by plugins -------------------------------------------------------------


def test_hook_headwater_cli_commands() -> None:
    class Greeter:
        @headwater.hookimpl
        def headwater_cli_commands(self, cli: click.Group) -> None:
            assert isinstance(cli, click.Group)

            @cli.command()
            @click.argument("who")
            def greet(who: str) -> None:
                """Greet someone."""
                click.echo(f"hi {who}")

    group = build_cli(create_plugin_manager(autoload=False, plugins=[Greeter()]))
    assert {"plugins", "demo", "greet"} <= set(group.commands)
    runner = CliRunner()
    result = runner.invoke(group, ["greet", "river"])
    assert (result.exit_code, result.stdout) == (0, "hi river\n")
    assert "Greet someone." in runner.invoke(group, ["--help"]).stdout


def test_demo_without_the_server_plugin_says_what_to_install() -> None:
    group = build_cli(create_plugin_manager(autoload=False))
    result = CliRunner().invoke(group, ["demo"])
    assert result.exit_code == 1
    assert "pip install headwater-server" in result.output


def test_a_plugin_command_replaces_a_built_in_fallback_of_the_same_name() -> None:
    class RealDemo:
        @headwater.hookimpl
        def headwater_cli_commands(self, cli: click.Group) -> None:
            @cli.command()
            def demo() -> None:
                click.echo("the real demo")

    group = build_cli(create_plugin_manager(autoload=False, plugins=[RealDemo()]))
    result = CliRunner().invoke(group, ["demo"])
    assert (result.exit_code, result.output) == (0, "the real demo\n")


def test_plugin_command_from_an_installed_distribution(tmp_path: Path) -> None:
    root = write_plugin_distribution(
        tmp_path,
        "headwater-hello",
        entry_points={"hello": "hw_hello"},
        modules={"hw_hello.py": HELLO},
    )
    done = subprocess.run(
        [str(HEADWATER), "hello", "--name", "sea"],
        env=plugin_env(root, load="hello"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stdout) == (0, "hello sea from a plugin\n"), done.stderr


def test_two_plugins_adding_one_command_conflict(
    install: Install, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    install("headwater-x1", {"x1": "hw_x1"}, {"hw_x1.py": command_plugin("go", "one")})
    install("headwater-x2", {"x2": "hw_x2"}, {"hw_x2.py": command_plugin("go", "two")})
    monkeypatch.setenv("HEADWATER_LOAD_PLUGINS", "x1,x2")
    with pytest.raises(PluginConflictError) as raised:
        build_cli(create_plugin_manager())
    assert str(raised.value).startswith(
        "CLI command 'go' is added by both plugin 'x1' (distribution headwater-x1 0.1.0) and "
        "plugin 'x2' (distribution headwater-x2 0.1.0)."
    )
    with pytest.raises(SystemExit) as exited:
        main(["go"])
    assert exited.value.code == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert (
        err == f"headwater: {raised.value} Run `headwater plugins` to see every plugin's status.\n"
    )

    code, rows = run_plugins()  # `headwater plugins` still works, and shows the conflict
    assert code == 1
    assert "CLI command 'go' is added by both" in by_name(rows)["x2"]["error"]


def test_plugin_command_may_not_replace_a_built_in_one() -> None:
    class Usurper:
        @headwater.hookimpl
        def headwater_cli_commands(self, cli: click.Group) -> None:
            @cli.command("plugins")
            def plugins() -> None:
                pass

    pm = create_plugin_manager(autoload=False, plugins=[Usurper()])
    with pytest.raises(PluginConflictError, match=r"'plugins' is added by both headwater \(built"):
        build_cli(pm)


def test_cli_hook_raising_names_the_plugin() -> None:
    class Broken:
        @headwater.hookimpl
        def headwater_cli_commands(self, cli: click.Group) -> None:
            raise RuntimeError("no click today")

    pm = create_plugin_manager(autoload=False, plugins=[Broken()])
    with pytest.raises(
        PluginLoadError, match=r"unnamed plugin \(an instance of .*\.Broken\) failed"
    ):
        build_cli(pm)


def test_other_commands_fail_with_one_line_error_naming_the_broken_plugin(
    tmp_path: Path,
) -> None:
    broken = write_plugin_distribution(
        tmp_path,
        "headwater-broken",
        entry_points={"broken": "hw_broken"},
        modules={"hw_broken.py": BROKEN},
        version="0.3.1",
    )
    done = subprocess.run(
        [str(HEADWATER), "demo", "--help"],
        env=plugin_env(broken, load="broken"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    assert line.startswith(
        "headwater: Plugin 'broken' (entry point broken = hw_broken, from distribution "
        "headwater-broken 0.3.1) failed to load: ModuleNotFoundError"
    )
    assert line.endswith("Run `headwater plugins` to see every plugin's status.")


def test_main_runs_built_in_and_plugin_commands(
    install: Install, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    install("headwater-hello", {"hello": "hw_hello"}, {"hw_hello.py": HELLO})
    monkeypatch.setenv("HEADWATER_LOAD_PLUGINS", "hello")
    with pytest.raises(SystemExit) as exited:
        main(["hello"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == "hello world from a plugin\n"
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in ("demo", "hello", "plugins"))


def test_version_option() -> None:
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.startswith("headwater, version ")
