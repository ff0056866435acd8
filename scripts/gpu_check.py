"""One prepared check of the GPU path, for a maintainer with a CUDA machine (a few minutes; well under 10).

python scripts/gpu_check.py --out runs/gpu_check            # default model: fp32, bf16, 4bit
python scripts/gpu_check.py --out DIR --configs bf16,8bit    # any of fp32, tf32, bf16, fp16, 4bit, 8bit

For each configuration it loads the default backbone with the shipped adapters on ``cuda`` and records, in
``DIR/gpu_check.json`` (rewritten after every configuration, so a run cut short keeps what it finished):

* load time and peak GPU memory;
* one parallel forward pass over 1,024 tokens (the model's token rate, the yardstick for the codecs);
* latent compress + decompress of the 11 sample documents (ratio 2): Z-tokens, time, and how close the
  reconstructions are to the text (difflib ratio) and to the fp32 run's reconstructions;
* latent ``exact=True`` and exact-codec round trips of the same documents (byte-exact or not, bits/char, tokens/s),
  then the exact codes decoded again by a freshly loaded compressor of the same settings (determinism across loads);
* one generation from Z (a sample question with its two documents as latent context);
* a CPU fp32 exact code handed to the GPU compressor: it must be refused (``ModelMismatchError``) before decoding.

On a machine without CUDA it prints why and exits 0 without loading anything. Needs a CUDA build of torch; 4bit and
8bit need bitsandbytes (``pip install 'zcompress-integrations[gpu]'``): without it those configurations record
the ``ConfigError`` and the others still run.
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

CONFIGS: dict[str, dict[str, Any]] = {
    "fp32": {"dtype": "float32"},
    "tf32": {"dtype": "float32"},  # with TF32 matmuls on (set below)
    "bf16": {"dtype": "bfloat16"},
    "fp16": {"dtype": "float16"},
    "4bit": {"quantization": "4bit"},
    "8bit": {"quantization": "8bit"},
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for gpu_check.json")
    parser.add_argument("--configs", default="fp32,bf16,4bit", help=f"comma-separated, of {sorted(CONFIGS)}")
    parser.add_argument("--model", default=None, help="backbone (default: the embedded SmolLM2-135M)")
    parser.add_argument("--adapters", default="default", help="latent adapters ('default': the shipped ones)")
    parser.add_argument("--device", default="cuda", help="a CUDA device, e.g. cuda:1")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    args = parser.parse_args(argv)
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        parser.error(f"unknown configs {unknown}; choose from {sorted(CONFIGS)}")

    try:
        import torch
    except ImportError:
        print("gpu_check: torch is not installed; nothing to check", file=sys.stderr)
        return 0
    if not torch.cuda.is_available():
        print(
            f"gpu_check: CUDA is not available here (torch {torch.__version__}); this check needs a CUDA GPU and a "
            "CUDA build of torch. Nothing was loaded or written.",
            file=sys.stderr,
        )
        return 0

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"environment": _environment(args.device), "configs": {}}
    started = time.perf_counter()
    texts, question, context = _samples()
    cpu_code = _cpu_code(args, texts[0], report)
    reference: list[str] | None = None
    for name in configs:
        print(f"gpu_check: {name} ...", file=sys.stderr, flush=True)
        try:
            result = _check(name, args, texts, question, context, cpu_code, reference)
            reference = reference or result.pop("_reconstructions", None)
            result.pop("_reconstructions", None)
        except Exception as exc:  # noqa: BLE001 - record and go on with the next configuration
            result = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(limit=6)}
        report["configs"][name] = result
        report["seconds"] = round(time.perf_counter() - started, 1)
        (out / "gpu_check.json").write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
        print(f"gpu_check: {name}: {_summary(result)}", file=sys.stderr, flush=True)
    print(out / "gpu_check.json")
    return 0


def _environment(device: str) -> dict[str, Any]:
    import peft
    import torch
    import transformers

    try:
        import bitsandbytes

        bnb = bitsandbytes.__version__
    except ImportError:
        bnb = None
    dev = torch.device(device)
    return {
        "gpu": torch.cuda.get_device_name(dev),
        "capability": list(torch.cuda.get_device_capability(dev)),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "bitsandbytes": bnb,
        "python": platform.python_version(),
    }


def _samples() -> tuple[list[str], str, list[str]]:
    from zcompress_integrations.samples import load_documents, load_questions

    docs = load_documents()
    by_title = {d.title: d.text for d in docs}
    q = load_questions()[0]
    return [d.text for d in docs], q.question, [by_title[t] for t in q.titles]


def _cpu_code(args: argparse.Namespace, text: str, report: dict[str, Any]) -> Any:
    """An exact code made on the CPU in fp32 (the GPU compressors must refuse it)."""
    from zcompress_integrations import ZCompressor

    try:
        return ZCompressor.from_pretrained(args.model, adapters=None, device="cpu", dtype="float32").compress(
            text
        )
    except Exception as exc:  # noqa: BLE001
        report["cpu_code_error"] = f"{type(exc).__name__}: {exc}"
        return None


def _timed(fn: Any) -> tuple[Any, float]:
    import torch

    torch.cuda.synchronize()
    start = time.perf_counter()
    value = fn()
    torch.cuda.synchronize()
    return value, time.perf_counter() - start


def _check(  # noqa: C901 - one flat sequence of measurements
    name: str,
    args: argparse.Namespace,
    texts: list[str],
    question: str,
    context: list[str],
    cpu_code: Any,
    reference: list[str] | None,
) -> dict[str, Any]:
    import torch

    from zcompress_integrations import ModelMismatchError, ZCompressor
    from zcompress_integrations.core.loading import precision_name

    torch.backends.cuda.matmul.allow_tf32 = name == "tf32"
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    settings = {"adapters": args.adapters, "device": args.device, **CONFIGS[name]}
    zc = ZCompressor.from_pretrained(args.model, **settings)
    _, load_s = _timed(lambda: zc.latent_codec)  # loads the backbone, then the adapters onto it
    r: dict[str, Any] = {
        "settings": settings,
        "arithmetic": list(precision_name(zc.backbone.model)),
        "info": zc.info(),
        "load_s": round(load_s, 2),
        "memory_after_load_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1),
    }

    # 1. one parallel forward pass: the model's own token rate
    ids = torch.randint(0, zc.backbone.text_vocab_size, (1, 1024), device=zc.backbone.device)
    with torch.inference_mode(), zc.base_model():
        zc.backbone.model(input_ids=ids[:, :16])  # warm-up
        _, fwd_s = _timed(lambda: zc.backbone.model(input_ids=ids, logits_to_keep=1))
    r["forward_tokens_per_s"] = round(1024 / fwd_s, 1)

    # 2. latent compress + decompress
    latent, c_s = _timed(lambda: zc.compress_batch(texts, mode="latent", ratio=2.0))
    back, d_s = _timed(lambda: zc.decompress_batch(latent))
    tokens = sum(c.text_tokens for c in latent)
    r["latent"] = {
        "text_tokens": tokens,
        "z_tokens": sum(c.z_tokens for c in latent),
        "compress_tokens_per_s": round(tokens / c_s, 1),
        "decompress_tokens_per_s": round(tokens / d_s, 1),
        "similarity_to_text": round(_mean_similarity(back, texts), 4),
        "exact_matches": sum(a == b for a, b in zip(back, texts, strict=True)),
        "first_reconstruction": back[0][:300],
    }
    if reference is not None:
        r["latent"]["same_as_first_config"] = sum(a == b for a, b in zip(back, reference, strict=True))
        r["latent"]["similarity_to_first_config"] = round(_mean_similarity(back, reference), 4)
    r["_reconstructions"] = back

    # 3. latent exact=True and the exact codec: byte-exact round trips
    with_residual, c_s = _timed(lambda: zc.compress_batch(texts, mode="latent", ratio=2.0, exact=True))
    back, d_s = _timed(lambda: zc.decompress_batch(with_residual))
    r["latent_exact"] = {
        "round_trips": sum(a == b for a, b in zip(back, texts, strict=True)),
        "of": len(texts),
        "compress_s": round(c_s, 2),
        "decompress_s": round(d_s, 2),
    }
    exact, c_s = _timed(lambda: zc.compress_batch(texts, mode="exact"))
    back, d_s = _timed(lambda: zc.decompress_batch(exact))
    tokens = sum(c.text_tokens for c in exact)
    r["exact"] = {
        "round_trips": sum(a == b for a, b in zip(back, texts, strict=True)),
        "of": len(texts),
        "bits_per_char": round(
            sum(c.z_tokens * math.log2(c.k) for c in exact) / sum(len(t) for t in texts), 4
        ),
        "params": dict(exact[0].params),
        "compress_tokens_per_s": round(tokens / c_s, 1),
        "decompress_tokens_per_s": round(tokens / d_s, 1),
    }

    # 4. generation from Z
    codes = zc.compress_batch(context, mode="latent", ratio=2.0)
    answer, g_s = _timed(lambda: zc.generate(question, context=codes, max_new_tokens=args.max_new_tokens))
    r["generation"] = {
        "question": question,
        "answer": answer.text,
        "prompt_tokens": answer.prompt_tokens,
        "seconds": round(g_s, 2),
    }
    r["memory_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)

    # 5. a fresh load of the same settings decodes the exact codes (determinism across loads); a CPU code is refused
    zc = None  # free the first model before the fresh load
    torch.cuda.empty_cache()
    again = ZCompressor.from_pretrained(args.model, **{**settings, "adapters": None})
    try:
        back = again.decompress_batch(exact)
        r["exact"]["fresh_load_round_trips"] = sum(a == b for a, b in zip(back, texts, strict=True))
    except Exception as exc:  # noqa: BLE001
        r["exact"]["fresh_load_error"] = f"{type(exc).__name__}: {exc}"
    if cpu_code is not None:
        try:
            again.decompress(cpu_code)
            r["cpu_code"] = "decoded (not refused)"
        except ModelMismatchError as exc:
            r["cpu_code"] = f"refused: {exc}"
    return r


def _mean_similarity(a: list[str], b: list[str]) -> float:
    return sum(difflib.SequenceMatcher(None, x, y).ratio() for x, y in zip(a, b, strict=True)) / max(
        len(a), 1
    )


def _summary(result: dict[str, Any]) -> str:
    if "error" in result:
        return result["error"]
    exact, latent = result["exact"], result["latent"]
    return (
        f"load {result['load_s']} s, exact {exact['round_trips']}/{exact['of']} "
        f"(fresh load {exact.get('fresh_load_round_trips', exact.get('fresh_load_error'))}), "
        f"latent similarity {latent['similarity_to_text']}, exact codec {exact['compress_tokens_per_s']} tok/s"
    )


if __name__ == "__main__":
    sys.exit(main())
