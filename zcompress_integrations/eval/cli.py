"""``zcompress eval``: run benchmark suites and write ``results.json``, ``results.md`` and PNG plots.

    zcompress eval --suite all --limit 20 --out benchmarks/results/eval_limit20
    zcompress eval --suite reconstruction --limit 5 --ratios 2,4 --adapters path/to/adapters --out /tmp/ev
    zcompress eval --suite qa --limit 200 --shard 0/2 --out qa/0   # and --shard 1/2 --out qa/1, then
    zcompress eval --merge qa/0 qa/1 --out qa

The JSON holds every figure plus the machine (nproc, CPU model, torch threads, load average) and the command line.
Quality figures repeat exactly for the same command; timings do not.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from zcompress_integrations.eval import report
from zcompress_integrations.eval.suites import SUITE_ORDER, SUITES, EvalContext, SuiteConfig, machine_info

__all__ = ["main", "build_parser", "run", "merge", "render_markdown", "write_plots"]

logger = logging.getLogger(__name__)


def _ratios(value: str) -> tuple[float, ...]:
    try:
        ratios = tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"--ratios takes numbers separated by commas, got {value!r}"
        ) from err
    if not ratios or any(r <= 0 for r in ratios):
        raise argparse.ArgumentTypeError(f"--ratios must be positive numbers, got {value!r}")
    return ratios


def _shard(value: str) -> tuple[int, int]:
    i, sep, n = value.partition("/")
    if not (sep and i.isdigit() and n.isdigit() and 0 <= int(i) < int(n)):
        raise argparse.ArgumentTypeError(f"--shard takes I/N with 0 <= I < N, e.g. 0/2; got {value!r}")
    return int(i), int(n)


def _positive(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value!r}")
    return n


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zcompress eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--suite", default="all", choices=[*SUITE_ORDER, "all"], help="suite to run (default all)"
    )
    parser.add_argument("--out", required=True, help="output folder for results.json, results.md and plots")
    parser.add_argument("--limit", type=_positive, default=20, help="records per data set (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="selection seed (default 0)")
    parser.add_argument(
        "--model", default=None, help="backbone folder or cached name (default: embedded SmolLM2)"
    )
    parser.add_argument(
        "--adapters",
        default="default",
        help="latent adapter folder (default: the shipped one); 'none' to skip",
    )
    parser.add_argument(
        "--ratios", type=_ratios, default=(2.0, 4.0), help="latent ratios, e.g. 2,4 (default)"
    )
    parser.add_argument("--device", default="auto", help="torch device (default auto)")
    parser.add_argument("--data-dir", default=None, help="evaluation data folder (default: shared/data)")
    parser.add_argument(
        "--max-tokens",
        type=int,
        default=256,
        help="cut every input text to this many tokens (0: whole; default 256)",
    )
    parser.add_argument(
        "--qa-paragraphs",
        type=int,
        default=4,
        help="HotpotQA paragraphs per question, gold first (0: all 10)",
    )
    parser.add_argument(
        "--shard",
        type=_shard,
        default=(0, 1),
        help="QA only: answer questions I, I+N, ... of the selection (I/N), to split a long run; see --merge",
    )
    parser.add_argument(
        "--merge",
        nargs="+",
        metavar="DIR",
        help="merge the QA results of runs with --shard 0/N ... N-1/N into --out, instead of running anything",
    )
    parser.add_argument("--no-llmlingua", action="store_true", help="skip the LLMLingua baseline")
    parser.add_argument(
        "--speed-lengths", default="128,1024", help="text lengths in tokens for the speed suite"
    )
    parser.add_argument(
        "--threads",
        type=_positive,
        default=None,
        help="torch threads (default: torch's own); 1 is much faster on a CPU shared with other jobs",
    )
    parser.add_argument(
        "--jobs",
        type=_positive,
        default=None,
        help="worker processes for the quality suites, one torch thread each (default: min(2, CPUs)); the speed "
        "suite always runs alone afterwards, in this process",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def config_from_args(args: argparse.Namespace) -> SuiteConfig:
    adapters = None if str(args.adapters).lower() == "none" else args.adapters
    return SuiteConfig(
        model=args.model,
        adapters=adapters,
        limit=args.limit,
        seed=args.seed,
        ratios=args.ratios,
        device=args.device,
        data_dir=args.data_dir,
        show_progress=not args.no_progress,
        max_tokens=args.max_tokens,
        qa_paragraphs=args.qa_paragraphs,
        qa_shard=args.shard,
        llmlingua=not args.no_llmlingua,
        speed_lengths=tuple(int(v) for v in str(args.speed_lengths).split(",") if v.strip()),
    )


#: Rough relative cost of each quality suite on a CPU, for balancing worker processes.
_SUITE_COST = {"reconstruction": 4.0, "qa": 4.0, "summarization": 1.5, "queries": 0.5}


def plan_jobs(suites: Sequence[str], jobs: int) -> list[list[str]]:
    """Split the quality suites (all but ``speed``) into at most ``jobs`` groups of similar cost, heaviest first."""
    quality = [s for s in suites if s != "speed"]
    groups: list[list[str]] = [[] for _ in range(max(1, min(jobs, len(quality))))]
    loads = [0.0] * len(groups)
    for name in sorted(quality, key=lambda n: -_SUITE_COST.get(n, 1.0)):
        k = loads.index(min(loads))
        groups[k].append(name)
        loads[k] += _SUITE_COST.get(name, 1.0)
    return [g for g in groups if g]


def _run_group(
    config: SuiteConfig, names: Sequence[str], threads: int | None, ctx: EvalContext | None = None
) -> dict[str, Any]:
    """Run suites in one process (a worker with its own context, or this one sharing ``ctx``, so the model loads
    once); returns figures, seconds and model facts."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads or previous)
    try:
        ctx = ctx or EvalContext(config)
        out: dict[str, Any] = {"suites": {}, "seconds": {}}
        for name in names:
            t0 = time.perf_counter()
            logger.info("suite %s", name)
            out["suites"][name] = SUITES[name](ctx)
            out["seconds"][name] = time.perf_counter() - t0
        out["model"] = ctx.zc.info() if ctx._zc is not None else None
        out["latent_unavailable"] = ctx.latent_error
        return out
    finally:
        torch.set_num_threads(previous)


