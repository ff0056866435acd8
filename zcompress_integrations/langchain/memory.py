"""Agent memory: older conversation turns become one Z code, exactly recoverable in exact mode.

Three pieces, usable alone or together:

* :class:`ZCompressSummarizer`: a ``summarizer`` for LangChain's ``SummarizationMiddleware`` (package
  ``langchain`` >= 1.x). Instead of an LLM summary it returns the older messages as one ``zc1:`` code.
  Pass ``trim_tokens_to_summarize=None`` to the middleware, or it trims the messages before they reach the
  summarizer and those trimmed turns are lost; pass ``token_counter=zcompress_token_counter(...)`` so the
  middleware counts a code as its Z-tokens.
* :class:`ZCompressChatMessageHistory`: a ``BaseChatMessageHistory`` that keeps the last ``keep_last`` messages as
  they are and compresses older ones into memory blocks; :meth:`original_messages` gives the full conversation.
* :func:`recover_messages`: the original messages from a memory code (or a message carrying one).

What the saving is: a code stores the turns in ``z_tokens`` Z-tokens. A *latent* code is also what the model
reads. An *exact* code is opaque bits, so :class:`ChatZCompress` decodes it and the model reads the turns as text:
exact memory shrinks what the conversation state stores and carries (and what a budget counted with
:func:`zcompress_token_counter` sees), not the prompt the backbone finally reads.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

from langchain_core.chat_history import BaseChatMessageHistory
from langchain_core.messages import BaseMessage, HumanMessage, messages_from_dict, messages_to_dict
from pydantic import ConfigDict, Field

from zcompress_integrations._integration_common import envelope_messages
from zcompress_integrations.errors import CorruptCodeError
from zcompress_integrations.langchain._common import ZCompressBackend, check_fingerprint, parse_code
from zcompress_integrations.langchain.formatting import ZCODE_PATTERN

if TYPE_CHECKING:
    from zcompress_integrations.core.compressor import ZCompressor
    from zcompress_integrations.core.zcode import ZCode

__all__ = [
    "ZCompressSummarizer",
    "ZCompressChatMessageHistory",
    "recover_messages",
    "zcompress_token_counter",
    "encode_messages",
    "decode_memory",
    "render_transcript",
    "expand_codes",
    "MEMORY_KEY",
]

MEMORY_KEY = "zcompress_memory"
"""``additional_kwargs`` key marking a memory message; its value is the number of messages it holds."""
_ENVELOPE = "zcompress_memory"
_MAX_NESTING = 64
_ROLES = {"human": "User", "ai": "Assistant", "system": "System", "tool": "Tool"}


def encode_messages(messages: Sequence[BaseMessage], *, keep_ids: bool = True) -> str:
    """The text a memory code holds: compact JSON of ``messages_to_dict``, everything needed to rebuild them.

    A message with nothing but a type and string content is ``["human", "text"]``; others keep their
    non-default fields (``{"type": ..., "data": {...}}``), so ids, names, tool calls and metadata come back too.
    ``keep_ids=False`` leaves message ids out (random UUIDs cost ~30 tokens each and rarely matter once summarised).
    """
    items: list[Any] = []
    msgs = list(messages)
    for message, entry in zip(msgs, messages_to_dict(msgs), strict=True):
        fields = type(message).model_fields
        data = {
            k: v
            for k, v in entry["data"].items()
            if k != "type" and not (k in fields and v == fields[k].get_default(call_default_factory=True))
        }
        if not keep_ids:
            data.pop("id", None)
        content = entry["data"].get("content", "")
        if set(data) <= {"content"} and isinstance(content, str):
            items.append([entry["type"], content])
        else:
            data["content"] = content
            items.append({"type": entry["type"], "data": data})
    return json.dumps({_ENVELOPE: 1, "messages": items}, ensure_ascii=False, separators=(",", ":"))


def decode_memory(text: str) -> list[BaseMessage] | None:
    """The messages in a memory envelope, or ``None`` when ``text`` is not one."""
    items = envelope_messages(text, _ENVELOPE)
    if items is None:
        return None
    try:
        entries = [
            {"type": item[0], "data": {"content": item[1]}} if isinstance(item, list) else item
            for item in items
        ]
        return messages_from_dict(entries)
    except (ValueError, TypeError, KeyError, IndexError):  # text that only looks like a memory envelope
        return None


def render_transcript(messages: Sequence[BaseMessage]) -> str:
    """``Role: text`` lines, what the model reads for a decoded memory."""
    return "\n".join(f"{_ROLES.get(m.type, m.type.capitalize())}: {m.text}" for m in messages)


def _compress_messages(zc: ZCompressor, messages: Sequence[BaseMessage], mode: str, keep_ids: bool) -> ZCode:
    msgs = list(messages)
    # exact codes hold the envelope (exactly recoverable); latent codes hold the transcript the model reads
    text = encode_messages(msgs, keep_ids=keep_ids) if mode == "exact" else render_transcript(msgs)
    return zc.compress(text, mode=mode)  # type: ignore[arg-type]


def recover_messages(value: Any, compressor: ZCompressor) -> list[BaseMessage]:
    """The original messages of a memory code: ``value`` is a ``ZCode``, a ``zc1:`` string, or a message (or
    text) containing one or more codes. Raises :class:`CorruptCodeError` when there is no exact memory code."""
    if isinstance(value, BaseMessage):
        value = value.text
    codes: list[Any] = ZCODE_PATTERN.findall(value) if isinstance(value, str) else [value]
    if not codes:
        raise CorruptCodeError("no Z code found in the value given to recover_messages")
    parsed = [parse_code(c) for c in codes]
    for code in parsed:
        if code.codec != "exact":
            raise CorruptCodeError(
                "only exact memory codes hold the messages; this one is latent (a transcript for the model to read)"
            )
        check_fingerprint(code, compressor)
    out: list[BaseMessage] = []
    for text in compressor.decompress_batch(parsed):
        messages = decode_memory(text) if isinstance(text, str) else None
        if messages is None:
            raise CorruptCodeError("the Z code decodes to text that is not a zcompress memory")
        out += messages
    return out


def _substitute(content: Any, texts: dict[str, str]) -> Any:
    """``content`` (a string or a list of content blocks) with each code string in ``texts`` replaced."""

    def sub(text: str) -> str:
        return ZCODE_PATTERN.sub(lambda m: texts.get(m.group(0), m.group(0)), text)

    if isinstance(content, str):
        return sub(content)
    out = []
    for block in content:
        if isinstance(block, str):
            out.append(sub(block))
        elif isinstance(block, dict) and block.get("type") == "text" and isinstance(block.get("text"), str):
            out.append({**block, "text": sub(block["text"])})
        else:
            out.append(block)
    return out


def _parse_found_codes(found: list[list[str]], compressor: ZCompressor) -> dict[str, ZCode]:
    """Each distinct code string in ``found`` parsed, and checked to come from ``compressor``'s backbone."""
    parsed: dict[str, ZCode] = {}
    for raws in found:
        for raw in raws:
            if raw not in parsed:
                parsed[raw] = code = parse_code(raw)
                check_fingerprint(code, compressor)
    return parsed


