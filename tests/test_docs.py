"""The documentation builds strictly, and every Python block in it runs.

* ``mkdocs build --strict`` must succeed: a broken link, anchor or nav entry fails.
* Every ```` ```python ```` block of a page in ``docs/`` (and of ``README.md``) is executed,
  page by page: the blocks of one page share one namespace and run in order, as they do
  for a reader pasting them into IPython. Blocks with a top-level ``await`` (or
  ``async for``) run on the page's event loop (asyncio); the others run as plain code
  with no loop running, so sync calls like ``app.invoke(...)`` work as in a script. Each
  page is its own test id; a failure's traceback points at the Markdown file's own lines.
* A block opts out only with a ``<!-- docs: no-run -->`` line right above it, and only
  when it cannot run offline (it configures a real provider). Such blocks must still
  parse, and there may be at most :data:`MAX_NO_RUN` of them in all. Python shown in a
  ```` ```text ```` block (which would dodge both rules) fails the suite too.
* A page that needs a service declares it with ``<!-- docs: services postgres redis -->``;
  the service is found as in the rest of the suite (``HEADWATER_TEST_POSTGRES_URL``,
  ``HEADWATER_TEST_REDIS_URL``): skipped when missing, failed under
  ``HEADWATER_REQUIRE_SERVICES=1``. Its URL is given to the page as ``$DATABASE_URL`` /
  ``$REDIS_URL``.
* Reference pages list what the code defines: every public event kind on the events
  page, every exception of ``headwater.errors`` as a heading on the errors page.
* A shell block marked ``<!-- docs: install -->`` (the quickstart's install steps) runs as
  written, from the checkout's top directory, with a fresh ``$HOME``: it must make a fresh
  virtual environment in which ``headwater plugins`` lists every standard plugin. pip's
  and uv's download caches are kept, so only the first run on a machine is slow.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fixtures.markdown import NO_RUN, Block, fenced_blocks

import headwater.errors
import headwater.events
from headwater.testing.services import service_url

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
EXAMPLE_PLUGIN = DOCS / "plugins" / "example"  # a real package: its files are sources
PYTHON_INFO = frozenset({"python", "py", "python3"})
MAX_NO_RUN = 6
"""Blocks that only configure a real provider (an API key, a server URL) may opt out."""
BLOCK_TIMEOUT = 60.0
_MODULE = "headwater_docs_page"

_SERVICES = re.compile(r"<!--\s*docs:\s*services\s+(?P<names>[a-z ,]+?)\s*-->")


def pages() -> list[Path]:
    found = [
        p for p in sorted(DOCS.rglob("*.md")) if EXAMPLE_PLUGIN not in p.parents and p.is_file()
    ]
    return [ROOT / "README.md", *found]


def python_blocks(path: Path) -> list[Block]:
    return [b for b in fenced_blocks(path) if b.info.split(" ")[0].lower() in PYTHON_INFO]


def _page_id(path: Path) -> str:
    return str(path.relative_to(ROOT))


# -- the build ---------------------------------------------------------------------------


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    mkdocs = Path(sys.executable).with_name("mkdocs")
    command = [str(mkdocs)] if mkdocs.exists() else [sys.executable, "-m", "mkdocs"]
    result = subprocess.run(
        [*command, "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{output}"
    assert (tmp_path / "site" / "index.html").exists(), output


# -- running the blocks ------------------------------------------------------------------


def _services(path: Path) -> dict[str, str]:
    """Resolve the services a page declares; skip (or fail in CI) when one is missing."""
    text = path.read_text(encoding="utf-8")
    env: dict[str, str] = {}
    for match in _SERVICES.finditer(text):
        for name in re.split(r"[ ,]+", match["names"].strip()):
            if name == "postgres":
                url = service_url(
                    "HEADWATER_TEST_POSTGRES_URL",
                    "postgresql://postgres@127.0.0.1:5432/test",
                    _ping_postgres,
                )
                env["DATABASE_URL"] = url
            elif name == "redis":
                url = service_url(
                    "HEADWATER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0", _ping_redis
                )
                env["REDIS_URL"] = url
            else:
                raise AssertionError(f"{path.relative_to(ROOT)}: unknown service {name!r}")
    return env


def _ping_postgres(url: str) -> None:
    import psycopg

    with psycopg.connect(url, connect_timeout=3) as db:
        db.execute("SELECT 1")


def _ping_redis(url: str) -> None:
    import redis

    redis.Redis.from_url(url, socket_connect_timeout=3).ping()


def _run_blocks(blocks: list[Block], namespace: dict[str, Any]) -> None:
    """Run blocks in order in one namespace, like a REPL with top-level ``await``.

    A block that awaits at top level runs on the page's event loop (one loop for the
    whole page); any other block runs as plain code with no loop running, so that sync
    calls such as ``app.invoke(...)`` work as they do in a script.
    """
    with asyncio.Runner() as runner:
        for block in blocks:
            # Pad with blank lines so tracebacks point at the Markdown file's own lines.
            source = "\n" * (block.line - 1) + block.code
            try:
                code = compile(
                    source,
                    str(block.path),
                    "exec",
                    flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT,
                    dont_inherit=True,  # not this file's `from __future__ import annotations`
                )
            except SyntaxError as exc:
                raise AssertionError(f"{block.where}: the block does not parse: {exc}") from exc
            if code.co_flags & inspect.CO_COROUTINE:
                runner.run(_awaited(eval(code, namespace), block))
            else:
                exec(code, namespace)


async def _awaited(coroutine: Any, block: Block) -> None:
    try:
        async with asyncio.timeout(BLOCK_TIMEOUT):
            await coroutine
    except TimeoutError as exc:
        raise AssertionError(f"{block.where}: the block ran for over {BLOCK_TIMEOUT} s") from exc


# Pages that are prose and shell commands only (performance.md's numbers come from
# benchmarks/, deploy.md's commands run in tests/e2e). Every other page has code that runs.
PROSE_ONLY = {"docs/deploy.md", "docs/performance.md"}


def _runnable_pages() -> list[Path]:
    return [p for p in pages() if any(b.run for b in python_blocks(p))]


def test_only_the_prose_pages_have_no_code_to_run() -> None:
    without = {_page_id(p) for p in pages()} - {_page_id(p) for p in _runnable_pages()}
    assert without == PROSE_ONLY


@pytest.mark.parametrize("page", _runnable_pages(), ids=_page_id)
def test_code_blocks_run(
    page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    blocks = python_blocks(page)
    runnable = [b for b in blocks if b.run]
    for name, value in _services(page).items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)  # files a page writes (sqlite:///app.db …) land here
    saved_environ = dict(os.environ)
    # A real module, so that type hints of classes defined on the page resolve.
    module = types.ModuleType(_MODULE)
    module.__file__ = str(page)
    monkeypatch.setitem(sys.modules, _MODULE, module)
    namespace = module.__dict__

    try:
        _run_blocks(runnable, namespace)
    finally:
        os.environ.clear()
        os.environ.update(saved_environ)


def test_no_run_blocks_are_few_and_parse() -> None:
    skipped = [b for page in pages() for b in python_blocks(page) if not b.run]
    for block in skipped:
        try:
            ast.parse(block.code)
        except SyntaxError as exc:
            raise AssertionError(f"{block.where}: a no-run block must still parse: {exc}") from exc
    where = ", ".join(b.where for b in skipped)
    assert len(skipped) <= MAX_NO_RUN, (
        f"{len(skipped)} Python blocks opt out of running ({where}); at most {MAX_NO_RUN} "
        "may, and only to configure a real provider. Make the others runnable offline "
        "(FakeChatModel, memory: checkpointer ...)."
    )


def test_no_python_hides_in_text_blocks() -> None:
    """Python shown as ```` ```text ```` would escape both running and the no-run count."""
    hidden = [
        b.where
        for page in pages()
        for b in fenced_blocks(page)
        if b.info.split(" ")[0].lower() in ("", "text", "plain", "txt")
        and re.match(r"\s*(from \w[\w.]* import |import \w)", b.code)
    ]
    assert not hidden, (
        f"Python in text blocks: {', '.join(hidden)}. Make them ```python blocks that run, "
        f"or, for provider configuration only, mark them {NO_RUN}."
    )


