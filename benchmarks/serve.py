"""``headwater serve`` under concurrent SSE clients, judged by the server's own CPU time
per delivered token, beside the spec's hand-written FastAPI bridge and a bare generator.

    .venv/bin/python benchmarks/serve.py            # 1, 50, 200 clients; then the realistic model
    .venv/bin/python benchmarks/serve.py --quick    # 1 and 5 clients, 50-token runs
    .venv/bin/python benchmarks/serve.py --json serve.json --markdown serve.md

Servers: ``headwater`` (``headwater serve bench_app:tokens``, every event streamed),
``fastapi-spec`` (the spec's FastAPI ``StreamingResponse`` around the same graph's
``astream_events``) and ``fastapi-bare`` (the same tokens from a plain generator, no graph:
the floor), each a uvicorn process of its own on a free loopback port. The clients run in
client processes of their own (``_client.py``), never in a server's; each POSTs a run and
reads its SSE stream to the end. For each level the server's CPU time (user + system, from
``/proc/<pid>/stat``) is read before and after: **server CPU µs/token** is what the server
spent per token it delivered, whatever the clients cost the shared cores.

Three modes: ``instant`` (the fake model never waits: the server's cost per token);
``realistic`` (20 ms between tokens, 500 tokens a run, all 200 clients starting at once: a
burst, whose time to first token is mostly the clients' own connection set-up: see
``fastapi-bare``); and ``steady`` (the same model, the 200 clients arriving evenly over one
run's length and each doing two runs: only the second runs are timed to the first token,
and each of them starts while 199 others are streaming: the time to first token at 200
concurrent clients).

A **route** is a way to stream a run (an URL, a request body, and the bytes that mark one
token in its stream): add one to ``ROUTES`` and every level measures it too.
``headwater-protocol`` is the same server's LangGraph-protocol route
(``POST /threads/{thread_id}/runs/stream`` with ``stream_mode="messages-tuple"``, as
``useStream`` asks for tokens).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from _load import (
    MARKER,
    free_port,
    headwater_cli,
    load,
    load_in_processes,
    markdown_table,
    peak_rss_mib,
    print_table,
    processes,
)

TARGETS = (
    "targets (issue 16): headwater ≤ 8 µs of server CPU per delivered token at 1, 50 and 200 "
    "clients, every client getting every token; realistic model (20 ms/token, 500 tokens): "
    "p99 time to first token ≤ 50 ms at 200 concurrent clients (the steady mode)"
)


@dataclass(frozen=True)
class Route:
    """One way to stream a run from one of the servers."""

    setup: str  # the name in the table
    server: str  # which process serves it: "headwater" or "fastapi"
    path: str
    body: dict[str, Any] = field(default_factory=dict)
    marker: bytes = MARKER  # occurs once per token in the stream


ROUTES = [
    Route("headwater", "headwater", "/workflow/stream", {"input": {"messages": ["go"]}}),
    Route(
        "headwater-compact",
        "headwater",
        "/workflow/stream?frames=compact",
        {"input": {"messages": ["go"]}},
    ),
    Route(
        "headwater-protocol",
        "headwater",
        "/threads/{thread_id}/runs/stream",
        {
            "assistant_id": "tokens",
            "input": {"messages": ["go"]},
            "stream_mode": "messages-tuple",
            "if_not_exists": "create",
        },
        b"event: messages\n",
    ),
    Route("fastapi-spec", "fastapi", "/workflow/stream", {"state": {"messages": ["go"]}}),
    Route("fastapi-bare", "fastapi", "/bare/stream"),
]


@dataclass(frozen=True)
class Mode:
    name: str
    tokens: int
    token_delay: float
    levels: list[int]
    steady: bool = False  # clients arrive spread over one run; the second runs are timed


def servers(
    logs: Path | None, tokens: int, token_delay: float, names: set[str]
) -> tuple[dict[str, str], Any]:
    ports = {name: free_port() for name in names}
    commands = {
        "headwater": headwater_cli("serve", "bench_app:tokens", "--port", str(ports["headwater"])),
        "fastapi": [
            sys.executable, "-m", "uvicorn", "bench_app:fastapi_app",
            "--host", "127.0.0.1", "--port", str(ports.get("fastapi", 0)), "--log-level", "warning",
        ],
    }  # fmt: skip
    commands = {name: argv for name, argv in commands.items() if name in names}
    base = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    ready = {name: base[name] + ("/health" if name == "fastapi" else "/graphs") for name in names}
    return base, processes(commands, tokens, ready, logs, token_delay)


def measure_mode(
    mode: Mode, routes: list[Route], quick: bool, client_procs: int, logs: Path | None
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    names = {route.server for route in routes}
    logdir = logs / mode.name if logs else None
    base, started = servers(logdir, mode.tokens, mode.token_delay, names)
    with started as ps:
        for route in routes:  # warm up: imports, plugin loading, first connections
            url = base[route.server] + route.path
            anyio.run(load, [url], route.body, 1, 1, mode.tokens, route.marker)
        for clients in mode.levels:
            # one client alone: runs back to back, enough tokens for the CPU clock's 10 ms
            runs_each = 40 if clients == 1 and not quick and mode.token_delay == 0 else 1
            spread = mode.tokens * mode.token_delay if mode.steady else None
            if mode.steady:
                runs_each = 2
            procs = 1 if clients == 1 else client_procs
            for route in routes:
                url = base[route.server] + route.path
                pid = ps[route.server].pid
                measured = load_in_processes(
                    pid,
                    [url],
                    route.body,
                    clients,
                    runs_each,
                    mode.tokens,
                    route.marker,
                    procs,
                    spread,
                )
                row = {"setup": route.setup, "mode": mode.name, **measured.row()}
                row["peak_rss_mib"] = peak_rss_mib(pid)
                rows.append(row)
                print(f"… {mode.name} {route.setup} x {clients}", file=sys.stderr, flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small numbers (a smoke test)")
    parser.add_argument("--tokens", type=int, help="tokens per run (default 500; quick 50)")
    parser.add_argument("--clients", type=int, nargs="+", help="levels (default 1 50 200)")
    parser.add_argument(
        "--client-procs", type=int, default=2, help="client processes per level (default 2)"
    )
    parser.add_argument(
        "--modes",
        nargs="+",
        choices=["instant", "realistic", "steady"],
        default=["instant", "realistic", "steady"],
    )
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument(
        "--markdown", metavar="PATH", help="also write the table as Markdown (every mode)"
    )
    parser.add_argument("--logs", metavar="DIR", type=Path, help="keep the servers' output here")
    args = parser.parse_args(argv)
    routes = ROUTES
    tokens = args.tokens or (50 if args.quick else 500)
    levels = args.clients or ([1, 5] if args.quick else [1, 50, 200])
    modes = {
        "instant": Mode("instant", tokens, 0.0, levels),
        "realistic": Mode("realistic", tokens, 0.02, [max(levels)]),
        "steady": Mode("steady", tokens, 0.02, [max(levels)], steady=True),
    }
    rows: list[dict[str, Any]] = []
    for name in args.modes:
        rows += measure_mode(modes[name], routes, args.quick, args.client_procs, args.logs)
    print(
        f"headwater serve benchmark ({'quick' if args.quick else 'full'}): {tokens} tokens/run; "
        "clients in their own processes; server CPU = user + system time of the server "
        "process over the level; peak RSS = the server process so far"
    )
    for name in args.modes:
        mode = modes[name]
        print(
            f"\n{name} model: "
            + (f"{mode.token_delay * 1000:g} ms between tokens" if mode.token_delay else "no wait")
            + (
                ", clients arriving over one run, the second runs timed to the first token"
                if mode.steady
                else ""
            )
        )
        print_table([r for r in rows if r["mode"] == name])
    print()
    print(TARGETS)
    for row in rows:
        if row["setup"].startswith("headwater"):
            print(
                f"  {row['setup']}, {row['mode']}, {row['clients']:>3} clients: "
                f"{row['cpu_us_per_token']:.1f} µs server CPU/token, "
                f"first token p99 {row['ttft_p99_ms']:.0f} ms, failures {row['failures']}"
            )
    if args.json:
        report = {"quick": args.quick, "tokens_per_run": tokens, "results": rows}
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(markdown_table(rows), encoding="utf-8")
    if any(row["failures"] for row in rows):
        sys.exit("some runs failed or lost tokens (see the failures column)")


if __name__ == "__main__":
    main()
