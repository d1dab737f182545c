"""The memory: broker passes the public broker conformance suite."""

from __future__ import annotations

import pytest

from headwater.broker import Broker, BrokerError, MemoryBroker, broker_from_url
from headwater.testing.conformance import BrokerConformance


class TestMemoryBroker(BrokerConformance):
    async def make_broker(self, retention: int) -> Broker:
        return MemoryBroker(retention=retention)


def test_broker_urls() -> None:
    assert isinstance(broker_from_url("memory:"), MemoryBroker)
    with pytest.raises(BrokerError, match="Did you mean 'memory'"):
        broker_from_url("memroy:")
