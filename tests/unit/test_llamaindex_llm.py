"""ZCompressLLM: completion, streaming, chat, async, and a VectorStoreIndex query engine end to end."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

pytest.importorskip("llama_index.core")

from llama_index.core import Document, Settings, VectorStoreIndex  # noqa: E402
from llama_index.core.base.llms.types import ChatMessage  # noqa: E402
from llama_index.core.embeddings import MockEmbedding  # noqa: E402

from zcompress_integrations import ZCode  # noqa: E402
from zcompress_integrations.errors import CorruptCodeError, ModelMismatchError, UnsupportedTextError  # noqa: E402
from zcompress_integrations.llama_index import ZCompressLLM, ZCompressNodePostprocessor  # noqa: E402

DOC = "The quick brown fox jumps over the lazy dog. Compression turns long text into a few tokens."
DOCS = [
    DOC,
    "LangChain and LlamaIndex retrieve documents; the model answers questions about them.",
    "Wikipedia paragraphs, news articles and agent memories are all plain English prose.",
]


@pytest.fixture
def llm(tiny_compressor):
    return ZCompressLLM(compressor=tiny_compressor, num_output=4)


@pytest.fixture(scope="module")
def code_string(tiny_compressor):
    return tiny_compressor.compress(DOC).to_string()


@pytest.fixture
def spy(tiny_compressor, monkeypatch):
    """Record the (prompt, context) of every generate call."""

    class Calls(list):
        raw: list

    calls = Calls()
    raw_prompts = []
    real = tiny_compressor.generate

    def generate(prompt, **kwargs):
        text = prompt if isinstance(prompt, str) else "\n".join(t["content"] for t in prompt)
        calls.append((text, list(kwargs.get("context", ()))))
        raw_prompts.append(prompt)
        return real(prompt, **kwargs)

    monkeypatch.setattr(tiny_compressor, "generate", generate)
    calls.raw = raw_prompts  # type: ignore[attr-defined]
    return calls


def test_metadata(llm, tiny_compressor):
    meta = llm.metadata
    assert meta.context_window == 1024  # the tiny model's max_position_embeddings
    assert meta.num_output == 4
    assert meta.model_name == tiny_compressor.model_name
    assert meta.is_chat_model
    assert ZCompressLLM(compressor=tiny_compressor, context_window=512).metadata.context_window == 512
    assert llm.class_name() == "ZCompressLLM"


def test_complete_reads_codes_from_the_prompt(llm, tiny_compressor, code_string, spy):
    resp = llm.complete(f"Context:\n{code_string}\nQuestion: who jumps?")
    prompt, context = spy[-1]
    assert context == [DOC] and "zc1:" not in prompt and "who jumps?" in prompt
    direct = tiny_compressor.generate(prompt, context=[DOC], max_new_tokens=4)
    assert resp.text == direct.text
    kw = resp.additional_kwargs
    assert kw["z_codes"] == 1
    assert kw["prompt_tokens"] == direct.prompt_tokens and kw["completion_tokens"] == direct.completion_tokens
    assert kw["uncompressed_prompt_tokens"] == direct.uncompressed_prompt_tokens
    plain = llm.complete("no codes here")
    assert plain.additional_kwargs["z_codes"] == 0


def test_stream_complete_matches_complete(llm, code_string):
    prompt = f"{code_string}\nwho jumps?"
    full = llm.complete(prompt)
    chunks = list(llm.stream_complete(prompt))
    assert "".join(c.delta for c in chunks) == full.text == chunks[-1].text
    assert chunks[-1].additional_kwargs == full.additional_kwargs


def test_chat_and_stream_chat(llm, code_string):
    messages = [
        ChatMessage(role="system", content=code_string),
        ChatMessage(role="user", content="who jumps?"),
    ]
    resp = llm.chat(messages)
    assert resp.message.role == "assistant"
    assert resp.message.additional_kwargs["z_codes"] == 1
    streamed = list(llm.stream_chat(messages))
    assert streamed[-1].message.content == resp.message.content


async def test_async_variants_match_sync(llm, code_string):
    prompt = f"{code_string}\nwho jumps?"
    serial = [llm.complete(f"{prompt} {i}").text for i in range(8)]
    concurrent = await asyncio.gather(*(llm.acomplete(f"{prompt} {i}") for i in range(8)))
    assert [r.text for r in concurrent] == serial
    pieces = [c async for c in await llm.astream_complete(f"{prompt} 0")]
    assert pieces[-1].text == serial[0]
    messages = [ChatMessage(role="user", content=prompt)]
    chat = await llm.achat(messages)
    assert chat.message.content == llm.chat(messages).message.content
    streamed = [c async for c in await llm.astream_chat(messages)]
    assert streamed[-1].message.content == chat.message.content


async def test_async_stream_abandoned_early_releases_the_model(llm, code_string):
    gen = await llm.astream_complete(f"{code_string}\nwho jumps?")
    async for _ in gen:
        break
    await gen.aclose()
    assert (await llm.acomplete("still works")).text is not None


def test_corrupt_code_in_prompt_is_a_clear_error(llm, code_string):
    broken = code_string[:20] + "A"  # cut inside the code
    with pytest.raises(CorruptCodeError, match="damaged Z code"):
        llm.complete(f"{broken}\nwho jumps?")
    foreign = dataclasses.replace(ZCode.from_string(code_string), fingerprint=b"\x00\x01\x02\x03")
    with pytest.raises(ModelMismatchError):
        llm.complete(f"{foreign.to_string()}\nwho jumps?")
    with pytest.raises(UnsupportedTextError):
        llm.complete(b"bytes are not a prompt")


@pytest.fixture
def index_settings(tiny_compressor):
    saved = Settings._llm, Settings._embed_model
    Settings.llm = ZCompressLLM(compressor=tiny_compressor, num_output=4)
    Settings.embed_model = MockEmbedding(embed_dim=8)
    yield
    Settings._llm, Settings._embed_model = saved


async def test_query_engine_end_to_end(index_settings, tiny_compressor, spy, monkeypatch):
    from llama_index.core.node_parser import SentenceSplitter

    from zcompress_integrations.llama_index import ZCompressTransform

    docs = [Document(text=t, id_=f"d{i}") for i, t in enumerate(DOCS)]
    # codes made once at ingestion; the postprocessor reuses them at query time
    transform = ZCompressTransform(compressor=tiny_compressor)
    index = VectorStoreIndex.from_documents(docs, transformations=[SentenceSplitter(), transform])
    post = ZCompressNodePostprocessor(compressor=tiny_compressor, content_form="code")
    engine = index.as_query_engine(similarity_top_k=3, node_postprocessors=[post])
    compressed = []
    real_batch = tiny_compressor.compress_batch
    monkeypatch.setattr(
        tiny_compressor, "compress_batch", lambda t, **kw: compressed.append(t) or real_batch(t, **kw)
    )
    response = engine.query("who jumps?")
    assert compressed == []  # the ingestion codes were reused
    assert len(response.source_nodes) == 3
    assert {n.node.ref_doc_id for n in response.source_nodes} == {"d0", "d1", "d2"}
    assert all(n.node.metadata["zcompress_codec"] == "exact" for n in response.source_nodes)
    prompt, context = spy[-1]
    assert sorted(context) == sorted(DOCS) and "zc1:" not in prompt and "who jumps?" in prompt
    # 8 concurrent aquery give the serial answers (default content form: text kept, code in metadata)
    post = ZCompressNodePostprocessor(compressor=tiny_compressor)
    engine = index.as_query_engine(similarity_top_k=3, node_postprocessors=[post])
    questions = [f"who jumps? ({i})" for i in range(8)]
    serial = [str(engine.query(q)) for q in questions]
    concurrent = await asyncio.gather(*(engine.aquery(q) for q in questions))
    assert [str(r) for r in concurrent] == serial
    assert all(
        n.node.metadata["zcompress_code"].startswith("zc1:") for r in concurrent for n in r.source_nodes
    )


@pytest.mark.slow
def test_default_model_short_query(default_compressor):
    llm = ZCompressLLM(compressor=default_compressor, num_output=16)
    code = default_compressor.compress("The capital of France is Paris.").to_string()
    resp = llm.complete(f"{code}\nWhat is the capital of France?")
    assert "Paris" in resp.text
    assert resp.additional_kwargs["z_codes"] == 1


def test_latent_code_in_prompt_shrinks_prompt_tokens(tiny_latent_compressor):
    code = tiny_latent_compressor.compress(DOC * 4, mode="latent", ratio=4.0)
    llm = ZCompressLLM(compressor=tiny_latent_compressor, num_output=4)
    response = llm.complete(f"Context: {code.to_string()}\nQuestion: who jumps?")
    extra = response.additional_kwargs
    assert (
        extra["uncompressed_prompt_tokens"] - extra["prompt_tokens"] == code.text_tokens - code.z_tokens > 0
    )


def test_token_counting_handler_totals_equal_the_reported_counts(tiny_compressor, code_string):
    from llama_index.core.callbacks import CallbackManager, TokenCountingHandler

    counter = TokenCountingHandler()
    llm = ZCompressLLM(compressor=tiny_compressor, num_output=4, callback_manager=CallbackManager([counter]))
    reported = [llm.complete(f"{code_string}\nwho jumps?").raw["usage"]]
    reported.append(llm.chat([ChatMessage(role="user", content="who jumps?")]).raw["usage"])
    reported.append(list(llm.stream_chat([ChatMessage(role="user", content="and then?")]))[-1].raw["usage"])
    events = counter.llm_token_counts
    assert [(e.prompt_token_count, e.completion_token_count) for e in events] == [
        (r["prompt_tokens"], r["completion_tokens"]) for r in reported
    ]
    assert counter.prompt_llm_token_count == sum(r["prompt_tokens"] for r in reported)
    assert counter.total_llm_token_count == sum(r["total_tokens"] for r in reported)


def test_chat_renders_the_conversation_with_the_chat_template(tiny_compressor, code_string, spy):
    from llama_index.core.base.llms.types import ToolCallBlock

    llm = ZCompressLLM(compressor=tiny_compressor, num_output=2, system_prompt="Be terse.")
    messages = [
        ChatMessage(role="user", content="add 2 and 3"),
        ChatMessage(
            role="assistant", blocks=[ToolCallBlock(tool_call_id="c1", tool_name="add", tool_kwargs={"a": 2})]
        ),
        ChatMessage(role="tool", content="5", additional_kwargs={"tool_call_id": "c1"}),
        ChatMessage(role="user", content=f"{code_string}\nwho jumps?"),
    ]
    llm.chat(messages)
    turns = spy.raw[-1]
    assert [t["role"] for t in turns] == ["system", "user", "assistant", "tool", "user"]
    assert turns[0]["content"] == "Be terse." and turns[-1]["content"] == "who jumps?"
    assert turns[2]["tool_calls"][0]["function"] == {"name": "add", "arguments": {"a": 2}}
    assert spy[-1][1] == [DOC]  # the code became a context document
    llm.chat([ChatMessage(role="system", content="Mine."), ChatMessage(role="user", content="hi")])
    assert [t["content"] for t in spy.raw[-1]] == ["Mine.", "hi"]  # the messages' own system turn wins
    llm.complete("who?")
    assert spy.raw[-1][0] == {"role": "system", "content": "Be terse."}
    llm.complete("who?", formatted=True)  # already formatted: no system_prompt added
    assert spy.raw[-1] == "who?"
