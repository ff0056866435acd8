"""Answer from compressed context: the prompt is built from token ids, never by re-tokenising Z strings.

Each context item becomes one delimited block of the user message: a latent code contributes its Z-token ids;
plain text contributes its tokens; an *exact* code is opaque to the
model (it is arithmetic-coded bits), so it is decoded to text first. The chat template of the backbone frames it
all. Token accounting reports what was fed and what the uncompressed prompt would have cost.

With latent items, the prompt up to the last Z-token is read with the ``decompress`` adapter on, and the rest of
the prompt and the answer run on the base model, which attends to the adapter's reading of Z (its keys and values
in the cache). The shipped adapter trains through this same split (``core/training/from_z.py``): it learns to
write Z keys and values the base model answers from. A reader trained only to reconstruct, left on throughout,
wrote empty summaries (README, eval run 3).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from zcompress_integrations.core.zcode import ZCode
from zcompress_integrations.errors import ConfigError, UnsupportedTextError

if TYPE_CHECKING:
    from zcompress_integrations.core.compressor import GenerationResult, ZCompressor

__all__ = ["generate", "generate_batch", "build_prompt", "GenerationStream"]

SYSTEM_PROMPT = "Answer the question using the context documents. Be brief."
_MARK = "\u2063CTX{}\u2063"  # invisible separator: never in user text in practice, and checked below


class GenerationStream:
    """Iterator of generated text pieces that also carries the token accounting.

    ``prompt_tokens`` and ``uncompressed_prompt_tokens`` are known before the first piece; ``completion_tokens``
    grows as pieces are produced. Consume it in one thread (it holds the compressor's lock while running).
    """

    def __init__(self, pieces: Iterator[str], prompt_tokens: int, uncompressed_prompt_tokens: int) -> None:
        self._pieces = pieces
        self.prompt_tokens = prompt_tokens
        self.uncompressed_prompt_tokens = uncompressed_prompt_tokens
        self.completion_tokens = 0
        self.text = ""

    def __iter__(self) -> GenerationStream:
        return self

    def __next__(self) -> str:
        piece = next(self._pieces)
        self.text += piece
        return piece

    def close(self) -> None:
        close = getattr(self._pieces, "close", None)
        if close is not None:
            close()


def _chat_messages(
    prompt: str | Sequence[Mapping[str, Any]], docs: str, system: str | None, template: str | None
) -> list[dict[str, Any]]:
    """The conversation to render: the question or the given turns, the documents in the last user turn."""
    if isinstance(prompt, str):
        messages: list[dict[str, Any]] = [{"role": "user", "content": f"{docs}Question: {prompt}"}]
    elif isinstance(prompt, Sequence) and all(isinstance(m, Mapping) and "role" in m for m in prompt):
        messages = [dict(m) for m in prompt]
        for m in messages:
            content = m.get("content")
            if content is None:
                m["content"] = ""
            elif not isinstance(content, str):
                raise UnsupportedTextError(f"message content must be a str; got {type(content).__name__}")
        last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
        if last_user is None:
            messages.append({"role": "user", "content": docs.rstrip()})
        elif docs:
            messages[last_user]["content"] = docs + messages[last_user]["content"]
        if not (template and "tool_calls" in template):  # the template would drop them: write them as text
            for m in messages:
                calls = m.pop("tool_calls", None) or []
                text = "".join(f"\n<tool_call>{json.dumps(c.get('function', c))}</tool_call>" for c in calls)
                m["content"] = (m["content"] + text).strip() if text else m["content"]
    else:
        raise UnsupportedTextError(
            f"prompt must be a str or a list of {{'role': ..., 'content': ...}} dicts; got {type(prompt).__name__}"
        )
    if system is not None and not any(m["role"] == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": system})
    return messages


def _resolve_items(zc: ZCompressor, context: Sequence[ZCode | str | bytes]) -> list[ZCode | str]:
    """Parse code strings, and decode all *exact* codes in one batch (they are opaque to the model)."""
    items: list[ZCode | str] = []
    for item in context:
        if isinstance(item, bytes | bytearray):
            item = bytes(item).decode("utf-8", errors="replace")
        if isinstance(item, str) and item.startswith("zc1:"):
            item = ZCode.from_string(item)
        if not isinstance(item, ZCode | str):
            raise UnsupportedTextError(f"context items must be ZCode, str or bytes; got {type(item).__name__}")
        items.append(item)
    exact = [i for i, it in enumerate(items) if isinstance(it, ZCode) and it.codec == "exact"]
    if exact:
        texts = zc.decompress_batch([items[i] for i in exact])
        for i, text in zip(exact, texts, strict=True):
            items[i] = text if isinstance(text, str) else text.decode("utf-8", errors="replace")
    return items


def build_prompt(
    zc: ZCompressor,
    prompt: str | Sequence[Mapping[str, Any]] | Mapping[str, Any],
    context: Sequence[ZCode | str | bytes],
    titles: Sequence[str | None] | None = None,
    system: str | None = SYSTEM_PROMPT,
    tools: Sequence[Mapping[str, Any]] | None = None,
) -> tuple[list[Any], int, int, bool]:
    """Prompt pieces for the chat model: a list of token-id lists and (latent) ``[n, H]`` Z embeddings.

    ``prompt`` is a question (one user turn, shown as ``Question: ...``), a conversation, or a conversation with
    its tools (``{"messages": [...], "tools": [...]}``, so the runners pass tools through unchanged): chat messages as
    dicts with ``role`` (``system``/``user``/``assistant``/``tool``), ``content`` and, for assistant turns,
    ``tool_calls`` (``[{"type": "function", "function": {"name": ..., "arguments": {...}}}]``). The context
    blocks (``Document N:``) go at the start of the *last user turn*, the one they were retrieved for. ``system``
    is the system turn when the conversation has none (``None``: no system turn). ``tools`` (JSON schemas of
    functions) are handed to the chat template, which must support them; so must it support ``tool_calls``, else
    they are written into the assistant turn as Hermes-style ``<tool_call>{json}</tool_call>`` text.

    Returns (pieces, prompt tokens fed, uncompressed prompt tokens, whether any item is latent).
    """
    if isinstance(prompt, Mapping):  # {"messages": [...], "tools": [...]}: a conversation with its tools
        tools = prompt.get("tools") or tools
        prompt = prompt.get("messages", [])
    if titles is not None and len(titles) != len(context):
        raise ConfigError(f"titles has {len(titles)} entries but context has {len(context)}")
    items = _resolve_items(zc, context)
    tokenizer = zc.backbone.tokenizer
    blocks = []
    for i in range(len(items)):
        title = titles[i] if titles else None
        head = f"Document {i + 1}" + (f" ({title})" if title else "")
        blocks.append(f"{head}:\n{_MARK.format(i)}")
    docs = "\n\n".join(blocks) + "\n\n" if blocks else ""
    template = getattr(tokenizer, "chat_template", None)
    messages = _chat_messages(prompt, docs, system, template)
    if tools and not (template and "tools" in template):
        raise ConfigError(
            f"the backbone's chat template ({zc.model_name}) has no tool support (it never reads `tools`); "
            "use a backbone whose template takes tools= (e.g. a Qwen or Hermes model), or call without tools"
        )
    if template:
        extra = {"tools": list(tools)} if tools else {}
        rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **extra)
    elif isinstance(prompt, str):
        rendered = "\n\n".join(m["content"] for m in messages) + "\nAnswer:"
    else:
        rendered = "\n\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\n\nassistant:"
    pieces: list[Any] = []
    fed = uncompressed = 0
    any_latent = False
    rest = rendered
    for i, item in enumerate(items):
        before, sep, rest = rest.partition(_MARK.format(i))
        if not sep:
            raise ConfigError("the chat template dropped a context placeholder")
        head = tokenizer(before, add_special_tokens=False)["input_ids"]
        pieces.append(head)
        fed += len(head)
        uncompressed += len(head)
        if isinstance(item, ZCode):  # latent: the decompress adapter reads its Z embeddings
            codec = zc._latent_codec()
            pieces.append(_ZPiece(codec.prompt_embeds(item), *codec.prompt_offsets(item)))
            fed += item.z_tokens
            uncompressed += item.text_tokens
            any_latent = True
        else:
            ids = tokenizer(item, add_special_tokens=False)["input_ids"]
            pieces.append(ids)
            fed += len(ids)
            uncompressed += len(ids)
    tail = tokenizer(rest, add_special_tokens=False)["input_ids"]
    pieces.append(tail)
    return pieces, fed + len(tail), uncompressed + len(tail), any_latent


class _ZPiece:
    """A latent item's Z embeddings ``[n, H]`` in a prompt, with their position offsets and the span they take."""

    def __init__(self, embeds: Any, offsets: list[int], span: int) -> None:
        self.embeds, self.offsets, self.span = embeds, offsets, span


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
) -> GenerationResult | GenerationStream:
    """See :meth:`ZCompressor.generate`. ``stream=True`` returns a :class:`GenerationStream`."""
    from zcompress_integrations.core.compressor import GenerationResult

    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be >= 1; got {max_new_tokens}")
    if temperature < 0:
        raise ConfigError(f"temperature must be >= 0; got {temperature}")
    stops = [s for s in (stop or []) if s]
    pieces, fed, uncompressed, any_latent = build_prompt(zc, prompt, list(context), titles)
    _check_length(zc, _span(pieces), max_new_tokens)
    counter = GenerationStream(iter(()), fed, uncompressed)
    counter._pieces = _generate_pieces(zc, pieces, max_new_tokens, temperature, stops, any_latent, counter)
    if stream:
        return counter
    text = "".join(counter)
    return GenerationResult(text, fed, counter.completion_tokens, uncompressed)


