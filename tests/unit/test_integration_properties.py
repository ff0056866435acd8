"""Property tests (hypothesis, bounded) of the framework entry points ``test_properties.py`` leaves out, on the tiny
model: LangChain's ``ChatZCompress`` and its memory (``ZCompressChatMessageHistory``, ``ZCompressSummarizer``,
``recover_messages``, ``expand_codes``, ``zcompress_token_counter``), LlamaIndex's ``ZCompressLLM`` and
``ZCompressMemoryBlock``.

Contract, for every input the strategies below can draw (arbitrary Unicode, lone surrogates, RTL overrides,
zero-width characters, NUL, CRLF, combining marks, emoji sequences, empty and whitespace-only text, very long single
words, ``zc1:`` look-alikes, the naughty-strings list):

* **Exact paths return the input exactly**: the memories give back every message they were handed, field for field.
* **Lossy paths** (answers of the chat models, latent memory) **return text, or raise the documented
  ``ZCompressError``** for the input: ``UnsupportedTextError`` for a lone surrogate, ``CorruptCodeError`` for a
  ``zc1:`` string that is not a valid code, ``ConfigError`` for a prompt longer than the model's context. Never any
  other exception.

Examples are bounded (``max_examples`` per test, ``deadline=None``, derandomized); the counts run are printed with
``-s`` and recorded in ``docs/reliability.md``.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from zcompress_integrations import (
    ConfigError,
    CorruptCodeError,
    UnsupportedTextError,
    ZCode,
)
from zcompress_integrations._integration_common import CODE_PATTERN

pytest.importorskip("langchain_core")
pytest.importorskip("llama_index.core")

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage  # noqa: E402
from llama_index.core.base.llms.types import ChatMessage  # noqa: E402

from zcompress_integrations.langchain import (  # noqa: E402
    ChatZCompress,
    ZCompressChatMessageHistory,
    ZCompressSummarizer,
    expand_codes,
    recover_messages,
    zcompress_token_counter,
)
from zcompress_integrations.langchain.memory import decode_memory  # noqa: E402
from zcompress_integrations.llama_index import ZCompressLLM, ZCompressMemoryBlock  # noqa: E402

NAUGHTY = Path(__file__).resolve().parents[3] / "shared" / "data" / "naughty" / "blns.base64.json"
RUNS: Counter[str] = Counter()  # examples run per test, printed at the end of the module
OUTCOMES: Counter[tuple[str, str]] = Counter()  # (entry point, answered or which documented error)
MAX_TOKENS = 2  # tokens generated per answer: the answer's text is noise on the random model, its type is not


def bounded(n: int) -> Any:
    return settings(
        max_examples=n,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )


@pytest.fixture(scope="module", autouse=True)
def _report_counts() -> Any:
    yield
    print(
        "\n[integration properties] examples run: " + ", ".join(f"{k}={v}" for k, v in sorted(RUNS.items()))
    )
    print(
        "[integration properties] outcomes: "
        + ", ".join(f"{k}: {o}={v}" for (k, o), v in sorted(OUTCOMES.items()))
    )


# ---- strategies ------------------------------------------------------------------------------------------------
HOSTILE = [
    "\u202e",  # RIGHT-TO-LEFT OVERRIDE
    "\u202d\u2066\u2069",  # LTR override, isolates
    "\u200b\u200c\u200d\u2060\ufeff",  # zero-width space/non-joiner/joiner, word joiner, BOM
    "\u2063CTX0\u2063",  # the generation prompt's own context placeholder
    "\x00",
    "\r\n",
    "\r",
    "\n\n\n",
    "\t",
    "e\u0301",  # e + combining acute
    "\u0301\u0308\u0327",  # combining marks with no base
    "Z\u0351\u036b\u0343\u036a\u0302\u036b\u033d\u034f\u0334\u0319\u0324",  # zalgo
    "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466",  # family: ZWJ sequence
    "\U0001f3f3\ufe0f\u200d\U0001f308",  # rainbow flag
    "\U0001f44d\U0001f3fd",  # skin tone modifier
    "\U0001f1fa\U0001f1f8",  # regional indicators
    "\u0627\u0644\u0639\u0631\u0628\u064a\u0629",  # Arabic
    "\u05e2\u05d1\u05e8\u05d9\u05ea",  # Hebrew
    "\u2028\u2029\x85",  # line/paragraph separators, NEL
    "\ufffd\uffff\U0010ffff",  # replacement char, noncharacters
    "\x1b[31m\x07\x08",  # ANSI escape, BEL, BS
    "<s>",
    "</s>",
    "<|im_end|>",
    "{{ messages }}{% if %}",  # template syntax in the content
    '{"zcompress_memory":1,"messages":[["nope"]]}',  # a memory envelope look-alike (LangChain)
    '{"zcompress_llama_memory":1,"messages":[5]}',  # a memory envelope look-alike (LlamaIndex)
    "zc1:",
    "zc1:AAAA",  # a code look-alike that is not a code
    "Earlier turns: ",
    "[Document 1]",
    "  ",
    "\u3000\u00a0",
]
any_char = st.characters(exclude_categories=())  # every code point, lone surrogates included
hostile_text = st.lists(
    st.one_of(st.sampled_from(HOSTILE), st.text(max_size=4), st.text(any_char, max_size=2)), max_size=10
).map("".join)
whitespace = st.text(st.sampled_from(" \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0\u1680\u2000\u200a\u2028\u3000"))
long_word = st.builds(
    lambda unit, n: unit * n, st.text(min_size=1, max_size=2), st.integers(min_value=150, max_value=300)
)
with_surrogate = st.builds(  # drawn on purpose: an arbitrary code point is almost never one
    lambda a, c, b: a + c + b,
    hostile_text,
    st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF),
    hostile_text,
)
with_junk_code = st.builds(  # a zc1: string that is not a code (the code pattern finds it in any text)
    lambda a, body, b: f"{a}zc1:{body} {b}",
    hostile_text,
    st.text(st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_="), min_size=1),
    hostile_text,
)
good_texts = st.one_of(hostile_text, hostile_text, st.text(any_char, max_size=40), whitespace, long_word)
bad_texts = st.one_of(with_surrogate, with_junk_code)
texts = st.one_of(good_texts, good_texts, good_texts, bad_texts)  # a quarter lone surrogates or junk codes


def spoiled(turns: Any) -> Any:
    """Lists of ``(kind, text)`` turns of good texts, a quarter of them with one turn's text made bad."""

    def spoil(items: list[tuple[str, str]], bad: str | None, at: int) -> list[tuple[str, str]]:
        if bad is not None and items:
            items[at % len(items)] = (items[at % len(items)][0], bad)
        return items

    return st.builds(spoil, turns, st.one_of(st.none(), st.none(), st.none(), bad_texts), st.integers(0, 9))


