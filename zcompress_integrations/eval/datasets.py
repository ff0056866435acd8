"""Evaluation data sets: small, deterministic loaders over the project's offline ``shared/data`` folder.

Every loader takes ``limit`` (how many records, ``None`` for all) and ``seed`` (which ones). The selection is
``random.Random(seed).sample`` over record indices, returned in file order, so the same ``(limit, seed)``
always gives the same records, and a smaller limit is not a prefix of a larger one by accident of file order
(the records are spread over the whole file). Records are small frozen dataclasses holding plain strings.

The data folder is found by :func:`resolve_data_dir`: the ``ZCOMPRESS_DATA_DIR`` environment variable, else a
``shared/data`` (or ``../shared/data``) folder found by walking up from the current directory and from this
file. Nothing is ever downloaded.

WikiText-2 records are derived from ``wikipedia/wikitext2_raw_test.txt`` by :func:`parse_wikitext` (the rules
of ``shared/data/README.md``); the pre-split ``.jsonl`` files are read only when the ``.txt`` is absent. The
derivation follows the README where the shipped ``.jsonl`` files do not (their ``section`` keeps ``=`` marks,
their article headings are mis-levelled, and a paragraph that opens with a quote keeps a stray space), so
the loaders return the same records whichever file they find.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import random
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

__all__ = [
    "DATA_DIR_ENV",
    "DataNotFoundError",
    "WikiParagraph",
    "WikiArticle",
    "HotpotWikiParagraph",
    "CnnDmExample",
    "HotpotQAExample",
    "QulacQuery",
    "resolve_data_dir",
    "select",
    "detokenize_wikitext",
    "parse_wikitext",
    "load_wikitext_paragraphs",
    "load_wikitext_articles",
    "load_hotpot_wiki_paragraphs",
    "load_cnndm",
    "load_hotpotqa",
    "load_qulac_queries",
]

DATA_DIR_ENV = "ZCOMPRESS_DATA_DIR"
DEFAULT_SEED = 0

WIKITEXT_TXT = "wikipedia/wikitext2_raw_test.txt"
WIKITEXT_ARTICLES = "wikipedia/wikitext2_raw_test_articles.jsonl"
WIKITEXT_PARAGRAPHS = "wikipedia/wikitext2_raw_test_paragraphs.jsonl"
HOTPOT_WIKI_PARAGRAPHS = "wikipedia/hotpotqa_train_wiki_paragraphs.jsonl"
CNNDM = "cnn_dailymail/cnndm_test_frank_200.jsonl"
HOTPOTQA_DEV = "hotpotqa/hotpotqa_dev_distractor_450.jsonl"
QULAC = "qulac/qulac.jsonl"

T = TypeVar("T")


class DataNotFoundError(FileNotFoundError):
    """The evaluation data folder, or a file in it, could not be found."""


# --------------------------------------------------------------------------------------------------- records


@dataclass(frozen=True)
class WikiParagraph:
    """One non-heading line of a WikiText-2 test article.

    Attributes:
        id: ``wt2-test-NN-PPP`` (article index, paragraph index within the article).
        article_index: Index of the article in file order (0-59).
        title: Article title.
        section: Heading path such as ``"Career > 2000 – 2005"``; empty for the lead.
        text: The WikiText-tokenised line (exact source text).
        text_detok: Approximately detokenised text (see :func:`detokenize_wikitext`).
    """

    id: str
    article_index: int
    title: str
    section: str
    text: str
    text_detok: str


@dataclass(frozen=True)
class WikiArticle:
    """One whole WikiText-2 test article.

    Attributes:
        id: ``wt2-test-NN``.
        title: Article title.
        text: WikiText lines joined with ``\\n``; section headings kept as ``= = S = =``.
        text_detok: The same detokenised; headings shown as ``== S ==``.
        num_paragraphs: Number of non-heading lines.
    """

    id: str
    title: str
    text: str
    text_detok: str
    num_paragraphs: int


@dataclass(frozen=True)
class HotpotWikiParagraph:
    """A natural-text Wikipedia lead paragraph (HotpotQA train contexts).

    Attributes:
        id: ``hp-train-para-NNNN``.
        title: Wikipedia title.
        text: The paragraph.
    """

    id: str
    title: str
    text: str


@dataclass(frozen=True)
class CnnDmExample:
    """A CNN/DailyMail test article with its reference highlights.

    Attributes:
        id: SHA1 of the story URL.
        source: ``"cnn"`` or ``"dailymail"``.
        article: Raw article text.
        highlights: Reference summary (PTB-tokenised apart from brackets).
    """

    id: str
    source: str
    article: str
    highlights: str


@dataclass(frozen=True)
class HotpotQAExample:
    """A HotpotQA dev (distractor) question with its context paragraphs.

    Attributes:
        id: HotpotQA ``_id``.
        question: The question.
        answer: The gold answer (``"yes"``/``"no"`` for some comparison questions).
        type: ``"bridge"`` or ``"comparison"``.
        context: ``(title, paragraph_text)`` pairs, usually 10 (2 gold, 8 distractors); a few have fewer.
        supporting_titles: Titles of the gold paragraphs, in order of first mention.
    """

    id: str
    question: str
    answer: str
    type: str
    context: tuple[tuple[str, str], ...]
    supporting_titles: tuple[str, ...]

    def context_text(self, separator: str = "\n\n") -> str:
        """Join the context paragraphs as ``"title: text"`` blocks.

        Args:
            separator: String put between paragraphs.

        Returns:
            The joined context.
        """
        return separator.join(f"{title}: {text}" for title, text in self.context)


@dataclass(frozen=True)
class QulacQuery:
    """A long "Qulac-style" query: topic, facet, clarifying question and answer in one string.

    Attributes:
        id: ``topic_facet_question_id`` (``"T-F-Q"``).
        topic: The short TREC query.
        text: The composed long query (see :func:`load_qulac_queries`).
        question: The clarifying question.
        answer: The user's answer.
    """

    id: str
    topic: str
    text: str
    question: str
    answer: str


# ------------------------------------------------------------------------------------------------ data folder


def _candidates(start: Path) -> Iterator[Path]:
    for folder in (start, *start.parents):
        yield folder / "shared" / "data"
        yield folder.parent / "shared" / "data"


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Find the evaluation data folder.

    Order: the ``data_dir`` argument; the ``ZCOMPRESS_DATA_DIR`` environment variable; a ``shared/data`` or
    ``../shared/data`` folder found walking up from the current directory, then from this file.

    Args:
        data_dir: Explicit folder; when given it must exist.

    Returns:
        The folder, resolved.

    Raises:
        DataNotFoundError: No folder was found (the message lists what was tried).
    """
    if data_dir is not None:
        path = Path(data_dir).expanduser()
        if not path.is_dir():
            raise DataNotFoundError(f"data_dir={str(data_dir)!r} is not a directory.")
        return path.resolve()
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        path = Path(env).expanduser()
        if not path.is_dir():
            raise DataNotFoundError(f"{DATA_DIR_ENV}={env!r} is not a directory; point it at shared/data.")
        return path.resolve()
    starts = [Path.cwd().resolve(), Path(__file__).resolve().parent]
    for start in starts:
        for candidate in _candidates(start):
            if candidate.is_dir():
                return candidate.resolve()
    raise DataNotFoundError(
        "Could not find the evaluation data folder: looked for shared/data and ../shared/data above "
        f"{', '.join(str(s) for s in starts)}. Set {DATA_DIR_ENV}=/path/to/shared/data or pass data_dir=."
    )


