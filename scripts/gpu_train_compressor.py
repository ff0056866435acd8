"""Train the learned code on a lent CUDA machine in one prepared call, and bring back what CPU users load.

    python scripts/gpu_train_compressor.py --config CFG.json --out DIR --stop-after-s 470 [--weights-digest HEX] \
        [--init-from ADAPTERS]

What the machine needs (the backbone's GGUF, the gguf wheel, the data, the adapters) travels with
``scripts/gpu_bundle.py``.

The same ``train_compressor`` as ``zcompress train compressor``, with three things a short lease needs:

* the backbone is checked to hold the CPU's weights: ``--weights-digest`` is :func:`weights_digest` computed on the
  CPU (``--print-digest`` prints it); a backbone config that serialises differently under another transformers
  version only changes the 4-byte fingerprint, which is then set to the one the init reader was trained on, so
  the adapters load on the CPU (a weights mismatch is reported and kept in ``DIR/device.json``);
* training stops ``--stop-after-s`` seconds of wall clock after the script started (evals and checkpoints
  included; ``max_minutes`` counts step time only), then runs the last diagnostics and exports the adapters;
* the adapters come back as a tar in parts under 16 MB (``DIR/adapters.tar.partNN``), with ``log.jsonl`` and
  ``device.json`` (GPU, versions, timings, digests).

Rebuild the adapters directory from the parts: ``cat DIR/adapters.tar.part* | tar -x -C DEST``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import platform
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

PART_BYTES = 15 * 1024 * 1024


def weights_digest(model: Any) -> str:
    """sha256 of every parameter in fp32, by sorted name: equal only for bit-identical weights."""
    import torch

    h = hashlib.sha256()
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            h.update(name.encode())
            h.update(param.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _split_tar(directory: Path, out: Path) -> list[str]:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(directory, arcname=directory.name)
    data = buf.getvalue()
    names = []
    for i in range(0, len(data), PART_BYTES):
        name = f"adapters.tar.part{i // PART_BYTES:02d}"
        (out / name).write_bytes(data[i : i + PART_BYTES])
        names.append(name)
    return names


def main(argv: list[str] | None = None) -> int:
    started = time.time()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="CompressorConfig JSON")
    ap.add_argument("--out", help="where the parts, log.jsonl and device.json go")
    ap.add_argument("--stop-after-s", type=float, default=470.0)
    ap.add_argument("--weights-digest", default="", help="weights_digest of the backbone on the CPU")
    ap.add_argument("--device", default="cuda")
    ap.add_argument(
        "--init-from", default=None, help="adapters the run goes on from (as zcompress train compressor)"
    )
    ap.add_argument("--print-digest", action="store_true", help="print the loaded backbone's digest and exit")
    args = ap.parse_args(argv)

    import torch

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from zcompress_integrations.core.backbone import load_backbone
    from zcompress_integrations.core.latent import LatentConfig
    from zcompress_integrations.core.training import compressor
    from zcompress_integrations.core.training.config import CompressorConfig

    torch.set_float32_matmul_precision("high")  # TF32 matmuls on the GPU; no effect on a CPU
    backbone = load_backbone(None, device=args.device, dtype="float32")
    digest = weights_digest(backbone.model)
    if args.print_digest:
        print(digest, backbone.fingerprint.hex())
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    raw = json.loads(Path(args.config).read_text())
    cfg = CompressorConfig(**(raw | {"device": args.device}))
    expected = LatentConfig.load(Path(args.init_from or cfg.init_reader)).backbone_fingerprint
    report: dict[str, Any] = {
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "peft": __import__("peft").__version__,
        "weights_digest": digest,
        "weights_match_cpu": digest == args.weights_digest if args.weights_digest else None,
        "fingerprint_loaded": backbone.fingerprint.hex(),
        "fingerprint_init_reader": expected,
        "load_s": round(time.time() - started, 1),
    }
    print(json.dumps(report), flush=True)
    # the weights decide: with the CPU's weights, a config text that serialises differently under another
    # transformers version must not refuse the reader; without them the load refuses, as it should
    if report["weights_match_cpu"] and expected and backbone.fingerprint.hex() != expected:
        backbone.fingerprint = bytes.fromhex(expected)

    deadline = started + args.stop_after_s
    compressor.out_of_time = lambda cfg, progress: time.time() >= deadline  # wall clock, evals included
    try:
        _, records = compressor.train_compressor(cfg, backbone=backbone, init_from=args.init_from)
        report["steps"] = max((r.get("step", 0) for r in records), default=0)
    finally:
        report["wall_s"] = round(time.time() - started, 1)
        log = Path(cfg.out) / "log.jsonl"
        if log.is_file():
            (out / "log.jsonl").write_bytes(log.read_bytes())
        adapters = Path(cfg.out) / "adapters"
        if adapters.is_dir():
            report["parts"] = _split_tar(adapters, out)
        (out / "device.json").write_text(json.dumps(report, indent=1))
        print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
