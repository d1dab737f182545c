"""The wire JSON of events (EventEncoder): the same document as encoding each whole."""

from __future__ import annotations

import json
from typing import Annotated, Any, TypedDict

import pytest
from headwater_server._runs import EventEncoder, encode_json

from headwater.messages import AIMessageChunk, add_messages


def event(data: Any, *, kind: str = "on_chat_model_stream", run_id: str = "r1") -> dict[str, Any]:
    return {
        "event": kind,
        "name": "chat_node",
        "run_id": run_id,
        "parent_ids": ["g", "t"],
        "tags": ["llm"],
        "metadata": {"node": "chat_node", "ls_provider": "fake"},
        "data": data,
    }


def expected(e: dict[str, Any], **extra: Any) -> Any:
    data = e["data"]
    payload = dict(data) if isinstance(data, dict) else {"value": data}
    payload["_event"] = {k: e[k] for k in ("event", "name", "run_id", "parent_ids", "tags",
                                           "metadata")} | extra  # fmt: skip
    return json.loads(encode_json(payload))


@pytest.mark.parametrize(
    "data",
    [
        {"chunk": AIMessageChunk(content="Hel")},
        {},  # no fields: the document is {"_event": ...}
        {"output": {"n": 1}, "_event": "a field of the same name is replaced"},
        "a plain value",
        [1, 2],
    ],
)
def test_each_event_encodes_as_its_data_fields_plus_event_meta(data: Any) -> None:
    e = event(data)
    assert json.loads(EventEncoder()(e)) == expected(e)


def test_meta_is_reused_per_type_and_run_and_extra_fields_reach_it() -> None:
    encode = EventEncoder({"attempt": 2})
    first, second = event({"chunk": "a"}), event({"chunk": "b"})
    other_run = event({"chunk": "c"}, run_id="r2")
    end = event({"output": "x"}, kind="on_chat_model_end")
    for e in (first, second, other_run, end):
        assert json.loads(encode(e)) == expected(e, attempt=2)
    assert len(encode._meta) == 3  # (stream, r1), (stream, r2), (end, r1)


# -- issue 12.6: what clients receive is plain JSON -------------------------------------------

# The keys of langchain_core 1.x messages' model_dump() (observed in the LangGraph 1.2
# reference environment), which JavaScript clients of LangGraph servers read.
LANGCHAIN_KEYS = {
    "human": {"content", "additional_kwargs", "response_metadata", "type", "name", "id"},
    "ai": {"content", "additional_kwargs", "response_metadata", "type", "name", "id",
           "tool_calls", "invalid_tool_calls", "usage_metadata"},
    "AIMessageChunk": {"content", "additional_kwargs", "response_metadata", "type", "name",
                       "id", "tool_calls", "invalid_tool_calls", "usage_metadata",
                       "tool_call_chunks", "chunk_position"},
    "tool": {"content", "additional_kwargs", "response_metadata", "type", "name", "id",
             "tool_call_id", "artifact", "status"},
}  # fmt: skip


def no_type_tags(value: Any) -> None:
    if isinstance(value, dict):
        assert "__type__" not in value, value
        for v in value.values():
            no_type_tags(v)
    elif isinstance(value, list):
        for v in value:
            no_type_tags(v)


def test_messages_tuples_and_errors_are_plain_json() -> None:
    from headwater.messages import AIMessage, HumanMessage, ToolCall, ToolMessage, Usage

    reply = AIMessage(
        content="",
        id="m1",
        tool_calls=(ToolCall(name="add", args={"a": 1}, id="c1"),),
        usage=Usage(input_tokens=3, output_tokens=4),
    )
    tool = ToolMessage(content="2", tool_call_id="c1")
    doc = json.loads(
        encode_json(
            {
                "pair": ("a", ("b", 1)),
                "messages": [HumanMessage(content="hi"), reply, tool],
                "chunk": AIMessageChunk(content="He"),
                "error": ValueError("boom"),
                "set": {3, 1},
            }
        )
    )
    no_type_tags(doc)
    assert doc["pair"] == ["a", ["b", 1]] and doc["set"] == [1, 3]
    human, ai, tool_dict = doc["messages"]
    for message in (human, ai, tool_dict, doc["chunk"]):
        assert set(message) == LANGCHAIN_KEYS[message["type"]]
    assert ai["tool_calls"] == [{"name": "add", "args": {"a": 1}, "id": "c1", "type": "tool_call"}]
    assert ai["usage_metadata"] == {"input_tokens": 3, "output_tokens": 4, "total_tokens": 7}
    assert doc["error"] == {"type": "ValueError", "message": "boom"}


class Chat(TypedDict):
    messages: Annotated[list[Any], add_messages]
    pair: tuple[str, int]


def test_what_the_server_sends_has_no_type_tags() -> None:
    import httpx
    from fixtures.loopback import serving
    from headwater_server import create_app

    from headwater import END, START, StateGraph
    from headwater.testing.fake import FakeChatModel

    llm = FakeChatModel(["Rivers flow"], cycle=True)

    async def talk(state: Chat) -> dict[str, Any]:
        return {"messages": [await llm.ainvoke(state["messages"])], "pair": ("x", 1)}

    graph = StateGraph(Chat)
    graph.add_node("talk", talk)
    graph.add_edge(START, "talk")
    graph.add_edge("talk", END)
    app = create_app(graph.compile(name="chat", checkpointer="memory:"))
    with serving(app) as url, httpx.Client(base_url=url, timeout=10) as client:
        for extra in ({}, {"stream_mode": ["messages", "updates", "values", "debug"]}):
            body = {"thread_id": "w", "input": {"messages": ["hi"]}, **extra}
            text = client.post("/workflow/stream", json=body).text
            datas = [
                json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")
            ]
            assert datas
            for data in datas:
                no_type_tags(data)
        state = client.get("/threads/w/state").json()
        no_type_tags(state)
        assert state["values"]["pair"] == ["x", 1]
        assert [m["type"] for m in state["values"]["messages"]] == ["human", "ai"] * 2
        no_type_tags(client.get("/threads/w/history").json())
        messages_mode = [json.loads(line[6:]) for line in text.splitlines()
                         if line.startswith("data: [")]  # fmt: skip
        chunk, metadata = messages_mode[0]
        assert chunk["type"] == "AIMessageChunk" and isinstance(metadata, dict)