def _data_file(relative: str, data_dir: str | os.PathLike[str] | None) -> Path:
    root = resolve_data_dir(data_dir)
    path = root / relative
    if not path.is_file():
        raise DataNotFoundError(f"Missing data file {relative!r} in {root}.")
    return path


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def select(items: Sequence[T], limit: int | None = None, seed: int = DEFAULT_SEED) -> list[T]:
    """Pick ``limit`` items deterministically, keeping their original order.

    Args:
        items: All records.
        limit: How many to keep; ``None`` (or at least ``len(items)``) keeps all.
        seed: Seed of the ``random.Random`` that samples the indices.

    Returns:
        The chosen records in their original order.

    Raises:
        ValueError: ``limit`` is negative.
    """
    if limit is None or limit >= len(items):
        return list(items)
    if limit < 0:
        raise ValueError(f"limit must be >= 0 or None, got {limit}.")
    indices = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[i] for i in indices]


# ----------------------------------------------------------------------------------------------- WikiText-2

# ` = X = ` lines that are not headings: two math fragments inside "Constant k filter" (see data README).
_WIKITEXT_NOT_HEADINGS = frozenset(
    {"= 1 rad / s and a nominal impedance k =", "= 1 henry and capacitance C ="}
)
_HEADING = re.compile(r"^((?:= )+)(.*?)((?: =)+)$")
_CLITIC = re.compile(r" ('s|'t|'re|'ve|'ll|'d|'m|n't)\b", re.IGNORECASE)


