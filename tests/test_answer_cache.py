"""The answer cache's key and setting (datasette_llm_rag/answer_cache.py), without a server."""

from __future__ import annotations

import dataclasses

from datasette_llm_rag.answer_cache import cache_key, cache_setting, done_event, normalise_question
from datasette_llm_rag.ragconfig import parse_rag_config
from datasette_llm_rag.retrieval import RowHit


def hit(n, table="articles", pk=1, text="The bridge repairs were delayed.") -> RowHit:
    return RowHit(n=n, database="news", table=table, pk=str(pk), pk_values=[pk], title="Bridge",
                  text=text, url=f"/news/{table}/{pk}", score=0.5, vector_score=0.7,
                  vector_rank=1, fts_rank=1)


def test_cache_setting():
    assert cache_setting(parse_rag_config({})) is None
    assert cache_setting(parse_rag_config({"cache_answers": False})) is None
    assert cache_setting(parse_rag_config({"cache_answers": True})) == float("inf")
    assert cache_setting(parse_rag_config({"cache_answers": 600})) == 600.0
    assert cache_setting(parse_rag_config({"cache_answers": 0})) is None
    assert cache_setting(parse_rag_config({"cache_answers": "soon"})) is None


def test_questions_match_whatever_their_case_and_spacing():
    assert normalise_question("  Why   WAS the Bridge\tclosed? ") == "why was the bridge closed?"


def test_the_key_changes_with_everything_the_model_would_be_given():
    hits = [hit(1), hit(2, pk=2, text="Library hours.")]
    base = cache_key("news", "Why?", "gpt", "3:17", hits)
    assert cache_key("news", "  why? ", "gpt", "3:17", hits) == base
    changed = [
        cache_key("other", "Why?", "gpt", "3:17", hits),
        cache_key("news", "Why not?", "gpt", "3:17", hits),
        cache_key("news", "Why?", "claude", "3:17", hits),
        cache_key("news", "Why?", "gpt", "4:18", hits),  # the index was refreshed
        cache_key("news", "Why?", "gpt", "3:17", hits, prompt_version="answer-v9"),
        cache_key("news", "Why?", "gpt", "3:17", hits[:1]),  # a reader who retrieves fewer rows
        cache_key("news", "Why?", "gpt", "3:17", list(reversed(hits))),
        cache_key("news", "Why?", "gpt", "3:17", [hits[0], dataclasses.replace(hits[1], text="x")]),
        cache_key("news", "Why?", "gpt", "3:17", [hits[0], dataclasses.replace(hits[1], table="memos")]),
    ]
    assert base not in changed and len(set(changed)) == len(changed)


def test_a_cached_done_event_links_only_to_the_rows_retrieved_now():
    cached = {"id": "rag-" + "a" * 32, "answer": "Delayed [1], see also [3].", "cited": "[1, 3]",
              "dropped": "[]", "model_id": "gpt", "prompt_version": "answer-v1", "created_at": 1.0}
    event = done_event(cached, [hit(1)], "/-/llm-rag/answers/rag-" + "a" * 32)
    assert event["cached"] is True and event["cited"] == [1]
    assert 'href="/news/articles/1"' in event["html"] and "[3]" not in event["html"]
    assert event["cited_rows"][0]["url"] == "/news/articles/1"
