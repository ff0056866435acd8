"""The output folder of a corpus run: finished parts, the manifest, what is already done.

Layout of ``OUT/``::

    _zcompress_corpus.json     manifest: the settings that shape the codes (checked on every resume)
    part-<digest>.parquet      one finished batch: one row per document (see PART_COLUMNS)
    _tmp/                      parts being written; never read, emptied when a run starts
    _summary.json              totals, written when a run finishes with nothing left to do

A part is written under ``_tmp/`` and renamed into place (``os.replace``, atomic on one filesystem), so a
``part-*.parquet`` file is always complete. The digest is a hash of the part's ids, so names never collide.

Only pyarrow is needed here (it comes with ``ray[data]``); nothing in this module starts Ray or loads a model.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zcompress_integrations.errors import ConfigError

if TYPE_CHECKING:
    import pyarrow as pa

    from zcompress_integrations.core.zcode import ZCode

__all__ = [
    "MANIFEST_NAME",
    "SUMMARY_NAME",
    "TMP_DIR",
    "PART_COLUMNS",
    "part_name",
    "codes_table",
    "write_part",
    "finished_parts",
    "done_ids",
    "check_manifest",
    "clear_tmp",
    "read_codes",
]

MANIFEST_NAME = "_zcompress_corpus.json"
SUMMARY_NAME = "_summary.json"
TMP_DIR = "_tmp"
PART_GLOB = "part-*.parquet"
MANIFEST_FORMAT = "zcompress-corpus/1"
#: Columns of every part, in order. ``code`` is binary (``ZCode.to_bytes``) or the ``zc1:`` string.
PART_COLUMNS = ("id", "code", "codec", "text_tokens", "z_tokens", "ratio", "bits", "chars")


def part_name(ids: Sequence[str]) -> str:
    """``part-<16 hex>.parquet``, a digest of the ids in the part (same ids, same name)."""
    digest = hashlib.sha1("\x00".join(ids).encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"part-{digest}.parquet"


def codes_table(ids: Sequence[str], codes: Sequence[ZCode], *, code_format: str = "bytes") -> pa.Table:
    """One part's rows: id, code (bytes or ``zc1:`` string) and its figures (``ratio`` is ``inf`` for an empty
    code of a non-empty text, as :attr:`ZCode.ratio` says)."""
    import pyarrow as pa

    if code_format not in ("bytes", "string"):
        raise ConfigError(f"code_format must be 'bytes' or 'string'; got {code_format!r}")
    code_values = [c.to_bytes() if code_format == "bytes" else c.to_string() for c in codes]
    return pa.table(
        {
            "id": pa.array(list(ids), pa.string()),
            "code": pa.array(code_values, pa.binary() if code_format == "bytes" else pa.string()),
            "codec": pa.array([c.codec for c in codes], pa.string()),
            "text_tokens": pa.array([c.text_tokens for c in codes], pa.int64()),
            "z_tokens": pa.array([c.z_tokens for c in codes], pa.int64()),
            "ratio": pa.array([c.ratio for c in codes], pa.float64()),
            "bits": pa.array([c.bits for c in codes], pa.float64()),
            "chars": pa.array([c.text_chars for c in codes], pa.int64()),
        }
    )


def write_part(out: str | os.PathLike[str], table: pa.Table, name: str) -> Path:
    """Write ``table`` to ``out/_tmp`` under a unique name, then rename it to ``out/name`` (atomic)."""
    import pyarrow.parquet as pq

    out = Path(out)
    tmp_dir = out / TMP_DIR
    tmp_dir.mkdir(parents=True, exist_ok=True)
    tmp = tmp_dir / f"{name}.{uuid.uuid4().hex}.tmp"
    pq.write_table(table, tmp)
    final = out / name
    os.replace(tmp, final)
    return final


def finished_parts(out: str | os.PathLike[str]) -> list[Path]:
    """The complete parts in ``out``, sorted by name (temp files under ``_tmp/`` never count)."""
    out = Path(out)
    return sorted(out.glob(PART_GLOB)) if out.is_dir() else []


def done_ids(out: str | os.PathLike[str]) -> pa.Array:
    """Every id already in a finished part (reads only the ``id`` column)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    chunks = []
    for path in finished_parts(out):
        try:
            chunks.append(pq.read_table(path, columns=["id"]).column("id").combine_chunks())
        except (OSError, pa.ArrowInvalid, KeyError) as exc:
            raise ConfigError(
                f"{path} is not a readable part ({exc}); it was not written by compress-dataset, "
                "move it out of the output folder and run again"
            ) from exc
    return pa.concat_arrays(chunks) if chunks else pa.array([], pa.string())


def check_manifest(out: str | os.PathLike[str], settings: Mapping[str, Any]) -> bool:
    """Write the manifest of a new run, or check that a resumed run uses the same ``settings``.

    Returns True when ``out`` already held a run (a resume). Raises :class:`ConfigError` naming every setting
    that differs, since mixing codes made with other settings in one output would be a silent mess."""
    out = Path(out)
    path = out / MANIFEST_NAME
    wanted = {"format": MANIFEST_FORMAT, **{k: settings[k] for k in sorted(settings)}}
    if path.exists():
        stored = json.loads(path.read_text(encoding="utf-8"))
        diff = sorted(k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k))
        if diff:
            shown = ", ".join(f"{k}: stored {stored.get(k)!r}, asked {wanted.get(k)!r}" for k in diff)
            raise ConfigError(
                f"{out} holds a run with other settings ({shown}); resume with the same settings or use a new OUT"
            )
        return True
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} is not empty and holds no {MANIFEST_NAME}; choose an empty or new folder")
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(wanted, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return False


def clear_tmp(out: str | os.PathLike[str]) -> int:
    """Delete leftovers of parts that were being written when a run died; returns how many."""
    tmp_dir = Path(out) / TMP_DIR
    count = 0
    if tmp_dir.is_dir():
        for leftover in tmp_dir.iterdir():
            leftover.unlink()
            count += 1
    return count


def read_codes(out: str | os.PathLike[str]) -> dict[str, bytes | str]:
    """``{id: code}`` over every finished part (``bytes`` or ``zc1:`` strings, as the run wrote them); what an
    integration reads back after handing a batch to :func:`compress_corpus`. ``ZCode.load`` parses either form."""
    import pyarrow.parquet as pq

    codes: dict[str, bytes | str] = {}
    for path in finished_parts(out):
        table = pq.read_table(path, columns=["id", "code"])
        codes.update(zip(table.column("id").to_pylist(), table.column("code").to_pylist(), strict=True))
    return codes
