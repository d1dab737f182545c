"""headwater-filters: the standard event filters of ``astream_events``.

Each ``include_*`` / ``exclude_*`` keyword argument of ``astream_events`` is a named
filter registered here through ``headwater_event_filters``; so are ``include_nodes`` and
``exclude_nodes`` (by ``metadata["node"]``), usable as ``filters=[("include_nodes", [...])]``.
Patterns may be globs (``"*_node"``, ``"on_chat_model_*"``); ``include_types`` and
``exclude_types`` also take LangChain's run types (``"chain"``, ``"chat_model"``,
``"llm"``, ``"tool"``, ``"retriever"``, ``"prompt"``, ``"parser"``) with LangChain's
meaning, and reject a name that matches no event. All of them decide before
an event is built: type filters at run start (excluded kinds are never built), name,
tag and node filters from the event's header.

As in LangGraph, an event passes when it matches *any* ``include_*`` filter given (or
no include filter was given) and *no* ``exclude_*`` filter.

Example::

    async for event in app.astream_events(
        state, include_types=["on_chat_model_stream"], include_names=["*_node"]
    ):
        ...
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from headwater.errors import InvalidFilterError
from headwater.events import PUBLIC_KINDS, EventFilter
from headwater.hookspecs import hookimpl

__all__ = ["INCLUDE", "RUN_TYPES", "headwater_event_filters"]

_GLOB = re.compile(r"[*?\[]")


def _patterns(filter_name: str, arg: Any) -> list[str]:
    if isinstance(arg, str):
        return [arg]
    if isinstance(arg, Iterable) and not isinstance(arg, Mapping):
        items = list(arg)
        if all(isinstance(item, str) for item in items):
            return items
    raise InvalidFilterError(
        f"{filter_name} takes a list of names or glob patterns, e.g. ['summarize_node', "
        f"'*_llm']; got {type(arg).__name__}: {arg!r:.80}."
    )


def _matcher(patterns: list[str]) -> Callable[[str], bool]:
    """A fast membership test: a set for plain names, one regex for globs."""
    exact = frozenset(p for p in patterns if not _GLOB.search(p))
    globs = [p for p in patterns if _GLOB.search(p)]
    if not globs:
        return exact.__contains__
    regex = re.compile("|".join(fnmatch.translate(p) for p in globs))
    return lambda value: value in exact or regex.match(value) is not None


RUN_TYPES: Mapping[str, tuple[str, ...]] = {
    "chain": ("on_chain_", "on_interrupt"),
    "chat_model": ("on_chat_model_",),
    "llm": ("on_llm_",),
    "tool": ("on_tool_",),
    "retriever": ("on_retriever_",),
    "prompt": ("on_prompt_",),
    "parser": ("on_parser_",),
}
"""LangChain's run types, as ``include_types`` / ``exclude_types`` accept them, and the
event kinds (by prefix) of each: ``"chain"`` is the graph and its nodes (with a pause,
``on_interrupt``); ``on_custom_event`` has no run type, as in LangChain."""


def _kinds(filter_name: str, arg: Any) -> frozenset[str]:
    """The event kinds ``arg`` selects: LangChain run types and event-name patterns.

    A name that is neither a run type nor matches any event kind is an error, raised
    before the run starts: a typo never silently empties (or fails to filter) a stream.
    """
    kinds: set[str] = set()
    for pattern in _patterns(filter_name, arg):
        prefixes = RUN_TYPES.get(pattern)
        if prefixes is not None:
            kinds.update(k for k in PUBLIC_KINDS if k.startswith(prefixes))
            continue
        found = {k for k in PUBLIC_KINDS if _matcher([pattern])(k)}
        if not found:
            families = sorted(
                {k.rsplit("_", 1)[0] + "_*" for k in PUBLIC_KINDS if k.count("_") > 1}
            )
            known = [*RUN_TYPES, *families, *sorted(PUBLIC_KINDS)]
            close = (
                difflib.get_close_matches(pattern, known, n=1)
                or [k for k in sorted(PUBLIC_KINDS) if pattern.strip("*?") in k][:1]
            )
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise InvalidFilterError(
                f"{filter_name} got {pattern!r}, which matches no event.{hint} Give a "
                f"LangChain run type ({', '.join(RUN_TYPES)}) or an event name or glob "
                f"pattern (such as 'on_chat_model_*') matching one of: "
                f"{', '.join(sorted(PUBLIC_KINDS))}."
            )
        kinds.update(found)
    return frozenset(kinds)


INCLUDE = "include"
"""The ``EventFilter.any_of`` group of the ``include_*`` filters: as in LangGraph, an event
passes when it matches any one of the ``include_*`` arguments given."""


def include_types(arg: Any) -> EventFilter:
    """Keep only events of these run types or event types (decided at run start)."""
    return EventFilter(kinds=_kinds("include_types", arg), any_of=INCLUDE)


def exclude_types(arg: Any) -> EventFilter:
    """Drop events of these run types or event types (never built)."""
    return EventFilter(kinds=PUBLIC_KINDS - _kinds("exclude_types", arg))


def include_names(arg: Any) -> EventFilter:
    """Keep only events whose ``name`` matches."""
    match = _matcher(_patterns("include_names", arg))
    return EventFilter(accept=lambda kind, name, tags, md: match(name), any_of=INCLUDE)


def exclude_names(arg: Any) -> EventFilter:
    """Drop events whose ``name`` matches."""
    match = _matcher(_patterns("exclude_names", arg))
    return EventFilter(accept=lambda kind, name, tags, md: not match(name))


def include_tags(arg: Any) -> EventFilter:
    """Keep only events carrying a matching tag."""
    match = _matcher(_patterns("include_tags", arg))
    return EventFilter(
        accept=lambda kind, name, tags, md: any(match(t) for t in tags), any_of=INCLUDE
    )


def exclude_tags(arg: Any) -> EventFilter:
    """Drop events carrying a matching tag."""
    match = _matcher(_patterns("exclude_tags", arg))
    return EventFilter(accept=lambda kind, name, tags, md: not any(match(t) for t in tags))


def include_nodes(arg: Any) -> EventFilter:
    """Keep only events from inside a matching node (``metadata["node"]``)."""
    match = _matcher(_patterns("include_nodes", arg))
    return EventFilter(
        accept=lambda kind, name, tags, md: match(md.get("node") or ""), any_of=INCLUDE
    )


def exclude_nodes(arg: Any) -> EventFilter:
    """Drop events from inside a matching node (``metadata["node"]``)."""
    match = _matcher(_patterns("exclude_nodes", arg))
    return EventFilter(accept=lambda kind, name, tags, md: not match(md.get("node") or ""))


@hookimpl
def headwater_event_filters() -> Mapping[str, Callable[[Any], EventFilter]]:
    """The standard named filters.

    Example::

        sorted(headwater.get_plugin_manager().registrations("headwater_event_filters"))
    """
    return {
        "include_names": include_names,
        "include_types": include_types,
        "include_tags": include_tags,
        "include_nodes": include_nodes,
        "exclude_names": exclude_names,
        "exclude_types": exclude_types,
        "exclude_tags": exclude_tags,
        "exclude_nodes": exclude_nodes,
    }
