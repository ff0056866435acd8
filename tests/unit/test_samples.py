"""The sample texts shipped in the package: present, small, consistent, and readable without the data folder."""

from __future__ import annotations

from importlib import resources

import pytest

from zcompress_integrations.samples import load_documents, load_questions, sample_text


def test_shipped_data_is_small_and_documented() -> None:
    folder = resources.files("zcompress_integrations") / "data"
    files = [f for f in folder.iterdir() if f.is_file()]
    assert sum(len(f.read_bytes()) for f in files) < 50_000
    sources = (folder / "SOURCES.md").read_text(encoding="utf-8")
    for f in files:
        if f.name != "SOURCES.md":
            assert f"`{f.name}`" in sources, f"{f.name} has no entry in data/SOURCES.md"


def test_documents_and_questions_agree() -> None:
    docs = load_documents()
    titles = [d.title for d in docs]
    assert len(titles) == len(set(titles)) >= 10
    assert all(len(d.text) > 200 for d in docs)
    assert {d.kind for d in docs} == {"encyclopedia", "news"}
    assert [d.kind for d in load_documents("news")] == ["news"]
    by_title = dict(zip(titles, (d.text for d in docs), strict=True))
    questions = load_questions()
    assert questions
    for q in questions:
        assert len(q.titles) == 2 and set(q.titles) <= set(by_title), q
        assert any(q.answer.removeprefix("the ") in by_title[t] for t in q.titles), q


def test_sample_text_and_bad_kind() -> None:
    assert sample_text().startswith("Alice was beginning")
    with pytest.raises(ValueError, match="kind"):
        load_documents("poetry")  # type: ignore[arg-type]
