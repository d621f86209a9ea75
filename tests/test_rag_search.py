"""Search: table filter inside every method, safe FTS queries, RRF, reload, quantised search."""

from __future__ import annotations

import math
import sqlite3
import threading

import numpy as np
import pytest

from datasette_llm_rag.fusion import rrf
from datasette_llm_rag.indexer import refresh_index
from datasette_llm_rag.lexical import query_tokens, tokenize
from datasette_llm_rag.quant import dequantize, quantize
from datasette_llm_rag.store import RagIndex, forget_index, get_index

from .fakes import HashEmbeddingModel
from .rag_helpers import TableVectors, config, make_db

WORDS = "budget parks zoning harbour police school water housing transit election".split()


def _articles(n):
    return [(i, f"Story {i}", f"{WORDS[i % 10]} {WORDS[(i * 3) % 10]} report number {i}") for i in range(1, n + 1)]


def _notes(n):
    return [f"note about {WORDS[i % 10]} and {WORDS[(i + 1) % 10]}" for i in range(n)]


@pytest.fixture
async def built(tmp_path):
    db = make_db(tmp_path / "news.db", _articles(300), _notes(300))
    model = HashEmbeddingModel()
    stats = await refresh_index(db, "news", config(), model)
    return db, stats.sidecar, model


@pytest.mark.parametrize("exact_limit", [10**9, 0], ids=["exact", "binary+int8"])
async def test_table_filter_never_leaks(built, exact_limit):
    _db, side, model = built
    index = RagIndex(side, exact_limit=exact_limit)
    for query in ["note about parks", "budget report", "zoning housing water", "Story 5"]:
        q = model.embed_sync([query])[0]
        for tables, other in ((["articles"], "notes"), (["notes"], "articles")):
            results = [
                index.search_vector(q, 50, tables=tables),
                index.search_fts(query, 50, tables=tables),
                index.search_hybrid(query, q, 50, tables=tables),
                index.similar("articles", [3], 50, tables=tables),
                index.similar("notes", [3], 50, tables=tables),
            ]
            for hits in results:
                assert all(h.table == tables[0] for h in hits), (query, tables, [h.table for h in hits])
            # the filter is not vacuous: unfiltered searches do return the other table
            assert any(h.table == other for h in index.search_hybrid(query, q, 600))
        for empty in (index.search_vector(q, 5, tables=[]), index.search_fts(query, 5, tables=[]),
                      index.search_hybrid(query, q, 5, tables=[]), index.similar("articles", [3], 5, tables=[])):
            assert empty == []
    index.close()


@pytest.mark.parametrize(
    "hostile",
    ['"', 'NEAR(', "*", "AND", "OR", "NOT", 'title:parks', "^parks", 'parks"', "(((", "a-b",
     '"unterminated', "parks AND", "NEAR(parks budget, 2)", "-", "{title}: x", "\x00", "",
     "💥 emoji", "x" * 5000],
)
async def test_fts_hostile_input_never_raises(built, hostile):
    _db, side, model = built
    index = RagIndex(side)
    hits = index.search_fts(hostile, 5)
    assert isinstance(hits, list)
    hybrid = index.search_hybrid(hostile, model.embed_sync([hostile or "x"])[0], 5)
    assert isinstance(hybrid, list)


async def test_fts_operators_are_plain_words(built):
    _db, side, _model = built
    index = RagIndex(side)
    # "AND" between words does not turn into a query operator; OR-of-terms ranks both
    hits = index.search_fts("parks AND zoning", 5)
    assert hits and all(("parks" in h.text) or ("zoning" in h.text) for h in hits)
    assert all(h.fts_rank == i for i, h in enumerate(hits, 1))
    # stopwords are not indexed: a question made only of them finds nothing
    assert index.search_fts("AND", 5) == [] and index.search_fts("the of", 5) == []


def test_tokens_ignore_query_syntax():
    assert query_tokens('NEAR(a, b) "x" title:y AND z*') == ["near", "b", "x", "titl", "y", "z"]
    assert query_tokens("") == [] and query_tokens('"*()') == []
    assert query_tokens("The THE parks of Parks") == ["park"]
    assert query_tokens("the of") == []  # only stopwords: not indexed, left to the vector search
    assert tokenize("Studies of binding cells, Café") == ["studi", "bind", "cell", "cafe"]