def _decode_into_cache(
    parsed: dict[str, ZCode], compressor: ZCompressor, keep_latent: bool, cache: dict[str, str]
) -> dict[str, str]:
    """The texts of the codes of ``parsed`` (latent ones too unless ``keep_latent``): from ``cache``, the others
    decoded in one batch and added to ``cache``. Read from the returned dict: another thread may clear ``cache``."""
    wanted = [raw for raw, code in parsed.items() if not (keep_latent and code.codec == "latent")]
    texts = {raw: text for raw in wanted if (text := cache.get(raw)) is not None}
    todo = [raw for raw in wanted if raw not in texts]
    if todo:
        for raw, text in zip(todo, compressor.decompress_batch([parsed[r] for r in todo]), strict=True):
            texts[raw] = cache[raw] = (
                text if isinstance(text, str) else text.decode("utf-8", errors="replace")
            )
    return texts


def expand_codes(
    messages: Sequence[BaseMessage],
    compressor: ZCompressor,
    *,
    keep_latent: bool = False,
    cache: dict[str, str] | None = None,
    _depth: int = 0,
) -> list[BaseMessage]:
    """``messages`` with every ``zc1:`` code turned back into what it stands for, for any chat model to read.

    * A message whose codes are all exact *memory* codes (from :class:`ZCompressSummarizer` or
      :class:`ZCompressChatMessageHistory`) is replaced by the original messages, in order (tool calls, ids and
      metadata included); the wrapper text around the code ("Here is a summary of the conversation to date:") goes.
      A memory that holds an older memory (``SummarizationMiddleware`` summarises its previous summary too) is
      expanded all the way down.
    * Any other code is replaced inline by its text (a memory code among other text by its ``Role: text``
      transcript). Latent codes decode lossily; with ``keep_latent=True`` they stay as codes (for
      :class:`ChatZCompress`, which reads them as Z-tokens).

    Codes are decoded in one batch; ``cache`` (code string -> decoded text) saves decoding the same memory again on
    every model call. A damaged code raises :class:`CorruptCodeError`, an exact code from another backbone
    :class:`ModelMismatchError`: a model never reads a wrong memory.
    """
    cache = {} if cache is None else cache
    found = [ZCODE_PATTERN.findall(m.text) if isinstance(m, BaseMessage) else [] for m in messages]
    parsed = _parse_found_codes(found, compressor)
    texts = _decode_into_cache(parsed, compressor, keep_latent, cache)
    out: list[BaseMessage] = []
    for message, raws in zip(messages, found, strict=True):
        if not raws:
            out.append(message)
            continue
        memories = [decode_memory(texts[r]) if parsed[r].codec == "exact" else None for r in raws]
        if all(m is not None for m in memories):
            restored = [r for memory in memories for r in memory]  # type: ignore[union-attr]
            if any(ZCODE_PATTERN.search(r.text) for r in restored):
                # a memory holding an older memory (summarising again includes the previous summary)
                if _depth >= _MAX_NESTING:
                    raise CorruptCodeError(f"memory codes nested more than {_MAX_NESTING} deep")
                restored = expand_codes(
                    restored, compressor, keep_latent=keep_latent, cache=cache, _depth=_depth + 1
                )
            out += restored
            continue
        inline = {
            r: (render_transcript(mem) if mem is not None else texts[r])
            for r, mem in zip(raws, memories, strict=True)
            if not (keep_latent and parsed[r].codec == "latent")
        }
        out.append(message.model_copy(update={"content": _substitute(message.content, inline)}))
    return out


