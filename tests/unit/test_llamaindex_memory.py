"""ZCompressMemoryBlock inside LlamaIndex's Memory: flushed turns become exact codes, recoverable, readable."""

from __future__ import annotations

import pytest

pytest.importorskip("llama_index.core")

from llama_index.core.base.llms.types import ChatMessage, ImageBlock, TextBlock, ToolCallBlock  # noqa: E402
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
        token_limit=1000,  # the code string of the random tiny model costs ~550 tiktoken tokens
        chat_history_token_ratio=0.04,  # 40 tokens of chat history: the turns are flushed
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


TOOL_TURNS = [
    ChatMessage(role="user", content="add 2 and 3"),
    ChatMessage(
        role="assistant",
        blocks=[
            TextBlock(text="calling add"),
            ToolCallBlock(tool_call_id="c1", tool_name="add", tool_kwargs={"a": 2, "b": 3}),
        ],
        additional_kwargs={
            "tool_calls": [{"id": "c1", "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'}}]
        },
    ),
    ChatMessage(role="tool", content="5", additional_kwargs={"tool_call_id": "c1", "name": "add"}),
    ChatMessage(role="assistant", content="It is 5."),
    ChatMessage(
        role="user", blocks=[TextBlock(text="and this picture?"), ImageBlock(url="https://example.org/a.png")]
    ),
    ChatMessage(role="assistant", content="A fox over a dog."),
]


async def test_tool_calls_and_content_blocks_round_trip(tiny_compressor):
    block = ZCompressMemoryBlock(compressor=tiny_compressor)
    await block.aput(TOOL_TURNS[:3])
    await block.aput(TOOL_TURNS[3:])
    assert [e["messages"] for e in block.entries] == [3, 3]
    assert await block.arecover_messages() == TOOL_TURNS


async def test_render_messages_hands_any_llm_the_decoded_turns(tiny_compressor):
    block = ZCompressMemoryBlock(compressor=tiny_compressor, priority=1, render="messages")
    memory = Memory.from_defaults(
        session_id="r",
        token_limit=2000,
        chat_history_token_ratio=0.02,
        token_flush_size=20,
        memory_blocks=[block],
    )
    everything = [*TOOL_TURNS, *(ChatMessage(role=r, content=c) for r, c in TURNS)]
    for message in everything:
        await memory.aput(message)
    assert block.entries and all(e["code"].startswith("zc1:") for e in block.entries)  # storage holds codes
    messages = await memory.aget()  # what Memory hands the LLM
    assert not any("zc1:" in (m.content or "") for m in messages)
    flushed = block.recover_messages()
    assert len(flushed) >= len(TOOL_TURNS)
    strip = [
        m.model_copy(
            update={"additional_kwargs": {k: v for k, v in m.additional_kwargs.items() if k != "session_id"}}
        )
        for m in messages
    ]
    assert (
        strip[: len(flushed)] == [*TOOL_TURNS, *everything[len(TOOL_TURNS) :]][: len(flushed)]
    )  # tool calls kept
    assert [(m.role, m.content) for m in messages] == [(m.role, m.content) for m in everything]


async def test_render_messages_truncates_whole_tool_exchanges(tiny_compressor):
    block = ZCompressMemoryBlock(compressor=tiny_compressor, render="messages")
    await block.aput(TOOL_TURNS)
    content = await block.aget()
    assert content == TOOL_TURNS
    kept = await block.atruncate(content, 1)  # the user turn goes; its call's result must not stay alone
    assert kept == TOOL_TURNS[1:]
    kept = await block.atruncate(kept, 1)
    assert kept == TOOL_TURNS[3:]
    assert await block.atruncate(content, 10**6) is None


def test_entries_from_older_versions_still_decode(tiny_compressor):
    code = tiny_compressor.compress("user: hi\nassistant: hello").to_string()
    block = ZCompressMemoryBlock(
        compressor=tiny_compressor,
        entries=[{"code": code, "roles": ["user", "assistant"], "lengths": [2, 5]}],
    )
    assert [(m.role, m.content) for m in block.recover_messages()] == [("user", "hi"), ("assistant", "hello")]
