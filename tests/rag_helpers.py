"""Shared helpers for the RAG engine tests (source databases, configs)."""

from __future__ import annotations

import sqlite3

import numpy as np

from datasette_llm_core.models import EmbeddingModel


def make_db(path, articles=(), notes=()):
    conn = sqlite3.connect(path)
    conn.execute("create table articles (id integer primary key, title text, body text)")
    conn.execute("create table notes (body text)")  # rowid table
    conn.executemany("insert into articles values (?, ?, ?)", list(articles))
    conn.executemany("insert into notes (body) values (?)", [(n,) for n in notes])
    conn.commit()
    conn.close()
    return str(path)


def config(**table_overrides):
    articles = {"columns": ["title", "body"], "title_column": "title"}
    articles.update(table_overrides)
    return {"databases": {"news": {"tables": {"articles": articles, "notes": {}}}}}


def embedded_count(model) -> int:
    return sum(n for _kind, n in model.calls)


class TableVectors(EmbeddingModel):
    """Returns preset vectors looked up by text: lets tests control geometry."""

    provider = "test"

    def __init__(self, vectors: dict[str, np.ndarray], model_id: str = "preset"):
        self.model_id = model_id
        self.vectors = vectors
        self.dimensions = len(next(iter(vectors.values())))

    async def embed(self, texts, *, kind):
        return np.stack([self.vectors[t] for t in texts]).astype(np.float32)


def write_vectors(path: str, docs: np.ndarray, *, block: int = 2000) -> None:
    """A sidecar at ``path`` holding ``docs`` (one row of table ``docs`` each, text
    ``doc N``) written by the indexer's own batch writer, ``block`` rows a transaction."""
    from datasette_llm_rag.indexer import _write_batch
    from datasette_llm_rag.sidecar import init_meta, open_sidecar
    from datasette_llm_rag.textbuild import text_hash

    side = open_sidecar(path, create=True)
    side.execute("begin")
    init_meta(side, "test-model", docs.shape[1])
    side.execute("commit")
    next_id = 1
    for start in range(0, len(docs), block):
        rows = docs[start : start + block]
        items = [
            ("new", ("docs", f"[{next_id + j}]", 0, f"doc {next_id + j}", text_hash(f"doc {next_id + j}"), None))
            for j in range(len(rows))
        ]
        next_id = _write_batch(side, next_id, items, rows)
    side.close()
