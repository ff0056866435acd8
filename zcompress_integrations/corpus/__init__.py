"""Corpus compression on Ray Data: an actor pool of compressors, parquet parts, resumable after a crash.

    from zcompress_integrations.corpus import compress_corpus
    report = compress_corpus("docs.jsonl", "codes/", workers=2)

Importing this package loads neither Ray nor torch; :func:`compress_corpus` imports Ray when called. See
``docs/corpus.md`` and :mod:`zcompress_integrations.corpus.pipeline` for the resume contract.
"""

from __future__ import annotations

from zcompress_integrations.corpus.parts import read_codes
from zcompress_integrations.corpus.pipeline import CompressWorker, CorpusReport, compress_corpus

__all__ = ["compress_corpus", "read_codes", "CorpusReport", "CompressWorker"]
