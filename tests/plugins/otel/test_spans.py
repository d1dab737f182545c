"""Runs become OpenTelemetry spans that a real OTLP/HTTP receiver gets: the span tree,
the GenAI attributes, errors, interrupts, cancellation, parallel nodes and subgraphs."""

from __future__ import annotations

import json
from typing import Annotated, Any, TypedDict

import anyio
import headwater_otel
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from headwater import END, START, Command, StateGraph, interrupt
from headwater.errors import InvalidInputError
from headwater.messages import add_messages
from headwater.testing.fake import FakeChatModel, ScriptedError
from tests.fixtures.otlp import OtlpReceiver, ReceivedSpan, SpanTree
from tests.plugins.otel._graphs import RAG_TREE, build_rag

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
SPAN_ID = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{SPAN_ID}-01"


class Chat(TypedDict, total=False):
    messages: Annotated[list[Any], add_messages]


def received(receiver: tuple[OtlpReceiver, str], provider: TracerProvider, count: int) -> SpanTree:
    """The spans the receiver got, once at least ``count`` of them arrived."""
    provider.force_flush()
    return SpanTree(receiver[0].wait_for(lambda spans: len(spans) >= count))


def one_model_graph(llm: Any, name: str = "g", node: str = "talk") -> Any:
    async def talk(state: Chat) -> dict[str, Any]:
        return {"messages": [await llm.ainvoke(state["messages"])]}

    graph = StateGraph(Chat)
    graph.add_node(node, talk)
    graph.add_edge(START, node)
    graph.add_edge(node, END)
    return graph.compile(name=name)


def assert_within(child: ReceivedSpan, parent: ReceivedSpan) -> None:
    assert parent.start <= child.start <= child.end <= parent.end, (child, parent)


@pytest.mark.anyio
async def test_a_run_with_a_model_a_tool_and_a_retriever_is_one_span_tree(
    receiver: tuple[OtlpReceiver, str], provider: TracerProvider
) -> None:
    result = await build_rag().ainvoke(
        {"messages": ["What is 2 plus 3?"]}, {"configurable": {"thread_id": "t-1"}}
    )
    assert result["messages"][-1].content == "The sum is 5."
    tree = received(receiver, provider, len(RAG_TREE))
    assert tree.render() == RAG_TREE
    assert len({s.trace_id for s in tree.spans}) == 1
    assert {s.resource["service.name"] for s in tree.spans} == {"otel-tests"}
    assert {s.scope for s in tree.spans} == {"headwater"}

    root = tree.roots()[0]
    assert root.parent_id == ""
    assert root.kind == "INTERNAL"
    assert root.attributes["gen_ai.operation.name"] == "invoke_workflow"
    assert root.attributes["gen_ai.agent.name"] == "rag"
    assert root.attributes["headwater.thread_id"] == "t-1"
    assert root.attributes["gen_ai.conversation.id"] == "t-1"
    assert all(s.status == "UNSET" for s in tree.spans)

    retrieve, agent, tools, agent_again = tree.children(root)
    assert agent.attributes["headwater.node"] == "agent"
    assert agent.attributes["headwater.step"] == 2
    assert agent_again.attributes["headwater.step"] == 4
    assert agent.attributes["headwater.triggers"] == ["retrieve"]
    assert agent.attributes["headwater.thread_id"] == "t-1"

    first_chat, second_chat = tree.children(agent)[0], tree.children(agent_again)[0]
    for chat in (first_chat, second_chat):
        assert chat.kind == "CLIENT"
        assert chat.attributes["gen_ai.operation.name"] == "chat"
        assert chat.attributes["gen_ai.provider.name"] == "fake"
        assert chat.attributes["gen_ai.request.model"] == "fake-model"
        assert chat.attributes["gen_ai.request.stream"] is True
        assert chat.attributes["gen_ai.conversation.id"] == "t-1"
        assert chat.attributes["headwater.node"] == "agent"
    assert second_chat.attributes["gen_ai.usage.input_tokens"] == 6
    assert second_chat.attributes["gen_ai.usage.output_tokens"] == 4
    first_token = second_chat.event("headwater.first_token")
    assert second_chat.start <= first_token.time <= second_chat.end
    ttft = first_token.attributes["gen_ai.response.time_to_first_chunk"]
    assert ttft == second_chat.attributes["gen_ai.response.time_to_first_chunk"]
    assert 0 <= ttft * 1e9 <= second_chat.end - second_chat.start
    # The tool-calling answer's first "token" is its tool call: it has a first token too.
    assert first_chat.event("headwater.first_token")

    (tool,) = tree.children(tools)
    assert tool.kind == "INTERNAL"
    assert tool.attributes["gen_ai.operation.name"] == "execute_tool"
    assert tool.attributes["gen_ai.tool.name"] == "add"
    assert tool.attributes["gen_ai.tool.type"] == "function"
    (retrieval,) = tree.children(retrieve)
    assert retrieval.kind == "CLIENT"
    assert retrieval.attributes["gen_ai.operation.name"] == "retrieval"
    assert retrieval.attributes["gen_ai.data_source.id"] == "notes"
    assert retrieval.attributes["headwater.retrieval.documents.count"] == 1

    for span in tree.spans:  # every child lies within its parent's time
        if span.parent_id in tree.by_id:
            assert_within(span, tree.by_id[span.parent_id])
    # Contents are off by default: no message, argument, result, query or document.
    recorded = {key for s in tree.spans for key in s.attributes}
    assert not recorded & {
        "gen_ai.input.messages",
        "gen_ai.output.messages",
        "gen_ai.tool.call.arguments",
        "gen_ai.tool.call.result",
        "gen_ai.retrieval.query.text",
        "gen_ai.retrieval.documents",
    }


