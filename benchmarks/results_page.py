"""Write docs/results.md, the full result tables, from the result files in benchmarks/results/ (never by hand).

    python benchmarks/results_page.py            # writes docs/results.md
    python benchmarks/results_page.py --check    # exits 1 when docs/results.md is out of date

Each section names the claim it backs, the command that produced its result file, and the file. Tables are
copied from the Markdown each benchmark wrote (with the paragraph just before a table as its caption); the
`zcompress eval` run is rendered from its results.json by the eval package's own report; the infer adapter's
held-apart figures are tabulated from their JSON lines. Reads files only: no model runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
OUT = ROOT / "docs" / "results.md"


@dataclass(frozen=True)
class Section:
    """One benchmark: the claim it backs, how it was run, and the Markdown file(s) whose tables to copy."""

    title: str
    claim: str
    sources: tuple[str, ...]
    commands: tuple[str, ...] = ()  # when the source file does not state its own command
    notes: tuple[str, ...] = field(default=())


SECTIONS = (
    Section(
        "Exact codec against the model's cross-entropy and byte compressors",
        "exact mode reaches the bound log2(K)/H within 1%; 1.13 bits/char of Z bits, 1.53 with the whole container, against brotli's 3.54; throughput beside the forward pass (path 2 vs path 1)",
        ("exact_codec.md",),
    ),
    Section(
        "Exact codec with two torch threads",
        "with ZCOMPRESS_CODEC_THREADS=2 on an idle 2-core CPU: a 4,000-token document at 115 / 121 tokens/s, a batch "
        "at 149 / 155 (the default stays one thread: codes record it, and a shared CPU makes two slower)",
        ("exact_codec_threads2.md",),
        notes=(
            "This run predates the parameter masks (flag 8): its serialised sizes (1.77 bits/char whole) are those "
            "of the older container; the section above has today's (1.53 on the same paragraphs).",
        ),
    ),
    Section(
        "Byte compressors on the evaluation sets",
        "the byte baselines quoted beside the exact codec",
        ("byte_baselines.md",),
        commands=("python benchmarks/byte_baselines.py --limit 200 --out benchmarks/results/byte_baselines",),
    ),
    Section(
        "Latent codec (shipped adapters) on 200 WikiText-2 test paragraphs",
        "latent reconstruction BLEU-4 93.0 at 2x and 55.0 at 4x; the exact=True residual; the 4x cap",
        ("latent_default.md", "latent_default_counts.md"),
        notes=(
            "Spearman(Z per token, NLL) is high by construction: the count is computed from the segment's NLL "
            "(`slot_count`). Whether longer or more surprising segments get more Z-tokens per token is the "
            "segment-level Spearman(Z count, mean NLL): 0.095 at 2x, -0.126 at 4x.",
        ),
    ),
    Section(
        "Learning curve of the shipped reader",
        "the reader's training curve in the model card (held-out CE, BLEU-4 per checkpoint)",
        ("token_code_curve.md",),
        commands=(
            "python benchmarks/token_code_curve.py --adapters DIR --limit 200   # one point per exported checkpoint",
            "python benchmarks/token_code_curve.py --plot-only --log benchmarks/results/token_code_run/log.jsonl",
        ),
    ),
    Section(
        "HotpotQA dev, 200 questions, all 10 paragraphs",
        "answers from Z against full text, LLMLingua, truncation and no context (all scores low)",
        ("qa_hotpotqa200/results.md", "qa_hotpotqa200/paired.md"),
        commands=(
            "zcompress eval --suite qa --limit 200 --qa-paragraphs 0 --shard I/2 --threads 1 --jobs 1 --no-progress "
            "--out benchmarks/results/qa_hotpotqa200/shardI   # I = 0, 1",
            "zcompress eval --merge benchmarks/results/qa_hotpotqa200/shard0 benchmarks/results/qa_hotpotqa200/shard1 "
            "--out benchmarks/results/qa_hotpotqa200",
            "python benchmarks/qa_paired.py benchmarks/results/qa_hotpotqa200/results.json "
            "--out benchmarks/results/qa_hotpotqa200/paired.md",
        ),
    ),
    Section(
        "Summaries from Z, 100 CNN/DM articles",
        "summary ROUGE-L from Z at 2x and 4x against full text and no article",
        ("summarization_cnndm100/results.md",),
    ),
    Section(
        "Gold-answer cross-entropy from Z (12 HotpotQA dev questions)",
        "the answer-from-Z loss moves the answer CE from Z below no context",
        ("answer_nll.md",),
        commands=("python benchmarks/answer_nll.py --limit 12 --adapters DIR --label LABEL",),
    ),
    Section(
        "Answering from Z vs from full text: latency and memory",
        "time to first token and peak memory of Z prompts against full-text prompts, 512-4,096 tokens",
        ("generation_latency.md",),
    ),
    Section(
        "Generation in Z space: continuations of 40 WikiText-2 paragraphs",
        "continue_z writes fluent, often wrong text; perplexity, distinct bigrams, overlap with the truth",
        ("zspace_continuation.md",),
    ),
    Section(
        "Choosing continue_z's decoding default (held-apart training paragraphs)",
        "the repetition penalty 1.1 default",
        ("zspace_decoding_chain/README.md",),
        commands=(
            "python benchmarks/zspace_continuation.py --limit 40 --data ../shared/data/train/wikipedia_en_03.jsonl "
            "--adapters runs/infer3/adapters --skip-greedy --repetition-penalty P "
            "--out benchmarks/results/zspace_decoding_chain/held_rpP   # P = 1, 1.05, 1.1, 1.2",
        ),
    ),
)


def md_tables(text: str) -> tuple[list[str], list[str]]:
    """(command blocks, kept blocks) of a benchmark's Markdown: each table (and a list right under a heading)
    with the paragraph before it as its caption; headings demoted to ####."""
    blocks = [b.strip("\n") for b in text.split("\n\n") if b.strip()]
    commands = [b for b in blocks if b.startswith("Command")]
    kept: list[str] = []
    heading: str | None = None
    for i, block in enumerate(blocks):
        if block.startswith("# "):
            continue
        if block.startswith("#"):
            heading = "#### " + block.lstrip("#").strip()
            continue
        is_table = block.startswith("|")
        if not is_table and not (heading and block.startswith("- ")):  # a list only right under a heading
            continue
        if heading:
            kept.append(heading)
            heading = None
        prev = blocks[i - 1] if i else ""
        if prev and not prev.startswith(("#", "|", "-", "Command")) and prev.count("\n") < 6:
            kept.append(prev)
        kept.append(block)
    return commands, kept