def _has_surrogate(text: str) -> bool:
    return any(0xD800 <= ord(c) <= 0xDFFF for c in text)


def _naughty() -> list[str]:
    if not NAUGHTY.exists():
        pytest.skip(f"naughty strings not found at {NAUGHTY}")
    return [base64.b64decode(s).decode("utf-8", "surrogateescape") for s in json.loads(NAUGHTY.read_text())]


def _expect_answer_or_documented_error(
    label: str, call: Any, texts: list[str], *, codes_allowed: bool = True
) -> Any:
    """Run ``call``; it must return, or raise the error the inputs document: ``CorruptCodeError`` when a text holds
    a ``zc1:`` string (none of the strategies' are valid codes), ``UnsupportedTextError`` for a lone surrogate,
    ``ConfigError`` for a prompt past the model's context. Anything else fails the test. Outcomes are counted."""
    junk_code = codes_allowed and any(CODE_PATTERN.search(t) for t in texts)
    surrogate = any(_has_surrogate(t) for t in texts)
    try:
        result = call()
    except CorruptCodeError:
        assert junk_code, texts
        OUTCOMES[label, "CorruptCodeError"] += 1
    except UnsupportedTextError:
        assert surrogate, texts
        OUTCOMES[label, "UnsupportedTextError"] += 1
    except ConfigError as exc:
        assert "context" in str(exc), (
            exc
        )  # too long for the model: the only ConfigError these inputs may cause
        OUTCOMES[label, "ConfigError (too long)"] += 1
    else:
        OUTCOMES[label, "answered"] += 1
        return result
    return None