@pytest.mark.anyio
async def test_contents_are_recorded_when_switched_on(
    receiver: tuple[OtlpReceiver, str], provider: TracerProvider
) -> None:
    headwater_otel.enable(provider, capture_content=True)
    await build_rag().ainvoke({"messages": ["What is 2 plus 3?"]})
    tree = received(receiver, provider, len(RAG_TREE))
    chats = [s for s in tree.spans if s.name == "chat fake-model"]
    asked = json.loads(chats[0].attributes["gen_ai.input.messages"])
    assert asked == [{"role": "user", "parts": [{"type": "text", "content": "What is 2 plus 3?"}]}]
    answered = json.loads(chats[0].attributes["gen_ai.output.messages"])
    assert answered == [
        {
            "role": "assistant",
            "parts": [
                {"type": "tool_call", "id": "c1", "name": "add", "arguments": {"a": 2, "b": 3}}
            ],
        }
    ]
    history = json.loads(chats[1].attributes["gen_ai.input.messages"])
    assert [m["role"] for m in history] == ["user", "assistant", "tool"]
    assert history[2]["parts"] == [{"type": "tool_call_response", "id": "c1", "result": "5"}]
    final = json.loads(chats[1].attributes["gen_ai.output.messages"])
    assert final[0]["parts"] == [{"type": "text", "content": "The sum is 5."}]
    tool = tree.named("execute_tool add")
    assert json.loads(tool.attributes["gen_ai.tool.call.arguments"]) == {"a": 2, "b": 3}
    assert tool.attributes["gen_ai.tool.call.result"] == "5"
    retrieval = tree.named("retrieval notes")
    assert retrieval.attributes["gen_ai.retrieval.query.text"] == "What is 2 plus 3?"
    assert json.loads(retrieval.attributes["gen_ai.retrieval.documents"]) == [
        {"id": "1", "content": "Two plus three is five."}
    ]


@pytest.mark.anyio
async def test_huge_contents_are_cut(
    receiver: tuple[OtlpReceiver, str], provider: TracerProvider
) -> None:
    headwater_otel.enable(provider, capture_content=True)
    app = one_model_graph(FakeChatModel(["ok"]))
    await app.ainvoke({"messages": ["word " * 100_000]})
    tree = received(receiver, provider, 3)
    asked = json.loads(tree.named("chat fake-model").attributes["gen_ai.input.messages"])
    content = asked[0]["parts"][0]["content"]
    assert len(content) < 17_000
    assert content.endswith("more characters]")


