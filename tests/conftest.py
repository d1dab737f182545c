"""Shared test configuration.

- Every async test runs on asyncio and on trio.
- PostgreSQL tests get a database of their own for the session: ``pytest_configure`` creates a
  throwaway database on the server named by ``HEADWATER_TEST_POSTGRES_URL`` (loopback ``test``
  by default), points the variable at it (subprocesses inherit it) and drops it at the end. A
  suite never sees tables left by another checkout, branch or run — such as a newer headwater
  schema version, which the checkpointer rightly refuses. If the server cannot be reached or the
  role may not create databases, the variable is left alone and the tests find (or miss) the
  service as before.
"""

from __future__ import annotations

import os
import secrets
from urllib.parse import urlsplit, urlunsplit

import pytest

PG_ENV = "HEADWATER_TEST_POSTGRES_URL"
PG_DEFAULT = "postgresql://postgres@127.0.0.1:5432/test"
_PREFIX = "hw_test_"
_made: list[tuple[str, str, str | None]] = []  # (admin url, database, value before)


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Run each ``@pytest.mark.anyio`` test once per backend."""
    return str(request.param)


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


def _drop_stale(db: object, host: str | None) -> None:
    """Drop throwaway databases of earlier runs on this host whose process is gone."""
    if host not in {"127.0.0.1", "localhost", "::1", None, ""}:
        return
    rows = db.execute(  # type: ignore[attr-defined]
        "SELECT datname FROM pg_database WHERE datname LIKE %s", (_PREFIX + "%",)
    ).fetchall()
    for (name,) in rows:
        pid = name[len(_PREFIX) :].split("_", 1)[0]
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            db.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # type: ignore[attr-defined]


def pytest_configure(config: pytest.Config) -> None:
    """Give this session a fresh PostgreSQL database (see the module docstring)."""
    try:
        import psycopg
    except ImportError:
        return
    base = os.environ.get(PG_ENV, PG_DEFAULT)
    name = f"{_PREFIX}{os.getpid()}_{secrets.token_hex(4)}"
    try:
        with psycopg.connect(base, autocommit=True, connect_timeout=3) as db:
            _drop_stale(db, urlsplit(base).hostname)
            db.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error:
        return
    _made.append((base, name, os.environ.get(PG_ENV)))
    os.environ[PG_ENV] = _with_database(base, name)


def pytest_unconfigure(config: pytest.Config) -> None:
    """Drop the session's database and give the variable back its value."""
    import psycopg

    while _made:
        base, name, before = _made.pop()
        if before is None:
            os.environ.pop(PG_ENV, None)
        else:
            os.environ[PG_ENV] = before
        try:
            with psycopg.connect(base, autocommit=True, connect_timeout=3) as db:
                db.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        except psycopg.Error:
            pass  # dropped with the next session's stale sweep
