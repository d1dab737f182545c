"""agent_langgraph.py ported to headwater: the same program with only its imports changed.

test_langgraph_port.py checks that it prints what the LangGraph original printed.
"""

import asyncio
import json

from hw_support import ScriptedChatModel

from headwater import END, START, MessagesState, StateGraph
from headwater.checkpoint import MemoryCheckpointer as InMemorySaver
from headwater.messages import AIMessage, HumanMessage, ToolMessage
from headwater.tools import ToolNode, tool, tools_condition


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@tool
def multiply(a: int, b: int) -> int:
    """Multiply two integers."""
    return a * b


tools = [add, multiply]
llm = ScriptedChatModel(
    name="assistant",
    script=[
        AIMessage(
            content="", tool_calls=[{"name": "add", "args": {"a": 2, "b": 3}, "id": "call_1"}]
        ),
        AIMessage(
            content="", tool_calls=[{"name": "multiply", "args": {"a": 5, "b": 4}, "id": "call_2"}]
        ),
        "The answer is 20.",
        AIMessage(
            content="", tool_calls=[{"name": "add", "args": {"a": 20, "b": 1}, "id": "call_3"}]
        ),
        "You are welcome; 20 + 1 is 21.",
    ],
).bind_tools(tools)


class State(MessagesState):
    turns: int


async def agent(state: State):
    reply = await llm.ainvoke(state["messages"])
    return {"messages": [reply], "turns": state.get("turns", 0) + 1}


def wrap_up(state: State):
    return {"messages": [AIMessage(content=f"(answered in {state['turns']} turns)")]}


def route(state: State):
    return tools_condition(state) if tools_condition(state) == "tools" else "wrap_up"


builder = StateGraph(State)
builder.add_node("agent", agent)
builder.add_node("tools", ToolNode(tools))
builder.add_node("wrap_up", wrap_up)
builder.add_edge(START, "agent")
builder.add_conditional_edges("agent", route, ["tools", "wrap_up"])
builder.add_edge("tools", "agent")
builder.add_edge("wrap_up", END)
graph = builder.compile(checkpointer=InMemorySaver())


def summary(message):
    calls = [call["name"] for call in getattr(message, "tool_calls", None) or []]
    return [message.type, message.content, calls, getattr(message, "tool_call_id", None)]


async def main():
    config = {"configurable": {"thread_id": "port-1"}}
    record = {"streamed": [], "events": []}

    question = {"messages": [HumanMessage(content="What is (2 + 3) * 4?")], "turns": 0}
    async for mode, chunk in graph.astream(
        question, config, stream_mode=["updates", "messages", "values"]
    ):
        if mode == "updates":
            for node, update in chunk.items():
                messages = (update or {}).get("messages", [])
                record["streamed"].append(["updates", node, [summary(m) for m in messages]])
        elif mode == "messages":
            message, _metadata = chunk
            if message.content:
                record["streamed"].append(["messages", type(message).__name__, message.content])
        else:
            record["streamed"].append(["values", len(chunk["messages"]), chunk.get("turns")])

    thanks = {"messages": [("user", "Thanks! And plus one?")]}
    async for event in graph.astream_events(thanks, config, include_types=["chat_model", "tool"]):
        kind = event["event"]
        if kind == "on_chat_model_stream":
            if event["data"]["chunk"].content:
                record["events"].append([kind, event["name"], event["data"]["chunk"].content])
        else:
            record["events"].append([kind, event["name"]])

    snapshot = await graph.aget_state(config)
    record["state"] = {
        "messages": [summary(m) for m in snapshot.values["messages"]],
        "turns": snapshot.values["turns"],
        "next": list(snapshot.next),
        "tool_messages": sum(isinstance(m, ToolMessage) for m in snapshot.values["messages"]),
    }
    record["sync_state_turns"] = graph.get_state(config).values["turns"]
    return record


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main()), indent=1))
