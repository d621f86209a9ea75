"""``datasette llm-rag index`` / ``evaluate`` through click, with the fake embedder."""

from __future__ import annotations

import json
import sqlite3

import click
import pytest
from click.testing import CliRunner

from datasette_llm_rag.cli import register
from datasette_llm_rag.store import RagIndex

from .rag_helpers import make_db
from .test_rag_eval import _write_beir


@pytest.fixture
def cli():
    @click.group()
    def root():
        pass

    register(root)
    return root


def _metadata(tmp_path, tables=None):
    meta = {
        "plugins": {
            "datasette-llm-newsroom": {
                "state_database": str(tmp_path / "state.db"),
                "rag": {
                    "embedding_model": "hash-embed",
                    "databases": {"news": {"tables": tables or {
                        "articles": {"columns": ["title", "body"], "title_column": "title"}}}},
                },
            }
        }
    }
    path = tmp_path / "metadata.json"
    path.write_text(json.dumps(meta))
    return str(path)


def test_index_refresh_and_verify(tmp_path, cli, fake_models):
    db = make_db(tmp_path / "news.db", [(i, f"T{i}", f"body {i}") for i in range(30)], [])
    meta = _metadata(tmp_path)
    runner = CliRunner()
    result = runner.invoke(cli, ["llm-rag", "index", db, "-m", meta])
    assert result.exit_code == 0, result.output
    assert "30 added, 0 updated, 0 deleted, 0 unchanged" in result.output
    assert RagIndex(str(tmp_path / "news.llm-rag.db")).count == 30
    # embedding went through the gateway: one logged call per batch in the state db
    calls = sqlite3.connect(tmp_path / "state.db").execute(
        "select count(*), sum(items) from llm_calls where purpose = 'embed'"
    ).fetchone()
    assert calls == (1, 30)

    result = runner.invoke(cli, ["llm-rag", "index", db, "-m", meta])
    assert "0 added, 0 updated, 0 deleted, 30 unchanged" in result.output

    conn = sqlite3.connect(db)
    conn.execute("delete from articles where id = 3")
    conn.commit()
    conn.close()
    result = runner.invoke(cli, ["llm-rag", "index", db, "-m", meta, "--verify"])
    assert result.exit_code == 1 and "orphaned: 1" in result.output and "model ok: yes" in result.output
    result = runner.invoke(cli, ["llm-rag", "index", db, "-m", meta, "--table", "articles"])
    assert "0 added, 0 updated, 1 deleted" in result.output
    result = runner.invoke(cli, ["llm-rag", "index", db, "-m", meta, "--verify"])
    assert result.exit_code == 0, result.output


def test_index_errors_are_clean_messages(tmp_path, cli, fake_models):
    db = make_db(tmp_path / "news.db", [(1, "T", "b")], [])
    meta = _metadata(tmp_path, {"articels": {"columns": ["body"]}})
    result = CliRunner().invoke(cli, ["llm-rag", "index", db, "-m", meta])
    assert result.exit_code == 1
    assert "Error:" in result.output and "'articels'" in result.output and "Traceback" not in result.output

    meta = _metadata(tmp_path)
    (tmp_path / "news.llm-rag.db").write_bytes(b"garbage" * 1000)
    result = CliRunner().invoke(cli, ["llm-rag", "index", db, "-m", meta])
    assert result.exit_code == 1 and "--rebuild" in result.output


def test_sidecar_option_and_rebuild(tmp_path, cli, fake_models):
    db = make_db(tmp_path / "news.db", [(i, f"T{i}", f"body {i}") for i in range(5)], [])
    side = str(tmp_path / "idx" / "custom.db")
    meta = _metadata(tmp_path)
    result = CliRunner().invoke(cli, ["llm-rag", "index", db, "-m", meta, "--sidecar", side])
    assert result.exit_code == 0 and side in result.output
    result = CliRunner().invoke(cli, ["llm-rag", "index", db, "-m", meta, "--sidecar", side, "--rebuild"])
    assert "5 added" in result.output


def test_evaluate_command_runs(tmp_path, cli, monkeypatch):
    import datasette_llm_core.embeddings as embeddings

    from .fakes import HashEmbeddingModel

    monkeypatch.setattr(embeddings, "local_model", lambda model_id=None: HashEmbeddingModel())
    corpus, queries, qrels = _write_beir(tmp_path)
    result = CliRunner().invoke(cli, ["llm-rag", "evaluate", corpus, queries, qrels, "--limit", "3",
                                      "--no-rerank"])
    assert result.exit_code == 0, result.output
    assert "10 documents, 3 queries" in result.output and "| hybrid (RRF) |" in result.output
