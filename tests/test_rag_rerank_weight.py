"""The cosine prior of the reranker applies only to the embedding models it was tuned on."""
from datasette_llm_rag.rerank import DEFAULT_VECTOR_WEIGHT, combined_logit, vector_weight_for


def test_tuned_local_models_get_the_cosine_prior():
    assert vector_weight_for("bge-small-en-v1.5", None) == DEFAULT_VECTOR_WEIGHT
    assert vector_weight_for("all-MiniLM-L6-v2", None) == DEFAULT_VECTOR_WEIGHT


def test_other_models_rank_on_the_cross_encoder_alone_unless_configured():
    # a hosted model's relevant rows can sit at cosine 0.3: a prior centred on 0.5
    # would push every one of them under the relevance line
    assert vector_weight_for("text-embedding-3-small", None) == 0.0
    assert combined_logit(1.2, 0.3, vector_weight_for("text-embedding-3-small", None)) == 1.2
    assert vector_weight_for("text-embedding-3-small", 4.0) == 4.0
    assert vector_weight_for("bge-small-en-v1.5", 0.0) == 0.0
