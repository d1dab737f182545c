"""headwater-redis against the Redis on 127.0.0.1:6379 (asyncio only: redis-py's client)."""

from __future__ import annotations

import anyio
import pytest
import redis
from headwater_redis import RedisBroker

from headwater.broker import Broker, BrokerError, broker_from_url
from headwater.testing.conformance import BrokerConformance
from headwater.testing.services import service_url

DEFAULT_URL = "redis://127.0.0.1:6379/0"


def _ping(url: str) -> None:
    redis.Redis.from_url(url, socket_connect_timeout=3).ping()


@pytest.fixture(scope="module")
def redis_url() -> str:
    return service_url("HEADWATER_TEST_REDIS_URL", DEFAULT_URL, _ping)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # redis-py's async client is asyncio-only


class TestRedisBroker(BrokerConformance):
    @pytest.fixture(autouse=True)
    def _url(self, redis_url: str) -> None:
        self.url = redis_url

    async def make_broker(self, retention: int) -> Broker:
        return RedisBroker(self.url, maxlen=retention, ttl=60)


def test_scheme_is_registered(redis_url: str) -> None:
    assert isinstance(broker_from_url(redis_url), RedisBroker)


def test_unreachable_redis_names_the_url_quickly() -> None:
    broker = RedisBroker("redis://:hunter2@127.0.0.1:1/0")

    async def main() -> None:
        with anyio.fail_after(10):
            await broker.ping()

    with pytest.raises(BrokerError) as caught:
        anyio.run(main)
    assert "127.0.0.1:1" in str(caught.value) and "hunter2" not in str(caught.value)


def test_trio_gets_a_clear_error() -> None:
    broker = RedisBroker(DEFAULT_URL)
    with pytest.raises(BrokerError, match="needs asyncio"):
        anyio.run(broker.publish, "r", "e", "{}", backend="trio")


@pytest.mark.anyio
async def test_a_read_blocking_past_the_socket_timeout_returns_empty_not_an_error(
    redis_url: str,
) -> None:
    # A client waiting longer than the socket timeout for a run's first event (a queued
    # run under load) used to get "Timeout reading from ..." and a cut stream.
    broker = RedisBroker(redis_url, socket_timeout=1.0)
    try:
        with anyio.fail_after(5):
            assert await broker.read("never-written-run", None, block=3.0) == []
        entry = await broker.publish("later-run", "on_chain_start", "{}")
        assert [e.id for e in await broker.read("later-run", None, block=3.0)] == [entry]
    finally:
        await broker.delete("later-run")
        await broker.aclose()


def test_a_bad_socket_timeout_is_refused() -> None:
    with pytest.raises(BrokerError, match="socket_timeout must be > 0"):
        RedisBroker(DEFAULT_URL, socket_timeout=0)