def run(
    config: SuiteConfig,
    suites: Sequence[str],
    out: str | Path,
    command: str = "",
    *,
    jobs: int = 1,
    threads: int | None = None,
) -> dict[str, Any]:
    """Run suites and write the report into ``out``.

    With ``jobs > 1`` the quality suites run in that many spawned worker processes at one torch thread each (on a
    small CPU, separate processes use the cores better than threads in one process: decoding steps are small);
    the ``speed`` suite always runs last, alone, in this process with ``threads``. Quality figures do not depend on
    ``jobs`` when ``threads`` is 1.

    Args:
        config: What to run on.
        suites: Suite names (see :data:`..suites.SUITES`).
        out: Output folder.
        command: The command line, recorded in the report.
        jobs: Worker processes for the quality suites (1: run everything here).
        threads: Torch threads in this process (``None``: torch's own).

    Returns:
        The figures written to ``results.json``.
    """
    out = Path(out)
    results: dict[str, Any] = {
        "command": command,
        "config": {k: v for k, v in vars(config).items() if k != "extra"},
        "machine": machine_info(),
        "suites": {},
        "seconds": {},
    }
    started = time.perf_counter()
    groups = plan_jobs(suites, jobs)
    results["jobs"] = len(groups) if len(groups) > 1 else 1  # what actually ran in parallel
    parts: list[dict[str, Any]] = []
    local = EvalContext(config)  # suites run in this process share one model load

    def merge(part: dict[str, Any]) -> None:
        parts.append(part)
        results["suites"].update(part["suites"])
        results["seconds"].update(part["seconds"])
        # a long run leaves the finished suites behind if it is stopped
        results["suites"] = {n: results["suites"][n] for n in suites if n in results["suites"]}
        report.write_json(results, out / "results.json")
        report.write_text(render_markdown(results), out / "results.md")

    if len(groups) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        spawn = multiprocessing.get_context("spawn")  # a fork of a process holding torch threads can hang
        with ProcessPoolExecutor(max_workers=len(groups), mp_context=spawn) as pool:
            futures = [pool.submit(_run_group, config, group, 1) for group in groups]
            for future in as_completed(futures):
                merge(future.result())
    else:
        for group in groups:
            for name in group:
                merge(_run_group(config, [name], threads, local))
    if "speed" in suites:
        merge(_run_group(config, ["speed"], threads, local))
    results["seconds"]["total"] = time.perf_counter() - started
    results["machine"]["load_average_end"] = machine_info()["load_average"]
    results["model"] = next((p["model"] for p in parts if p["model"]), None)
    results["latent_unavailable"] = next(
        (p["latent_unavailable"] for p in parts if p["latent_unavailable"]), None
    )
    report.write_json(results, out / "results.json")
    results["plots"] = [p.name for p in write_plots(results, out)]
    report.write_text(render_markdown(results), out / "results.md")
    report.write_json(results, out / "results.json")
    return results


