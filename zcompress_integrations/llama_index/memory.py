"""`ZCompressMemoryBlock`: chat turns flushed from short-term memory, kept as exact Z codes."""

from __future__ import annotations

import asyncio
from typing import Any

from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.bridge.pydantic import Field
from llama_index.core.memory.memory import BaseMemoryBlock

from zcompress_integrations.core.zcode import ZCode
from zcompress_integrations.errors import CorruptCodeError
from zcompress_integrations.llama_index._common import CompressorSettings

__all__ = ["ZCompressMemoryBlock"]


def _transcript(roles: list[str], contents: list[str]) -> str:
    return "\n".join(f"{role}: {content}" for role, content in zip(roles, contents, strict=True))


class ZCompressMemoryBlock(CompressorSettings, BaseMemoryBlock[str]):
    """A ``Memory`` block that stores flushed chat turns as exact (lossless) Z codes.

    Each flush (the batch of messages ``Memory`` ejects from its FIFO queue) becomes one entry: the transcript
    ``"role: content"`` lines compressed with the exact codec, plus the roles and content lengths needed to cut
    the transcript back into the original messages. :meth:`recover_messages` returns them exactly (text content
    only: images or other non-text blocks of a message are not stored).

    ``aget`` returns the entries' ``zc1:`` code strings, one a line (oldest first, at most ``max_entries``), for
    :class:`~zcompress_integrations.llama_index.ZCompressLLM`, which finds them in its prompt and reads them as
    context. ``atruncate`` (called by ``Memory`` when the prompt is over its token limit) drops the oldest entries
    from what is returned until enough tokens are saved; the stored entries stay. Re-compressing harder needs
    the latent codec and is left for when its adapters ship.

    The entries are a plain field (``entries``), so the block serialises with the rest of the memory.

    Setup:
        ``pip install "zcompress-integrations[llamaindex]"``

    Instantiate:
        .. code-block:: python

            from llama_index.core.memory import Memory
            from zcompress_integrations.llama_index import ZCompressMemoryBlock

            block = ZCompressMemoryBlock(name="compressed_history", priority=1)
            memory = Memory.from_defaults(token_limit=2000, memory_blocks=[block])

    Invoke:
        .. code-block:: python

            memory.put(ChatMessage(role="user", content="..."))
            messages = memory.get()                    # system message carries the zc1: codes
            answer = ZCompressLLM().chat(messages)
            block.recover_messages()                   # the flushed turns, exactly

    Async:
        .. code-block:: python

            await memory.aput(message); messages = await memory.aget()
    """

    name: str = Field(default="compressed_history", description="The name of the memory block.")
    max_entries: int | None = Field(
        default=None, ge=1, description="Most entries returned by aget (newest kept)."
    )
    entries: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Stored flushes: {'code': 'zc1:...', 'roles': [...], 'lengths': [...]}.",
    )

    async def _aput(self, messages: list[ChatMessage]) -> None:
        roles, contents = [], []
        for message in messages:
            content = message.content
            if content is None:
                content = ""
            roles.append(str(getattr(message.role, "value", message.role)))
            contents.append(content)
        if not roles:
            return
        text = _transcript(roles, contents)
        code = (await asyncio.to_thread(self.compressor.compress_batch, [text], mode="exact"))[0]
        self.entries.append({"code": code.to_string(), "roles": roles, "lengths": [len(c) for c in contents]})

    async def _aget(self, messages: list[ChatMessage] | None = None, **block_kwargs: Any) -> str:
        entries = self.entries if self.max_entries is None else self.entries[-self.max_entries :]
        return "\n".join(entry["code"] for entry in entries)

    async def atruncate(self, content: str, tokens_to_truncate: int) -> str | None:
        from llama_index.core.utils import get_tokenizer

        tokenizer = get_tokenizer()
        lines = [line for line in content.split("\n") if line]
        while lines and tokens_to_truncate > 0:
            tokens_to_truncate -= len(tokenizer(lines.pop(0)))
        return "\n".join(lines) or None

    # ---- recovery ------------------------------------------------------------------------------------------
    def recover_messages(self) -> list[ChatMessage]:
        """Every flushed message, in order, exactly as it was put (role and text content)."""
        texts = self.compressor.decompress_batch([ZCode.from_string(e["code"]) for e in self.entries])
        out: list[ChatMessage] = []
        for entry, text in zip(self.entries, texts, strict=True):
            pos = 0
            for role, length in zip(entry["roles"], entry["lengths"], strict=True):
                head = f"{role}: "
                if text[pos : pos + len(head)] != head:
                    raise CorruptCodeError("a memory entry does not match its stored roles and lengths")
                pos += len(head)
                out.append(ChatMessage(role=role, content=text[pos : pos + length]))
                pos += length + 1  # the newline between messages
        return out

    async def arecover_messages(self) -> list[ChatMessage]:
        """:meth:`recover_messages` in a worker thread."""
        return await asyncio.to_thread(self.recover_messages)