def zcompress_token_counter(compressor: ZCompressor) -> Callable[[Sequence[BaseMessage]], int]:
    """A ``token_counter`` (messages -> int) for trimming and ``SummarizationMiddleware``: text is counted with
    the backbone's tokenizer, and each ``zc1:`` code as its Z-tokens (what the state stores)."""

    def count(messages: Sequence[BaseMessage]) -> int:
        total = 0
        for message in messages:
            text = message.text if isinstance(message, BaseMessage) else str(message)
            for raw in ZCODE_PATTERN.findall(text):
                total += parse_code(raw).z_tokens
            rest = ZCODE_PATTERN.sub("", text)
            total += compressor.count_tokens(rest) if rest else 0
        return total

    return count


class ZCompressSummarizer(ZCompressBackend):
    """``summarizer`` for ``SummarizationMiddleware``: older messages -> one ``zc1:`` code (no LLM summary).

    Example:
        .. code-block:: python

            from langchain.agents.middleware import SummarizationMiddleware

            zc = ZCompressor.from_pretrained()
            middleware = SummarizationMiddleware(
                model=chat,                                     # the ChatZCompress the agent runs on
                trigger=("tokens", 3000),
                keep=("messages", 6),
                summarizer=ZCompressSummarizer(compressor=zc),  # exact: turns recoverable with recover_messages
                token_counter=zcompress_token_counter(zc),
                trim_tokens_to_summarize=None,                  # hand every older turn to the summarizer
            )
    """

    mode: Literal["exact", "latent"] = "exact"
    """``"exact"``: the turns are exactly recoverable. ``"latent"``: shorter for the model to read, lossy."""
    keep_ids: bool = True
    """Store message ids too. ``SummarizationMiddleware`` gives every message a random UUID before summarising;
    ``keep_ids=False`` saves their cost (everything else still comes back exactly)."""

    def __call__(self, messages: Sequence[BaseMessage]) -> str:
        """The messages as one Z code string (``ZCode.to_string()``)."""
        return _compress_messages(self.zcompressor, messages, self.mode, self.keep_ids).to_string()


class ZCompressChatMessageHistory(ZCompressBackend, BaseChatMessageHistory):
    """Chat history that compresses all but the last ``keep_last`` messages into memory blocks.

    ``messages`` returns the memory blocks (each a ``HumanMessage`` whose content carries the ``zc1:`` code and
    whose ``additional_kwargs["zcompress_memory"]`` is the number of messages inside) followed by the recent
    messages, which is what :class:`ChatZCompress` reads. :meth:`original_messages` decodes the blocks again.

    Example:
        .. code-block:: python

            history = ZCompressChatMessageHistory(compressor=zc, keep_last=4)
            history.add_messages([HumanMessage("hi"), AIMessage("hello")])
            chat.invoke(history.messages + [HumanMessage("what did I say first?")])
            history.original_messages()  # every turn, exactly
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, protected_namespaces=(), populate_by_name=True)

    keep_last: int = Field(default=4, ge=0)
    """How many of the latest messages stay uncompressed."""
    mode: Literal["exact", "latent"] = "exact"
    """Codec of the memory blocks (``"exact"`` keeps every turn recoverable)."""
    keep_ids: bool = True
    """Store message ids in the memory blocks too."""
    messages: list[BaseMessage] = Field(default_factory=list)
    """The stored history: memory blocks first, then the recent messages as they were added."""

    def _replace(self, messages: list[BaseMessage]) -> None:
        self.messages = list(messages)

    def add_messages(self, messages: Sequence[BaseMessage]) -> None:
        """Append ``messages``, then compress everything older than the last ``keep_last`` raw messages."""
        current = self.messages + list(messages)
        memory = [m for m in current if MEMORY_KEY in m.additional_kwargs]
        raw = [m for m in current if MEMORY_KEY not in m.additional_kwargs]
        cut = len(raw) - self.keep_last
        if cut <= 0:
            self._replace(current)
            return
        code = _compress_messages(self.zcompressor, raw[:cut], self.mode, self.keep_ids)
        block = HumanMessage(
            content=f"Earlier turns: {code.to_string()}",
            additional_kwargs={MEMORY_KEY: cut},
        )
        self._replace([*memory, block, *raw[cut:]])

    def original_messages(self) -> list[BaseMessage]:
        """The whole conversation as it was added (exact memory only)."""
        out: list[BaseMessage] = []
        for message in self.messages:
            if MEMORY_KEY in message.additional_kwargs:
                out += recover_messages(message, self.zcompressor)
            else:
                out.append(message)
        return out

    def clear(self) -> None:
        self._replace([])