@pytest.mark.anyio
async def test_a_node_that_raises_marks_its_span_and_the_runs_as_errors(
    receiver: tuple[OtlpReceiver, str], provider: TracerProvider
) -> None:
    async def boom(state: Chat) -> dict[str, Any]:
        raise ValueError("the input was bad")

    graph = StateGraph(Chat)
    graph.add_node("boom", boom)
    graph.add_edge(START, "boom")
    graph.add_edge("boom", END)
    with pytest.raises(ValueError, match="the input was bad"):
        await graph.compile(name="failing").ainvoke({"messages": ["hi"]})
    tree = received(receiver, provider, 2)
    assert tree.render() == ["invoke_workflow failing", "  boom"]
    for span in (tree.named("boom"), tree.named("invoke_workflow failing")):
        assert span.status == "ERROR"
        assert span.status_message == "ValueError: the input was bad"
        assert span.attributes["error.type"] == "ValueError"
        exception = span.event("exception")
        assert exception.attributes["exception.type"] == "ValueError"
        assert exception.attributes["exception.message"] == "the input was bad"
        assert "boom" in exception.attributes["exception.stacktrace"]


@pytest.mark.anyio
async def test_a_model_that_fails_mid_stream_is_an_error_span(
    receiver: tuple[OtlpReceiver, str], provider: TracerProvider
) -> None:
    llm = FakeChatModel([ScriptedError(TimeoutError("slow upstream"), after=2, partial="a b c")])
    with pytest.raises(TimeoutError):
        await one_model_graph(llm).ainvoke({"messages": ["hi"]})
    tree = received(receiver, provider, 3)
    chat = tree.named("chat fake-model")
    assert chat.status == "ERROR"
    assert chat.attributes["error.type"] == "TimeoutError"
    assert chat.event("headwater.first_token")  # two tokens came before the failure
    assert chat.event("exception").attributes["exception.message"] == "slow upstream"


@pytest.mark.anyio
async def test_an_interrupt_is_a_pause_on_the_node_and_run_spans_not_an_error(
    receiver: tuple[OtlpReceiver, str], provider: TracerProvider
) -> None:
    async def review(state: Chat) -> dict[str, Any]:
        answer = interrupt({"question": "Publish?"})
        return {"messages": [f"answer: {answer}"]}

    graph = StateGraph(Chat)
    graph.add_node("review", review)
    graph.add_edge(START, "review")
    graph.add_edge("review", END)
    app = graph.compile(checkpointer="memory:", name="approval")
    config = {"configurable": {"thread_id": "t-2"}}
    paused = await app.ainvoke({"messages": ["draft"]}, config)
    assert "__interrupt__" in paused
    tree = received(receiver, provider, 2)
    assert tree.render() == ["invoke_workflow approval", "  review"]
    for span in tree.spans:
        assert span.status == "UNSET"
        assert span.attributes["headwater.interrupted"] is True
        event = span.event("headwater.interrupt")
        assert event.attributes["headwater.node"] == "review"
        assert event.attributes["headwater.interrupt.id"]
        assert "headwater.interrupt.value" not in event.attributes  # content is off

    resumed = await app.ainvoke(Command(resume="yes"), config)
    assert resumed["messages"][-1].content == "answer: yes"
    tree = received(receiver, provider, 4)
    runs = [s for s in tree.spans if s.name == "invoke_workflow approval"]
    assert len(runs) == 2 and runs[0].trace_id != runs[1].trace_id
    assert "headwater.interrupted" not in runs[1].attributes


@pytest.mark.anyio
async def test_a_cancelled_run_closes_every_span(
    receiver: tuple[OtlpReceiver, str], provider: TracerProvider
) -> None:
    app = one_model_graph(FakeChatModel([" ".join(["tok"] * 1000)], token_delay=0.001))
    async with anyio.create_task_group():
        stream = app.astream({"messages": ["hi"]}, stream_mode="messages")
        async for _chunk in stream:
            break  # the consumer leaves after the first token: the run is cancelled
        await stream.aclose()
    tree = received(receiver, provider, 3)
    assert tree.render() == ["invoke_workflow g", "  talk", "    chat fake-model"]
    for span in tree.spans:
        assert span.end >= span.start
        assert span.status == "ERROR"
        assert span.status_message == "cancelled"
        assert span.attributes["headwater.cancelled"] is True