# ---- LangChain: ChatZCompress ----------------------------------------------------------------------------------
def _lc_message(kind: str, text: str) -> BaseMessage:
    if kind == "system":
        return SystemMessage(text)
    if kind == "ai":
        return AIMessage(text)
    if kind == "tool":
        return ToolMessage(text, tool_call_id="c1")
    return HumanMessage(text)


lc_conversations = spoiled(
    st.lists(
        st.tuples(st.sampled_from(["human", "human", "ai", "system", "tool"]), good_texts),
        min_size=1,
        max_size=4,
    )
)


@pytest.fixture(scope="module")
def lc_chat(tiny_latent_compressor: Any) -> ChatZCompress:
    return ChatZCompress(compressor=tiny_latent_compressor, max_tokens=MAX_TOKENS)


@pytest.fixture(scope="module")
def valid_codes(tiny_latent_compressor: Any) -> list[str]:
    """Valid codes of this compressor to put among the hostile text: exact text, exact bytes, lossy latent,
    latent with a residual."""
    zc = tiny_latent_compressor
    return [
        zc.compress("The quick brown \u202efox\x00 \U0001f468\u200d\U0001f469").to_string(),
        zc.compress(b"\xff\xfe\x00 not UTF-8").to_string(),
        zc.compress("Compression turns long text into a few tokens.", mode="latent").to_string(),
        zc.compress("e\u0301\r\nLangChain and LlamaIndex.", mode="latent", ratio=4.0, exact=True).to_string(),
    ]


def _check_ai_message(message: Any) -> None:
    assert isinstance(message, AIMessage) and isinstance(message.content, str)
    usage = message.usage_metadata
    assert 0 <= usage["output_tokens"] <= MAX_TOKENS and usage["input_tokens"] > 0
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert message.response_metadata["uncompressed_input_tokens"] >= usage["input_tokens"]


@bounded(40)
@given(
    conversation=lc_conversations,
    with_codes=st.lists(st.integers(0, 3), max_size=2),
    how=st.sampled_from(["invoke", "stream", "ainvoke"]),
)
def test_chat_model_answers_any_conversation_or_raises_a_documented_error(
    lc_chat: ChatZCompress,
    valid_codes: list[str],
    conversation: list[tuple[str, str]],
    with_codes: list[int],
    how: str,
) -> None:
    RUNS["ChatZCompress conversations"] += 1
    messages = [_lc_message(kind, text) for kind, text in conversation]
    if with_codes:  # valid codes inline in the last message, and one as additional_kwargs
        last = messages[-1]
        inline = " ".join(valid_codes[i] for i in with_codes)
        messages[-1] = HumanMessage(
            f"{inline} {last.text}", additional_kwargs={"zcompress_codes": [valid_codes[with_codes[0]]]}
        )

    def call() -> Any:
        if how == "stream":
            chunks = list(lc_chat.stream(messages))
            assert all(isinstance(c.content, str) for c in chunks)
            full = chunks[0]
            for chunk in chunks[1:]:
                full += chunk
            return AIMessage(
                content=full.content,
                usage_metadata=full.usage_metadata,
                response_metadata=full.response_metadata,
            )
        if how == "ainvoke":
            return asyncio.run(lc_chat.ainvoke(messages))
        return lc_chat.invoke(messages)

    message = _expect_answer_or_documented_error("ChatZCompress", call, [t for _, t in conversation])
    if message is not None:
        _check_ai_message(message)


@bounded(15)
@given(text=texts)
def test_chat_model_token_counts_take_any_text_or_raise_unsupported_text(
    lc_chat: ChatZCompress, text: str
) -> None:
    RUNS["ChatZCompress get_num_tokens/get_token_ids"] += 1
    if _has_surrogate(text):
        for method in (lc_chat.get_num_tokens, lc_chat.get_token_ids):
            with pytest.raises(UnsupportedTextError):
                method(text)
        OUTCOMES["ChatZCompress token counts", "UnsupportedTextError"] += 1
        return
    assert lc_chat.get_num_tokens(text) == len(lc_chat.get_token_ids(text))
    OUTCOMES["ChatZCompress token counts", "answered"] += 1


