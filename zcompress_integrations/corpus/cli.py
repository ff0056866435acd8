"""``zcompress compress-dataset IN OUT``: compress a jsonl/parquet corpus on Ray Data, resumable.

    zcompress compress-dataset docs.jsonl codes/ --workers 2            # local Ray cluster on this machine
    zcompress compress-dataset docs.jsonl codes/ --workers 2            # after a crash: same command resumes
    zcompress compress-dataset s3://bucket/docs/ /shared/codes --address ray://head:10001 \\
        --workers 8 --num-gpus-per-worker 1 --batch-size 64

Prints one JSON line with the run's figures on stdout; exit 2 on a user error (bad settings, Ray missing).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from zcompress_integrations.errors import ZCompressError

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="zcompress compress-dataset",
        description="Compress every document of a jsonl/parquet dataset into parquet parts with an actor pool of "
        "compressors on Ray Data. Run the same command again to resume: finished parts are never recomputed.",
    )
    p.add_argument("input", metavar="IN", help="jsonl file(s)/folder (one JSON object a line) or parquet")
    p.add_argument("output", metavar="OUT", help="output folder (every worker must be able to write it)")
    p.add_argument("--text-column", default="text", help="column holding the document text (default: text)")
    p.add_argument("--id-column", default="id", help="column holding a unique document id (default: id)")
    p.add_argument("--mode", choices=("exact", "latent"), default="exact", help="codec (default: exact)")
    p.add_argument("--ratio", type=float, default=None, help="latent mode: target text tokens per Z-token")
    p.add_argument(
        "--exact", action="store_true", help="latent mode: add a residual so decoding is byte-exact"
    )
    p.add_argument("--workers", type=int, default=1, help="actors in the pool, one model each (default: 1)")
    p.add_argument(
        "--batch-size", type=int, default=32, help="documents per actor call and per part (default: 32)"
    )
    p.add_argument(
        "--model",
        default=None,
        metavar="PATH",
        help="backbone: local dir or cached HF id (default: embedded)",
    )
    p.add_argument(
        "--adapters",
        default="default",
        metavar="DIR",
        help="latent adapters (default: the shipped ones; none: no adapters)",
    )
    p.add_argument("--k", type=int, default=4096, help="Z vocabulary size of the exact codec (default: 4096)")
    p.add_argument("--window", type=int, default=256, help="tokens per coded window (default: 256)")
    p.add_argument(
        "--num-cpus-per-worker", type=float, default=1, help="CPUs reserved per actor (default: 1)"
    )
    p.add_argument(
        "--num-gpus-per-worker", type=float, default=0, help="GPUs per actor; >0 runs on CUDA (default: 0)"
    )
    p.add_argument(
        "--code-format", choices=("bytes", "string"), default="bytes", help="code column: binary or zc1:"
    )
    p.add_argument(
        "--input-format", choices=("auto", "jsonl", "parquet"), default="auto", help="default: by extension"
    )
    p.add_argument("--address", default=None, help="Ray cluster ('auto', 'ray://head:10001'); default: local")
    p.add_argument("--no-progress", action="store_true", help="hide Ray Data's progress bars")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.INFO, format="zcompress: %(message)s")
    from zcompress_integrations.corpus.pipeline import compress_corpus

    try:
        report = compress_corpus(
            args.input,
            args.output,
            text_column=args.text_column,
            id_column=args.id_column,
            mode=args.mode,
            ratio=args.ratio,
            exact=args.exact,
            model=args.model,
            adapters=None if args.adapters in ("none", "") else args.adapters,
            k=args.k,
            window=args.window,
            workers=args.workers,
            batch_size=args.batch_size,
            num_cpus_per_worker=args.num_cpus_per_worker,
            num_gpus_per_worker=args.num_gpus_per_worker,
            code_format=args.code_format,
            input_format=args.input_format,
            address=args.address,
            progress=not args.no_progress,
        )
    except (ImportError, ZCompressError) as exc:
        print(f"zcompress: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report.to_dict(), sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
