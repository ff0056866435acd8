"""Teacher-forced quality of a token-group ``infer`` adapter on held-apart training-split windows.

    python benchmarks/infer_heldout.py --adapters DIR [DIR ...] --data ../shared/data/train/wikipedia_en_03.jsonl

For each adapters directory: the cross-entropy (nats/token) of the next ``max_group`` tokens after every Z-token,
and the top-1 accuracy per offset, with the windows cut into groups of 2 and of 4 tokens (the context a
continuation at 2x / 4x reads). Pass a training-split file the infer adapter was not trained on (the shipped one
trains on ``wikipedia_en_00..02`` and Wikinews), so that choosing between recipes never touches evaluation data.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--adapters", nargs="+", required=True)
    parser.add_argument(
        "--data", required=True, help="a training-split jsonl the adapters were not trained on"
    )
    parser.add_argument("--windows", type=int, default=32)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--model", default=None)
    args = parser.parse_args(argv)

    import numpy as np

    from zcompress_integrations.core.backbone import load_backbone
    from zcompress_integrations.core.latent import load_latent_codec
    from zcompress_integrations.core.training import group_infer_loss, prepare_segments

    backbone = load_backbone(args.model, device="cpu")
    windows = prepare_segments(
        backbone.tokenizer, [args.data], args.width, max_tokens=args.width * args.windows * 4
    )
    windows = windows[np.random.default_rng(0).permutation(len(windows))[: args.windows]]
    for directory in args.adapters:
        codec = load_latent_codec(load_backbone(args.model, device="cpu"), directory)  # a bare backbone each
        row = {"adapters": directory, "windows": len(windows), "infer": codec.config.training.get("infer")}
        for size in (2, 4):
            row[f"groups_of_{size}"] = {
                k: round(v, 4) for k, v in group_infer_loss(codec, windows, size).items()
            }
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
