"""State schemas: which keys a graph's state has, and how writes to each key combine.

A schema is a ``TypedDict``, an attrs class or a dataclass. A key annotated
``Annotated[T, reducer]`` combines writes with ``reducer(current, new)``; any other key
takes the last value written (and two writes to it in one step are an error).
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import operator
import reprlib
import typing
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from headwater.errors import GraphValidationError, InvalidInputError, InvalidUpdateError

__all__ = ["Field", "Schema", "describe_schema"]

Reducer = Callable[[Any, Any], Any]

_MISSING: Any = object()


def _concat_all(current: Any, values: list[Any]) -> Any:
    """Fold ``operator.add`` over lists/tuples in one pass instead of n quadratic copies."""
    kind = type(current)
    if kind is list or kind is tuple:
        out = list(current)
        for value in values:
            if type(value) is not kind:
                break
            out.extend(value)
        else:
            return out if kind is list else tuple(out)
    result = current
    for value in values:
        result = operator.add(result, value)
    return result


# Reducers whose sequential fold has a faster equivalent (same result, one pass).
_BULK: dict[Reducer, Callable[[Any, list[Any]], Any]] = {
    operator.add: _concat_all,
    operator.concat: _concat_all,
}


@attrs.frozen
class Field:
    """One state key: its name, whether it has a reducer, and its default (if any)."""

    name: str
    reducer: Reducer | None
    default: Any = _MISSING
    empty: Callable[[], Any] | None = None  # the value a reducer starts from (list(), 0 …)

    def fold(self, current: Any, values: list[Any]) -> Any:
        """Apply ``values`` (already in deterministic order) on top of ``current``.

        An unset key starts from its type's empty value (``list()`` for ``list[...]``,
        ``0`` for ``int`` …) so every write goes through the reducer; for a type with
        no such value the first write is taken as it is.
        """
        reducer = self.reducer
        assert reducer is not None
        if current is _MISSING:
            if self.empty is not None:
                current = self.empty()
            else:
                current, values = values[0], values[1:]
                if not values:
                    return current
        try:
            bulk = _BULK.get(reducer)
            if bulk is not None and len(values) > 1:
                return bulk(current, values)
            for value in values:
                current = reducer(current, value)
        except Exception as exc:
            name = getattr(reducer, "__name__", type(reducer).__name__)
            exc.add_note(
                f"While applying reducer {name} of state key {self.name!r} to the value(s) "
                f"{values!r:.120}."
            )
            raise
        return current


_EMPTY_TYPES = (list, dict, set, frozenset, tuple, int, float, str)


_QUALIFIERS = frozenset({"Required", "NotRequired", "ReadOnly", "ClassVar", "Final"})


def _unwrap(hint: Any) -> Any:
    """``Annotated[T, r]`` out of ``NotRequired[Annotated[T, r]]`` (and Required, ReadOnly)."""
    while getattr(typing.get_origin(hint), "_name", None) in _QUALIFIERS:
        hint = typing.get_args(hint)[0]
    return hint


def _empty_of(hint: Any) -> Callable[[], Any] | None:
    """``list`` for ``Annotated[list[X], r]``, ``int`` for ``Annotated[int, r]`` …"""
    if typing.get_origin(hint) is not typing.Annotated:
        return None
    base = typing.get_args(hint)[0]
    origin = typing.get_origin(base) or base
    return origin if origin in _EMPTY_TYPES else None


def _reducer_of(key: str, hint: Any, owner: str) -> Reducer | None:
    if typing.get_origin(hint) is not typing.Annotated:
        return None
    reducers: list[Reducer] = [meta for meta in hint.__metadata__ if callable(meta)]
    if reducers:
        return reducers[-1]
    odd = [meta for meta in hint.__metadata__ if not isinstance(meta, str)]
    if odd:
        raise GraphValidationError(
            f"State key {key!r} of {owner} is Annotated with {odd[0]!r}, which is not a "
            "callable reducer. Expected Annotated[T, reducer] where reducer(current, new) "
            "returns the combined value, e.g. operator.add."
        )
    return None


@attrs.frozen
class Schema:
    """How a state schema looks to the scheduler: its fields and how to build node input."""

    name: str
    kind: str  # "typeddict" | "dataclass" | "attrs" | "dict"
    cls: Any
    fields: Mapping[str, Field]
    keys: frozenset[str]

    def make_input(self, values: dict[str, Any]) -> Any:
        """The object a node receives: a fresh dict, or an instance of the schema class."""
        if self.kind in ("typeddict", "dict"):
            return dict(values)
        try:
            return self.cls(**values)
        except TypeError:
            missing = [
                k for k, f in self.fields.items() if f.default is _MISSING and k not in values
            ]
            if not missing:
                raise
            raise InvalidInputError(
                f"The state has no value for required field(s) {missing} of {self.kind} "
                f"{self.name}, so nodes cannot receive a {self.name}: pass them in the input "
                "or give them defaults."
            ) from None

    def coerce_input(self, value: Any, graph: str) -> dict[str, Any]:
        """Check a run's input and return it as a plain dict of known keys."""
        if self.kind in ("dataclass", "attrs") and isinstance(value, self.cls):
            return {
                k: getattr(value, k)
                for k in self.fields
                if getattr(value, k, _MISSING) is not _MISSING
            }
        if not isinstance(value, Mapping):
            example = ", ".join(f"{k!r}: ..." for k in sorted(self.keys)[:3])
            raise InvalidInputError(
                f"Input of graph {graph!r} must be a mapping of state keys (like {{{example}}}) "
                f"or None to resume a thread; got {type(value).__name__}: "
                f"{reprlib.repr(value):.80}."
            )
        unknown = value.keys() - self.keys
        if unknown:
            raise InvalidInputError(
                f"Input of graph {graph!r} has unknown key(s) {sorted(map(str, unknown))}"
                f"{self._did_you_mean(unknown)}; the state schema {self.name} has keys "
                f"{sorted(self.keys)}."
            )
        return dict(value)

    def _did_you_mean(self, unknown: Any) -> str:
        for key in sorted(map(str, unknown)):
            close = difflib.get_close_matches(key, list(self.keys), n=1)
            if close:
                return f" (did you mean {close[0]!r} for {key!r}?)"
        return ""

    def defaults(self) -> dict[str, Any]:
        """Values every run starts from (dataclass/attrs defaults)."""
        out: dict[str, Any] = {}
        for f in self.fields.values():
            if f.default is not _MISSING:
                out[f.name] = f.default() if isinstance(f.default, _Factory) else f.default
        return out

    def check_update(self, node: str, update: Any) -> Mapping[str, Any]:
        """Validate a node's return value as a state update."""
        if not isinstance(update, Mapping):
            if inspect.isawaitable(update):
                if inspect.iscoroutine(update):
                    update.close()  # never awaited, on purpose: no RuntimeWarning
                raise InvalidUpdateError(
                    f"Node {node!r} returned an awaitable ({type(update).__name__}) instead of "
                    "an update: it is a sync function calling an async one. Make the node "
                    "`async def` and await the call."
                )
            raise InvalidUpdateError(
                f"Node {node!r} returned {type(update).__name__} ({update!r:.80}); expected a "
                f"mapping of state keys to new values (a dict like {{'key': value}}), a "
                "Command, or None for no update."
            )
        if not update.keys() <= self.keys:
            unknown = sorted(map(str, update.keys() - self.keys))
            raise InvalidUpdateError(
                f"Node {node!r} returned unknown state key(s) {unknown}"
                f"{self._did_you_mean(unknown)}; the state schema {self.name} has keys "
                f"{sorted(self.keys)}."
            )
        return update


