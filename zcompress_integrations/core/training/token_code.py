"""Train the ``decompress`` adapter to read the token-group Z code (``LatentConfig.z_embedding == "tokens"``).

The recipe issue 4's read probe pointed to. The code is not learned, so it cannot collapse: each Z-token stands
for a group of 1..``max_group`` consecutive text tokens, and its embedding is the sum of their unit-normalised
token embeddings, the k-th turned by a fixed orthogonal matrix R_k (R_0 = I), scaled to the backbone's mean
embedding norm. A linear read-out recovers every token of a 4-group from that sum (cosine nearest neighbour,
100% on training text), so the information is there; what the adapter learns is to find and read it. Z-tokens sit
at aligned position ids (the position where their first token is predicted), so reading is a local lookup.

Training: teacher-forced reconstruction cross-entropy (text + end token) after the prefix [Z_1..Z_m, sep], over
random partitions of training-split segments into groups (sizes drawn from ``--group-probs``), so one adapter
reads any grouping the compressor chooses at any ratio up to ``max_group``. Checkpoints every
``--checkpoint-every`` steps; ``--resume`` continues a killed run from the last one; held-out CE (true code and a
shuffled one) every ``--eval-every`` steps into ``log.jsonl``.

    OMP_NUM_THREADS=2 zcompress train --task tokens --out runs/tokens \
        --steps 600 --resume
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

__all__ = ["random_groups", "grow_lora", "main"]


def random_groups(length: int, probs: list[float], rng: Any) -> list[int]:
    """Sizes of a random partition of ``length`` tokens into groups (size k+1 with probability probs[k])."""
    sizes: list[int] = []
    left = length
    while left > 0:
        g = int(rng.choice(len(probs), p=probs)) + 1
        g = min(g, left)
        sizes.append(g)
        left -= g
    return sizes


def _batch_inputs(codec: Any, seg: Any, groups: list[list[int]]) -> tuple[Any, Any, Any]:
    """Padded prefix embeddings, position ids and attention mask for a batch with per-row groupings.

    Rows have different Z counts; each row's prefix is left-padded to the longest so that the separator and
    the text line up (pad positions are masked out)."""
    import torch

    from zcompress_integrations.core.latent import group_ids

    batch, n = seg.shape
    rows = [codec.token_code_layout(group_ids(seg[b].tolist(), groups[b], codec.config.vocab_size), n) for b in range(batch)]
    m_max = max(len(r[1]) for r in rows)
    weight = codec._lm.get_input_embeddings().weight
    x = torch.zeros(batch, m_max + 1 + n, weight.shape[1], dtype=weight.dtype, device=seg.device)
    pos = torch.zeros(batch, m_max + 1 + n, dtype=torch.long, device=seg.device)
    mask = torch.zeros(batch, m_max + 1 + n, dtype=torch.long, device=seg.device)
    tok = codec._embed(seg)
    for b, (z_ids, z_pos) in enumerate(rows):
        m = len(z_ids)
        prefix = codec.decoder_prefix(codec.z_embeddings(z_ids).unsqueeze(0))[0]
        x[b, m_max - m : m_max + 1] = prefix
        pos[b, m_max - m : m_max] = torch.as_tensor(z_pos)
        mask[b, m_max - m :] = 1
    x[:, m_max + 1 :] = tok
    pos[:, m_max] = 0  # the separator: where the first token is predicted
    pos[:, m_max + 1 :] = torch.arange(1, n + 1)
    return x, pos, mask


def reconstruction_loss(codec: Any, seg: Any, groups: list[list[int]], shuffle: bool = False) -> Any:
    """Mean CE (nats/token) of the text and its end token given the token-group code of ``seg``."""
    import torch

    if shuffle:  # every row gets the next row's code: what the decoder gets from its prior alone
        order = list(range(1, seg.shape[0])) + [0]
        x, pos, mask = _batch_inputs(codec, seg[order], [groups[i] for i in order])
        x[:, -seg.shape[1] :] = codec._embed(seg)
    else:
        x, pos, mask = _batch_inputs(codec, seg, groups)
    n = seg.shape[1]
    hidden = codec._lm.model(inputs_embeds=x, position_ids=pos, attention_mask=mask).last_hidden_state
    logits = codec._lm.lm_head(hidden[:, -n - 1 :]).float()
    target = torch.cat([seg, torch.full((seg.shape[0], 1), codec._eos, dtype=seg.dtype, device=seg.device)], 1)
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))


def grow_lora(model: Any, lora: dict[str, Any]) -> None:
    """Load LoRA weights of rank r <= the model's rank: A fills the first r rows, B the first r columns, and the
    rest of B is zeroed, so the adapter computes what the smaller one did (same alpha / r scale) and the extra
    rank trains from there."""
    import torch

    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in lora.items():
            p = params[name]
            r = value.shape[0] if "lora_A" in name else value.shape[1]
            if "lora_A" in name:
                p[:r] = value
            else:
                p.zero_()
                p[:, :r] = value


def init_source(source: str | Path) -> dict[str, Any]:
    """The decompress LoRA and latent modules to start from: a run's ``checkpoint.pt``, or an adapters directory
    (``zcompress train`` output, or ``"default"`` for the shipped one, as in ``load_latent_codec``), so a run can go
    on from the released weights when the checkpoint with the optimizer state is gone. The optimizer then starts
    fresh (the warm-up covers it)."""
    import torch

    from zcompress_integrations.core.latent import default_adapter_dir

    path = default_adapter_dir() if str(source) == "default" else Path(source)
    if path.is_dir():
        from safetensors.torch import load_file

        from zcompress_integrations.core.latent import CONFIG_NAME, MODULES_NAME, LatentConfig

        if not (path / CONFIG_NAME).is_file() or not LatentConfig.load(path).token_code:
            raise SystemExit(f"{path} is not a token-group adapters directory (no {CONFIG_NAME} with the token code)")
        saved = load_file(str(path / "decompress" / "adapter_model.safetensors"))
        # peft drops the adapter name when saving: put it back to match the live parameter names
        lora = {k.replace(".weight", ".decompress.weight"): v.float() for k, v in saved.items()}
        return {"lora": lora, "modules": load_file(str(path / MODULES_NAME))}
    state = torch.load(path, weights_only=False)
    if "modules" not in state:
        raise SystemExit(f"{path} has no latent modules (sep embedding); it predates --init-from")
    return state


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="run directory (checkpoints, log.jsonl, final adapters)")
    parser.add_argument("--data", default=".gpu2/segments.npy", help="training-split token segments [N, L] (.npy)")
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument(
        "--decay-start", type=int, default=None,
        help="from this step the lr falls linearly to 5%% at --steps (default: constant after warm-up)",
    )
    parser.add_argument("--max-group", type=int, default=4)
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank of the decompress adapter (alpha = 2 x rank)")
    parser.add_argument("--group-probs", default="0.2,0.45,0.15,0.2", help="P(group size = 1, 2, ...)")
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--checkpoint-every", type=int, default=25)
    parser.add_argument("--held", type=int, default=32, help="first N segments are held apart for eval")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument(
        "--init-from", default=None,
        help="start from another run's checkpoint.pt or an adapters directory ('default': the shipped one) (LoRA and "
        "code; fresh optimizer; a lower rank fills the first rows, same function)",
    )
    parser.add_argument(
        "--export", default=None, help="only write adapters from the run's last checkpoint into this directory"
    )
    parser.add_argument("--model", default=None, help="backbone (default: the embedded SmolLM2-135M)")
    parser.add_argument(
        "--qa-weight", type=float, default=0.0,
        help="add this times the answer-from-Z loss (core/training/from_z.py) to each step; 0 = reconstruction only",
    )
    parser.add_argument("--qa-batch", type=int, default=4, help="answer examples per step (with --qa-weight)")
    parser.add_argument("--qa-repeat", type=float, default=0.25, help="share of them that are 'repeat' prompts")
    parser.add_argument("--qa-held", type=int, default=24, help="answer examples held apart for eval")
    parser.add_argument("--data-dir", default=None, help="shared/data folder (answer examples)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, auto (fp32 everywhere: the model is small)")
    parser.add_argument("--minutes", type=float, default=None, help="stop after this much training time")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import numpy as np
    import torch

    from zcompress_integrations.core.backbone import load_backbone
    from zcompress_integrations.core.latent import LatentCodec, LatentConfig, even_groups

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    probs = [float(p) for p in args.group_probs.split(",")]
    probs = [p / sum(probs) for p in probs]
    if len(probs) > args.max_group:
        parser.error("--group-probs has more sizes than --max-group")

    torch.manual_seed(args.seed)
    backbone = load_backbone(args.model, device=args.device, dtype="float32")
    dev = backbone.device
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    config = LatentConfig(
        z_embedding="tokens", max_group=args.max_group, segment_len=args.length, max_slots=args.length,
        lora_r=args.rank, lora_alpha=2 * args.rank,
    )
    codec = LatentCodec.create(backbone, config, seed=args.seed)
    for p in codec.modules.parameters():
        p.requires_grad_(False)  # the code is fixed; only the decompress LoRA trains
    data = np.load(args.data)[:, : args.length].astype(np.int64)
    held = torch.as_tensor(data[: args.held], device=dev)
    train = data[args.held :]
    params = []
    with codec.adapter("decompress"):
        for name, p in codec.peft_model.named_parameters():
            p.requires_grad_("lora_" in name and ".decompress." in name)
            if p.requires_grad:
                params.append(p)
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    def lr_factor(s: int) -> float:
        warm = min(1.0, (s + 1) / args.warmup)
        if args.decay_start is None or s < args.decay_start:
            return warm
        return warm * max(0.05, 1 - 0.95 * (s - args.decay_start) / max(1, args.steps - args.decay_start))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)  # the lambda is not in the checkpoint: resume may change it
    rng = np.random.default_rng(args.seed)
    step, seconds, tokens, qa_seen = 0, 0.0, 0, 0
    ckpt = out / "checkpoint.pt"
    if (args.resume or args.export) and ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        codec.peft_model.load_state_dict(state["lora"], strict=False)
        if "modules" in state:
            codec.modules.load_state_dict(state["modules"])
            codec.refresh_fingerprint()
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        # the peak lr, like the schedule's shape, comes from the flags, so a warm restart may lower it
        sched.base_lrs = [args.lr for _ in opt.param_groups]
        for group in opt.param_groups:
            group["initial_lr"] = args.lr
            group["lr"] = args.lr * lr_factor(state["step"])
        rng.bit_generator.state = state["rng"]
        step, seconds, tokens = state["step"], state["seconds"], state["tokens"]
        qa_seen = state.get("qa_seen", 0)
        print(f"resumed at step {step}", flush=True)
    elif args.init_from:
        source = init_source(args.init_from)
        grow_lora(codec.peft_model, source["lora"])
        codec.modules.load_state_dict(source["modules"])  # the same code and separator the source was trained on
        codec.refresh_fingerprint()
        print(f"initialised from {args.init_from}", flush=True)

    qa = None
    if args.qa_weight > 0:
        from zcompress_integrations.core.training import from_z

        examples = from_z.load_answer_examples(args.data_dir, seed=args.seed)
        qa = {"zc": from_z.compressor_for(backbone, codec), "held": examples[: args.qa_held],
              "train": examples[args.qa_held :], "codes": {}}

    def qa_loss(example: Any, ratio: float) -> Any:
        """Answer-from-Z loss of one example, its context compressed at ``ratio`` (codes cached: they are fixed)."""
        key = (example, ratio)
        if key not in qa["codes"]:
            with torch.no_grad():
                qa["codes"][key] = codec.compress_batch([text for _, text in example.context], ratio=ratio)
        return from_z.answer_loss(qa["zc"], qa["codes"][key], example)

    eval_groups = {  # fixed groupings of the held-out rows: all pairs (2x) and all quads (4x)
        f"{g}x": [even_groups(args.length, g) for _ in range(len(held))]
        for g in (2, args.max_group)
    }

    def held_ce(groups: list[list[int]], shuffle: bool) -> float:
        with torch.no_grad(), codec.adapter("decompress"):
            losses = [
                float(reconstruction_loss(codec, held[i : i + 8], groups[i : i + 8], shuffle))
                for i in range(0, len(held), 8)
            ]
        return sum(losses) / len(losses)

    def log_eval() -> None:
        row: dict[str, Any] = {"step": step, "tokens": tokens, "seconds": round(seconds, 1)}
        for name, groups in eval_groups.items():
            row[f"held_ce_{name}"] = round(held_ce(groups, False), 4)
            row[f"held_ce_{name}_shuffled"] = round(held_ce(groups, True), 4)
        if qa is not None:
            with torch.no_grad():
                row["held_answer_ce_2x"] = round(sum(float(qa_loss(e, 2.0)) for e in qa["held"]) / len(qa["held"]), 4)
        print(json.dumps(row), flush=True)
        with open(out / "log.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")

    if args.export:
        export(codec, Path(args.export), held, args, probs, step, tokens, seconds, qa_seen)
        return
    if step == 0 or (qa is not None and step > 0):  # a run resumed with the answer loss logs where it starts
        log_eval()
    codec.peft_model.train()
    while step < args.steps:
        t0 = time.time()
        seg = torch.as_tensor(train[rng.integers(0, len(train), args.batch)], device=dev)
        groups = [random_groups(args.length, probs, rng) for _ in range(args.batch)]
        with codec.adapter("decompress"):
            opt.zero_grad()
            loss = reconstruction_loss(codec, seg, groups)
            loss.backward()
            if qa is not None:  # answer rows, one forward each (lengths differ); gradients add up
                for _ in range(args.qa_batch):
                    if rng.random() < args.qa_repeat:
                        row = train[rng.integers(0, len(train))]
                        example = from_z.repeat_example(backbone.tokenizer.decode(row.tolist()))
                    else:
                        example = qa["train"][int(rng.integers(0, len(qa["train"])))]
                    (args.qa_weight / args.qa_batch * qa_loss(example, float(rng.choice([2.0, 4.0])))).backward()
                    qa_seen += 1
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
        step += 1
        tokens += args.batch * args.length
        seconds += time.time() - t0
        if step % 5 == 0:
            print(f"step {step} loss {float(loss.detach()):.3f} lr {sched.get_last_lr()[0]:.2e} {seconds / step:.1f}s/step", flush=True)
        out_of_time = args.minutes is not None and seconds >= 60 * args.minutes
        if step % args.checkpoint_every == 0 or step == args.steps or out_of_time:
            lora = {k: v for k, v in codec.peft_model.state_dict().items() if "lora_" in k and ".decompress." in k}
            state = {
                "lora": lora, "modules": codec.modules.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                "rng": rng.bit_generator.state, "step": step, "seconds": seconds, "tokens": tokens,
                "qa_seen": qa_seen,
            }
            torch.save(state, out / "checkpoint.tmp")
            os.replace(out / "checkpoint.tmp", ckpt)
        if step % args.eval_every == 0 or step == args.steps or out_of_time:
            codec.peft_model.eval()
            log_eval()
            codec.peft_model.train()
        if out_of_time:
            break
    export(codec, out / "adapters", held, args, probs, step, tokens, seconds, qa_seen)


def export(
    codec: Any, directory: Path, held: Any, args: argparse.Namespace, probs: list[float], step: int, tokens: int,
    seconds: float, qa_seen: int = 0,
) -> None:
    """Write the adapters directory: LoRA, modules, config (with ``calib_nll`` from the held-apart training
    segments, so Z counts follow surprisal relative to training text) and a short model card."""
    codec.config.calib_nll = float(sum(codec.segment_nll(held.tolist())) / len(held))
    codec.config.training = {
        "recipe": "token-group code, decompress LoRA only (zcompress_integrations/core/training/token_code.py)",
        "steps": step,
        "batch": args.batch,
        "segment_len": args.length,
        "lr": args.lr,
        "decay_start": args.decay_start,
        "group_probs": probs,
        "tokens_seen": tokens,
        "wall_s": round(seconds),
        "data": str(args.data),
    }
    if args.qa_weight > 0:
        codec.config.training["answer_from_z"] = {
            "weight": args.qa_weight, "examples_per_step": args.qa_batch, "repeat_share": args.qa_repeat,
            "examples_seen": qa_seen,
            "data": "hotpotqa_train_100 + nq_open_oracle_500 (first --qa-held held apart) + repeat prompts",
        }
    codec.save_pretrained(directory)
    print(f"saved {directory} (step {step}, {tokens} text tokens, {seconds:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
