"""Plugins that load their heavy parts on first use, not when the plugin loads.

Every process that uses headwater loads every installed plugin, so a plugin's module
should import little. A chat-model adapter, say, pulls in the chat-model base and
later an SDK that takes seconds to import; its plugin module registers the provider and
exports the class by name only, and the adapter's module is imported the first time
either is used:

Example::

    # headwater_openai/__init__.py
    from headwater.lazy import lazy_attributes, lazy_chat_models

    __getattr__ = lazy_attributes(__name__, ChatOpenAI="headwater_openai._chat")
    headwater_chat_models = lazy_chat_models(openai="headwater_openai._chat:ChatOpenAI")
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

from headwater.errors import InvalidInputError
from headwater.hookspecs import hookimpl

__all__ = ["lazy_attributes", "lazy_chat_models"]


def lazy_attributes(module: str, **targets: str) -> Callable[[str], Any]:
    """A module ``__getattr__`` (PEP 562) importing each listed attribute on first use.

    ``targets`` maps an attribute name to the module that defines it under that name.
    Any other name is an ``AttributeError``, as for a module without ``__getattr__``.

    Example::

        __getattr__ = lazy_attributes(__name__, ChatOpenAI="headwater_openai._chat")
    """

    def __getattr__(name: str) -> Any:
        where = targets.get(name)
        if where is None:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        return getattr(importlib.import_module(where), name)

    return __getattr__


def _load(target: str) -> Any:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def lazy_chat_models(**providers: str) -> Callable[[], Mapping[str, Callable[..., Any]]]:
    """A ``headwater_chat_models`` hook implementation whose classes load on first use.

    ``providers`` maps a provider name to its chat-model class as ``"module:Class"``.
    ``init_chat_model("<provider>:<model>", **kwargs)`` then imports the module and
    makes ``Class(model="<model>", **kwargs)``. Bind the result to the hook's name in the
    plugin's module.

    Example::

        headwater_chat_models = lazy_chat_models(mistral="headwater_mistral._chat:ChatMistral")
    """
    for provider, target in providers.items():
        module, colon, name = target.partition(":")
        if not (colon and module and name.isidentifier()):
            raise InvalidInputError(
                f"lazy_chat_models({provider}=...) takes the chat model's class as "
                f"'module:Class', e.g. 'headwater_openai._chat:ChatOpenAI'; got {target!r}."
            )

    def factory(target: str) -> Callable[..., Any]:
        def make(model: str, **kwargs: Any) -> Any:
            return _load(target)(model=model, **kwargs)

        return make

    def headwater_chat_models() -> Mapping[str, Callable[..., Any]]:
        return {provider: factory(target) for provider, target in providers.items()}

    names = ", ".join(f"``{p}``" for p in providers)
    first = next(iter(providers), "<provider>")
    headwater_chat_models.__doc__ = (
        f"Register the chat-model provider(s) {names} for ``init_chat_model``: "
        f'``init_chat_model("{first}:<model>", **kwargs)`` makes '
        f'``{providers.get(first, "Class")}(model="<model>", **kwargs)``.\n\n'
        f'Example::\n\n    llm = init_chat_model("{first}:<model>")\n'
    )
    return hookimpl(headwater_chat_models)
