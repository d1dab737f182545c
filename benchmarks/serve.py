"""``headwater serve`` under concurrent SSE clients, beside the spec's hand-written FastAPI
bridge serving the same token stream, in the same run.

    .venv/bin/python benchmarks/serve.py            # 1, 50 and 200 clients, 500-token runs
    .venv/bin/python benchmarks/serve.py --quick    # 1 and 5 clients, 50-token runs
    .venv/bin/python benchmarks/serve.py --json serve.json

Three servers, each a separate uvicorn process on a free loopback port with the same
settings: ``headwater`` (``headwater serve bench_app:tokens``, every event streamed),
``fastapi-spec`` (the spec's FastAPI ``StreamingResponse`` around the same graph's
``astream_events``) and ``fastapi-bare`` (the same tokens from a plain generator, no graph:
the floor). Each client POSTs a run and reads the SSE stream to its end; tokens/s is every
client's tokens over the wall time of the level, ttft the time from request to first token.
The clients run in this process, on the same machine as the servers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import anyio
from _load import free_port, headwater_cli, load, peak_rss_mib, print_table, processes

TARGETS = (
    "targets (issue 6): headwater at 200 clients ≥ 100,000 tokens/s delivered; "
    "p99 first-token latency at 50 clients ≤ 100 ms"
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small numbers (a smoke test)")
    parser.add_argument("--tokens", type=int, help="tokens per run (default 500; quick 50)")
    parser.add_argument("--clients", type=int, nargs="+", help="levels (default 1 50 200)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--logs", metavar="DIR", type=Path, help="keep the servers' output here")
    args = parser.parse_args(argv)
    tokens = args.tokens or (50 if args.quick else 500)
    levels = args.clients or ([1, 5] if args.quick else [1, 50, 200])
    runs_for = {1: 1 if args.quick else 20}  # one client alone: several runs back to back

    ports = {"headwater": free_port(), "fastapi": free_port()}
    commands = {
        "headwater": headwater_cli(
            "serve", "bench_app:tokens", "--port", str(ports["headwater"])
        ),
        "fastapi": [
            sys.executable, "-m", "uvicorn", "bench_app:fastapi_app",
            "--host", "127.0.0.1", "--port", str(ports["fastapi"]), "--log-level", "warning",
        ],
    }  # fmt: skip
    base = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    ready = {"headwater": base["headwater"] + "/graphs", "fastapi": base["fastapi"] + "/health"}
    setups: list[tuple[str, str, str, dict[str, Any]]] = [
        ("headwater", "headwater", "/workflow/stream", {"input": {"messages": ["go"]}}),
        ("fastapi-spec", "fastapi", "/workflow/stream", {"state": {"messages": ["go"]}}),
        ("fastapi-bare", "fastapi", "/bare/stream", {}),
    ]
    rows: list[dict[str, Any]] = []
    with processes(commands, tokens, ready, args.logs) as ps:
        for _setup, server, path, body in setups:  # warm up: imports, plugin loading
            anyio.run(load, [base[server] + path], body, 1, 1, tokens)
        for clients in levels:
            for setup, server, path, body in setups:
                url = base[server] + path
                result = anyio.run(load, [url], body, clients, runs_for.get(clients, 1), tokens)
                row = {"setup": setup, **result.row(), "peak_rss_mib": peak_rss_mib(ps[server].pid)}
                rows.append(row)
                print(f"… {setup} x {clients}", file=sys.stderr, flush=True)
    print(
        f"headwater serve benchmark ({'quick' if args.quick else 'full'}): {tokens} tokens/run, "
        "clients and servers on the same machine; peak RSS = the server process so far"
    )
    print_table(rows)
    print(TARGETS)
    for row in rows:
        if row["setup"] == "headwater":
            spec = next(
                r for r in rows if r["setup"] == "fastapi-spec" and r["clients"] == row["clients"]
            )
            print(
                f"  {row['clients']:>3} clients: headwater delivers "
                f"{row['tokens_per_s'] / spec['tokens_per_s']:.2f}x the tokens/s of fastapi-spec"
            )
    if args.json:
        report = {"quick": args.quick, "tokens_per_run": tokens, "results": rows}
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    if any(row["failures"] for row in rows):
        sys.exit("some runs failed or lost tokens (see the failures column)")


if __name__ == "__main__":
    main()
