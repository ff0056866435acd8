"""Exact codec on the default model: code size vs the model's cross-entropy, vs byte compressors, and speed beside
the model's own parallel forward pass.

Four sets, each coded in one ``compress_batch`` and decoded in one ``decompress_batch`` call, every round trip
asserted exact:

* ``batch``: the first ``--limit`` paragraphs of ``wikipedia/hotpotqa_train_wiki_paragraphs.jsonl`` (file order),
  ``--batch-size`` texts a call; also the set the size figures come from;
* ``wikitext8``: ``--wikitext`` WikiText-2 test paragraphs of at least 200 characters (``load_wikitext_paragraphs``,
  seed 0), a small batch;
* ``doc4000``: the first ``--doc-tokens`` tokens of the longest WikiText-2 test article, alone (one text, its
  windows side by side in ``ceil(n / window)`` lanes);
* ``single``: paragraph ``--single`` of the batch set, alone (one lane: the slowest case).

Sizes: per text, the Z-code's bits (Z-tokens x log2 K) beside the backbone's cross-entropy of that text in bits
(one parallel forward over the same windows and start token the codec codes); a text passes when
``Z bits <= 1.03 * H_bits + log2 K``; the serialised code beside gzip -9, xz -9, zstd -19 and brotli -11.

Speed: text tokens per second, wall clock and CPU time (``time.process_time``: on a shared machine it counts only
what this process ran). Before each set, the model's parallel forward pass is timed in the same process with the
same torch thread count: ``model(input_ids)`` over one ``--forward-tokens``-token sequence, logits for every
position, best of two; each codec rate is reported beside it and as a fraction of it. ``--compare-path1`` also
codes the batch and the document on step path 1 (the path codes took before path 2) in the same run.

Rerun (about 8 minutes on an idle 2-core CPU; 15-20 on a shared one; ``--compare-path1`` adds ~5):

    python benchmarks/exact_codec.py --out benchmarks/results/exact_codec

It writes ``<out>.json`` and ``<out>.md``.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from zcompress_integrations.eval import baselines, datasets, report

BYTE_METHODS = ("gzip-9", "xz-9", "zstd-19", "brotli-11")
SLACK = 0.03


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def _timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float, float]:
    """``(result, wall seconds, CPU seconds of this process)``."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - wall, time.process_time() - cpu


def forward_rate(model: Any, ids: Any) -> dict[str, float]:
    """Tokens/s of the model's parallel forward over ``ids[1, T]`` (logits for every position), best of two runs
    after a warm-up, wall and CPU time."""
    import torch

    n = ids.shape[1]
    with torch.inference_mode():
        model(input_ids=ids[:, :64])
        runs = [_timed(model, input_ids=ids)[1:] for _ in range(2)]
    wall = min(w for w, _ in runs)
    cpu = min(c for _, c in runs)
    return {"tokens": n, "wall_s": wall, "cpu_s": cpu, "tokens_per_s": n / wall, "cpu_tokens_per_s": n / cpu}


