"""Long texts end a sidecar write transaction before 5,000 entries do.

5,000 SciFact abstracts (~1.5 KB each) in one transaction raised indexing's
peak memory by ~130 MB against 1,000 (benchmarks/bench_index.py --memory 5183
--pool: 265 MB -> 161 MB with the character bound).
"""

from __future__ import annotations

import sqlite3

import datasette_llm_rag.indexer as indexer
from datasette_llm_rag.indexer import refresh_index

from .fakes import HashEmbeddingModel

CONFIG = {"databases": {"src": {"tables": {"docs": {"columns": ["body"]}}}}}


def _source(path: str, texts: list[str]) -> None:
    conn = sqlite3.connect(path)
    conn.execute("create table docs (id integer primary key, body text)")
    conn.executemany("insert into docs (body) values (?)", [(t,) for t in texts])
    conn.commit()
    conn.close()


def _transactions(monkeypatch) -> list[int]:
    sizes: list[int] = []
    real = indexer._write_batch

    def counting(side, next_id, items, vectors, encoder=None):
        sizes.append(len(items))
        return real(side, next_id, items, vectors, encoder)

    monkeypatch.setattr(indexer, "_write_batch", counting)
    return sizes


async def test_a_write_transaction_ends_at_the_character_bound(tmp_path, monkeypatch):
    db = str(tmp_path / "src.db")
    _source(db, [f"abstract {i} " + "word " * 300 for i in range(96)])  # ~1,500 characters each
    sizes = _transactions(monkeypatch)
    monkeypatch.setattr(indexer, "WRITE_CHARS", 20_000)
    stats = await refresh_index(db, "src", CONFIG, HashEmbeddingModel(), sidecar=str(tmp_path / "s.db"))
    assert stats.embedded == 96 and sum(sizes) == 96
    # batches of the model's size are embedded, then written once ~20,000 characters are pending
    assert len(sizes) > 1 and max(sizes) * 1500 < 20_000 + HashEmbeddingModel.batch_size * 1520


async def test_short_rows_still_share_one_transaction(tmp_path, monkeypatch):
    db = str(tmp_path / "src.db")
    _source(db, [f"row {i} council budget" for i in range(300)])
    sizes = _transactions(monkeypatch)
    await refresh_index(db, "src", CONFIG, HashEmbeddingModel(), sidecar=str(tmp_path / "s.db"))
    assert sizes == [300]
