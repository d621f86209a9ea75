"""What a reporter reads in search results and on the similar-rows page: table
titles from metadata, row labels, similarity in words (raw numbers only on
hover), strong matches before weaker ones."""

from __future__ import annotations

import html
import re

import pytest
from datasette.app import Datasette

from datasette_llm_core import permissions as P
from datasette_llm_rag import views
from datasette_llm_rag.display import relevance, split_strong_weak
from datasette_llm_rag.retrieval import Retrieval, RowHit

from .conftest import wait_for
from .rag_web_helpers import cookies, make_source, parse_sse, post_json

TITLES = {"articles": "Council news articles", "places": "Places in town"}


def _rag(tmp_path) -> dict:
    return {
        "sidecar_dir": str(tmp_path / "sidecars"),
        "embedding_model": "hash-embed",
        "min_score": 0.3,
        "databases": {"news": {"tables": {
            # no title_column: the label comes from Datasette's label column ("title")
            "articles": {"columns": ["title", "body"]},
            # no title_column: the label comes from label_column in metadata
            "places": {"template": "{name}: {description}"},
            "memos": {"columns": ["title", "body"], "title_column": "title"},
        }}},
    }


@pytest.fixture
async def ds(tmp_path, fake_models):
    path = make_source(tmp_path / "news.db")
    # a state file, not ":memory:": index jobs are keyed by the state database path
    plugin = {"state_database": str(tmp_path / "state.db"), "rag": _rag(tmp_path)}
    tables_meta = {t: {"title": title} for t, title in TITLES.items()}
    label = {"places": {"label_column": "name"}}
    if P.IS_V1:  # titles are metadata, label_column is configuration
        datasette = Datasette(
            [path], metadata={"title": "Site title", "databases": {"news": {"tables": tables_meta}}},
            config={"databases": {"news": {"tables": label}},
                    "plugins": {"datasette-llm-newsroom": plugin}})
    else:
        merged = {t: {**tables_meta.get(t, {}), **label.get(t, {})} for t in ("articles", "places")}
        datasette = Datasette([path], metadata={"title": "Site title",
                                                "databases": {"news": {"tables": merged}},
                                                "plugins": {"datasette-llm-newsroom": plugin}})
    await datasette.invoke_startup()
    response = await post_json(datasette, "/-/llm-rag/index/news", {}, "root")
    assert response.status_code == 302, response.text

    async def finished():
        r = await datasette.client.get("/-/llm-rag/index/news.json", cookies=cookies(datasette, "root"))
        job = r.json()["job"]
        return job if job and job["status"] not in ("queued", "running") else None

    assert (await wait_for(finished))["status"] == "done"
    return datasette


def test_relevance_words_and_numbers():
    # not reranked: the cosine does not order the list, so it is not shown as a number
    words, numbers = relevance(0.7234, 3, 0.0328)
    assert words == "close in meaning · contains your words"
    assert "0.723" in numbers and "keyword rank 3" in numbers and "0.0328" in numbers
    assert relevance(None, 1)[0] == "contains your words"
    # reranked: the calibrated score orders the list and is shown
    assert relevance(-0.2, None, 0.01, 0.004)[0] == "relevance 0%"
    strong, weak = split_strong_weak([{"n": 1, "relevant": False}, {"n": 2, "relevant": True},
                                      {"n": 3, "relevant": False}])
    assert [r["n"] for r in strong] == [2] and [r["n"] for r in weak] == [1, 3]


def _results(page_text: str) -> str:
    start = page_text.index('id="llm-rag-results"')
    return page_text[start:page_text.index("</section>", start)]


async def test_search_page_shows_titles_labels_and_plain_similarity(ds):
    r = await ds.client.get("/-/llm-ask/news?q=bridge+repairs+budget", cookies=cookies(ds, "root"))
    assert r.status_code == 200
    results = html.unescape(_results(r.text))
    # the row's label (from the title column) is the link text; the table's title follows
    assert re.search(r'<a href="/news/articles/1">Bridge repairs delayed</a>', results), results
    assert "in Council news articles" in results
    # internal scores are not shown as text, only in the tooltip
    visible = re.sub(r'title="[^"]*"', "", results)
    assert not re.search(r"score \d", visible) and "0.0" not in visible
    # the question box reranks: the reranker's calibrated score is what is shown
    assert "relevance " in visible and "%" in visible
    assert re.search(r'title="reranker score [0-9.]+ \(orders the list\); cosine similarity', results)
    # no "articles: ..." raw table names as labels
    assert "articles:" not in visible
    # the table filter uses titles too
    assert "Council news articles</label>" in r.text.replace("\n", "")


async def test_search_json_rows_are_described(ds):
    r = await ds.client.get("/-/llm-rag/news/search.json?q=river+park", cookies=cookies(ds, "root"))
    rows = {row["table"]: row for row in r.json()["rows"]}
    assert rows["places"]["label"] == "River park"  # label_column from metadata
    assert rows["places"]["table_title"] == "Places in town"
    assert rows["memos"]["table_title"] == "memos"  # no metadata title: the name
    assert rows["memos"]["label"].startswith("Secret")  # the index's stored title
    # search.json does not rerank by default: words, the numbers in the detail
    assert rows["places"]["relevance"] in ("close in meaning", "close in meaning · contains your words")
    assert "fused rank score" in rows["places"]["relevance_detail"]


