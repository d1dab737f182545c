"""Smoke tests of ``benchmarks/``: each script runs with ``--quick`` and reports every
workload. Never a timing assertion: the numbers are for people, not for CI.

The scripts start together (they mostly wait on process start-up and sockets) and
each test waits for its own; the servers they start load only the plugins they use.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from headwater.testing.services import require_services

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"
WORKLOADS = [
    "chain",
    "fanout-200",
    "fanout-1000",
    "fanout-4000",
    "updates",
    "values",
    "events",
    "custom",
    "custom-sync",
    "ainvoke-quiet",
    "tokens-events",
    "tokens-messages-async",
    "tokens-messages-sync",
    "tokens-memory",
    "tokens-otel",
    "tokens-otel-quiet",
    *(f"checkpoint-{kind}-{mode}" for kind in ("memory", "sqlite", "postgres")
      for mode in ("sync", "async")),
]  # fmt: skip
WORKLOADS.insert(WORKLOADS.index("checkpoint-postgres-sync"), "checkpoint-sqlite-full")
SCRIPTS = ("run", "serve", "scaleout", "adapters")


@pytest.fixture(scope="module")
def quick_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Start every script with ``--quick --json PATH``; yield ``{name: (process, PATH)}``."""
    tmp = tmp_path_factory.mktemp("bench")
    env = {**os.environ, "HEADWATER_LOAD_PLUGINS": "streams,filters,sqlite,postgres,server,redis"}
    runs = {}
    for name in SCRIPTS:
        path = tmp / f"{name}.json"
        argv = [sys.executable, str(BENCHMARKS / f"{name}.py"), "--quick", "--json", str(path)]
        if name in ("run", "serve"):
            argv += ["--markdown", str(path.with_suffix(".md"))]
        proc = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        runs[name] = (proc, path)
    try:
        yield runs
    finally:
        for proc, _ in runs.values():
            if proc.poll() is None:
                proc.kill()
            proc.communicate()


def finish(quick_runs: dict[str, Any], name: str) -> tuple[str, dict[str, Any]]:
    """Wait for script ``name``; assert it exited 0; return its output and its JSON."""
    proc, path = quick_runs[name]
    output, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, output
    return output, json.loads(path.read_text())


def rows(output: str) -> list[str]:
    """The first cell of every table row."""
    return [line.split("  ")[0] for line in output.splitlines() if "  " in line]


def test_run_reports_every_workload(quick_runs: dict[str, Any]) -> None:
    output, report = finish(quick_runs, "run")
    assert [r["name"] for r in report["results"] if r["name"] in WORKLOADS] == WORKLOADS
    printed = rows(output)
    for name in WORKLOADS:
        assert name in printed, f"no row for {name}:\n{output}"
    for result in report["results"]:
        if result["note"] == "skipped":  # PostgreSQL unreachable
            assert not require_services(), output
        else:
            assert result["headwater"]["median"] > 0
    markdown = quick_runs["run"][1].with_suffix(".md").read_text(encoding="utf-8").splitlines()
    assert markdown[0].startswith("| workload | unit | headwater |") and markdown[1].startswith(
        "|---"
    )
    assert [line.split(" | ")[0].lstrip("| ") for line in markdown[2:]] == [
        r["name"] for r in report["results"]
    ]


def test_run_only_selects_by_glob_and_prefix() -> None:
    spec = importlib.util.spec_from_file_location("headwater_benchmarks_run", BENCHMARKS / "run.py")
    assert spec is not None and spec.loader is not None
    run = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = run  # dataclasses look their module up while it executes
    sys.path.insert(0, str(BENCHMARKS))  # for its `from _timing import ...`
    try:
        spec.loader.exec_module(run)
    finally:
        sys.path.remove(str(BENCHMARKS))
    assert run.selected(["fanout-*", "checkpoint-sqlite"]) == [
        "fanout-200",
        "fanout-1000",
        "fanout-4000",
        "checkpoint-sqlite-sync",
        "checkpoint-sqlite-async",
        "checkpoint-sqlite-full",
    ]
    with pytest.raises(SystemExit, match="unknown workload"):
        run.selected(["chian"])


def test_profiles_prints_the_cost_and_the_profile_of_a_workload() -> None:
    argv = [sys.executable, str(BENCHMARKS / "profiles.py"), "updates", "--quick", "--top", "5"]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    head, _, profile = done.stdout.partition("\n")
    assert head.startswith("updates: ") and "µs of CPU per node without the profiler" in head
    assert "Ordered by: internal time" in profile and "core/headwater/_scheduler.py" in profile
    wrong = subprocess.run(
        [sys.executable, str(BENCHMARKS / "profiles.py"), "updaets"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert wrong.returncode == 2 and "unknown workload 'updaets'" in wrong.stderr


def test_serve_reports_every_setup_and_level(quick_runs: dict[str, Any]) -> None:
    output, report = finish(quick_runs, "serve")
    setups = {(r["mode"], r["setup"], r["clients"]) for r in report["results"]}
    names = ("headwater", "headwater-compact", "headwater-protocol", "fastapi-spec", "fastapi-bare")
    assert setups == {("instant", setup, clients) for setup in names for clients in (1, 5)} | {
        (mode, setup, 5) for setup in names for mode in ("realistic", "steady")
    }
    assert all(r["failures"] == 0 and r["tokens"] > 0 for r in report["results"])
    assert all(r["server_cpu_s"] >= 0 and "cpu_us_per_token" in r for r in report["results"])
    assert rows(output).count("headwater") == 4
    assert rows(output).count("headwater-protocol") == 4
    assert rows(output).count("headwater-compact") == 4
    steady = [r for r in report["results"] if r["mode"] == "steady"]
    assert all(r["runs"] == 10 and r["tokens"] == 10 * 50 for r in steady)  # two runs each
    assert "server CPU µs/token" in output and "bytes/token" in output
    markdown = quick_runs["serve"][1].with_suffix(".md").read_text(encoding="utf-8").splitlines()
    assert markdown[0].startswith("| setup | mode | clients |") and markdown[1].startswith("|---")
    assert [tuple(line.split(" | ")[:3]) for line in markdown[2:]] == [
        ("| " + r["setup"], r["mode"], str(r["clients"])) for r in report["results"]
    ]
    by_setup = {r["setup"]: r["bytes_per_token"] for r in report["results"] if r["clients"] == 5}
    assert by_setup["headwater-compact"] < by_setup["headwater"]  # the headers, sent once


def test_scaleout_reports_both_setups_or_says_why_not(quick_runs: dict[str, Any]) -> None:
    output, report = finish(quick_runs, "scaleout")
    if report.get("skipped"):
        assert "note: skipping" in output
        assert not require_services(), output
        return
    assert {r["setup"] for r in report["results"]} == {"single serve", "2 serve + 2 workers"}
    assert all(r["failures"] == 0 for r in report["results"])
    printed = rows(output)
    assert "single serve" in printed and "2 serve + 2 workers" in printed


def test_adapters_reports_every_workload(quick_runs: dict[str, Any]) -> None:
    output, report = finish(quick_runs, "adapters")
    names = [f"{p}-{k}" for p in ("openai", "anthropic") for k in ("tokens", "calls")]
    assert [r["name"] for r in report["results"]] == names
    assert all(r["headwater"]["median"] > 0 and r["bare"]["median"] > 0 for r in report["results"])
    printed = rows(output)
    for name in names:
        assert name in printed, f"no row for {name}:\n{output}"
