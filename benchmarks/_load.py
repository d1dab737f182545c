"""Shared by ``serve.py`` and ``scaleout.py``: server processes on free loopback ports, a
load of concurrent SSE clients (httpx, asyncio) that count tokens and time the first one,
run in this process (:func:`load`) or in client processes of their own
(:func:`load_in_processes`, see ``_client.py``), and a process's CPU time from ``/proc``.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx

HERE = Path(__file__).resolve().parent
MARKER = b"event: on_chat_model_stream\n"
STARTUP_SECONDS = 180  # importing every plugin can take long on a loaded machine


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def processes(
    commands: dict[str, list[str]],
    tokens: int,
    ready: dict[str, str],
    logdir: Path | None,
    token_delay: float = 0.0,
) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    """Start ``commands`` (name → argv) with ``bench_app`` importable; wait until every URL
    of ``ready`` (name → URL) answers; terminate them all at the end. Their output goes to
    ``<name>.log`` in ``logdir`` (a temporary directory when ``None``). The apps' model
    streams ``tokens`` tokens per run, ``token_delay`` seconds apart."""
    with contextlib.ExitStack() as stack:
        if logdir is None:
            logdir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        logdir.mkdir(parents=True, exist_ok=True)
        yield stack.enter_context(_processes(commands, tokens, ready, logdir, token_delay))


@contextlib.contextmanager
def _processes(
    commands: dict[str, list[str]],
    tokens: int,
    ready: dict[str, str],
    logdir: Path,
    token_delay: float,
) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
        "HEADWATER_BENCH_TOKENS": str(tokens),
        "HEADWATER_BENCH_TOKEN_DELAY": str(token_delay),
    }
    procs: dict[str, subprocess.Popen[bytes]] = {}
    logs = {name: open(logdir / f"{name}.log", "wb") for name in commands}
    try:
        for name, argv in commands.items():
            procs[name] = subprocess.Popen(
                argv, env=env, stdout=logs[name], stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + STARTUP_SECONDS
        for name, url in ready.items():
            while True:
                if procs[name].poll() is not None:
                    raise RuntimeError(f"{name} exited:\n{(logdir / f'{name}.log').read_text()}")
                try:
                    httpx.get(url, timeout=1).raise_for_status()
                    break
                except httpx.HTTPError:
                    if time.monotonic() > deadline:
                        log = (logdir / f"{name}.log").read_text()
                        raise RuntimeError(f"{name}: no answer from {url}:\n{log}") from None
                    time.sleep(0.1)
        yield procs
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for log in logs.values():
            log.close()


def headwater_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "headwater", *args]


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, every thread) a process has used so far, from
    ``/proc/<pid>/stat``; its children are included while they run."""
    total = 0.0
    for one in (pid, *_descendants(pid)):
        try:
            fields = Path(f"/proc/{one}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        total += (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime
    return total


def _descendants(pid: int) -> list[int]:
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = list(Path(f"/proc/{parent}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                children = (task / "children").read_text().split()
            except OSError:
                continue
            for child in map(int, children):
                found.append(child)
                todo.append(child)
    return found


def peak_rss_mib(pid: int) -> float | None:
    """The peak resident memory of a process (Linux ``VmHWM``), or ``None``."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


@dataclass
class Load:
    """What one load level delivered."""

    clients: int
    runs: int
    tokens: int
    seconds: float
    ttft: list[float]
    failures: int
    errors: list[str]
    bytes: int = 0  # of the streams' bodies

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds

    def ttft_ms(self, q: float) -> float:
        if not self.ttft:
            return float("nan")
        if len(self.ttft) == 1:
            return self.ttft[0] * 1000
        return statistics.quantiles(self.ttft, n=100, method="inclusive")[round(q * 100) - 1] * 1000

    def row(self) -> dict[str, Any]:
        return {
            "clients": self.clients,
            "runs": self.runs,
            "tokens": self.tokens,
            "seconds": self.seconds,
            "tokens_per_s": self.tokens_per_s,
            "ttft_p50_ms": self.ttft_ms(0.5),
            "ttft_p99_ms": self.ttft_ms(0.99),
            "failures": self.failures,
            "first_error": self.errors[0] if self.errors else None,
            "bytes_per_token": self.bytes / self.tokens if self.tokens else float("nan"),
        }


async def one_run(
    http: httpx.AsyncClient,
    url: str,
    body: dict[str, Any],
    expected: int,
    marker: bytes = MARKER,
) -> tuple[float | None, int, int]:
    """POST a run and read its SSE stream: (seconds to the first token, tokens seen: the
    occurrences of ``marker``, bytes received)."""
    seen = received = 0
    first: float | None = None
    tail = b""
    start = time.perf_counter()
    async with http.stream("POST", url, json=body) as response:
        response.raise_for_status()
        async for chunk in response.aiter_raw():
            received += len(chunk)
            data = tail + chunk
            found = data.count(marker)
            if found and first is None:
                first = time.perf_counter() - start
            seen += found
            tail = data[-(len(marker) - 1) :]
    return first, min(seen, expected), received


async def load(
    urls: list[str],
    body: dict[str, Any],
    clients: int,
    runs_per_client: int,
    expected: int,
    marker: bytes = MARKER,
    arrivals: tuple[float, int, int] | None = None,
) -> Load:
    """``clients`` concurrent clients (spread over ``urls``), each doing ``runs_per_client``
    runs back to back; every run must deliver ``expected`` tokens.

    ``arrivals=(spread, first, total)`` staggers the clients' starts: this process's
    clients are numbers ``first`` to ``first + clients - 1`` of ``total``, and number ``i``
    starts ``spread * i / total`` seconds in. Then only the runs after each client's first
    are timed to the first token: started with ``spread`` one run's length, every one of
    them starts while ``total - 1`` other runs are streaming (the steady state).
    """
    ttft: list[float] = []
    errors: list[str] = []
    totals = {"tokens": 0, "failures": 0, "bytes": 0}

    async def client(index: int, http: httpx.AsyncClient) -> None:
        url = urls[index % len(urls)]
        if arrivals is not None:
            spread, first_index, total = arrivals
            await anyio.sleep(spread * (first_index + index) / total)
        for run in range(runs_per_client):
            thread = uuid.uuid4().hex  # a route with {thread_id} in its path takes it there
            target = url.replace("{thread_id}", thread)
            payload = body if target != url else {**body, "thread_id": thread}
            try:
                first, seen, received = await one_run(http, target, payload, expected, marker)
            except httpx.HTTPError as exc:
                totals["failures"] += 1
                errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0]}")
                continue
            if first is not None and (arrivals is None or run > 0):
                ttft.append(first)
            totals["tokens"] += seen
            totals["bytes"] += received
            if seen < expected:
                totals["failures"] += 1
                errors.append(f"{seen} of {expected} tokens")

    limits = httpx.Limits(max_connections=clients + 10, max_keepalive_connections=clients + 10)
    async with httpx.AsyncClient(timeout=300, limits=limits) as http:
        start = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for index in range(clients):
                tg.start_soon(client, index, http)
        seconds = time.perf_counter() - start
    runs = clients * runs_per_client
    return Load(
        clients, runs, totals["tokens"], seconds, ttft, totals["failures"], errors, totals["bytes"]
    )


@dataclass
class Measured:
    """A load run by client processes, with the CPU time the server used meanwhile."""

    load: Load
    server_cpu: float  # seconds

    def row(self) -> dict[str, Any]:
        tokens = self.load.tokens
        per_token = self.server_cpu / tokens * 1e6 if tokens else float("nan")
        return {**self.load.row(), "server_cpu_s": self.server_cpu, "cpu_us_per_token": per_token}


def load_in_processes(
    server_pid: int,
    urls: list[str],
    body: dict[str, Any],
    clients: int,
    runs_per_client: int,
    expected: int,
    marker: bytes = MARKER,
    procs: int = 1,
    spread: float | None = None,
) -> Measured:
    """:func:`load` split over ``procs`` client processes (``_client.py``), none of them
    the server's: each starts, connects, says it is ready; then the server's CPU time is
    read, all start at once, and it is read again when the last one is done. With
    ``spread`` the clients arrive spread over that many seconds instead (``load``'s
    ``arrivals``)."""
    procs = max(1, min(procs, clients))
    shares = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
    spec = {"urls": urls, "body": body, "runs": runs_per_client, "expected": expected}
    spec["marker"] = marker.decode()
    firsts = [sum(shares[:i]) for i in range(procs)]
    children = [
        subprocess.Popen(
            [
                sys.executable,
                str(HERE / "_client.py"),
                json.dumps(
                    {
                        **spec,
                        "clients": share,
                        "arrivals": None if spread is None else [spread, first, clients],
                    }
                ),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for share, first in zip(shares, firsts, strict=True)
    ]
    try:
        for child in children:
            assert child.stdout is not None
            line = child.stdout.readline()
            if line.strip() != "ready":
                raise RuntimeError(f"client process did not start: {line!r}")
        before = cpu_seconds(server_pid)
        start = time.perf_counter()
        for child in children:
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        results = []
        for child in children:
            out, _ = child.communicate(timeout=900)
            results.append(json.loads(out))
        seconds = time.perf_counter() - start
        used = cpu_seconds(server_pid) - before
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    merged = Load(
        clients=clients,
        runs=sum(r["runs"] for r in results),
        tokens=sum(r["tokens"] for r in results),
        seconds=seconds,
        ttft=[t for r in results for t in r["ttft"]],
        failures=sum(r["failures"] for r in results),
        errors=[e for r in results for e in r["errors"]],
        bytes=sum(r["bytes"] for r in results),
    )
    return Measured(merged, used)


def table_cells(rows: list[dict[str, Any]], *, mode: bool = False) -> list[list[str]]:
    """The results as rows of cells, the header first (``mode``: with a mode column)."""
    cpu = any("cpu_us_per_token" in r for r in rows)
    header = ["setup", *(["mode"] if mode else []), "clients", "runs", "tokens/s"]
    header += ["server CPU µs/token"] if cpu else []
    header += ["bytes/token", "ttft p50 ms", "ttft p99 ms", "failures", "peak RSS MiB"]
    cells = [header]
    for r in rows:
        rss = r.get("peak_rss_mib")
        per_token = r.get("cpu_us_per_token")
        cells.append(
            [
                r["setup"],
                *([r["mode"]] if mode else []),
                str(r["clients"]),
                str(r["runs"]),
                f"{r['tokens_per_s']:,.0f}",
                *([f"{per_token:.1f}" if per_token is not None else "—"] if cpu else []),
                f"{r['bytes_per_token']:.0f}" if "bytes_per_token" in r else "—",
                f"{r['ttft_p50_ms']:.1f}",
                f"{r['ttft_p99_ms']:.1f}",
                str(r["failures"]),
                f"{rss:.0f}" if rss else "—",
            ]
        )
    return cells


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The results of every mode as one Markdown table (for docs/performance.md)."""
    cells = table_cells(rows, mode=True)
    lines = ["| " + " | ".join(row) + " |" for row in cells]
    lines.insert(1, "|" + "---|" * len(cells[0]))
    return "\n".join(lines) + "\n"


def print_table(rows: list[dict[str, Any]]) -> None:
    """The results as an aligned table, then the first error of any level that had one."""
    cells = table_cells(rows)
    header = cells[0]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    print("\n".join(line.rstrip() for line in lines))
    for r in rows:
        if r.get("first_error"):
            print(f"{r['setup']} x {r['clients']}: {r['failures']} failed, e.g. {r['first_error']}")
