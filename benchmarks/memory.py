"""Peak memory of compressing one long document, above the model's own footprint.

    python benchmarks/memory.py --chars 200000 1000000 --modes latent --out benchmarks/results/memory

Each case runs in a fresh child process: load the default model (and adapters), compress a short warm-up text, read
the peak resident set size (``ru_maxrss``), then compress one document of ``--chars`` characters (WikiText-2 test
paragraphs joined until long enough: distinct text, so no cache helps) and read the peak again. The difference is
what the document itself cost. Not a timing benchmark: the seconds are reported only to show the run finished.

The document goes through ``compress_batch(..., show_progress_bar=True)``, the progress bar a user sees (stderr).
Rows are merged into ``--out`` (a case run again replaces its row), so cases can be run one at a time.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _document(chars: int) -> str:
    from zcompress_integrations.eval.datasets import load_wikitext_paragraphs

    parts, total = [], 0
    for p in load_wikitext_paragraphs():
        parts.append(p.text_detok)
        total += len(p.text_detok) + 2
        if total >= chars:
            break
    text = "\n\n".join(parts)
    while len(text) < chars:  # the test split is ~1.2 MB; go round again with a marker so segments differ
        text += f"\n\n[{len(text)}] " + text[: chars - len(text)]
    return text[:chars]


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _case(mode: str, chars: int, queue: mp.Queue) -> None:
    from zcompress_integrations import ZCompressor

    zc = ZCompressor.from_pretrained(adapters="default")
    text = _document(chars)
    zc.compress("A short warm-up text. It loads every model piece the real run will use.", mode=mode)
    before = _peak_mib()
    t0 = time.time()
    (code,) = zc.compress_batch([text], mode=mode, show_progress_bar=True)
    seconds = time.time() - t0
    queue.put(
        {
            "mode": mode,
            "chars": len(text),
            "text_tokens": code.text_tokens,
            "z_tokens": code.z_tokens,
            "model_peak_mib": round(before),
            "peak_mib": round(_peak_mib()),
            "document_mib": round(_peak_mib() - before),
            "seconds": round(seconds, 1),
        }
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--chars", type=int, nargs="+", default=[200_000, 1_000_000])
    parser.add_argument("--modes", nargs="+", default=["latent"], choices=["latent", "exact"])
    parser.add_argument("--out", default="benchmarks/results/memory")
    parser.add_argument("--report", action="store_true", help="only rewrite OUT.md from OUT.json")
    args = parser.parse_args(argv)
    if args.report:
        _report(Path(args.out))
        return
    rows = []
    commit = _commit()  # before the runs: the tree may change while they run
    ctx = mp.get_context("spawn")
    for mode in args.modes:
        for chars in args.chars:
            queue = ctx.Queue()
            proc = ctx.Process(target=_case, args=(mode, chars, queue))
            proc.start()
            rows.append({**queue.get(), "commit": commit})
            proc.join()
            print(json.dumps(rows[-1]), flush=True)
    import torch

    meta = {
        "command": "python " + " ".join([os.path.relpath(__file__, ROOT), *(argv or sys.argv[1:])]),
        "machine": f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}",
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = _merged(out.with_suffix(".json"), rows)
    meta["commands"] = _merged_commands(out.with_suffix(".json"), meta["command"])
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    _report(out)


def _report(out: Path) -> None:
    """Write ``out.md`` from ``out.json`` (all rows, every command that made them)."""
    data = json.loads(out.with_suffix(".json").read_text())
    meta, rows = data["meta"], data["rows"]
    lines = [
        "# Peak memory of compressing one long document",
        "",
        *(f"Command: `{c}`  " for c in meta["commands"]),
        f"Machine: {meta['machine']}",
        "",
        "| mode | characters | text tokens | Z-tokens | model + warm-up peak (MiB) | peak (MiB) | "
        "the document's own (MiB) | seconds | commit |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['chars']:,} | {r['text_tokens']:,} | {r['z_tokens']:,} | "
            f"{r['model_peak_mib']:,} | {r['peak_mib']:,} | {r['document_mib']:,} | {r['seconds']} | {r.get('commit', '')} |"
        )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


def _commit() -> str:
    """The checked-out commit (with "+" when the tree has changes), so each row says what code it measured."""
    run = lambda *a: subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()  # noqa: E731
    return run("rev-parse", "--short", "HEAD") + (
        "+" if run("status", "--porcelain", "--untracked-files=no") else ""
    )


def _merged(path: Path, rows: list[dict]) -> list[dict]:
    """Rows already in ``path`` for other (mode, chars) cases, then ``rows``; sorted by mode and size."""
    new = {(r["mode"], r["chars"]) for r in rows}
    old = json.loads(path.read_text())["rows"] if path.exists() else []
    kept = [r for r in old if (r["mode"], r["chars"]) not in new]
    return sorted(kept + rows, key=lambda r: (r["mode"], r["chars"]))


def _merged_commands(path: Path, command: str) -> list[str]:
    old = json.loads(path.read_text())["meta"] if path.exists() else {}
    commands = list(old.get("commands") or ([old["command"]] if "command" in old else []))
    return [*(c for c in commands if c != command), command]


if __name__ == "__main__":
    main()