def test_chat_model_reads_every_naughty_string(lc_chat: ChatZCompress) -> None:
    """Each naughty string as a question (batched: one ``batch`` call); a non-UTF-8 one as a lone surrogate."""
    strings = _naughty()
    replies = lc_chat.batch([[HumanMessage(s)] for s in strings], return_exceptions=True)
    for text, reply in zip(strings, replies, strict=True):
        OUTCOMES[
            "ChatZCompress naughty", type(reply).__name__ if isinstance(reply, BaseException) else "answered"
        ] += 1
        if isinstance(reply, BaseException):
            if isinstance(reply, UnsupportedTextError):
                assert _has_surrogate(text)
            elif isinstance(reply, CorruptCodeError):
                assert CODE_PATTERN.search(text)
            else:
                raise AssertionError(f"{text!r}: {type(reply).__name__}: {reply}")
        else:
            _check_ai_message(reply)
    RUNS["ChatZCompress naughty strings"] += len(strings)


# ---- LangChain: memory -----------------------------------------------------------------------------------------
def _lc_memory_message(kind: str, text: str, i: int) -> BaseMessage:
    if kind == "tool_call":
        return AIMessage(text, id=f"m{i}", tool_calls=[{"name": "f", "args": {"q": text}, "id": f"c{i}"}])
    if kind == "named":
        return HumanMessage(text, name=text[:8] or "n", additional_kwargs={"k": text})
    return _lc_message(kind, text)


lc_memory_turns = spoiled(
    st.lists(
        st.tuples(st.sampled_from(["human", "ai", "system", "tool", "tool_call", "named"]), good_texts),
        min_size=1,
        max_size=6,
    )
)


@bounded(40)
@given(turns=lc_memory_turns, keep_last=st.integers(0, 3), split=st.integers(1, 3))
def test_langchain_history_gives_back_every_message_exactly(
    tiny_compressor: Any, turns: list[tuple[str, str]], keep_last: int, split: int
) -> None:
    RUNS["ZCompressChatMessageHistory exact"] += 1
    messages = [_lc_memory_message(kind, text, i) for i, (kind, text) in enumerate(turns)]
    history = ZCompressChatMessageHistory(compressor=tiny_compressor, keep_last=keep_last)
    if any(_has_surrogate(t) for _, t in turns):
        OUTCOMES["ZCompressChatMessageHistory", "UnsupportedTextError"] += 1
        with pytest.raises(UnsupportedTextError):
            for s in range(0, len(messages), split):
                history.add_messages(messages[s : s + split])
            history.add_messages([HumanMessage("one more turn")] * (keep_last + 1))
        return
    for s in range(0, len(messages), split):  # added a few at a time, compacted as it grows
        history.add_messages(messages[s : s + split])
    assert (
        history.messages[len(history.messages) - min(keep_last, len(messages)) :]
        == messages[len(messages) - min(keep_last, len(messages)) :]
    )
    assert history.original_messages() == messages  # types, text, ids, names, tool calls: exactly
    OUTCOMES["ZCompressChatMessageHistory", "exact"] += 1


@bounded(40)
@given(turns=lc_memory_turns, keep_ids=st.booleans())
def test_langchain_summarizer_code_recovers_and_expands_exactly(
    tiny_compressor: Any, turns: list[tuple[str, str]], keep_ids: bool
) -> None:
    RUNS["ZCompressSummarizer/recover_messages/expand_codes exact"] += 1
    messages = [_lc_memory_message(kind, text, i) for i, (kind, text) in enumerate(turns)]
    summarizer = ZCompressSummarizer(compressor=tiny_compressor, keep_ids=keep_ids)
    if any(_has_surrogate(t) for _, t in turns):
        OUTCOMES["ZCompressSummarizer exact", "UnsupportedTextError"] += 1
        with pytest.raises(UnsupportedTextError):
            summarizer(messages)
        return
    OUTCOMES["ZCompressSummarizer exact", "exact"] += 1
    code = summarizer(messages)
    expected = messages if keep_ids else [m.model_copy(update={"id": None}) for m in messages]
    assert recover_messages(code, tiny_compressor) == expected
    assert recover_messages(
        HumanMessage(f"Here is a summary of the conversation to date: {code}"), tiny_compressor
    ) == (expected)
    counter = zcompress_token_counter(tiny_compressor)
    assert counter([HumanMessage(code)]) == ZCode.from_string(code).z_tokens
    if any(CODE_PATTERN.search(m.text) for m in messages):
        # documented: a restored message holding a zc1: string is read as an older memory; these are not codes
        with pytest.raises(CorruptCodeError):
            expand_codes([HumanMessage(code)], tiny_compressor)
    else:
        assert expand_codes([HumanMessage(code)], tiny_compressor) == expected


