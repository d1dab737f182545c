"""A load client in a process of its own, started by ``_load.load_in_processes``.

    python benchmarks/_client.py '{"urls": [...], "body": {...}, "clients": 100,
                                   "runs": 1, "expected": 500, "marker": "event: ...",
                                   "arrivals": null}'

It imports and prepares, prints ``ready``, waits for ``go`` on stdin, runs
``_load.load`` with that spec and prints the result as one JSON line. Keeping the clients
out of the server's process (and the measuring script's) is what lets ``serve.py`` charge
the server only its own CPU time.
"""

from __future__ import annotations

import json
import sys

import anyio
from _load import load


def main() -> None:
    spec = json.loads(sys.argv[1])
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        sys.exit("expected 'go' on stdin")
    result = anyio.run(
        load,
        spec["urls"],
        spec["body"],
        spec["clients"],
        spec["runs"],
        spec["expected"],
        spec["marker"].encode(),
        None if spec.get("arrivals") is None else tuple(spec["arrivals"]),
    )
    report = {
        "runs": result.runs,
        "tokens": result.tokens,
        "ttft": result.ttft,
        "failures": result.failures,
        "errors": result.errors[:5],
        "bytes": result.bytes,
    }
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
