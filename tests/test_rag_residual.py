"""The best rows of a search are rescored with their int8 rounding residual.

At a million rows a question's 10th and 11th best rows are ~7e-4 apart, about
the int8 rounding error, so int8 scores swap near-ties: recall@10 against
exact float32 could not pass ~0.98 whatever the prefilter did
(benchmarks/bench_search.py). Schema 3 keeps, per vector, what rounding lost
as 4-bit codes (quant.residual_codes), read only for a search's best rows.
"""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from datasette_llm_rag.indexer import _write_batch
from datasette_llm_rag.quant import (
    RESIDUAL_FORMAT,
    dequantize,
    quantize,
    residual_codes,
    residual_values,
)
from datasette_llm_rag.sidecar import MIGRATIONS, open_sidecar
from datasette_llm_rag.store import RagIndex
from datasette_llm_rag.textbuild import text_hash

from .rag_helpers import write_vectors

DIMS = 64


@pytest.mark.parametrize("dims", [384, 7])
def test_residual_codes_recover_what_rounding_lost(dims):
    rng = np.random.default_rng(dims)
    v = rng.normal(size=(500, dims)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    q8, scale = quantize(v)
    packed = residual_codes(v, q8, scale)
    assert packed.dtype == np.uint8 and packed.shape == (500, (dims + 1) // 2)
    # plain numpy: the nibbles, low first, minus 8, in steps of scale/14
    nibbles = np.stack([packed & 15, packed >> 4], axis=2).reshape(500, -1)[:, :dims].astype(np.int64) - 8
    assert nibbles.min() >= -7 and nibbles.max() <= 7
    expected = np.rint((v - q8 * scale[:, None]) * 14 / scale[:, None]).clip(-7, 7)
    assert (nibbles == expected).all()
    assert np.allclose(residual_values(packed, dims), nibbles / 14, atol=1e-7)
    back = (q8 + residual_values(packed, dims)) * scale[:, None]
    int8_error = np.abs(v - dequantize(q8, scale)).max()
    assert np.abs(v - back).max() <= scale.max() / 28 * 1.001 < int8_error / 5


def _near_ties(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows whose cosines with the queries differ by less than int8 rounding:
    small perturbations of a few directions (as a million rows crowd a
    question's top ten)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(4, DIMS))
    docs = centres[rng.integers(0, 4, n)] + 0.1 * rng.normal(size=(n, DIMS))
    queries = centres[rng.integers(0, 4, 30)] + 0.3 * rng.normal(size=(30, DIMS))
    docs /= np.linalg.norm(docs, axis=1, keepdims=True)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    return docs.astype(np.float32), queries.astype(np.float32)


def _recall(index: RagIndex, docs: np.ndarray, queries: np.ndarray) -> float:
    got = []
    for q in queries:
        truth = set((np.argsort(-(docs @ q))[:10] + 1).tolist())  # entry ids start at 1
        hits = index.search_vector(q, 10)
        got.append(len({h.entry_id for h in hits} & truth) / 10)
    return float(np.mean(got))


@pytest.fixture(scope="module")
def ties(tmp_path_factory):
    docs, queries = _near_ties(6000, 1)
    path = str(tmp_path_factory.mktemp("residual") / "ties.llm-rag.db")
    write_vectors(path, docs)
    return path, docs, queries


@pytest.mark.parametrize("exact_limit", [20_000, 1000], ids=["exact-int8", "prefilter"])
def test_rescoring_the_best_rows_orders_near_ties_as_float32_does(ties, exact_limit):
    path, docs, queries = ties
    shipped = RagIndex(path, exact_limit=exact_limit)
    before = RagIndex(path, exact_limit=exact_limit, refine=0)  # int8 scores only
    try:
        assert shipped._current().residual and shipped._current().exact == (exact_limit > len(docs))
        with_residual, int8_only = _recall(shipped, docs, queries), _recall(before, docs, queries)
        # measured (10th and 11th best ~1.3e-4 apart): 0.983 with residuals, 0.797 with int8 alone
        assert with_residual >= 0.97
        assert int8_only <= with_residual - 0.1
        for q in queries[:5]:  # the scores shown are float32's to within a fifth of int8's error
            exact = {h.entry_id: float(docs[h.entry_id - 1] @ q) for h in shipped.search_vector(q, 10)}
            err = max(abs(h.vector_score - exact[h.entry_id]) for h in shipped.search_vector(q, 10))
            err8 = max(abs(h.vector_score - float(docs[h.entry_id - 1] @ q)) for h in before.search_vector(q, 10))
            assert err < 2e-4 and err < err8 / 4
    finally:
        shipped.close()
        before.close()


def test_a_schema_2_sidecar_is_searched_as_before_and_upgraded_in_place(tmp_path):
    docs, queries = _near_ties(3000, 2)
    path = str(tmp_path / "old.llm-rag.db")
    write_vectors(path, docs)
    new = RagIndex(path, refine=0)
    expected = [[h.entry_id for h in new.search_vector(q, 10)] for q in queries]
    new.close()
    # What schema 2 wrote: no r4 column, no residual in meta.
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("alter table vectors drop column r4")
    conn.execute("delete from meta where key = 'residual'")
    conn.execute("pragma user_version = 2")
    conn.close()
    old = RagIndex(path)  # read-only, as the web side opens it
    assert not old._current().residual
    assert [[h.entry_id for h in old.search_vector(q, 10)] for q in queries] == expected
    old.close()
    # A refresh opens it for writing: migrated in place, old rows keep no
    # residual (scored from int8 alone), new rows get one.
    side = open_sidecar(path)
    assert side.execute("pragma user_version").fetchone()[0] == len(MIGRATIONS)
    assert side.execute("select value from meta where key = 'residual'").fetchone()[0] == RESIDUAL_FORMAT
    assert side.execute("select count(*) from vectors where r4 is null").fetchone()[0] == len(docs)
    extra = np.random.default_rng(3).normal(size=(5, DIMS)).astype(np.float32)  # unlike the old rows
    extra /= np.linalg.norm(extra, axis=1, keepdims=True)
    items = [("new", ("docs", f"[{len(docs) + 1 + j}]", 0, f"new {j}", text_hash(f"new {j}"), None)) for j in range(5)]
    _write_batch(side, len(docs) + 1, items, extra)
    assert side.execute("select count(*) from vectors where r4 is not null").fetchone()[0] == 5
    side.close()
    mixed = RagIndex(path)
    assert mixed._current().residual
    hits = mixed.search_vector(extra[0], 10)
    assert hits[0].entry_id == len(docs) + 1 and abs(hits[0].vector_score - 1.0) < 5e-5
    mixed.close()
