"""Importing the package (and its pure-Python parts) loads no heavy library."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers", "langchain", "langchain_core", "llama_index", "peft", "accelerate")


@pytest.mark.parametrize(
    "statement",
    [
        "import zcompress_integrations",
        "from zcompress_integrations import ZCode, ZCompressor, CorruptCodeError",
        "import zcompress_integrations.cli",
        "import zcompress_integrations.samples",
        "from zcompress_integrations.core.zcode import ZCode",
        "import zcompress_integrations.core.zspace",
        "from zcompress_integrations.core.training import train_infer",
    ],
)
def test_import_is_light(statement: str) -> None:
    code = f"{statement}\nimport json, sys\nprint(json.dumps(sorted(m.split('.')[0] for m in sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    loaded = set(json.loads(out.stdout.strip().splitlines()[-1]))
    assert not loaded & set(HEAVY), f"{statement!r} imported {sorted(loaded & set(HEAVY))}"


def test_public_names() -> None:
    import zcompress_integrations as zci

    for name in zci.__all__:
        assert getattr(zci, name) is not None
    with pytest.raises(AttributeError):
        zci.NoSuchThing  # noqa: B018


def test_count_tokens_rejects_lone_surrogates_clearly(tiny_compressor) -> None:
    import pytest

    from zcompress_integrations import UnsupportedTextError

    assert tiny_compressor.count_tokens("hello") >= 1
    assert tiny_compressor.cross_entropy_bits("hello world") > 0
    with pytest.raises(UnsupportedTextError, match="surrogate"):
        tiny_compressor.count_tokens("a\ud800b")
