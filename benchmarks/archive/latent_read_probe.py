"""Probe: how fast can a decoder LoRA learn to read a 2x (or 4x) code, with Z positions sequential or aligned?

    python benchmarks/latent_read_probe.py --steps 100 --eval-every 25 --out benchmarks/results/latent_read_probe
    python benchmarks/latent_read_probe.py --group 4 --layouts aligned --steps 60 --eval-every 20 \
        --out benchmarks/results/latent_read_probe_4x

Isolates the decoder half of the latent codec, where every CPU recipe so far stalled (issue 4). The code is fixed,
not learned: Z_j = (E[t_2j] + Q E[t_2j+1]) / sqrt 2, the token embeddings of a pair with the second one turned by a
fixed random orthogonal Q (so the pair's order is in the code); with ``--group 4``, four tokens, each turned by its
own rotation, summed and divided by 2. A fresh ``decompress``-style LoRA (the codec's
LoraConfig) is trained on teacher-forced reconstruction after the prefix [Z_1..Z_m, sep], for two layouts of
position ids:

* ``sequential``: the prefix at positions 0..m, the text after it (what the codec does today);
* ``aligned``: Z_j at the position where its first token is predicted, so the query that must emit a token finds
  its Z at relative offset 0 or -1 (a local lookup instead of counting back m + k/2 positions).

Reported: held-out cross-entropy (nats/token) before training and after every ``--eval-every`` steps, for both
layouts, plus the same at 1x (exact token embeddings, untrained) for reference. Training-split segments only
(``.gpu2/segments.npy`` from ``scripts/gpu_train.py prepare``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def run_layout(layout: str, args: argparse.Namespace, train: object, held: object, rotations: object) -> list:
    """Train a fresh LoRA to read the fixed code under one position layout; the held-out CE curve."""
    import numpy as np
    import torch
    from peft import get_peft_model

    from zcompress_integrations.core.backbone import load_backbone
    from zcompress_integrations.core.latent import LatentConfig

    torch.manual_seed(0)
    backbone = load_backbone(None, device="cpu")
    model = backbone.model
    emb = model.get_input_embeddings()
    assert emb.weight.shape[1] == rotations.shape[1], "the probe is written for the default backbone"
    for p in model.parameters():
        p.requires_grad_(False)
    sep = emb(torch.tensor(backbone.tokenizer("\n\n", add_special_tokens=False)["input_ids"][:1])).detach()
    peft_model = get_peft_model(model, LatentConfig().lora_config())
    lm = peft_model.base_model.model
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    g = args.group
    n, m = args.length, args.length // g
    text_pos = torch.arange(m + 1, m + 1 + n)
    if layout == "sequential":
        prefix_pos = torch.arange(0, m + 1)
    else:  # Z_j where t_gj is predicted (the position of t_gj-1); the separator just before the text
        prefix_pos = torch.cat([m + g * torch.arange(m), torch.tensor([m])])
    all_pos = torch.cat([prefix_pos, text_pos]).unsqueeze(0)

    def loss_on(seg: torch.Tensor, shuffle: bool = False) -> torch.Tensor:
        tok = emb(seg)
        z = sum(tok[:, i::g] @ rotations[i].T for i in range(g)) / math.sqrt(g)
        if shuffle:  # each segment gets another segment's code: what the decoder gets from the prior alone
            z = z.roll(1, dims=0)
        x = torch.cat([z, sep.expand(seg.shape[0], 1, -1), tok], 1)
        pos = all_pos.expand(seg.shape[0], -1)
        logits = lm(inputs_embeds=x, position_ids=pos).logits[:, z.shape[1] : -1].float()
        return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), seg.reshape(-1))

    def held_ce(shuffle: bool = False) -> float:
        with torch.no_grad():
            return float(
                sum(loss_on(held[i : i + 8], shuffle) for i in range(0, len(held), 8)) / (len(held) / 8)
            )

    curve = [
        {"step": 0, "tokens": 0, "seconds": 0.0, "held_ce": held_ce(), "held_ce_shuffled": held_ce(True)}
    ]
    print(layout, curve[-1], flush=True)
    rng = np.random.default_rng(0)
    t0 = time.time()
    for step in range(1, args.steps + 1):
        seg = torch.as_tensor(train[rng.integers(0, len(train), args.batch)])
        loss = loss_on(seg)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % args.eval_every == 0 or step == args.steps:
            curve.append(
                {
                    "step": step,
                    "tokens": step * args.batch * n,
                    "seconds": round(time.time() - t0, 1),
                    "train_loss": float(loss.detach()),
                    "held_ce": held_ce(),
                    "held_ce_shuffled": held_ce(True),
                }
            )
            print(layout, curve[-1], flush=True)
    return curve


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--eval-every", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=48)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--layouts", default="sequential,aligned")
    parser.add_argument("--group", type=int, default=2, help="text tokens per Z (the code's ratio)")
    parser.add_argument("--data", default=str(ROOT / ".gpu2" / "segments.npy"))
    parser.add_argument("--out", default="benchmarks/results/latent_read_probe")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import numpy as np
    import torch

    t_start = time.time()
    data = np.load(args.data)[:, : args.length].astype(np.int64)
    held = torch.as_tensor(data[:32])  # held apart from the training rows below
    train = data[32:]
    gen = torch.Generator().manual_seed(0)
    width = 576  # SmolLM2-135M hidden size; checked below
    # token i of a group is turned by rotation i (the first one by the identity), so order is in the code
    rotations = torch.stack(
        [torch.eye(width)]
        + [torch.linalg.qr(torch.randn(width, width, generator=gen))[0] for _ in range(args.group - 1)]
    )
    results = {layout: run_layout(layout, args, train, held, rotations) for layout in args.layouts.split(",")}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "command": "python "
        + " ".join([os.path.relpath(__file__, ROOT), *(argv if argv is not None else sys.argv[1:])]),
        "machine": f"{os.cpu_count()} CPUs ({platform.machine()}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads",
        "seconds": round(time.time() - t_start),
        "batch": args.batch,
        "group": args.group,
        "length": args.length,
        "lr": args.lr,
    }
    (out.parent / f"{out.name}.json").write_text(
        json.dumps({"meta": meta, "curves": results}, indent=2) + "\n"
    )
    lines = [
        f"# Latent read probe: can a decoder LoRA learn to read a fixed {args.group}x code?",
        "",
        f"Command: `{meta['command']}`  ",
        f"Machine: {meta['machine']}; {meta['seconds']} s in all.",
        "",
        f"Held-out cross-entropy (nats/token) on 32 training-split segments of {args.length} tokens (not trained on), "
        f"batch {args.batch}, lr {args.lr}. For scale: no prefix 4.12, exact token embeddings at 1x 0.63 "
        "(`latent_probe.md`).",
        "",
        "The shuffled column feeds each segment another segment's code: the decoder's prior alone. What the decoder",
        "reads from Z is the gap between the two.",
        "",
        "| layout | step | text tokens | seconds | held-out CE, true Z | held-out CE, shuffled Z | read from Z |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for layout, curve in results.items():
        lines += [
            f"| {layout} | {c['step']} | {c['tokens']} | {c['seconds']} | {c['held_ce']:.3f} | "
            f"{c['held_ce_shuffled']:.3f} | {c['held_ce_shuffled'] - c['held_ce']:.3f} |"
            for c in curve
        ]
    (out.parent / f"{out.name}.md").write_text("\n".join(lines) + "\n")
    plot(results, out.parent / f"{out.name}.png", args.group)
    print("\n".join(lines))


def plot(results: dict, path: Path, group: int = 2) -> None:
    """Held-out CE vs text tokens, true and shuffled Z, one colour per layout."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for (layout, curve), colour in zip(
        results.items(), ("tab:blue", "tab:orange", "tab:green"), strict=False
    ):
        x = [c["tokens"] for c in curve]
        ax.plot(x, [c["held_ce"] for c in curve], "-o", color=colour, label=f"{layout}: true Z")
        ax.plot(x, [c["held_ce_shuffled"] for c in curve], "--", color=colour, label=f"{layout}: shuffled Z")
    ax.set_xlabel("training text tokens")
    ax.set_ylabel("held-out cross-entropy (nats/token)")
    ax.set_title(f"Decoder LoRA learning to read a fixed {group}x code")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
