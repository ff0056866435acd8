"""The zcompress CLI on the tiny model: compress/decompress/info round trips through files and pipes, and every
user error exits 2 with a one-line message."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from zcompress_integrations import ZCode
from zcompress_integrations.cli import COMMANDS, EXTERNAL_COMMANDS, main, sample_text

TEXT = "Caf\u00e9 \U0001f600 tabs\tand\r\nCRLF \x00 NUL and <s> not special.\n"


@pytest.fixture()
def model(tiny_model_dir: Path) -> list[str]:
    return ["--model", str(tiny_model_dir)]


@pytest.mark.parametrize("form", ["bytes", "json", "string"])
def test_compress_decompress_files(tmp_path: Path, model: list[str], form: str) -> None:
    src, code_file, out = tmp_path / "in.txt", tmp_path / "in.zc", tmp_path / "out.txt"
    src.write_bytes(TEXT.encode("utf-8"))
    assert main(["compress", str(src), str(code_file), "--format", form, "--window", "64", *model]) == 0
    code = ZCode.load(code_file.read_bytes() if form == "bytes" else code_file.read_text())
    assert code.codec == "exact" and not code.is_bytes and code.params["window"] == 64
    assert main(["decompress", str(code_file), str(out), *model]) == 0
    assert out.read_bytes() == src.read_bytes()


def test_non_utf8_input_round_trips_as_bytes(tmp_path: Path, model: list[str]) -> None:
    src, code_file, out = tmp_path / "in.bin", tmp_path / "in.zc", tmp_path / "out.bin"
    src.write_bytes(b"\xff\xfe\x00binary\x80" + bytes(range(256)))
    assert main(["compress", str(src), str(code_file), "--k", "256", *model]) == 0
    code = ZCode.from_bytes(code_file.read_bytes())
    assert code.is_bytes and code.k == 256
    assert main(["decompress", str(code_file), str(out), *model]) == 0
    assert out.read_bytes() == src.read_bytes()


def test_stdin_stdout_pipe(tiny_model_dir: Path) -> None:
    cmd = [sys.executable, "-m", "zcompress_integrations.cli"]
    data = TEXT.encode("utf-8") + b"\xc3"  # ends with a broken UTF-8 sequence: coded as bytes
    code = subprocess.run(
        [*cmd, "compress", "-", "-", "--model", str(tiny_model_dir)],
        input=data,
        capture_output=True,
        check=True,
    ).stdout
    assert code.startswith(b"ZC")
    back = subprocess.run(
        [*cmd, "decompress", "-", "-", "--model", str(tiny_model_dir)],
        input=code,
        capture_output=True,
        check=True,
    ).stdout
    assert back == data


def test_info(tmp_path: Path, model: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    src, code_file = tmp_path / "in.txt", tmp_path / "in.zc"
    src.write_text("The quick brown fox jumps over the lazy dog. " * 3, encoding="utf-8")
    assert main(["compress", str(src), str(code_file), *model]) == 0
    capsys.readouterr()
    assert main(["info", str(code_file)]) == 0
    plain = capsys.readouterr().out
    for field in ("codec", "ratio", "bits/char", "text tokens", "Z tokens", "fingerprint", "k "):
        assert field in plain
    assert "bound" not in plain
    assert main(["info", str(code_file), "--bound", *model]) == 0
    bound = capsys.readouterr().out
    assert "bound log2(K)/H" in bound and "H (bits/token)" in bound


def test_demo_on_tiny_model(model: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert len(sample_text()) > 200
    assert (
        main(["demo", *model]) == 0
    )  # the shipped adapters belong to another backbone: latent part explains
    out = capsys.readouterr().out
    assert "round trip exact: True" in out and "Z ids (" in out and "bound log2(K)/H" in out
    assert "latent mode unavailable" in out and "Traceback" not in out


def test_demo_shows_latent_mode(
    model: list[str], tiny_latent_adapters: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["demo", "--text", "The quick brown fox jumps over the lazy dog. " * 4, "--question", "Who jumps?"]
    assert main([*argv, *model, "--adapters", str(tiny_latent_adapters)]) == 0
    out = capsys.readouterr().out
    assert "round trip exact: True" in out
    latent = out.split("== latent mode", 1)[1]
    assert "prompt length: text tokens" in latent and "-> Z-tokens" in latent
    assert (
        "decompress: exact" in latent
        and "reads back from the Z-tokens" in latent
        and "question: Who jumps?" in latent
    )
    assert "answer from the Z code:" in latent and "prompt tokens read:" in latent


def _error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("zcompress: error:") and "Traceback" not in err
    return err


def test_errors_exit_2(tmp_path: Path, model: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    src, code_file = tmp_path / "in.txt", tmp_path / "in.zc"
    src.write_text("Some text to compress and then damage.", encoding="utf-8")
    assert main(["compress", str(src), str(code_file), *model]) == 0
    raw = code_file.read_bytes()
    assert "no such file" in _error(["decompress", str(tmp_path / "missing.zc"), "-"], capsys)
    assert "directory" in _error(["info", str(tmp_path)], capsys)
    (tmp_path / "bad.zc").write_bytes(raw[:-1] + bytes([raw[-1] ^ 1]))
    assert "not a valid Z code" in _error(["decompress", str(tmp_path / "bad.zc"), "-", *model], capsys)
    (tmp_path / "short.zc").write_bytes(raw[: len(raw) // 2])
    assert "truncated" in _error(["info", str(tmp_path / "short.zc")], capsys)
    assert "not a valid Z code" in _error(["info", str(src)], capsys)
    (tmp_path / "empty.zc").write_bytes(b"")
    assert "not a valid Z code" in _error(["info", str(tmp_path / "empty.zc")], capsys)
    assert "power of two" in _error(["compress", str(src), "-", "--k", "1000", *model], capsys)


def test_wrong_model_exits_2(
    tmp_path: Path,
    model: list[str],
    tmp_path_factory: pytest.TempPathFactory,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from conftest import build_tiny_model

    other = build_tiny_model(tmp_path_factory.mktemp("cli_other_model"), seed=3)
    src, code_file = tmp_path / "in.txt", tmp_path / "in.zc"
    src.write_text("Made by one model.", encoding="utf-8")
    assert main(["compress", str(src), str(code_file), *model]) == 0
    assert "wrong model" in _error(["decompress", str(code_file), "-", "--model", str(other)], capsys)


def test_subcommand_table_and_external_dispatch(capsys: pytest.CaptureFixture[str]) -> None:
    assert {"compress", "decompress", "info", "demo"} <= set(COMMANDS)
    assert set(EXTERNAL_COMMANDS) == {"train", "eval", "compress-dataset"}
    for name, (module, _) in EXTERNAL_COMMANDS.items():
        try:
            __import__(module)
        except ImportError:
            assert "not available" in _error([name, "--help"], capsys)
    assert main([]) == 2
    with pytest.raises(SystemExit):
        main(["no-such-command"])
