"""Retrieval quality on a BEIR-format data set: nDCG@10, recall@10/100, MRR@10.

The corpus is loaded into a throwaway SQLite table, indexed with the same
``refresh_index`` the plugin uses and searched with ``RagIndex``, so the
figures measure the shipped code path: vector-only, FTS-only and hybrid.

Files (BEIR layout): ``corpus.jsonl`` lines ``{"_id", "title", "text"}``,
queries ``{"_id", "text"}``, qrels TSV ``query-id  corpus-id  score`` with a
header line.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import json
import math
import os
import sqlite3
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np

METHODS = ("vector", "fts", "fts5", "hybrid")
#: How ``format_table`` names each method.
LABELS = {
    "vector": "vector only",
    "fts": "full text (FTS5 BM25, in memory)",
    "fts5": "full text (SQLite FTS5 bm25())",
    "hybrid": "hybrid (RRF)",
}


# ---------------------------------------------------------------- metrics


def ndcg_at(ranked: Sequence[str], qrels: dict[str, int], k: int = 10) -> float:
    """nDCG@k with linear gains (as trec_eval's ndcg_cut, used by BEIR)."""
    dcg = sum(
        qrels.get(doc, 0) / math.log2(i + 2) for i, doc in enumerate(ranked[:k]) if qrels.get(doc, 0) > 0
    )
    ideal = sorted((g for g in qrels.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg else 0.0


def recall_at(ranked: Sequence[str], qrels: dict[str, int], k: int) -> float:
    relevant = {d for d, g in qrels.items() if g > 0}
    if not relevant:
        return 0.0
    return len(relevant & set(ranked[:k])) / len(relevant)


def mrr_at(ranked: Sequence[str], qrels: dict[str, int], k: int = 10) -> float:
    for i, doc in enumerate(ranked[:k]):
        if qrels.get(doc, 0) > 0:
            return 1.0 / (i + 1)
    return 0.0


def score_run(run: dict[str, list[str]], qrels: dict[str, dict[str, int]]) -> dict[str, float]:
    """Mean metrics over the queries that have judgments."""
    qids = [q for q in qrels if q in run]
    if not qids:
        return {"ndcg@10": 0.0, "recall@10": 0.0, "recall@100": 0.0, "mrr@10": 0.0, "queries": 0}
    return {
        "ndcg@10": float(np.mean([ndcg_at(run[q], qrels[q], 10) for q in qids])),
        "recall@10": float(np.mean([recall_at(run[q], qrels[q], 10) for q in qids])),
        "recall@100": float(np.mean([recall_at(run[q], qrels[q], 100) for q in qids])),
        "mrr@10": float(np.mean([mrr_at(run[q], qrels[q], 10) for q in qids])),
        "queries": len(qids),
    }


# ---------------------------------------------------------------- loading


def load_jsonl(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_qrels(path: str) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t")
        for row in reader:
            if len(row) < 3 or not row[2].strip().lstrip("-").isdigit():
                continue  # header or blank
            qrels.setdefault(row[0], {})[row[1]] = int(row[2])
    return qrels


# ---------------------------------------------------------------- embedding cache


class CachingEmbedder:
    """Wraps a model's ``embed_sync`` with an on-disk cache keyed by text hash.

    Lets repeated evaluation runs skip re-embedding thousands of abstracts.
    """

    def __init__(self, model: Any, cache_path: str | None = None) -> None:
        self.model = model
        self.model_id = model.model_id
        self.dimensions = getattr(model, "dimensions", 0)
        self.batch_size = getattr(model, "batch_size", 64)
        self.cache_path = cache_path
        self.cache: dict[str, np.ndarray] = {}
        self.embedded = 0  # texts actually sent to the model
        self.seconds = 0.0
        if cache_path and os.path.exists(cache_path):
            data = np.load(cache_path, allow_pickle=False)
            if str(data["model"]) == self.model_id:
                for key, vec in zip(data["keys"].tolist(), data["vectors"]):
                    self.cache[key] = vec

    def _key(self, text: str, kind: str) -> str:
        return hashlib.blake2b(f"{kind}\x00{text}".encode(), digest_size=12).hexdigest()

    def embed_sync(self, texts: list[str], kind: str = "document") -> np.ndarray:
        keys = [self._key(t, kind) for t in texts]
        todo = [i for i, k in enumerate(keys) if k not in self.cache]
        if todo:
            started = time.perf_counter()
            vecs = np.asarray(self.model.embed_sync([texts[i] for i in todo]), np.float32)
            self.seconds += time.perf_counter() - started
            self.embedded += len(todo)
            for i, v in zip(todo, vecs):
                self.cache[keys[i]] = v
        return np.stack([self.cache[k] for k in keys]) if keys else np.zeros((0, self.dimensions), np.float32)

    async def embed(self, texts: list[str], *, kind: str = "document") -> np.ndarray:
        return await asyncio.to_thread(self.embed_sync, texts, kind)

    def save(self) -> None:
        if not self.cache_path:
            return
        os.makedirs(os.path.dirname(os.path.abspath(self.cache_path)), exist_ok=True)
        keys = list(self.cache)
        np.savez(
            self.cache_path,
            model=np.array(self.model_id),
            keys=np.array(keys),
            vectors=np.stack([self.cache[k] for k in keys]) if keys else np.zeros((0, 0), np.float32),
        )


# ---------------------------------------------------------------- running


@dataclass
class EvalSettings:
    rrf_k: int = 10
    depth: int = 100
    weights: tuple[float, float] = (1.0, 1.5)
    k: int = 100


@dataclass
class EvalResult:
    metrics: dict[str, dict[str, float]]
    queries: int
    documents: int
    settings: EvalSettings
    index_seconds: float = 0.0
    search_ms: dict[str, float] = field(default_factory=dict)


def build_corpus_db(corpus: Iterable[dict], path: str) -> int:
    conn = sqlite3.connect(path)
    conn.execute("create table docs (id text primary key, title text, body text)")
    rows = [(str(d["_id"]), d.get("title") or "", d.get("text") or "") for d in corpus]
    conn.executemany("insert into docs values (?, ?, ?)", rows)
    conn.commit()
    conn.close()
    return len(rows)


RAG_CONFIG = {
    "databases": {
        "corpus": {"tables": {"docs": {"template": "{title}\n{body}", "title_column": "title"}}}
    }
}


def evaluate(
    corpus_path: str,
    queries_path: str,
    qrels_path: str,
    embedder: Any,
    *,
    limit: int | None = None,
    select: Callable[[int, str], bool] | None = None,
    workdir: str | None = None,
    settings_list: Sequence[EvalSettings] = (EvalSettings(),),
    progress: Callable[[int, int], Any] | None = None,
) -> list[EvalResult]:
    """Index the corpus and score each method for every ``EvalSettings``.

    ``embedder`` needs ``model_id`` and ``embed_sync(texts)`` (wrap it in
    ``CachingEmbedder`` to reuse vectors across runs). ``limit`` keeps only
    the first N judged queries; ``select(i, qid)`` keeps a subset of them.
    Method "fts" is the in-memory ranking the hybrid uses; "fts5" asks
    SQLite's FTS5 ``bm25()`` for the same ranking.
    """
    from .indexer import refresh_index
    from .store import RagIndex

    corpus = load_jsonl(corpus_path)
    queries = {str(q["_id"]): q["text"] for q in load_jsonl(queries_path)}
    qrels = load_qrels(qrels_path)
    qids = [q for q in qrels if q in queries]
    if limit:
        qids = qids[:limit]
    if select is not None:  # e.g. every other query, to tune on one half and test on the other
        qids = [q for i, q in enumerate(qids) if select(i, q)]
    qrels = {q: qrels[q] for q in qids}
    cleanup = None
    if workdir is None:
        cleanup = tempfile.TemporaryDirectory()
        workdir = cleanup.name
    try:
        db_path = os.path.join(workdir, "corpus.db")
        side = os.path.join(workdir, "corpus.llm-rag.db")
        for p in (db_path, side, side + "-wal", side + "-shm"):
            if os.path.exists(p):
                os.remove(p)
        n_docs = build_corpus_db(corpus, db_path)
        wrapped = embedder if isinstance(embedder, CachingEmbedder) else CachingEmbedder(embedder)
        started = time.perf_counter()
        asyncio.run(
            refresh_index(db_path, "corpus", RAG_CONFIG, wrapped, sidecar=side, progress=progress)
        )
        index_seconds = time.perf_counter() - started
        index = RagIndex(side)
        qvecs = wrapped.embed_sync([queries[q] for q in qids], kind="query")
        results = []
        for settings in settings_list:
            runs: dict[str, dict[str, list[str]]] = {m: {} for m in METHODS}
            timing = {m: 0.0 for m in METHODS}
            for qid, qvec in zip(qids, qvecs):
                text = queries[qid]
                t0 = time.perf_counter()
                vhits = index.search_vector(qvec, settings.k)
                t1 = time.perf_counter()
                fhits = index.search_fts(text, settings.k)
                t2 = time.perf_counter()
                f5hits = index.search_fts5(text, settings.k)
                t2b = time.perf_counter()
                t2c = time.perf_counter()
                hhits = index.search_hybrid(
                    text, qvec, settings.k, rrf_k=settings.rrf_k,
                    depth=settings.depth, weights=settings.weights,
                )
                t3 = time.perf_counter()
                timing["vector"] += t1 - t0
                timing["fts"] += t2 - t1
                timing["fts5"] += t2b - t2
                timing["hybrid"] += t3 - t2c
                for method, hits in (
                    ("vector", vhits), ("fts", fhits), ("fts5", f5hits), ("hybrid", hhits)
                ):
                    runs[method][qid] = _doc_ids(hits)
            results.append(
                EvalResult(
                    metrics={m: score_run(runs[m], qrels) for m in METHODS},
                    queries=len(qids),
                    documents=n_docs,
                    settings=settings,
                    index_seconds=index_seconds,
                    search_ms={m: 1000 * timing[m] / max(1, len(qids)) for m in METHODS},
                )
            )
        index.close()
        return results
    finally:
        if cleanup is not None:
            cleanup.cleanup()


def _doc_ids(hits) -> list[str]:
    out: list[str] = []
    for hit in hits:
        doc = str(hit.pk[0])
        if doc not in out:
            out.append(doc)
    return out


def format_table(result: EvalResult) -> str:
    lines = [
        "| method | nDCG@10 | recall@10 | recall@100 | MRR@10 | ms/query |",
        "|---|---|---|---|---|---|",
    ]
    for m in METHODS:
        r = result.metrics[m]
        lines.append(
            f"| {LABELS[m]} | {r['ndcg@10']:.4f} | {r['recall@10']:.4f} | {r['recall@100']:.4f} "
            f"| {r['mrr@10']:.4f} | {result.search_ms.get(m, 0):.2f} |"
        )
    return "\n".join(lines)
