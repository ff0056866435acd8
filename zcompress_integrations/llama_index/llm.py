"""`ZCompressLLM`: a LlamaIndex LLM that reads Z-compressed context from its prompt."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
    ToolCallBlock,
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

    It is a chat model (``metadata.is_chat_model``): ``chat`` renders the messages with the backbone's own chat
    template (system, user, assistant and tool turns; ``ToolCallBlock``s as tool calls), codes found in any message
    become context documents at the start of the last user turn, and ``system_prompt`` is the system turn when the
    messages have none. ``complete`` answers one question; unless ``formatted=True`` it applies
    ``completion_to_prompt`` and ``system_prompt`` first.

    Each response's ``raw["usage"]`` holds ``prompt_tokens`` (tokens fed), ``completion_tokens`` and
    ``total_tokens``, which LlamaIndex's ``TokenCountingHandler`` reads as they are, plus
    ``uncompressed_prompt_tokens`` (the same prompt with every code as plain text); ``additional_kwargs`` repeats
    them with ``z_codes`` (how many codes the prompt held). In streams the counts arrive with the last chunk (an
    empty delta). No ``a*`` method blocks the event loop: ``acomplete``/``achat`` queue on the compressor's batching
    scheduler, the streams run in a worker thread.

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
            is_chat_model=True,
        )

    # ---- the work (undecorated; the public methods below add LlamaIndex's callbacks) ---------------------
    def _codes(self, strings: list[str]) -> list[ZCode | str]:
        """Context items of code strings: parsed, exact ones decoded to text in one batch."""
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
        return items

    def _context(self, prompt: str) -> tuple[str, list[ZCode | str]]:
        """(question, context items) of a completion prompt."""
        if not isinstance(prompt, str):
            raise UnsupportedTextError(f"prompt must be a str; got {type(prompt).__name__}")
        strings, question = find_code_strings(prompt)
        return question, self._codes(strings)

    def _chat_context(
        self, messages: Sequence[ChatMessage]
    ) -> tuple[list[dict[str, Any]], list[ZCode | str]]:
        """(chat-template turns, context items): codes found in any message become context documents."""
        turns: list[dict[str, Any]] = []
        strings: list[str] = []
        for message in messages:
            found, text = find_code_strings(message.content or "")
            strings += found
            turns.append(_turn(message, text))
        if self.system_prompt and not any(t["role"] == "system" for t in turns):
            turns.insert(0, {"role": "system", "content": self.system_prompt})
        return turns, self._codes(strings)

    def _prompt(self, prompt: str, formatted: bool) -> tuple[str | list[dict[str, Any]], list[ZCode | str]]:
        """A completion prompt as ``generate`` takes it: ``completion_to_prompt`` and ``system_prompt`` apply
        unless ``formatted``."""
        if not formatted and self.completion_to_prompt is not None:
            prompt = self.completion_to_prompt(prompt)
        question, context = self._context(prompt)
        if not formatted and self.system_prompt:
            return [
                {"role": "system", "content": self.system_prompt},
                {"role": "user", "content": f"Question: {question}"},
            ], context
        return question, context

    def _params(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        return {
            "max_new_tokens": kwargs.get("max_new_tokens", self.num_output),
            "temperature": kwargs.get("temperature", self.temperature),
            "stop": kwargs.get("stop"),
        }

    def _complete(
        self, prompt: str | list[dict[str, Any]], context: list[ZCode | str], **kwargs: Any
    ) -> CompletionResponse:
        return _completion(self.compressor.generate(prompt, context=context, **self._params(kwargs)), context)

    async def _acomplete(
        self, prompt: str | list[dict[str, Any]], context: list[ZCode | str], **kwargs: Any
    ) -> CompletionResponse:
        """:meth:`_complete` as one request on the compressor's batching scheduler (the loop never waits)."""
        result = await self.compressor.agenerate(prompt, context=context, **self._params(kwargs))
        return _completion(result, context)

    def _stream(
        self,
        prompt: str | list[dict[str, Any]],
        context: list[ZCode | str],
        stop_event: threading.Event | None = None,
        **kwargs: Any,
    ) -> CompletionResponseGen:
        zc = self.compressor
        pieces = zc.generate(prompt, context=context, stream=True, **self._params(kwargs))
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
        usage = _usage(pieces.prompt_tokens, completion, pieces.uncompressed_prompt_tokens)  # type: ignore[union-attr]
        yield CompletionResponse(
            text=text, delta="", raw={"usage": usage}, additional_kwargs={**usage, "z_codes": len(context)}
        )

    async def _astream(
        self, prompt: str | list[dict[str, Any]], context: list[ZCode | str], **kwargs: Any
    ) -> CompletionResponseAsyncGen:
        """Run the sync stream in ONE worker thread (it holds the compressor's lock) and relay its chunks."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        stop_event = threading.Event()

        def work() -> None:
            try:
                for chunk in self._stream(prompt, context, stop_event, **kwargs):
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
        return self._complete(*self._prompt(prompt, formatted), **kwargs)

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        return self._stream(*self._prompt(prompt, formatted), **kwargs)

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return await self._acomplete(*await asyncio.to_thread(self._prompt, prompt, formatted), **kwargs)

    @llm_completion_callback()
    async def astream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseAsyncGen:
        return self._astream(*await asyncio.to_thread(self._prompt, prompt, formatted), **kwargs)

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return _chat_response(self._complete(*self._chat_context(messages), **kwargs))

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        return (_chat_response(c) for c in self._stream(*self._chat_context(messages), **kwargs))

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return _chat_response(
            await self._acomplete(*await asyncio.to_thread(self._chat_context, messages), **kwargs)
        )

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        stream = self._astream(*await asyncio.to_thread(self._chat_context, messages), **kwargs)

        async def gen() -> ChatResponseAsyncGen:
            async for chunk in stream:
                yield _chat_response(chunk)

        return gen()


def _usage(prompt_tokens: int, completion_tokens: int, uncompressed: int) -> dict[str, int]:
    """Token counts as LlamaIndex's ``TokenCountingHandler`` reads them from ``raw["usage"]``."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "uncompressed_prompt_tokens": uncompressed,
    }


def _completion(result: Any, context: list[ZCode | str]) -> CompletionResponse:
    usage = _usage(result.prompt_tokens, result.completion_tokens, result.uncompressed_prompt_tokens)
    return CompletionResponse(
        text=result.text, raw={"usage": usage}, additional_kwargs={**usage, "z_codes": len(context)}
    )


def _chat_response(completion: CompletionResponse) -> ChatResponse:
    return ChatResponse(
        message=ChatMessage(
            role=MessageRole.ASSISTANT,
            content=completion.text,
            additional_kwargs=completion.additional_kwargs,
        ),
        delta=completion.delta,
        raw=completion.raw,
        additional_kwargs=completion.additional_kwargs,
    )


def _turn(message: ChatMessage, text: str) -> dict[str, Any]:
    """One chat-template turn: role, text, and tool calls (``ToolCallBlock``s) / ``tool_call_id`` where present."""
    turn: dict[str, Any] = {
        "role": str(getattr(message.role, "value", message.role)),
        "content": text.strip(),
    }
    calls = [b for b in message.blocks if isinstance(b, ToolCallBlock)]
    if calls:
        turn["tool_calls"] = [
            {
                "type": "function",
                "id": b.tool_call_id,
                "function": {"name": b.tool_name, "arguments": b.tool_kwargs},
            }
            for b in calls
        ]
    if turn["role"] == "tool" and message.additional_kwargs.get("tool_call_id"):
        turn["tool_call_id"] = message.additional_kwargs["tool_call_id"]
    return turn
