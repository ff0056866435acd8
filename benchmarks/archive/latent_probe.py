"""Probe: can the *untrained* backbone read a prefix of embeddings? (Evidence for the latent-quality recipe.)

    python benchmarks/latent_probe.py --segments 16 --out benchmarks/results/latent_probe.md

Teacher-forced cross-entropy (nats/token) of training-split segments after different prefixes, with no adapters:
the exact token embeddings (a 1x "code": the pretrained model copies from context), the same with Gaussian noise
of a given share of the embedding scale (how precise a Z embedding must be to be read for free), and the
embeddings of token pairs summed (a naive 2x code). Segments come from the training split (``.gpu2/segments.npy``
made by ``scripts/gpu_train.py prepare`` from ``train/wikipedia_en_*`` and wikinews), never from evaluation files.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--segments", type=int, default=16)
    parser.add_argument("--length", type=int, default=48)
    parser.add_argument("--data", default=str(ROOT / ".gpu2" / "segments.npy"))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/latent_probe.md")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import numpy as np
    import torch

    from zcompress_integrations.core.backbone import load_backbone

    t0 = time.time()
    backbone = load_backbone(None, device="cpu")
    model, emb = backbone.model, backbone.model.get_input_embeddings()
    segs = torch.as_tensor(np.load(args.data)[: args.segments, : args.length].astype(np.int64))
    n = segs.shape[0]
    scale = float(emb.weight.detach().std())
    sep = emb(torch.tensor(backbone.tokenizer("\n\n", add_special_tokens=False)["input_ids"])).detach()
    sep = sep.unsqueeze(0).expand(n, -1, -1)
    tokens = emb(segs).detach()
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(tokens.shape, generator=gen) * scale

    def ce(prefix: torch.Tensor) -> float:
        x = torch.cat([prefix, tokens], 1)
        with torch.inference_mode():
            logits = model(inputs_embeds=x).logits[:, prefix.shape[1] - 1 : -1].float()
        return float(
            torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), segs.reshape(-1))
        )

    rows = [("no prefix (start token only)", "-", ce(emb(torch.zeros(n, 1, dtype=torch.long)).detach()))]
    rows.append(("exact token embeddings, then \\n\\n", "1x", ce(torch.cat([tokens, sep], 1))))
    for share in (0.25, 0.5, 1.0):
        rows.append(
            (
                f"token embeddings + noise {share:g} x embedding std",
                "1x",
                ce(torch.cat([tokens + share * noise, sep], 1)),
            )
        )
    pairs = (tokens[:, 0::2] + tokens[:, 1::2]) / 2**0.5
    rows.append(("adjacent token pairs summed (/sqrt 2)", "2x", ce(torch.cat([pairs, sep], 1))))
    lines = [
        "# Latent probe: what the untrained backbone reads from an embedding prefix",
        "",
        f"Command: `python benchmarks/latent_probe.py --segments {args.segments} --length {args.length}`  ",
        f"Machine: {os.cpu_count()} CPUs ({platform.machine()}), torch {torch.__version__}; {time.time() - t0:.0f} s.",
        "",
        f"{n} training-split segments of {args.length} tokens; cross-entropy in nats/token, no adapters.",
        "",
        "| prefix | code ratio | cross-entropy |",
        "| --- | ---: | ---: |",
        *[f"| {name} | {ratio} | {value:.2f} |" for name, ratio, value in rows],
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
