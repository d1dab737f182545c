"""headwater-anthropic: chat models on Anthropic's Messages API (Claude).

:class:`ChatAnthropic` streams the Messages API through the official ``anthropic`` SDK;
the plugin registers it as provider ``anthropic`` for
:func:`headwater.models.init_chat_model`. The API key comes from ``api_key=`` or the
``ANTHROPIC_API_KEY`` environment variable, the server from ``base_url=`` or
``ANTHROPIC_BASE_URL`` (default: Anthropic's API).

Example::

    from headwater.models import init_chat_model

    llm = init_chat_model("anthropic:claude-sonnet-4-5", max_tokens=1024)

    def chat_node(state):
        return {"messages": [llm.invoke(state["messages"])]}  # tokens stream live
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from headwater.lazy import lazy_attributes, lazy_chat_models
from headwater_anthropic._env import API_KEY_ENV, BASE_URL_ENV, DEFAULT_MAX_TOKENS

if TYPE_CHECKING:
    from headwater_anthropic._chat import ChatAnthropic

__all__ = [
    "API_KEY_ENV",
    "BASE_URL_ENV",
    "ChatAnthropic",
    "DEFAULT_MAX_TOKENS",
    "headwater_chat_models",
]


# Loading the plugin (which every process using headwater does) must stay cheap: the
# adapter's module loads on first use of ChatAnthropic, and the anthropic SDK, which takes seconds
# to import, on the first model call.
__getattr__ = lazy_attributes(__name__, ChatAnthropic="headwater_anthropic._chat")
headwater_chat_models = lazy_chat_models(anthropic="headwater_anthropic._chat:ChatAnthropic")