def _heading(line: str) -> tuple[int, str] | None:
    """Return ``(level, title)`` for a WikiText heading line (already stripped), else ``None``."""
    if line in _WIKITEXT_NOT_HEADINGS:
        return None
    match = _HEADING.match(line)
    if match is None:
        return None
    opening, title, closing = match.groups()
    level = opening.count("=")
    if level != closing.count("=") or not title.strip():
        return None
    return level, title.strip()


def detokenize_wikitext(text: str) -> str:
    """Approximately undo WikiText tokenisation (rules of ``shared/data/README.md``).

    ``@-@``/``@,@``/``@.@`` joined; no space before ``. , ; : ! ? % ) ] }`` nor after ``( [ { $ £ €``;
    ``" x "`` becomes ``"x"``; clitics (``'s``, ``n't``...) joined to the word before; whitespace collapsed.
    The result is not the original Wikipedia text.

    Args:
        text: WikiText-tokenised text (one line).

    Returns:
        The detokenised text.
    """
    s = re.sub(r" ?@([-,.])@ ?", r"\1", text)
    s = re.sub(r" +([.,;:!?%)\]}])", r"\1", s)
    s = re.sub(r"([(\[{$£€]) +", r"\1", s)
    s = re.sub(r'" ([^"]*?) "', r'"\1"', s)
    s = _CLITIC.sub(r"\1", s)
    return re.sub(r"\s+", " ", s).strip()


def parse_wikitext(lines: Sequence[str]) -> tuple[list[WikiArticle], list[WikiParagraph]]:
    """Split WikiText-2 raw lines into articles and paragraphs.

    A level-1 heading `` = X = `` starts an article; deeper headings `` = = S = = `` set the section path;
    every other non-empty line is a paragraph. Line ends (CRLF) and surrounding spaces are stripped.

    Args:
        lines: Lines of ``wiki.test.raw`` (with or without blank lines and line ends).

    Returns:
        ``(articles, paragraphs)`` in file order.
    """
    articles: list[WikiArticle] = []
    paragraphs: list[WikiParagraph] = []
    title: str | None = None
    raw_lines: list[str] = []
    detok_lines: list[str] = []
    sections: list[str] = []
    count = 0

    def finish() -> None:
        if title is None:
            return
        articles.append(
            WikiArticle(
                id=f"wt2-test-{len(articles):02d}",
                title=title,
                text="\n".join(raw_lines),
                text_detok="\n".join(detok_lines),
                num_paragraphs=count,
            )
        )

    for raw in lines:
        line = raw.strip()
        if not line:
            continue
        head = _heading(line)
        if head is not None and head[0] == 1:
            finish()
            title, raw_lines, detok_lines, sections, count = head[1], [], [], [], 0
            continue
        if title is None:
            logger.warning("WikiText line before the first article heading skipped: %r", line[:60])
            continue
        if head is not None:
            level, name = head
            sections = sections[: level - 2] + [name]
            raw_lines.append(line)
            detok_lines.append(f"{'=' * level} {detokenize_wikitext(name)} {'=' * level}")
            continue
        detok = detokenize_wikitext(line)
        paragraphs.append(
            WikiParagraph(
                id=f"wt2-test-{len(articles):02d}-{count:03d}",
                article_index=len(articles),
                title=title,
                section=" > ".join(sections),
                text=line,
                text_detok=detok,
            )
        )
        raw_lines.append(line)
        detok_lines.append(detok)
        count += 1
    finish()
    return articles, paragraphs


