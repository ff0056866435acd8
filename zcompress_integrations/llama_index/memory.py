"""`ZCompressMemoryBlock`: chat turns flushed from short-term memory, kept as exact Z codes."""

from __future__ import annotations

import asyncio
import json
from typing import Any, Literal

from llama_index.core.base.llms.types import ChatMessage, TextBlock
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.memory.memory import BaseMemoryBlock

from zcompress_integrations._integration_common import envelope_messages
from zcompress_integrations.core.zcode import ZCode
from zcompress_integrations.errors import CorruptCodeError
from zcompress_integrations.llama_index._common import CompressorSettings

__all__ = ["ZCompressMemoryBlock", "encode_chat_messages", "decode_chat_messages", "memory_transcript"]

_ENVELOPE = "zcompress_llama_memory"


def encode_chat_messages(messages: list[ChatMessage]) -> str:
    """The text an entry's code holds: compact JSON of the messages, everything needed to rebuild them.

    A message that is one text block with no ``additional_kwargs`` is ``["user", "text"]``; any other is its
    ``model_dump(mode="json")`` (tool-call blocks, images, ``additional_kwargs`` such as ``tool_call_id``).
    """
    items: list[Any] = []
    for message in messages:
        blocks = message.blocks
        if not message.additional_kwargs and len(blocks) == 1 and isinstance(blocks[0], TextBlock):
            items.append([str(getattr(message.role, "value", message.role)), blocks[0].text])
        elif not message.additional_kwargs and not blocks:
            items.append([str(getattr(message.role, "value", message.role)), ""])
        else:
            items.append(message.model_dump(mode="json"))
    return json.dumps({_ENVELOPE: 1, "messages": items}, ensure_ascii=False, separators=(",", ":"))


def decode_chat_messages(text: str) -> list[ChatMessage] | None:
    """The messages of a memory entry's text, or ``None`` when ``text`` is not one."""
    items = envelope_messages(text, _ENVELOPE)
    if items is None:
        return None
    try:
        return [
            ChatMessage(role=item[0], content=item[1])
            if isinstance(item, list)
            else ChatMessage.model_validate(item)
            for item in items
        ]
    except (ValueError, TypeError, KeyError, IndexError):  # text that only looks like a memory entry
        return None


def memory_transcript(text: str) -> str | None:
    """``role: text`` lines of a memory entry's text (what a model reads), or ``None`` when it is not one."""
    messages = decode_chat_messages(text)
    if messages is None:
        return None
    return _transcript(
        [str(getattr(m.role, "value", m.role)) for m in messages], [m.content or "" for m in messages]
    )


def _transcript(roles: list[str], contents: list[str]) -> str:
    return "\n".join(f"{role}: {content}" for role, content in zip(roles, contents, strict=True))


