"""Loading the installed plugins imports no SDK, driver or web framework.

Every process that uses headwater (a script, ``headwater run``, a worker) loads every
installed plugin on first use. The adapters and backends import their heavy dependencies
only when one of their objects is first made; before this, loading the plugins took
2.2 s here, most of it in the anthropic, openai, redis and psycopg packages.
"""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = (
    "openai",
    "anthropic",
    "httpx2",
    "redis",
    "psycopg",
    "psycopg_pool",
    "starlette",
    "uvicorn",
    "opentelemetry",
)

PROBE = f"""
import json, sys
import headwater
pm = headwater.get_plugin_manager()
names = sorted(name for name, _ in pm.list_name_plugin())
print(json.dumps({{"plugins": names, "heavy": [m for m in {HEAVY!r} if m in sys.modules]}}))
"""


def test_loading_every_plugin_imports_no_heavy_dependency() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    report = json.loads(out)
    for plugin in ("openai", "anthropic", "redis", "postgres", "server", "otel"):
        assert any(plugin in name for name in report["plugins"]), report["plugins"]
    assert report["heavy"] == [], f"imported while loading plugins: {report['heavy']}"


def test_the_lazy_names_still_import() -> None:
    probe = (
        "from headwater_openai import ChatOpenAI\n"
        "from headwater_anthropic import ChatAnthropic\n"
        "from headwater_redis import RedisBroker\n"
        "from headwater_postgres import SCHEMA_VERSION, PostgresCheckpointer, redact\n"
        "from headwater_server import ApiError, create_app, mount\n"
        "from headwater_otel import OtelSink, parent_context\n"
        "import headwater_openai\n"
        "try:\n"
        "    headwater_openai.Nope\n"
        "except AttributeError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert "module 'headwater_openai' has no attribute 'Nope'" in out
