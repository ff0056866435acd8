"""The ``zcompress`` command line.

    zcompress demo                                   # compress a bundled paragraph, show Z-tokens and round trip
    zcompress compress notes.txt notes.zc            # binary ZCode (--format json|string for text forms)
    zcompress decompress notes.zc notes.txt          # exact text back
    zcompress info notes.zc [--bound]                # ratio, bits, codec; --bound loads the model for log2(K)/H
    cat notes.txt | zcompress compress - - | zcompress decompress - -

``-`` stands for stdin/stdout (binary-safe). Subcommands live in :data:`COMMANDS` (name -> :class:`Command`) and
:data:`EXTERNAL_COMMANDS` (name -> module with a ``main(argv)``, imported only when called), so adding one is one
entry. Errors a user can fix (missing file, damaged code, code from another model) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import math
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zcompress_integrations.core.zcode import ZCode
from zcompress_integrations.errors import (
    ChecksumMismatchError,
    ConfigError,
    CorruptCodeError,
    LatentUnavailableError,
    ModelMismatchError,
    ZCompressError,
)
from zcompress_integrations.samples import sample_text

__all__ = ["main", "COMMANDS", "EXTERNAL_COMMANDS", "Command"]

EXIT_USAGE = 2
FORMATS = ("bytes", "json", "string")


@dataclass(frozen=True)
class Command:
    """One built-in subcommand: ``configure(parser)`` adds its arguments, ``run(args)`` returns an exit code."""

    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


class CliError(Exception):
    """A user-facing failure: printed as ``zcompress: error: ...``, exit code 2."""


# ---- I/O helpers -----------------------------------------------------------------------------------------------
def _read(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(path).read_bytes()
    except FileNotFoundError as exc:
        raise CliError(f"no such file: {path}") from exc
    except IsADirectoryError as exc:
        raise CliError(f"{path} is a directory, not a file") from exc
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _write(path: str, data: bytes) -> None:
    if path == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    try:
        Path(path).write_bytes(data)
    except OSError as exc:
        raise CliError(f"cannot write {path}: {exc.strerror or exc}") from exc


def _parse_code(raw: bytes, source: str) -> ZCode:
    """A code in any of its file forms: binary (starts with ``ZC``), ``zc1:`` string or JSON."""
    if raw.startswith(b"ZC"):
        return ZCode.from_bytes(raw)
    try:
        text = raw.decode("ascii").strip()
    except UnicodeDecodeError as exc:
        raise CorruptCodeError(f"{source} is not a Z code (neither binary, zc1: string nor JSON)") from exc
    if not text:
        raise CorruptCodeError(f"{source} is empty, not a Z code")
    return ZCode.load(text)


def _quiet_libraries() -> None:
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="transformers")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # the model load will say what is missing
        pass


def _compressor(model: str | None, *, k: int = 4096, window: int = 256, adapters: str = "default") -> Any:
    from zcompress_integrations.core.compressor import ZCompressor

    _quiet_libraries()
    return ZCompressor.from_pretrained(model, k=k, window=window, adapters=adapters)


def _cross_entropy_bits(zc: Any, text: str | bytes) -> float:
    """Backbone cross-entropy of ``text`` in bits (one parallel forward, same windows as the exact codec)."""
    return zc.cross_entropy_bits(text)


def _bound(k: int, ce_bits: float, text_tokens: int) -> tuple[float, float]:
    """``(H, log2(K)/H)``: cross-entropy bits per text token and the exact codec's token-ratio bound."""
    h = ce_bits / text_tokens if text_tokens else 0.0
    return h, (math.log2(k) / h if h else math.inf)


def _model_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=None,
        metavar="PATH",
        help="backbone: local model dir or cached HF id (default: embedded)",
    )
    parser.add_argument(
        "--adapters", default="default", metavar="DIR", help="latent adapters (default: the shipped ones)"
    )


