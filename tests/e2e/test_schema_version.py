"""A worker or server started against a database whose headwater schema is newer than the
installed headwater-postgres refuses to start, with an error naming the version; it never
runs jobs against tables it does not understand."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import anyio
import psycopg
import pytest
import redis
from headwater_postgres import SCHEMA_VERSION, PostgresCheckpointer

from headwater.testing.services import service_url

PG = "postgresql://postgres@127.0.0.1:5432/test"
REDIS = "redis://127.0.0.1:6379/0"

GRAPH = textwrap.dedent(
    """
    from typing import TypedDict
    from headwater import END, START, StateGraph

    class State(TypedDict):
        n: int

    graph = StateGraph(State)
    graph.add_node("inc", lambda s: {"n": s["n"] + 1})
    graph.add_edge(START, "inc")
    graph.add_edge("inc", END)
    """
)


def _pg_ping(url: str) -> None:
    with psycopg.connect(url, connect_timeout=3) as db:
        db.execute("SELECT 1")


@pytest.fixture
def newer_schema_url() -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a fresh schema, migrated by this headwater and
    then marked as written by a newer one."""
    base = service_url("HEADWATER_TEST_POSTGRES_URL", PG, _pg_ping)
    schema = f"hw_future_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(base, autocommit=True) as db:
        db.execute(f'CREATE SCHEMA "{schema}"')
    sep = "&" if "?" in base else "?"
    url = f"{base}{sep}options={quote(f'-csearch_path={schema}')}"
    try:
        anyio.run(PostgresCheckpointer(url).aclose)
        with psycopg.connect(url, autocommit=True) as db:
            db.execute("INSERT INTO headwater_schema (version) VALUES (%s)", (SCHEMA_VERSION + 97,))
        yield url
    finally:
        with psycopg.connect(base, autocommit=True) as db:
            db.execute(f'DROP SCHEMA "{schema}" CASCADE')


def _headwater(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": f"{cwd}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run(
        [sys.executable, "-m", "headwater", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("with_checkpointer", [False, True])
def test_worker_refuses_a_newer_schema(
    newer_schema_url: str, tmp_path: Path, with_checkpointer: bool
) -> None:
    rd = service_url("HEADWATER_TEST_REDIS_URL", REDIS, lambda u: redis.Redis.from_url(u).ping())
    (tmp_path / "future_graph.py").write_text(GRAPH)
    args = ["worker", "future_graph:graph", "--queue", newer_schema_url, "--broker", rd]
    if with_checkpointer:
        args += ["--checkpointer", newer_schema_url]
    done = _headwater(args, tmp_path)
    assert done.returncode != 0, done.stdout
    assert f"schema version {SCHEMA_VERSION + 97}" in done.stderr
    assert f"newer than this headwater-postgres ({SCHEMA_VERSION})" in done.stderr
    assert "Traceback" not in done.stderr, done.stderr


def test_server_refuses_a_newer_schema(newer_schema_url: str, tmp_path: Path) -> None:
    (tmp_path / "future_graph.py").write_text(GRAPH)
    args = ["serve", "future_graph:graph", "--checkpointer", newer_schema_url, "--port", "1"]
    done = _headwater(args, tmp_path)
    assert done.returncode != 0, done.stdout
    assert f"schema version {SCHEMA_VERSION + 97}" in done.stderr
    assert "Traceback" not in done.stderr, done.stderr
