"""Agent memory: older turns become one exact Z code; the conversation fits a token budget and comes back exactly."""

from __future__ import annotations

import asyncio

import pytest
from langchain.agents.middleware import SummarizationMiddleware
from langchain_core.messages import AIMessage, HumanMessage, RemoveMessage, ToolMessage
from langchain_core.runnables import RunnableLambda

from zcompress_integrations import CorruptCodeError, ZCode
from zcompress_integrations.errors import LatentUnavailableError
from zcompress_integrations.langchain import (
    ChatZCompress,
    ZCompressChatMessageHistory,
    ZCompressSummarizer,
    recover_messages,
    zcompress_token_counter,
)

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Compression turns long text into a few tokens.",
    "LangChain and LlamaIndex retrieve documents; the model answers questions about them.",
    "Wikipedia paragraphs, news articles and agent memories are all plain English prose.",
]
BUDGET = 400
"""Context budget in tokens for the test conversation (text counted with the tokenizer, codes as Z-tokens)."""


def conversation(turns: int = 4) -> list:
    messages = []
    for i in range(turns):
        messages.append(HumanMessage(f"Question {i}: " + " ".join(SENTENCES[i % 4 :] + SENTENCES[: i % 4])))
        messages.append(AIMessage(f"Answer {i}: " + " ".join(reversed(SENTENCES))))
    return messages


@pytest.fixture(scope="module")
def zc(tiny_model_dir):
    """The tiny model with 16-bit Z-tokens (k=65536).

    The random tiny model predicts text almost uniformly (~9 bits per token), so at the default k=4096 (12 bits
    per Z-token) the exact codec saves only ~25%; 16-bit Z-tokens make the saving visible. The trained default
    model reaches ~2.9x at k=4096.
    """
    from zcompress_integrations import ZCompressor

    return ZCompressor.from_pretrained(tiny_model_dir, adapters=None, window=64, k=65536)


@pytest.fixture(scope="module")
def counter(zc):
    return zcompress_token_counter(zc)


def test_history_compacts_as_it_grows_and_recovers_every_turn_exactly(tiny_compressor) -> None:
    messages = [
        HumanMessage(SENTENCES[0]),
        AIMessage(SENTENCES[1]),
        HumanMessage("And?"),
        AIMessage(SENTENCES[3]),
    ]
    messages += [HumanMessage("Thanks."), AIMessage("You are welcome.")]
    history = ZCompressChatMessageHistory(compressor=tiny_compressor, keep_last=2)
    history.add_messages(messages[:2])  # not more than keep_last + 1 raw messages: nothing compressed yet
    assert history.messages == messages[:2]
    history.add_messages(messages[2:4])  # compaction happens as the conversation grows
    history.add_messages(messages[4:])
    assert history.messages[-2:] == messages[-2:]
    assert sum(1 for m in history.messages if "zcompress_memory" in m.additional_kwargs) == 2
    # turns this short cost more as a code (envelope + header) than as text; the budget case is the next test
    assert history.original_messages() == messages  # types and text, exactly
    history.clear()
    assert history.messages == []


def test_summarization_middleware_with_the_zcompress_summarizer(zc, counter) -> None:
    messages = conversation()
    chat = ChatZCompress(compressor=zc, max_tokens=2)
    middleware = SummarizationMiddleware(
        model=chat,
        trigger=("tokens", BUDGET),
        keep=("messages", 2),
        summarizer=ZCompressSummarizer(compressor=zc, keep_ids=False),  # the middleware's UUIDs are not kept
        token_counter=counter,
        trim_tokens_to_summarize=None,
    )
    update = middleware.before_model({"messages": messages}, runtime=None)  # type: ignore[arg-type]
    assert isinstance(update["messages"][0], RemoveMessage)
    summary, *kept = update["messages"][1:]
    assert kept == messages[-2:]
    assert counter(messages) > BUDGET >= counter([summary, *kept])
    assert recover_messages(summary, zc) == [m.model_copy(update={"id": None}) for m in messages[:-2]]
    # ChatZCompress reads the memory; exact codes are opaque bits, so it feeds the decoded turns (usage says so)
    reply = chat.invoke([summary, *kept, HumanMessage("What was question 0?")])
    assert reply.usage_metadata["input_tokens"] > counter([summary, *kept])


def test_tool_messages_and_metadata_survive(tiny_compressor) -> None:
    """Also the async path: the middleware runs a sync summarizer in a thread pool, as RunnableLambda does here."""
    messages = [
        HumanMessage("add 2 and 3", id="1", name="ann"),
        AIMessage("", id="2", tool_calls=[{"name": "add", "args": {"a": 2, "b": 3}, "id": "c1"}]),
        ToolMessage("5", tool_call_id="c1", id="3", status="error"),
        AIMessage("It is 5.", id="4", response_metadata={"finish_reason": "stop"}),
    ]
    code = asyncio.run(RunnableLambda(ZCompressSummarizer(compressor=tiny_compressor)).ainvoke(messages))
    assert recover_messages(code, tiny_compressor) == messages


def test_recover_messages_refuses_what_is_not_an_exact_memory(tiny_compressor) -> None:
    with pytest.raises(CorruptCodeError, match="no Z code"):
        recover_messages("just text", tiny_compressor)
    with pytest.raises(CorruptCodeError):
        recover_messages("zc1:AAAAAAAAAA", tiny_compressor)
    plain = tiny_compressor.compress("not a memory").to_string()
    with pytest.raises(CorruptCodeError, match="not a zcompress memory"):
        recover_messages(plain, tiny_compressor)


def test_latent_memory_is_passed_through(tiny_latent_compressor) -> None:
    code = ZCompressSummarizer(compressor=tiny_latent_compressor, mode="latent")(conversation(1))
    assert code.startswith("zc1:")
    assert ZCode.from_string(code).codec == "latent"


def test_latent_mode_without_adapters_is_a_clear_error(tiny_compressor) -> None:
    with pytest.raises(LatentUnavailableError):
        ZCompressSummarizer(compressor=tiny_compressor, mode="latent")(conversation(1))
