"""JSON-safe serialisation of state, messages, events and checkpoints. Never pickle.

Plain JSON values pass through unchanged. Everything else becomes a tagged object
``{"__type__": name, ...}``: tuples, sets, bytes, dates, non-string-keyed dicts and the
attrs classes headwater registers (messages, documents, ``Send``, ``Usage`` …), plus any
type a plugin registers through ``headwater_serde_types``. Decoding rebuilds only those
registered names; an unknown tag, a malformed value or anything that is not JSON raises
:class:`~headwater.errors.SerdeError`. Nothing read back can execute code.

Values may nest :data:`MAX_DEPTH` levels of JSON containers deep (a tuple takes two: it is
``{"__type__": "tuple", "items": [...]}``); deeper is a :class:`~headwater.errors.SerdeError`
on writing and on reading, never a ``RecursionError``. Strings are stored as JSON escapes,
so lone surrogates (``"\\ud800"``) round-trip; a high surrogate directly followed by a low
one reads back as the one character the pair encodes, as in any JSON.

Example::

    from headwater import serde
    from headwater.messages import HumanMessage

    data = serde.dumps({"messages": [HumanMessage(content="hi", id="1")], "seen": {1, 2}})
    assert serde.loads(data) == {"messages": [HumanMessage(content="hi", id="1")], "seen": {1, 2}}
"""

from __future__ import annotations

import base64
import datetime
import json
import types
import typing
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import cattrs

from headwater._plugins import PluginManager, create_plugin_manager, get_plugin_manager
from headwater.errors import PluginError, SerdeError

__all__ = [
    "FORMAT_VERSION",
    "MAX_DEPTH",
    "check_depth",
    "decode",
    "dumps",
    "encode",
    "loads",
    "register_type",
]

FORMAT_VERSION = 1
"""Version of the encoded form; stored with every checkpoint."""

MAX_DEPTH = 256
"""How deep encoded values may nest JSON containers (objects and arrays).

Far beyond any real state, and far enough under Python's recursion limit that encoding
and decoding never hit it, whatever the depth of the stack they run on.

Example::

    check_depth(value)  # SerdeError if it would nest deeper than MAX_DEPTH
"""

TAG = "__type__"

_by_name: dict[str, type] = {}
_by_type: dict[type, str] = {}
_plugins_loaded = False


def _strict(value: Any, kind: type) -> Any:
    if type(value) is kind or (kind is float and type(value) is int):
        return value
    raise TypeError(f"expected {kind.__name__}, got {type(value).__name__} {value!r:.40}")


def _union(value: Any, hint: Any) -> Any:
    for member in typing.get_args(hint):
        if member is Any or (member is type(None) and value is None):
            return value
        origin = typing.get_origin(member) or member
        if isinstance(origin, type) and isinstance(value, origin):
            return value
    raise TypeError(f"expected {hint}, got {type(value).__name__} {value!r:.40}")


def _is_union(hint: Any) -> bool:
    origin: Any = typing.get_origin(hint)
    return origin is typing.Union or origin is types.UnionType


def _make_converter() -> cattrs.Converter:
    """The one converter: registered attrs classes from decoded fields, strictly typed.

    Nested values arrive already rebuilt by :func:`_decode`; the converter checks each
    field's type (no coercion: a corrupted ``content`` of 5 is rejected, not turned into
    "5") and refuses unknown fields.
    """
    converter = cattrs.Converter(forbid_extra_keys=True)
    for kind in (str, int, float, bool):
        converter.register_structure_hook(kind, _strict)
    converter.register_structure_hook_func(_is_union, _union)
    converter.register_structure_hook_func(
        lambda t: t in _by_type,
        lambda v, t: v if isinstance(v, t) else converter.structure_attrs_fromdict(v, t),
    )
    return converter


_converter = _make_converter()


def register_type(cls: type, name: str | None = None) -> type:
    """Allow an attrs class to be encoded and rebuilt, under ``name`` (its class name).

    Plugins should return their types from the ``headwater_serde_types`` hook instead of
    calling this directly.

    Example::

        @attrs.frozen
        class Citation:
            url: str

        register_type(Citation)
    """
    if not attrs.has(cls):
        raise SerdeError(f"Only attrs classes can be registered for serde; {cls!r} is not one.")
    key = name or cls.__name__
    existing = _by_name.get(key)
    if existing is not None and existing is not cls:
        raise SerdeError(
            f"Serde type name {key!r} is already registered for {existing.__module__}."
            f"{existing.__qualname__}; register {cls.__qualname__} under another name."
        )
    attrs.resolve_types(cls)
    _by_name[key] = cls
    _by_type[cls] = key
    return cls