def test_rrf_hand_computed():
    fused = rrf([["a", "b", "c"], ["c", "a", "d"]], k=10)
    expected = {
        "a": 1 / 11 + 1 / 12,
        "b": 1 / 12,
        "c": 1 / 13 + 1 / 11,
        "d": 1 / 13,
    }
    assert [item for item, _s, _r in fused] == ["a", "c", "b", "d"]
    for item, score, _ranks in fused:
        assert score == pytest.approx(expected[item])
    assert dict((i, r) for i, _s, r in fused) == {"a": [1, 2], "b": [2, None], "c": [3, 1], "d": [None, 3]}
    weighted = rrf([["a"], ["b"]], k=0, weights=[1.0, 2.0])
    assert [i for i, _s, _r in weighted] == ["b", "a"] and weighted[0][1] == pytest.approx(2.0)


async def test_hybrid_fuses_both_methods(tmp_path):
    # "alpha" is nearest by vector, "beta" is the only text match: both come back,
    # with the ranks each method gave them.
    texts = {"alpha doc": [1, 0, 0], "beta keyword doc": [0, 1, 0], "gamma doc": [0.9, 0.1, 0.4]}
    vectors = {t: np.asarray(v, np.float32) / np.linalg.norm(v) for t, v in texts.items()}
    db = make_db(tmp_path / "news.db", [(i, None, t) for i, t in enumerate(texts, 1)], [])
    cfg = {"databases": {"news": {"tables": {"articles": {"columns": ["body"]}}}}}
    stats = await refresh_index(db, "news", cfg, TableVectors(vectors))
    index = RagIndex(stats.sidecar)
    hits = index.search_hybrid("keyword", [1, 0, 0], 3, rrf_k=60, weights=(1.0, 1.0))
    by_pk = {h.pk[0]: h for h in hits}
    assert by_pk[1].vector_rank == 1 and by_pk[1].fts_rank is None
    assert by_pk[2].fts_rank == 1 and by_pk[2].vector_rank == 3
    assert by_pk[2].vector_score == pytest.approx(0.0, abs=0.01)
    assert by_pk[2].score == pytest.approx(1 / 61 + 1 / 63)
    assert hits[0].pk == [2]  # in both lists beats first in one
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


async def test_reload_when_sidecar_changes(tmp_path):
    db = make_db(tmp_path / "news.db", _articles(10), [])
    model = HashEmbeddingModel()
    stats = await refresh_index(db, "news", config(), model)
    forget_index(stats.sidecar)
    index = get_index(stats.sidecar)
    assert get_index(stats.sidecar) is index
    q = model.embed_sync(["freshly inserted kumquat"])[0]
    assert all("kumquat" not in h.text for h in index.search_vector(q, 20))
    assert index.loads == 1
    index.search_vector(q, 5)
    assert index.loads == 1  # unchanged file: no reload
    conn = sqlite3.connect(db)
    conn.execute("insert into articles values (500, 'Kumquat', 'freshly inserted kumquat')")
    conn.commit()
    conn.close()
    await refresh_index(db, "news", config(), model)
    hits = index.search_vector(q, 3)
    assert hits[0].pk == [500] and index.loads == 2
    assert index.search_fts("kumquat", 3)[0].pk == [500]
    await refresh_index(db, "news", config(), model)  # nothing changed: no new generation
    index.search_vector(q, 3)
    assert index.loads == 2
    forget_index(stats.sidecar)


async def test_concurrent_searches_share_one_index(built):
    _db, side, model = built
    index = RagIndex(side, exact_limit=0)
    queries = model.embed_sync([f"{w} report" for w in WORDS])
    expected = [[h.entry_id for h in index.search_vector(q, 5)] for q in queries]
    errors = []

    def worker():
        try:
            for _ in range(20):
                for q, want in zip(queries, expected):
                    assert [h.entry_id for h in index.search_vector(q, 5)] == want
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


async def test_similar_rows_exclude_the_row_and_group_chunks(tmp_path):
    body = "harbour dredging contract " * 40
    rows = [(1, "A", body), (2, "B", body + " extra"), (3, "C", "school lunch menu " * 40)]
    db = make_db(tmp_path / "news.db", rows, [])
    stats = await refresh_index(db, "news", config(columns=["body"], chunk_chars=200), HashEmbeddingModel())
    index = RagIndex(stats.sidecar)
    hits = index.similar("articles", ["1"], 5)  # pk as a URL string works too
    assert [h.pk for h in hits][:1] == [[2]]
    assert all(h.pk != [1] for h in hits)
    assert len({tuple(h.pk) for h in hits}) == len(hits)  # one hit per row
    assert index.similar("articles", [42], 5) == []