def run_set(
    name: str,
    texts: Sequence[str],
    encode: Callable[[Sequence[str]], list[Any]],
    decode: Callable[[list[Any]], list[Any]],
    forward: Callable[[], dict[str, float]],
) -> tuple[dict[str, Any], list[Any]]:
    """Time the forward, then compress and decompress ``texts`` in one call each; assert every round trip."""
    fwd = forward()
    load = _load_average()
    codes, enc_wall, enc_cpu = _timed(encode, texts)
    decoded, dec_wall, dec_cpu = _timed(decode, codes)
    wrong = [i for i, (a, b) in enumerate(zip(decoded, texts, strict=True)) if a != b]
    assert not wrong, f"{name}: {len(wrong)} texts did not round-trip (first: index {wrong[0]})"
    n = sum(c.text_tokens for c in codes)
    row = {
        "set": name,
        "texts": len(texts),
        "tokens": n,
        "lanes": sorted({c.params["lanes"] for c in codes}),
        "path": sorted({c.params.get("path", 1) for c in codes}),
        "exact_round_trips": len(texts),
        "load_average_1min": load,
        "forward": fwd,
        "seconds": {"compress": enc_wall, "decompress": dec_wall},
        "cpu_seconds": {"compress": enc_cpu, "decompress": dec_cpu},
        "tokens_per_s": {"compress": n / enc_wall, "decompress": n / dec_wall},
        "cpu_tokens_per_s": {"compress": n / enc_cpu, "decompress": n / dec_cpu},
    }
    row["of_forward"] = {k: v / fwd["tokens_per_s"] for k, v in row["tokens_per_s"].items()}
    row["of_forward_cpu"] = {k: v / fwd["cpu_tokens_per_s"] for k, v in row["cpu_tokens_per_s"].items()}
    print(
        f"{name}: {n} tokens, lanes {row['lanes']}: compress {n / enc_wall:.1f} tok/s, decompress "
        f"{n / dec_wall:.1f} (forward {fwd['tokens_per_s']:.0f}; CPU time: {n / enc_cpu:.1f} / {n / dec_cpu:.1f} "
        f"vs {fwd['cpu_tokens_per_s']:.0f}), load {load}",
        flush=True,
    )
    return row, codes


def bits_vs_entropy(codes: Sequence[Any], ce_bits: Sequence[float], log2k: float) -> dict[str, Any]:
    total = sum(c.bits for c in codes)
    h = sum(ce_bits)
    tokens = sum(c.text_tokens for c in codes)
    return {
        "z_bits": total,
        "ce_bits": h,
        "z_over_ce": total / h if h else None,
        "ce_bits_per_token": h / tokens,
        "z_bits_per_token": total / tokens,
        "within_bound": sum(c.bits <= (1 + SLACK) * e + log2k for c, e in zip(codes, ce_bits, strict=True)),
    }


def _path1(zc: Any) -> tuple[Callable[[Sequence[str]], list[Any]], Callable[[list[Any]], list[Any]]]:
    """Compress and decompress functions on step path 1 (how codes were made before path 2)."""
    from zcompress_integrations.core.entropy import EntropyCodec

    old = EntropyCodec(
        zc.backbone, k=zc.k, window=zc.settings["window"], disable_adapters=zc.base_model, path=1
    )

    def compress(items: Sequence[str]) -> list[Any]:
        # as compress_batch groups them: longest first, in one call (batch_size >= the set here)
        order = sorted(range(len(items)), key=lambda i: len(items[i]), reverse=True)
        out: list[Any] = [None] * len(items)
        for i, code in zip(order, old.encode_batch([items[i] for i in order]), strict=True):
            out[i] = code
        return out

    def decompress(codes: list[Any]) -> list[Any]:
        return [data.decode("utf-8") for data in old.decode_batch(codes)]

    return compress, decompress


def _long_document(codec: Any, n_tokens: int) -> str:
    """The first ``n_tokens`` tokens of the longest WikiText-2 test article."""
    article = max(datasets.load_wikitext_articles(), key=lambda a: len(a.text_detok))
    tb = codec.token_bytes
    return tb.decode(tb.encode(article.text_detok.encode("utf-8"))[:n_tokens]).decode("utf-8")


