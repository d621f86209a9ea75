"""Calibrating the "nothing relevant enough" cut-off of the ask box (rag: min_score).

    python benchmarks/bench_rag_relevance.py [--data ../shared] [--queries 200]

The ask box only calls the model when a retrieved row's cosine similarity to
the question reaches ``min_score`` (or 3/4 of it for rows that also matched
full-text search). On-topic questions: SciFact claims, searched against the
5,183 SciFact abstracts, with their judged relevant abstract. Off-topic
questions: sentences from State of the Union addresses, searched against the
same abstracts (nothing there answers them). For each cut-off it prints how
often the box would answer (on-topic: should be high; off-topic: should be
low) and how often the judged abstract is among the rows passed to the model,
against the baseline of no cut-off (always answer), measured in the same run.
Embeddings use the shipped local MiniLM model and are cached.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def load(data: str, n: int):
    sci = os.path.join(data, "data", "scifact-dev")
    corpus = [json.loads(line) for line in open(os.path.join(sci, "corpus.jsonl"), encoding="utf-8")]
    queries = {q["_id"]: q["text"] for q in map(json.loads, open(os.path.join(sci, "queries_train.jsonl")))}
    qrels: dict[str, set[str]] = {}
    for line in list(open(os.path.join(sci, "qrels_train.tsv")))[1:]:
        qid, doc, _score = line.split("\t")
        qrels.setdefault(qid, set()).add(doc)
    on = [(queries[q], qrels[q]) for q in sorted(qrels, key=int) if q in queries][:n]
    sotu_dir = os.path.join(data, "data", "sotu")
    sentences = []
    for name in sorted(os.listdir(sotu_dir)):
        if name.endswith(".txt"):
            text = open(os.path.join(sotu_dir, name), encoding="utf-8").read()
            parts = [s.strip() for s in re.split(r"(?<=[.?!])\s+", text) if 60 <= len(s.strip()) <= 200]
            if parts:
                sentences.append(parts[len(parts) // 2])
    off = sentences[:n]
    return corpus, on, off


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default=os.path.join(HERE, "..", "..", "shared"))
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--cache", default=os.path.join(HERE, "results", "scifact-minilm.npz"))
    args = parser.parse_args()
    if not os.path.exists(os.path.join(args.data, "data", "scifact-dev", "corpus.jsonl")):
        print(f"SciFact not found under {args.data}: skipping")
        return
    from datasette_llm_core.embeddings.local_minilm import LocalMiniLM
    from datasette_llm_rag.evaluate import CachingEmbedder

    corpus, on, off = load(args.data, args.queries)
    embedder = CachingEmbedder(LocalMiniLM(), args.cache)
    started = time.perf_counter()
    docs = embedder.embed_sync([(d.get("title", "") + "\n" + d["text"]).strip() for d in corpus], "document")
    q_on = embedder.embed_sync([q for q, _ in on], "query")
    q_off = embedder.embed_sync(off, "query")
    embedder.save()
    print(f"{len(corpus)} abstracts, {len(on)} on-topic and {len(off)} off-topic questions "
          f"(embedding {time.perf_counter() - started:.1f}s, cached afterwards)")
    ids = [d["_id"] for d in corpus]
    s_on = q_on @ docs.T
    top_on = np.argsort(-s_on, axis=1)[:, : args.k]
    base_gold = np.mean([any(ids[j] in gold for j in row) for row, (_q, gold) in zip(top_on, on)])
    print(f"baseline (no cut-off): answers 100% of on- and off-topic questions; judged abstract "
          f"among the top {args.k} vector hits: {base_gold:.1%}")

    # The real rule, on the real index: hybrid search, then retrieval.is_relevant.
    import asyncio
    import tempfile

    from datasette_llm_rag.evaluate import RAG_CONFIG, build_corpus_db
    from datasette_llm_rag.indexer import refresh_index
    from datasette_llm_rag.retrieval import is_relevant
    from datasette_llm_rag.store import RagIndex

    with tempfile.TemporaryDirectory() as work:
        db_path = os.path.join(work, "corpus.db")
        side = os.path.join(work, "corpus.llm-rag.db")
        build_corpus_db(corpus, db_path)
        asyncio.run(refresh_index(db_path, "corpus", RAG_CONFIG, embedder, sidecar=side))
        index = RagIndex(side)
        hits_on = [index.search_hybrid(q, v, args.k) for (q, _g), v in zip(on, q_on)]
        hits_off = [index.search_hybrid(q, v, args.k) for q, v in zip(off, q_off)]
        index.close()

    def rates(threshold, fts_factor):
        def relevant(hit):
            if fts_factor is None:
                return hit.vector_score is not None and hit.vector_score >= threshold
            return is_relevant(hit, threshold, fts_factor=fts_factor)

        answered_on = np.mean([any(relevant(h) for h in hs) for hs in hits_on])
        answered_off = np.mean([any(relevant(h) for h in hs) for hs in hits_off])
        gold = np.mean([
            any(relevant(h) and str(h.pk[0]) in g for h in hs) for hs, (_q, g) in zip(hits_on, on)
        ])
        return answered_on, answered_off, gold

    base_hybrid_gold = np.mean([
        any(str(h.pk[0]) in g for h in hs) for hs, (_q, g) in zip(hits_on, on)
    ])
    print(f"hybrid search, no cut-off: judged abstract among the top {args.k}: {base_hybrid_gold:.1%}")
    print(f"{'rule':>34} {'answers on-topic':>17} {'answers off-topic':>18} {'gold to model':>14} "
          f"{'vs no cut-off':>14}")
    for fts_factor in (None, 0.5, 0.75):
        for t in (0.3, 0.35, 0.4, 0.45):
            label = (f"cosine >= {t:.2f}" if fts_factor is None
                     else f"cosine >= {t:.2f}, FTS hit >= {t * fts_factor:.2f}")
            a_on, a_off, gold = rates(t, fts_factor)
            print(f"{label:>34} {a_on:>16.1%} {a_off:>17.1%} {gold:>13.1%} "
                  f"{gold / base_hybrid_gold:>13.2f}x")


if __name__ == "__main__":
    main()