def _clean_section(section: str) -> str:
    # The shipped jsonl keeps '=' marks around inner headings ("= Career = > = = 2000 – 2005 = ="); strip them.
    parts = [re.sub(r"^(?:= ?)+|(?: ?=)+$", "", part).strip() for part in section.split(" > ")]
    return " > ".join(p for p in parts if p)


def _load_wikitext(data_dir: str | os.PathLike[str] | None) -> tuple[list[WikiArticle], list[WikiParagraph]]:
    articles, paragraphs = _load_wikitext_cached(resolve_data_dir(data_dir))
    return list(articles), list(paragraphs)


@functools.lru_cache(maxsize=4)
def _load_wikitext_cached(root: Path) -> tuple[tuple[WikiArticle, ...], tuple[WikiParagraph, ...]]:
    articles, paragraphs = _parse_wikitext_files(root)
    return tuple(articles), tuple(paragraphs)


def _parse_wikitext_files(root: Path) -> tuple[list[WikiArticle], list[WikiParagraph]]:
    txt = root / WIKITEXT_TXT
    if txt.is_file():
        with txt.open(encoding="utf-8", newline="") as fh:
            return parse_wikitext(fh.read().splitlines())
    art_path, par_path = root / WIKITEXT_ARTICLES, root / WIKITEXT_PARAGRAPHS
    if not (art_path.is_file() and par_path.is_file()):
        raise DataNotFoundError(f"Neither {WIKITEXT_TXT!r} nor the WikiText .jsonl files are in {root}.")
    logger.info("%s missing; reading the pre-split WikiText .jsonl files", WIKITEXT_TXT)
    articles = [
        WikiArticle(r["id"], r["title"], r["text"], r["text_detok"], int(r["num_paragraphs"]))
        for r in _read_jsonl(art_path)
    ]
    paragraphs = [
        WikiParagraph(
            r["id"],
            int(r["article_index"]),
            r["title"],
            _clean_section(r["section"]),
            r["text"],
            detokenize_wikitext(r["text"]),
        )
        for r in _read_jsonl(par_path)
    ]
    return articles, paragraphs


def load_wikitext_paragraphs(
    limit: int | None = None,
    seed: int = DEFAULT_SEED,
    *,
    min_chars: int = 0,
    data_dir: str | os.PathLike[str] | None = None,
) -> list[WikiParagraph]:
    """WikiText-2 test paragraphs (2,187 in all); use ``text_detok`` as the natural text.

    Args:
        limit: Number of paragraphs; ``None`` for all.
        seed: Selection seed.
        min_chars: Keep only paragraphs whose ``text_detok`` has at least this many characters (applied
            before sampling).
        data_dir: Data folder; default from :func:`resolve_data_dir`.

    Returns:
        The paragraphs, in file order.
    """
    _, paragraphs = _load_wikitext(data_dir)
    paragraphs = [p for p in paragraphs if len(p.text_detok) >= min_chars]
    return select(paragraphs, limit, seed)


def load_wikitext_articles(
    limit: int | None = None,
    seed: int = DEFAULT_SEED,
    *,
    data_dir: str | os.PathLike[str] | None = None,
) -> list[WikiArticle]:
    """WikiText-2 test articles (60).

    Args:
        limit: Number of articles; ``None`` for all.
        seed: Selection seed.
        data_dir: Data folder; default from :func:`resolve_data_dir`.

    Returns:
        The articles, in file order.
    """
    articles, _ = _load_wikitext(data_dir)
    return select(articles, limit, seed)


# ------------------------------------------------------------------------------------------- other data sets


