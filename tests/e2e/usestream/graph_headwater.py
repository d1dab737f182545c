"""graph_langgraph.py ported to headwater: the same graph with only its imports changed.

headwater serve serves it to the useStream page of test_usestream.py.
"""

from hw_support import ScriptedChatModel

from headwater import END, START, MessagesState, StateGraph, interrupt
from headwater.messages import AIMessage, ToolMessage
from headwater.tools import ToolNode, tool, tools_condition

ANSWER = "Rivers start in the hills and flow downhill, gathering water on their way to the sea."


@tool
def lookup(topic: str) -> str:
    """Look a topic up in the field notes."""
    return f"Field notes on {topic}: water runs downhill, to the sea."


planner = ScriptedChatModel(
    name="agent",
    token_delay=0.04,
    script=[
        AIMessage(
            content="Let me check the field notes.",
            tool_calls=[{"name": "lookup", "args": {"topic": "rivers"}, "id": "call_lookup"}],
        )
    ],
)
writer = ScriptedChatModel(name="agent", token_delay=0.04, script=[ANSWER])


async def agent(state: MessagesState):
    llm = writer if isinstance(state["messages"][-1], ToolMessage) else planner
    return {"messages": [await llm.ainvoke(state["messages"])]}


def review(state: MessagesState):
    decision = interrupt({"question": "Publish this answer?", "draft": state["messages"][-1].text})
    return {"messages": [AIMessage(content=f"Published: {decision}.")]}


chat = StateGraph(MessagesState)
chat.add_node("agent", agent)
chat.add_node("tools", ToolNode([lookup]))
chat.add_node("review", review)
chat.add_edge(START, "agent")
chat.add_conditional_edges("agent", tools_condition, {"tools": "tools", END: "review"})
chat.add_edge("tools", "agent")
chat.add_edge("review", END)
