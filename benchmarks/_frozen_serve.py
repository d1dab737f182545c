"""``headwater serve`` with the garbage collector's long-lived objects frozen once the app
is built: what ``serve.py --gc-freeze`` measures beside the plain command.

    python benchmarks/_frozen_serve.py serve bench_app:tokens --port 8000

Everything alive when uvicorn is about to serve (imports, plugins, the compiled graphs,
the app) is collected once and moved to the permanent generation (``gc.freeze()``), so
that no later collection scans it again. This is the change proposed for ``headwater
serve`` and ``headwater worker`` themselves (see docs/performance.md).
"""

from __future__ import annotations

import gc
import runpy
from typing import Any

import uvicorn

_serve = uvicorn.run


def _frozen_run(*args: Any, **kwargs: Any) -> Any:
    gc.collect()
    gc.freeze()
    return _serve(*args, **kwargs)


uvicorn.run = _frozen_run
runpy.run_module("headwater", run_name="__main__")