def test_the_harness_finds_blocks_and_markers(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n```python\nx = 1\n```\n\n"
        "<!-- docs: no-run -->\n```python\nclient = Provider(key='...')\n```\n\n"
        "```text\nnot python\n```\n\n"
        "- a list item\n\n    ```python\n    y = x + 1\n    ```\n",
        encoding="utf-8",
    )
    blocks = fenced_blocks(page)
    assert [(b.info, b.line, b.run) for b in blocks] == [
        ("python", 4, True),
        ("python", 9, False),
        ("text", 13, True),
        ("python", 19, True),
    ]
    assert blocks[-1].code == "y = x + 1\n"
    namespace: dict[str, Any] = {}
    _run_blocks([b for b in python_blocks(page) if b.run], namespace)
    assert namespace["y"] == 2

    awaiting = tmp_path / "awaiting.md"
    awaiting.write_text(
        "```python\nimport anyio\n\nasync def two():\n    return 2\n```\n\n"
        "```python\nz = await two()\n```\n\n```python\nassert anyio.run(two) == z\n```\n",
        encoding="utf-8",
    )
    namespace = {}
    _run_blocks(python_blocks(awaiting), namespace)
    assert namespace["z"] == 2


# -- install steps --------------------------------------------------------------------------

STANDARD_PLUGINS = {
    "anthropic",
    "filters",
    "openai",
    "postgres",
    "redis",
    "server",
    "sqlite",
    "streams",
}