@bounded(15)
@given(turns=lc_memory_turns)
def test_langchain_latent_memory_gives_a_code_or_a_documented_error(
    tiny_latent_compressor: Any, turns: list[tuple[str, str]]
) -> None:
    RUNS["ZCompressSummarizer latent"] += 1
    messages = [_lc_memory_message(kind, text, i) for i, (kind, text) in enumerate(turns)]
    code = _expect_answer_or_documented_error(
        "ZCompressSummarizer latent",
        lambda: ZCompressSummarizer(compressor=tiny_latent_compressor, mode="latent")(messages),
        [t for _, t in turns],
        codes_allowed=False,
    )
    if code is not None:
        parsed = ZCode.from_string(code)
        assert parsed.codec == "latent"
        assert isinstance(tiny_latent_compressor.decompress(parsed), str)
        with pytest.raises(CorruptCodeError, match="latent"):  # documented: only exact memory is recoverable
            recover_messages(code, tiny_latent_compressor)


@bounded(20)
@given(
    text=texts,
    junk=st.one_of(
        st.text(max_size=40),
        st.sampled_from(HOSTILE),
        st.builds(lambda body: '{"zcompress_memory":1,"messages":' + body + "}", st.text(max_size=30)),
        st.builds(
            lambda v: json.dumps({"zcompress_memory": 1, "messages": v}),
            st.lists(
                st.one_of(st.integers(), st.text(max_size=5), st.lists(st.text(max_size=3), max_size=3))
            ),
        ),
    ),
)
def test_langchain_memory_readers_refuse_codes_that_are_not_memories(
    tiny_compressor: Any, lc_chat: ChatZCompress, text: str, junk: str
) -> None:
    """A valid exact code whose text only looks like a memory: ``recover_messages`` raises ``CorruptCodeError``,
    ``expand_codes`` and the chat model read it as the plain text it is."""
    RUNS["LangChain memory readers, non-memory codes"] += 1
    assume(not _has_surrogate(junk))
    code = tiny_compressor.compress(junk).to_string()
    memory = decode_memory(junk)  # None unless the draw is a well-formed memory (e.g. no messages at all)
    if memory is None:
        with pytest.raises(CorruptCodeError, match="not a zcompress memory"):
            recover_messages(code, tiny_compressor)
        OUTCOMES["recover_messages on a non-memory code", "CorruptCodeError"] += 1
    else:
        assert recover_messages(code, tiny_compressor) == memory
        OUTCOMES["recover_messages on a non-memory code", "exact (a well-formed memory)"] += 1
    if not CODE_PATTERN.search(text) and not _has_surrogate(text):
        out = expand_codes([HumanMessage(f"{code} {text}")], tiny_compressor)
        assert out == memory if memory is not None else [HumanMessage(f"{junk} {text}")]
    message = _expect_answer_or_documented_error(
        "ChatZCompress reading a non-memory code",
        lambda: lc_chat.invoke([HumanMessage(f"{code}\n{text}")]),
        [text],
    )
    if message is not None:
        _check_ai_message(message)


