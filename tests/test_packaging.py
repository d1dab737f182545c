"""Every distribution works installed alone: core by itself, each plugin with what it declares.

The workspace installs everything together, which hides a distribution that imports (or
needs at run time) something it does not declare. Here each one is built as a wheel from
this checkout and installed into a fresh virtual environment with only its declared
dependencies: the headwater distributions it names, followed through their metadata, and
their third-party requirements from the package index. In that environment a script
imports every public module (no ``_`` in its dotted path) and runs a one-node graph
through the distribution: a stream mode, a checkpointer, a broker, the server's HTTP API.

``uv`` makes the environments (``uv venv`` / ``uv pip install``, pip-compatible and fast
with its cache); without it, ``venv`` and pip do the same, slower.
"""

from __future__ import annotations

import email.parser
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from headwater.testing.services import service_url

ROOT = Path(__file__).resolve().parents[1]

NEEDS_EXTRA = {
    "headwater.testing.conformance": "testing",
    "headwater.testing.pytest_plugin": "testing",
    "headwater.testing.services": "testing",
    "headwater.testing.strategies": "testing",
}
"""Public modules that need an extra of headwater-core (pytest, hypothesis)."""


def members() -> dict[str, Path]:
    """The workspace's distributions: name -> project directory."""
    workspace = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["uv"]["workspace"]
    found = {}
    for member in workspace["members"]:
        project = tomllib.loads((ROOT / member / "pyproject.toml").read_text())["project"]
        found[project["name"]] = ROOT / member
    return found


MEMBERS = members()


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _uv() -> str | None:
    for candidate in (shutil.which("uv"), ROOT / ".tools" / "uv" / "bin" / "uv"):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    return None


def _run(
    args: list[str | Path], extra_env: dict[str, str] | None = None, **kwargs: object
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(extra_env or {})
    done = subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env=env,
        **kwargs,  # type: ignore[arg-type]
    )
    assert done.returncode == 0, f"{' '.join(map(str, args))}\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One wheel per distribution, built from this checkout: name -> wheel file."""
    out = tmp_path_factory.mktemp("wheels")
    uv = _uv()
    for directory in MEMBERS.values():
        if uv is not None:
            _run([uv, "build", "--wheel", "--quiet", "--out-dir", out, directory], cwd=out)
        else:
            _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", out, directory])
    built = {}
    for wheel in out.glob("*.whl"):
        built[_normal(wheel.name.split("-")[0])] = wheel
    assert set(built) == set(MEMBERS)
    return built


def requirements(wheel: Path, extras: frozenset[str] = frozenset()) -> list[str]:
    """The headwater distributions a wheel's metadata requires (with ``extras``)."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = email.parser.Parser().parsestr(archive.read(name).decode())
    found = []
    for requirement in metadata.get_all("Requires-Dist") or []:
        spec, _, marker = requirement.partition(";")
        extra = re.search(r"extra\s*==\s*['\"]([^'\"]+)['\"]", marker)
        if extra is not None and extra.group(1) not in extras:
            continue
        dist = _normal(re.split(r"[\s\[<>=!~;(]", spec.strip(), maxsplit=1)[0])
        if dist.startswith("headwater-"):
            found.append(dist)
    return found


def closure(wheels: dict[str, Path], name: str, extras: frozenset[str]) -> list[str]:
    """``name`` and every headwater distribution it declares, directly or not."""
    seen = [name]
    todo = list(requirements(wheels[name], extras))
    while todo:
        dist = todo.pop()
        if dist not in seen:
            seen.append(dist)
            todo.extend(requirements(wheels[dist]))
    return seen


def install(wheels: dict[str, Path], root: Path, name: str, extras: str = "") -> Path:
    """A fresh venv with ``name`` (and ``extras``) and only what it declares; its python."""
    venv = root / (name + (f"-{extras}" if extras else ""))
    python = venv / "bin" / "python"
    dists = closure(wheels, name, frozenset(filter(None, extras.split(","))))
    targets = [f"{wheels[d]}[{extras}]" if d == name and extras else str(wheels[d]) for d in dists]
    uv = _uv()
    if uv is not None:
        _run([uv, "venv", "--quiet", "--python", sys.executable, venv], cwd=root)
        _run([uv, "pip", "install", "--quiet", "--python", python, *targets], cwd=root)
    else:
        _run([sys.executable, "-m", "venv", venv], cwd=root)
        _run([python, "-m", "pip", "install", "-q", *targets], cwd=root)
    return python


CHECK = r"""
import importlib, json, os, pkgutil, sys, tempfile
from typing import TypedDict

