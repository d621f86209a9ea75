"""The fusion and rerank settings tuned for bge-small on SciFact and the
multi-table benchmark (docs/rag-evaluation.md, "Rerank tuned for bge-small"):
the question box fuses with the index model's settings unless configured; when
every candidate comes from one table the first-stage evidence weighs in with
the cross-encoder, across tables the cross-encoder's one scale decides."""

from __future__ import annotations

from datasette_llm_rag.fusion import DEFAULT_FUSION, fusion_for
from datasette_llm_rag.ragconfig import parse_rag_config
from datasette_llm_rag.rerank import RerankSettings, best_passage, rerank

from .test_rag_presentation import ds  # noqa: F401 - the fixture: an indexed "news" database

QUESTION = "Does vitamin D deficiency raise the risk of fractures in older adults?"
TITLE = "Vitamin D status and fracture risk in elderly women"
BODY = (
    "Background: bone health in later life depends on many factors. "
    "We followed 2,000 women aged 70 and over for five years. "
    "Methods: serum levels were measured at baseline and every year. "
    "Results: women with low vitamin D had more hip fractures (hazard ratio 1.6). "
    "Conclusion: deficiency was associated with fracture risk. " * 3
)


def test_fusion_is_chosen_per_embedding_model_and_configurable():
    assert fusion_for("bge-small-en-v1.5") == (5, (1.0, 1.0))
    assert fusion_for("all-MiniLM-L6-v2") == (10, (1.0, 1.5))
    assert fusion_for("text-embedding-3-small") == DEFAULT_FUSION == (10, (1.0, 1.5))
    assert fusion_for(None) == DEFAULT_FUSION
    assert fusion_for("bge-small-en-v1.5", rrf_k=20) == (20, (1.0, 1.0))
    assert fusion_for("bge-small-en-v1.5", fts_weight=2.0) == (5, (1.0, 2.0))
    config = parse_rag_config({"rrf_k": 7, "fts_weight": 0.5})
    assert (config.rrf_k, config.fts_weight) == (7, 0.5)
    assert parse_rag_config({}).rrf_k is None  # None: the model's own setting


def test_reranker_reads_the_best_window_at_its_budget_and_the_snippet_is_shown_at_display_size():
    class Row:
        def __init__(self, title, text, cos):
            self.title, self.text, self.vector_score, self.table = title, text, cos, "docs"

    rows = [Row(TITLE, TITLE + "\n" + BODY, 0.8), Row("Other", "Other\n" + "Unrelated text. " * 60, 0.7)]
    seen = []

    def score(question, passages):
        seen.extend(passages)
        return [1.0 if "fracture" in p else -1.0 for p in passages]

    settings = RerankSettings(depth=2, max_tokens=64, vector_weight=0.0)
    assert settings.reranker_chars == 320  # five characters per word piece of the budget
    ranked = rerank(QUESTION, rows, score, settings)
    assert seen[0] == best_passage(QUESTION, rows[0].text, 320) and "hip fractures" in seen[0]
    assert [r[0].title for r in ranked] == [TITLE, "Other"]
    assert ranked[0][2] == best_passage(QUESTION, rows[0].text, settings.passage_chars)  # the snippet


async def test_question_box_fuses_with_the_models_settings(ds, monkeypatch):  # noqa: F811
    from datasette_llm_rag import retrieval
    from datasette_llm_rag.store import RagIndex

    real = RagIndex.search_hybrid
    calls = []

    def spy(self, *args, **kwargs):
        calls.append((kwargs.get("rrf_k"), kwargs.get("weights")))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(RagIndex, "search_hybrid", spy)
    await retrieval.retrieve(ds, {"id": "root"}, "news", "bridge", rerank=False)
    assert calls[-1] == fusion_for("hash-embed")  # the test model has no tuned setting
    config = retrieval.rag_settings(ds).model_copy(update={"rrf_k": 3, "fts_weight": 2.5})
    await retrieval.retrieve(ds, {"id": "root"}, "news", "bridge", rerank=False, config=config)
    assert calls[-1] == (3, (1.0, 2.5))


class _Hit:
    def __init__(self, table, cos, fts, text="", title=None):
        self.table, self.vector_score, self.fts_rank, self.text, self.title = table, cos, fts, text, title


def test_first_stage_evidence_orders_rows_within_a_table_and_the_reranker_across():
    from datasette_llm_rag.rerank import table_evidence, table_weights_for

    weights = table_weights_for("bge-small-en-v1.5", None)
    assert weights == (110.0, 20.0, 60.0) and table_weights_for("all-MiniLM-L6-v2", None) == (0, 0, 0)
    assert table_weights_for("bge-small-en-v1.5", [0, 0, 0]) == (0.0, 0.0, 0.0)

    # one table (SciFact): the fused order's first row, close in meaning and a
    # keyword match, stays ahead of a row the cross-encoder alone likes a bit more
    docs = [_Hit("docs", 0.86, 1), _Hit("docs", 0.80, None), _Hit("docs", 0.79, 4)]
    logits = {0: 1.0, 1: 2.0, 2: -1.0}
    settings = RerankSettings(depth=3, vector_weight=10.0, table_weights=weights)
    ranked = rerank("q", docs, lambda q, ps: [logits[i] for i in range(len(ps))], settings)
    assert ranked[0][0] is docs[0]
    alone = rerank("q", docs, lambda q, ps: [logits[i] for i in range(len(ps))],
                   RerankSettings(depth=3, vector_weight=10.0))
    assert alone[0][0] is docs[1]  # without it the reranker's preference wins
    # a very large difference of the reranker (here 15 logits) still overrides the first stage
    logits[1] = 16.0
    assert rerank("q", docs, lambda q, ps: [logits[i] for i in range(len(ps))], settings)[0][0] is docs[1]

    # two tables: the first-stage evidence is not comparable across them (long
    # speech passages lead the fused order), so it is left out and the
    # reranker's one scale decides
    rows = [_Hit("speeches", 0.62, 1), _Hit("speeches", 0.60, 2), _Hit("lawsuits", 0.70, None),
            _Hit("lawsuits", 0.69, None)]
    extra = table_evidence(rows, weights, table_of=lambda h: h.table, cosine_of=lambda h: h.vector_score,
                           fts_rank_of=lambda h: h.fts_rank)
    assert extra == [0.0] * 4
    one = table_evidence(rows[:2], weights, table_of=lambda h: h.table, cosine_of=lambda h: h.vector_score,
                         fts_rank_of=lambda h: h.fts_rank)
    assert one[0] > 0 > one[1] and abs(sum(one)) < 1e-9  # centred: the reranker's level is kept
    scores = {0: -3.0, 1: -3.5, 2: 1.0, 3: 0.5}
    ranked = rerank("q", rows, lambda q, ps: [scores[i] for i in range(len(ps))],
                    RerankSettings(depth=4, vector_weight=10.0, table_weights=weights))
    assert [h.table for h, _s, _p in ranked] == ["lawsuits", "lawsuits", "speeches", "speeches"]
