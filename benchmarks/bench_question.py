"""What a question costs before the model is called, at 100k rows.

    python benchmarks/bench_question.py                  # 100k rows, 100 questions, ~4 minutes
    python benchmarks/bench_question.py --rows 20000 --queries 40 --keep

The question box (``retrieval.retrieve``) runs, per question: the query
embedding with the index's model (bge-small-en-v1.5 by default, its
retrieval instruction in front), hybrid search of ``max(2k, depth)``
candidates (vector + in-memory BM25, fused by RRF), the live-row check
against the source database, then the cross-encoder rerank of the top
``depth`` (shipped: 12 candidates, 64 word pieces per pair). This script runs
exactly those library calls, one question after the other in one thread
(as one reader would), and reports p50/p95 of each step and of the total,
with the plain search of ``search.json`` (hybrid top 10, no model) timed in
turn as the baseline.

Rows: the 5,183 real SciFact abstracts (``../shared/data/scifact-dev``)
repeated to ``--rows``. Vectors: real bge-small embeddings of those
abstracts (cached in benchmarks/results/scifact-bge-small-en-v1.5.npz, the
cache rag_eval_scifact.py writes), grown to ``--rows`` as bench_search.py
does (a real vector plus half the difference of two others plus small noise;
see rag_data.augment); each grown row's text is the abstract its vector grew
from. Questions: real SciFact claims, embedded by the model at question
time (not cached), so the embedding is paid every time as in the product.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_search import LIVE_TABLES, build  # noqa: E402
from rag_data import RESULTS, scifact_docs, scifact_queries  # noqa: E402

from datasette_llm_rag.fusion import fusion_for  # noqa: E402
from datasette_llm_rag.livecheck import live_rows_fn, pk_key, reconcile  # noqa: E402
from datasette_llm_rag.rerank import RerankSettings, rerank, table_weights_for, vector_weight_for  # noqa: E402
from datasette_llm_rag.store import RagIndex  # noqa: E402

K = 8  # rows the question box keeps (retrieval.DEFAULT_K)


def pct(values, p):
    return float(np.percentile(values, p)) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--model", default="bge-small-en-v1.5")
    parser.add_argument("--depth", type=int, default=None, help="rerank depth (default: shipped)")
    parser.add_argument("--tokens", type=int, default=None, help="word pieces per pair (default: shipped)")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime threads (default: all cores)")
    parser.add_argument("--docs", type=int, default=0,
                        help="use only the first N abstracts (e.g. the ones already cached); 0: all 5,183")
    parser.add_argument("--keep", action="store_true", help="keep the sidecar and reuse it on the next --keep run")
    args = parser.parse_args()
    docs, claims = scifact_docs(), scifact_queries()
    if not docs or not claims:
        print("SciFact not found under ../shared/data/scifact-dev: skipping")
        return
    os.makedirs(RESULTS, exist_ok=True)
    from datasette_llm_core.embeddings import local_model
    from datasette_llm_core.embeddings.cross_encoder import CrossEncoder
    from datasette_llm_rag.evaluate import CachingEmbedder

    model = local_model(args.model)
    if args.threads:
        model.threads = args.threads
    texts = [(d.get("title") or "") + "\n" + (d.get("text") or "") for d in docs]
    if args.docs:
        texts = texts[: args.docs]
    cache = CachingEmbedder(model, os.path.join(RESULTS, f"scifact-{model.model_id}.npz"))
    todo = cache.missing(texts)
    if todo:
        print(f"embedding {todo:,} of {len(texts):,} abstracts with {model.model_id} (cached afterwards)...",
              flush=True)
    base = cache.embed_sync(texts, kind="document")
    cache.save()
    rng = np.random.default_rng(7)
    pick = rng.choice(len(claims), size=min(args.queries, len(claims)), replace=False)
    questions = [claims[i] for i in pick]

    path = os.path.join(RESULTS, f"bench-question-{args.rows}-{len(texts)}-{model.model_id}.llm-rag.db")
    # ground-truth queries for build(): the questions' vectors, embedded once here
    qvecs = model.embed_sync(questions, kind="query")
    if not (args.keep and os.path.exists(path) and os.path.exists(path + ".source.db")):
        build(path, base, texts, args.rows, qvecs, "full")
    else:
        print("  reusing the sidecar kept by an earlier --keep run")
    index = RagIndex(path)
    assert index.count == args.rows, (index.count, args.rows)

    shipped = RerankSettings()
    settings = RerankSettings(depth=args.depth or shipped.depth, max_tokens=args.tokens or shipped.max_tokens,
                              vector_weight=vector_weight_for(model.model_id, None),
                              table_weights=table_weights_for(model.model_id, None))
    encoder = CrossEncoder(threads=args.threads)
    source = sqlite3.connect(f"file:{path}.source.db?mode=ro", uri=True, check_same_thread=False)
    wanted_n = max(2 * K, settings.depth)
    rrf_k, weights = fusion_for(model.model_id)  # as retrieval.retrieve fuses

    def embed(q):
        return model.embed_sync([q], kind="query")[0]

    def retrieve(q, qvec):
        hits = index.search_hybrid(q, qvec, wanted_n, rrf_k=rrf_k, weights=weights)
        wanted: dict = {}
        for h in hits:
            wanted.setdefault(h.table, []).append(list(h.pk))
        live = live_rows_fn("bench", LIVE_TABLES, wanted)(source)
        return [h for h in hits if reconcile(h.text, h.title, h.chunk, live.get((h.table, pk_key(h.pk))))]

    def do_rerank(q, hits):
        return rerank(q, hits, lambda qq, p: encoder.score(qq, p, max_tokens=settings.max_tokens), settings)[:K]

    # warm up: load both models and the index once, outside the timings
    v = embed(questions[0])
    do_rerank(questions[0], retrieve(questions[0], v))
    index.search_hybrid(questions[0], qvecs[0], 10)

    steps = {name: [] for name in ("embed", "retrieve", "rerank", "total", "plain")}
    cpu = {name: [] for name in steps}
    pairs_tokens = []
    load0 = os.getloadavg()[0]
    print(f"{args.rows:,} rows grown from {len(texts):,} real abstracts, {len(questions)} questions, {model.model_id}, rerank depth {settings.depth} x "
          f"{settings.max_tokens} word pieces, onnxruntime threads {encoder.threads}; load average {load0:.1f} "
          f"on {os.cpu_count()} cores", flush=True)
    for i, q in enumerate(questions):
        # plain search (search.json without rerank: hybrid top 10 with the vector
        # the question box already has), timed in turn with the question
        c, t = time.process_time(), time.perf_counter()
        index.search_hybrid(q, qvecs[i], 10, rrf_k=rrf_k, weights=weights)
        steps["plain"].append(time.perf_counter() - t)
        cpu["plain"].append(time.process_time() - c)
        t_all, c_all = time.perf_counter(), time.process_time()
        out = None
        for name, fn in (("embed", lambda qq, _prev: embed(qq)), ("retrieve", retrieve), ("rerank", do_rerank)):
            c, t = time.process_time(), time.perf_counter()
            out = fn(q, out)  # each step takes the question and the previous step's result
            steps[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)
        steps["total"].append(time.perf_counter() - t_all)
        cpu["total"].append(time.process_time() - c_all)
        assert len(out) == K
        if i < 20:
            hits = retrieve(q, qvecs[i])[: settings.depth]
            pairs = encoder.encode_pairs(q, [h.text for h in hits], settings.max_tokens)
            pairs_tokens.append(float(np.mean([len(a) for a, _ in pairs])))
    load1 = os.getloadavg()[0]
    source.close()
    index.close()
    result = {"rows": args.rows, "real_abstracts": len(texts), "queries": len(questions), "model": model.model_id,
              "depth": settings.depth, "max_tokens": settings.max_tokens, "threads": encoder.threads,
              "load_average_start": load0, "load_average_end": load1,
              "mean_word_pieces_per_pair": float(np.mean(pairs_tokens))}
    print(f"  {'step':<34} {'p50 ms':>8} {'p95 ms':>8} {'CPU p50 ms':>11}")
    labels = {"embed": "query embedding", "retrieve": f"hybrid top {wanted_n} + live-row check",
              "rerank": f"cross-encoder rerank ({settings.depth} pairs)", "total": "question, before the LLM call",
              "plain": "plain search (hybrid top 10)"}
    for name, label in labels.items():
        p50, p95 = pct(steps[name], 50), pct(steps[name], 95)
        c50 = statistics.median(cpu[name]) * 1000
        result.update({f"{name}_p50_ms": p50, f"{name}_p95_ms": p95, f"{name}_cpu_p50_ms": c50})
        print(f"  {label:<34} {p50:8.1f} {p95:8.1f} {c50:11.1f}")
    print(f"  pairs averaged {result['mean_word_pieces_per_pair']:.0f} word pieces; load average "
          f"{load0:.1f} -> {load1:.1f}")
    out = os.path.join(RESULTS, "bench_question.json")
    with open(out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"results written to {out}")
    if not args.keep:
        for suffix in ("", "-wal", "-shm", ".source.db"):
            if os.path.exists(path + suffix):
                os.remove(path + suffix)


if __name__ == "__main__":
    main()