def test_quantisation_round_trip():
    rng = np.random.default_rng(0)
    v = rng.normal(size=(200, 384)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    q8, scale = quantize(v)
    assert q8.dtype == np.int8 and q8.shape == v.shape and scale.shape == (200,)
    back = dequantize(q8, scale)
    assert np.abs(back - v).max() <= scale.max() / 2 + 1e-7
    assert np.abs((back @ v[0]) - (v @ v[0])).max() < 2e-3
    zero_q, zero_s = quantize(np.zeros((1, 4), np.float32))
    assert not zero_q.any() and np.isfinite(zero_s).all()


async def test_binary_prefilter_recall_against_exact(tmp_path):
    """The large-index path (one-bit prefilter + int8 rescoring) finds the true neighbours."""
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(40, 64))
    n = 3000
    vecs = centres[rng.integers(0, 40, n)] + 0.6 * rng.normal(size=(n, 64))
    vecs = (vecs / np.linalg.norm(vecs, axis=1, keepdims=True)).astype(np.float32)
    texts = [f"row {i}" for i in range(n)]
    db = make_db(tmp_path / "news.db", [(i, None, t) for i, t in enumerate(texts)], [])
    cfg = {"databases": {"news": {"tables": {"articles": {"columns": ["body"]}}}}}
    stats = await refresh_index(db, "news", cfg, TableVectors(dict(zip(texts, vecs))))
    index = RagIndex(stats.sidecar, exact_limit=0)
    queries = centres[rng.integers(0, 40, 50)] + 0.6 * rng.normal(size=(50, 64))
    recalls = []
    for q in queries.astype(np.float32):
        q /= np.linalg.norm(q)
        truth = set(np.argsort(-(vecs @ q))[:10].tolist())
        got = {h.pk[0] for h in index.search_vector(q, 10)}
        recalls.append(len(truth & got) / 10)
    assert np.mean(recalls) >= 0.98
    assert not index._current().exact and index._current().words  # really the binary path


def test_bm25_scores_match_the_formula():
    from datasette_llm_rag.lexical import LexicalIndex

    # doc 0: "harbour harbour budget" (3 tokens), doc 1: "budget" (1), doc 2: "school" (1)
    vocab = {"harbour": 0, "budget": 1, "school": 2}
    index = LexicalIndex(
        3, vocab, np.array([0, 0, 1, 2]), np.array([0, 1, 1, 2]),
        np.array([2, 1, 1, 1], np.uint16), np.array([3, 1, 1]),
    )
    k1, b, avg = 1.2, 0.75, 5 / 3

    def weight(tf, length):
        return tf * (k1 + 1) / (tf + k1 * (1 - b + b * length / avg))

    def idf(df):  # FTS5's: ln((N - df + 0.5) / (df + 0.5)), at least 1e-6
        return max(math.log((3 - df + 0.5) / (df + 0.5)), 1e-6)

    pos, scores = index.search("harbour budget", 10)
    assert pos.tolist() == [0, 1]
    assert scores[0] == pytest.approx(idf(1) * weight(2, 3) + idf(2) * weight(1, 3), rel=2e-3)
    assert scores[1] == pytest.approx(idf(2) * weight(1, 1), rel=2e-3)
    pos, _ = index.search("harbour budget", 10, mask=np.array([False, True, True]))
    assert pos.tolist() == [1]
    assert index.search("nothing here", 10)[0].tolist() == []


def test_vectorised_rrf_matches_reference():
    from datasette_llm_rag.fusion import rrf_arrays

    rng = np.random.default_rng(3)
    for _ in range(50):
        a = rng.choice(40, size=rng.integers(0, 25), replace=False)
        b = rng.choice(40, size=rng.integers(0, 25), replace=True)  # duplicates allowed
        for k, w in ((60, (1.0, 1.0)), (5, (1.0, 1.5))):
            ref = rrf([a.tolist(), b.tolist()], k=k, weights=w)
            ids, scores, ranks = rrf_arrays([a, b], k=k, weights=w)
            assert ids.tolist() == [i for i, _s, _r in ref]
            assert np.allclose(scores, [s for _i, s, _r in ref])
            assert [[x or None for x in r] for r in ranks.tolist()] == [r for _i, _s, r in ref]


def test_bm25_reads_each_terms_strongest_postings_first():
    from datasette_llm_rag.lexical import LexicalIndex

    # "budget" in 5 docs with counts 1..5 (same length): strongest = highest count
    index = LexicalIndex(
        5, {"budget": 0}, np.arange(5), np.zeros(5, np.int64),
        np.array([1, 2, 3, 4, 5], np.uint16), np.full(5, 10),
    )
    assert index.search("budget", 10, max_postings=None)[0].tolist() == [4, 3, 2, 1, 0]
    assert index.search("budget", 10, max_postings=2)[0].tolist() == [4, 3]
