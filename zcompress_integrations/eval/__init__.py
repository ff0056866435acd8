"""Evaluation toolkit: data sets, metrics, baselines and report writers (``zcompress eval``).

Submodules are light to import: sacrebleu, rouge-score, zstandard, brotli, matplotlib and llmlingua load
only inside the functions that use them (``pip install zcompress-integrations[eval]``).
"""

from __future__ import annotations

from zcompress_integrations.eval import baselines, datasets, metrics, report

__all__ = ["baselines", "datasets", "metrics", "report"]
