"""Finding the services (PostgreSQL, Redis ...) a test needs, the same way in CI and locally.

Example::

    from headwater.testing.services import service_url

    @pytest.fixture(scope="module")
    def pg_url():
        default = "postgresql://postgres@127.0.0.1/test"
        return service_url("HEADWATER_TEST_POSTGRES_URL", default, ping)
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

__all__ = ["REQUIRE_ENV", "require_services", "service_url"]

REQUIRE_ENV = "HEADWATER_REQUIRE_SERVICES"
"""Set to ``1`` (as ``.ci/run`` does) to fail instead of skip when a service is missing."""


def require_services() -> bool:
    """Whether a missing service must fail the test instead of skipping it (CI).

    Example::

        if require_services(): ...
    """
    return os.environ.get(REQUIRE_ENV) == "1"


def service_url(env_var: str, default: str, reachable: Callable[[str], object]) -> str:
    """The URL of a service a test needs; skip (or fail in CI) if it is unreachable.

    The URL comes from ``env_var`` (loopback ``default`` otherwise); ``reachable(url)``
    must raise if the service cannot be used. Under ``HEADWATER_REQUIRE_SERVICES=1`` an
    unreachable service fails the test instead of skipping it.

    Example::

        url = service_url("HEADWATER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0", ping_redis)
    """
    url = os.environ.get(env_var, default)
    try:
        reachable(url)
    except Exception as exc:
        reason = f"{env_var}={url} is unreachable ({type(exc).__name__}: {exc})"
        if require_services():
            pytest.fail(f"{reason}; {REQUIRE_ENV}=1 requires it")
        pytest.skip(reason)
    return url
