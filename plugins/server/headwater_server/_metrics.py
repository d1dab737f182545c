"""Prometheus metrics of the server and of ``headwater worker``: off unless switched on.

The engine and the worker hold a :class:`Metrics`; the default one, :data:`OFF`, does
nothing (its methods return at once, and :meth:`Metrics.tokens` hands the run's entries
back untouched, so the token path pays nothing). :class:`PrometheusMetrics` counts into a
registry of its own (``prometheus-client``, imported only then), which ``GET /metrics``
and the worker's metrics port expose in the text format.

Other routes on the same engine (another protocol) report through the same object::

    engine.metrics.run_started("chat")
    with engine.metrics.client("sse"):
        ...  # stream to the client

Every label is bounded: graph names are those served, ``status`` is ``done``, ``error``
or ``cancelled``, ``transport`` is ``sse`` or ``websocket``.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

__all__ = ["OFF", "Metrics", "PrometheusMetrics", "metrics_for"]

_REDIS_ID = re.compile(r"([0-9]{1,15})-[0-9]{1,20}")
"""A broker entry id that carries the time it was written (a Redis stream id: ms-seq)."""

TOKEN_EVENTS = frozenset({"on_chat_model_stream", "messages", "messages/partial"})
"""Log entries that carry one streamed token chunk: an ``astream_events`` model chunk, a
``messages``-mode chunk (also the LangGraph protocol's ``messages-tuple`` entry), or the
protocol's ``messages/partial``."""


class Metrics:
    """What the server and workers report; this base class reports nothing (metrics off).

    Example::

        metrics = Metrics()          # off: every call returns at once
        metrics.run_started("chat")
    """

    enabled = False

    def run_started(self, graph: str) -> None:
        """A run of ``graph`` started executing in this process."""

    def run_finished(self, graph: str, status: str, seconds: float) -> None:
        """A run this process executed ended with ``status`` (``done``, ``error``,
        ``cancelled``) after ``seconds``."""

    def run_enqueued(self, graph: str) -> None:
        """A run of ``graph`` was put on the run queue (a worker executes it)."""

    def tokens(self, graph: str) -> Callable[[Sequence[tuple[str, str]]], None] | None:
        """A counter of a run's token chunks, called with each batch of the run's log
        entries as they are published (it also times the first token); off, ``None``."""
        return None

    def client_connected(self, transport: str) -> None:
        """A client started following a run over ``transport`` (``sse``, ``websocket``)."""

    def client_disconnected(self, transport: str) -> None:
        """A client following a run over ``transport`` went away (or its run ended)."""

    @contextlib.contextmanager
    def client(self, transport: str) -> Iterator[None]:
        """A connected client for the duration of the block.

        Example::

            with engine.metrics.client("websocket"):
                await stream_to(socket)
        """
        self.client_connected(transport)
        try:
            yield
        finally:
            self.client_disconnected(transport)

    def delivered(self, entries: Sequence[Any]) -> None:
        """Broker entries read for a client now (their age is the broker lag)."""

    def claimed(self, graph: str, waited: float | None) -> None:
        """A worker claimed a run of ``graph`` that had waited ``waited`` seconds in the
        queue (``None``: unknown)."""

    def queue_depth(self, depth: int | None) -> None:
        """The runs waiting in the queue now (``None``: the queue cannot tell)."""

    def exposition(self) -> tuple[bytes, str]:
        """The metrics in Prometheus's text format, and its content type."""
        raise NotImplementedError("metrics are off")


OFF = Metrics()
"""The metrics of a server or worker that keeps none."""


_DURATION = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
_FIRST_TOKEN = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)
_CLAIM = (0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
_LAG = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class PrometheusMetrics(Metrics):
    """Metrics counted with ``prometheus-client`` into a registry of their own.

    ``role`` (``server`` or ``worker``) is the ``role`` label of ``headwater_info``.

    Example::

        metrics = PrometheusMetrics("server")
        metrics.run_started("chat")
        body, content_type = metrics.exposition()
    """

    enabled = True

    def __init__(self, role: str = "server") -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        Info("headwater", "This process: a headwater server or worker.", registry=reg).info(
            {"role": role}
        )
        self._started = Counter(
            "headwater_runs_started",
            "Runs that started executing in this process, by graph.",
            ["graph"],
            registry=reg,
        )
        self._finished = Counter(
            "headwater_runs_finished",
            "Runs this process executed that ended, by graph and status (done, error, cancelled).",
            ["graph", "status"],
            registry=reg,
        )
        self._failed = Counter(
            "headwater_runs_failed",
            "Runs this process executed that ended with an error, by graph.",
            ["graph"],
            registry=reg,
        )
        self._enqueued = Counter(
            "headwater_runs_enqueued",
            "Runs this server put on the run queue for workers, by graph.",
            ["graph"],
            registry=reg,
        )
        self._duration = Histogram(
            "headwater_run_duration_seconds",
            "Wall time of the runs this process executed, start to end, by graph.",
            ["graph"],
            buckets=_DURATION,
            registry=reg,
        )
        self._first_token = Histogram(
            "headwater_time_to_first_token_seconds",
            "From a run's start to its first streamed token chunk, by graph.",
            ["graph"],
            buckets=_FIRST_TOKEN,
            registry=reg,
        )
        self._tokens = Counter(
            "headwater_tokens_streamed",
            "Token chunks the runs streamed (astream_events model chunks and messages-mode "
            "chunks), by graph.",
            ["graph"],
            registry=reg,
        )
        self._clients = Gauge(
            "headwater_clients_connected",
            "Clients following a run now, by transport (sse, websocket).",
            ["transport"],
            registry=reg,
        )
        self._lag = Histogram(
            "headwater_broker_lag_seconds",
            "Age of broker entries when this server read them for a client (brokers whose "
            "ids carry their time: Redis).",
            buckets=_LAG,
            registry=reg,
        )
        self._claim = Histogram(
            "headwater_queue_claim_latency_seconds",
            "Time runs waited in the queue, from enqueue to a worker's claim, by graph.",
            ["graph"],
            buckets=_CLAIM,
            registry=reg,
        )
        self._depth = Gauge(
            "headwater_queue_depth",
            "Runs waiting in the run queue (last seen).",
            registry=reg,
        )

    def run_started(self, graph: str) -> None:
        self._started.labels(graph).inc()

    def run_finished(self, graph: str, status: str, seconds: float) -> None:
        self._finished.labels(graph, status).inc()
        if status == "error":
            self._failed.labels(graph).inc()
        self._duration.labels(graph).observe(max(seconds, 0.0))

    def run_enqueued(self, graph: str) -> None:
        self._enqueued.labels(graph).inc()

    def tokens(self, graph: str) -> Callable[[Sequence[tuple[str, str]]], None]:
        start = time.monotonic()
        counter = self._tokens.labels(graph)
        first = self._first_token.labels(graph)
        timed = False

        def count(entries: Sequence[tuple[str, str]]) -> None:
            nonlocal timed
            found = 0
            for entry in entries:
                if entry[0] in TOKEN_EVENTS:
                    found += 1
            if found:
                if not timed:
                    timed = True
                    first.observe(time.monotonic() - start)
                counter.inc(found)  # one counter update per batch, not per chunk

        return count

    def client_connected(self, transport: str) -> None:
        self._clients.labels(transport).inc()

    def client_disconnected(self, transport: str) -> None:
        self._clients.labels(transport).dec()

    def delivered(self, entries: Sequence[Any]) -> None:
        if not entries:
            return
        found = _REDIS_ID.fullmatch(entries[-1].id)
        if found is not None:
            self._lag.observe(max(time.time() - int(found.group(1)) / 1000, 0.0))

    def claimed(self, graph: str, waited: float | None) -> None:
        if waited is not None:
            self._claim.labels(graph).observe(max(waited, 0.0))

    def queue_depth(self, depth: int | None) -> None:
        if depth is not None:
            self._depth.set(depth)

    def exposition(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def metrics_for(enabled: bool | Metrics, role: str) -> Metrics:
    """The metrics a server or worker keeps: ``True`` for Prometheus metrics, ``False``
    for none, or a :class:`Metrics` of the caller's own."""
    if isinstance(enabled, Metrics):
        return enabled
    if enabled is True:
        return PrometheusMetrics(role)
    if enabled is False:
        return OFF
    raise ValueError(f"metrics must be True, False or a Metrics; got {enabled!r:.60}.")
