"""ZCompressMemoryBlock inside LlamaIndex's Memory: flushed turns become exact codes, recoverable, readable."""

from __future__ import annotations

import pytest

pytest.importorskip("llama_index.core")

from llama_index.core.base.llms.types import ChatMessage  # noqa: E402
from llama_index.core.memory import Memory  # noqa: E402

from zcompress_integrations.errors import CorruptCodeError  # noqa: E402
from zcompress_integrations.llama_index import ZCompressLLM, ZCompressMemoryBlock  # noqa: E402

TURNS = [
    ("user", "My name is Ada and my dog is called Fox."),
    ("assistant", "Nice to meet you, Ada!"),
    ("user", "I live in Paris.\nuser: this line only looks like a new turn"),
    ("assistant", ""),
    ("user", "What is my dog called?"),
    ("assistant", "Your dog is called Fox."),
]


@pytest.fixture
def block(tiny_compressor):
    return ZCompressMemoryBlock(compressor=tiny_compressor, priority=1)


async def _chat(block) -> Memory:
    memory = Memory.from_defaults(
        session_id="t",
        token_limit=400,
        chat_history_token_ratio=0.1,
        token_flush_size=20,
        memory_blocks=[block],
    )
    for role, content in TURNS:
        await memory.aput(ChatMessage(role=role, content=content))
    return memory


async def test_flushed_turns_are_compressed_and_exactly_recoverable(block):
    memory = await _chat(block)
    assert block.entries, "the short token limit must flush turns into the block"
    assert all(e["code"].startswith("zc1:") for e in block.entries)
    recovered = await block.arecover_messages()
    expected = [ChatMessage(role=r, content=c) for r, c in TURNS[: len(recovered)]]
    assert [(m.role, m.content) for m in recovered] == [(m.role, m.content) for m in expected]
    active = await memory.aget_all()
    assert len(recovered) + len([m for m in active if m.additional_kwargs.get("session_id") is None]) >= len(
        TURNS
    )


async def test_memory_feeds_codes_to_the_z_aware_llm(block, tiny_compressor):
    memory = await _chat(block)
    messages = await memory.aget()
    system = messages[0]
    assert system.role == "system" and "zc1:" in system.content
    llm = ZCompressLLM(compressor=tiny_compressor, num_output=4)
    response = await llm.achat(messages)
    assert response.message.additional_kwargs["z_codes"] == len(block.entries)
    kw = response.message.additional_kwargs
    assert kw["prompt_tokens"] == kw["uncompressed_prompt_tokens"]  # exact codes are read as their text


async def test_truncate_drops_oldest_entries(block):
    await _chat(block)
    content = await block.aget()
    lines = content.split("\n")
    assert await block.atruncate(content, 0) == content
    if len(lines) > 1:
        assert await block.atruncate(content, 1) == "\n".join(lines[1:])
    assert await block.atruncate(content, 10**6) is None
    assert len(content.split("\n")) == len(block.entries)  # stored entries are kept


async def test_max_entries_and_damaged_entry(tiny_compressor):
    block = ZCompressMemoryBlock(compressor=tiny_compressor, max_entries=1)
    await block.aput([ChatMessage(role="user", content="first")])
    await block.aput([ChatMessage(role="user", content="second")])
    assert await block.aget() == block.entries[-1]["code"]
    assert [m.content for m in block.recover_messages()] == ["first", "second"]
    block.entries[0]["code"] = block.entries[0]["code"][:12]
    with pytest.raises(CorruptCodeError):
        block.recover_messages()