def _load_types() -> None:
    """Register what ``headwater_serde_types`` returns: the core's own types (messages,
    documents, ``Send``, checkpoint records …, from the built-in ``headwater.checkpointers``
    plugin) and every plugin's, once per process, through the process-wide manager."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    try:
        pm = get_plugin_manager()
    except PluginError:  # a broken plugin: the core's own types still round-trip
        _register_from(create_plugin_manager(autoload=False))
        raise
    _register_from(pm)


def _register_from(pm: PluginManager) -> None:
    for _plugin, registered in pm.call_each("headwater_serde_types"):
        for name, cls in (registered or {}).items():
            register_type(cls, name)


def encode(value: Any, _path: str = "$") -> Any:
    """Turn ``value`` into plain JSON data (dicts, lists, str, numbers, bool, None).

    Raises :class:`~headwater.errors.SerdeError` naming the type and where it was.

    Example::

        encode((1, 2))  # {"__type__": "tuple", "items": [1, 2]}
    """
    _load_types()
    try:
        return _fast(value, 1)
    except _Unsupported:
        pass
    try:
        return _encode(value, _path, 1)  # walk again, tracking the path, to name the culprit
    except RecursionError:  # a stack already deep: a clear error all the same
        raise _too_deep(_path, "the stack's remaining depth") from None


class _Unsupported(Exception):
    pass


_PLAIN = (str, int, bool, type(None))
_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _fields_of(kind: type) -> tuple[str, ...]:
    names = _FIELD_NAMES.get(kind)
    if names is None:
        names = _FIELD_NAMES[kind] = tuple(f.name for f in attrs.fields(kind))
    return names


def _fast(value: Any, depth: int) -> Any:
    """The common case without path bookkeeping; raises _Unsupported on anything odd.

    ``depth`` counts the JSON containers ``value`` is encoded in, its own included."""
    kind = type(value)
    if kind in _PLAIN:
        return value
    if depth > MAX_DEPTH:
        raise _Unsupported
    deeper = depth + 1
    if kind is dict:
        if TAG in value:
            raise _Unsupported
        out = {}
        for k, v in value.items():
            if type(k) is not str:
                raise _Unsupported
            out[k] = v if type(v) in _PLAIN else _fast(v, deeper)
        return out
    if kind is list:
        return [v if type(v) in _PLAIN else _fast(v, deeper) for v in value]
    name = _by_type.get(kind)
    if name is not None:
        out = {TAG: name}
        for field in _fields_of(kind):
            v = getattr(value, field)
            out[field] = v if type(v) in _PLAIN else _fast(v, deeper)
        return out
    if kind is tuple:
        deeper += 1  # {"__type__": "tuple", "items": [...]}
        return {
            TAG: "tuple",
            "items": [v if type(v) in _PLAIN else _fast(v, deeper) for v in value],
        }
    if kind is float and value == value and value not in (float("inf"), float("-inf")):
        return value
    raise _Unsupported


def _too_deep(path: str, limit: str) -> SerdeError:
    shown = path if len(path) <= 80 else f"{path[:60]}…{path[-12:]}"
    return SerdeError(
        f"Value at {shown} is nested deeper than {limit} (serde.MAX_DEPTH = {MAX_DEPTH} levels "
        "of JSON objects and arrays): headwater does not store or read such values. Flatten "
        "it, or store it as a string."
    )


def _encode(value: Any, path: str, depth: int) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return {TAG: "float", "repr": repr(value)}
        return value
    if depth > MAX_DEPTH:
        raise _too_deep(path, f"{MAX_DEPTH} levels")
    d = depth + 1
    kind = type(value)
    if kind is list:
        return [_encode(v, f"{path}[{i}]", d) for i, v in enumerate(value)]
    if kind is dict or (isinstance(value, Mapping) and not attrs.has(kind)):
        if all(isinstance(k, str) for k in value) and TAG not in value:
            return {k: _encode(v, f"{path}.{k}", d) for k, v in value.items()}
        return {
            TAG: "dict",
            "items": [
                [_encode(k, path, d + 2), _encode(v, f"{path}[{k!r}]", d + 2)]
                for k, v in value.items()
            ],
        }
    name = _by_type.get(kind)
    if name is not None:
        out: dict[str, Any] = {TAG: name}
        for field in attrs.fields(kind):
            out[field.name] = _encode(getattr(value, field.name), f"{path}.{field.name}", d)
        return out
    if kind is tuple:
        return {
            TAG: "tuple",
            "items": [_encode(v, f"{path}[{i}]", d + 1) for i, v in enumerate(value)],
        }
    if kind in (set, frozenset):
        items = [_encode(v, f"{path}{{}}", d + 1) for v in value]
        try:
            items.sort(key=lambda x: json.dumps(x, sort_keys=True))
        except TypeError:
            pass
        return {TAG: kind.__name__, "items": items}
    if kind is bytes:
        return {TAG: "bytes", "b64": base64.b64encode(value).decode("ascii")}
    if kind is datetime.datetime:
        return {TAG: "datetime", "iso": value.isoformat()}
    if kind is datetime.date:
        return {TAG: "date", "iso": value.isoformat()}
    if kind is uuid.UUID:
        return {TAG: "uuid", "hex": value.hex}
    if isinstance(value, BaseException):
        return {TAG: "error", "class": kind.__name__, "message": str(value)}
    raise SerdeError(
        f"Cannot serialise {kind.__module__}.{kind.__qualname__} at {path}: headwater stores "
        "plain JSON data, tuples, sets, bytes, dates, UUIDs and registered attrs classes "
        "(messages, documents …). Convert it to one of those, or register an attrs class "
        "through the headwater_serde_types hook."
    )


def decode(data: Any, _path: str = "$") -> Any:
    """Rebuild a value from :func:`encode` output; only registered types are rebuilt.

    Example::

        decode({"__type__": "tuple", "items": [1, 2]})  # (1, 2)
    """
    _load_types()
    try:
        return _decode(data, _path, 1)
    except RecursionError:  # a stack already deep: a clear error all the same
        raise _too_deep(_path, "the stack's remaining depth") from None


_DECODERS: dict[str, Callable[[dict[str, Any], str, int], Any]] = {
    "tuple": lambda d, p, n: tuple(_decode(v, p, n + 1) for v in d["items"]),
    "set": lambda d, p, n: {_decode(v, p, n + 1) for v in d["items"]},
    "frozenset": lambda d, p, n: frozenset(_decode(v, p, n + 1) for v in d["items"]),
    "dict": lambda d, p, n: {_decode(k, p, n + 2): _decode(v, p, n + 2) for k, v in d["items"]},
    "bytes": lambda d, p, n: base64.b64decode(d["b64"], validate=True),
    "datetime": lambda d, p, n: datetime.datetime.fromisoformat(d["iso"]),
    "date": lambda d, p, n: datetime.date.fromisoformat(d["iso"]),
    "uuid": lambda d, p, n: uuid.UUID(hex=d["hex"]),
    "float": lambda d, p, n: (
        float(d["repr"]) if d["repr"] in ("nan", "inf", "-inf") else _bad(d, p)
    ),
    "error": lambda d, p, n: RemoteError(str(d["class"]), str(d["message"])),
}


def _bad(data: Any, path: str) -> Any:
    raise SerdeError(f"Malformed value at {path}: {data!r:.120}.")


def _decode(data: Any, path: str, depth: int) -> Any:
    """Rebuild ``data``, the JSON value at ``path``, nested in ``depth`` containers (its
    own included)."""
    if data is None or isinstance(data, bool | int | float | str):
        return data
    if depth > MAX_DEPTH:
        raise _too_deep(path, f"{MAX_DEPTH} levels")
    d = depth + 1
    if isinstance(data, list):
        return [_decode(v, f"{path}[{i}]", d) for i, v in enumerate(data)]
    if not isinstance(data, dict):
        raise SerdeError(f"Malformed value at {path}: {type(data).__name__} is not JSON data.")
    tag = data.get(TAG)
    if tag is None:
        return {k: _decode(v, f"{path}.{k}", d) for k, v in data.items()}
    if not isinstance(tag, str):
        raise SerdeError(f"Malformed type tag at {path}: {tag!r:.60}.")
    decoder = _DECODERS.get(tag)
    try:
        if decoder is not None:
            return decoder(data, path, depth)
        cls = _by_name.get(tag)
        if cls is None:
            raise SerdeError(
                f"Unknown type {tag!r} at {path}: only headwater's registered types are "
                f"rebuilt (known: {', '.join(sorted(_by_name))}). The data was written by "
                "something else, or a plugin that registered this type is not installed."
            )
        kwargs = {k: _decode(v, f"{path}.{k}", d) for k, v in data.items() if k != TAG}
        unknown = set(kwargs) - {a.alias for a in attrs.fields(cls)}
        if unknown:
            raise SerdeError(
                f"Malformed {tag!r} value at {path}: unknown field(s) {sorted(unknown)}."
            )
        return _converter.structure_attrs_fromdict(kwargs, cls)
    except SerdeError:
        raise
    except Exception as exc:
        detail = "; ".join(str(e) for e in getattr(exc, "exceptions", ())) or str(exc)
        raise SerdeError(f"Malformed {tag!r} value at {path}: {detail}.") from exc


class RemoteError(Exception):
    """An exception that was serialised (its class name and message), rebuilt as data.

    Example::

        decode({"__type__": "error", "class": "ValueError", "message": "bad"})
        # RemoteError('ValueError: bad')
    """

    def __init__(self, cls: str, message: str) -> None:
        super().__init__(f"{cls}: {message}")
        self.cls = cls
        self.message = message

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RemoteError) and (self.cls, self.message) == (
            other.cls,
            other.message,
        )

    def __hash__(self) -> int:
        return hash((self.cls, self.message))


def dumps(value: Any) -> bytes:
    """Encode ``value`` as compact UTF-8 JSON bytes.

    Example::

        dumps({"a": (1, 2)})  # b'{"a":{"__type__":"tuple","items":[1,2]}}'
    """
    encoded = encode(value)
    try:
        return json.dumps(encoded, separators=(",", ":"), allow_nan=False).encode()
    except RecursionError:  # within MAX_DEPTH, but the stack was already deep
        raise _too_deep("$", "the stack's remaining depth") from None


def loads(data: bytes | str) -> Any:
    """Decode bytes written by :func:`dumps`; malformed input raises SerdeError.

    Example::

        loads(b'{"a":{"__type__":"tuple","items":[1,2]}}')  # {"a": (1, 2)}
    """
    try:
        parsed = json.loads(data)
    except RecursionError:
        raise _too_deep("$", "what JSON parsing allows") from None
    except (ValueError, TypeError) as exc:
        raise SerdeError(
            f"Not valid JSON: {exc}. (headwater never reads pickle or other formats.)"
        ) from exc
    return decode(parsed)


def check_depth(value: Any, path: str = "$") -> None:
    """Raise :class:`~headwater.errors.SerdeError` if ``value`` would be encoded more than
    :data:`MAX_DEPTH` JSON containers deep (without encoding it, and without recursion).

    Example::

        deep = []
        for _ in range(1000):
            deep = [deep]
        check_depth(deep)  # SerdeError: Value at $[0][0]… is nested deeper than 256 levels
    """
    todo: list[tuple[Any, int, Any]] = [(value, 1, None)]  # (item, depth, (parent, key))
    while todo:
        item, depth, where = todo.pop()
        kind = type(item)
        if kind in _PLAIN or kind is float:
            continue
        if depth > MAX_DEPTH:
            keys = []
            while where is not None:  # the path, rendered only now
                where, key = where
                keys.append(key)
            shown = "".join(f".{k}" if isinstance(k, str) else f"[{k!r}]" for k in reversed(keys))
            raise _too_deep(path + shown, f"{MAX_DEPTH} levels")
        if kind is dict or isinstance(item, Mapping):
            plain = all(type(k) is str for k in item) and TAG not in item
            extra = 1 if plain else 3  # {"__type__": "dict", "items": [[k, v]]}
            todo.extend((v, depth + extra, (where, k)) for k, v in item.items())
        elif kind is list:
            todo.extend((v, depth + 1, (where, i)) for i, v in enumerate(item))
        elif kind in (tuple, set, frozenset):
            todo.extend((v, depth + 2, (where, i)) for i, v in enumerate(item))
        elif attrs.has(kind):
            fields = attrs.fields(kind)
            todo.extend((getattr(item, f.name), depth + 1, (where, f.name)) for f in fields)