def _install_blocks() -> list[Block]:
    return [b for page in pages() for b in fenced_blocks(page) if b.install]


def test_the_quickstart_shows_install_steps_for_pip_and_for_uv() -> None:
    blocks = [b for b in _install_blocks() if b.path == DOCS / "quickstart.md"]
    assert [b.info for b in blocks] == ["bash", "bash"]
    assert "\npip install ./core ./plugins/* ." in "\n" + blocks[0].code
    assert "\nuv pip install ./core ./plugins/* ." in "\n" + blocks[1].code


def _cache_dirs() -> dict[str, str]:
    """pip's and uv's caches as they are for the real user (the blocks get a fresh $HOME)."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return {
        "PIP_CACHE_DIR": os.environ.get("PIP_CACHE_DIR") or str(base / "pip"),
        "UV_CACHE_DIR": os.environ.get("UV_CACHE_DIR") or str(base / "uv"),
    }


@pytest.mark.parametrize("block", _install_blocks(), ids=lambda b: b.where)
def test_install_steps_make_a_working_environment(block: Block, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    dev_bin = str(Path(sys.executable).parent)
    path = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p != dev_bin]
    uv = shutil.which("uv", path=os.pathsep.join(path)) or shutil.which(
        "uv", path=str(ROOT / ".tools" / "uv" / "bin")
    )
    if "uv " in block.code and uv is None:
        pytest.fail("uv is not on PATH: run the suite through ./run test, which provides it")
    if uv is not None:
        path.insert(0, str(Path(uv).parent))
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("VIRTUAL_ENV", "CONDA_PREFIX", "PYTHONPATH", "PYTHONHOME")
        and not k.startswith("HEADWATER_")
    }
    env.update(_cache_dirs(), HOME=str(home), PATH=os.pathsep.join(path))
    script = block.code + 'echo "__headwater__=$(command -v headwater)"\n'
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, (
        f"{block.where} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    )
    where = done.stdout.rsplit("__headwater__=", 1)[1].strip()
    assert Path(where).is_relative_to(home), f"headwater ran from {where}, not the fresh venv"
    found = re.search(r"^\[$.*?^\]$", done.stdout, flags=re.M | re.S)  # the JSON listing
    assert found is not None, done.stdout[-3000:]
    listing = json.loads(found.group())
    assert {p["name"] for p in listing} >= STANDARD_PLUGINS
    assert [p for p in listing if p["error"] is not None] == []


# -- reference pages match the code -----------------------------------------------------


def _headings(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    text = re.sub(r"^(```|~~~).*?^\1", "", text, flags=re.M | re.S)  # no code blocks
    return [m[1].strip() for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, flags=re.M)]


def _names_in(heading: str) -> set[str]:
    return set(re.findall(r"`([^`]+)`", heading)) | {heading}


def _assert_listed(
    page: Path, expected: set[str], what: str, found: Callable[[Path], set[str]]
) -> None:
    assert page.exists(), f"{page.relative_to(ROOT)} is missing; it must list {what}"
    listed = found(page)
    missing = sorted(expected - listed)
    assert not missing, f"{page.relative_to(ROOT)} does not document {what}: {missing}"


def test_events_page_lists_every_event_kind() -> None:
    """Every event kind: the public ones and the bus-internal constants of headwater.events."""
    kinds = set(headwater.events.PUBLIC_KINDS)
    for name in headwater.events.__all__:
        value = getattr(headwater.events, name)
        if isinstance(value, str):
            kinds.add(value)

    def headed(page: Path) -> set[str]:
        return {name for h in _headings(page) for name in _names_in(h)}

    _assert_listed(DOCS / "events.md", kinds, "these event kinds as headings", headed)


def test_errors_page_lists_every_exception() -> None:
    exceptions = set(headwater.errors.__all__)

    def headed(page: Path) -> set[str]:
        return {name for h in _headings(page) for name in _names_in(h)}

    _assert_listed(DOCS / "errors.md", exceptions, "these exceptions as headings", headed)
