"""Corpus compression on Ray Data: parts, manifest, and a crash + resume on a local two-worker Ray cluster.

The end-to-end test runs ``zcompress compress-dataset`` in a subprocess (its own local Ray cluster, 2 actors of
0.5 CPU each on this 2-core machine), kills the whole process group with SIGKILL once a few parts exist, runs the
same command again, and checks that every document decodes to its original exactly once and that no part written
before the crash was rewritten. About a minute and a half here; skipped when Ray is not installed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from zcompress_integrations.errors import ConfigError

N_DOCS = 240
BATCH = 8
_WORDS = (
    "the quick brown fox jumps over lazy dog compression model tokens text Wikipedia café 0123456789".split()
)


def _docs() -> list[dict[str, str]]:
    import random

    rng = random.Random(0)
    return [
        {"id": f"doc-{i:04d}", "text": " ".join(rng.choices(_WORDS, k=rng.randint(2, 24)))}
        for i in range(N_DOCS)
    ]


def _write_jsonl(path: Path, rows: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


# ---- parts and manifest (pyarrow only) --------------------------------------------------------------------------
def test_import_is_light() -> None:
    code = "import zcompress_integrations.corpus, sys; print(sorted({m.split('.')[0] for m in sys.modules}))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    loaded = set(eval(out.stdout.strip().splitlines()[-1]))  # noqa: S307 - our own print of a list of names
    assert not loaded & {"ray", "torch", "transformers", "pyarrow"}


def test_cli_lists_compress_dataset() -> None:
    from zcompress_integrations.cli import EXTERNAL_COMMANDS

    assert EXTERNAL_COMMANDS["compress-dataset"][0] == "zcompress_integrations.corpus.cli"


def test_parts_roundtrip_and_resume_bookkeeping(tmp_path: Path, tiny_compressor) -> None:
    pytest.importorskip("pyarrow", reason="pyarrow comes with the 'ray' extra")
    import pyarrow.parquet as pq

    from zcompress_integrations.corpus import parts

    out = tmp_path / "out"
    settings = {"model": "m", "mode": "exact", "k": 4096}
    assert parts.check_manifest(out, settings) is False
    assert parts.check_manifest(out, settings) is True
    with pytest.raises(ConfigError, match="mode: stored 'exact', asked 'latent'"):
        parts.check_manifest(out, {**settings, "mode": "latent"})

    texts = ["hello world", "", "café au lait"]
    codes = tiny_compressor.compress_batch(texts)
    ids = ["a", "b", "c"]
    for code_format in ("bytes", "string"):
        table = parts.codes_table(ids, codes, code_format=code_format)
        assert table.column_names == list(parts.PART_COLUMNS)
        name = parts.part_name(ids) if code_format == "bytes" else parts.part_name(["x"])
        path = parts.write_part(out, table, name)
        back = pq.read_table(path)
        assert tiny_compressor.decompress_batch(back.column("code").to_pylist()) == texts
    assert parts.part_name(ids) == parts.part_name(list(ids)) != parts.part_name(["a", "b"])

    (out / parts.TMP_DIR / "part-dead.parquet.123.tmp").write_bytes(b"PAR1 half")  # a crashed write
    assert len(parts.finished_parts(out)) == 2
    assert sorted(parts.done_ids(out).to_pylist()) == ["a", "a", "b", "b", "c", "c"]
    assert parts.clear_tmp(out) == 1
    read = parts.read_codes(out)
    assert sorted(read) == ids and isinstance(read["a"], bytes | str)
    assert [tiny_compressor.decompress(read[i]) for i in ids] == texts

    with pytest.raises(ConfigError, match="not empty"):
        parts.check_manifest(tmp_path, settings)  # a folder with other files and no manifest


def test_settings_are_checked_before_ray_starts(tmp_path: Path) -> None:
    from zcompress_integrations.corpus import compress_corpus

    with pytest.raises(ConfigError, match="workers"):
        compress_corpus(str(tmp_path / "in.jsonl"), tmp_path / "out", workers=0)
    with pytest.raises(ConfigError, match="CPUs or GPUs"):
        compress_corpus(str(tmp_path / "in.jsonl"), tmp_path / "out", num_cpus_per_worker=0)


def test_a_pool_that_takes_every_cpu_is_refused_instead_of_hanging() -> None:
    from zcompress_integrations.corpus.pipeline import _check_room

    class FakeRay:  # a 2-CPU cluster
        @staticmethod
        def cluster_resources() -> dict[str, float]:
            return {"CPU": 2.0}

    with pytest.raises(ConfigError, match="take all 2 CPUs"):
        _check_room(FakeRay, workers=2, num_cpus=1)
    _check_room(FakeRay, workers=2, num_cpus=0.5)
    _check_room(FakeRay, workers=2, num_cpus=0)  # GPU actors that reserve no CPU
    with pytest.raises(ConfigError):
        _check_room(FakeRay, workers=1, num_cpus=2)  # GPU actors' reserved CPUs starve the reads too


# ---- crash and resume on a local Ray cluster --------------------------------------------------------------------
def _command(src: Path, out: Path, model: Path) -> list[str]:
    return [
        sys.executable, "-m", "zcompress_integrations.cli", "compress-dataset", str(src), str(out),
        "--model", str(model), "--adapters", "none", "--window", "64",
        "--workers", "2", "--num-cpus-per-worker", "0.5", "--batch-size", str(BATCH), "--no-progress",
    ]  # fmt: skip


def _env() -> dict[str, str]:
    repo = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled"}
    env["PYTHONPATH"] = os.pathsep.join([repo, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _kill_marked(marker: str) -> None:
    """SIGKILL the processes of the crashed run that left its process group (Ray's raylet, GCS and workers
    inherit the driver's environment): found by the marker in their environment, killed by pid."""
    if not Path("/proc").is_dir():
        return
    needle = f"ZCOMPRESS_TEST_CRASH_RUN={marker}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                os.kill(int(entry.name), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            continue


def _kill_after_parts(cmd: list[str], out: Path, parts_wanted: int, timeout: float) -> int:
    """Start ``cmd`` in its own process group; SIGKILL the group once ``parts_wanted`` parts exist."""
    log = open(out.parent / "crashed_run.log", "wb")  # noqa: SIM115 - closed below
    marker = f"{os.getpid()}-{time.monotonic_ns()}"
    env = {**_env(), "ZCOMPRESS_TEST_CRASH_RUN": marker}
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if len(list(out.glob("part-*.parquet"))) >= parts_wanted:
                break
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        log.close()
        _kill_marked(marker)
    # A worker may have renamed a part in the instant before it died: settle on a count that holds for 2 s.
    count, quiet_since = -1, time.monotonic()
    while time.monotonic() - quiet_since < 2:
        if (now := len(list(out.glob("part-*.parquet")))) != count:
            count, quiet_since = now, time.monotonic()
        time.sleep(0.2)
    return count


@pytest.mark.timeout(300)
def test_crash_then_resume_decodes_every_document_once(
    tmp_path: Path, tiny_model_dir: Path, tiny_compressor
) -> None:
    pytest.importorskip("ray.data", reason="needs Ray Data: pip install 'zcompress-integrations[ray]'")
    import pyarrow.parquet as pq

    docs = _docs()
    src = _write_jsonl(tmp_path / "docs.jsonl", docs)
    out = tmp_path / "codes"
    cmd = _command(src, out, tiny_model_dir)

    # 1. first run, killed (SIGKILL, driver and local cluster) once 4 parts are finished
    killed_with = _kill_after_parts(cmd, out, parts_wanted=4, timeout=180)
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("part-*.parquet")}
    assert 4 <= killed_with < N_DOCS / BATCH, (
        killed_with,
        (tmp_path / "crashed_run.log").read_text()[-3000:],
    )
    (out / "_tmp").mkdir(exist_ok=True)
    (out / "_tmp" / "part-0000000000000000.parquet.dead.tmp").write_bytes(b"PAR1 half-written")

    # 2. the same command resumes: only the documents not in a finished part are compressed
    run = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    done_before = sum(pq.read_metadata(out / name).num_rows for name in before)
    assert N_DOCS > report["docs_skipped"] == done_before > 0
    assert report["docs_compressed"] == N_DOCS - done_before
    assert report["docs_total"] == N_DOCS
    assert {
        p.name: (p.stat().st_ino, p.stat().st_mtime_ns)
        for p in out.glob("part-*.parquet")
        if p.name in before
    } == before
    assert not any((out / "_tmp").iterdir())

    # 3. every document is in exactly one part and decodes to its original text
    table = pq.ParquetDataset(sorted(out.glob("part-*.parquet"))).read()
    ids = table.column("id").to_pylist()
    assert len(ids) == len(set(ids)) == N_DOCS
    originals = {d["id"]: d["text"] for d in docs}
    assert set(ids) == set(originals)
    decoded = tiny_compressor.decompress_batch(table.column("code").to_pylist())
    assert dict(zip(ids, decoded, strict=True)) == originals
    assert table.column("chars").to_pylist() == [len(originals[i]) for i in ids]
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["totals"]["docs"] == summary["distinct_ids"] == N_DOCS
