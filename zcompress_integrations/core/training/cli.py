"""``zcompress train <task>``: train the latent codec's adapters.

    zcompress train prepare --data 'train/*.jsonl' --out segments.npy          # tokenise once
    zcompress train reader --data segments.npy --out runs/reader [--device cuda] [--resume]
    zcompress train infer --adapters runs/reader/adapters --data 'train/*.jsonl' --out runs/infer
    zcompress train compressor --data segments.npy --out runs/compressor [--resume]   # the learned code
    zcompress train staged --data segments.npy --out runs/staged [--resume]   # the learned code, in stages
    zcompress train calibrate --adapters runs/compressor/adapters --data 'train/*.jsonl'   # its mean length

Every field of the task's config dataclass (``core/training/config.py``) is a flag; ``--config FILE`` reads a
YAML or JSON file of the same keys (flags on the command line win). ``--resume`` goes on from ``OUT/checkpoint.pt``
(exactly where it stopped: weights, optimizer, RNG and data position; a finished run just re-exports);
``--init-from`` starts from other weights with a fresh optimizer. ``--device cuda`` trains on a GPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import logging
import re
import sys
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

from zcompress_integrations.core.training.config import (
    CalibrateConfig,
    CompressorConfig,
    InferConfig,
    PrepareConfig,
    ReaderConfig,
    StagedConfig,
    config_from_dict,
)
from zcompress_integrations.errors import ConfigError, ZCompressError

__all__ = ["main", "build_parser", "config_from_args"]

TASKS: dict[str, tuple[type, str]] = {
    "reader": (ReaderConfig, "train the token-group code's reader (the decompress adapter)"),
    "infer": (InferConfig, "train the infer adapter (generation in Z space) on top of trained adapters"),
    "compressor": (
        CompressorConfig,
        "train the learned code: the compress adapter with which the model writes Z",
    ),
    "staged": (
        StagedConfig,
        "train the learned code in stages: k-means vocabulary, reader of its ids, writer of its ids",
    ),
    "calibrate": (
        CalibrateConfig,
        "set a learned code's stop-head bias per ratio so that training text comes out at the requested ratio",
    ),
    "prepare": (PrepareConfig, "tokenise jsonl files into the .npy of segments the reader trains on"),
}
EXIT_USAGE = 2


def _field_help(cls: type) -> dict[str, str]:
    """Each field's help: its comment in the dataclass source (or a base dataclass's), after it or on the lines
    right above it."""
    helps: dict[str, str] = {}
    for klass in reversed([k for k in cls.__mro__ if dataclasses.is_dataclass(k)]):
        above: list[str] = []
        for line in inspect.getsource(klass).splitlines():
            text = line.strip()
            if text.startswith("#"):
                above.append(text.lstrip("# "))
                continue
            m = re.match(r"(\w+): [^#]*(?:#\s*(.+))?$", text)
            if m and (m[2] or above):
                helps[m[1]] = m[2] or " ".join(above)
            above = []
    return helps


def _add_field(parser: argparse.ArgumentParser, name: str, hint: Any, default: Any, text: str) -> None:
    """One flag per config field; the default stays None so that a --config file's value is not overridden."""
    flag = "--" + name.replace("_", "-")
    shown = f"{text} (default {default!r})".replace("%", "%%")
    options = [a for a in get_args(hint) if a is not type(None)]
    if get_origin(hint) is Literal:
        parser.add_argument(flag, choices=list(options), default=None, help=shown)
    elif hint is bool:
        parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=shown)
    elif get_origin(hint) is list:
        (item,) = get_args(hint)
        parser.add_argument(flag, nargs="+", type=item, default=None, metavar=name.upper(), help=shown)
    else:
        kind = next((t for t in (int, float, str) if hint is t or t in options), str)
        parser.add_argument(flag, type=kind, default=None, help=shown)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zcompress train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="task", metavar="TASK", required=True)
    for task, (cls, help_text) in TASKS.items():
        p = sub.add_parser(task, help=help_text, description=(cls.__doc__ or help_text).strip())
        p.add_argument("--config", help="YAML or JSON file with the same keys as the flags")
        defaults = {
            f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            for f in dataclasses.fields(cls)
        }
        helps = _field_help(cls)
        for name, hint in get_type_hints(cls).items():
            _add_field(p, name, hint, defaults[name], helps.get(name, name.replace("_", " ")))
        if task not in ("prepare", "calibrate"):
            p.add_argument(
                "--resume", action="store_true", help="go on from OUT/checkpoint.pt when there is one"
            )
            p.add_argument(
                "--init-from",
                default=None,
                metavar="SOURCE",
                help="start from other weights, fresh optimizer: an adapters directory, 'default' (the shipped "
                "adapters) or a run's checkpoint.pt",
            )
    return parser


def _load_file(path: str) -> dict[str, Any]:
    from zcompress_integrations.errors import ConfigError

    text = Path(path).read_text()
    if path.endswith((".yaml", ".yml")):
        import yaml

        values = yaml.safe_load(text) or {}
    else:
        values = json.loads(text)
    if not isinstance(values, dict):
        raise ConfigError(f"{path} must hold a mapping of config keys; got {type(values).__name__}")
    return values


def config_from_args(args: argparse.Namespace) -> Any:
    """The task's config: ``--config`` file values, then the flags given on the command line."""
    cls = TASKS[args.task][0]
    values = _load_file(args.config) if args.config else {}
    for f in dataclasses.fields(cls):
        value = getattr(args, f.name)
        if value is not None:
            values[f.name] = value
    return config_from_dict(cls, values)


def run(args: argparse.Namespace) -> Path:
    """Run the task ``args`` describe; returns what it wrote."""
    cfg = config_from_args(args)
    if args.task == "calibrate":
        from zcompress_integrations.core.training.calibrate import calibrate

        return calibrate(cfg)
    if args.task == "prepare":
        from zcompress_integrations.core.backbone import load_backbone
        from zcompress_integrations.core.training.data import write_segments

        tokenizer = load_backbone(cfg.model, device="cpu").tokenizer
        return write_segments(
            tokenizer, cfg.data, cfg.out, cfg.segment_len, max_tokens=cfg.max_tokens, seed=cfg.seed
        )
    if args.task == "reader":
        from zcompress_integrations.core.training.reader import train_reader

        train_reader(cfg, resume=args.resume, init_from=args.init_from)
    elif args.task == "compressor":
        from zcompress_integrations.core.training.compressor import train_compressor

        train_compressor(cfg, resume=args.resume, init_from=args.init_from)
    elif args.task == "staged":
        from zcompress_integrations.core.training.staged import train_staged

        if args.init_from:
            raise ConfigError("staged: use --init-reader to choose the reader it starts from")
        train_staged(cfg, resume=args.resume)
    else:
        from zcompress_integrations.core.training.infer import run_infer

        run_infer(cfg, resume=args.resume, init_from=args.init_from)
    return Path(cfg.out) / "adapters"


def main(argv: list[str] | None = None) -> int:
    """``zcompress train``; returns the exit code (0 done, 2 a setting or input that is not allowed)."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        written = run(args)
    except (ZCompressError, OSError) as exc:
        print(f"zcompress train {args.task}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"zcompress train {args.task}: wrote {written}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