import anyio
import headwater

package, skip = sys.argv[1], set(json.loads(sys.argv[2]))
imported = []
for info in pkgutil.walk_packages(importlib.import_module(package).__path__, package + "."):
    if any(part.startswith("_") for part in info.name.split(".")) or info.name in skip:
        continue
    importlib.import_module(info.name)
    imported.append(info.name)


class S(TypedDict):
    n: int


def double(state):
    return {"n": state["n"] * 2}


def one_node(**compile_kw):
    graph = headwater.StateGraph(S)
    graph.add_node("double", double)
    graph.add_edge(headwater.START, "double")
    graph.add_edge("double", headwater.END)
    return graph.compile(name="one", **compile_kw)


assert one_node().invoke({"n": 21}) == {"n": 42}
pm = headwater.get_plugin_manager()
loaded = sorted(name for name, plugin in pm.list_name_plugin() if plugin is not None)
assert pm.load_errors == [], pm.load_errors
thread = {"configurable": {"thread_id": "t-" + headwater.runtime.new_id()}}
"""

THROUGH = {
    "headwater-core": """
assert loaded == ["headwater.checkpointers", "headwater.cli"], loaded
app = one_node(checkpointer="memory:")
assert app.invoke({"n": 1}, thread) == {"n": 2} and app.get_state(thread).values == {"n": 2}
""",
    "headwater-streams": """
assert list(one_node().stream({"n": 1}, stream_mode="updates")) == [{"double": {"n": 2}}]

async def events():
    return [e["event"] async for e in one_node().astream_events({"n": 1})]

assert anyio.run(events)[0] == "on_chain_start"
""",
    "headwater-filters": """
filters = pm.registrations("headwater_event_filters")
assert {"include_names", "exclude_types"} <= set(filters), sorted(filters)
assert filters["include_names"](["double"]).any_of == "include"
""",
    "headwater-sqlite": """
path = os.path.join(tempfile.mkdtemp(), "one.db")
app = one_node(checkpointer=f"sqlite:///{path}")
assert app.invoke({"n": 1}, thread) == {"n": 2} and app.get_state(thread).values == {"n": 2}
""",
    "headwater-postgres": """
app = one_node(checkpointer=os.environ["HEADWATER_TEST_POSTGRES_URL"])
assert app.invoke({"n": 1}, thread) == {"n": 2} and app.get_state(thread).values == {"n": 2}
""",
    "headwater-redis": """
from headwater.broker import broker_from_url

async def round_trip():
    broker = broker_from_url(os.environ["HEADWATER_TEST_REDIS_URL"])
    run_id = headwater.runtime.new_id()
    try:
        await broker.publish(run_id, "on_custom_event", '{"n": 1}')
        return [(e.event, e.data) for e in await broker.read(run_id, None, block=1.0)]
    finally:
        await broker.delete(run_id)
        await broker.aclose()

assert anyio.run(round_trip) == [("on_custom_event", '{"n": 1}')]
""",
    "headwater-server": """
from headwater_server import create_app

async def call(app, method, path, body=b""):
    inbox = [{"type": "http.request", "body": body, "more_body": False}]
    sent = []

    async def receive():
        if inbox:
            return inbox.pop(0)
        await anyio.sleep_forever()

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
        "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
        "query_string": b"", "root_path": "", "client": ("127.0.0.1", 1),
        "server": ("test", 80),
        "headers": [(b"host", b"test"), (b"content-type", b"application/json")],
    }
    await app(scope, receive, send)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])

