"""What stage (a) of the learned-code recipe can give at best: the frozen reader's CE when Z is exactly its target.

    python benchmarks/learned_stage_a_ceiling.py --config benchmarks/results/learned_code_run5/config.json \
        --out benchmarks/results/learned_code_run5/ceiling.json

Stage (a) trains the writer to emit, per span, the token-group embedding of the span, read by the shipped reader
at the learned code's consecutive positions (``compressor.reader_ce``). This script gives the reader those targets
exactly (spans of at most 4 tokens, surprisal-balanced at each ratio, as in training) on the run's held-apart
training segments, and reports the reader's CE with them, with another segment's, and with no information (all
Z rows zero): the ceiling of the writer's CE gap, against which a run's logged ``ce_gap`` is read. The shipped
reader was trained with Z at their first token's position, not at consecutive ones, so the ceiling can be far
below what it reads in its own layout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True)
    parser.add_argument("--ratios", default="2,4")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    import torch

    from zcompress_integrations.core.latent import READER
    from zcompress_integrations.core.training.compressor import (
        TEACHER_GROUP,
        _rows,
        _setup,
        reader_ce,
        teacher_spans,
    )
    from zcompress_integrations.core.training.config import CompressorConfig, config_from_dict

    cfg = config_from_dict(CompressorConfig, json.loads(Path(args.config).read_text()))
    backbone, codec, teacher = _setup(cfg, None)
    held, _ = _rows(cfg, backbone, None)
    codec.peft_model.eval()
    result: dict = {
        "command": "python " + " ".join([os.path.relpath(__file__, ROOT), *(argv or sys.argv[1:])]),
        "segments": len(held),
        "segment_len": cfg.segment_len,
        "rows": [],
    }
    for ratio in (float(r) for r in args.ratios.split(",")):
        own = other = zero = 0.0
        batches = 0
        for lo in range(0, len(held), args.batch):
            seg = held[lo : lo + args.batch]
            spans = teacher_spans(codec, seg, ratio, TEACHER_GROUP)
            z_rows = []
            for b, sizes in enumerate(spans):
                groups, at = [], 0
                for g in sizes:
                    groups.append(seg[b, at : at + g].tolist())
                    at += g
                z_rows.append(teacher.group_embeddings(groups).float())
            with torch.no_grad(), codec.adapter(READER):
                own += float(reader_ce(codec, seg, z_rows))
                other += float(reader_ce(codec, seg, z_rows[1:] + z_rows[:1]))
                zero += float(reader_ce(codec, seg, [torch.zeros_like(z) for z in z_rows]))
            batches += 1
        row = {
            "ratio": ratio,
            "z_per_segment": sum(len(z) for z in z_rows) / len(z_rows),
            "ce_own_z": own / batches,
            "ce_other_z": other / batches,
            "ce_zero_z": zero / batches,
        }
        row["gap"] = row["ce_other_z"] - row["ce_own_z"]
        result["rows"].append(row)
        print(json.dumps(row), flush=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
