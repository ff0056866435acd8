"""Corpus compression on Ray Data: documents/s with 1 vs 2 workers on the same corpus (exact codec).

Each configuration runs :func:`compress_corpus` into a fresh folder on a fresh local Ray cluster of this machine,
each actor with one torch thread (``num_cpus_per_worker=0.5``, so 2 actors fit beside Ray Data's read tasks on
2 cores). Two figures per run:

* ``docs/s (wall)``: documents / the whole call (Ray start-up, model load in each actor and the pipeline);
* ``docs/s (steady)``: documents written after the first part / time from the first part to the last, from the
  parts' file times (start-up excluded).

After each run every id must appear once, and the codes are decoded and checked against their documents (on the
default corpus only the first ``--verify-limit`` when given: decoding is as slow as encoding). Corpora: ``tiny`` (the random 2-layer test
model, 240 short synthetic documents: plumbing), ``default`` (the embedded SmolLM2-135M on the first ``--limit``
WikiText-2 test paragraphs from ``/work/shared/data``).

    python benchmarks/corpus_ray.py --corpus tiny default --limit 50 --out benchmarks/results/corpus_ray

Timings vary with the load of the machine (recorded); no test asserts them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any

WIKITEXT = Path("/work/shared/data/wikipedia/wikitext2_raw_test_paragraphs.jsonl")
_WORDS = "the quick brown fox jumps over lazy dog compression model tokens text Wikipedia 0123456789".split()


def _tiny_corpus(folder: Path) -> tuple[Path, Path, int]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import build_tiny_model

    model = build_tiny_model(folder / "tiny_model")
    rng = random.Random(0)
    docs = [
        {"id": f"doc-{i}", "text": " ".join(rng.choices(_WORDS, k=rng.randint(2, 24)))} for i in range(240)
    ]
    return _jsonl(folder / "tiny.jsonl", docs), model, 64


def _default_corpus(folder: Path, limit: int) -> tuple[Path, None, int]:
    rows = [json.loads(line) for line in WIKITEXT.open(encoding="utf-8")][:limit]
    return _jsonl(folder / "wikitext.jsonl", [{"id": r["id"], "text": r["text"]} for r in rows]), None, 256


def _jsonl(path: Path, rows: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _steady(out: Path) -> tuple[float, int]:
    """(seconds from the first part to the last, documents in the parts after the first)."""
    import pyarrow.parquet as pq

    parts = sorted(out.glob("part-*.parquet"), key=lambda p: p.stat().st_mtime)
    rows = [pq.read_metadata(p).num_rows for p in parts]
    return parts[-1].stat().st_mtime - parts[0].stat().st_mtime, sum(rows[1:])


def _verify(src: Path, out: Path, model: Path | None, window: int, limit: int | None) -> int:
    """Every id once; the first ``limit`` codes (all when None) decode to their documents. Returns codes decoded."""
    import pyarrow.parquet as pq

    from zcompress_integrations import ZCompressor

    docs = {d["id"]: d["text"] for d in map(json.loads, src.open(encoding="utf-8"))}
    table = pq.ParquetDataset(sorted(out.glob("part-*.parquet"))).read()
    ids = table.column("id").to_pylist()
    if len(ids) != len(set(ids)) or set(ids) != set(docs):
        raise SystemExit(f"{out}: ids missing or repeated")
    ids, codes = ids[:limit], table.column("code").to_pylist()[:limit]
    zc = ZCompressor.from_pretrained(model, adapters=None, window=window, device="cpu")
    if zc.decompress_batch(codes) != [docs[i] for i in ids]:
        raise SystemExit(f"round trip failed for {out}")
    return len(ids)


def run_one(corpus: str, workers: int, folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    from zcompress_integrations.corpus import compress_corpus

    src, model, window = _tiny_corpus(folder) if corpus == "tiny" else _default_corpus(folder, args.limit)
    out = folder / f"out-{corpus}-{workers}"
    batch = args.batch_size if corpus == "default" else 8
    report = compress_corpus(
        str(src), out, model=None if model is None else str(model), adapters=None, window=window,
        workers=workers, batch_size=batch, num_cpus_per_worker=0.5, progress=False,
    )  # fmt: skip
    steady_s, steady_docs = _steady(out)
    checked = _verify(src, out, model, window, args.verify_limit if corpus == "default" else None)
    return {
        "corpus": corpus,
        "workers": workers,
        "docs": report.docs_compressed,
        "text_tokens": report.text_tokens,
        "z_tokens": report.z_tokens,
        "batch_size": batch,
        "parts": report.parts_written,
        "wall_s": round(report.seconds, 2),
        "docs_per_s_wall": round(report.docs_per_s, 3),
        "steady_s": round(steady_s, 2),
        "docs_per_s_steady": round(steady_docs / steady_s, 3) if steady_s else None,
        "text_tokens_per_s_wall": round(report.text_tokens / report.seconds, 1),
        "round_trips_checked": checked,
    }


def _machine() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), cpu)
    except OSError:
        pass
    import ray

    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": cpu,
        "python": platform.python_version(),
        "ray": ray.__version__,
        "load_average_end": list(os.getloadavg()),
        "shared": "2 cores shared with other jobs; timings are indicative",
    }


def _markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Corpus compression on Ray Data: 1 vs 2 workers",
        "",
        f"Command: `{result['command']}`  ",
        f"Machine: {result['machine']['nproc']} cores, {result['machine']['cpu_model']}, Ray "
        f"{result['machine']['ray']}, load average at the end {result['machine']['load_average_end']}  ",
        "Exact codec; `checked`: codes decoded and compared with their documents (all of them unless `--verify-limit` "
        "is given for the default model). Wall includes Ray start-up and the model load in each actor; steady is "
        "first part to last part.",
        "",
        "| corpus | workers | docs | text tokens | parts | wall s | docs/s wall | docs/s steady | tokens/s wall | checked |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        lines.append(
            f"| {r['corpus']} | {r['workers']} | {r['docs']} | {r['text_tokens']} | {r['parts']} | {r['wall_s']} | "
            f"{r['docs_per_s_wall']} | {r['docs_per_s_steady']} | {r['text_tokens_per_s_wall']} | "
            f"{r.get('round_trips_checked', '')} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", nargs="+", choices=("tiny", "default"), default=["tiny"])
    p.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    p.add_argument("--limit", type=int, default=50, help="WikiText-2 paragraphs for the default corpus")
    p.add_argument("--batch-size", type=int, default=5, help="documents per part for the default corpus")
    p.add_argument(
        "--verify-limit",
        type=int,
        default=None,
        help="default corpus: decode only this many codes (default: all)",
    )
    p.add_argument("--out", default="benchmarks/results/corpus_ray", help="writes <out>.json and <out>.md")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for corpus in args.corpus:
            for workers in args.workers:
                folder = Path(tmp) / f"{corpus}-{workers}"
                folder.mkdir()
                runs.append(run_one(corpus, workers, folder, args))
                print(json.dumps(runs[-1]), flush=True)
    result = {
        "command": "python " + shlex.join(["benchmarks/corpus_ray.py", *(argv or sys.argv[1:])]),
        "machine": _machine(),
        "runs": runs,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    Path(f"{args.out}.md").write_text(_markdown(result), encoding="utf-8")
    print(_markdown(result))


if __name__ == "__main__":
    main()
