"""`compress_corpus`: compress a dataset of documents on Ray Data with an actor pool of compressors.

    report = compress_corpus("docs.jsonl", "codes/", workers=2)           # local Ray, 2 actors
    report = compress_corpus("s3://bucket/docs/", "/shared/codes", address="ray://head:10001", workers=8,
                             num_gpus_per_worker=1, batch_size=64)

The pipeline is ``read_json``/``read_parquet`` -> drop ids already done -> ``map_batches`` with
:class:`CompressWorker` (one :class:`ZCompressor` per actor, loaded once, ``ActorPoolStrategy(size=workers)``).
Each actor call compresses one batch, writes it as one part (see :mod:`.parts`) and returns one stats row; the
driver only collects those stats.

Resume contract: a document is done when its id is in a ``part-*.parquet`` of ``OUT``. A part becomes visible
only complete (written under ``_tmp/``, then renamed), so a crash at any moment loses at most the batches in
flight. Running the same command again reads the ``id`` column of the finished parts, compresses only the other
documents, and refuses to mix settings (model, mode, ratio, k, window, columns...) with those in the manifest.
Ids must be unique in the input; they are stored as strings.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from zcompress_integrations.corpus import parts
from zcompress_integrations.errors import ConfigError

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["compress_corpus", "CorpusReport", "CompressWorker"]

logger = logging.getLogger(__name__)

RAY_MISSING = "compress_corpus needs Ray Data: pip install 'zcompress-integrations[ray]' (or 'ray[data]')"
_JSON_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz")


@dataclass(frozen=True)
class CorpusReport:
    """What a run did. ``docs_total`` counts every document now in ``OUT`` (earlier runs included)."""

    output: str
    docs_total: int
    docs_skipped: int
    docs_compressed: int
    parts_written: int
    text_tokens: int
    z_tokens: int
    seconds: float
    workers: int

    @property
    def docs_per_s(self) -> float:
        """Documents compressed per second by this run (start-up included)."""
        return self.docs_compressed / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "docs_per_s": self.docs_per_s}


class CompressWorker:
    """The Ray Data callable class: one compressor per actor; each call compresses a batch and writes one part.

    Args:
        output: the output folder (a path every worker can write: local disk or a shared filesystem).
        compressor: keyword arguments of :meth:`ZCompressor.from_pretrained`.
        compress: keyword arguments of :meth:`ZCompressor.compress_batch` (``mode``, ``ratio``, ``exact``).
        id_column, text_column: input column names.
        code_format: ``"bytes"`` (binary column) or ``"string"`` (the ``zc1:`` form).
        num_threads: torch threads in this actor (match the CPUs reserved per actor).
    """

    def __init__(
        self,
        output: str,
        compressor: dict[str, Any],
        compress: dict[str, Any],
        id_column: str,
        text_column: str,
        code_format: str,
        num_threads: int | None = None,
    ) -> None:
        if num_threads:
            import torch

            torch.set_num_threads(num_threads)
        from zcompress_integrations.core.compressor import ZCompressor

        self.output = output
        self.compress = dict(compress)
        self.id_column, self.text_column, self.code_format = id_column, text_column, code_format
        self.compressor = ZCompressor.from_pretrained(**compressor)
        self.compressor.backbone  # noqa: B018 - load once per actor, before the first batch

    def __call__(self, batch: pa.Table) -> pa.Table:

        start = time.perf_counter()
        if batch.num_rows == 0:  # a block emptied by the resume filter: no part
            return _stats([], [], [], [], [])
        raw_ids = batch.column(self.id_column).to_pylist()
        if any(v is None for v in raw_ids):
            raise ConfigError(
                f"some documents have no id in column {self.id_column!r}; every document needs one"
            )
        ids = [str(v) for v in raw_ids]
        texts = batch.column(self.text_column).to_pylist()
        bad = [i for i, t in zip(ids, texts, strict=True) if not isinstance(t, str | bytes)]
        if bad:
            raise ConfigError(
                f"documents {bad[:5]} have no text in column {self.text_column!r} (null or not text)"
            )
        codes = self.compressor.compress_batch(texts, batch_size=max(1, len(texts)), **self.compress)
        name = parts.part_name(ids)
        parts.write_part(self.output, parts.codes_table(ids, codes, code_format=self.code_format), name)
        return _stats(
            [name],
            [len(ids)],
            [sum(c.text_tokens for c in codes)],
            [sum(c.z_tokens for c in codes)],
            [time.perf_counter() - start],
        )


def _stats(
    names: list[str], docs: list[int], text_tokens: list[int], z_tokens: list[int], seconds: list[float]
) -> pa.Table:
    """The stats rows a worker returns: one per part written."""
    import pyarrow as pa

    return pa.table(
        {
            "part": pa.array(names, pa.string()),
            "docs": pa.array(docs, pa.int64()),
            "text_tokens": pa.array(text_tokens, pa.int64()),
            "z_tokens": pa.array(z_tokens, pa.int64()),
            "seconds": pa.array(seconds, pa.float64()),
        }
    )


def _drop_done(batch: pa.Table, id_column: str, done: Any) -> pa.Table:
    """Rows of ``batch`` whose id (as a string) is not in ``done`` (an array, or its ``ObjectRef``: Ray passes
    ``fn_kwargs`` through as they are)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not isinstance(done, pa.Array):
        import ray

        done = ray.get(done)

    ids = pc.cast(batch.column(id_column), "string")
    return batch.filter(pc.invert(pc.is_in(ids, value_set=done)))


