"""headwater: run graphs of Python functions over a shared state, and stream everything.

Example::

    from typing import TypedDict
    from headwater import END, START, StateGraph

    class State(TypedDict):
        n: int

    async def double(state):
        return {"n": state["n"] * 2}

    graph = StateGraph(State)
    graph.add_node("double", double)
    graph.add_edge(START, "double")
    graph.add_edge("double", END)
    assert graph.compile().invoke({"n": 21}) == {"n": 42}
"""

from __future__ import annotations

from headwater import errors
from headwater._graph import StateGraph
from headwater._plugins import PluginManager, create_plugin_manager, get_plugin_manager
from headwater._pregel import DEFAULT_RECURSION_LIMIT, CompiledGraph
from headwater._types import END, START, Command, Send
from headwater.hookspecs import hookimpl
from headwater.messages import MessagesState
from headwater.retry import RetryPolicy
from headwater.runtime import StreamWriter, get_config, get_stream_writer, interrupt

__all__ = [
    "DEFAULT_RECURSION_LIMIT",
    "END",
    "START",
    "Command",
    "CompiledGraph",
    "MessagesState",
    "PluginManager",
    "RetryPolicy",
    "Send",
    "StateGraph",
    "StreamWriter",
    "create_plugin_manager",
    "errors",
    "get_config",
    "get_plugin_manager",
    "get_stream_writer",
    "hookimpl",
    "interrupt",
]
