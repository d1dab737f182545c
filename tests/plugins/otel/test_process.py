"""Tracing in fresh processes: ``headwater run`` exporting to a real receiver (the spans
leave before the process exits, and a dead collector neither fails nor holds it), and the
plugin working with no other headwater plugin loaded."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.fixtures.otlp import OtlpReceiver, SpanTree
from tests.plugins.otel._graphs import RAG_TREE
from tests.plugins.otel.conftest import OTEL_ENV
from tests.plugins.otel.test_config import closed_port_url

ROOT = Path(__file__).resolve().parents[3]
PLUGIN = ROOT / "plugins" / "otel"
HEADWATER = str(Path(sys.executable).with_name("headwater"))
QUESTION = json.dumps({"messages": ["What is 2 plus 3?"]})


def env_with(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in OTEL_ENV}
    env.pop("HEADWATER_LOAD_PLUGINS", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def test_headwater_run_exports_the_span_tree_before_it_exits(
    receiver: tuple[OtlpReceiver, str],
) -> None:
    got, url = receiver
    done = subprocess.run(
        [HEADWATER, "run", "tests.plugins.otel._graphs:build_rag", "--input", QUESTION],
        env=env_with(OTEL_EXPORTER_OTLP_ENDPOINT=url, OTEL_SERVICE_NAME="cli"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "The sum is 5." in done.stdout
    # The exporter had its answer before the process ended: everything is here already.
    tree = SpanTree(got.spans)
    assert tree.render() == RAG_TREE
    assert {s.resource["service.name"] for s in tree.spans} == {"cli"}
    assert len({s.trace_id for s in tree.spans}) == 1


def test_headwater_run_with_the_collector_down_still_succeeds_and_exits() -> None:
    done = subprocess.run(
        [HEADWATER, "run", "tests.plugins.otel._graphs:build_rag", "--input", QUESTION],
        env=env_with(OTEL_EXPORTER_OTLP_ENDPOINT=closed_port_url(), OTEL_BSP_EXPORT_TIMEOUT="1000"),
        capture_output=True,
        text=True,
        timeout=120,  # a guard against a hang, not a timing assertion
    )
    assert done.returncode == 0, done.stderr
    assert "The sum is 5." in done.stdout


ALONE = """
import json, sys
import headwater
from tests.plugins.otel._graphs import build_rag
names = sorted(name for name, _ in headwater.get_plugin_manager().list_name_plugin())
out = build_rag().invoke({"messages": ["What is 2 plus 3?"]}, {"sinks": ["otel"]})
import headwater_otel
headwater_otel.disable()
loaded = sorted(m for m in sys.modules if m.startswith("headwater_") and "." not in m)
print(json.dumps({"plugins": names, "loaded": loaded, "answer": out["messages"][-1].content}))
"""


def test_the_plugin_works_with_no_other_headwater_plugin(
    receiver: tuple[OtlpReceiver, str],
) -> None:
    got, url = receiver
    done = subprocess.run(
        [sys.executable, "-c", ALONE],
        env=env_with(HEADWATER_LOAD_PLUGINS="otel", OTEL_EXPORTER_OTLP_ENDPOINT=url),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["answer"] == "The sum is 5."
    assert report["loaded"] == ["headwater_otel"]
    assert any("otel" in name for name in report["plugins"]), report
    assert SpanTree(got.spans).render() == RAG_TREE


def test_the_console_exporter_prints_spans() -> None:
    done = subprocess.run(
        [sys.executable, "-c", ALONE],
        env=env_with(HEADWATER_LOAD_PLUGINS="otel", OTEL_TRACES_EXPORTER="console"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert '"name": "execute_tool add"' in done.stdout


def _imported_top_level_modules(package: Path) -> set[str]:
    found: set[str] = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", ["headwater_otel"])
def test_the_distribution_declares_every_package_it_imports(package: str) -> None:
    declared = tomllib.loads((PLUGIN / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {d.split(">")[0].split("=")[0].split("[")[0].strip() for d in declared}
    provides = {
        "headwater": "headwater-core",
        "opentelemetry": "opentelemetry-api",
        package: None,  # itself
    }
    stdlib = set(sys.stdlib_module_names)
    for module in sorted(_imported_top_level_modules(PLUGIN / package)):
        if module in stdlib:
            continue
        assert module in provides, f"{package} imports {module!r}: declare its distribution"
        needed = provides[module]
        assert needed is None or needed in names, f"{module!r} needs {needed} in {names}"
    # The SDK and the exporter are imported under the same top-level package: declared too.
    assert {"opentelemetry-sdk", "opentelemetry-exporter-otlp-proto-http"} <= names
