"""``headwater serve`` and ``headwater worker`` freeze their start-up objects before serving,
so that no later garbage collection rescans them while tokens stream (docs/performance.md,
"Garbage collection")."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import headwater_server
import pytest
from click.testing import CliRunner
from headwater_server import _cli

from headwater import create_plugin_manager
from headwater._cli import build_cli
from headwater.testing.services import service_url

GRAPH = "headwater_server._demo:build_demo"


@pytest.fixture
def frozen_counts() -> Iterator[list[int]]:
    """What ``gc.get_freeze_count()`` was when the command started serving; unfrozen after."""
    seen: list[int] = []
    gc.unfreeze()
    try:
        yield seen
    finally:
        gc.unfreeze()


def _cli_group() -> Any:
    return build_cli(create_plugin_manager(autoload=False, plugins=[headwater_server]))


def test_serve_freezes_the_start_up_objects_right_before_serving(
    monkeypatch: pytest.MonkeyPatch, frozen_counts: list[int]
) -> None:
    class Server:
        def __init__(self, config: Any, engine: Any) -> None:
            self.app = config.app

        def run(self, sockets: list[Any]) -> None:
            frozen_counts.append(gc.get_freeze_count())
            for sock in sockets:
                sock.close()

    monkeypatch.setattr(_cli, "_graceful_server", Server)
    assert gc.get_freeze_count() == 0
    result = CliRunner().invoke(_cli_group(), ["serve", GRAPH, "--port", "0"])
    assert result.exit_code == 0, result.output
    assert "serving" in result.output
    # the whole start-up heap (tens of thousands of objects), not a handful
    assert frozen_counts and frozen_counts[0] > 10_000


def test_worker_freezes_the_start_up_objects_right_before_working(
    monkeypatch: pytest.MonkeyPatch, frozen_counts: list[int]
) -> None:
    pg = service_url(
        "HEADWATER_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test", _pg_ping
    )
    redis = service_url("HEADWATER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0", _redis_ping)

    def run(*args: Any, **kwargs: Any) -> None:
        frozen_counts.append(gc.get_freeze_count())

    monkeypatch.setattr(_cli.anyio, "run", run)
    result = CliRunner().invoke(_cli_group(), ["worker", GRAPH, "--queue", pg, "--broker", redis])
    assert result.exit_code == 0, result.output
    assert frozen_counts and frozen_counts[0] > 10_000


def _pg_ping(url: str) -> None:
    import psycopg

    psycopg.connect(url, connect_timeout=3).close()


def _redis_ping(url: str) -> None:
    import redis

    redis.Redis.from_url(url, socket_timeout=3).ping()
