"""``zcompress train calibrate``: set a learned code's mean length to the requested ratio.

The stop head decides how many Z-tokens a segment gets (the sum of its stop probabilities) and where its spans end.
Trained under a length budget, its mean lands near ``1 / ratio`` but drifts between checkpoints (run 13, asked 2x
on held-apart segments: 1.71x to 2.20x), since it reads hidden states the rest of the training keeps moving. This
step adds one bias per ratio to the stop logits, chosen on training segments so that their code comes out at the
requested ratio. Per segment the head still decides: harder text still gets more Z-tokens.

The segments are cut as ``compress`` cuts text: jsonl training files are read paragraph by paragraph (a line of a
record's text) and each paragraph cut by ``LatentCodec.segments`` (sentence aware, a short last segment). Run 14,
calibrated on full 64-token rows, came out at 1.92x on test paragraphs when asked 2x. A ``.npy`` of rows (``zcompress
train prepare``) calibrates on its full rows.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from zcompress_integrations.core.training.config import CalibrateConfig
from zcompress_integrations.errors import ConfigError

__all__ = ["calibrate", "stop_offsets"]

logger = logging.getLogger(__name__)


def _counts(logits: list[Any], offset: float, max_span: int) -> int:
    """Z-tokens of every segment at ``offset``, counted as ``span_ends`` counts them; ``logits``: one ``[N, n]``
    tensor per segment length."""
    import torch

    from zcompress_integrations.core.codes.learned import span_count

    total = 0
    for group in logits:
        expected = torch.sigmoid(group.double() + offset).sum(-1).tolist()
        total += sum(span_count(e, group.shape[1], max_span) for e in expected)
    return total


def _stop_logits(codec: Any, segments: list[list[int]], ratio: float, batch_size: int) -> list[Any]:
    """The stop head's logits over ``segments``, one ``[N, n]`` tensor per length (a batch holds one length, as in
    ``LearnedCode.write``)."""
    import torch

    from zcompress_integrations.core.codes.learned import COMPRESS

    code = codec.code
    by_length: dict[int, list[list[int]]] = {}
    for seg in segments:
        by_length.setdefault(len(seg), []).append(seg)
    out = []
    with codec.adapter(COMPRESS), torch.inference_mode():
        for group in by_length.values():
            parts = []
            for s in range(0, len(group), batch_size):
                seg = torch.tensor(group[s : s + batch_size], dtype=torch.long, device=code.codebook.device)
                parts.append(code.stop(code.compress_hidden(codec, seg, ratio)).squeeze(-1).float().cpu())
            out.append(torch.cat(parts))
    return out


def stop_offsets(
    codec: Any, segments: list[list[int]], ratios: list[float], batch_size: int = 32
) -> dict[str, float]:
    """Per ratio, the stop-logit bias with which ``segments`` (token ids, any lengths) are written at that ratio:
    bisection on the bias, the achieved ratio ``tokens / Z-tokens`` rising as the bias falls."""
    code = codec.code
    if getattr(code, "name", "") != "learned":
        raise ConfigError(
            f"calibrate: the adapters hold a {code.name!r} code; only a learned code has a stop head"
        )
    segments = [[int(t) for t in seg] for seg in segments if len(seg)]
    if not segments:
        raise ConfigError("calibrate: no segments to calibrate on")
    out: dict[str, float] = {}
    total = sum(map(len, segments))
    for ratio in ratios:
        logits = _stop_logits(codec, segments, ratio, batch_size)
        goal = total / ratio
        lo, hi = -30.0, 30.0  # counts rise with the offset
        for _ in range(60):
            mid = (lo + hi) / 2
            if _counts(logits, mid, code.max_span) < goal:
                lo = mid
            else:
                hi = mid
        # of the two ends of the last step, the one whose count is nearer the goal
        best = min((lo, hi), key=lambda b: abs(_counts(logits, b, code.max_span) - goal))
        out[f"{ratio:g}"] = round(best, 4)
        before = total / max(1, _counts(logits, 0.0, code.max_span))
        after = total / max(1, _counts(logits, best, code.max_span))
        logger.info("calibrate %gx: offset %+.3f, achieved %.3fx -> %.3fx", ratio, best, before, after)
    return out


def paragraph_segments(codec: Any, files: list[str], count: int) -> list[list[int]]:
    """The first ``count`` segments of the jsonl ``files``' paragraphs (each line of a record's ``text``), cut as
    ``compress`` cuts them, as the model reads them (``LatentCodec.model_ids``)."""
    from zcompress_integrations.core.training.data import expand_files

    out: list[list[int]] = []
    for path in expand_files(files):
        if not Path(path).is_file():
            raise ConfigError(f"calibrate: data file {path} does not exist")
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                for paragraph in json.loads(line).get("text", "").split("\n"):
                    if paragraph.strip():
                        out += [codec.model_ids(s) for s in codec.segments(paragraph.strip().encode("utf-8"))]
                if len(out) >= count:
                    return out[:count]
    return out


def calibrate(cfg: CalibrateConfig, *, backbone: Any = None, segments: Any = None) -> Path:
    """Write ``cfg.out`` (or ``cfg.adapters`` in place): the adapters with ``stop_offsets`` set. The adapters'
    files are copied unchanged, so the fingerprint, and every code made with them, stays valid. ``segments``
    (token ids) replace ``cfg.data``; either way the first ``cfg.skip`` are left out."""
    from zcompress_integrations.core.backbone import load_backbone
    from zcompress_integrations.core.latent import CONFIG_NAME, load_latent_codec
    from zcompress_integrations.core.training.data import expand_files, load_rows

    source = Path(cfg.adapters)
    backbone = backbone or load_backbone(cfg.model, device=cfg.device)
    codec = load_latent_codec(backbone, source)
    cut = "given"
    if segments is None:
        files = expand_files(cfg.data)
        if not files:
            raise ConfigError("calibrate: --data is required: training jsonl files, or a .npy of rows")
        if files[0].endswith(".npy"):
            segments, cut = load_rows(backbone.tokenizer, files, codec.config.segment_len), "rows"
        else:
            segments, cut = paragraph_segments(codec, files, cfg.skip + cfg.rows), "paragraphs"
    if len(segments) <= cfg.skip:
        raise ConfigError(f"calibrate: need more than skip={cfg.skip} segments; got {len(segments)}")
    segments = segments[cfg.skip : cfg.skip + cfg.rows]
    offsets = stop_offsets(codec, segments, list(cfg.ratios), cfg.batch_size)
    out = Path(cfg.out) if cfg.out else source
    if out.resolve() != source.resolve():
        shutil.copytree(source, out, dirs_exist_ok=True)
    codec.config.stop_offsets = offsets
    codec.config.training = {
        **codec.config.training,
        "stop_calibration": {"segments": len(segments), "cut": cut, "data": list(cfg.data)},
    }
    codec.config.save(out)
    logger.info("wrote %s", out / CONFIG_NAME)
    return out