@pytest.mark.anyio
async def test_parallel_nodes_are_sibling_spans_with_their_own_model_calls(
    receiver: tuple[OtlpReceiver, str], provider: TracerProvider
) -> None:
    left, right = FakeChatModel(["left"], model="m-left"), FakeChatModel(["right"], model="m-right")

    async def ask_left(state: Chat) -> dict[str, Any]:
        return {"messages": [await left.ainvoke(state["messages"])]}

    def ask_right(state: Chat) -> dict[str, Any]:  # a sync node, in a worker thread
        return {"messages": [right.invoke(state["messages"])]}

    graph = StateGraph(Chat)
    graph.add_node("ask_left", ask_left)
    graph.add_node("ask_right", ask_right)
    graph.add_edge(START, "ask_left")
    graph.add_edge(START, "ask_right")
    graph.add_edge(["ask_left", "ask_right"], END)
    await graph.compile(name="fan").ainvoke({"messages": ["hi"]})
    tree = received(receiver, provider, 5)
    assert tree.render(by_name=True) == [
        "invoke_workflow fan",
        "  ask_left",
        "    chat m-left",
        "  ask_right",
        "    chat m-right",
    ]
    assert tree.named("ask_left").attributes["headwater.step"] == 1
    assert tree.named("ask_right").attributes["headwater.step"] == 1


@pytest.mark.anyio
async def test_a_subgraph_nests_under_the_node_that_runs_it(
    receiver: tuple[OtlpReceiver, str], provider: TracerProvider
) -> None:
    inner = one_model_graph(FakeChatModel(["deep"]), name="inner", node="think")
    graph = StateGraph(Chat)
    graph.add_node("delegate", inner)
    graph.add_edge(START, "delegate")
    graph.add_edge("delegate", END)
    await graph.compile(name="outer").ainvoke({"messages": ["hi"]})
    tree = received(receiver, provider, 5)
    assert tree.render() == [
        "invoke_workflow outer",
        "  delegate",
        "    invoke_workflow inner",
        "      think",
        "        chat fake-model",
    ]
    think = tree.named("think")
    assert think.attributes["headwater.checkpoint_ns"].startswith("delegate:")
    assert (
        tree.named("invoke_workflow inner").attributes["headwater.checkpoint_ns"]
        == (think.attributes["headwater.checkpoint_ns"])
    )


@pytest.mark.anyio
async def test_a_traceparent_in_the_runs_metadata_is_the_parent_of_its_spans(
    receiver: tuple[OtlpReceiver, str], provider: TracerProvider
) -> None:
    app = one_model_graph(FakeChatModel(["ok"], cycle=True))
    await app.ainvoke({"messages": ["hi"]}, {"metadata": {"traceparent": TRACEPARENT}})
    tree = received(receiver, provider, 3)
    (root,) = tree.roots()
    assert root.parent_id == SPAN_ID
    assert {s.trace_id for s in tree.spans} == {TRACE_ID}


@pytest.mark.anyio
@pytest.mark.parametrize("bad", ["00-zz-yy-01", "", "x" * 10_000, 42, ["00-1-2-01"]])
async def test_a_bad_traceparent_starts_a_new_trace_and_never_fails_the_run(
    receiver: tuple[OtlpReceiver, str], provider: TracerProvider, bad: Any
) -> None:
    app = one_model_graph(FakeChatModel(["ok"]))
    result = await app.ainvoke({"messages": ["hi"]}, {"metadata": {"traceparent": bad}})
    assert result["messages"][-1].content == "ok"
    tree = received(receiver, provider, 3)
    (root,) = tree.roots()
    assert root.parent_id == ""
    assert root.trace_id != TRACE_ID


