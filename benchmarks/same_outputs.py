"""Outputs of every shipped latent path on two fixed texts, to show that a refactoring changed no behaviour.

    python benchmarks/same_outputs.py OUT.json                  # at each of two commits (e.g. in two worktrees)
    python benchmarks/same_outputs.py --compare A.json B.json   # SAME/DIFF per output

Records the Z ids and segment counts at 2x and 4x, the free-running reconstructions, the ``exact=True`` residual
bytes and their decoding, a ``generate`` answer with its token accounting, ``generate_batch`` answers, a
``continue_z`` continuation and an exact code, all on the shipped default model and adapters (CPU).
"""

from __future__ import annotations

import argparse
import json
import sys

TEXTS = [
    "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. It is named after the "
    "engineer Gustave Eiffel, whose company designed and built the tower from 1887 to 1889.",
    "Photosynthesis is the process by which green plants and some other organisms use sunlight to synthesize foods "
    "from carbon dioxide and water. It generally involves the green pigment chlorophyll and generates oxygen as a "
    "byproduct. " * 3,
]


def record() -> dict:
    from zcompress_integrations import ZCompressor

    zc = ZCompressor.from_pretrained()
    out: dict = {}
    for r in (2.0, 4.0):
        codes = zc.compress_batch(TEXTS, mode="latent", ratio=r)
        out[f"ids{r}"] = [list(c.z_ids) for c in codes]
        out[f"segs{r}"] = [list(c.segments) for c in codes]
        out[f"dec{r}"] = zc.reconstruct_batch(codes)
    exact = zc.compress_batch(TEXTS, mode="latent", ratio=4.0, exact=True)
    out["residual"] = [c.residual.hex() for c in exact]
    out["exact_dec"] = [zc.decompress(c) == t for c, t in zip(exact, TEXTS, strict=True)]
    code = zc.compress(TEXTS[0], mode="latent", ratio=4.0)
    g = zc.generate("Who is the tower named after?", context=[code], max_new_tokens=16)
    out["gen"] = [g.text, g.prompt_tokens, g.completion_tokens, g.uncompressed_prompt_tokens]
    batch = zc.generate_batch(
        ["Who is the tower named after?", "What does it generate?"],
        contexts=[[code], [TEXTS[1]]],
        max_new_tokens=12,
    )
    out["genb"] = [x.text for x in batch]
    cont = zc.continue_z(code, 1)
    out["cz"] = [list(cont.z_ids), zc.decompress(cont)]
    out["exact_ids"] = list(zc.compress(TEXTS[0]).z_ids)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out", nargs="?", help="where to write this commit's outputs (JSON)")
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"), help="compare two recorded files")
    args = parser.parse_args(argv)
    if args.compare:
        a, b = (json.load(open(p)) for p in args.compare)
        for key in a:
            print(f"{key}: {'SAME' if a[key] == b.get(key) else 'DIFF'}")
        return 0 if a == b else 1
    if not args.out:
        parser.error("give OUT.json or --compare A B")
    with open(args.out, "w") as f:
        json.dump(record(), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
