"""Shared test configuration: every async test runs on asyncio and on trio."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Run each ``@pytest.mark.anyio`` test once per backend."""
    return str(request.param)


def require_services() -> bool:
    """Whether a missing service must fail the test instead of skipping it (CI)."""
    return os.environ.get("HEADWATER_REQUIRE_SERVICES") == "1"