def _span(pieces: list[Any]) -> int:
    """Positions the prompt takes (a token-group code spans its uncompressed length)."""
    return sum(p.span if isinstance(p, _ZPiece) else len(p) for p in pieces)


def _check_length(zc: ZCompressor, span: int, max_new_tokens: int) -> None:
    max_ctx = getattr(zc.backbone.model.config, "max_position_embeddings", None)
    if max_ctx and span + max_new_tokens > max_ctx:
        raise ConfigError(
            f"the prompt spans {span} positions and max_new_tokens={max_new_tokens}, more than the model's "
            f"context of {max_ctx}; pass fewer or shorter documents"
        )


def _eos_ids(tokenizer: Any) -> set[int]:
    return {t for t in (tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")) if isinstance(t, int)}


def _cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    cut = min((text.find(s) for s in stops if s in text), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def generate_batch(
    zc: ZCompressor,
    prompts: Sequence[str],
    *,
    contexts: Sequence[Sequence[ZCode | str | bytes]] | None = None,
    titles: Sequence[Sequence[str | None] | None] | None = None,
    max_new_tokens: int = 128,
    stop: Sequence[str] | None = None,
    batch_size: int = 8,
) -> list[GenerationResult]:
    """See :meth:`ZCompressor.generate_batch`: greedy answers to many prompts, decoded together in batches.

    Requests with latent context run under the ``decompress`` adapter, the others on the base model, so each
    request is answered by the same model :func:`generate` would use. Within a kind, requests are sorted by prompt
    length and left-padded into batches of ``batch_size``.
    """
    import torch

    from zcompress_integrations.core.backbone import greedy_batch
    from zcompress_integrations.core.compressor import GenerationResult

    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be >= 1; got {max_new_tokens}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1; got {batch_size}")
    n = len(prompts)
    contexts = [()] * n if contexts is None else contexts
    titles = [None] * n if titles is None else titles
    if len(contexts) != n or len(titles) != n:
        raise ConfigError(f"{n} prompts need {n} contexts and titles; got {len(contexts)} and {len(titles)}")
    stops = [s for s in (stop or []) if s]
    built = [build_prompt(zc, p, list(c), t) for p, c, t in zip(prompts, contexts, titles, strict=True)]
    for pieces, _, _, _ in built:
        _check_length(zc, _span(pieces), max_new_tokens)
    backbone = zc.backbone
    tokenizer = backbone.tokenizer
    eos = _eos_ids(tokenizer)
    results: list[GenerationResult | None] = [None] * n

    def finished(tokens: list[int]) -> bool:
        return bool(stops) and _cut_at_stop(tokenizer.decode(tokens, skip_special_tokens=True), stops)[1]

    for latent_kind in (False, True):
        todo = sorted((i for i in range(n) if built[i][3] == latent_kind), key=lambda i: built[i][1])
        if not todo:
            continue
        codec = zc._latent_codec() if latent_kind else None
        model = codec._lm if codec is not None else backbone.model
        with zc._lock, zc._disable_adapters(), torch.inference_mode():
            emb = model.get_input_embeddings()
            for s in range(0, len(todo), batch_size):
                chunk = todo[s : s + batch_size]
                prefixes, positions = zip(*(_embed_pieces(emb, built[i][0], backbone.device) for i in chunk), strict=True)
                outs = greedy_batch(
                    model,
                    list(prefixes),
                    max_new_tokens,
                    vocab=backbone.text_vocab_size,
                    eos=eos,
                    finished=finished,
                    positions=list(positions),
                    head_lengths=[_read_length(built[i][0]) for i in chunk] if codec is not None else None,
                    head_context=codec.reading_inside_base if codec is not None else None,
                )
                for i, tokens in zip(chunk, outs, strict=True):
                    text, _ = _cut_at_stop(tokenizer.decode(tokens, skip_special_tokens=True), stops)
                    results[i] = GenerationResult(text, built[i][1], len(tokens), built[i][2])
    return results  # type: ignore[return-value]


def _read_length(pieces: list[Any]) -> int:
    """Prompt rows up to and including the last Z piece (read with the adapter on)."""
    last = max((i for i, p in enumerate(pieces) if isinstance(p, _ZPiece)), default=-1)
    return sum(p.embeds.shape[0] if isinstance(p, _ZPiece) else len(p) for p in pieces[: last + 1])


def _embed_pieces(emb: Any, pieces: list[Any], device: Any) -> tuple[Any, Any]:
    """``[P, H]`` input embeddings of prompt pieces (token-id lists and Z pieces) and their ``[P]`` positions."""
    import torch

    parts, positions, start = [], [], 0
    for p in pieces:
        if isinstance(p, _ZPiece):
            parts.append(p.embeds)
            positions += [start + o for o in p.offsets]
            start += p.span
        else:
            parts.append(emb(torch.tensor(p, dtype=torch.long, device=device)))
            positions += range(start, start + len(p))
            start += len(p)
    x = torch.cat([p.to(emb.weight.dtype) for p in parts], dim=0)
    return x, torch.tensor(positions, dtype=torch.long, device=device)


def _generate_pieces(
    zc: ZCompressor,
    pieces: list[Any],
    max_new_tokens: int,
    temperature: float,
    stops: list[str],
    any_latent: bool,
    counter: GenerationStream,
) -> Iterator[str]:
    """Yield decoded text pieces; stop strings are cut (never yielded). Runs under the compressor's lock."""
    import torch

    from zcompress_integrations.core.backbone import cache_kwargs

    backbone = zc.backbone
    tokenizer = backbone.tokenizer
    eos = _eos_ids(tokenizer)
    latent = zc._latent_codec() if any_latent else None
    model = latent._lm if latent is not None else backbone.model

    def first_input(cache: Any) -> dict[str, Any]:
        """The prompt's input for its last forward; with latent items, the part up to the last Z-token is run
        here first, under the reading adapter (see the module docstring)."""
        if latent is None:
            ids = [t for p in pieces for t in p]
            return {"input_ids": torch.tensor([ids], device=backbone.device)}
        x, pos = _embed_pieces(model.get_input_embeddings(), pieces, backbone.device)
        head = _read_length(pieces)
        with latent.reading_inside_base():
            model(inputs_embeds=x[None, :head], position_ids=pos[None, :head], use_cache=True, logits_to_keep=1,
                  **cache_kwargs(model, cache))
        return {"inputs_embeds": x[None, head:], "position_ids": pos[None, head:]}

    def run() -> Iterator[str]:
        from transformers import DynamicCache

        generator = torch.Generator().manual_seed(0)
        emitted = ""
        produced: list[int] = []
        with zc._lock, zc._disable_adapters(), torch.inference_mode():
            cache = DynamicCache(config=model.config)
            feed = first_input(cache)
            next_pos = _span(pieces)  # generated tokens follow the prompt's last position
            for _ in range(max_new_tokens):
                out = model(**feed, use_cache=True, logits_to_keep=1, **cache_kwargs(model, cache))
                logits = out.logits[0, -1].float()
                logits = logits[: backbone.text_vocab_size]
                if temperature > 0:
                    probs = torch.softmax(logits / temperature, -1).cpu()
                    nxt = int(torch.multinomial(probs, 1, generator=generator)[0])
                else:
                    nxt = int(torch.argmax(logits))
                if nxt in eos:
                    break
                produced.append(nxt)
                counter.completion_tokens = len(produced)
                text = tokenizer.decode(produced, skip_special_tokens=True)
                head, stopped = _cut_at_stop(text, stops)
                if stopped:
                    if len(head) > len(emitted):
                        yield head[len(emitted) :]
                    return
                # hold back a possible partial stop string and incomplete UTF-8 (shown as U+FFFD)
                hold = max((len(s) - 1 for s in stops), default=0)
                safe = len(text) - hold
                if text.endswith("\ufffd"):
                    safe = min(safe, len(text) - 1)
                if safe > len(emitted):
                    yield text[len(emitted) : safe]
                    emitted = text[:safe]
                feed = {"input_ids": torch.tensor([[nxt]], device=backbone.device)}
                if latent is not None:
                    feed["position_ids"] = torch.tensor([[next_pos]], device=backbone.device)
                    next_pos += 1
            text = tokenizer.decode(produced, skip_special_tokens=True)
            if len(text) > len(emitted):
                yield text[len(emitted) :]

    return run()
