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

from datasette_llm_core.errors import LLMSuiteError

METHODS = ("vector", "fts", "fts5", "hybrid")
#: Added when ``evaluate`` is given a reranker.
RERANK_METHOD = "rerank"
#: How ``format_table`` names each method.
LABELS = {
    "vector": "vector only",
    "fts": "full text (FTS5 BM25, in memory)",
    "fts5": "full text (SQLite FTS5 bm25())",
    "hybrid": "hybrid (RRF)",
    "rerank": "hybrid + rerank (cross-encoder)",
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


class EvalInputError(LLMSuiteError):
    """A data set file cannot be used as it is; the message says what to fix."""


def load_jsonl(path: str, what: str = "documents") -> list[dict]:
    """Lines of a JSONL file; ``EvalInputError`` for bad JSON or a missing or repeated ``_id``."""
    out: list[dict] = []
    seen: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except ValueError as e:
                raise EvalInputError(f"{path} line {number}: not valid JSON ({e.msg}).") from None
            if not isinstance(item, dict) or item.get("_id") in (None, ""):
                raise EvalInputError(
                    f"{path} line {number}: every line needs an \"_id\" (BEIR format: "
                    f"{{\"_id\": ..., \"text\": ...}}); this one has none."
                )
            key = str(item["_id"])
            if key in seen:
                raise EvalInputError(
                    f"{path} line {number}: _id {key!r} was already used on line {seen[key]}; "
                    f"each of the {what} needs its own _id."
                )
            seen[key] = number
            out.append(item)
    return out


@dataclass
class QrelsInfo:
    """What ``read_qrels`` found: counts to show the user."""

    format: str = "tsv"  #: "tsv" (query, doc, score) or "trec" (query, 0, doc, score)
    header: bool = False
    judgments: int = 0
    queries: int = 0
    #: queries whose judgments are all 0 or below (nothing to find: not scored)
    no_positive: list[str] = field(default_factory=list)


def read_qrels(path: str) -> tuple[dict[str, dict[str, int]], QrelsInfo]:
    """Relevance judgments, separated by tabs or spaces, with or without a header line.

    Three columns are ``query-id corpus-id score`` (BEIR); four are TREC's
    ``query-id iteration corpus-id score``. Anything else raises
    ``EvalInputError`` naming the line, instead of scoring zeros.
    """
    info = QrelsInfo()
    qrels: dict[str, dict[str, int]] = {}
    columns = None
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if columns is None:
                columns = len(parts)
                if columns not in (3, 4):
                    raise EvalInputError(
                        f"{path} line {number}: expected 3 columns (query-id corpus-id score) "
                        f"or 4 (TREC: query-id 0 corpus-id score), found {columns}."
                    )
                info.format = "tsv" if columns == 3 else "trec"
                if not _is_int(parts[-1]):  # a header line
                    info.header = True
                    continue
            if len(parts) != columns or not _is_int(parts[-1]):
                raise EvalInputError(
                    f"{path} line {number}: expected {columns} columns ending in an integer "
                    f"score, found {line.strip()!r}."
                )
            qid, doc = parts[0], parts[1 if columns == 3 else 2]
            qrels.setdefault(qid, {})[doc] = int(parts[-1])
            info.judgments += 1
    info.no_positive = [q for q, d in qrels.items() if not any(g > 0 for g in d.values())]
    for qid in info.no_positive:
        del qrels[qid]
    info.queries = len(qrels)
    if not qrels:
        raise EvalInputError(
            f"{path} has no query with a positive relevance score: nothing can be measured."
        )
    return qrels, info


def _is_int(text: str) -> bool:
    return text.lstrip("+-").isdigit()


def load_qrels(path: str) -> dict[str, dict[str, int]]:
    return read_qrels(path)[0]


# ---------------------------------------------------------------- embedding cache


class CachingEmbedder:
    """Wraps a model's ``embed_sync`` with an on-disk cache keyed by text hash.

    Lets repeated evaluation runs skip re-embedding thousands of abstracts.
    The cache file is rewritten (atomically) every ``save_every`` new texts,
    so an interrupted run keeps what it embedded.
    """

    def __init__(self, model: Any, cache_path: str | None = None, *, save_every: int = 256) -> None:
        self.model = model
        self.model_id = model.model_id
        self.dimensions = getattr(model, "dimensions", 0)
        self.batch_size = getattr(model, "batch_size", 64)
        self.cache_path = cache_path
        self.cache: dict[str, np.ndarray] = {}
        self.embedded = 0  # texts actually sent to the model
        self.seconds = 0.0
        self.save_every = save_every
        self._unsaved = 0
        if cache_path and os.path.exists(cache_path):
            data = np.load(cache_path, allow_pickle=False)
            if str(data["model"]) == self.model_id:
                for key, vec in zip(data["keys"].tolist(), data["vectors"]):
                    self.cache[key] = vec
        self.cached_at_start = len(self.cache)

    def _key(self, text: str, kind: str) -> str:
        return hashlib.blake2b(f"{kind}\x00{text}".encode(), digest_size=12).hexdigest()

    def missing(self, texts: Iterable[str], kind: str = "document") -> int:
        return sum(1 for t in texts if self._key(t, kind) not in self.cache)

    def _model_embed(self, texts: list[str], kind: str) -> np.ndarray:
        import inspect

        try:
            takes_kind = "kind" in inspect.signature(self.model.embed_sync).parameters
        except (TypeError, ValueError):
            takes_kind = False
        if takes_kind:
            return self.model.embed_sync(texts, kind=kind)
        return self.model.embed_sync(texts)  # a model without kinds (symmetric)

    def embed_sync(self, texts: list[str], kind: str = "document") -> np.ndarray:
        keys = [self._key(t, kind) for t in texts]
        todo = [i for i, k in enumerate(keys) if k not in self.cache]
        step = max(1, self.save_every)
        for start in range(0, len(todo), step):
            part = todo[start : start + step]
            started = time.perf_counter()
            vecs = np.asarray(self._model_embed([texts[i] for i in part], kind), np.float32)
            self.seconds += time.perf_counter() - started
            self.embedded += len(part)
            for i, v in zip(part, vecs):
                self.cache[keys[i]] = v
            self._unsaved += len(part)
            if self._unsaved >= self.save_every:
                self.save()
        return np.stack([self.cache[k] for k in keys]) if keys else np.zeros((0, self.dimensions), np.float32)

    async def embed(self, texts: list[str], *, kind: str = "document") -> np.ndarray:
        return await asyncio.to_thread(self.embed_sync, texts, kind)

    def save(self) -> None:
        if not self.cache_path:
            return
        folder = os.path.dirname(os.path.abspath(self.cache_path))
        os.makedirs(folder, exist_ok=True)
        keys = list(self.cache)
        fd, tmp = tempfile.mkstemp(suffix=".npz", dir=folder)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(
                    f,
                    model=np.array(self.model_id),
                    keys=np.array(keys),
                    vectors=np.stack([self.cache[k] for k in keys]) if keys else np.zeros((0, 0), np.float32),
                )
            os.replace(tmp, self.cache_path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
        self._unsaved = 0


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
    read: "DatasetInfo | None" = None


@dataclass
class DatasetInfo:
    """What was read from the three files, to show the user."""

    documents: int
    queries_in_file: int
    qrels: QrelsInfo
    judged_queries: int  #: judged queries found in the queries file (scored)
    unknown_queries: list[str] = field(default_factory=list)  #: judged, not in the queries file

    def summary(self) -> str:
        q = self.qrels
        parts = [
            f"{self.documents:,} documents",
            f"{self.queries_in_file:,} queries in the queries file",
            f"qrels ({'TREC 4 columns' if q.format == 'trec' else '3 columns'}"
            f"{', header skipped' if q.header else ''}): "
            f"{q.queries + len(q.no_positive):,} queries, {q.judgments:,} judgments",
        ]
        line = "; ".join(parts) + f". Scoring {self.judged_queries:,} queries."
        if q.no_positive:
            line += (f" Skipped {len(q.no_positive):,} with no positive judgment "
                     f"(e.g. {q.no_positive[0]}).")
        if self.unknown_queries:
            line += (f" Skipped {len(self.unknown_queries):,} judged queries missing from the "
                     f"queries file (e.g. {self.unknown_queries[0]}).")
        return line


def read_dataset(corpus_path: str, queries_path: str, qrels_path: str):
    """``(corpus, queries, qrels, DatasetInfo)``; ``EvalInputError`` for unusable files."""
    corpus = load_jsonl(corpus_path, "documents")
    queries = {str(q["_id"]): q.get("text") or "" for q in load_jsonl(queries_path, "queries")}
    qrels, qinfo = read_qrels(qrels_path)
    known = [q for q in qrels if q in queries]
    info = DatasetInfo(len(corpus), len(queries), qinfo, len(known),
                       [q for q in qrels if q not in queries])
    if not known:
        raise EvalInputError(
            f"None of the {len(qrels):,} judged queries of {qrels_path} is in {queries_path} "
            f"(qrels ids look like {next(iter(qrels))!r}, query ids like "
            f"{next(iter(queries), '(none)')!r}): are these files of the same data set?"
        )
    return corpus, queries, {q: qrels[q] for q in known}, info


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
    progress: Callable[[str, int, int], Any] | None = None,
    reranker: Any = None,
    rerank_settings: Any = None,
) -> list[EvalResult]:
    """Index the corpus and score each method for every ``EvalSettings``.

    ``embedder`` needs ``model_id`` and ``embed_sync(texts)`` (wrap it in
    ``CachingEmbedder`` to reuse vectors across runs). ``limit`` keeps only
    the first N judged queries; ``select(i, qid)`` keeps a subset of them.
    Method "fts" is the in-memory ranking the hybrid uses; "fts5" asks
    SQLite's FTS5 ``bm25()`` for the same ranking. With ``reranker`` (a
    ``CrossEncoder``), method "rerank" reorders the hybrid results' top
    ``rerank_settings.depth`` as the question box does (rerank.py).
    """
    from .indexer import refresh_index
    from .rerank import RerankSettings, rerank
    from .store import RagIndex

    corpus, queries, qrels, read = read_dataset(corpus_path, queries_path, qrels_path)
    qids = list(qrels)
    methods = METHODS + ((RERANK_METHOD,) if reranker is not None else ())
    rsettings = rerank_settings or RerankSettings()
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
            refresh_index(
                db_path, "corpus", RAG_CONFIG, wrapped, sidecar=side,
                progress=(lambda done, total: progress("embedding documents", done, total))
                if progress else None,
            )
        )
        index_seconds = time.perf_counter() - started
        index = RagIndex(side)
        if progress:
            progress("embedding queries", 0, len(qids))
        qvecs = wrapped.embed_sync([queries[q] for q in qids], kind="query")
        results = []
        for settings in settings_list:
            runs: dict[str, dict[str, list[str]]] = {m: {} for m in methods}
            timing = {m: 0.0 for m in methods}
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
                if reranker is not None:
                    t4 = time.perf_counter()
                    ranked = rerank(
                        text, hhits,
                        lambda q, p: reranker.score(q, p, max_tokens=rsettings.max_tokens),
                        rsettings,
                    )
                    timing[RERANK_METHOD] += time.perf_counter() - t4 + (t3 - t2c)
                    runs[RERANK_METHOD][qid] = _doc_ids([h for h, _s, _p in ranked])
                if progress:
                    progress("searching", len(runs["hybrid"]), len(qids))
            results.append(
                EvalResult(
                    metrics={m: score_run(runs[m], qrels) for m in methods},
                    queries=len(qids),
                    documents=n_docs,
                    settings=settings,
                    index_seconds=index_seconds,
                    search_ms={m: 1000 * timing[m] / max(1, len(qids)) for m in methods},
                    read=read,
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
    for m in (*METHODS, RERANK_METHOD):
        if m not in result.metrics:
            continue
        r = result.metrics[m]
        lines.append(
            f"| {LABELS[m]} | {r['ndcg@10']:.4f} | {r['recall@10']:.4f} | {r['recall@100']:.4f} "
            f"| {r['mrr@10']:.4f} | {result.search_ms.get(m, 0):.2f} |"
        )
    return "\n".join(lines)
