"""``zcompress train``: train latent-codec adapters. Every :class:`TrainConfig` field is a flag; ``--config``
reads a YAML or JSON file of the same keys (flags given on the command line win).

``--task infer --adapters DIR`` trains the ``infer`` adapter (generation in Z space) on top of trained adapters
instead: windows of ``--window-segments`` consecutive segments are cut from ``--data``; ``--max-steps``,
``--batch-size``, ``--lr`` (LoRA), ``--lr-modules`` (Z head), ``--warmup-steps``, ``--grad-clip``, ``--seed``,
``--model``, ``--device`` apply; ``DIR`` plus ``infer/`` is written to ``OUT_DIR/adapters``. For the token-group
code the head predicts each group's next tokens (``core/zspace_groups.py``); ``--chain-rank N`` makes it predict
them one after another.

``--task tokens`` trains the token-group code's ``decompress`` adapter instead (the shipped default's recipe);
it has its own flags: ``zcompress train --task tokens --help``."""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import logging
import sys
from pathlib import Path
from typing import Any

from zcompress_integrations.core.training.trainer import TrainConfig

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zcompress train", description=__doc__)
    parser.add_argument("--config", help="YAML or JSON file with TrainConfig keys")
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.name == "data":
            parser.add_argument(flag, nargs="+", default=None, help="jsonl files/globs with a 'text' field, or a .npy")
        elif f.name == "latent":
            parser.add_argument(flag, default=None, help='LatentConfig overrides as JSON, e.g. \'{"lora_r": 8}\'')
        elif f.type in ("bool", bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        else:
            kind = {"int": int, "float": float, "float | None": float}.get(str(f.type), str)
            parser.add_argument(flag, type=kind, default=None)
    parser.add_argument(
        "--task", choices=("codec", "infer", "tokens"), default="codec", help="what to train (default codec)"
    )
    parser.add_argument("--adapters", help="--task infer: the trained latent adapters to add infer/ to")
    parser.add_argument("--window-segments", type=int, default=4, help="--task infer: segments per window (>= 2)")
    parser.add_argument(
        "--chain-rank", type=int, default=0,
        help="--task infer, token-group code: give the head a chain of this rank (each offset reads the token "
        "before it) when it has none; 0 (default) keeps the head as it is",
    )
    return parser


def _load_file(path: str) -> dict[str, Any]:
    text = Path(path).read_text()
    if path.endswith((".yaml", ".yml")):
        import yaml

        return yaml.safe_load(text) or {}
    return json.loads(text)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    values: dict[str, Any] = _load_file(args.config) if args.config else {}
    for f in dataclasses.fields(TrainConfig):
        value = getattr(args, f.name)
        if value is not None:
            values[f.name] = json.loads(value) if f.name == "latent" else value
    if "data" in values:
        files: list[str] = []
        for pattern in values["data"]:
            files += sorted(glob.glob(pattern)) or [pattern]
        values["data"] = files
    return TrainConfig(**values)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    for i, arg in enumerate(argv):
        if arg == "--task=tokens" or (arg == "--task" and argv[i + 1 : i + 2] == ["tokens"]):
            from zcompress_integrations.core.training.token_code import main as train_tokens

            train_tokens(argv[:i] + argv[i + (1 if "=" in arg else 2) :])
            return 0
    args = build_parser().parse_args(argv)
    cfg = config_from_args(args)
    if not cfg.data:
        print("zcompress train: --data is required (training jsonl files or a .npy of segments)", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.task == "infer":
        return _train_infer(cfg, args)
    from zcompress_integrations.core.training.trainer import train

    codec, records = train(cfg)
    last = next((r for r in reversed(records) if "loss" in r), {})
    print(f"adapters written to {Path(cfg.out_dir) / 'adapters'} (last loss {last.get('loss')})")
    return 0


def _train_infer(cfg: TrainConfig, args: argparse.Namespace) -> int:
    if not args.adapters:
        print("zcompress train: --task infer needs --adapters DIR (trained latent adapters)", file=sys.stderr)
        return 2
    if args.window_segments < 2:
        print(f"zcompress train: --window-segments must be >= 2; got {args.window_segments}", file=sys.stderr)
        return 2
    import numpy as np

    from zcompress_integrations.core.backbone import load_backbone
    from zcompress_integrations.core.latent import load_latent_codec
    from zcompress_integrations.core.training.infer import train_infer
    from zcompress_integrations.core.training.trainer import prepare_segments

    backbone = load_backbone(cfg.model, device=cfg.device, dtype=cfg.dtype, quantization=cfg.quantization)
    codec = load_latent_codec(backbone, args.adapters)
    width = codec.config.segment_len * args.window_segments
    windows = prepare_segments(backbone.tokenizer, cfg.data, width, max_tokens=cfg.max_data_tokens or None)
    np.random.default_rng(cfg.seed).shuffle(windows)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = train_infer(
        codec,
        windows,
        steps=cfg.max_steps,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        lr_head=cfg.lr_modules,
        warmup_steps=cfg.warmup_steps,
        grad_clip=cfg.grad_clip,
        weight_decay=cfg.weight_decay,
        seed=cfg.seed,
        log_every=cfg.log_every,
        log_file=out / "infer_log.jsonl",
        progress=cfg.progress,
        chain_rank=args.chain_rank,
    )
    codec.save_pretrained(out / "adapters")
    last = records[-1]["loss"] if records else None
    print(f"adapters with infer/ written to {out / 'adapters'} (last digit loss {last})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
