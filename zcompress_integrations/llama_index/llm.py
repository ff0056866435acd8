"""`ZCompressLLM`: a LlamaIndex LLM that reads Z-compressed context from its prompt."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any

from llama_index.core.base.llms.generic_utils import (
    astream_completion_response_to_chat_response,
    completion_response_to_chat_response,
)
from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
)
from llama_index.core.bridge.pydantic import Field
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.custom import CustomLLM

from zcompress_integrations.core.zcode import ZCode
from zcompress_integrations.errors import CorruptCodeError, UnsupportedTextError
from zcompress_integrations.llama_index._common import CompressorSettings, find_code_strings
from zcompress_integrations.llama_index.memory import memory_transcript

__all__ = ["ZCompressLLM"]

_DONE = object()


class ZCompressLLM(CompressorSettings, CustomLLM):
    """The compressor's own backbone as a LlamaIndex LLM that understands Z-compressed context.

    Every ``zc1:`` code string in the prompt (put there by :class:`ZCompressNodePostprocessor` with
    ``content_form="code"``, by :class:`ZCompressMemoryBlock`, or by hand) is taken out of the text and passed to
    :meth:`ZCompressor.generate` as a context item; the rest of the prompt is the question. Latent codes are fed
    as Z-tokens; exact codes are decoded to their exact text first (in one batch), since their bits are not
    readable by a model. A damaged code string raises :class:`~zcompress_integrations.errors.CorruptCodeError`
    (a code from another model raises ``ModelMismatchError``) instead of answering from wrong context.

    Each response's ``additional_kwargs`` holds ``prompt_tokens`` (tokens fed), ``completion_tokens``,
    ``uncompressed_prompt_tokens`` (the same prompt with every code as plain text) and ``z_codes`` (how many codes
    the prompt held). In streams the counts arrive with the last chunk (an empty delta).

    Chat goes through LlamaIndex's helpers (``messages_to_prompt`` then ``complete``); every ``a*`` method runs the
    model in a worker thread and never blocks the event loop (calls on one compressor are serialised by its lock).

    Setup:
        ``pip install "zcompress-integrations[llamaindex]"``

    Instantiate:
        .. code-block:: python

            from llama_index.core import Settings
            from zcompress_integrations.llama_index import ZCompressLLM

            Settings.llm = ZCompressLLM(num_output=128)   # the embedded default backbone

    Invoke:
        .. code-block:: python

            resp = Settings.llm.complete(f"{code.to_string()}\\nWho jumps over the dog?")
            resp.text, resp.additional_kwargs["prompt_tokens"]
            for chunk in Settings.llm.stream_complete("..."):
                print(chunk.delta, end="")

    Async:
        .. code-block:: python

            resp = await llm.acomplete("...")
            async for chunk in await llm.astream_complete("..."):
                ...
    """

    num_output: int = Field(default=256, ge=1, description="Most tokens generated per call (max_new_tokens).")
    temperature: float = Field(default=0.0, ge=0.0, description="0 is greedy and deterministic.")
    context_window: int | None = Field(
        default=None,
        ge=1,
        description="Prompt window in tokens; None reads the model's max_position_embeddings.",
    )

    @classmethod
    def class_name(cls) -> str:
        return "ZCompressLLM"

    @property
    def metadata(self) -> LLMMetadata:
        window = self.context_window
        if window is None:
            config = self.compressor.backbone.model.config
            window = int(getattr(config, "max_position_embeddings", None) or 2048)
        return LLMMetadata(
            context_window=window,
            num_output=self.num_output,
            model_name=self.compressor.model_name,
            is_chat_model=False,
        )

    # ---- the work (undecorated; the public methods below add LlamaIndex's callbacks) ---------------------
    def _context(self, prompt: str) -> tuple[str, list[ZCode | str]]:
        """(question, context items): codes parsed, exact ones decoded to text in one batch."""
        if not isinstance(prompt, str):
            raise UnsupportedTextError(f"prompt must be a str; got {type(prompt).__name__}")
        strings, question = find_code_strings(prompt)
        codes = []
        for s in strings:
            try:
                codes.append(ZCode.from_string(s))
            except CorruptCodeError as exc:
                raise CorruptCodeError(
                    f"the prompt holds a damaged Z code string ({s[:24]}..., {len(s)} chars): {exc}. If a text "
                    "splitter or the response synthesizer cut the context, give the LLM a larger context_window"
                ) from exc
        items: list[ZCode | str] = list(codes)
        exact = [i for i, c in enumerate(codes) if c.codec == "exact"]
        if exact:
            texts = self.compressor.decompress_batch([codes[i] for i in exact])
            for i, text in zip(exact, texts, strict=True):
                text = text if isinstance(text, str) else text.decode("utf-8", errors="replace")
                items[i] = memory_transcript(text) or text  # a ZCompressMemoryBlock entry reads as its turns
        return question, items

    def _complete(self, prompt: str, **kwargs: Any) -> CompletionResponse:
        question, context = self._context(prompt)
        result = self.compressor.generate(
            question,
            context=context,
            max_new_tokens=kwargs.get("max_new_tokens", self.num_output),
            temperature=kwargs.get("temperature", self.temperature),
            stop=kwargs.get("stop"),
        )
        return CompletionResponse(
            text=result.text,
            additional_kwargs={
                "prompt_tokens": result.prompt_tokens,
                "completion_tokens": result.completion_tokens,
                "uncompressed_prompt_tokens": result.uncompressed_prompt_tokens,
                "z_codes": len(context),
            },
        )

    def _stream(
        self, prompt: str, stop_event: threading.Event | None = None, **kwargs: Any
    ) -> CompletionResponseGen:
        question, context = self._context(prompt)
        zc = self.compressor
        pieces = zc.generate(
            question,
            context=context,
            max_new_tokens=kwargs.get("max_new_tokens", self.num_output),
            temperature=kwargs.get("temperature", self.temperature),
            stop=kwargs.get("stop"),
            stream=True,
        )
        text = ""
        try:
            for piece in pieces:
                text += piece
                yield CompletionResponse(text=text, delta=piece)
                if stop_event is not None and stop_event.is_set():
                    break
        finally:
            pieces.close()  # type: ignore[union-attr]  # releases the compressor's lock when stopped early
        completion = len(zc.backbone.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0
        yield CompletionResponse(
            text=text,
            delta="",
            additional_kwargs={
                "prompt_tokens": pieces.prompt_tokens,  # type: ignore[union-attr]
                "completion_tokens": completion,
                "uncompressed_prompt_tokens": pieces.uncompressed_prompt_tokens,  # type: ignore[union-attr]
                "z_codes": len(context),
            },
        )

    async def _astream(self, prompt: str, **kwargs: Any) -> CompletionResponseAsyncGen:
        """Run the sync stream in ONE worker thread (it holds the compressor's lock) and relay its chunks."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        stop_event = threading.Event()

        def work() -> None:
            try:
                for chunk in self._stream(prompt, stop_event, **kwargs):
                    loop.call_soon_threadsafe(queue.put_nowait, chunk)
                    if stop_event.is_set():
                        break
            except BaseException as exc:  # handed to the consumer
                loop.call_soon_threadsafe(queue.put_nowait, exc)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, _DONE)

        worker = threading.Thread(target=work, name="zcompress-llm-stream", daemon=True)
        worker.start()
        try:
            while (item := await queue.get()) is not _DONE:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop_event.set()

    # ---- LlamaIndex API ------------------------------------------------------------------------------------
    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return self._complete(prompt, **kwargs)

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        return self._stream(prompt, **kwargs)

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return await asyncio.to_thread(self._complete, prompt, **kwargs)

    @llm_completion_callback()
    async def astream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseAsyncGen:
        return self._astream(prompt, **kwargs)

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        prompt = self.messages_to_prompt(messages)
        return completion_response_to_chat_response(await asyncio.to_thread(self._complete, prompt, **kwargs))

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        prompt = self.messages_to_prompt(messages)
        return astream_completion_response_to_chat_response(self._astream(prompt, **kwargs))