@attrs.frozen
class _Factory:
    make: Callable[[], Any]

    def __call__(self) -> Any:
        return self.make()


def describe_schema(schema: Any) -> Schema:
    """Introspect a TypedDict, attrs class or dataclass into a :class:`Schema`."""
    name = getattr(schema, "__name__", repr(schema))
    if not isinstance(schema, type):
        raise GraphValidationError(
            f"StateGraph needs a state schema class (a TypedDict, attrs class or dataclass); "
            f"got {type(schema).__name__}: {schema!r:.80}."
        )
    try:
        hints = typing.get_type_hints(schema, include_extras=True)
    except Exception as exc:
        raise GraphValidationError(
            f"Cannot read the type hints of state schema {name}: {type(exc).__name__}: {exc}. "
            "Define every type it names before building the graph."
        ) from exc

    defaults: dict[str, Any] = {}
    if attrs.has(schema):
        kind = "attrs"
        for a in attrs.fields(schema):
            if a.default is attrs.NOTHING:
                continue
            if isinstance(a.default, attrs.Factory):  # type: ignore[arg-type]
                defaults[a.name] = _Factory(a.default.factory)
            else:
                defaults[a.name] = a.default
        names = [a.name for a in attrs.fields(schema)]
    elif dataclasses.is_dataclass(schema):
        kind = "dataclass"
        names = []
        for f in dataclasses.fields(schema):
            names.append(f.name)
            if f.default is not dataclasses.MISSING:
                defaults[f.name] = f.default
            elif f.default_factory is not dataclasses.MISSING:
                defaults[f.name] = _Factory(f.default_factory)
    elif typing.is_typeddict(schema):
        kind = "typeddict"
        names = list(hints)
    else:
        raise GraphValidationError(
            f"State schema {name} is not a TypedDict, attrs class or dataclass. Declare it as "
            "`class State(TypedDict): ...`, an @attrs.define class or a @dataclass."
        )
    if not names:
        raise GraphValidationError(f"State schema {name} has no keys; add at least one field.")
    fields = {
        n: Field(
            n,
            _reducer_of(n, _unwrap(hints.get(n)), name),
            defaults.get(n, _MISSING),
            _empty_of(_unwrap(hints.get(n))),
        )
        for n in names
    }
    return Schema(name=name, kind=kind, cls=schema, fields=fields, keys=frozenset(fields))


MISSING = _MISSING
