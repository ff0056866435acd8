"""The shipped latent adapters on the real default model: they load offline, emit only Z ids at about the target
ratio, decompress to text, the decoder reads Z (its own text comes back far closer than another text's), and
``exact=True`` round-trips byte for byte. Marked slow (about a minute on 2 cores). Quality figures are measured by
``benchmarks/latent_default.py``, not asserted here."""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = pytest.mark.slow

TEXT = (
    "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. It is named after "
    "the engineer Gustave Eiffel, whose company designed and built the tower from 1887 to 1889."
)

OTHER = (
    "Photosynthesis is the process by which green plants and some other organisms use sunlight to synthesize "
    "foods from carbon dioxide and water, releasing oxygen as a by-product of the reaction in their leaves."
)


def test_default_adapters_ship_and_round_trip(default_compressor: Any) -> None:
    from zcompress_integrations import ZCode
    from zcompress_integrations.core.latent import default_adapter_dir

    assert (default_adapter_dir() / "zcompress_config.json").is_file()
    assert (default_adapter_dir() / "README.md").is_file()  # the model card
    zc = default_compressor
    for ratio in (2.0, 4.0):
        code = zc.compress(TEXT, mode="latent", ratio=ratio)
        assert code.codec == "latent" and all(0 <= z < code.k for z in code.z_ids)
        assert ratio / 2 <= code.ratio <= ratio * 2  # content-adaptive, so only near the target
        assert zc.decompress(ZCode.from_bytes(code.to_bytes())) == TEXT  # the ids name the tokens
    # reading, not guessing: at 2x the reader's reconstruction shares n-grams with its own text, not with another
    # text (measured when these adapters shipped: sentence BLEU 29.5 against 1.7)
    from zcompress_integrations.eval.metrics import sentence_bleu

    own, other = zc.reconstruct_batch(zc.compress_batch([TEXT, OTHER], mode="latent", ratio=2.0))
    assert sentence_bleu(own, TEXT) > 15 and sentence_bleu(own, TEXT) > 4 * sentence_bleu(other, TEXT)
    exact = zc.compress_batch([TEXT, "naïve café ☕ \x04"], mode="latent", ratio=2.0, exact=True)
    assert zc.decompress_batch([ZCode.from_string(c.to_string()) for c in exact]) == [
        TEXT,
        "naïve café ☕ \x04",
    ]
    assert exact[0].residual and exact[0].z_ids == zc.compress(TEXT, mode="latent", ratio=2.0).z_ids
    # \x04 has no token of its own: its ids name a stand-in, so without a residual the reader rebuilds the text
    plain = zc.compress("naïve café ☕ \x04", mode="latent", ratio=2.0)
    assert zc.latent_codec.token_bytes.missing_bytes and zc.decompress(plain) == zc.reconstruct(plain)


def test_default_infer_adapter_continues_codes_in_z(default_compressor: Any) -> None:
    """The shipped infer adapter: continue_z writes whole segments of the code's mean group size that decompress
    to text, and its teacher-forced prediction of each next group beats the untrained start (backbone, identity
    head). Quality is measured by benchmarks/zspace_continuation.py, not asserted here."""
    import copy

    import torch

    from zcompress_integrations.core.codes.token_groups import id_groups
    from zcompress_integrations.core.zspace_groups import group_loss

    zc = default_compressor
    code = zc.compress(TEXT, mode="latent", ratio=2.0)
    cont = zc.continue_z(code)
    codec = zc.latent_codec
    read = id_groups(code.z_ids, codec.config.vocab_size, codec.config.max_group)
    size = round(sum(map(len, read)) / len(read))  # the code's mean group size
    groups = id_groups(cont.z_ids, codec.config.vocab_size, codec.config.max_group)
    assert (
        cont.segments == (-(-64 // size),) and sum(map(len, groups)) == 64 and max(map(len, groups)) == size
    )
    assert isinstance(zc.decompress(cont), str)
    tokens = codec.backbone.tokenizer(TEXT + " " + OTHER, add_special_tokens=False)["input_ids"]
    window, sizes = tokens[: len(tokens) // 2 * 2], [2] * (len(tokens) // 2)
    with codec.adapter("infer"), torch.no_grad():
        trained = float(group_loss(codec, [window], [sizes])[0])
    head = codec.infer_head
    try:
        codec.infer_head = copy.deepcopy(head)
        codec.infer_head.up.data.zero_()
        if codec.infer_head.chain_rank:
            codec.infer_head.chain_up.data.zero_()
        with codec.peft_model.disable_adapter(), torch.no_grad():
            start = float(group_loss(codec, [window], [sizes])[0])
    finally:
        codec.infer_head = head
    assert trained < start - 0.5
