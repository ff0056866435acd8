"""Sample texts shipped with the package: a few short documents and questions for demos and cookbooks.

They come with every install (``zcompress_integrations/data/``, sources in its ``SOURCES.md``), so ``zcompress
demo`` and the cookbook notebooks run without the evaluation data folder. They are examples, not an evaluation
set: the eval suites read the optional ``shared/data`` folder (:mod:`zcompress_integrations.eval.datasets`).

    >>> from zcompress_integrations.samples import load_documents, load_questions
    >>> docs = {d.title: d.text for d in load_documents()}
    >>> q = load_questions()[0]
    >>> q.answer in docs[q.titles[1]]
    True

Importing this module loads no heavy library.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from typing import Literal

__all__ = ["SampleDocument", "SampleQuestion", "sample_text", "load_documents", "load_questions"]

DOCUMENTS_FILE = "documents.jsonl"
QUESTIONS_FILE = "questions.jsonl"
SAMPLE_TEXT_FILE = "sample.txt"

Kind = Literal["encyclopedia", "news"]


@dataclass(frozen=True)
class SampleDocument:
    """One short document.

    Attributes:
        title: Unique title (``"Lisbon"``).
        kind: ``"encyclopedia"`` (a paragraph in the style of an encyclopedia) or ``"news"`` (a news report).
        text: The document, one paragraph.
    """

    title: str
    kind: Kind
    text: str


@dataclass(frozen=True)
class SampleQuestion:
    """A question answered by two of the sample documents.

    Attributes:
        question: The question.
        answer: A short reference answer.
        titles: Titles of the documents that together hold the answer.
    """

    question: str
    answer: str
    titles: tuple[str, ...]


def _read(name: str) -> str:
    return (resources.files("zcompress_integrations") / "data" / name).read_text(encoding="utf-8")


def _records(name: str) -> list[dict]:
    return [json.loads(line) for line in _read(name).splitlines() if line.strip()]


def sample_text() -> str:
    """The demo paragraph: the opening of *Alice's Adventures in Wonderland* (public domain)."""
    return _read(SAMPLE_TEXT_FILE).strip()


def load_documents(kind: Kind | None = None) -> list[SampleDocument]:
    """The sample documents in file order, optionally only those of one ``kind``."""
    if kind not in (None, "encyclopedia", "news"):
        raise ValueError(f"kind must be None, 'encyclopedia' or 'news'; got {kind!r}")
    docs = [SampleDocument(r["title"], r["kind"], r["text"]) for r in _records(DOCUMENTS_FILE)]
    return [d for d in docs if kind is None or d.kind == kind]


def load_questions() -> list[SampleQuestion]:
    """The sample questions in file order; each names the documents (by title) that answer it."""
    return [SampleQuestion(r["question"], r["answer"], tuple(r["titles"])) for r in _records(QUESTIONS_FILE)]
