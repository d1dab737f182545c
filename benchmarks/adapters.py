"""The chat-model adapters streaming from a provider server on loopback, beside a bare client.

    .venv/bin/python benchmarks/adapters.py              # 20,000-token answers, 200 short calls
    .venv/bin/python benchmarks/adapters.py --quick      # tiny sizes: a smoke test
    .venv/bin/python benchmarks/adapters.py --json adapters.json

A provider server (a plain ASGI app under uvicorn, in its own process on a free loopback
port) answers ``POST /v1/chat/completions`` in OpenAI's wire format and ``POST
/v1/messages`` in Anthropic's, with as many tokens as the request's ``max_tokens``: the
body is made once per size and sent in 4 KiB pieces, so the server costs little. This
process reads the answers:

* ``openai-tokens``, ``anthropic-tokens``: one call of ``llm.astream(...)`` (``ChatOpenAI``,
  ``ChatAnthropic``; the official SDKs underneath) streaming N tokens; tokens/s.
* ``openai-calls``, ``anthropic-calls``: short answers (20 tokens) one after the other;
  calls/s: what a call costs besides its tokens (a client per call, the request, the
  events).
* baseline ``bare``: the same requests with one plain ``httpx2`` client (the SDKs' HTTP
  library) reading the lines of the stream and decoding each event's JSON, no framework
  (the adapters make a client per call, as a call may run on any event loop).

``ratio`` is the adapter's cost over the bare client's. Each repeat runs one complete
workload; adapter and baseline alternate (``_timing.measure``).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx2
from _load import free_port, processes
from _timing import measure, stats

SHORT = 20
"""Tokens of an answer in the ``-calls`` workloads."""
PIECE = 4096

# -- the provider server (runs in its own process: `uvicorn adapters:provider_app`) ------


def _openai_body(n: int) -> bytes:
    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        payload = {"id": "c", "model": "m", "choices": [choice] if delta or finish else []}
        return f"data: {json.dumps({**payload, **extra})}\n\n".encode()

    parts = [chunk({"role": "assistant", "content": ""})]
    parts += [chunk({"content": f" t{i}"}) for i in range(n)]
    parts += [chunk({}, "stop"), chunk({}, usage={"prompt_tokens": 3, "completion_tokens": n})]
    return b"".join(parts) + b"data: [DONE]\n\n"


def _anthropic_body(n: int) -> bytes:
    def event(kind: str, **data: Any) -> bytes:
        return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n".encode()

    start = {"id": "msg", "model": "m", "usage": {"input_tokens": 3, "output_tokens": 1}}
    parts = [event("message_start", message=start)]
    parts.append(event("content_block_start", index=0, content_block={"type": "text"}))
    parts += [
        event("content_block_delta", index=0, delta={"type": "text_delta", "text": f" t{i}"})
        for i in range(n)
    ]
    parts.append(event("content_block_stop", index=0))
    parts.append(
        event("message_delta", delta={"stop_reason": "end_turn"}, usage={"output_tokens": n})
    )
    return b"".join([*parts, event("message_stop")])


_BODIES: dict[tuple[str, int], bytes] = {}
_MAKERS = {"/v1/chat/completions": _openai_body, "/v1/messages": _anthropic_body}


async def provider_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The fake provider: N tokens in the wire format of the path, N the request's max_tokens."""
    if scope["type"] != "http":
        return
    raw = b""
    while True:
        message = await receive()
        raw += message.get("body", b"")
        if not message.get("more_body"):
            break
    key = (scope["path"], int(json.loads(raw or b"{}").get("max_tokens") or SHORT))
    if key not in _BODIES:
        _BODIES[key] = _MAKERS[key[0]](key[1])
    body = _BODIES[key]
    headers = [(b"content-type", b"text/event-stream")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    for start in range(0, len(body), PIECE):
        await send(
            {"type": "http.response.body", "body": body[start : start + PIECE], "more_body": True}
        )
    await send({"type": "http.response.body", "body": b""})


# -- the clients -------------------------------------------------------------------------


def _models(url: str, n: int) -> dict[str, Any]:
    from headwater_anthropic import ChatAnthropic
    from headwater_openai import ChatOpenAI

    options = {"api_key": "k", "max_retries": 0, "max_tokens": n}
    return {
        "openai": ChatOpenAI(model="m", base_url=f"{url}/v1", **options),
        "anthropic": ChatAnthropic(model="m", base_url=url, **options),
    }


async def _adapter(model: Any, calls: int) -> int:
    tokens = 0
    for _ in range(calls):
        async for chunk in model.astream("go"):
            tokens += bool(chunk.content)
    return tokens


@functools.cache
def _tls() -> Any:
    return httpx2.create_ssl_context()  # ~20 ms: made once, as the adapters do


async def _bare(url: str, path: str, n: int, calls: int) -> int:
    """A plain client (one for all the calls): POST, then each data line's JSON, its text
    counted as a token."""
    tokens = 0
    async with httpx2.AsyncClient(base_url=url, verify=_tls()) as client:
        for _ in range(calls):
            request = {"model": "m", "max_tokens": n}
            async with client.stream("POST", path, json=request) as response:
                async for line in response.aiter_lines():
                    if line.startswith("data: ") and line != "data: [DONE]":
                        event = json.loads(line[6:])
                        delta = (event.get("choices") or [{}])[0].get("delta") or event.get("delta")
                        tokens += bool((delta or {}).get("content") or (delta or {}).get("text"))
    return tokens


async def _run(url: str, tokens: int, calls: int, repeats: int) -> list[dict[str, Any]]:
    results = []
    for provider, path in (("openai", "/v1/chat/completions"), ("anthropic", "/v1/messages")):
        for kind, n, count, unit in (
            ("tokens", tokens, 1, "tokens/s"),
            ("calls", SHORT, calls, "calls/s"),
        ):
            model = _models(url, n)[provider]
            work: list[Callable[[], Awaitable[int]]] = [
                lambda m=model, c=count: _adapter(m, c),
                lambda p=path, n=n, c=count: _bare(url, p, n, c),
            ]
            assert await work[0]() == await work[1]() == n * count, (provider, kind)
            hw, bare = measure_rates(
                await measure(*work, repeats=repeats), n * count if kind == "tokens" else count
            )
            results.append(
                {
                    "name": f"{provider}-{kind}",
                    "unit": unit,
                    "headwater": hw,
                    "bare": bare,
                    "ratio": bare["median"] / hw["median"],
                }
            )
    return results


def measure_rates(
    samples: list[list[float]], per_run: int
) -> tuple[dict[str, float], dict[str, float]]:
    hw, bare = ([per_run / s for s in runs] for runs in samples)
    return stats(hw), stats(bare)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repeat")
    parser.add_argument("--tokens", type=int, help="tokens of the long answer (default 20,000)")
    parser.add_argument("--repeats", type=int, help="repeats per workload (default 7)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    tokens = args.tokens or (300 if args.quick else 20_000)
    calls = 5 if args.quick else 200
    repeats = args.repeats or (1 if args.quick else 7)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        sys.executable, "-m", "uvicorn", "adapters:provider_app", "--host", "127.0.0.1",
        "--port", str(port), "--log-level", "warning", "--lifespan", "off",
    ]  # fmt: skip
    with processes({"provider": command}, tokens, {}, None) as procs:
        _wait(url, procs["provider"])
        results = anyio.run(_run, url, tokens, calls, repeats)

    print(f"{'workload':<18}{'adapter':>14}{'bare':>14}{'ratio':>9}  unit")
    for r in results:
        hw, bare = r["headwater"]["median"], r["bare"]["median"]
        print(f"{r['name']:<18}{hw:>14,.0f}{bare:>14,.0f}{r['ratio']:>8.2f}x  {r['unit']}")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"tokens": tokens, "calls": calls, "results": results}, indent=2)
        )


def _wait(url: str, proc: Any) -> None:
    import time

    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise RuntimeError("the provider server exited")
        try:
            httpx2.post(f"{url}/v1/messages", json={"max_tokens": 1}, timeout=1).raise_for_status()
            return
        except httpx2.HTTPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


if __name__ == "__main__":
    main()
