"""``zcompress train``: train latent-codec adapters. Every :class:`TrainConfig` field is a flag; ``--config``
reads a YAML or JSON file of the same keys (flags given on the command line win)."""

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
            kind = {"int": int, "float": float}.get(str(f.type), str)
            parser.add_argument(flag, type=kind, default=None)
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
    args = build_parser().parse_args(argv)
    cfg = config_from_args(args)
    if not cfg.data:
        print("zcompress train: --data is required (training jsonl files or a .npy of segments)", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    from zcompress_integrations.core.training.trainer import train

    codec, records = train(cfg)
    last = next((r for r in reversed(records) if "loss" in r), {})
    print(f"adapters written to {Path(cfg.out_dir) / 'adapters'} (last loss {last.get('loss')})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
