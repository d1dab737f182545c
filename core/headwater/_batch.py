"""``batch`` / ``abatch`` of a compiled graph: several runs at once, results in order."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import anyio

from headwater.errors import InvalidInputError

__all__ = ["run_batch"]


def _configs(count: int, config: Any) -> list[Mapping[str, Any] | None]:
    if config is None or isinstance(config, Mapping):
        return [config] * count
    if isinstance(config, list | tuple) and all(
        c is None or isinstance(c, Mapping) for c in config
    ):
        if len(config) != count:
            raise InvalidInputError(
                f"batch() got {count} input(s) but {len(config)} config(s); give one config "
                "for all, or exactly one per input."
            )
        return list(config)
    raise InvalidInputError(
        f"batch() takes one config (a mapping) or a list with one config per input; got "
        f"{type(config).__name__}: {config!r:.80}."
    )


def _limit(configs: list[Mapping[str, Any] | None]) -> int | None:
    limits = {c.get("max_concurrency") for c in configs if c is not None} - {None}
    if not limits:
        return None
    (limit, *others) = sorted(limits, key=repr)
    if others or type(limit) is not int or limit < 1:
        raise InvalidInputError(
            "config['max_concurrency'] must be one positive int for the whole batch (how "
            f"many runs at once); got {sorted(limits, key=repr)!r:.80}."
        )
    return limit


async def run_batch(
    ainvoke: Callable[[Any, Mapping[str, Any] | None], Awaitable[Any]],
    inputs: Sequence[Any],
    config: Any,
    return_exceptions: bool,
) -> list[Any]:
    """Run ``ainvoke`` on every input concurrently; see ``CompiledGraph.abatch``."""
    if isinstance(inputs, str | bytes | Mapping) or not isinstance(inputs, Sequence):
        raise InvalidInputError(
            f"batch() takes a list of inputs, e.g. [{{'text': 'a'}}, {{'text': 'b'}}]; got "
            f"{type(inputs).__name__}: {inputs!r:.80}."
        )
    configs = _configs(len(inputs), config)
    limit = _limit(configs)
    limiter = anyio.CapacityLimiter(limit) if limit is not None else None
    results: list[Any] = [None] * len(inputs)
    failure: list[BaseException] = []

    async def one(i: int, scope: anyio.CancelScope) -> None:
        try:
            if limiter is None:
                results[i] = await ainvoke(inputs[i], configs[i])
            else:
                async with limiter:
                    results[i] = await ainvoke(inputs[i], configs[i])
        except Exception as exc:
            if return_exceptions:
                results[i] = exc
            elif not failure:
                failure.append(exc)
                scope.cancel()

    async with anyio.create_task_group() as tg:
        for i in range(len(inputs)):
            tg.start_soon(one, i, tg.cancel_scope)
    if failure:
        raise failure[0]
    return results
