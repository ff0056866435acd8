"""Answer from compressed context: the prompt is built from token ids, never by re-tokenising Z strings.

Each context item becomes one delimited block of the user message: a latent code contributes its Z-token ids (the
Z-aware ``decompress`` adapter reads them); plain text contributes its tokens; an *exact* code is opaque to the
model (it is arithmetic-coded bits), so it is decoded to text first. The chat template of the backbone frames it
all. Token accounting reports what was fed and what the uncompressed prompt would have cost.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from zcompress_integrations.core.zcode import ZCode
from zcompress_integrations.errors import ConfigError, UnsupportedTextError

if TYPE_CHECKING:
    from zcompress_integrations.core.compressor import GenerationResult, ZCompressor

__all__ = ["generate", "build_prompt"]

SYSTEM_PROMPT = "Answer the question using the context documents. Be brief."
_MARK = "\u2063CTX{}\u2063"  # invisible separator: never in user text in practice, and checked below


def _item_ids(zc: ZCompressor, item: ZCode | str | bytes) -> tuple[list[int], int, bool]:
    """(ids fed, ids the item would cost as text, is_latent)."""
    tokenizer = zc.backbone.tokenizer
    if isinstance(item, bytes):
        item = item.decode("utf-8", errors="replace")
    if isinstance(item, str) and item.startswith("zc1:"):
        item = ZCode.from_string(item)
    if isinstance(item, ZCode):
        if item.codec == "latent":
            ids = zc._latent_codec().prompt_ids(item)
            return ids, item.text_tokens, True
        text = zc.decompress(item)
        item = text if isinstance(text, str) else text.decode("utf-8", errors="replace")
    if not isinstance(item, str):
        raise UnsupportedTextError(f"context items must be ZCode, str or bytes; got {type(item).__name__}")
    ids = tokenizer(item, add_special_tokens=False)["input_ids"]
    return ids, len(ids), False


def build_prompt(
    zc: ZCompressor,
    prompt: str,
    context: Sequence[ZCode | str | bytes],
    titles: Sequence[str | None] | None = None,
    system: str = SYSTEM_PROMPT,
) -> tuple[list[int], int, bool]:
    """Prompt ids for the chat model, the uncompressed prompt's token count, and whether any item is latent."""
    if not isinstance(prompt, str):
        raise UnsupportedTextError(f"prompt must be a str; got {type(prompt).__name__}")
    if titles is not None and len(titles) != len(context):
        raise ConfigError(f"titles has {len(titles)} entries but context has {len(context)}")
    tokenizer = zc.backbone.tokenizer
    blocks = []
    for i in range(len(context)):
        title = titles[i] if titles else None
        head = f"Document {i + 1}" + (f" ({title})" if title else "")
        blocks.append(f"{head}:\n{_MARK.format(i)}")
    user = ("\n\n".join(blocks) + "\n\n" if blocks else "") + f"Question: {prompt}"
    messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    if getattr(tokenizer, "chat_template", None):
        rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:
        rendered = f"{system}\n\n{user}\nAnswer:"
    ids: list[int] = []
    uncompressed = 0
    any_latent = False
    rest = rendered
    for i, item in enumerate(context):
        mark = _MARK.format(i)
        before, sep, rest = rest.partition(mark)
        if not sep:
            raise ConfigError("the chat template dropped a context placeholder")
        piece = tokenizer(before, add_special_tokens=False)["input_ids"]
        item_ids, item_text_tokens, latent = _item_ids(zc, item)
        ids += piece + item_ids
        uncompressed += len(piece) + item_text_tokens
        any_latent |= latent
    tail = tokenizer(rest, add_special_tokens=False)["input_ids"]
    ids += tail
    uncompressed += len(tail)
    return ids, uncompressed, any_latent


def generate(
    zc: ZCompressor,
    prompt: str,
    *,
    context: Sequence[ZCode | str | bytes] = (),
    titles: Sequence[str | None] | None = None,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    stop: Sequence[str] | None = None,
    stream: bool = False,
) -> GenerationResult | Iterator[str]:
    """See :meth:`ZCompressor.generate`. ``stream=True`` yields text pieces as they are produced."""
    from zcompress_integrations.core.compressor import GenerationResult

    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be >= 1; got {max_new_tokens}")
    if temperature < 0:
        raise ConfigError(f"temperature must be >= 0; got {temperature}")
    stops = [s for s in (stop or []) if s]
    ids, uncompressed, any_latent = build_prompt(zc, prompt, list(context), titles)
    max_ctx = getattr(zc.backbone.model.config, "max_position_embeddings", None)
    if max_ctx and len(ids) + max_new_tokens > max_ctx:
        raise ConfigError(
            f"the prompt has {len(ids)} tokens and max_new_tokens={max_new_tokens}, more than the model's context "
            f"of {max_ctx}; compress the context (mode='latent') or pass fewer documents"
        )
    pieces = _generate_pieces(zc, ids, max_new_tokens, temperature, stops, any_latent)
    if stream:
        return pieces
    text_parts = list(pieces)
    text = "".join(text_parts)
    completion = len(zc.backbone.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0
    return GenerationResult(text, len(ids), completion, uncompressed)


def _generate_pieces(
    zc: ZCompressor, ids: list[int], max_new_tokens: int, temperature: float, stops: list[str], any_latent: bool
) -> Iterator[str]:
    """Yield decoded text pieces; stop strings are cut (never yielded). Runs under the compressor's lock."""
    import torch

    backbone = zc.backbone
    model, tokenizer = backbone.model, backbone.tokenizer
    eos = {t for t in (tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")) if isinstance(t, int)}
    adapter = zc._latent_codec().reading() if any_latent else _base_only(zc)

    def run() -> Iterator[str]:
        from transformers import DynamicCache

        generator = torch.Generator().manual_seed(0)
        emitted = ""
        produced: list[int] = []
        with zc._lock, adapter, torch.inference_mode():
            cache = DynamicCache(config=model.config)
            x = torch.tensor([ids], device=backbone.device)
            for _ in range(max_new_tokens):
                logits = model(input_ids=x, past_key_values=cache, use_cache=True).logits[0, -1].float()
                logits = logits[: backbone.text_vocab_size]
                if temperature > 0:
                    probs = torch.softmax(logits / temperature, -1).cpu()
                    nxt = int(torch.multinomial(probs, 1, generator=generator)[0])
                else:
                    nxt = int(torch.argmax(logits))
                if nxt in eos:
                    break
                produced.append(nxt)
                text = tokenizer.decode(produced, skip_special_tokens=True)
                cut = min((text.find(s) for s in stops if s in text), default=-1)
                if cut >= 0:
                    if cut > len(emitted):
                        yield text[len(emitted) : cut]
                    return
                # hold back a possible partial stop string and incomplete UTF-8 (shown as U+FFFD)
                hold = max((len(s) - 1 for s in stops), default=0)
                safe = len(text) - hold
                if text.endswith("\ufffd"):
                    safe = min(safe, len(text) - 1)
                if safe > len(emitted):
                    yield text[len(emitted) : safe]
                    emitted = text[:safe]
                x = torch.tensor([[nxt]], device=backbone.device)
            text = tokenizer.decode(produced, skip_special_tokens=True)
            if len(text) > len(emitted):
                yield text[len(emitted) :]

    return run()


def _base_only(zc: ZCompressor) -> contextlib.AbstractContextManager[Any]:
    return zc._disable_adapters()

