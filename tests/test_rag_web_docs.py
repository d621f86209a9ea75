"""The README's RAG web section matches the code: config keys are read, routes exist."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from datasette_llm_rag import register_routes
from datasette_llm_rag.jobs import DEFAULT_TIMEOUT
from datasette_llm_rag.ragconfig import parse_rag_config
from datasette_llm_rag.retrieval import (
    DEFAULT_MAX_QUESTION_CHARS,
    DEFAULT_MIN_SCORE,
    extra_setting,
    max_question_chars,
    min_score,
)

README = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")


def block(name: str) -> str:
    m = re.search(r"<!-- docs-test: " + re.escape(name) + r" -->\s*\n```[a-z]*\n(.*?)\n```", README, re.S)
    assert m, f"README has no code block tagged docs-test: {name}"
    return m.group(1)


def test_documented_rag_keys_are_read():
    rag = yaml.safe_load(block("rag-web-config"))["plugins"]["datasette-llm-newsroom"]["rag"]
    config = parse_rag_config(rag)
    assert min_score(config) == rag["min_score"]
    assert max_question_chars(config) == rag["max_question_chars"]
    assert extra_setting(config, "index_timeout", DEFAULT_TIMEOUT) == rag["index_timeout"]
    # the documented values are the defaults
    assert (rag["min_score"], rag["max_question_chars"], rag["index_timeout"]) == (
        DEFAULT_MIN_SCORE, DEFAULT_MAX_QUESTION_CHARS, DEFAULT_TIMEOUT)
    assert "articles" in config.databases["newsroom"].tables


def test_documented_routes_exist():
    section = README.split("## Asking questions of your tables", 1)[1]
    paths = re.findall(r"`(?:GET |POST )?(/-/[^` ?]+)", section)
    assert len(paths) >= 8
    routes = [re.compile(pattern) for pattern, _view in register_routes(None)]
    examples = {"<db>": "news", "<table>": "articles", "<pk path>": "1",
                "<answer_id>": "rag-" + "0" * 32, "<id>": "rag-" + "0" * 32}
    for path in paths:
        for key, value in examples.items():
            path = path.replace(key, value)
        variants = [path.replace("[.json]", "")]
        if "[.json]" in path:
            variants.append(path.replace("[.json]", ".json"))
        for variant in variants:
            assert any(r.match(variant) for r in routes), variant
