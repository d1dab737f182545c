"""Nodes and conditional edges as the scheduler sees them, and how to call user functions.

The builder (:mod:`headwater._graph`) makes these records; the scheduler
(:mod:`headwater._scheduler`) runs them. A node that is itself a compiled graph is seen
through the :class:`Subgraph` protocol, so neither the records nor the scheduler import
the compiled graph.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Hashable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import attrs

from headwater.errors import GraphValidationError
from headwater.retry import RetryPolicy

if TYPE_CHECKING:
    from headwater._state import Schema
    from headwater.runtime import Task

__all__ = ["Branch", "Calling", "NodeSpec", "Subgraph", "calling_convention", "is_seconds"]


class Subgraph(Protocol):
    """A compiled graph used as a node of another graph."""

    async def run_as_node(self, task: Task, parent_schema: Schema) -> dict[str, Any]:
        """Run as the node of ``task``: its input from the parent's state, its final
        state back as the node's update (the keys the parent's schema has)."""
        ...


@attrs.frozen
class Calling:
    """How to call a user function: with config (positionally or by keyword), with writer."""

    is_async: bool
    config: str | None  # None | "positional" | "keyword"
    writer: bool


def calling_convention(fn: Callable[..., Any], what: str) -> Calling:
    """Inspect ``fn`` once: ``(state)``, ``(state, config)``, ``(state, *, writer)``…"""
    target = fn
    is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - callable objects with async __call__
    )
    try:
        params = list(inspect.signature(target).parameters.values())
    except (TypeError, ValueError):
        return Calling(is_async=is_async, config=None, writer=False)
    positional = [
        p
        for p in params
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name != "writer"
    ]
    keyword = {p.name for p in params if p.kind is p.KEYWORD_ONLY}
    required_kw = {p.name for p in params if p.kind is p.KEYWORD_ONLY and p.default is p.empty}
    unknown_kw = required_kw - {"config", "writer"}
    if unknown_kw:
        raise GraphValidationError(
            f"{what} has required keyword-only parameter(s) {sorted(unknown_kw)}; headwater "
            "can inject only `config` and `writer`. Give them defaults or remove them."
        )
    has_var_positional = any(p.kind is p.VAR_POSITIONAL for p in params)
    if not positional and not has_var_positional:
        raise GraphValidationError(
            f"{what} takes no positional parameter; expected fn(state), fn(state, config) or "
            "fn(state, *, writer)."
        )
    config: str | None = None
    if len(positional) >= 2 and (
        positional[1].name == "config" or positional[1].default is positional[1].empty
    ):
        config = "positional"
    elif "config" in keyword:
        config = "keyword"
    writer = "writer" in keyword or any(
        p.name == "writer" and p.kind is p.POSITIONAL_OR_KEYWORD for p in params
    )
    return Calling(is_async=is_async, config=config, writer=writer)


@attrs.frozen
class NodeSpec:
    """A node as the scheduler sees it."""

    name: str
    fn: Callable[..., Any]
    calling: Calling
    tags: tuple[str, ...]
    metadata: Mapping[str, Any]
    destinations: tuple[str, ...] | None  # Command targets, None = unknown (may go anywhere)
    subgraph: Subgraph | None = None
    retry: RetryPolicy | None = None
    timeout: float | None = None  # seconds per attempt


def is_seconds(value: Any) -> bool:
    """Whether ``value`` is a valid timeout: a positive, finite int or float (not a bool)."""
    return (
        type(value) in (int, float) and value > 0 and math.isfinite(value)  # not bool, not nan
    )


@attrs.frozen
class Branch:
    """A conditional edge: ``router(state)`` names where to go after ``source``."""

    source: str
    router: Callable[..., Any]
    calling: Calling
    path_map: Mapping[Hashable, str] | None

    @property
    def name(self) -> str:
        return getattr(self.router, "__name__", type(self.router).__name__)