def test_langchain_history_keeps_every_naughty_string_exactly(tiny_compressor: Any) -> None:
    strings = [s for s in _naughty() if not _has_surrogate(s)]
    messages = [(HumanMessage if i % 2 else AIMessage)(s) for i, s in enumerate(strings)]
    history = ZCompressChatMessageHistory(compressor=tiny_compressor, keep_last=3)
    for s in range(0, len(messages), 100):
        history.add_messages(messages[s : s + 100])
    assert history.original_messages() == messages
    RUNS["ZCompressChatMessageHistory naughty strings"] += len(strings)


# ---- LlamaIndex: ZCompressLLM ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def li_llm(tiny_latent_compressor: Any) -> ZCompressLLM:
    return ZCompressLLM(compressor=tiny_latent_compressor, num_output=MAX_TOKENS)


def _check_completion(response: Any) -> None:
    text = response.message.content if hasattr(response, "message") else response.text
    assert isinstance(text, str)
    usage = response.raw["usage"]
    assert 0 <= usage["completion_tokens"] <= MAX_TOKENS and usage["prompt_tokens"] > 0
    assert usage["uncompressed_prompt_tokens"] >= usage["prompt_tokens"]


@bounded(40)
@given(
    prompt=texts,
    with_codes=st.lists(st.integers(0, 3), max_size=2),
    how=st.sampled_from(["complete", "stream_complete", "acomplete", "system_prompt"]),
)
def test_llamaindex_llm_completes_any_prompt_or_raises_a_documented_error(
    li_llm: ZCompressLLM, valid_codes: list[str], prompt: str, with_codes: list[int], how: str
) -> None:
    RUNS["ZCompressLLM complete"] += 1
    full = "\n".join([*(valid_codes[i] for i in with_codes), prompt])

    def call() -> Any:
        if how == "stream_complete":
            chunks = list(li_llm.stream_complete(full))
            assert "".join(c.delta for c in chunks) == chunks[-1].text
            return chunks[-1]
        if how == "acomplete":
            return asyncio.run(li_llm.acomplete(full))
        if how == "system_prompt":
            llm = ZCompressLLM(compressor=li_llm.compressor, num_output=MAX_TOKENS, system_prompt=prompt)
            return llm.complete(full)
        return li_llm.complete(full)

    response = _expect_answer_or_documented_error("ZCompressLLM complete", call, [prompt])
    if response is not None:
        _check_completion(response)
        assert response.additional_kwargs["z_codes"] == len(with_codes)


@bounded(30)
@given(
    conversation=spoiled(
        st.lists(st.tuples(st.sampled_from(["user", "assistant", "system", "tool"]), good_texts), max_size=4)
    )
)
def test_llamaindex_llm_chats_on_any_conversation_or_raises_a_documented_error(
    li_llm: ZCompressLLM, conversation: list[tuple[str, str]]
) -> None:
    RUNS["ZCompressLLM chat"] += 1
    messages = [ChatMessage(role=role, content=text) for role, text in conversation]
    response = _expect_answer_or_documented_error(
        "ZCompressLLM chat", lambda: li_llm.chat(messages), [t for _, t in conversation]
    )
    if response is not None:
        _check_completion(response)


def test_llamaindex_llm_reads_every_naughty_string(li_llm: ZCompressLLM) -> None:
    for text in _naughty():
        response = _expect_answer_or_documented_error(
            "ZCompressLLM naughty", lambda text=text: li_llm.complete(text), [text]
        )
        if response is not None:
            _check_completion(response)
        RUNS["ZCompressLLM naughty strings"] += 1


# ---- LlamaIndex: ZCompressMemoryBlock --------------------------------------------------------------------------
def _li_messages(turns: list[tuple[str, str]]) -> list[ChatMessage]:
    return [ChatMessage(role=role, content=text) for role, text in turns]


li_flushes = st.builds(
    lambda first, rest: [first, *rest],  # the first flush a quarter of the times with a bad text
    spoiled(
        st.lists(st.tuples(st.sampled_from(["user", "assistant", "system", "tool"]), good_texts), max_size=4)
    ),
    st.lists(
        st.lists(st.tuples(st.sampled_from(["user", "assistant", "system", "tool"]), good_texts), max_size=4),
        max_size=2,
    ),
)