# ---- compress / decompress -------------------------------------------------------------------------------------
def _configure_compress(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", metavar="IN", help="text file to compress ('-' = stdin)")
    p.add_argument("output", metavar="OUT", help="where to write the code ('-' = stdout)")
    p.add_argument("--mode", choices=("exact", "latent"), default="exact", help="codec (default: exact)")
    p.add_argument("--k", type=int, default=4096, help="Z vocabulary size of the exact codec (power of two)")
    p.add_argument("--window", type=int, default=256, help="tokens per coded window (default: 256)")
    p.add_argument("--format", choices=FORMATS, default="bytes", help="code file form (default: bytes)")
    p.add_argument("--ratio", type=float, default=None, help="latent mode: target text tokens per Z-token")
    p.add_argument(
        "--exact", action="store_true", help="latent mode: add a residual so decompression is byte-exact"
    )
    p.add_argument(
        "--bytes", action="store_true", help="treat the input as raw bytes even when it is valid UTF-8"
    )
    _model_arg(p)


def _run_compress(args: argparse.Namespace) -> int:
    raw = _read(args.input)
    item: str | bytes = raw
    if not args.bytes:
        try:
            item = raw.decode("utf-8")
        except UnicodeDecodeError:
            item = raw  # not UTF-8: coded as bytes, decoded back to the same bytes
    if args.mode == "exact" and (args.ratio is not None or args.exact):
        raise ConfigError("--ratio and --exact apply to --mode latent (the exact codec is always lossless)")
    zc = _compressor(args.model, k=args.k, window=args.window, adapters=args.adapters)
    code = zc.compress(item, mode=args.mode, ratio=args.ratio, exact=args.exact)
    if args.format == "bytes":
        data = code.to_bytes()
    elif args.format == "json":
        data = (code.to_json(indent=1) + "\n").encode("ascii")
    else:
        data = (code.to_string() + "\n").encode("ascii")
    _write(args.output, data)
    print(
        f"zcompress: {code.text_tokens} text tokens -> {code.z_tokens} Z-tokens (ratio {code.ratio:.2f}, "
        f"{code.bits_per_char:.3f} bits/char, {len(code.to_bytes())} bytes)",
        file=sys.stderr,
    )
    return 0


def _configure_decompress(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", metavar="IN", help="code file: binary, zc1: string or JSON ('-' = stdin)")
    p.add_argument("output", metavar="OUT", help="where to write the text ('-' = stdout)")
    _model_arg(p)


def _run_decompress(args: argparse.Namespace) -> int:
    code = _parse_code(_read(args.input), args.input)
    window = code.params.get("window", 256)
    zc = _compressor(args.model, k=code.k, window=max(2, window), adapters=args.adapters)
    text = zc.decompress(code)
    _write(args.output, text if isinstance(text, bytes) else text.encode("utf-8"))
    return 0


# ---- info ------------------------------------------------------------------------------------------------------
def _configure_info(p: argparse.ArgumentParser) -> None:
    p.add_argument("code", metavar="CODEFILE", help="code file ('-' = stdin)")
    p.add_argument(
        "--bound",
        action="store_true",
        help="load the model, decode the text and report the bound log2(K)/H (H: model bits per token)",
    )
    _model_arg(p)


def _run_info(args: argparse.Namespace) -> int:
    code = _parse_code(_read(args.code), args.code)
    rows: list[tuple[str, Any]] = [
        ("codec", code.codec),
        ("k", code.k),
        ("text tokens", code.text_tokens),
        ("text chars" if not code.is_bytes else "text bytes", code.text_chars),
        ("Z tokens", code.z_tokens),
        ("ratio", f"{code.ratio:.2f}"),
        ("bits", f"{code.bits:.0f}"),
        ("bits/char", f"{code.bits_per_char:.3f}"),
        ("code bytes", len(code.to_bytes())),
        ("fingerprint", code.fingerprint.hex()),
        ("checksum", code.checksum.hex()),
        ("original is", "bytes" if code.is_bytes else "str"),
        ("params", " ".join(f"{k}={v}" for k, v in code.params.items()) or "-"),
    ]
    if args.bound:
        zc = _compressor(
            args.model, k=code.k, window=max(2, code.params.get("window", 256)), adapters=args.adapters
        )
        text = zc.decompress(code)
        h, bound = _bound(code.k, _cross_entropy_bits(zc, text), code.text_tokens)
        rows += [
            ("model", zc.model_name),
            ("H (bits/token)", f"{h:.3f}"),
            ("bound log2(K)/H", f"{bound:.2f}"),
        ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    return 0


# ---- demo ------------------------------------------------------------------------------------------------------
DEMO_QUESTION = "Who ran close by Alice?"  # about the bundled paragraph
GENERIC_QUESTION = "What is this text about? Answer in one sentence."


def _configure_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--k", type=int, default=4096, help="Z vocabulary size (power of two)")
    p.add_argument("--text", default=None, help="compress this text instead of the bundled paragraph")
    p.add_argument("--question", default=None, help="question answered from the latent code")
    _model_arg(p)


def _run_demo(args: argparse.Namespace) -> int:
    text = args.text if args.text is not None else sample_text()
    start = time.perf_counter()
    zc = _compressor(args.model, k=args.k, adapters=args.adapters)
    print(f"model: {zc.model_name} (loading...)", flush=True)
    zc.backbone  # noqa: B018 - load now so the timings below are the codec's
    load_s = time.perf_counter() - start
    print(f"text ({len(text)} chars):\n  {text}\n", flush=True)
    exact = _demo_exact(zc, text, load_s)
    question = args.question or (DEMO_QUESTION if args.text is None else GENERIC_QUESTION)
    _demo_latent(zc, text, question)
    return 0 if exact else 1


def _demo_exact(zc: Any, text: str, load_s: float) -> bool:
    """Exact mode: Z-tokens, ratio against its bound, and the round trip; returns whether it was exact."""
    print("== exact mode: lossless, smaller storage (no LLM reads these Z-tokens)")
    t0 = time.perf_counter()
    code = zc.compress(text)
    enc_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    back = zc.decompress(code)
    dec_s = time.perf_counter() - t0
    h, bound = _bound(code.k, _cross_entropy_bits(zc, text), code.text_tokens)
    print(
        f"Z ids ({code.z_tokens}, {math.log2(code.k):.0f} bits each): {' '.join(map(str, code.z_ids[:12]))} ..."
    )
    print(f"text tokens {code.text_tokens} -> Z-tokens {code.z_tokens}: ratio {code.ratio:.2f}")
    print(
        f"bound log2(K)/H = {math.log2(code.k):.0f} / {h:.3f} = {bound:.2f}  (H: model bits per text token)"
    )
    print(f"bits/char {code.bits_per_char:.3f}; binary code {len(code.to_bytes())} bytes; string form:")
    print(f"  {code.to_string()}")
    print(f"round trip exact: {back == text}")
    print(
        f"time: load {load_s:.1f}s, compress {enc_s:.1f}s, decompress {dec_s:.1f}s (one lane on this machine)"
    )
    print()
    return back == text


def _demo_latent(zc: Any, text: str, question: str) -> None:
    """Latent mode: a shorter prompt the model reads, what it reads back from it, and an answer read from it."""
    print("== latent mode: shorter prompts (the model reads these Z-tokens)", flush=True)
    try:
        t0 = time.perf_counter()
        code = zc.compress(text, mode="latent", ratio=2.0)
        enc_s = time.perf_counter() - t0
    except (LatentUnavailableError, ModelMismatchError) as exc:
        print(f"latent mode unavailable with these adapters: {exc}")
        print("(the exact mode above needs no adapters)")
        return
    print(f"prompt length: text tokens {code.text_tokens} -> Z-tokens {code.z_tokens} ({code.ratio:.2f}x)")
    t0 = time.perf_counter()
    back = zc.decompress(code)
    dec_s = time.perf_counter() - t0
    exact = "exact (the Z ids name the text's tokens)"
    print(
        f"decompress: {exact if back == text else 'the reader reconstruction (these Z ids name no tokens)'}"
    )
    t0 = time.perf_counter()
    read = zc.reconstruct(code)
    read_s = time.perf_counter() - t0
    print(f"what the model reads back from the Z-tokens (reconstruct, lossy):\n  {read}")
    t0 = time.perf_counter()
    answer = zc.generate(question, context=[code], max_new_tokens=32)
    gen_s = time.perf_counter() - t0
    print(f"question: {question}")
    print(f"answer from the Z code: {answer.text.strip()}")
    print(
        f"prompt tokens read: {answer.prompt_tokens} (the same prompt with the text: "
        f"{answer.uncompressed_prompt_tokens})"
    )
    print(
        f"time: compress {enc_s:.1f}s, decompress {dec_s:.2f}s, reconstruct {read_s:.1f}s, answer {gen_s:.1f}s"
    )


COMMANDS: dict[str, Command] = {
    "compress": Command("compress a text file into a Z code", _configure_compress, _run_compress),
    "decompress": Command(
        "decompress a Z code back into the exact text", _configure_decompress, _run_decompress
    ),
    "info": Command("describe a Z code (ratio, bits, model fingerprint)", _configure_info, _run_info),
    "demo": Command("show the exact and latent modes on the bundled paragraph", _configure_demo, _run_demo),
}
#: Subcommands implemented elsewhere: name -> (module with ``main(argv) -> int | None``, help).
EXTERNAL_COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("zcompress_integrations.core.training.cli", "train latent-codec adapters"),
    "eval": ("zcompress_integrations.eval.cli", "run the evaluation suites"),
    "compress-dataset": (
        "zcompress_integrations.corpus.cli",
        "compress a jsonl/parquet corpus on Ray Data (resumable)",
    ),
}


def _run_external(name: str, argv: Sequence[str]) -> int:
    module_name, _ = EXTERNAL_COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        missing = getattr(exc, "name", None) or ""
        if missing and not module_name.startswith(missing) and missing != module_name:
            print(f"zcompress: error: '{name}' needs a package that is not installed: {exc}", file=sys.stderr)
        else:
            print(
                f"zcompress: error: '{name}' is not available in this installation ({module_name})",
                file=sys.stderr,
            )
        return EXIT_USAGE
    result = module.main(list(argv))
    return int(result or 0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zcompress", description="Compress text into a few Z-tokens with an off-the-shelf LLM, and back."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, command in COMMANDS.items():
        command.configure(sub.add_parser(name, help=command.help, description=command.help))
    for name, (_, help_text) in EXTERNAL_COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 failed round trip in ``demo``, 2 user error)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in EXTERNAL_COMMANDS:
        return _run_external(argv[0], argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return COMMANDS[args.command].run(args)
    except CliError as exc:
        message = str(exc)
    except CorruptCodeError as exc:
        message = f"not a valid Z code: {exc}"
    except ModelMismatchError as exc:
        message = f"wrong model: {exc}"
    except ChecksumMismatchError as exc:
        message = f"decoding failed the checksum: {exc}"
    except ZCompressError as exc:
        message = str(exc)
    print(f"zcompress: error: {message}", file=sys.stderr)
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
