"""``ChatZCompress``: a LangChain chat model that answers from Z codes (and plain text) with ``ZCompressor.generate``."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from operator import itemgetter
from typing import TYPE_CHECKING, Any, Literal

from langchain_core.language_models import BaseChatModel, LangSmithParams, LanguageModelInput, ModelProfile
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, ToolMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.output_parsers import JsonOutputParser, PydanticOutputParser
from langchain_core.output_parsers.openai_tools import JsonOutputKeyToolsParser, PydanticToolsParser
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableMap, RunnablePassthrough
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
from pydantic import BaseModel, ConfigDict, Field

from zcompress_integrations._integration_common import backbone_profile
from zcompress_integrations.errors import ConfigError, CorruptCodeError, ModelMismatchError
from zcompress_integrations.langchain._common import ZCompressBackend, check_fingerprint, parse_code
from zcompress_integrations.langchain._tools import format_tools, json_instruction, parse_tool_calls
from zcompress_integrations.langchain.formatting import ZCODE_PATTERN
from zcompress_integrations.langchain.memory import decode_memory, render_transcript

if TYPE_CHECKING:
    from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun

    from zcompress_integrations.core.zcode import ZCode

__all__ = ["ChatZCompress"]

_ROLES = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool"}
_CODES_KEY = "zcompress_codes"
_DONE = object()


def _turn(message: BaseMessage, text: str) -> dict[str, Any]:
    """One chat-template turn (``role``, ``content``, and ``tool_calls`` / ``tool_call_id`` where present)."""
    turn: dict[str, Any] = {"role": _ROLES.get(message.type, "user"), "content": text}
    calls = getattr(message, "tool_calls", None)
    if calls:
        turn["tool_calls"] = [
            {"type": "function", "id": c.get("id"), "function": {"name": c["name"], "arguments": c["args"]}}
            for c in calls
        ]
    if isinstance(message, ToolMessage):
        turn["tool_call_id"] = message.tool_call_id
        if message.name:
            turn["name"] = message.name
    return turn


def _with_tools(
    prompt: str | list[dict[str, Any]], tools: list[dict[str, Any]] | None, schema: dict[str, Any] | None
) -> Any:
    """The prompt with the bound tools (``{"messages", "tools"}``) and the structured-output instruction."""
    if not tools and not schema:
        return prompt
    turns = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if schema:
        system = next((t for t in turns if t["role"] == "system"), None)
        if system is None:
            turns.insert(0, {"role": "system", "content": json_instruction(schema)})
        else:
            system["content"] = f"{system['content']}\n\n{json_instruction(schema)}"
    return {"messages": turns, "tools": tools} if tools else turns


class ChatZCompress(ZCompressBackend, BaseChatModel):
    """Chat model on the zcompress backbone that reads compressed documents.

    Codes reach it as ``zc1:`` strings inside message content (what :func:`format_docs_for_zcompress` and the memory
    helpers write) or as a list in ``additional_kwargs["zcompress_codes"]``. Each code becomes one context
    document of ``ZCompressor.generate`` (in order of appearance, shown in the text as ``[Document N]``); the
    documents go at the start of the last user turn. The conversation is rendered with the backbone's own chat
    template: system messages become the system turn (else a short default one), AI tool calls and tool results
    keep their roles (written as ``<tool_call>{json}</tool_call>`` text when the template has no tool support). Latent codes are fed as Z-tokens; exact codes are opaque bits, so they are
    decoded (exactly) and fed as text. A damaged code raises :class:`CorruptCodeError`, a code from another backbone
    :class:`ModelMismatchError`, before any generation.

    ``usage_metadata`` counts the tokens actually fed and generated; ``response_metadata["uncompressed_input_tokens"]``
    is what the same prompt costs with every code as plain text. ``get_num_tokens`` uses the local tokenizer.

    Setup:
        ``pip install "zcompress-integrations[langchain]"``

    Instantiate:
        .. code-block:: python

            from zcompress_integrations.langchain import ChatZCompress

            llm = ChatZCompress(max_tokens=64)                # embedded SmolLM2-135M; or compressor=zc

    Invoke:
        .. code-block:: python

            msg = llm.invoke(f"Context: {format_docs_for_zcompress(docs)}\\n\\nQuestion: what is X?")
            msg.usage_metadata  # {'input_tokens': ..., 'output_tokens': ..., 'total_tokens': ...}
            for chunk in llm.stream("Tell me about compression"):
                print(chunk.content, end="")

    Async:
        .. code-block:: python

            msg = await llm.ainvoke("...")                   # queued on the compressor's batching scheduler
            async for chunk in llm.astream("..."):
                ...
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, protected_namespaces=(), populate_by_name=True)

    model_name_or_path: str | None = Field(default=None, alias="model")
    """Backbone name or local path (alias ``model``); ``None`` is the embedded default (SmolLM2-135M-Instruct)."""
    temperature: float = Field(default=0.0, ge=0.0)
    """Sampling temperature; 0 is greedy (deterministic)."""
    max_tokens: int = Field(default=128, ge=1)
    """Most tokens generated per call."""
    stop: list[str] | None = None
    """Stop strings (cut from the output); merged with those given per call."""
    streaming: bool = False
    """Use the streaming path for ``invoke`` too (tokens reach callbacks as they come)."""
    timeout: float | None = Field(default=None, gt=0)
    """Seconds one call may take, waiting for the model included; checked between tokens. ``TimeoutError`` past it."""
    max_retries: int = Field(default=2, ge=0)
    """Accepted for API compatibility; a local model has no transient failures, so no call is retried."""

    @classmethod
    def class_name(cls) -> str:
        return "ChatZCompress"

    @property
    def _llm_type(self) -> str:
        return "zcompress-chat"

    @property
    def _model_label(self) -> str:
        if self.compressor is not None:
            return self.compressor.model_name
        from zcompress_integrations.core.backbone import DEFAULT_MODEL

        return self.model_name_or_path or DEFAULT_MODEL

    @property
    def _identifying_params(self) -> Mapping[str, Any]:
        return {
            "model_name": self._model_label,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "stop": self.stop,
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(
            ls_provider="zcompress",
            ls_model_name=kwargs.get("model") or self._model_label,
            ls_model_type="chat",
            ls_temperature=kwargs.get("temperature", self.temperature),
            ls_max_tokens=kwargs.get("max_tokens", self.max_tokens),
        )
        if stop or self.stop:
            params["ls_stop"] = list(stop or self.stop or [])
        return params

    def _resolve_model_profile(self) -> ModelProfile | None:
        """``max_input_tokens`` (the backbone's ``max_position_embeddings``) and ``tool_calling`` (its chat template
        reads ``tools``), read without loading the model (from a loaded one when there is one)."""
        return ModelProfile(**backbone_profile(self.compressor, self.model_name_or_path)) or None  # type: ignore[typeddict-item]

    # ---- tools and structured output ---------------------------------------------------------------------
    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Hand ``tools`` to the backbone's chat template (``tools=``); the answer's
        ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` blocks become ``tool_calls``.

        Needs a backbone whose chat template reads ``tools`` (Qwen, Hermes and similar); SmolLM2-135M's does not,
        and this raises :class:`ConfigError` saying so. ``tool_choice`` is accepted but not enforced: a local
        model is asked, not constrained. With tools bound, a stream yields the answer as one chunk (the text has to
        be whole to be parsed).
        """
        template = getattr(self.zcompressor.backbone.tokenizer, "chat_template", None) or ""
        if "tools" not in template:
            raise ConfigError(
                f"the backbone's chat template ({self._model_label}) has no tool support (it never reads `tools`), "
                "so ChatZCompress cannot call tools with it; use a backbone whose template takes tools= (e.g. a "
                "Qwen or Hermes model)"
            )
        return super().bind(tools=format_tools(tools), tool_choice=tool_choice, **kwargs)

    def with_structured_output(
        self,
        schema: dict[str, Any] | type,
        *,
        include_raw: bool = False,
        method: Literal["json_schema", "json_mode", "function_calling"] = "json_schema",
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, dict[str, Any] | BaseModel]:
        """Answers as one JSON object matching ``schema`` (a pydantic class, a TypedDict or a JSON schema dict),
        validated: a pydantic class gives an instance, anything else a dict; an answer that does not parse or
        validate raises ``OutputParserException`` (with ``include_raw=True`` it is returned as
        ``parsing_error`` next to ``raw`` instead). The schema goes into the system turn (validated generation,
        not constrained decoding); ``method="function_calling"`` asks for one tool call with the schema as its
        arguments instead (a template with tools needed). ``strict`` is accepted: the answer is always validated against the schema."""
        if kwargs:
            raise ValueError(f"unsupported arguments: {sorted(kwargs)}")
        if method not in ("json_schema", "json_mode", "function_calling"):
            raise ValueError(
                f"method must be 'json_schema', 'json_mode' or 'function_calling'; got {method!r}"
            )
        is_model = isinstance(schema, type) and issubclass(schema, BaseModel)
        parser: Runnable[Any, Any]
        if method == "function_calling":  # one tool with the schema's arguments (needs a template with tools)
            name = convert_to_openai_tool(schema)["function"]["name"]
            llm = self.bind_tools([schema], tool_choice=name)  # type: ignore[list-item]
            parser = (
                PydanticToolsParser(tools=[schema], first_tool_only=True)  # type: ignore[list-item]
                if is_model
                else JsonOutputKeyToolsParser(key_name=name, first_tool_only=True)
            )
        else:
            json_schema = schema.model_json_schema() if is_model else convert_to_json_schema(schema)  # type: ignore[union-attr]
            llm = self.bind(
                response_schema=json_schema,
                ls_structured_output_format={"kwargs": {"method": method}, "schema": json_schema},
            )
            parser = PydanticOutputParser(pydantic_object=schema) if is_model else JsonOutputParser()  # type: ignore[arg-type]
        if not include_raw:
            return llm | parser
        parsed = RunnablePassthrough.assign(parsed=itemgetter("raw") | parser, parsing_error=lambda _: None)
        failed = RunnablePassthrough.assign(parsed=lambda _: None)
        return RunnableMap(raw=llm) | parsed.with_fallbacks([failed], exception_key="parsing_error")

    # ---- token counting (local tokenizer, never a network one) ------------------------------------------------
    def get_num_tokens(self, text: str) -> int:
        return self.zcompressor.count_tokens(text)

    def get_token_ids(self, text: str) -> list[int]:
        self.zcompressor.count_tokens(text)  # UnsupportedTextError for what the tokenizer cannot take
        return list(self.zcompressor.backbone.tokenizer(text, add_special_tokens=False)["input_ids"])

    # ---- messages -> (prompt, context) ------------------------------------------------------------------------
    def _prepare(self, messages: list[BaseMessage]) -> tuple[str | list[dict[str, Any]], list[ZCode | str]]:
        """The prompt (one question, or the conversation as chat-template turns) and the context items (latent
        codes as ZCode, everything else as text). Each code's place in the text reads ``[Document N]``."""
        raw_codes: list[tuple[int, Any]] = []
        turns: list[dict[str, Any]] = []
        for i, message in enumerate(messages):

            def _ref(match: Any, i: int = i) -> str:
                raw_codes.append((i, match.group(0)))
                return f"[Document {len(raw_codes)}]"

            text = ZCODE_PATTERN.sub(_ref, message.text)
            for code in message.additional_kwargs.get(_CODES_KEY) or ():
                raw_codes.append((i, code))
            turns.append(_turn(message, text.strip()))
        prompt: str | list[dict[str, Any]] = turns
        if len(turns) == 1 and turns[0]["role"] == "user":
            prompt = turns[0]["content"]
        zc = self.zcompressor
        codes: list[ZCode] = []
        for i, raw in raw_codes:
            try:
                code = parse_code(raw)
                check_fingerprint(code, zc)
            except CorruptCodeError as exc:
                raise CorruptCodeError(f"messages[{i}] carries a bad Z code: {exc}") from exc
            except ModelMismatchError as exc:
                raise ModelMismatchError(f"messages[{i}]: {exc}") from exc
            codes.append(code)
        context: list[ZCode | str] = list(codes)
        exact = [j for j, c in enumerate(codes) if c.codec == "exact"]
        if exact:  # opaque bits: decode them once, in one batch; a memory envelope is shown as a transcript
            for j, text in zip(exact, zc.decompress_batch([codes[j] for j in exact]), strict=True):
                text = text if isinstance(text, str) else text.decode("utf-8", errors="replace")
                memory = decode_memory(text)
                context[j] = render_transcript(memory) if memory is not None else text
        return prompt, context

    def _params(self, stop: list[str] | None, kwargs: dict[str, Any]) -> dict[str, Any]:
        stops = list(self.stop or []) + list(stop or [])
        max_tokens = kwargs.get("max_tokens") if kwargs.get("max_tokens") is not None else self.max_tokens
        temperature = kwargs.get("temperature") if kwargs.get("temperature") is not None else self.temperature
        # checked here, not converted: int("x") / float("x") would raise a bare ValueError; ranges: the facade
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
            raise ConfigError(f"max_tokens must be a whole number of tokens; got {max_tokens!r}")
        if isinstance(temperature, bool) or not isinstance(temperature, int | float):
            raise ConfigError(f"temperature must be a number (0 = greedy); got {temperature!r}")
        return {"max_new_tokens": max_tokens, "temperature": float(temperature), "stop": stops or None}

    def _request(
        self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
    ) -> tuple[Any, list[ZCode | str], dict[str, Any]]:
        """(prompt, context items, ``generate`` settings) of a call."""
        prompt, context = self._prepare(messages)
        prompt = _with_tools(prompt, kwargs.get("tools"), kwargs.get("response_schema"))
        return prompt, context, self._params(stop, kwargs)

    def _info(
        self, text: str, fed: int, uncompressed: int, params: dict[str, Any], tools: Any
    ) -> dict[str, Any]:
        """The last stream item: token accounting, finish reason and (with tools bound) the parsed tool calls."""
        output = self.zcompressor.count_tokens(text) if text else 0
        calls: dict[str, Any] = {}
        if tools:
            content, tool_calls, invalid = parse_tool_calls(text)
            calls = {"content": content, "tool_calls": tool_calls, "invalid_tool_calls": invalid}
        finish = "length" if output >= params["max_new_tokens"] else "stop"
        return {
            **calls,
            "usage": UsageMetadata(input_tokens=fed, output_tokens=output, total_tokens=fed + output),
            "response": {
                "model_name": self._model_label,
                "model_provider": "zcompress",
                "uncompressed_input_tokens": uncompressed,
                "finish_reason": "tool_calls" if calls.get("tool_calls") else finish,
            },
        }

    def _pieces(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None,
        kwargs: dict[str, Any],
        cancel: threading.Event | None,
    ) -> Iterator[str | dict[str, Any]]:
        """Text pieces, then one dict with the token accounting. Runs wholly in the calling thread."""
        start = time.monotonic()
        prompt, context, params = self._request(messages, stop, kwargs)
        tools = kwargs.get("tools")
        zc = self.zcompressor
        stream = zc.generate(prompt, context=context, stream=True, **params)
        fed, uncompressed = stream.prompt_tokens, stream.uncompressed_prompt_tokens  # type: ignore[union-attr]
        parts: list[str] = []
        try:
            for piece in stream:  # type: ignore[union-attr]
                if cancel is not None and cancel.is_set():
                    break
                if self.timeout is not None and time.monotonic() - start > self.timeout:
                    raise TimeoutError(f"ChatZCompress call exceeded timeout={self.timeout}s")
                parts.append(piece)
                if not tools:  # with tools bound, the answer is parsed whole and comes with the last item
                    yield piece
        finally:
            stream.close()  # type: ignore[union-attr]  # releases the compressor's lock at once
        yield self._info("".join(parts), fed, uncompressed, params, tools)

    # ---- LangChain hooks ----------------------------------------------------------------------------------
    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        parts: list[str] = []
        info: dict[str, Any] = {}
        for item in self._pieces(messages, stop, kwargs, None):
            if isinstance(item, dict):
                info = item
            else:
                parts.append(item)
        return self._result("".join(parts), info)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        """One request on the compressor's batching scheduler (``ZCompressor.agenerate``): concurrent calls share
        its queue, and the event loop never waits on the model. Same result as :meth:`_generate`."""

        async def run() -> ChatResult:
            prompt, context, params = await asyncio.to_thread(self._request, messages, stop, kwargs)
            result = await self.zcompressor.agenerate(prompt, context=context, **params)
            info = await asyncio.to_thread(
                self._info,
                result.text,
                result.prompt_tokens,
                result.uncompressed_prompt_tokens,
                params,
                kwargs.get("tools"),
            )
            return self._result(result.text, info)

        return await (run() if self.timeout is None else asyncio.wait_for(run(), self.timeout))

    @staticmethod
    def _result(text: str, info: dict[str, Any]) -> ChatResult:
        message = AIMessage(
            content=info.get("content", text),
            tool_calls=info.get("tool_calls", []),
            invalid_tool_calls=info.get("invalid_tool_calls", []),
            usage_metadata=info["usage"],
            response_metadata=info["response"],
        )
        return ChatResult(generations=[ChatGeneration(message=message)], llm_output=dict(info["response"]))

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        for item in self._pieces(messages, stop, kwargs, None):
            chunk = self._chunk(item)
            if run_manager and not isinstance(item, dict):
                run_manager.on_llm_new_token(item, chunk=chunk)
            yield chunk

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        # One worker thread drives the whole generation (the compressor's lock stays in that thread) and hands
        # pieces to the event loop through a queue; the loop never blocks on the model.
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        cancel = threading.Event()

        def worker() -> None:
            try:
                for item in self._pieces(messages, stop, kwargs, cancel):
                    loop.call_soon_threadsafe(queue.put_nowait, item)
            except BaseException as exc:  # handed to the consumer, raised there
                loop.call_soon_threadsafe(queue.put_nowait, exc)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, _DONE)

        future = loop.run_in_executor(None, worker)
        try:
            while (item := await queue.get()) is not _DONE:
                if isinstance(item, BaseException):
                    raise item
                chunk = self._chunk(item)
                if run_manager and not isinstance(item, dict):
                    await run_manager.on_llm_new_token(item, chunk=chunk)
                yield chunk
        finally:
            cancel.set()
            await asyncio.shield(future)

    @staticmethod
    def _chunk(item: str | dict[str, Any]) -> ChatGenerationChunk:
        if isinstance(item, dict):
            calls = [
                *(
                    {"name": c["name"], "args": json.dumps(c["args"]), "id": c["id"]}
                    for c in item.get("tool_calls", [])
                ),
                *(
                    {"name": c["name"], "args": c["args"], "id": c["id"]}
                    for c in item.get("invalid_tool_calls", [])
                ),
            ]
            return ChatGenerationChunk(
                message=AIMessageChunk(
                    content=item.get("content", ""),
                    tool_call_chunks=[
                        {**c, "index": i, "type": "tool_call_chunk"} for i, c in enumerate(calls)
                    ],
                    usage_metadata=item["usage"],
                    response_metadata=item["response"],
                    chunk_position="last",
                ),
                generation_info={"finish_reason": item["response"]["finish_reason"]},
            )
        return ChatGenerationChunk(message=AIMessageChunk(content=item))