@bounded(40)
@given(flushes=li_flushes, max_entries=st.one_of(st.none(), st.integers(1, 3)))
def test_llamaindex_memory_block_gives_back_every_message_exactly(
    tiny_compressor: Any, li_llm: ZCompressLLM, flushes: list[list[tuple[str, str]]], max_entries: int | None
) -> None:
    RUNS["ZCompressMemoryBlock exact"] += 1
    block = ZCompressMemoryBlock(compressor=tiny_compressor, render="messages", max_entries=max_entries)

    async def put_all() -> None:
        for turns in flushes:
            await block._aput(_li_messages(turns))

    if any(_has_surrogate(t) for turns in flushes for _, t in turns):
        OUTCOMES["ZCompressMemoryBlock", "UnsupportedTextError"] += 1
        with pytest.raises(UnsupportedTextError):
            asyncio.run(put_all())
        return
    asyncio.run(put_all())
    OUTCOMES["ZCompressMemoryBlock", "exact"] += 1
    stored = [m for turns in flushes for m in _li_messages(turns)]
    assert block.recover_messages() == stored
    shown = [m for turns in flushes if turns for m in _li_messages(turns)]
    if max_entries is not None:
        kept = [turns for turns in flushes if turns][-max_entries:]
        shown = [m for turns in kept for m in _li_messages(turns)]
    assert asyncio.run(block._aget()) == shown
    block.render = "codes"
    lines = asyncio.run(block._aget())
    assert all(ZCode.from_string(line).codec == "exact" for line in lines.split("\n") if lines)
    assert len(block._decoded) <= len(block.entries)  # the decode cache holds stored entries only


@bounded(25)
@given(
    entry=st.one_of(
        st.dictionaries(
            st.sampled_from(["code", "messages", "roles", "lengths"]), st.integers() | st.text(max_size=8)
        ),
        st.lists(st.integers(), max_size=3),
        st.text(max_size=8),
        st.none(),
    ),
    valid=st.booleans(),
    legacy=st.one_of(
        st.none(),
        st.tuples(
            st.lists(st.text(max_size=5), max_size=3),
            st.lists(st.integers(-3, 20) | st.text(max_size=2), max_size=3),
        ),
    ),
)
def test_llamaindex_memory_block_refuses_damaged_entries(
    tiny_compressor: Any, entry: Any, valid: bool, legacy: Any
) -> None:
    """Entries come back from storage as plain JSON: a malformed one raises ``CorruptCodeError``, never a
    ``KeyError``/``TypeError``, and never yields messages its code does not hold."""
    RUNS["ZCompressMemoryBlock damaged entries"] += 1
    text = "user: hi\nassistant: hello"
    if valid and isinstance(entry, dict):  # a real code, with damaged neighbours
        entry = {**entry, "code": tiny_compressor.compress(text).to_string()}
        if legacy is not None:
            entry["roles"], entry["lengths"] = legacy
    block = ZCompressMemoryBlock(compressor=tiny_compressor, render="messages")
    block.entries.append(entry)  # as it would be after a load that skipped validation
    try:
        messages = block.recover_messages()
    except CorruptCodeError:
        OUTCOMES["ZCompressMemoryBlock damaged entry", "CorruptCodeError"] += 1
        return
    OUTCOMES["ZCompressMemoryBlock damaged entry", "decoded (a well-formed legacy entry)"] += 1
    # only a well-formed legacy entry whose roles and lengths cut this exact text can decode
    assert isinstance(entry, dict) and "roles" in entry
    assert "\n".join(f"{m.role.value}: {m.content}" for m in messages) == text


def test_llamaindex_memory_block_keeps_every_naughty_string_exactly(tiny_compressor: Any) -> None:
    strings = [s for s in _naughty() if not _has_surrogate(s)]
    messages = [ChatMessage(role="user" if i % 2 else "assistant", content=s) for i, s in enumerate(strings)]
    block = ZCompressMemoryBlock(compressor=tiny_compressor, render="messages")

    async def put_all() -> None:
        for s in range(0, len(messages), 100):
            await block._aput(messages[s : s + 100])

    asyncio.run(put_all())
    assert block.recover_messages() == messages
    RUNS["ZCompressMemoryBlock naughty strings"] += len(strings)