async def serve():
    app = create_app({"one": one_node()})
    async with app.router.lifespan_context(app):
        status, body = await call(app, "POST", "/runs", json.dumps(
            {"graph": "one", "input": {"n": 1}, "stream_mode": "updates"}).encode())
        assert 200 <= status < 300, (status, body)
        run_id = json.loads(body)["run_id"]
        status, body = await call(app, "GET", f"/runs/{run_id}/stream")
        assert status == 200, body
        return body.decode()

stream = anyio.run(serve)
assert '"double"' in stream, stream
""",
    "headwater-otel": """
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
import headwater_otel

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
headwater_otel.enable(provider)
try:
    assert one_node().invoke({"n": 1}) == {"n": 2}
finally:
    headwater_otel.disable()
spans = [span.name for span in exporter.get_finished_spans()]
assert len(spans) >= 2 and any("double" in name for name in spans), spans
""",
    "headwater-openai": """
from headwater.errors import ChatModelError
from headwater.models import init_chat_model

llm = init_chat_model("openai:m", base_url="http://127.0.0.1:9/v1", api_key="x", max_retries=0)
try:
    llm.invoke("hi")
except ChatModelError as exc:
    assert "Could not reach" in str(exc), exc
else:
    raise AssertionError("a closed port answered")
""",
    "headwater-anthropic": """
from headwater.errors import ChatModelError
from headwater.models import init_chat_model

llm = init_chat_model("anthropic:m", base_url="http://127.0.0.1:9", api_key="x", max_retries=0)
try:
    llm.invoke("hi")
except ChatModelError as exc:
    assert "Could not reach" in str(exc), exc
else:
    raise AssertionError("a closed port answered")
""",
}


SERVICES = {
    "headwater-postgres": (
        "HEADWATER_TEST_POSTGRES_URL",
        "postgresql://postgres@127.0.0.1:5432/test",
    ),
    "headwater-redis": ("HEADWATER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"),
}
"""The service a plugin's check runs against: the variable tests read, and its default."""


def _listening(url: str) -> None:
    """Raise unless something accepts connections at the URL's host and port."""
    parts = urlsplit(url)
    socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 0), timeout=2).close()


def _check(
    python: Path,
    package: str,
    through: str,
    skip: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> list[str]:
    """Run CHECK and ``through`` in the venv of ``python``; the public modules imported."""
    script = CHECK + through + "\nprint(json.dumps(imported))"
    done = _run(
        [python, "-c", script, package, json.dumps(sorted(skip))],
        extra_env=env,
        cwd=python.parents[2],
    )
    imported: list[str] = json.loads(done.stdout.splitlines()[-1])
    return imported


def _package(name: str) -> str:
    return "headwater" if name == "headwater-core" else name.replace("-", "_")


PLUGINS = sorted(name for name in MEMBERS if name not in ("headwater", "headwater-core"))


def test_every_member_is_checked() -> None:
    assert set(THROUGH) == {"headwater-core", *PLUGINS}


def test_core_alone(wheels: dict[str, Path], tmp_path: Path) -> None:
    python = install(wheels, tmp_path, "headwater-core")
    imported = _check(python, "headwater", THROUGH["headwater-core"], tuple(NEEDS_EXTRA))
    assert "headwater.runtime" in imported and "headwater.testing.fake" in imported


def test_core_with_its_testing_extra(wheels: dict[str, Path], tmp_path: Path) -> None:
    python = install(wheels, tmp_path, "headwater-core", extras="testing")
    imported = _check(python, "headwater", "")
    assert all(module in imported for module in NEEDS_EXTRA)


@pytest.mark.parametrize("name", PLUGINS)
def test_plugin_with_core(wheels: dict[str, Path], tmp_path: Path, name: str) -> None:
    env = {}
    if name in SERVICES:
        variable, default = SERVICES[name]
        env[variable] = service_url(variable, default, _listening)
    python = install(wheels, tmp_path, name)
    _check(python, _package(name), THROUGH[name], env=env)