def eval_section(results_path: Path) -> list[str]:
    """The full `zcompress eval` report of one run, from its results.json."""
    sys.path.insert(0, str(ROOT))
    from zcompress_integrations.eval.cli import render_markdown

    results = json.loads(results_path.read_text())
    folder = results_path.parent.relative_to(ROOT).as_posix()
    results = {**results, "plots": [f"../{folder}/{p}" for p in results.get("plots", [])]}
    lines = []
    for line in render_markdown(results).splitlines():
        if line.startswith("# "):
            continue
        if line.startswith("## "):
            line = "### " + line[3:]
        lines.append(line)
    rel = results_path.relative_to(ROOT).as_posix()
    return [
        "## Evaluation suite (`zcompress eval --suite all --limit 20`)",
        "",
        "Backs: the README's results table (generated from the same file by `benchmarks/readme_results.py`). "
        "QA on 20 questions is noise-level for every method; read the 200-question run below.",
        "",
        f"File: [`{rel}`](../{rel})",
        *lines,
    ]


def infer_section(path: Path) -> list[str]:
    rel = path.relative_to(ROOT).as_posix()
    lines = [
        "## Infer adapter on held-apart training windows",
        "",
        "Backs: the model card's teacher-forced figures for the `infer` adapter (cross-entropy over the next "
        "tokens, top-1 accuracy per token offset; 32 windows of `train/wikipedia_en_03.jsonl`, which the "
        "adapter was not trained on).",
        "",
        "Commands:",
        "",
        "```",
        "python benchmarks/infer_heldout.py --adapters default runs/infer3/adapters "
        "--data ../shared/data/train/wikipedia_en_03.jsonl",
        "python benchmarks/infer_heldout.py --adapters runs/infer4/adapters "
        "--data ../shared/data/train/wikipedia_en_03.jsonl",
        "```",
        "",
        f"File: [`{rel}`](../{rel}) (one JSON line per adapters directory; `runs/infer4` is the shipped one)",
        "",
        "| adapters | infer steps | CE, groups of 2 | top-1 offset 0 | top-1 offset 1 | CE, groups of 4 |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for raw in path.read_text().splitlines():
        if not raw.strip():
            continue
        row = json.loads(raw)
        g2, g4 = row["groups_of_2"], row["groups_of_4"]
        lines.append(
            f"| `{row['adapters']}` | {row['infer'].get('steps', '')} | {g2['loss']:.2f} | "
            f"{100 * g2['acc_offset0']:.1f}% | {100 * g2['acc_offset1']:.1f}% | {g4['loss']:.2f} |"
        )
    return lines


def section_lines(section: Section) -> list[str]:
    lines = [f"## {section.title}", "", f"Backs: {section.claim}.", ""]
    commands: list[str] = list(section.commands)
    bodies: list[str] = []
    for source in section.sources:
        path = RESULTS / source
        found, kept = md_tables(path.read_text())
        if not section.commands:
            commands += [c.splitlines()[0].split(":", 1)[1].strip().strip("`") for c in found[:1]]
        rel = path.relative_to(ROOT).as_posix()
        bodies += [f"From [`{rel}`](../{rel}):", *kept]
    lines += ["Command" + ("s" if len(commands) > 1 else "") + ":", "", "```", *commands, "```", ""]
    for note in section.notes:
        lines += [note, ""]
    for body in bodies:
        lines += [body, ""]
    return lines


def render() -> str:
    lines = [
        "# Results",
        "",
        "<!-- generated by benchmarks/results_page.py from the files in benchmarks/results/; do not edit by hand -->",
        "",
        "Every table below is copied from a result file in `benchmarks/results/`, with the command that wrote it. "
        "Machine for all of them: a 2-core x86_64 CPU, no GPU, torch 2.13.0+cpu (each file records its own "
        "machine and load). What each benchmark backs: `benchmarks/README.md`. Runs of abandoned recipes and "
        "superseded runs: `benchmarks/archive/`.",
        "",
    ]
    lines += eval_section(RESULTS / "eval_limit20_run10" / "results.json") + [""]
    for section in SECTIONS:
        lines += section_lines(section)
    lines += infer_section(RESULTS / "infer_heldout_chain.jsonl")
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--check", action="store_true", help="only check that the page is up to date")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        return 0 if args.out.is_file() and args.out.read_text() == text else 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
