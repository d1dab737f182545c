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

from typing import TYPE_CHECKING

from headwater.lazy import lazy_attributes, lazy_chat_models
from headwater_openai._env import API_KEY_ENV, BASE_URL_ENV

if TYPE_CHECKING:
    from headwater_openai._chat import ChatOpenAI

__all__ = ["API_KEY_ENV", "BASE_URL_ENV", "ChatOpenAI", "headwater_chat_models"]


# Loading the plugin (which every process using headwater does) must stay cheap: the
# adapter's module loads on first use of ChatOpenAI, and the openai SDK, which takes seconds
# to import, on the first model call.
__getattr__ = lazy_attributes(__name__, ChatOpenAI="headwater_openai._chat")
headwater_chat_models = lazy_chat_models(openai="headwater_openai._chat:ChatOpenAI")
