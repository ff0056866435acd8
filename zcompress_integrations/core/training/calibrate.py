"""``zcompress train calibrate``: set a learned code's mean length to the requested ratio.

The stop head decides how many Z-tokens a segment gets (the sum of its stop probabilities) and where its spans end.
Trained under a length budget, its mean lands near ``1 / ratio`` but drifts between checkpoints (run 13, asked 2x
on held-apart segments: 1.71x to 2.20x), since it reads hidden states the rest of the training keeps moving. This
step adds one bias per ratio to the stop logits, chosen on training segments so that their code comes out at the
requested ratio. Per segment the head still decides: harder text still gets more Z-tokens.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from zcompress_integrations.core.training.config import CalibrateConfig
from zcompress_integrations.errors import ConfigError

__all__ = ["calibrate", "stop_offsets"]

logger = logging.getLogger(__name__)


def _counts(logits: Any, offset: float, max_span: int) -> int:
    """Z-tokens of all rows of ``logits [N, n]`` at ``offset``, counted as ``span_ends`` counts them."""
    import torch

    from zcompress_integrations.core.codes.learned import span_count

    n = logits.shape[1]
    expected = torch.sigmoid(logits.double() + offset).sum(-1).tolist()
    return sum(span_count(e, n, max_span) for e in expected)


def stop_offsets(codec: Any, rows: Any, ratios: list[float], batch_size: int = 32) -> dict[str, float]:
    """Per ratio, the stop-logit bias with which ``rows [N, n]`` (token ids) are written at that ratio: bisection on
    the bias, the achieved ratio ``N * n / Z-tokens`` rising as the bias falls."""
    import torch

    from zcompress_integrations.core.codes.learned import COMPRESS

    code = codec.code
    if getattr(code, "name", "") != "learned":
        raise ConfigError(
            f"calibrate: the adapters hold a {code.name!r} code; only a learned code has a stop head"
        )
    out: dict[str, float] = {}
    total = rows.shape[0] * rows.shape[1]
    for ratio in ratios:
        parts = []
        with codec.adapter(COMPRESS), torch.inference_mode():
            for s in range(0, rows.shape[0], batch_size):
                seg = rows[s : s + batch_size]
                parts.append(code.stop(code.compress_hidden(codec, seg, ratio)).squeeze(-1).float().cpu())
        logits = torch.cat(parts)
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


def calibrate(cfg: CalibrateConfig, *, backbone: Any = None, segments: Any = None) -> Path:
    """Write ``cfg.out`` (or ``cfg.adapters`` in place): the adapters with ``stop_offsets`` set. The adapters'
    files are copied unchanged, so the fingerprint, and every code made with them, stays valid."""
    import numpy as np
    import torch

    from zcompress_integrations.core.backbone import load_backbone
    from zcompress_integrations.core.latent import CONFIG_NAME, load_latent_codec
    from zcompress_integrations.core.training.data import load_rows

    source = Path(cfg.adapters)
    backbone = backbone or load_backbone(cfg.model, device=cfg.device)
    codec = load_latent_codec(backbone, source)
    L = codec.config.segment_len
    if segments is None:
        segments = load_rows(backbone.tokenizer, cfg.data, L, cfg.max_data_tokens)
    rows = np.asarray(segments)
    if rows.ndim != 2 or rows.shape[1] < L or len(rows) <= cfg.skip:
        raise ConfigError(
            f"calibrate: need more than skip={cfg.skip} rows of >= {L} tokens; got {rows.shape}"
        )
    rows = torch.as_tensor(rows[cfg.skip : cfg.skip + cfg.rows, :L].astype(np.int64), device=backbone.device)
    offsets = stop_offsets(codec, rows, list(cfg.ratios), cfg.batch_size)
    out = Path(cfg.out) if cfg.out else source
    if out.resolve() != source.resolve():
        shutil.copytree(source, out, dirs_exist_ok=True)
    codec.config.stop_offsets = offsets
    codec.config.training = {**codec.config.training, "stop_calibration": {"rows": int(rows.shape[0])}}
    codec.config.save(out)
    logger.info("wrote %s", out / CONFIG_NAME)
    return out
