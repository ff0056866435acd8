"""``ZCompressDecodeMiddleware``: agents store compressed memory, and every chat model reads the original turns."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from langchain.agents.middleware import AgentMiddleware, ModelRequest, ModelResponse

from zcompress_integrations.langchain._common import ZCompressBackend
from zcompress_integrations.langchain.memory import expand_codes

if TYPE_CHECKING:
    from langchain_core.messages import AIMessage, BaseMessage

    from zcompress_integrations.core.compressor import ZCompressor

__all__ = ["ZCompressDecodeMiddleware"]


class ZCompressDecodeMiddleware(AgentMiddleware):
    """Decode ``zc1:`` codes in the agent's messages just before the model reads them (decode on read).

    The agent's state keeps the codes (what :class:`ZCompressSummarizer` or the compacting history wrote), so the
    checkpointer stores and carries the compressed form; only the request handed to the model is changed. A message
    holding exact memory codes becomes the original messages again (tool calls included); other codes are replaced
    by their text. When the agent's model is :class:`ChatZCompress`, latent codes stay as codes: it reads them as
    Z-tokens. Decoded codes are cached (``cache_size`` codes), so a memory is decoded once, not on every step.

    Put it after the middleware that writes codes: ``before_model`` hooks (summarisation) run before any
    ``wrap_model_call``.

    Setup:
        ``pip install "zcompress-integrations[langchain]"`` (``create_agent`` is in the ``langchain`` package)

    Instantiate:
        .. code-block:: python

            from langchain.agents import create_agent
            from langchain.agents.middleware import SummarizationMiddleware
            from zcompress_integrations.langchain import (
                ZCompressDecodeMiddleware, ZCompressSummarizer, zcompress_token_counter,
            )

            zc = ZCompressor.from_pretrained()
            agent = create_agent(
                ChatOpenAI(model="gpt-4o-mini"),             # any chat model
                tools=[add],
                middleware=[
                    SummarizationMiddleware(
                        model=chat, trigger=("tokens", 3000), keep=("messages", 6),
                        summarizer=ZCompressSummarizer(compressor=zc),
                        token_counter=zcompress_token_counter(zc), trim_tokens_to_summarize=None,
                    ),
                    ZCompressDecodeMiddleware(compressor=zc),
                ],
            )

    Invoke:
        .. code-block:: python

            agent.invoke({"messages": [HumanMessage("add 2 and 3")]})

    Async:
        .. code-block:: python

            await agent.ainvoke(...)    # codes are decoded in a worker thread
    """

    def __init__(
        self, compressor: ZCompressor | None = None, *, cache_size: int = 256, **settings: Any
    ) -> None:
        """``compressor``: the one that made the codes; or the settings to build (and share) one."""
        super().__init__()
        self.backend = ZCompressBackend(compressor=compressor, **settings)
        self.cache_size = cache_size
        self._cache: dict[str, str] = {}

    def decode(self, messages: list[BaseMessage], model: Any = None) -> list[BaseMessage]:
        """``messages`` as ``model`` should read them (see the class docstring)."""
        from zcompress_integrations.langchain.chat_model import ChatZCompress

        if len(self._cache) > self.cache_size:
            self._cache.clear()
        return expand_codes(
            messages,
            self.backend.zcompressor,
            keep_latent=isinstance(model, ChatZCompress),
            cache=self._cache,
        )

    def wrap_model_call(
        self, request: ModelRequest, handler: Callable[[ModelRequest], ModelResponse]
    ) -> ModelResponse | AIMessage:
        return handler(request.override(messages=self.decode(request.messages, request.model)))

    async def awrap_model_call(
        self, request: ModelRequest, handler: Callable[[ModelRequest], Awaitable[ModelResponse]]
    ) -> ModelResponse | AIMessage:
        messages = await asyncio.to_thread(self.decode, request.messages, request.model)
        return await handler(request.override(messages=messages))
