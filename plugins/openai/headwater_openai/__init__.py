"""headwater-openai: chat models on OpenAI-compatible APIs (OpenAI, vLLM, llama.cpp, Ollama).

:class:`ChatOpenAI` streams Chat Completions through the official ``openai`` SDK; the
plugin registers it as provider ``openai`` for :func:`headwater.models.init_chat_model`.
The API key comes from ``api_key=`` or the ``OPENAI_API_KEY`` environment variable, the
server from ``base_url=`` or ``OPENAI_BASE_URL`` (default: OpenAI's API).

Example::

    from headwater.models import init_chat_model

    llm = init_chat_model("openai:gpt-4o-mini")
    local = init_chat_model("openai:qwen2.5", base_url="http://localhost:11434/v1", api_key="x")

    def chat_node(state):
        return {"messages": [llm.invoke(state["messages"])]}  # tokens stream live
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from headwater.hookspecs import hookimpl
from headwater_openai._env import API_KEY_ENV, BASE_URL_ENV

if TYPE_CHECKING:
    from headwater_openai._chat import ChatOpenAI

__all__ = ["API_KEY_ENV", "BASE_URL_ENV", "ChatOpenAI", "headwater_chat_models"]


# The openai SDK takes seconds to import. Loading the plugin (which every process using
# headwater does) must not pay that: the SDK is imported on first use of ChatOpenAI.
def __getattr__(name: str) -> Any:
    if name == "ChatOpenAI":
        from headwater_openai._chat import ChatOpenAI

        return ChatOpenAI
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _make(model: str, **kwargs: Any) -> ChatOpenAI:
    from headwater_openai._chat import ChatOpenAI

    return ChatOpenAI(model=model, **kwargs)


@hookimpl
def headwater_chat_models() -> Mapping[str, Any]:
    """Register provider ``openai``: ``init_chat_model("openai:<model>", **kwargs)``.

    The keyword arguments are :class:`ChatOpenAI`'s (``api_key``, ``base_url``,
    ``temperature``, ``max_tokens``, ``timeout``, ``max_retries``, ``model_kwargs``, ...).

    Example::

        llm = init_chat_model("openai:gpt-4o-mini", temperature=0)
    """
    return {"openai": _make}
