"""Combining run configs: what ``CompiledGraph.with_config`` binds and a call adds.

As in LangChain: ``tags`` add up (bound ones first, no repeats), ``metadata`` and
``configurable`` merge key by key (the later config wins a key), any other key
(``recursion_limit``, ``durability``, ``run_id`` …) is taken from the later config.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from headwater.errors import InvalidInputError

__all__ = ["merge_configs"]

_MERGED = ("metadata", "configurable")


def merge_configs(*configs: Mapping[str, Any] | None) -> dict[str, Any]:
    """Merge configs left to right (see the module docstring); ``None`` counts as empty."""
    out: dict[str, Any] = {}
    for config in configs:
        if config is None:
            continue
        if not isinstance(config, Mapping):
            raise InvalidInputError(
                f"config must be a mapping like {{'configurable': {{'thread_id': '1'}}}}; got "
                f"{type(config).__name__}: {config!r:.80}."
            )
        for key, value in config.items():
            if key == "tags" and "tags" in out and value is not None:
                if isinstance(value, str) or not isinstance(out["tags"], list | tuple):
                    out[key] = value  # malformed: left for the run's config check to report
                else:
                    out[key] = list(dict.fromkeys([*out["tags"], *value]))
            elif (
                key in _MERGED and isinstance(out.get(key), Mapping) and isinstance(value, Mapping)
            ):
                out[key] = {**out[key], **value}
            else:
                out[key] = value
    return out
