"""Decode on read: an agent stores its older turns as one exact Z code; any chat model reads the original turns."""

from __future__ import annotations

from typing import Any

import pytest
from langchain.agents import create_agent
from langchain.agents.middleware import SummarizationMiddleware
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from pydantic import Field

from zcompress_integrations import ZCode
from zcompress_integrations.langchain import (
    ChatZCompress,
    ZCompressDecodeMiddleware,
    ZCompressSummarizer,
    expand_codes,
    zcompress_token_counter,
)

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Compression turns long text into a few tokens.",
    "LangChain and LlamaIndex retrieve documents; the model answers questions about them.",
]
BUDGET = 300
"""Token budget that the test conversation is over (text counted with the tokenizer, codes as Z-tokens)."""


class FakeToolCallingModel(GenericFakeChatModel):
    """``GenericFakeChatModel`` that accepts tools and records every list of messages it is given."""

    seen: list[list[Any]] = Field(default_factory=list)

    def bind_tools(self, tools: Any, **kwargs: Any) -> FakeToolCallingModel:
        return self

    def _generate(self, messages: Any, stop: Any = None, run_manager: Any = None, **kwargs: Any) -> Any:
        self.seen.append(list(messages))
        return super()._generate(messages, stop=stop, run_manager=run_manager, **kwargs)


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def history() -> list[Any]:
    """An earlier exchange with a tool call in it, then small talk: over the budget."""
    messages: list[Any] = [
        HumanMessage("add 1 and 1"),
        AIMessage("", tool_calls=[{"name": "add", "args": {"a": 1, "b": 1}, "id": "old1"}]),
        ToolMessage("2", tool_call_id="old1"),
        AIMessage("It is 2."),
    ]
    for i in range(5):
        messages.append(HumanMessage(f"Tell me {i}: " + " ".join(SENTENCES)))
        messages.append(AIMessage(" ".join(reversed(SENTENCES))))
    return messages


@pytest.fixture(scope="module")
def zc(tiny_model_dir):
    """16-bit Z-tokens, so the random tiny model's exact codes are shorter than the text (see test_langchain_memory)."""
    from zcompress_integrations import ZCompressor

    return ZCompressor.from_pretrained(tiny_model_dir, adapters=None, window=64, k=65536)


def _agent(model: Any, zc: Any) -> Any:
    return create_agent(
        model,
        tools=[add],
        middleware=[
            SummarizationMiddleware(
                model=model,
                trigger=("tokens", BUDGET),
                keep=("messages", 1),
                summarizer=ZCompressSummarizer(compressor=zc, keep_ids=False),
                token_counter=zcompress_token_counter(zc),
                trim_tokens_to_summarize=None,
            ),
            ZCompressDecodeMiddleware(compressor=zc),
        ],
    )


def _plain(messages: list[Any]) -> list[tuple[str, Any, list[Any]]]:
    return [
        (m.type, m.content, [(c["name"], c["args"]) for c in getattr(m, "tool_calls", [])]) for m in messages
    ]


def _check_run(result: dict[str, Any], model: FakeToolCallingModel, old: list[Any], zc: Any) -> None:
    # the model read the original turns, never a code
    first = model.seen[0]
    assert not any("zc1:" in m.text for m in first)
    assert _plain(first[: len(old)]) == _plain(old)
    assert first[len(old)].content == "add 2 and 3"
    # the state stores the older turns as one exact code (on the second step the middleware summarised again,
    # the first code included: memories nest, and decode all the way down)
    stored = result["messages"]
    assert "zc1:" in stored[0].text and not any("zc1:" in m.text for m in stored[1:])
    assert ZCode.from_string(stored[0].text.split()[-1]).codec == "exact"
    assert _plain(expand_codes(stored, zc)[: len(old) + 1]) == _plain([*old, HumanMessage("add 2 and 3")])
    assert _plain(model.seen[1]) == _plain(expand_codes(stored, zc)[:-1])
    # the loop ran the tool and ended on the model's answer
    assert [m.type for m in stored[-3:]] == ["ai", "tool", "ai"]
    assert stored[-2].content == "5" and stored[-1].content == "It is 5."
    assert len(model.seen) == 2 and model.seen[1][-1].content == "5"


def _fake() -> FakeToolCallingModel:
    return FakeToolCallingModel(
        messages=iter(
            [
                AIMessage("", tool_calls=[{"name": "add", "args": {"a": 2, "b": 3}, "id": "c1"}]),
                AIMessage("It is 5."),
            ]
        )
    )


def test_any_chat_model_reads_the_original_turns_of_compressed_memory(zc) -> None:
    old = history()
    assert zcompress_token_counter(zc)(old) > BUDGET
    model = _fake()
    result = _agent(model, zc).invoke({"messages": [*old, HumanMessage("add 2 and 3")]})
    _check_run(result, model, old, zc)


async def test_async_agent_decodes_in_a_worker_thread(zc) -> None:
    old = history()
    model = _fake()
    result = await _agent(model, zc).ainvoke({"messages": [*old, HumanMessage("add 2 and 3")]})
    _check_run(result, model, old, zc)


def test_document_codes_are_decoded_inline_and_cached(zc) -> None:
    code = zc.compress(SENTENCES[0]).to_string()
    cache: dict[str, str] = {}
    out = expand_codes([HumanMessage(f"Context: {code}\nWhat jumps?")], zc, cache=cache)
    assert out[0].content == f"Context: {SENTENCES[0]}\nWhat jumps?"
    assert cache == {code: SENTENCES[0]}
    blocks = [{"type": "text", "text": code}, {"type": "image", "url": "https://example.org/x.png"}]
    out = expand_codes([HumanMessage(blocks)], zc, cache=cache)
    assert out[0].content == [{"type": "text", "text": SENTENCES[0]}, blocks[1]]


def test_chat_zcompress_keeps_latent_codes_and_gets_exact_memory_as_messages(tiny_latent_compressor) -> None:
    zc = tiny_latent_compressor
    latent = zc.compress(SENTENCES[0], mode="latent").to_string()
    memory = ZCompressSummarizer(compressor=zc)(history()[:4])
    messages = [HumanMessage(f"Earlier: {memory}"), HumanMessage(f"Context: {latent}")]
    middleware = ZCompressDecodeMiddleware(compressor=zc)
    for_zc = middleware.decode(messages, ChatZCompress(compressor=zc))
    assert _plain(for_zc[:4]) == _plain(history()[:4])
    assert for_zc[4].content == f"Context: {latent}"  # read as Z-tokens by ChatZCompress
    for_other = middleware.decode(messages, _fake())
    # any other model gets the text back: the token-group code's ids name its tokens
    assert for_other[4].text == f"Context: {SENTENCES[0]}"
