"""Data set loaders: determinism, limits, the WikiText-2 derivation, data folder resolution."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from zcompress_integrations.eval import datasets as ds


@pytest.fixture(scope="module")
def data_dir() -> Path:
    try:
        return ds.resolve_data_dir()
    except ds.DataNotFoundError as err:
        pytest.skip(f"shared/data not found: {err}")


LOADERS = {
    "wikitext_paragraphs": (ds.load_wikitext_paragraphs, 2187),
    "wikitext_articles": (ds.load_wikitext_articles, 60),
    "hotpot_wiki_paragraphs": (ds.load_hotpot_wiki_paragraphs, 975),
    "cnndm": (ds.load_cnndm, 200),
    "hotpotqa": (ds.load_hotpotqa, 450),
    "qulac": (ds.load_qulac_queries, 10274),
}


@pytest.mark.parametrize("name", sorted(LOADERS))
def test_loader_counts_determinism_and_limit(name: str, data_dir: Path) -> None:
    loader, total = LOADERS[name]
    everything = loader(data_dir=data_dir)
    assert len(everything) == total
    first = loader(5, seed=7, data_dir=data_dir)
    assert len(first) == 5
    assert first == loader(5, seed=7, data_dir=data_dir)  # same seed, same records
    assert first != loader(5, seed=8, data_dir=data_dir)
    position = {record.id: i for i, record in enumerate(everything)}
    assert [position[r.id] for r in first] == sorted(position[r.id] for r in first)  # file order kept
    assert loader(total + 10, data_dir=data_dir) == everything
    assert loader(0, data_dir=data_dir) == []


def test_select_is_a_stable_sample() -> None:
    items = list(range(100))
    picked = ds.select(items, 10, seed=3)
    assert picked == sorted(picked) and len(set(picked)) == 10
    assert picked == ds.select(items, 10, seed=3)
    assert ds.select(items, None) == items
    with pytest.raises(ValueError, match="limit"):
        ds.select(items, -1)


def test_record_contents(data_dir: Path) -> None:
    qa = ds.load_hotpotqa(3, seed=1, min_paragraphs=10, data_dir=data_dir)
    assert all(len(ex.context) == 10 and ex.question and ex.answer for ex in qa)
    # The source data has a few supporting titles missing from the context, so only ask for an overlap.
    assert all(set(ex.supporting_titles) & {t for t, _ in ex.context} for ex in qa)
    assert qa[0].context_text().startswith(f"{qa[0].context[0][0]}: ")
    news = ds.load_cnndm(2, data_dir=data_dir)
    assert all(len(ex.article) > len(ex.highlights) > 0 for ex in news)
    query = ds.load_qulac_queries(1, seed=0, data_dir=data_dir)[0]
    assert query.text.startswith(query.topic) and query.question in query.text and query.answer in query.text
    assert "\\'" not in query.text and '\\"' not in query.text
    para = ds.load_wikitext_paragraphs(1, seed=0, min_chars=500, data_dir=data_dir)[0]
    assert len(para.text_detok) >= 500 and " @-@ " not in para.text_detok
    with pytest.raises(ds.DataNotFoundError, match="Missing data file"):
        ds.load_cnndm(data_dir=data_dir / "qulac")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("a guest @-@ starring role , in 2000 .", "a guest-starring role, in 2000."),
        ("1 @,@ 000 and 3 @.@ 5 %", "1,000 and 3.5%"),
        ('as " Craig " in " Teddy \'s Story " ;', 'as "Craig" in "Teddy\'s Story";'),
        ('" Kiss You " is a song', '"Kiss You" is a song'),
        ("( born 1982 ) cost $ 5 and £ 3 [ 1 ]", "(born 1982) cost $5 and £3 [1]"),
        ("they do n't know ; I 'm sure it 's fine !", "they don't know; I'm sure it's fine!"),
        ("  many   spaces  ", "many spaces"),
    ],
)
def test_detokenize_wikitext(raw: str, expected: str) -> None:
    assert ds.detokenize_wikitext(raw) == expected


SAMPLE = [
    " = First Title = \r\n",
    " Lead paragraph , one . \r\n",
    " = = Life = = \r\n",
    " = = = Early years = = = \r\n",
    " Born in 1900 . \r\n",
    " = 1 rad / s and a nominal impedance k = \r\n",
    " = = Death = = \r\n",
    " Died . \r\n",
    "\r\n",
    " = Second = \r\n",
    " Only line . \r\n",
]


def test_parse_wikitext_articles_sections_and_exceptions() -> None:
    articles, paragraphs = ds.parse_wikitext(SAMPLE)
    assert [a.title for a in articles] == ["First Title", "Second"]
    assert [a.num_paragraphs for a in articles] == [4, 1]
    assert [p.id for p in paragraphs] == [f"wt2-test-00-00{i}" for i in range(4)] + ["wt2-test-01-000"]
    assert [p.section for p in paragraphs] == ["", "Life > Early years", "Life > Early years", "Death", ""]
    assert paragraphs[2].text == "= 1 rad / s and a nominal impedance k ="  # a math fragment, not a heading
    assert articles[0].text.splitlines()[1:3] == ["= = Life = =", "= = = Early years = = ="]
    assert articles[0].text_detok.splitlines()[:3] == [
        "Lead paragraph, one.",
        "== Life ==",
        "=== Early years ===",
    ]
    assert articles[1] == ds.WikiArticle("wt2-test-01", "Second", "Only line .", "Only line.", 1)


def test_derivation_matches_shipped_jsonl(data_dir: Path) -> None:
    shipped_articles = data_dir / ds.WIKITEXT_ARTICLES
    shipped_paragraphs = data_dir / ds.WIKITEXT_PARAGRAPHS
    if not (shipped_articles.is_file() and shipped_paragraphs.is_file()):
        pytest.skip("no shipped WikiText .jsonl to compare with")
    articles, paragraphs = ds.parse_wikitext((data_dir / ds.WIKITEXT_TXT).read_text("utf-8").splitlines())
    ref_articles = [json.loads(line) for line in shipped_articles.open(encoding="utf-8")]
    ref_paragraphs = [json.loads(line) for line in shipped_paragraphs.open(encoding="utf-8")]
    assert [(a.id, a.title, a.text, a.num_paragraphs) for a in articles] == [
        (r["id"], r["title"], r["text"], r["num_paragraphs"]) for r in ref_articles
    ]
    assert [(p.id, p.article_index, p.title, p.text) for p in paragraphs] == [
        (r["id"], r["article_index"], r["title"], r["text"]) for r in ref_paragraphs
    ]
    assert [p.section for p in paragraphs] == [ds._clean_section(r["section"]) for r in ref_paragraphs]
    # The shipped text_detok leaves a space after a paragraph-initial quote ('" Kiss You "is'); all else agrees.
    same = sum(p.text_detok == r["text_detok"] for p, r in zip(paragraphs, ref_paragraphs, strict=True))
    assert same >= 0.98 * len(paragraphs)


def test_jsonl_fallback_without_txt(data_dir: Path, tmp_path: Path) -> None:
    if not (data_dir / ds.WIKITEXT_PARAGRAPHS).is_file():
        pytest.skip("no shipped WikiText .jsonl")
    (tmp_path / "wikipedia").mkdir()
    for name in (ds.WIKITEXT_ARTICLES, ds.WIKITEXT_PARAGRAPHS):
        (tmp_path / name).symlink_to(data_dir / name)
    from_jsonl = ds.load_wikitext_paragraphs(20, seed=5, data_dir=tmp_path)
    from_txt = ds.load_wikitext_paragraphs(20, seed=5, data_dir=data_dir)
    assert from_jsonl == from_txt
    assert len(ds.load_wikitext_articles(data_dir=tmp_path)) == 60


def test_resolve_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(ds.DATA_DIR_ENV, str(tmp_path))
    assert ds.resolve_data_dir() == tmp_path.resolve()
    assert ds.resolve_data_dir(tmp_path / ".") == tmp_path.resolve()
    monkeypatch.setenv(ds.DATA_DIR_ENV, str(tmp_path / "missing"))
    with pytest.raises(ds.DataNotFoundError, match=ds.DATA_DIR_ENV):
        ds.resolve_data_dir()
    with pytest.raises(ds.DataNotFoundError, match="not a directory"):
        ds.resolve_data_dir(tmp_path / "nope")
    monkeypatch.delenv(ds.DATA_DIR_ENV)
    nested = tmp_path / "repo" / "sub"
    nested.mkdir(parents=True)
    (tmp_path / "shared" / "data").mkdir(parents=True)
    monkeypatch.chdir(nested)
    assert ds.resolve_data_dir() == (tmp_path / "shared" / "data").resolve()
