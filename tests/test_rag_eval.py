"""Evaluation: metric arithmetic on hand-computed cases, and an end-to-end run on a tiny BEIR set."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from datasette_llm_rag.evaluate import (
    CachingEmbedder,
    EvalSettings,
    evaluate,
    format_table,
    load_qrels,
    mrr_at,
    ndcg_at,
    recall_at,
    score_run,
)

from .fakes import HashEmbeddingModel


def test_metrics_hand_computed():
    ranked = ["d3", "d1", "d5", "d2"]
    qrels = {"d1": 1, "d2": 2, "d9": 1}
    # DCG: d1 at position 2 (gain 1), d2 at position 4 (gain 2); ideal order 2, 1, 1
    dcg = 1 / math.log2(3) + 2 / math.log2(5)
    idcg = 2 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4)
    assert ndcg_at(ranked, qrels, 10) == pytest.approx(dcg / idcg)
    assert ndcg_at(ranked, qrels, 10) == pytest.approx(0.47664, abs=1e-4)
    assert ndcg_at(ranked, qrels, 1) == 0.0
    assert recall_at(ranked, qrels, 10) == pytest.approx(2 / 3)
    assert recall_at(ranked, qrels, 2) == pytest.approx(1 / 3)
    assert mrr_at(ranked, qrels) == 0.5
    assert mrr_at(["x"], qrels) == 0.0
    perfect = ["d2", "d1", "d9"]
    assert ndcg_at(perfect, qrels) == pytest.approx(1.0)
    run = {"q1": ranked, "q2": perfect, "unjudged": ["d1"]}
    scores = score_run(run, {"q1": qrels, "q2": qrels})
    assert scores["queries"] == 2
    assert scores["mrr@10"] == pytest.approx((0.5 + 1.0) / 2)
    assert scores["recall@10"] == pytest.approx((2 / 3 + 1) / 2)


def _write_beir(tmp_path):
    topics = {
        "harbour": "The harbour dredging contract went to a firm with ties to the mayor",
        "school": "School lunch prices rose for the third year in a row",
        "police": "Police overtime spending doubled after the new union contract",
        "water": "Lead levels in drinking water exceeded federal limits in two districts",
        "transit": "The transit authority cut night bus routes to save money",
    }
    corpus = []
    for i, (topic, text) in enumerate(topics.items()):
        corpus.append({"_id": f"d{i}", "title": topic.title(), "text": text})
        corpus.append({"_id": f"x{i}", "title": "Filler", "text": f"Unrelated minutes of meeting {i} about procedure"})
    queries = [
        {"_id": "q0", "text": "who won the harbour dredging contract"},
        {"_id": "q1", "text": "school lunch prices"},
        {"_id": "q2", "text": "police overtime union"},
        {"_id": "q3", "text": "lead in drinking water"},
        {"_id": "q4", "text": "night bus routes cut"},
    ]
    (tmp_path / "corpus.jsonl").write_text("\n".join(json.dumps(d) for d in corpus))
    (tmp_path / "queries.jsonl").write_text("\n".join(json.dumps(q) for q in queries))
    (tmp_path / "qrels.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "\n".join(f"q{i}\td{i}\t1" for i in range(5)) + "\n"
    )
    return [str(tmp_path / n) for n in ("corpus.jsonl", "queries.jsonl", "qrels.tsv")]


def test_load_qrels_skips_header(tmp_path):
    _c, _q, qrels = _write_beir(tmp_path)
    loaded = load_qrels(qrels)
    assert loaded["q3"] == {"d3": 1} and "query-id" not in loaded


def test_evaluate_end_to_end_with_cache(tmp_path):
    corpus, queries, qrels = _write_beir(tmp_path)
    cache = str(tmp_path / "cache.npz")
    embedder = CachingEmbedder(HashEmbeddingModel(), cache)
    [result] = evaluate(corpus, queries, qrels, embedder, settings_list=[EvalSettings(rrf_k=10)])
    assert result.documents == 10 and result.queries == 5
    for method in ("vector", "fts", "fts5", "hybrid"):
        m = result.metrics[method]
        assert m["recall@100"] == 1.0 and m["mrr@10"] >= 0.8, (method, m)
    # the in-memory ranking is FTS5's own
    assert result.metrics["fts"] == result.metrics["fts5"]
    assert "| hybrid (RRF) |" in format_table(result)
    assert "SQLite FTS5 bm25()" in format_table(result)
    first = embedder.embedded
    assert first == 15  # 10 documents + 5 queries
    embedder.save()
    again = CachingEmbedder(HashEmbeddingModel(), cache)
    evaluate(corpus, queries, qrels, again, limit=2)
    assert again.embedded == 0  # everything came from the cache
    other_model = CachingEmbedder(HashEmbeddingModel("other"), cache)
    assert other_model.cache == {}  # a cache is never used for another model


def _local_model():
    from datasette_llm_core.embeddings import local_minilm

    if local_minilm.missing_dependencies():
        pytest.skip("local MiniLM dependencies not installed")
    try:
        local_minilm.default_model_path()
    except Exception as e:  # pragma: no cover - depends on the environment
        pytest.skip(f"local model not available: {e}")
    return local_minilm.LocalMiniLM()


@pytest.mark.slow
def test_evaluate_with_real_local_model(tmp_path):
    model = _local_model()
    corpus, queries, qrels = _write_beir(tmp_path)
    [result] = evaluate(corpus, queries, qrels, CachingEmbedder(model))
    # real semantic vectors put every judged document first on this easy set
    assert result.metrics["vector"]["mrr@10"] == 1.0
    assert result.metrics["hybrid"]["ndcg@10"] >= 0.9
    vec = model.embed_sync(["harbour"])[0]
    assert vec.shape == (384,) and np.linalg.norm(vec) == pytest.approx(1.0, abs=1e-3)


SCIFACT = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "scifact-dev")


def test_scifact_files_parse_when_present():
    if not os.path.exists(os.path.join(SCIFACT, "qrels_train.tsv")):
        pytest.skip("../shared/data/scifact-dev not present")
    qrels = load_qrels(os.path.join(SCIFACT, "qrels_train.tsv"))
    assert len(qrels) > 500 and all(all(g > 0 for g in d.values()) for d in qrels.values())
