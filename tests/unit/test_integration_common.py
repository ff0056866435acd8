"""One settings model, one model per process, and the backbone facts both frameworks read."""

from __future__ import annotations

import pickle

import pytest
from langchain.agents.middleware import SummarizationMiddleware
from langchain_core.messages import AIMessage, HumanMessage, RemoveMessage

from zcompress_integrations._integration_common import SETTING_NAMES, ZCompressSettings, backbone_profile
from zcompress_integrations.langchain import (
    ChatZCompress,
    ZCompressDocumentCompressor,
    zcompress_token_counter,
)

llama = pytest.importorskip("llama_index.core")

from zcompress_integrations.llama_index import (  # noqa: E402
    ZCompressLLM,
    ZCompressNodePostprocessor,
    ZCompressTransform,
)


def test_settings_carry_every_from_pretrained_option() -> None:
    import inspect

    from zcompress_integrations.core.compressor import ZCompressor

    # the scheduler is a per-process runtime object, not a setting that travels with a serialised adapter: give an
    # integration compressor=ZCompressor(..., scheduler=SchedulerConfig(...)) to change it
    options = set(inspect.signature(ZCompressor.__init__).parameters) - {"self", "scheduler"}
    assert set(SETTING_NAMES) == (options - {"name_or_path"}) | {"model_name_or_path"}
    for cls in (ChatZCompress, ZCompressDocumentCompressor, ZCompressLLM, ZCompressNodePostprocessor):
        assert set(SETTING_NAMES) <= set(cls.model_fields), cls.__name__
    assert ZCompressSettings().compressor_settings()["model_kwargs"] == {}


def test_one_loaded_compressor_for_equal_settings_in_both_frameworks(tiny_model_dir) -> None:
    settings = {"model_name_or_path": str(tiny_model_dir), "adapters": None, "window": 64, "dtype": "float32"}
    llm = ZCompressLLM(**settings)
    post = ZCompressNodePostprocessor(**settings)
    transform = ZCompressTransform(**settings)
    chat = ChatZCompress(**settings)
    zc = llm.compressor
    assert post.compressor is zc and transform.compressor is zc and chat.zcompressor is zc
    assert ZCompressLLM(**{**settings, "window": 32}).compressor is not zc  # other settings, other compressor
    # the settings travel with the object; an adapter given a compressor records its settings
    other = ZCompressNodePostprocessor(compressor=zc)
    assert other.to_dict()["window"] == 64 and other.to_dict()["dtype"] == "float32"
    assert pickle.loads(pickle.dumps(transform)).compressor is zc


def test_profile_from_the_backbone_without_loading_it(tiny_model_dir, tiny_compressor) -> None:
    chat = ChatZCompress(model=str(tiny_model_dir), adapters=None, window=64)
    assert chat.profile == {
        "max_input_tokens": 1024,
        "tool_calling": False,
    }  # the tiny model's config, template
    assert ChatZCompress(compressor=tiny_compressor).profile == chat.profile  # read from the loaded model
    assert backbone_profile(None, "/no/such/model") == {}


def test_summarization_middleware_takes_a_fraction_of_the_context(tiny_compressor) -> None:
    chat = ChatZCompress(compressor=tiny_compressor, max_tokens=2)
    counter = zcompress_token_counter(tiny_compressor)
    middleware = SummarizationMiddleware(
        model=chat,
        trigger=("fraction", 0.8),
        keep=("messages", 2),
        token_counter=counter,
        summarizer=lambda messages: "summary",
        trim_tokens_to_summarize=None,
    )
    long = [HumanMessage("The quick brown fox jumps over the lazy dog. " * 8), AIMessage("ok")] * 10
    assert counter(long) > 0.8 * 1024
    update = middleware.before_model({"messages": long}, runtime=None)  # type: ignore[arg-type]
    assert isinstance(update["messages"][0], RemoveMessage)
    assert middleware.before_model({"messages": long[:2]}, runtime=None) is None  # type: ignore[arg-type]


def test_generate_takes_a_system_turn_and_a_conversation(tiny_compressor) -> None:
    from zcompress_integrations.core.compressor import _with_system
    from zcompress_integrations.core.generation import build_prompt

    def rendered(prompt: object) -> str:
        pieces, *_ = build_prompt(tiny_compressor, prompt, ["doc text"])
        return tiny_compressor.backbone.tokenizer.decode([t for p in pieces for t in p])

    assert rendered(_with_system("What?", "Sys!")) == (
        "<s>system\nSys!</s>\n<s>user\nDocument 1:\ndoc text\n\nQuestion: What?</s>\n<s>assistant\n"
    )
    chat = [{"role": "system", "content": "Old."}, {"role": "user", "content": "hi"}]
    assert rendered(_with_system({"messages": chat}, "New.")).startswith(
        "<s>system\nNew.</s>\n<s>user\nDocument 1:"
    )
    result = tiny_compressor.generate(chat, system="New.", max_new_tokens=2)
    _, fed, _, _ = build_prompt(tiny_compressor, _with_system(chat, "New."), [])
    assert result.prompt_tokens == fed and result.completion_tokens <= 2