def test_parent_context_reads_a_w3c_traceparent() -> None:
    context = headwater_otel.parent_context(TRACEPARENT, "vendor=value")
    assert context is not None
    span_context = trace.get_current_span(context).get_span_context()
    assert f"{span_context.trace_id:032x}" == TRACE_ID
    assert f"{span_context.span_id:016x}" == SPAN_ID
    assert span_context.is_remote
    assert span_context.trace_state.get("vendor") == "value"
    assert (
        headwater_otel.parent_context("00-00000000000000000000000000000000-b7ad6b7169203331-01")
        is None
    )
    assert headwater_otel.parent_context("not a traceparent") is None
    with pytest.raises(InvalidInputError, match="traceparent must be a W3C traceparent string"):
        headwater_otel.parent_context(b"00-abc")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="tracestate must be"):
        headwater_otel.parent_context(TRACEPARENT, {"a": "b"})  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_the_callers_span_is_the_parent_and_node_code_sees_the_node_span(
    receiver: tuple[OtlpReceiver, str], provider: TracerProvider
) -> None:
    tracer = provider.get_tracer("the-app")

    async def work(state: Chat) -> dict[str, Any]:
        with tracer.start_as_current_span("database query"):
            pass
        return {"messages": ["done"]}

    graph = StateGraph(Chat)
    graph.add_node("work", work)
    graph.add_edge(START, "work")
    graph.add_edge("work", END)
    app = graph.compile(name="app")
    with tracer.start_as_current_span("http request"):
        await app.ainvoke({"messages": ["hi"]})
    with tracer.start_as_current_span("after"):
        pass  # the run left the caller's context as it found it
    tree = received(receiver, provider, 5)
    assert tree.render() == [
        "http request",
        "  invoke_workflow app",
        "    work",
        "      database query",
        "after",
    ]


@pytest.mark.anyio
async def test_a_graph_invoked_inside_a_tool_nests_under_the_tool(
    receiver: tuple[OtlpReceiver, str], provider: TracerProvider
) -> None:
    from headwater.tools import tool

    helper = one_model_graph(FakeChatModel(["helped"]), name="helper", node="help")

    @tool
    async def ask_helper(question: str) -> str:
        """Ask the helper graph."""
        out = await helper.ainvoke({"messages": [question]})
        return str(out["messages"][-1].content)

    async def use_tool(state: Chat) -> dict[str, Any]:
        return {"messages": [await ask_helper.ainvoke({"question": "why?"})]}

    graph = StateGraph(Chat)
    graph.add_node("use_tool", use_tool)
    graph.add_edge(START, "use_tool")
    graph.add_edge("use_tool", END)
    await graph.compile(name="main").ainvoke({"messages": ["hi"]})
    tree = received(receiver, provider, 6)
    assert tree.render() == [
        "invoke_workflow main",
        "  use_tool",
        "    execute_tool ask_helper",
        "      invoke_workflow helper",
        "        help",
        "          chat fake-model",
    ]


@pytest.mark.anyio
async def test_odd_events_from_node_code_fail_no_run(
    receiver: tuple[OtlpReceiver, str], provider: TracerProvider
) -> None:
    from headwater.runtime import dispatch_event

    async def odd(state: Chat) -> dict[str, Any]:
        dispatch_event("on_chat_model_stream", {"chunk": "no start before me"})
        dispatch_event("on_tool_end", 42)  # an end with no start, data not a mapping
        dispatch_event("on_tool_start", "not a mapping", name="weird")
        dispatch_event("on_tool_error", {"error": "a string, not an exception"}, name="weird")
        dispatch_event("on_chat_model_start", None, name="bare")
        dispatch_event("on_chat_model_end", {"response": object()}, name="bare")
        dispatch_event("on_retriever_start", {"query": ["not", "text"]}, name="r")
        dispatch_event("on_retriever_end", {"documents": "not a list"}, name="r")
        return {"messages": ["fine"]}

    graph = StateGraph(Chat)
    graph.add_node("odd", odd)
    graph.add_edge(START, "odd")
    graph.add_edge("odd", END)
    headwater_otel.enable(provider, capture_content=True)
    out = await graph.compile(name="odd").ainvoke({"messages": ["hi"]})
    assert out["messages"][-1].content == "fine"
    tree = received(receiver, provider, 2)
    # Those events carry the node's own run id: they neither open spans over the node's
    # nor end it; the node and the run end as they ran.
    assert tree.render() == ["invoke_workflow odd", "  odd"]
    assert {s.status for s in tree.spans} == {"UNSET"}
