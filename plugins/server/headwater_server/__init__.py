"""headwater-server: stream runs over SSE and WebSocket, with a runs API and a browser page.

* :func:`create_app` — the ASGI app (Starlette), served by uvicorn; :func:`mount` puts
  it into an existing Starlette or FastAPI app.
* ``headwater serve module:graph`` — serve graphs (the browser page is at ``/``).
* ``headwater run module:graph --input JSON`` — run a graph and render its stream in the
  terminal: tokens inline as they arrive, a progress line per node, readable errors.

Wire format: SSE ``event:`` is the event type (``on_chat_model_stream`` …) or the stream
mode; ``id:`` numbers events so ``Last-Event-ID`` resumes; ``data:`` is plain JSON
(messages in LangChain's shape, tuples as arrays, no serde type tags) — an event's
``data`` fields at the top level (so the spec's browser code
``JSON.parse(e.data).chunk.content`` works) plus ``_event`` with the event's type, name,
run id, tags and metadata.

Inside, the run engine (``_engine``: starting, queueing, cancelling and following runs,
thread and run ownership) is apart from the HTTP edge (``_app``), so another protocol
can be served on the same engine.

Example::

    from headwater_server import create_app

    app = create_app({"chat": chat_graph}, api_keys=["s3cret"])
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._cli import headwater_cli_commands, load_graph

if TYPE_CHECKING:
    from ._app import ApiError, create_app, mount

# Every process that uses headwater loads every installed plugin, so loading this one must
# not import Starlette and the app: they are imported on first use.
_LAZY = {name: "headwater_server._app" for name in ("ApiError", "create_app", "mount")}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ApiError", "create_app", "headwater_cli_commands", "load_graph", "mount"]
