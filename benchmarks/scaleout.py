"""Scale-out (issue 7): two ``headwater serve`` and two ``headwater worker`` processes sharing
PostgreSQL (run queue, checkpoints) and Redis (events), beside a single ``headwater serve``,
under the same SSE client load.

    .venv/bin/python benchmarks/scaleout.py            # 50 and 200 clients, 500-token runs
    .venv/bin/python benchmarks/scaleout.py --quick    # 5 clients, 50-token runs
    .venv/bin/python benchmarks/scaleout.py --json scaleout.json

PostgreSQL comes from ``$HEADWATER_POSTGRES_URL`` (then ``$HEADWATER_TEST_POSTGRES_URL``,
default ``postgresql://postgres@127.0.0.1:5432/test``), Redis from ``$HEADWATER_REDIS_URL``
(then ``$HEADWATER_TEST_REDIS_URL``, default ``redis://127.0.0.1:6379/0``); when either is
unreachable the script prints a note and exits 0. Both setups use the PostgreSQL
checkpointer; the single server executes runs itself with its in-process broker. Clients
alternate between the two servers of the scale-out setup; the two setups run one after the
other, never at once.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import anyio
from _load import free_port, headwater_cli, load, print_table, processes

PG_DEFAULT = "postgresql://postgres@127.0.0.1:5432/test"
REDIS_DEFAULT = "redis://127.0.0.1:6379/0"


def service_urls() -> tuple[str, str]:
    env = os.environ
    pg = env.get("HEADWATER_POSTGRES_URL", env.get("HEADWATER_TEST_POSTGRES_URL", PG_DEFAULT))
    rd = env.get("HEADWATER_REDIS_URL", env.get("HEADWATER_TEST_REDIS_URL", REDIS_DEFAULT))
    return pg, rd


def unreachable(pg: str, rd: str) -> str | None:
    try:
        import psycopg
        import redis

        with psycopg.connect(pg, connect_timeout=3) as db:
            db.execute("SELECT 1")
        redis.Redis.from_url(rd, socket_connect_timeout=3).ping()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}".splitlines()[0]
    return None


def single(pg: str) -> tuple[dict[str, list[str]], list[str]]:
    port = free_port()
    argv = headwater_cli("serve", "bench_app:tokens", "--port", str(port), "--checkpointer", pg)
    return {"serve": argv}, [f"http://127.0.0.1:{port}"]


def cluster(pg: str, rd: str) -> tuple[dict[str, list[str]], list[str]]:
    shared = ["--queue", pg, "--broker", rd, "--checkpointer", pg]
    commands: dict[str, list[str]] = {}
    urls = []
    for name in ("serve-a", "serve-b"):
        port = free_port()
        commands[name] = headwater_cli("serve", "bench_app:tokens", "--port", str(port), *shared)
        urls.append(f"http://127.0.0.1:{port}")
    for name in ("worker-1", "worker-2"):
        commands[name] = headwater_cli(
            "worker", "bench_app:tokens", *shared, "--poll", "0.02", "--name", name
        )
    return commands, urls


def measure(
    setup: str,
    commands: dict[str, list[str]],
    urls: list[str],
    levels: list[int],
    tokens: int,
    logs: Path | None,
) -> list[dict[str, Any]]:
    servers = [name for name in commands if name.startswith("serve")]
    ready = {name: url + "/graphs" for name, url in zip(servers, urls, strict=True)}
    body = {"input": {"messages": ["go"]}}
    streams = [url + "/workflow/stream" for url in urls]
    rows = []
    with processes(commands, tokens, ready, logs and logs / setup.replace(" ", "-")):
        anyio.run(load, streams, body, len(urls), 1, tokens)  # warm up every server
        for clients in levels:
            result = anyio.run(load, streams, body, clients, 1, tokens)
            rows.append({"setup": setup, **result.row()})
            print(f"… {setup} x {clients}", file=sys.stderr, flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small numbers (a smoke test)")
    parser.add_argument("--tokens", type=int, help="tokens per run (default 500; quick 50)")
    parser.add_argument("--clients", type=int, nargs="+", help="levels (default 50 200)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--logs", metavar="DIR", type=Path, help="keep the servers' output here")
    args = parser.parse_args(argv)
    tokens = args.tokens or (50 if args.quick else 500)
    levels = args.clients or ([5] if args.quick else [50, 200])
    pg, rd = service_urls()
    problem = unreachable(pg, rd)
    if problem:
        print(f"note: skipping the scale-out benchmark, {pg} or {rd} unreachable ({problem})")
        if args.json:
            Path(args.json).write_text(json.dumps({"skipped": problem, "results": []}) + "\n")
        return
    rows = measure("single serve", *single(pg), levels, tokens, args.logs)
    rows += measure("2 serve + 2 workers", *cluster(pg, rd), levels, tokens, args.logs)
    print(
        f"headwater scale-out benchmark ({'quick' if args.quick else 'full'}): {tokens} "
        "tokens/run, every process and the clients on the same machine"
    )
    print_table(rows)
    if args.json:
        report = {"quick": args.quick, "tokens_per_run": tokens, "results": rows}
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    if any(row["failures"] for row in rows):
        sys.exit("some runs failed or lost tokens (see the failures column)")


if __name__ == "__main__":
    main()