def main(argv: Sequence[str] | None = None) -> None:  # noqa: PLR0915
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=100, help="first N hotpot paragraphs (default 100)")
    parser.add_argument(
        "--batch-size", type=int, default=100, help="texts a compress_batch call (default 100)"
    )
    parser.add_argument("--wikitext", type=int, default=8, help="WikiText-2 paragraphs of the small batch")
    parser.add_argument(
        "--doc-tokens", type=int, default=4000, help="tokens of the long document (default 4000)"
    )
    parser.add_argument(
        "--single", type=int, default=0, help="index of the paragraph coded alone (default 0)"
    )
    parser.add_argument("--forward-tokens", type=int, default=1024, help="tokens of the timed forward pass")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, codec and forward (default 1)")
    parser.add_argument("--compare-path1", action="store_true", help="also code batch and document on path 1")
    parser.add_argument("--out", default="benchmarks/results/exact_codec")
    args = parser.parse_args(argv)

    os.environ["ZCOMPRESS_CODEC_THREADS"] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)

    from zcompress_integrations import ZCompressor

    start_all = time.perf_counter()
    zc = ZCompressor.from_pretrained()
    _, load_s, _ = _timed(lambda: zc.exact_codec)
    codec = zc.exact_codec
    model = zc.backbone.model
    log2k = math.log2(zc.k)
    texts = [p.text for p in datasets.load_hotpot_wiki_paragraphs()][: args.limit]
    wiki = [p.text_detok for p in datasets.load_wikitext_paragraphs(args.wikitext, seed=0, min_chars=200)]
    doc = _long_document(codec, args.doc_tokens)
    ids = torch.tensor([codec.token_bytes.encode(doc.encode("utf-8"))[: args.forward_tokens]])
    print(f"loaded {zc.model_name}; {args.threads} thread(s)", flush=True)

    def forward() -> dict[str, float]:
        return forward_rate(model, ids)

    def compress(items: Sequence[str]) -> list[Any]:
        return zc.compress_batch(list(items), batch_size=args.batch_size)

    def decompress(codes: list[Any]) -> list[Any]:
        return zc.decompress_batch(codes, batch_size=args.batch_size)

    # 1. Speed (and the codes every size figure is computed from), each set beside a fresh forward timing.
    speed: dict[str, dict[str, Any]] = {}
    codes_of: dict[str, list[Any]] = {}
    sets = {
        "batch": texts,
        "wikitext8": wiki,
        "doc4000": [doc],
        "single": [texts[args.single]],
    }
    for name, items in sets.items():
        speed[name], codes_of[name] = run_set(name, items, compress, decompress, forward)
    if args.compare_path1:
        compress_path1, decompress_path1 = _path1(zc)
        for name in ("batch", "doc4000"):
            speed[f"{name}_path1"], codes_of[f"{name}_path1"] = run_set(
                f"{name} (path 1)", sets[name], compress_path1, decompress_path1, forward
            )
    # 2. Model cross-entropy on the same windows (parallel forward; not a codec).
    ce_of = {}
    for name in ("batch", "wikitext8", "doc4000"):
        ce_of[name], ce_wall, _ = _timed(codec.cross_entropy_bits_batch, sets[name])
        print(f"cross-entropy {name}: {ce_wall:.0f}s", flush=True)
    # path 1 codes the same windows: the same cross-entropy
    entropy = {
        key: bits_vs_entropy(codes, ce_of[key.removesuffix("_path1")], log2k)
        for key, codes in codes_of.items()
        if key.removesuffix("_path1") in ce_of
    }

    # 3. Sizes on the batch set, per text and beside byte compressors.
    codes = codes_of["batch"]
    per_text = []
    for i, (text, code, h) in enumerate(zip(texts, codes, ce_of["batch"], strict=True)):
        sizes = {m: baselines.byte_compress(text, m).compressed_bytes for m in BYTE_METHODS}
        per_text.append(
            {
                "index": i,
                "chars": len(text),
                "utf8_bytes": len(text.encode("utf-8")),
                "text_tokens": code.text_tokens,
                "z_tokens": code.z_tokens,
                "z_bits": code.bits,
                "ce_bits": h,
                "overhead_bits": code.bits - h,
                "within_bound": code.bits <= (1 + SLACK) * h + log2k,
                "zcode_bytes": len(code.to_bytes()),
                **{f"{m}_bytes": s for m, s in sizes.items()},
            }
        )
    n_tokens = sum(c.text_tokens for c in codes)
    chars = sum(r["chars"] for r in per_text)
    total_bits = sum(r["z_bits"] for r in per_text)
    total_ce = sum(r["ce_bits"] for r in per_text)
    within = sum(r["within_bound"] for r in per_text)
    overheads = [r["overhead_bits"] for r in per_text]
    summary = {
        "texts": len(texts),
        "chars": chars,
        "text_tokens": n_tokens,
        "z_tokens": sum(c.z_tokens for c in codes),
        "exact_round_trips": speed["batch"]["exact_round_trips"],
        "within_bound": within,
        "within_bound_fraction": within / len(texts),
        "z_bits_total": total_bits,
        "ce_bits_total": total_ce,
        "z_over_ce": total_bits / total_ce,
        "overhead_bits_mean": statistics.mean(overheads),
        "overhead_bits_max": max(overheads),
        "ce_bits_per_token": total_ce / n_tokens,
        "bound_log2k_over_h": log2k / (total_ce / n_tokens),
        "mean_ratio": statistics.mean(c.ratio for c in codes),
        "ratio_total": n_tokens / sum(c.z_tokens for c in codes),
        "bits_per_char": {
            "zcode (to_bytes)": 8 * sum(r["zcode_bytes"] for r in per_text) / chars,
            "z bits only": total_bits / chars,
            "model cross-entropy": total_ce / chars,
            **{m: 8 * sum(r[f"{m}_bytes"] for r in per_text) / chars for m in BYTE_METHODS},
        },
        "speed": speed,
        "entropy": entropy,
        "model_load_s": load_s,
        "total_s": time.perf_counter() - start_all,
    }
    machine = {
        "nproc": os.cpu_count(),
        "cpu": _cpu_model(),
        "torch_threads": args.threads,
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "model": zc.model_name,
        "fingerprint": zc.fingerprint.hex(),
        "k": zc.k,
        "window": zc.settings["window"],
        "batch_size": args.batch_size,
    }
    command = "python benchmarks/exact_codec.py " + " ".join(sys.argv[1:] if argv is None else argv)
    report.write_json(
        {"command": command.strip(), "machine": machine, "summary": summary, "per_text": per_text},
        f"{args.out}.json",
    )
    md = _markdown(command.strip(), machine, summary, sets)
    report.write_text(md, f"{args.out}.md")
    print(md)


