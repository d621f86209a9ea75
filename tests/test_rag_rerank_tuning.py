"""The fusion and rerank settings tuned for bge-small on SciFact and the
multi-table benchmark (docs/rag-evaluation.md, "Rerank tuned for bge-small"):
the question box fuses with the index model's settings unless configured, and
the cross-encoder reads a row's title line with the passage that matched."""

from __future__ import annotations

from datasette_llm_rag.fusion import DEFAULT_FUSION, fusion_for
from datasette_llm_rag.ragconfig import parse_rag_config
from datasette_llm_rag.rerank import RerankSettings, best_passage, rerank, reranker_passage

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


def test_reranker_reads_the_title_line_and_the_passage_that_matched():
    text = TITLE + "\n" + BODY
    read = reranker_passage(QUESTION, text, TITLE, 300)
    assert read.startswith(TITLE + "\n")
    assert "hip fractures" in read  # the matching sentence, not the start of the body
    assert read[len(TITLE) + 1:] == best_passage(QUESTION, BODY, 300)
    # a title that is not the start of the text (a speech's id) is not put in front
    speech = reranker_passage(QUESTION, text, "2016-014", 300)
    assert speech == best_passage(QUESTION, text, 300) and not speech.startswith("2016-014")
    # short rows are read whole
    assert reranker_passage(QUESTION, "Issue: DACA.", "Issue", 300) == "Issue: DACA."


def test_rerank_scores_what_reranker_passage_gives_and_shows_the_matching_snippet():
    class Row:
        def __init__(self, title, text, cos):
            self.title, self.text, self.vector_score = title, text, cos

    rows = [Row(TITLE, TITLE + "\n" + BODY, 0.8), Row("Other", "Other\n" + "Unrelated text. " * 60, 0.7)]
    seen = []

    def score(question, passages):
        seen.extend(passages)
        return [1.0 if "fracture" in p else -1.0 for p in passages]

    settings = RerankSettings(depth=2, max_tokens=128, vector_weight=0.0)
    ranked = rerank(QUESTION, rows, score, settings)
    assert seen[0].startswith(TITLE + "\n") and seen[1].startswith("Other\n")
    assert settings.reranker_chars == 640  # 5 characters per word piece of the budget
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
