"""Timing helpers shared by the benchmark scripts (no headwater import: the LangGraph half
runs them under another interpreter).

Every measurement runs one complete workload per repeat, with the garbage collector
collected before and disabled during the timed section, and reports median, min and max.
A framework and its baseline are measured alternately (A, B, A, B, ...) so that the noise
of a shared machine falls on both alike.
"""

from __future__ import annotations

import gc
import statistics
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from typing import Any

Workload = Callable[[], Awaitable[Any]]


def stats(samples: list[float]) -> dict[str, float]:
    """``{"median", "min", "max"}`` of some samples."""
    return {
        "median": statistics.median(samples),
        "min": min(samples),
        "max": max(samples),
    }


async def timed(fn: Workload, clock: Callable[[], float] = time.perf_counter) -> float:
    """Seconds taken by one call of ``fn`` on ``clock`` (wall time; ``time.process_time``
    for CPU time), the GC collected first and paused meanwhile."""
    gc.collect()
    gc.disable()
    try:
        start = clock()
        await fn()
        return clock() - start
    finally:
        gc.enable()


async def measure(*fns: Workload, repeats: int) -> list[list[float]]:
    """Seconds per run of each workload: one warm-up each, then ``repeats`` interleaved runs."""
    for fn in fns:
        await fn()
    samples: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, out in zip(fns, samples, strict=True):
            out.append(await timed(fn))
    return samples


async def peak_memory(fn: Workload) -> float:
    """Peak memory (MiB) allocated above the starting point while ``fn`` runs (tracemalloc)."""
    gc.collect()
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        await fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return (peak - base) / 2**20
