"""One trace across processes: ``headwater serve --otel --queue`` enqueues a run inside a
span continuing the request's ``traceparent``, and ``headwater worker --otel`` executes it
with its spans under that one: a real OTLP/HTTP receiver gets both processes' spans in one
trace. Both processes' Prometheus metrics (``--metrics``, ``--metrics-port``) count the
runs, parsed with prometheus-client's parser. Real PostgreSQL (queue) and Redis (broker).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from headwater.testing.services import service_url
from tests.fixtures.otlp import OtlpReceiver, ReceivedSpan, SpanTree
from tests.plugins.otel._graphs import RAG_TREE
from tests.plugins.otel.conftest import OTEL_ENV

ROOT = Path(__file__).resolve().parents[3]
TARGET = "tests.plugins.otel._graphs:build_rag_served"
BODY = {"input": {"messages": ["What is 2 plus 3?"]}}
PARENTS = {
    "a": ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"),
    "b": ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"),
    "c": ("5c3b1d4e6f7a8b9c0d1e2f3a4b5c6d7e", "1a2b3c4d5e6f7a8b"),
}


def _pg_ping(url: str) -> None:
    with psycopg.connect(url, connect_timeout=3) as db:
        db.execute("SELECT 1")


def _env(url: str, service: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in OTEL_ENV}
    env.pop("HEADWATER_LOAD_PLUGINS", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(
        OTEL_EXPORTER_OTLP_ENDPOINT=url,
        OTEL_SERVICE_NAME=service,
        OTEL_BSP_SCHEDULE_DELAY="100",
        PYTHONUNBUFFERED="1",
    )
    return env


def _announced(proc: subprocess.Popen[str], marker: str) -> str:
    """The first line of ``proc``'s output that holds ``marker``."""
    assert proc.stdout is not None
    for line in proc.stdout:
        if marker in line:
            return line.strip()
    raise AssertionError(f"the process ended (code {proc.wait()}) without saying {marker!r}")


def _metrics(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200, response.text
    found = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def _value(found: dict[Any, float], name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def _events(response: httpx.Response) -> list[str]:
    return [line[7:] for line in response.iter_lines() if line.startswith("event: ")]


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    try:
        yield started
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.terminate()
        for proc in started:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:  # pragma: no cover - a hung process
                proc.kill()
                proc.wait(5)
            if proc.stdout is not None:
                proc.stdout.close()


def test_a_run_through_the_queue_is_one_trace_across_server_and_worker(
    receiver: tuple[OtlpReceiver, str], processes: list[subprocess.Popen[str]]
) -> None:
    got, otlp = receiver
    pg = service_url(
        "HEADWATER_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1/test", _pg_ping
    )
    rd = service_url(
        "HEADWATER_TEST_REDIS_URL",
        "redis://127.0.0.1:6379/0",
        lambda u: redis.Redis.from_url(u).ping(),
    )
    headwater = [sys.executable, "-m", "headwater"]
    server = subprocess.Popen(
        [*headwater, "serve", TARGET, "--port", "0", "--queue", pg, "--broker", rd,
         "--otel", "--metrics"],
        env=_env(otlp, "hw-server"), stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    processes.append(server)
    url = _announced(server, "serving").split(" on ")[1].split("/ ")[0]
    before = _value(_metrics(f"{url}/metrics"), "headwater_queue_depth")

    # Two runs wait in the queue before any worker is up.
    queued = []
    for name in ("a", "b"):
        trace, parent = PARENTS[name]
        made = httpx.post(
            f"{url}/runs", json=BODY, headers={"traceparent": f"00-{trace}-{parent}-01"}
        )
        assert made.status_code == 202, made.text
        queued.append(made.json()["run_id"])
    server_metrics = _metrics(f"{url}/metrics")
    assert _value(server_metrics, "headwater_queue_depth") == before + 2
    assert _value(server_metrics, "headwater_runs_enqueued_total", graph="rag") == 2

    worker = subprocess.Popen(
        [*headwater, "worker", TARGET, "--queue", pg, "--broker", rd, "--otel",
         "--concurrency", "1", "--poll", "0.05", "--metrics-port", "0"],
        env=_env(otlp, "hw-worker"), stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    processes.append(worker)
    worker_metrics_url = _announced(worker, "metrics on").split(" on ")[1]

    for run_id in queued:
        with httpx.stream("GET", f"{url}/runs/{run_id}/stream", timeout=60) as response:
            assert _events(response)[-1] == "end"
    trace, parent = PARENTS["c"]
    with httpx.stream(
        "POST",
        f"{url}/workflow/stream",
        json=BODY,
        headers={"traceparent": f"00-{trace}-{parent}-01"},
        timeout=60,
    ) as response:
        events = _events(response)
    assert events[-1] == "end"
    tokens = events.count("on_chat_model_stream")

    def whole(spans: list[ReceivedSpan]) -> bool:
        return len([s for s in spans if s.trace_id in {t for t, _ in PARENTS.values()}]) >= (
            3 * (len(RAG_TREE) + 1)
        )

    spans = got.wait_for(whole)
    for trace, parent in PARENTS.values():
        tree = SpanTree([s for s in spans if s.trace_id == trace])
        assert tree.render() == ["enqueue rag", *("  " + line for line in RAG_TREE)]
        enqueue = tree.named("enqueue rag")
        assert enqueue.parent_id == parent  # the request's caller
        assert enqueue.kind == "PRODUCER"
        assert enqueue.resource["service.name"] == "hw-server"
        run = tree.children(enqueue)[0]
        assert {s.resource["service.name"] for s in tree.spans if s is not enqueue} == {"hw-worker"}
        assert run.attributes["headwater.run_id"] == enqueue.attributes["headwater.run_id"]

    worker_metrics = _metrics(worker_metrics_url)
    assert _value(worker_metrics, "headwater_info", role="worker") == 1
    assert _value(worker_metrics, "headwater_runs_started_total", graph="rag") == 3
    assert _value(worker_metrics, "headwater_runs_finished_total", graph="rag", status="done") == 3
    assert _value(worker_metrics, "headwater_queue_claim_latency_seconds_count", graph="rag") == 3
    assert _value(worker_metrics, "headwater_time_to_first_token_seconds_count", graph="rag") == 3
    assert _value(worker_metrics, "headwater_tokens_streamed_total", graph="rag") == 3 * tokens
    server_metrics = _metrics(f"{url}/metrics")
    assert _value(server_metrics, "headwater_runs_enqueued_total", graph="rag") == 3
    assert _value(server_metrics, "headwater_runs_started_total", graph="rag") == 0
    assert _value(server_metrics, "headwater_queue_depth") == before
    assert _value(server_metrics, "headwater_broker_lag_seconds_count") > 0
    assert _value(server_metrics, "headwater_clients_connected", transport="sse") == 0