class ZCompressMemoryBlock(CompressorSettings, BaseMemoryBlock[str]):
    """A ``Memory`` block that stores flushed chat turns as exact (lossless) Z codes.

    Each flush (the batch of messages ``Memory`` ejects from its FIFO queue) becomes one entry: the messages as
    compact JSON (role, text and content blocks, tool-call blocks, ``additional_kwargs`` such as ``tool_call_id``),
    compressed with the exact codec. :meth:`recover_messages` returns them exactly.

    What ``aget`` hands to ``Memory`` (``render``):

    * ``"codes"`` (default): the entries' ``zc1:`` code strings, one a line (oldest first, at most
      ``max_entries``), which ``Memory`` puts into the system message. Only
      :class:`~zcompress_integrations.llama_index.ZCompressLLM` reads them (it decodes exact codes to the turns'
      ``role: text`` transcript).
    * ``"messages"``: the original messages, decoded (decode on read), which ``Memory`` puts before the chat
      history, so any LLM reads the turns; the block still stores only codes. Decoded entries are cached.

    ``atruncate`` (called by ``Memory`` when the prompt is over its token limit) drops the oldest entries (codes)
    or messages (and tool results left without their call) from what is returned until enough tokens are saved;
    the stored entries stay.

    The entries are a plain field (``entries``), so the block serialises with the rest of the memory. Entries
    written by older versions (``roles``/``lengths``, text only) still decode.

    Setup:
        ``pip install "zcompress-integrations[llamaindex]"``

    Instantiate:
        .. code-block:: python

            from llama_index.core.memory import Memory
            from zcompress_integrations.llama_index import ZCompressMemoryBlock

            block = ZCompressMemoryBlock(name="compressed_history", priority=1, render="messages")
            memory = Memory.from_defaults(token_limit=2000, memory_blocks=[block])

    Invoke:
        .. code-block:: python

            memory.put(ChatMessage(role="user", content="..."))
            messages = memory.get()                    # flushed turns decoded, then the recent ones
            answer = llm.chat(messages)                # any LlamaIndex LLM
            block.recover_messages()                   # the flushed turns, exactly

    Async:
        .. code-block:: python

            await memory.aput(message); messages = await memory.aget()
    """

    name: str = Field(default="compressed_history", description="The name of the memory block.")
    max_entries: int | None = Field(
        default=None, ge=1, description="Most entries returned by aget (newest kept)."
    )
    render: Literal["codes", "messages"] = Field(
        default="codes",
        description="What aget returns: 'codes' (zc1: strings for ZCompressLLM) or 'messages' (decoded, any LLM).",
    )
    entries: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Stored flushes: {'code': 'zc1:...', 'messages': n}.",
    )

    _decoded: dict[str, list[ChatMessage]] = PrivateAttr(default_factory=dict)

    async def _aput(self, messages: list[ChatMessage]) -> None:
        if not messages:
            return
        text = encode_chat_messages(list(messages))
        code = (await self.compressor.acompress_batch([text], mode="exact"))[0]
        self.entries.append({"code": code.to_string(), "messages": len(messages)})

    def _shown(self) -> list[dict[str, Any]]:
        return self.entries if self.max_entries is None else self.entries[-self.max_entries :]

    async def _aget(
        self, messages: list[ChatMessage] | None = None, **block_kwargs: Any
    ) -> str | list[ChatMessage]:
        if self.render == "messages":
            return await asyncio.to_thread(self._messages, self._shown())
        return "\n".join(_entry_code(entry) for entry in self._shown())

    async def atruncate(self, content: Any, tokens_to_truncate: int) -> Any:
        from llama_index.core.utils import get_tokenizer

        tokenizer = get_tokenizer()
        if isinstance(content, list):
            kept = list(content)
            while kept and tokens_to_truncate > 0:
                tokens_to_truncate -= len(tokenizer(str(kept.pop(0))))
            while kept and kept[0].role == "tool":  # a tool result whose call was dropped
                kept.pop(0)
            return kept or None
        lines = [line for line in content.split("\n") if line]
        while lines and tokens_to_truncate > 0:
            tokens_to_truncate -= len(tokenizer(lines.pop(0)))
        return "\n".join(lines) or None

    # ---- recovery ------------------------------------------------------------------------------------------
    def _messages(self, entries: list[dict[str, Any]]) -> list[ChatMessage]:
        todo = {_entry_code(e): e for e in entries if _entry_code(e) not in self._decoded}
        if todo:
            texts = self.compressor.decompress_batch([ZCode.from_string(c) for c in todo])
            if len(self._decoded) + len(todo) > len(self.entries):  # keep the cache to the stored entries
                live = {e.get("code") for e in self.entries if isinstance(e, dict)}
                self._decoded = {c: m for c, m in self._decoded.items() if c in live}
            for (code, entry), text in zip(todo.items(), texts, strict=True):
                self._decoded[code] = _entry_messages(entry, text)
        return [m.model_copy() for e in entries for m in self._decoded[_entry_code(e)]]

    def recover_messages(self) -> list[ChatMessage]:
        """Every flushed message, in order, exactly as it was put (content blocks and tool calls included)."""
        return self._messages(self.entries)

    async def arecover_messages(self) -> list[ChatMessage]:
        """:meth:`recover_messages` in a worker thread."""
        return await asyncio.to_thread(self.recover_messages)


def _entry_code(entry: Any) -> str:
    """An entry's code string (:class:`CorruptCodeError` for an entry that has none)."""
    code = entry.get("code") if isinstance(entry, dict) else None
    if not isinstance(code, str):
        raise CorruptCodeError(f"a memory entry must be a dict with a 'code' string; got {entry!r:.80}")
    return code


def _entry_messages(entry: dict[str, Any], text: str | bytes) -> list[ChatMessage]:
    if not isinstance(text, str):
        raise CorruptCodeError("a memory entry's code holds bytes, not chat messages")
    if "roles" not in entry:
        messages = decode_chat_messages(text)
        if messages is None or len(messages) != entry.get("messages", len(messages)):
            raise CorruptCodeError("a memory entry does not decode to the messages it was made from")
        return messages
    try:  # an entry from an older version: "role: text" lines cut by the stored roles and lengths
        return _legacy_messages(entry["roles"], entry["lengths"], text)
    except (ValueError, TypeError, KeyError) as exc:
        raise CorruptCodeError(f"a memory entry does not match its stored roles and lengths: {exc}") from exc


def _legacy_messages(roles: list[str], lengths: list[int], text: str) -> list[ChatMessage]:
    out, pos = [], 0
    for role, length in zip(roles, lengths, strict=True):
        head = f"{role}: "
        if (
            not isinstance(length, int)
            or length < 0
            or text[pos : pos + len(head)] != head
            or pos + len(head) + length > len(text)
        ):
            raise ValueError(f"message {len(out)} is not where its role and length say")
        pos += len(head)
        out.append(ChatMessage(role=role, content=text[pos : pos + length]))
        pos += length + 1  # the newline between messages
    if (pos - 1 if out else 0) != len(text):
        raise ValueError("the stored lengths do not cover the text")
    return out