def _read(ray: Any, source: str | list[str], input_format: str, columns: list[str]) -> Any:
    paths = [source] if isinstance(source, str) else list(source)
    if input_format == "auto":
        first = paths[0].rstrip("/")
        if first.endswith(".parquet") or (os.path.isdir(first) and any(Path(first).glob("*.parquet"))):
            input_format = "parquet"
        elif first.endswith(_JSON_SUFFIXES) or os.path.isdir(first):
            input_format = "jsonl"
        else:
            raise ConfigError(f"cannot tell the format of {first!r}; pass input_format='jsonl' or 'parquet'")
    if input_format == "parquet":
        return ray.data.read_parquet(paths, columns=columns)
    if input_format == "jsonl":
        return ray.data.read_json(paths, lines=True).select_columns(columns)
    raise ConfigError(f"input_format must be 'auto', 'jsonl' or 'parquet'; got {input_format!r}")


def _import_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise ImportError(RAY_MISSING) from exc
    return ray


def _check(
    workers: int, batch_size: int, num_cpus: float, num_gpus: float, mode: str, code_format: str
) -> None:
    for name, value in (("workers", workers), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be an integer >= 1; got {value!r}")
    if num_cpus < 0 or num_gpus < 0 or (num_cpus == 0 and num_gpus == 0):
        raise ConfigError(f"each worker needs CPUs or GPUs; got num_cpus={num_cpus}, num_gpus={num_gpus}")
    if mode not in ("exact", "latent"):
        raise ConfigError(f"mode must be 'exact' or 'latent'; got {mode!r}")
    if code_format not in ("bytes", "string"):
        raise ConfigError(f"code_format must be 'bytes' or 'string'; got {code_format!r}")


def compress_corpus(
    source: str | list[str],
    output: str | os.PathLike[str],
    *,
    text_column: str = "text",
    id_column: str = "id",
    mode: Literal["exact", "latent"] = "exact",
    ratio: float | None = None,
    exact: bool = False,
    model: str | None = None,
    adapters: str | None = "default",
    k: int = 4096,
    window: int = 256,
    workers: int = 1,
    batch_size: int = 32,
    num_cpus_per_worker: float = 1,
    num_gpus_per_worker: float = 0,
    code_format: Literal["bytes", "string"] = "bytes",
    input_format: Literal["auto", "jsonl", "parquet"] = "auto",
    address: str | None = None,
    progress: bool = True,
) -> CorpusReport:
    """Compress every document of ``source`` into parquet parts under ``output``; resumes an interrupted run.

    Args:
        source: jsonl file(s) (one JSON object a line) or parquet file(s)/folder; any path Ray Data reads.
        output: output folder, a path every worker can write (see the module docstring for the resume contract).
        text_column, id_column: input columns; ids must be unique (stored as strings).
        mode, ratio, exact: as in :meth:`ZCompressor.compress_batch`.
        model, adapters, k, window: as in :meth:`ZCompressor.from_pretrained` (``model=None``: embedded default).
        workers: actors in the pool, each with its own model.
        batch_size: documents per actor call, and so per part file.
        num_cpus_per_worker, num_gpus_per_worker: Ray resources reserved per actor (a GPU actor runs on CUDA).
        code_format: ``"bytes"`` (binary ``code`` column) or ``"string"`` (``zc1:`` strings).
        input_format: ``"auto"`` picks by extension.
        address: Ray cluster address (``"auto"``, ``"ray://head:10001"``); ``None`` joins the running cluster of
            this process or starts a local one.
        progress: show Ray Data's progress bars.
    """
    _check(workers, batch_size, num_cpus_per_worker, num_gpus_per_worker, mode, code_format)
    ray = _import_ray()
    start = time.perf_counter()
    out = Path(output).resolve()
    settings = {
        "model": model,
        "adapters": adapters,
        "mode": mode,
        "ratio": ratio,
        "exact": exact,
        "k": k,
        "window": window,
        "code_format": code_format,
        "id_column": id_column,
        "text_column": text_column,
    }
    resumed = parts.check_manifest(out, settings)
    if resumed and (cleared := parts.clear_tmp(out)):
        logger.info("removed %d half-written parts of an interrupted run", cleared)
    done = parts.done_ids(out)
    logger.info("%s: %d documents already done in %d parts", out, len(done), len(parts.finished_parts(out)))

    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
    try:
        _check_room(ray, workers, num_cpus_per_worker)
        table = _run(
            ray,
            source,
            out,
            done,
            settings,
            workers,
            batch_size,
            num_cpus_per_worker,
            num_gpus_per_worker,
            input_format,
            progress,
        )
    finally:
        if started:
            ray.shutdown()

    report = CorpusReport(
        output=str(out),
        docs_total=len(done) + _sum(table, "docs"),
        docs_skipped=len(done),
        docs_compressed=_sum(table, "docs"),
        parts_written=table.num_rows,
        text_tokens=_sum(table, "text_tokens"),
        z_tokens=_sum(table, "z_tokens"),
        seconds=time.perf_counter() - start,
        workers=workers,
    )
    _write_summary(out, report)
    return report


def _check_room(ray: Any, workers: int, num_cpus: float) -> None:
    """Refuse a CPU pool that takes every CPU of the cluster: Ray Data's read tasks would never get one and the
    run would hang (a real risk on a laptop: 2 workers x 1 CPU on 2 cores). GPU actors count the CPUs
    they reserve too."""
    total = ray.cluster_resources().get("CPU", 0)
    if workers * num_cpus >= total:
        raise ConfigError(
            f"{workers} workers x {num_cpus} CPUs take all {total:g} CPUs of the Ray cluster, leaving none to read "
            f"the input; use fewer workers or a fractional num_cpus_per_worker (e.g. {total / (workers + 1):.2g})"
        )


def _run(
    ray: Any,
    source: str | list[str],
    out: Path,
    done: pa.Array,
    settings: dict[str, Any],
    workers: int,
    batch_size: int,
    num_cpus_per_worker: float,
    num_gpus_per_worker: float,
    input_format: str,
    progress: bool,
) -> pa.Table:
    """Build and run the Ray Data pipeline; returns the stats rows (one per part written)."""
    ray.data.DataContext.get_current().enable_progress_bars = progress
    id_column, text_column = settings["id_column"], settings["text_column"]
    ds = _read(ray, source, input_format, [id_column, text_column])
    if len(done):
        ds = ds.map_batches(
            _drop_done, batch_format="pyarrow", fn_kwargs={"id_column": id_column, "done": ray.put(done)}
        )
    device = "cuda" if num_gpus_per_worker > 0 else "cpu"
    ds = ds.map_batches(
        CompressWorker,
        batch_size=batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=num_cpus_per_worker,
        num_gpus=num_gpus_per_worker or None,
        fn_constructor_kwargs={
            "output": str(out),
            "compressor": {
                "name_or_path": settings["model"],
                "adapters": settings["adapters"],
                "k": settings["k"],
                "window": settings["window"],
                "device": device,
            },
            "compress": {k: settings[k] for k in ("mode", "ratio", "exact")},
            "id_column": id_column,
            "text_column": text_column,
            "code_format": settings["code_format"],
            "num_threads": max(1, int(num_cpus_per_worker)),
        },
    )
    batches = []  # one small stats row per part; iterating runs the pipeline
    for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        batches.append(batch)
        logger.info("%d more parts written (%d documents)", batch.num_rows, _sum(batch, "docs"))
    return _concat(batches)


def _concat(tables: list[pa.Table]) -> pa.Table:
    import pyarrow as pa

    tables = [t for t in tables if t.num_rows]
    return pa.concat_tables(tables) if tables else _stats([], [], [], [], [])


def _sum(table: pa.Table, column: str) -> int:
    return int(sum(table.column(column).to_pylist())) if column in table.column_names else 0


def _write_summary(out: Path, report: CorpusReport) -> None:
    """Totals over every finished part (earlier runs included), and this run's figures."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    totals = {"docs": 0, "text_tokens": 0, "z_tokens": 0, "chars": 0, "code_bytes": 0}
    ids: set[str] = set()
    for path in parts.finished_parts(out):
        t = pq.read_table(path, columns=["id", "code", "text_tokens", "z_tokens", "chars"])
        totals["docs"] += t.num_rows
        for col in ("text_tokens", "z_tokens", "chars"):
            totals[col] += int(sum(t.column(col).to_pylist()))
        ids.update(t.column("id").to_pylist())
        totals["code_bytes"] += int(pc.sum(pc.binary_length(t.column("code"))).as_py() or 0)
    if len(ids) != totals["docs"]:
        logger.warning(
            "%s holds %d rows for %d distinct ids: the input repeats ids", out, totals["docs"], len(ids)
        )
    summary = {"totals": totals, "distinct_ids": len(ids), "last_run": report.to_dict()}
    (out / parts.SUMMARY_NAME).write_text(
        json.dumps(summary, indent=1, sort_keys=True) + "\n", encoding="utf-8"
    )
