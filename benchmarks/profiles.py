"""Where a ``run.py`` workload's time goes: its headwater side under cProfile.

    .venv/bin/python benchmarks/profiles.py events              # the 25 costliest functions
    .venv/bin/python benchmarks/profiles.py checkpoint-memory --top 40 --sort cumulative

The workload is built exactly as ``run.py`` builds it (same graphs, same sizes), warmed up,
then run ``--repeats`` times under the profiler, each run with the garbage collector
collected first and paused meanwhile, as ``run.py`` times them. First it prints the CPU time
per unit measured *without* the profiler (so the profiler's own overhead does not mislead),
then the profile, with the file paths shortened to the repository's. ``docs/performance.md`` quotes
these profiles for the targets that are missed.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import io
import pstats
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from _timing import timed
from run import (
    FULL,
    QUICK,
    Sizes,
    _all_tokens_events,
    _count_tokens_messages,
    _open_checkpointer,
    chain_config,
    chain_graph,
    custom_graph,
    drain,
    fanout_graph,
    token_graph,
)

ROOT = Path(__file__).resolve().parent.parent


Workload = tuple[Callable[[], Awaitable[Any]], int, str, Any]


def profiled(name: str, sizes: Sizes, tmp: Path) -> Workload:
    """(one run of workload ``name``, units per run, unit, its checkpointer or None)."""
    n = sizes.chain
    config = chain_config(n)
    if name == "chain":
        app = chain_graph(n)
        return lambda: app.ainvoke({"n": 0}, config), n, "node", None
    if name.startswith("fanout-") and name[len("fanout-") :].isdigit():
        tasks = sizes.fanout(int(name[len("fanout-") :]))
        app = fanout_graph(tasks)
        return lambda: app.ainvoke({"items": []}), tasks, "task", None
    if name in ("updates", "values"):
        app = chain_graph(n)
        return lambda: drain(app.astream({"n": 0}, config, stream_mode=name)), n, "node", None
    if name == "events":
        app = chain_graph(n)
        return lambda: drain(app.astream_events({"n": 0}, config)), n, "node", None
    if name in ("custom", "custom-sync"):
        app = custom_graph(sizes.custom, sync=name == "custom-sync")
        run = lambda: drain(app.astream({"n": 0}, stream_mode="custom"))  # noqa: E731
        return run, sizes.custom, "event", None
    if name == "tokens-events":
        app = token_graph(sizes.tokens)
        return lambda: _all_tokens_events(app), sizes.tokens, "token", None
    if name in ("tokens-messages-async", "tokens-messages-sync"):
        app = token_graph(sizes.tokens, sync=name.endswith("sync"))
        return lambda: _count_tokens_messages(app), sizes.tokens, "token", None
    if name.startswith("checkpoint-"):
        _, kind, durability = name.split("-", 2)
        if kind == "sqlite" and durability == "full":
            kind, durability = "sqlite-full", "sync"
        saver = _open_checkpointer(kind, tmp)
        app = chain_graph(n, checkpointer=saver)

        def run() -> Awaitable[Any]:
            thread = {"thread_id": uuid.uuid4().hex}
            config = chain_config(n, configurable=thread, durability=durability)
            return app.ainvoke({"n": 0}, config)

        return run, n, "node", saver
    raise SystemExit(f"unknown workload {name!r}; expected one of: {', '.join(NAMES)}")


NAMES = (
    "chain", "fanout-200", "fanout-1000", "fanout-4000", "updates", "values", "events",
    "custom", "custom-sync", "tokens-events",
    "tokens-messages-async", "tokens-messages-sync", "checkpoint-memory-sync",
    "checkpoint-memory-async", "checkpoint-sqlite-sync", "checkpoint-sqlite-async",
    "checkpoint-sqlite-full", "checkpoint-postgres-sync", "checkpoint-postgres-async",
)  # fmt: skip


async def main_async(args: argparse.Namespace) -> str:
    sizes = QUICK if args.quick else FULL
    with tempfile.TemporaryDirectory() as tmp:
        run, units, unit, saver = profiled(args.workload, sizes, Path(tmp))
        try:
            for _ in range(3):
                await run()
            spent = 0.0
            for _ in range(args.repeats):
                spent += await timed(run, time.process_time)
            cpu = spent / args.repeats / units * 1e6
            profile = cProfile.Profile()
            for _ in range(args.repeats):
                gc.collect()
                gc.disable()
                profile.enable()
                await run()
                profile.disable()
                gc.enable()
        finally:
            close = getattr(saver, "aclose", None)
            if close is not None:
                await close()
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out)
    stats.sort_stats(args.sort).print_stats(args.top)
    text = out.getvalue().replace(str(ROOT) + "/", "")
    for prefix in sys.path:  # the standard library's and site-packages' paths, shortened
        if prefix and prefix.startswith("/") and len(prefix) > 1:
            text = text.replace(prefix + "/", "")
    head = (
        f"{args.workload}: {cpu:.2f} µs of CPU per {unit} without the profiler "
        f"({args.repeats} runs of {units:,} {unit}s)"
    )
    return head + "\n" + text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workload", help=f"one of: {', '.join(NAMES)}")
    parser.add_argument("--top", type=int, default=25, help="functions to show (default 25)")
    parser.add_argument(
        "--sort", default="tottime", choices=["tottime", "cumulative", "ncalls"], help="order"
    )
    parser.add_argument("--repeats", type=int, default=10, help="runs measured (default 10)")
    parser.add_argument("--quick", action="store_true", help="run.py's --quick sizes")
    args = parser.parse_args(argv)
    if args.workload not in NAMES:
        parser.error(f"unknown workload {args.workload!r}; expected one of: {', '.join(NAMES)}")
    print(asyncio.run(main_async(args)))


if __name__ == "__main__":
    main()
