"""Byte-compressor baselines (gzip-9, xz-9, zstd-19, brotli-11) on the evaluation texts.

Each text is compressed on its own (as a Z-code would be), and the table gives total compressed bits per
character over the set. Rerun:

    python benchmarks/byte_baselines.py --limit 200 --out benchmarks/results/byte_baselines

It writes ``<out>.json`` and ``<out>.md``. About a minute with the defaults, mostly system time: xz -9 sets
up its large dictionary again for every text.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Sequence

from zcompress_integrations.eval import baselines, datasets, report

SETS: dict[str, Callable[[int | None, int], Sequence[str]]] = {
    "wikitext2-paragraphs": lambda n, s: [p.text_detok for p in datasets.load_wikitext_paragraphs(n, s)],
    "wikitext2-articles": lambda n, s: [a.text_detok for a in datasets.load_wikitext_articles(n, s)],
    "hotpot-wiki-paragraphs": lambda n, s: [p.text for p in datasets.load_hotpot_wiki_paragraphs(n, s)],
    "cnndm-articles": lambda n, s: [e.article for e in datasets.load_cnndm(n, s)],
    "qulac-queries": lambda n, s: [q.text for q in datasets.load_qulac_queries(n, s)],
}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=200, help="texts per set (default 200)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/byte_baselines")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    rows = []
    for name, load in SETS.items():
        texts = load(args.limit, args.seed)
        chars = sum(len(t) for t in texts)
        row: dict[str, object] = {"set": name, "texts": len(texts), "mean chars": round(chars / len(texts))}
        for method in baselines.DEFAULT_BYTE_METHODS:
            size = sum(baselines.byte_compress(t, method).compressed_bytes for t in texts)
            row[f"{method} bits/char"] = 8 * size / chars
        rows.append(row)
    report.write_json({"limit": args.limit, "seed": args.seed, "rows": rows}, f"{args.out}.json")
    report.write_text(
        "Byte compressors, each text compressed alone; total compressed bits / total characters.\n\n"
        + report.markdown_table(rows),
        f"{args.out}.md",
    )
    print(report.markdown_table(rows))


if __name__ == "__main__":
    main()
