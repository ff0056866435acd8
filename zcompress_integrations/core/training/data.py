"""Training data: token rows cut from jsonl files (a ``text`` field per line), or a prepared ``.npy``.

``zcompress train prepare --data FILES --out segments.npy`` writes the ``.npy`` once (tokenised, cut, shuffled),
so a training run, e.g. on a CUDA machine, reads no text and needs no tokenizer pass.
"""

from __future__ import annotations

import glob
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from zcompress_integrations.errors import ConfigError

__all__ = ["expand_files", "prepare_segments", "load_rows", "write_segments"]

logger = logging.getLogger(__name__)


def expand_files(patterns: Sequence[str]) -> list[str]:
    """Glob patterns -> sorted file names (a pattern matching nothing is kept, so that opening it says so)."""
    files: list[str] = []
    for pattern in patterns:
        files += sorted(glob.glob(pattern)) or [pattern]
    return files


def prepare_segments(
    tokenizer: Any, files: Sequence[str], segment_len: int, max_tokens: int | None = None
) -> Any:
    """Token rows ``[N, segment_len]`` (int64) from jsonl files with a ``text`` field, or a saved ``.npy``.

    Each record is tokenised and cut into full rows (the remainder is dropped); a ``.npy`` is returned as saved.
    """
    import numpy as np

    if len(files) == 1 and str(files[0]).endswith(".npy"):
        return np.load(files[0]).astype(np.int64)
    rows: list[list[int]] = []
    total = 0
    for path in files:
        if not Path(path).is_file():
            raise ConfigError(f"training data file {path} does not exist")
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                text = json.loads(line).get("text", "")
                ids = tokenizer(text, add_special_tokens=False)["input_ids"]
                for s in range(0, len(ids) - segment_len + 1, segment_len):
                    rows.append(ids[s : s + segment_len])
                    total += segment_len
                if max_tokens and total >= max_tokens:
                    break
        if max_tokens and total >= max_tokens:
            break
    if not rows:
        raise ConfigError(f"no training rows of {segment_len} tokens in {list(files)}")
    return np.asarray(rows, dtype=np.int64)


def load_rows(tokenizer: Any, data: Sequence[str], width: int, max_tokens: int = 0) -> Any:
    """Rows ``[N, width]`` for training: a ``.npy`` (rows at least ``width`` wide, cropped to it) or jsonl files."""
    if not data:
        raise ConfigError(
            "data is required: jsonl files with a 'text' field, or a .npy made by `zcompress train prepare`"
        )
    files = expand_files(data)
    if len(files) == 1 and files[0].endswith(".npy") and not Path(files[0]).is_file():
        raise ConfigError(f"training data file {files[0]} does not exist")
    rows = prepare_segments(tokenizer, files, width, max_tokens=max_tokens or None)
    if rows.ndim != 2 or rows.shape[1] < width:
        raise ConfigError(
            f"{files[0]} holds rows of shape {tuple(rows.shape)}; training needs rows of >= {width} tokens"
        )
    return rows[:, :width]


def write_segments(
    tokenizer: Any,
    data: Sequence[str],
    out: str | Path,
    segment_len: int,
    *,
    max_tokens: int = 0,
    seed: int = 0,
) -> Path:
    """Tokenise ``data`` into shuffled rows of ``segment_len`` tokens and save them as ``out`` (``.npy``; uint16
    when the vocabulary fits, else int32)."""
    import numpy as np

    rows = prepare_segments(tokenizer, expand_files(data), segment_len, max_tokens=max_tokens or None)
    np.random.default_rng(seed).shuffle(rows)
    dtype = np.uint16 if int(rows.max()) < 2**16 else np.int32
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, rows.astype(dtype))
    logger.info("wrote %s: %d rows of %d tokens", out, len(rows), segment_len)
    return out