async def test_ask_json_rows_are_described(ds, scripted_model):
    scripted_model.enqueue("The repairs were delayed [1].")
    r = await post_json(ds, "/-/llm-rag/news/ask.json", {"q": "bridge repairs budget"}, "root")
    body = r.json()
    assert r.status_code == 200 and body["rows"], body
    assert all("label" in row and "table_title" in row for row in body["rows"])
    assert body["cited_rows"] and all(row["label"] for row in body["cited_rows"])
    # streamed: the sources and done events carry the same descriptions
    scripted_model.enqueue("The repairs were delayed [1].")
    streamed = await post_json(ds, "/-/llm-rag/news/ask.json",
                               {"q": "bridge repairs budget", "stream": True}, "root")
    events = parse_sse(streamed.text)
    sources = next(e for e in events if e.get("event") == "sources")
    assert sources["rows"] and all(row.get("table_title") for row in sources["rows"])
    done = next(e for e in events if e.get("event") == "done")
    assert done["cited_rows"] and all(row.get("label") for row in done["cited_rows"])


def _hit(n, table, pk, title, relevant, vector_score):
    return RowHit(n=n, database="news", table=table, pk=str(pk), pk_values=[pk], title=title,
                  text=f"text {n}", url=f"/news/{table}/{pk}", score=0.03, vector_score=vector_score,
                  vector_rank=n, fts_rank=None, relevant=relevant)


async def test_weaker_matches_are_grouped_after_strong_ones(ds, monkeypatch):
    async def fake_retrieve(datasette, actor, database, question, **kwargs):
        # retrieval order interleaves them; the page must not
        return Retrieval(database, question, ["articles", "places"], hits=[
            _hit(1, "articles", 2, "Weak lunch row", False, 0.1),
            _hit(2, "articles", 1, "Strong bridge row", True, 0.8),
            _hit(3, "places", "river-park", None, False, 0.2),
            _hit(4, "articles", 4, "Strong library row", True, 0.7),
        ])

    monkeypatch.setattr(views, "retrieve", fake_retrieve)
    r = await ds.client.get("/-/llm-ask/news?q=anything", cookies=cookies(ds, "root"))
    results = _results(r.text)
    pos = {name: results.index(name) for name in
           ("Strong bridge row", "Strong library row", "Weaker matches", "Weak lunch row",
            "River park")}
    assert pos["Strong bridge row"] < pos["Strong library row"] < pos["Weaker matches"]
    assert pos["Weaker matches"] < pos["Weak lunch row"] < pos["River park"]
    # only weak matches: say so, still list them under the heading
    async def only_weak(datasette, actor, database, question, **kwargs):
        return Retrieval(database, question, ["articles"],
                         hits=[_hit(1, "articles", 2, "Weak lunch row", False, 0.1)])

    monkeypatch.setattr(views, "retrieve", only_weak)
    r = await ds.client.get("/-/llm-ask/news?q=anything", cookies=cookies(ds, "root"))
    results = _results(r.text)
    assert "No row is a close match" in results and "Weaker matches" in results


async def test_similar_page_names_the_row_by_its_label(ds):
    r = await ds.client.get("/-/llm-rag/similar/news/articles/1", cookies=cookies(ds, "root"))
    assert r.status_code == 200
    h1 = re.search(r"<h1>(.*?)</h1>", r.text, re.S).group(1)
    assert 'href="/news/articles/1">Bridge repairs delayed</a>' in h1
    assert "articles: 1" not in r.text
    assert "Council news articles, row" in r.text  # the key is secondary
    assert "<title>Rows similar to Bridge repairs delayed</title>" in r.text
    # text primary key and an explicit label_column
    r = await ds.client.get("/-/llm-rag/similar/news/places/river-park", cookies=cookies(ds, "root"))
    assert r.status_code == 200
    assert 'href="/news/places/river-park">River park</a>' in r.text
    # hits are named by label too, with the table's title
    results = html.unescape(r.text[r.text.index('class="llm-rag-results"'):])
    assert ">Bridge repairs delayed</a>" in results or ">Library hours</a>" in results
    assert "in Council news articles" in results
    j = await ds.client.get("/-/llm-rag/similar/news/articles/1.json", cookies=cookies(ds, "root"))
    assert all(row["label"] and row["table_title"] for row in j.json()["rows"])


async def test_question_box_names_the_table_by_its_title(ds):
    page = await ds.client.get("/news/articles", cookies=cookies(ds, "root"))
    assert page.status_code == 200
    if P.IS_V1:
        assert "Ask about Council news articles</label>" in page.text
    else:  # 0.65: the box script gets the title in its URL
        assert "title=Council+news+articles" in html.unescape(page.text)


async def test_index_page_uses_table_titles_not_the_sites_title(ds):
    page = await ds.client.get("/-/llm-rag/index", cookies=cookies(ds, "root"))
    assert '<a href="/-/llm-rag/index/news">news</a>' in page.text  # the database has no title
    assert '<a href="/news/articles">Council news articles</a> <span class="llm-rag-key">articles</span>' \
        in page.text


async def test_retrieval_itself_puts_relevant_rows_first_and_renumbers(ds, monkeypatch):
    from datasette_llm_rag import retrieval
    from datasette_llm_rag.store import Hit, RagIndex

    def fused(self, question, qvec, k, tables=None, rrf_k=10, **kw):
        # fusion ranked a weak row (low similarity, no word match) first
        return [
            Hit("articles", [2], 0, "lunch", "Weak", 0.05, 1, None, 0.1, None, entry_id=2),
            Hit("articles", [1], 0, "bridge", "Strong", 0.04, 2, 1, 0.9, 3.0, entry_id=1),
        ]

    monkeypatch.setattr(RagIndex, "search_hybrid", fused)
    result = await retrieval.retrieve(ds, {"id": "root"}, "news", "bridge")
    # (titles and text are the live rows' since #10.10: compare by key)
    assert [(h.pk_values, h.relevant, h.n) for h in result.hits] == [([1], True, 1), ([2], False, 2)]
