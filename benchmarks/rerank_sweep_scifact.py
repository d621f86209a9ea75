"""How the cross-encoder reorders SciFact's hybrid results, at two token budgets.

Superseded by rerank_cache_scifact.py, which caches the scores for every claim
and measures the shipped combination (first-stage evidence on one table);
kept because docs/rag-evaluation.md quotes its first table. "(shipped)" below
means shipped before that change.

    python benchmarks/rerank_sweep_scifact.py [--every 4 --offset 1 --limit 120] [--depth 12]

For a subset of the judged train claims (every ``--every``-th, starting at
``--offset``), it takes the hybrid top ``--depth`` with the default model's
cached vectors (benchmarks/results/scifact-bge-small-en-v1.5.npz, written by
rag_eval_scifact.py), scores each claim-passage pair with the shipped
cross-encoder once per token budget (64 word pieces with 400-character
passages, as shipped; 256 with 1,200), and then prints nDCG@10 for the ways of
combining the two orders that were tried: the logit plus ``w`` x (cosine -
0.5) as rerank.py does, and reciprocal-rank fusion of the hybrid and the
cross-encoder orders. Scoring the pairs is the slow part (about 6 minutes for
120 claims at load 5); every combination is then free.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from rag_data import SCIFACT  # noqa: E402

from datasette_llm_rag.evaluate import (  # noqa: E402
    RAG_CONFIG,
    CachingEmbedder,
    _doc_ids,
    build_corpus_db,
    ndcg_at,
    read_dataset,
)

BUDGETS = ((64, 400), (256, 1200))


def fused(hybrid_ids, logits, cosines, depth, *, weight=None, rrf_k=None, rerank_share=0.5):
    head = hybrid_ids[:depth]
    if weight is not None:
        scores = [x + weight * ((c if c is not None else 0.5) - 0.5) for x, c in zip(logits, cosines)]
    else:
        by_logit = sorted(range(len(head)), key=lambda i: -logits[i])
        place = {i: p for p, i in enumerate(by_logit)}
        scores = [1 / (rrf_k + i + 1) + rerank_share / (rrf_k + place[i] + 1) for i in range(len(head))]
    order = sorted(range(len(head)), key=lambda i: -scores[i])
    return [head[i] for i in order] + hybrid_ids[depth:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default=SCIFACT)
    parser.add_argument("--every", type=int, default=4)
    parser.add_argument("--offset", type=int, default=1)
    parser.add_argument("--limit", type=int, default=120)
    parser.add_argument("--depth", type=int, default=12)
    parser.add_argument("--model", default="bge-small-en-v1.5")
    args = parser.parse_args()
    corpus_path = os.path.join(args.data, "corpus.jsonl")
    if not os.path.exists(corpus_path):
        print(f"SciFact not found under {args.data}: skipping")
        return
    from datasette_llm_core.embeddings import local_model
    from datasette_llm_core.embeddings.cross_encoder import CrossEncoder
    from datasette_llm_rag.indexer import refresh_index
    from datasette_llm_rag.rerank import best_passage
    from datasette_llm_rag.store import RagIndex

    corpus, queries, qrels, _read = read_dataset(
        corpus_path, os.path.join(args.data, "queries_train.jsonl"), os.path.join(args.data, "qrels_train.tsv"))
    qids = [q for i, q in enumerate(qrels) if i % args.every == args.offset][: args.limit]
    model = local_model(args.model)
    embedder = CachingEmbedder(model, os.path.join(HERE, "results", f"scifact-{model.model_id}.npz"))
    print(f"{len(qids)} claims, depth {args.depth}; load average {os.getloadavg()[0]:.1f}", flush=True)
    with tempfile.TemporaryDirectory() as work:
        db, side = os.path.join(work, "corpus.db"), os.path.join(work, "corpus.llm-rag.db")
        build_corpus_db(corpus, db)
        asyncio.run(refresh_index(db, "corpus", RAG_CONFIG, embedder, sidecar=side))
        embedder.save()
        index = RagIndex(side)
        vectors = embedder.embed_sync([queries[q] for q in qids], kind="query")
        ce = CrossEncoder()
        rows = []
        started = time.perf_counter()
        for n, (qid, vec) in enumerate(zip(qids, vectors)):
            text = queries[qid]
            hits = index.search_hybrid(text, vec, 100, rrf_k=10, depth=100, weights=(1.0, 1.5))
            row = {"qid": qid, "ids": _doc_ids(hits),
                   "cos": [getattr(h, "vector_score", None) for h in hits[: args.depth]]}
            for tokens, chars in BUDGETS:
                passages = [best_passage(text, h.text, chars) for h in hits[: args.depth]]
                row[tokens] = [float(x) for x in ce.score(text, passages, max_tokens=tokens)]
            rows.append(row)
            if (n + 1) % 20 == 0:
                print(f"  {n + 1}/{len(qids)} claims scored ({time.perf_counter() - started:.0f}s)", flush=True)
        index.close()

    def ndcg(rank) -> float:
        return sum(ndcg_at(rank(r), qrels[r["qid"]]) for r in rows) / len(rows)

    print(f"\n| order | nDCG@10 ({len(rows)} claims) |\n|---|---|")
    print(f"| hybrid (no rerank) | {ndcg(lambda r: r['ids']):.4f} |")
    for tokens, chars in BUDGETS:
        for weight in (0, 10, 20, 40):
            value = ndcg(lambda r, t=tokens, w=weight: fused(r["ids"], r[t], r["cos"], args.depth, weight=w))
            shipped = " (shipped)" if (tokens, weight) == (64, 10) else ""
            print(f"| rerank {tokens} word pieces / {chars} chars, cosine weight {weight}{shipped} | {value:.4f} |")
        for k in (2, 10, 30):
            value = ndcg(lambda r, t=tokens, k=k: fused(r["ids"], r[t], r["cos"], args.depth, rrf_k=k))
            print(f"| rerank {tokens} word pieces, RRF with the hybrid order (k={k}, rerank share 0.5) | {value:.4f} |")
    print(f"\nload average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