def merge(dirs: Sequence[str | Path], out: str | Path, command: str = "") -> dict[str, Any]:
    """Merge the QA suites of shard runs (``--shard 0/N`` ... ``N-1/N``, same settings otherwise) into one report.

    EM, F1 and answer accuracy are recomputed from the pooled predictions; prompt tokens are the mean over all
    questions. Raises ``ValueError`` when the runs are not the complete set of shards of one configuration.
    """
    from zcompress_integrations.eval.suites import qa_summary

    runs = [json.loads((Path(d) / "results.json").read_text()) for d in dirs]
    if any("qa" not in r["suites"] for r in runs):
        raise ValueError("every run to merge needs a QA suite (zcompress eval --suite qa --shard I/N)")
    shards = sorted(tuple(r["suites"]["qa"].get("shard", (0, 1))) for r in runs)
    n = shards[0][1]
    if shards != [(i, n) for i in range(n)]:
        raise ValueError(f"--merge needs shards 0/{n} ... {n - 1}/{n} exactly once each; got {shards}")
    same = [{k: v for k, v in r["config"].items() if k not in ("qa_shard", "show_progress")} for r in runs]
    if any(c != same[0] for c in same):
        raise ValueError("the runs to merge differ in more than --shard; rerun them with the same settings")
    first = runs[0]["suites"]["qa"]
    golds = [g for r in runs for g in r["suites"]["qa"]["golds"]]
    methods: dict[str, Any] = {}
    for name, row in first["methods"].items():
        rows = [r["suites"]["qa"]["methods"][name] for r in runs]
        if not all("predictions" in x for x in rows):
            methods[name] = row
            continue
        # each shard's mean prompt tokens, once per question it answered: their mean is the pooled mean
        pooled = {
            "predictions": [p for x in rows for p in x["predictions"]],
            "prompt_tokens": [x["prompt_tokens"] for x in rows for _ in range(x["n"])],
        }
        methods[name] = qa_summary(pooled, golds)
    results: dict[str, Any] = {
        "command": command,
        "config": {**runs[0]["config"], "qa_shard": [0, 1]},
        "machine": runs[0]["machine"],
        "suites": {"qa": {**first, "n": len(golds), "shard": [0, 1], "golds": golds, "methods": methods}},
        "seconds": {f"qa shard {r['suites']['qa']['shard'][0]}/{n}": r["seconds"]["qa"] for r in runs},
        "merged_from": [str(d) for d in dirs],
        "model": runs[0].get("model"),
        "latent_unavailable": runs[0].get("latent_unavailable"),
    }
    out = Path(out)
    report.write_json(results, out / "results.json")
    results["plots"] = [p.name for p in write_plots(results, out)]
    report.write_text(render_markdown(results), out / "results.md")
    report.write_json(results, out / "results.json")
    return results


# ---------------------------------------------------------------------------------------------------- tables


def _ok(row: Mapping[str, Any]) -> bool:
    return row.get("status", "ok") == "ok"


def _na(row: Mapping[str, Any]) -> str:
    return str(row.get("status", "n/a"))