def _speed_rows(speed: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for r in speed.values():
        rows.append(
            {
                "set": f"{r['set']} ({r['texts']} text{'s' * (r['texts'] != 1)}, lanes "
                f"{', '.join(map(str, r['lanes']))})",
                "tokens": r["tokens"],
                "compress tok/s": r["tokens_per_s"]["compress"],
                "decompress tok/s": r["tokens_per_s"]["decompress"],
                "forward tok/s": r["forward"]["tokens_per_s"],
                "compress / forward": r["of_forward"]["compress"],
                "decompress / forward": r["of_forward"]["decompress"],
                "CPU-time ratios": f"{r['of_forward_cpu']['compress']:.2f} / {r['of_forward_cpu']['decompress']:.2f}",
            }
        )
    return rows


def _markdown(command: str, machine: dict[str, Any], summary: dict[str, Any], sets: dict[str, Any]) -> str:
    bpc = summary["bits_per_char"]
    size_rows = [
        {"method": m, "bits/char": v, "x model CE": v / bpc["model cross-entropy"]} for m, v in bpc.items()
    ]
    entropy_rows = [
        {
            "set": summary["speed"][key]["set"],
            "tokens": summary["speed"][key]["tokens"],
            "H bits/token": e["ce_bits_per_token"],
            "Z bits/token": e["z_bits_per_token"],
            "Z bits / H": e["z_over_ce"],
            "within 1.03 H + log2 K": f"{e['within_bound']}/{summary['speed'][key]['texts']}",
        }
        for key, e in summary["entropy"].items()
    ]
    speed = summary["speed"]
    log2k = math.log2(machine["k"])
    loads = [r["load_average_1min"] for r in speed.values() if r["load_average_1min"] is not None]
    load_note = f"load average {min(loads):.1f}-{max(loads):.1f}" if loads else "load not measured"
    return f"""# Exact codec on the default model

Command: `{command}`

Machine: {machine["nproc"]} CPUs ({machine["cpu"]}), torch {machine["torch"]}, {machine["torch_threads"]} torch
thread(s) for the codec (recorded in each code) and for the forward pass it is compared with; Python
{machine["python"]}; model {machine["model"]} (fingerprint {machine["fingerprint"]}), K = {machine["k"]}, window =
{machine["window"]} tokens, batch_size = {machine["batch_size"]}. This run: {load_note} during the timed sets
(1-minute, sampled before each). The machine was shared with other jobs, so wall-clock rates are pessimistic and
move with the load; the ratios to the forward pass, timed in the same process just before each set, and the
CPU-time ratios (this process's own CPU time) move much less. Sizes and bits do not depend on load. Whole run:
{summary["total_s"] / 60:.1f} minutes.

## Throughput beside the model's forward pass

Forward: `model(input_ids)` over one {speed["batch"]["forward"]["tokens"]}-token sequence (logits for every
position), best of two, timed just before each set. Rates in text tokens per second (wall clock); every round trip
was asserted exact.

{report.markdown_table(_speed_rows(speed))}

- batch: the first {summary["texts"]} paragraphs of `wikipedia/hotpotqa_train_wiki_paragraphs.jsonl`, one
  `compress_batch` and one `decompress_batch` call; wikitext8: {len(sets["wikitext8"])} WikiText-2 test paragraphs
  (at least 200 characters, seed 0); doc4000: the first {speed["doc4000"]["tokens"]} tokens of the longest WikiText-2
  test article, alone; single: one paragraph alone (one lane).
- `(path 1)`: the same set coded on step path 1, the model's own forward over a `DynamicCache` with float64
  tables and at most 32 lanes, as codes were made before path 2 (decoded with this version's run placement).
- Decoding is sequential: each text token needs the model's distribution given the tokens before it, so both sides
  run one KV-cache step per token over a batch of lanes (one window of up to {machine["window"]} tokens a lane). A
  step is almost all matrix products; with few lanes they are memory-bound (a step of 16 lanes costs about twice a
  step of one), from ~32 lanes on compute-bound, where the step-wise codec approaches the forward pass's cost per
  token. A small batch or a single paragraph fills few lanes and stays far below it, and a run of lanes lasts as
  long as its longest window, so texts of mixed lengths leave lanes idle.

## Bits against the model's cross-entropy, per set

H = the backbone's cross-entropy in bits (one parallel forward over the same windows and start token); Z bits =
Z-tokens x log2 K (padding to whole Z-tokens costs log2 K / 2 = {log2k / 2:.0f} bits a text on average).

{report.markdown_table(entropy_rows, float_format="{:.4f}")}

## Code size vs the model's cross-entropy

Per text of the batch set, Z bits = Z-tokens x log2 K; H = the backbone's cross-entropy of the text in bits (one
parallel forward over the same windows and start token). Bound checked: Z bits <= 1.03 H + log2 K (3% + one
Z-token of padding).

- within the bound: **{summary["within_bound"]}/{summary["texts"]}** ({100 * summary["within_bound_fraction"]:.0f}%)
- total Z bits / total H: {summary["z_over_ce"]:.4f}; overhead per text: mean {summary["overhead_bits_mean"]:.1f}
  bits, max {summary["overhead_bits_max"]:.1f} bits (padding to whole Z-tokens averages log2 K / 2 = {log2k / 2:.0f})
- H = {summary["ce_bits_per_token"]:.3f} bits/token, so the token ratio bound log2 K / H =
  {summary["bound_log2k_over_h"]:.2f}; measured ratio (total text tokens / total Z-tokens) {summary["ratio_total"]:.2f}

## Serialised size beside byte compressors (each text alone, total bits / total characters)

{report.markdown_table(size_rows)}

`zcode (to_bytes)` is the whole binary code: header (k, counts, codec parameters), packed Z ids, backbone
fingerprint, text checksum and CRC-32.
"""


if __name__ == "__main__":
    main()
