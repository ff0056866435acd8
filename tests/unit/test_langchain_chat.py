"""ChatZCompress and the RAG chain helpers with real LangChain objects on the tiny model (+ one slow RAG test)."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from langchain_classic.retrievers import ContextualCompressionRetriever
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnablePassthrough
from langchain_core.vectorstores import InMemoryVectorStore

from zcompress_integrations import CorruptCodeError, ModelMismatchError, ZCode
from zcompress_integrations.errors import ConfigError
from zcompress_integrations.langchain import (
    ChatZCompress,
    ZCompressDocumentCompressor,
    format_docs_for_zcompress,
    zcompress_formatter,
)

DOC = "The quick brown fox jumps over the lazy dog."


@pytest.fixture(scope="module")
def chat(tiny_compressor) -> ChatZCompress:
    return ChatZCompress(compressor=tiny_compressor, max_tokens=6)


@pytest.fixture(scope="module")
def code_string(tiny_compressor) -> str:
    return tiny_compressor.compress(DOC).to_string()


class _Tokens(BaseCallbackHandler):
    def __init__(self) -> None:
        self.tokens: list[str] = []

    def on_llm_new_token(self, token: str, **kwargs) -> None:
        self.tokens.append(token)


def test_invoke_returns_usage_and_uncompressed_count(chat, tiny_compressor, code_string) -> None:
    msg = chat.invoke(f"Context: {code_string}\nQuestion: who jumps?")
    assert isinstance(msg, AIMessage) and isinstance(msg.content, str)
    usage = msg.usage_metadata
    assert (
        0 < usage["output_tokens"] <= 6
        and usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    )
    # an exact code is opaque bits: it is decoded and fed as text, so fed == uncompressed
    assert msg.response_metadata["uncompressed_input_tokens"] == usage["input_tokens"]
    assert usage["input_tokens"] > tiny_compressor.count_tokens(DOC)
    assert msg.response_metadata["model_provider"] == "zcompress"


def test_codes_in_content_and_in_additional_kwargs_are_the_same_context(chat, code_string) -> None:
    inline = chat.invoke([HumanMessage(f"{code_string}\nWho jumps?")])
    side = chat.invoke(
        [HumanMessage("[Document 1]\nWho jumps?", additional_kwargs={"zcompress_codes": [code_string]})]
    )
    assert inline.content == side.content and inline.usage_metadata == side.usage_metadata


def test_stream_matches_invoke_and_reports_each_token_first(chat) -> None:
    handler = _Tokens()
    chunks = list(chat.stream("Tell me about foxes", config={"callbacks": [handler]}))
    text = "".join(c.content for c in chunks)
    assert text == chat.invoke("Tell me about foxes").content
    assert handler.tokens == [c.content for c in chunks]  # langchain-core 1.x reports each chunk itself
    assert chunks[-1].usage_metadata["output_tokens"] > 0


def test_stream_hook_calls_its_run_manager_before_each_yield(chat) -> None:
    class Recorder:  # the part of CallbackManagerForLLMRun that _stream uses
        def __init__(self) -> None:
            self.tokens: list[str] = []

        def on_llm_new_token(self, token: str, **kwargs) -> None:
            self.tokens.append(token)

    recorder = Recorder()
    seen = 0
    for chunk in chat._stream([HumanMessage("hi")], run_manager=recorder):  # type: ignore[arg-type]
        if chunk.message.content:
            seen += 1
            assert len(recorder.tokens) == seen and recorder.tokens[-1] == chunk.message.content
    assert seen > 0


def test_multi_turn_conversation_and_overrides(chat, tiny_compressor) -> None:
    messages = [
        SystemMessage("Be brief."),
        HumanMessage("Hi"),
        AIMessage("Hello."),
        HumanMessage("What is compression?"),
    ]
    msg = chat.invoke(messages, max_tokens=2)
    assert msg.usage_metadata["output_tokens"] <= 2
    assert chat.get_num_tokens("hello world") == tiny_compressor.count_tokens("hello world")
    assert chat.get_num_tokens_from_messages(messages) > 0
    stopped = chat.invoke("Say something", stop=["\n", " "])
    assert "\n" not in stopped.content and " " not in stopped.content


def test_async_paths_match_sync_and_eight_concurrent_calls(chat, code_string) -> None:
    prompts = [f"Context: {code_string}\nQuestion {i}: who?" for i in range(8)]
    serial = [chat.invoke(p).content for p in prompts]

    async def run() -> tuple[list[str], str]:
        got = await asyncio.gather(*(chat.ainvoke(p) for p in prompts))
        handler = _Tokens()
        streamed = [c.content async for c in chat.astream(prompts[0], config={"callbacks": [handler]})]
        assert handler.tokens == streamed
        return [m.content for m in got], "".join(streamed)

    concurrent, streamed = asyncio.run(run())
    assert concurrent == serial
    assert streamed == serial[0]


def test_astream_can_stop_early_without_leaking_the_lock(chat, tiny_compressor) -> None:
    async def first_chunk() -> str:
        async for chunk in chat.astream("Tell me a long story"):
            return chunk.content
        return ""

    asyncio.run(first_chunk())
    assert tiny_compressor.compress("after").codec == "exact"  # the lock was released


@pytest.mark.parametrize(
    "override",
    [
        {"temperature": "x"},
        {"temperature": True},
        {"max_tokens": "5"},
        {"max_tokens": 2.5},
    ],
)
def test_per_call_settings_of_the_wrong_type_are_config_errors(chat, override) -> None:
    with pytest.raises(ConfigError, match=next(iter(override))):
        chat.invoke("hi", **override)


def test_per_call_settings_apply(chat) -> None:
    result = chat.invoke("hi", max_tokens=2, temperature=0)
    assert result.usage_metadata["output_tokens"] <= 2
    defaults = chat.invoke("hi", max_tokens=None, temperature=None)  # None: the model's own settings
    assert defaults.content == chat.invoke("hi").content


def test_bad_codes_are_clear_errors(chat, code_string) -> None:
    with pytest.raises(CorruptCodeError, match=r"messages\[0\]"):
        chat.invoke("Context: zc1:AAAAAAAA\nQ?")
    foreign = dataclasses.replace(ZCode.from_string(code_string), fingerprint=b"\x00\x01\x02\x03").to_string()
    with pytest.raises(ModelMismatchError, match=r"messages\[0\]"):
        chat.invoke(f"Context: {foreign}\nQ?")
    with pytest.raises(ConfigError, match="context"):
        chat.invoke("word " * 1100)  # longer than the tiny model's 1024 positions
    with pytest.raises(TimeoutError):
        ChatZCompress(compressor=chat.compressor, timeout=1e-9, max_tokens=4).invoke("hi")


def _rag_store() -> InMemoryVectorStore:
    texts = [
        DOC,
        "Compression turns long text into a few tokens.",
        "The model answers questions about documents.",
    ]
    store = InMemoryVectorStore(DeterministicFakeEmbedding(size=32))
    store.add_documents([Document(t, id=str(i)) for i, t in enumerate(texts)])
    return store


PROMPT = ChatPromptTemplate.from_template("Context:\n{context}\n\nQuestion: {question}")


def test_rag_lcel_chain_before_and_after_one_changed_line(chat, tiny_compressor) -> None:
    retriever = _rag_store().as_retriever(search_kwargs={"k": 2})

    def format_docs(docs):
        return "\n\n".join(d.page_content for d in docs)

    before = {"context": retriever | format_docs, "question": RunnablePassthrough()} | PROMPT | chat
    after = (
        {
            "context": retriever
            | zcompress_formatter(ZCompressDocumentCompressor(compressor=tiny_compressor)),
            "question": RunnablePassthrough(),
        }
        | PROMPT
        | chat
    )
    plain, compressed = before.invoke("who jumps?"), after.invoke("who jumps?")
    assert isinstance(plain.content, str) and isinstance(compressed.content, str)
    # exact codes are decoded before the model reads them, so the documents cost the same tokens either way
    assert (
        compressed.response_metadata["uncompressed_input_tokens"] == compressed.usage_metadata["input_tokens"]
    )
    assert asyncio.run(after.ainvoke("who jumps?")).content == compressed.content


@pytest.mark.slow
def test_default_model_rag_round_trip(default_compressor) -> None:
    texts = ["The sky of the planet Zorb is bright green.", "Cats like to sleep in the sun."]
    store = InMemoryVectorStore(DeterministicFakeEmbedding(size=32))
    store.add_documents([Document(t) for t in texts])
    compressor = ZCompressDocumentCompressor(compressor=default_compressor)
    retriever = ContextualCompressionRetriever(
        base_compressor=compressor, base_retriever=store.as_retriever()
    )
    llm = ChatZCompress(compressor=default_compressor, max_tokens=16)
    chain = (
        {"context": retriever | format_docs_for_zcompress, "question": RunnablePassthrough()} | PROMPT | llm
    )
    msg = chain.invoke("What colour is the sky of the planet Zorb?")
    assert "green" in msg.content.lower()
    assert msg.usage_metadata["input_tokens"] > 0


def test_chat_model_pickles_as_its_settings(tiny_model_dir) -> None:
    import pickle

    llm = ChatZCompress(model=str(tiny_model_dir), adapters=None, window=64, max_tokens=3)
    clone = pickle.loads(pickle.dumps(llm))
    assert clone.model_dump() == llm.model_dump()
    assert clone.invoke("hi").content == llm.invoke("hi").content


def test_latent_code_is_read_as_z_tokens_and_shrinks_the_prompt(tiny_latent_compressor) -> None:
    text = DOC * 4
    code = tiny_latent_compressor.compress(text, mode="latent", ratio=4.0)
    chat = ChatZCompress(compressor=tiny_latent_compressor, max_tokens=4)
    msg = chat.invoke(f"Context: {code.to_string()}\nQuestion: who jumps?")
    fed, uncompressed = msg.usage_metadata["input_tokens"], msg.response_metadata["uncompressed_input_tokens"]
    # the Z-tokens replace the text: the prompt is shorter by the code's text tokens minus its Z-tokens
    assert uncompressed - fed == code.text_tokens - code.z_tokens > 0
