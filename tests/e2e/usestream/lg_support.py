"""A scripted LangChain chat model that streams its tokens slowly, for graph_langgraph.py.

Only the reference run (``langgraph dev``) imports this; headwater's twin is hw_support.py.
"""

import asyncio
import json
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.messages.tool import tool_call_chunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult


class _Scripted(BaseChatModel):
    script: list[Any]
    token_delay: float
    calls: int = 0

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def _next(self) -> AIMessage:
        item = self.script[self.calls % len(self.script)]
        self.calls += 1
        return item if isinstance(item, AIMessage) else AIMessage(content=item)

    def _chunks(self):
        message = self._next()
        words = message.content.split(" ") if message.content else []
        for i, word in enumerate(words):
            yield AIMessageChunk(content=word if i == 0 else " " + word)
        for i, call in enumerate(message.tool_calls):
            yield AIMessageChunk(
                content="",
                tool_call_chunks=[
                    tool_call_chunk(
                        name=call["name"], args=json.dumps(call["args"]), id=call["id"], index=i
                    )
                ],
            )

    def _generate(self, messages, stop=None, run_manager=None, **kwargs):
        chunks = list(self._chunks())
        total = chunks[0]
        for c in chunks[1:]:
            total = total + c
        message = AIMessage(content=total.content, tool_calls=total.tool_calls)
        return ChatResult(generations=[ChatGeneration(message=message)])

    async def _astream(self, messages, stop=None, run_manager=None, **kwargs):
        for chunk in self._chunks():
            await asyncio.sleep(self.token_delay)
            if run_manager:
                await run_manager.on_llm_new_token(
                    chunk.content, chunk=ChatGenerationChunk(message=chunk)
                )
            yield ChatGenerationChunk(message=chunk)


def ScriptedChatModel(*, script: list[Any], token_delay: float, name: str) -> _Scripted:
    """Play ``script`` back, one reply per call, round and round, a token every delay."""
    return _Scripted(script=list(script), token_delay=token_delay, name=name)