def _reconstruction_rows(res: Mapping[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for name in ("wikitext", "cnndm"):
        if name not in res:
            continue
        d = res[name]
        e = d["exact"]
        rows.append(
            {
                "data": name,
                "method": f"exact (K={e['k']})",
                "ratio": e["ratio"],
                "bits/char": e["bits_per_char"],
                "payload bits/char": e.get("payload_bits_per_char"),
                "decompress exact": e["exactness"],
                "read-back exact": None,
                "BLEU-4 read back": None,
                "bound": e["bound"],
                "H bits/token": d["cross_entropy_bits_per_token"],
            }
        )
        for tag, row in d["latent"].items():
            base = {"data": name, "method": f"latent x{tag}"}
            if not _ok(row):
                rows.append({**base, "ratio": _na(row)})
                continue
            rows.append(
                {
                    **base,
                    "ratio": row["mean_ratio"],
                    "bits/char": row["bits_per_char"],
                    "payload bits/char": row.get("payload_bits_per_char"),
                    "decompress exact": row.get(
                        "decompress_exact_match"
                    ),  # absent before reconstruct existed
                    "read-back exact": row["exact_match"],
                    "BLEU-4 read back": row["bleu"],
                    "bound": row["bound"],
                }
            )
        for method, row in d["bytes"].items():
            rows.append({"data": name, "method": method, "ratio": None, "bits/char": row["bits_per_char"]})
    return rows


def _methods_rows(methods: Mapping[str, Any], columns: Mapping[str, str]) -> list[dict[str, Any]]:
    rows = []
    for method, row in methods.items():
        if not _ok(row):
            rows.append({"method": method, next(iter(columns.values())): _na(row)})
            continue
        rows.append({"method": method, **{label: row.get(key) for key, label in columns.items()}})
    return rows


def render_markdown(results: Mapping[str, Any]) -> str:
    """The Markdown report: the command, the machine, and one table per suite."""
    m = results["machine"]
    lines = [
        "# zcompress evaluation",
        "",
        f"Command: `{results.get('command') or 'zcompress eval'}`",
        "",
        f"Machine: {m['cpu_model']}, {m['nproc']} CPUs (torch threads {m['torch_threads']}), "
        f"GPU {m['gpu'] or 'none'}; torch {m['torch']}, transformers {m['transformers']}, Python {m['python']}. "
        f"Load average at start {_load(m.get('load_average'))}, at end {_load(m.get('load_average_end'))}.",
        "",
        "Wall time: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in results["seconds"].items())
        + "."
        + (
            f" The quality suites ran in {results['jobs']} worker processes at once (one torch thread each), so "
            "their times overlap; speed ran alone after them."
            if results.get("jobs", 1) > 1
            else ""
        ),
        "",
    ]
    if results.get("latent_unavailable"):
        lines += [f"Latent codec: unavailable ({results['latent_unavailable']}).", ""]
    suites = results["suites"]
    if "reconstruction" in suites:
        res = suites["reconstruction"]
        lines += [
            "## Reconstruction",
            "",
            f"WikiText-2 paragraphs and CNN/DM articles (cut to {res['max_tokens'] or 'any number of'} tokens). Ratio = text "
            "tokens / Z-tokens; bound = log2(K)/H (latent: log2(K_eff)/H), H = backbone cross-entropy. bits/char: "
            "the whole stored code (`to_bytes()`); payload: its Z ids (and residual) alone. Decompress exact: the "
            "share of texts `decompress` gives back byte for byte; read back: what the model writes back from the "
            "Z-tokens (`reconstruct`, free-running greedy).",
            "",
            report.markdown_table(_reconstruction_rows(res)),
        ]
    if "qa" in suites:
        res = suites["qa"]
        lines += [
            "## QA (HotpotQA dev)",
            "",
            f"{res['n']} questions, {res['paragraphs_per_question'] or 'all'} paragraphs each (gold first), "
            f"each cut to {res['max_tokens'] or 'any number of'} tokens. "
            f"Truncation and LLMLingua budgets: {res['budget_source']} "
            "(nominal = full context tokens / ratio when the latent codec is unavailable).",
            "",
            report.markdown_table(
                _methods_rows(
                    res["methods"],
                    {
                        "em": "EM",
                        "f1": "F1",
                        "contains": "answer in prediction",
                        "prompt_tokens": "prompt tokens",
                    },
                )
            ),
        ]
    if "summarization" in suites:
        res = suites["summarization"]
        lines += [
            "## Summarization (CNN/DM)",
            "",
            f'{res["n"]} articles (cut to {res["max_tokens"] or "any number of"} tokens), prompt "{res["prompt"]}".',
            "",
            report.markdown_table(
                _methods_rows(
                    res["methods"],
                    {
                        "rouge1": "ROUGE-1",
                        "rouge2": "ROUGE-2",
                        "rougeL": "ROUGE-L",
                        "prompt_tokens": "prompt tokens",
                    },
                ),
                float_format="{:.3f}",
            ),
        ]
    if "queries" in suites:
        res = suites["queries"]
        lines += [
            "## Long queries (Qulac-style)",
            "",
            f"{res['n']} queries, {res['mean_tokens']:.0f} tokens on average.",
            "",
            report.markdown_table(
                _methods_rows(
                    res["methods"],
                    {
                        "ratio": "ratio",
                        "bits_per_char": "bits/char",
                        "payload_bits_per_char": "payload bits/char",
                        "exactness": "exact match (latent: read back)",
                        "bleu": "BLEU-4 read back",
                    },
                )
            ),
        ]
    if "speed" in suites:
        rows = []
        for r in suites["speed"]["rows"]:
            if not _ok(r):
                rows.append({"method": r["method"], "length": r["length"], "tokens": _na(r)})
                continue
            rows.append(
                {
                    "method": r["method"],
                    "length": r["length"],
                    "tokens": r["text_tokens"],
                    "compress tok/s": r["compress_tokens_per_s"],
                    "decompress tok/s": r["decompress_tokens_per_s"],
                    "peak RSS MB": r["peak_rss_mb_after_decompress"],
                    "CUDA peak MB": max(
                        filter(None, [r["cuda_peak_mb_compress"], r["cuda_peak_mb_decompress"]]), default=None
                    ),
                    "round trip": r["round_trip"],
                }
            )
        lines += [
            "## Speed",
            "",
            "One text at a time; peak RSS is the process high-water mark.",
            "",
            report.markdown_table(rows, float_format="{:.1f}"),
        ]
    if results.get("plots"):
        lines += ["## Plots", "", *[f"![{p}]({p})" for p in results["plots"]], ""]
    return "\n".join(lines)


def _load(values: Sequence[float] | None) -> str:
    return "n/a" if not values else " / ".join(f"{v:.2f}" for v in values)


# ----------------------------------------------------------------------------------------------------- plots


def write_plots(results: Mapping[str, Any], out: Path) -> list[Path]:
    """PNG plots: ratio vs BLEU with the bound, QA F1 vs prompt tokens, throughput vs text length."""
    suites = results["suites"]
    paths: list[Path] = []
    if "reconstruction" in suites:
        paths += _reconstruction_plots(suites["reconstruction"], out)
    if "qa" in suites:
        curves: dict[str, list[tuple[float, float]]] = {}
        for method, row in suites["qa"]["methods"].items():
            if _ok(row):
                family = method.split(" x")[0]
                curves.setdefault(family, []).append((max(row["prompt_tokens"], 1.0), row["f1"]))
        paths.append(report.plot_qa_f1_vs_tokens(curves, out / "qa_f1_vs_prompt_tokens.png"))
    if "speed" in suites:
        curves = {}
        for r in (r for r in suites["speed"]["rows"] if _ok(r)):
            curves.setdefault(f"{r['method']} compress", []).append(
                (r["text_tokens"], r["compress_tokens_per_s"])
            )
            curves.setdefault(f"{r['method']} decompress", []).append(
                (r["text_tokens"], r["decompress_tokens_per_s"])
            )
        paths.append(report.plot_throughput(curves, out / "speed_throughput.png"))
    return paths


def _reconstruction_plots(res: Mapping[str, Any], out: Path) -> list[Path]:
    paths = []
    for name in ("wikitext", "cnndm"):
        d = res.get(name)
        if not d:
            continue
        curves: dict[str, list[tuple[float, float]]] = {
            "exact": [(d["exact"]["ratio"], 100.0 * d["exact"]["exactness"])]
        }
        latent = [(r["mean_ratio"], r["bleu"]) for r in d["latent"].values() if _ok(r)]
        if latent:
            curves["latent"] = latent
        bound = d["exact"]["bound"]
        paths.append(
            report.plot_ratio_vs_quality(
                curves,
                out / f"reconstruction_{name}_ratio_vs_bleu.png",
                bound=bound if bound is not None and math.isfinite(bound) else None,
                title=f"Reconstruction ({name}): BLEU-4 vs ratio",
            )
        )
    return paths


# ------------------------------------------------------------------------------------------------------ main


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``zcompress eval``; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = config_from_args(args)
    except ValueError as err:
        print(f"zcompress eval: error: {err}", file=sys.stderr)
        return 2
    suites = list(SUITE_ORDER) if args.suite == "all" else [args.suite]
    command = "zcompress eval " + shlex.join(argv)
    if args.merge:
        try:
            merge(args.merge, args.out, command)
        except (ValueError, FileNotFoundError) as err:
            print(f"zcompress eval: error: {err}", file=sys.stderr)
            return 2
        print(f"zcompress eval: merged {len(args.merge)} QA runs; report in {Path(args.out) / 'results.md'}")
        return 0
    import os

    jobs = args.jobs or min(2, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)
    results = run(config, suites, args.out, command, jobs=jobs, threads=args.threads)
    total = results["seconds"]["total"]
    print(
        f"zcompress eval: {', '.join(suites)} done in {total:.0f} s; report in {Path(args.out) / 'results.md'}"
    )
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