def load_hotpot_wiki_paragraphs(
    limit: int | None = None,
    seed: int = DEFAULT_SEED,
    *,
    data_dir: str | os.PathLike[str] | None = None,
) -> list[HotpotWikiParagraph]:
    """Natural-text Wikipedia lead paragraphs from HotpotQA train contexts (975).

    Args:
        limit: Number of paragraphs; ``None`` for all.
        seed: Selection seed.
        data_dir: Data folder; default from :func:`resolve_data_dir`.

    Returns:
        The paragraphs, in file order.
    """
    rows = _read_jsonl(_data_file(HOTPOT_WIKI_PARAGRAPHS, data_dir))
    return select([HotpotWikiParagraph(r["id"], r["title"], r["text"]) for r in rows], limit, seed)


def load_cnndm(
    limit: int | None = None,
    seed: int = DEFAULT_SEED,
    *,
    data_dir: str | os.PathLike[str] | None = None,
) -> list[CnnDmExample]:
    """CNN/DailyMail test articles with reference highlights (200, FRANK subset).

    Args:
        limit: Number of articles; ``None`` for all.
        seed: Selection seed.
        data_dir: Data folder; default from :func:`resolve_data_dir`.

    Returns:
        The examples, in file order.
    """
    rows = _read_jsonl(_data_file(CNNDM, data_dir))
    examples = [CnnDmExample(r["id"], r["source"], r["article"], r["highlights"]) for r in rows]
    return select(examples, limit, seed)


def load_hotpotqa(
    limit: int | None = None,
    seed: int = DEFAULT_SEED,
    *,
    min_paragraphs: int = 0,
    data_dir: str | os.PathLike[str] | None = None,
) -> list[HotpotQAExample]:
    """HotpotQA dev questions, distractor setting (450).

    Args:
        limit: Number of questions; ``None`` for all.
        seed: Selection seed.
        min_paragraphs: Keep only questions with at least this many context paragraphs (5 have fewer than
            10, 2 have none); applied before sampling.
        data_dir: Data folder; default from :func:`resolve_data_dir`.

    Returns:
        The examples, in file order.
    """
    examples = []
    for r in _read_jsonl(_data_file(HOTPOTQA_DEV, data_dir)):
        context = tuple((title, "".join(sentences)) for title, sentences in r["context"])
        if len(context) < min_paragraphs:
            continue
        supporting = tuple(dict.fromkeys(title for title, _ in r["supporting_facts"]))
        examples.append(HotpotQAExample(r["_id"], r["question"], r["answer"], r["type"], context, supporting))
    return select(examples, limit, seed)


def _unescape(text: str) -> str:
    # Qulac's descriptions carry literal backslash escapes (\' and \") from the source file.
    return text.replace("\\'", "'").replace('\\"', '"').strip()


def _sentence(text: str) -> str:
    text = text.strip()
    if text and text[-1] not in ".?!":
        text += "."
    return text


def load_qulac_queries(
    limit: int | None = None,
    seed: int = DEFAULT_SEED,
    *,
    data_dir: str | os.PathLike[str] | None = None,
) -> list[QulacQuery]:
    """Long "Qulac-style" queries: one per ``topic_facet_question_id`` with a non-empty answer.

    Each query reads ``"{topic}. {topic_desc} {facet_desc} Q: {question}? A: {answer}."`` with the
    source's backslash escapes removed, for example ``"obama family tree. Find information on President
    Barack Obama's family history, ... Q: are you interested in seeing barack obamas family? A: yes am
    interested in obamas family."``. Duplicate ids keep their first row.

    Args:
        limit: Number of queries; ``None`` for all (10,277).
        seed: Selection seed.
        data_dir: Data folder; default from :func:`resolve_data_dir`.

    Returns:
        The queries, in file order.
    """
    seen: set[str] = set()
    queries = []
    for r in _read_jsonl(_data_file(QULAC, data_dir)):
        qid, answer = r["topic_facet_question_id"], r["answer"].strip()
        if not answer or qid in seen:
            continue
        seen.add(qid)
        question = r["question"].strip()
        parts = [
            _sentence(r["topic"]),
            _sentence(_unescape(r["topic_desc"])),
            _sentence(_unescape(r["facet_desc"])),
            "Q: " + (question if question.endswith("?") else question + "?"),
            "A: " + _sentence(answer),
        ]
        queries.append(QulacQuery(qid, r["topic"], " ".join(p for p in parts if p), question, answer))
    return select(queries, limit, seed)
