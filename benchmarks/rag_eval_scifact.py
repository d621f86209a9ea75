"""Retrieval quality of vector, FTS and hybrid search on SciFact (BEIR format).

    python benchmarks/rag_eval_scifact.py [--data ../shared/data/scifact-dev] [--limit N] [--sweep] [--split]
    python benchmarks/rag_eval_scifact.py --model bge-small-en-v1.5 --rerank [--rerank-depth 12 --rerank-tokens 96]

Embeddings come from a shipped local model (``--model``: all-MiniLM-L6-v2 or
bge-small-en-v1.5, int8 ONNX) and are cached (incrementally) in
benchmarks/results/scifact-<model>.npz so a second run takes seconds.
``--rerank`` adds hybrid + cross-encoder rerank as the question box runs it. ``--sweep``
also tries other fusion settings (rrf_k, depth, weights) and prints them all.
``--split`` checks the shipped fusion settings without the optimism of tuning
on the queries they are scored on: the sweep runs on the even-numbered judged
claims only, and the best and the shipped settings are then scored on the
odd-numbered half, which took no part in choosing them.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from datasette_llm_rag.evaluate import CachingEmbedder, EvalSettings, evaluate, format_table  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default=os.path.join(HERE, "..", "..", "shared", "data", "scifact-dev"))
    parser.add_argument("--limit", type=int)
    parser.add_argument("--sweep", action="store_true")
    parser.add_argument("--split", action="store_true", help="tune on half the claims, score on the other half")
    parser.add_argument("--model", default="bge-small-en-v1.5", help="local embedding model id")
    parser.add_argument("--cache", help="embedding cache (default: results/scifact-<model>.npz)")
    parser.add_argument("--rerank", action="store_true", help="also score hybrid + rerank")
    parser.add_argument("--rerank-depth", type=int, default=None)
    parser.add_argument("--rerank-tokens", type=int, default=None)
    args = parser.parse_args()
    corpus = os.path.join(args.data, "corpus.jsonl")
    if not os.path.exists(corpus):
        print(f"SciFact not found under {args.data}: skipping")
        return
    from datasette_llm_core.embeddings import local_model
    from datasette_llm_rag.rerank import RerankSettings, table_weights_for, vector_weight_for

    model = local_model(args.model)
    cache = args.cache or os.path.join(HERE, "results", f"scifact-{model.model_id}.npz")
    embedder = CachingEmbedder(model, cache)
    reranker = None
    rsettings = RerankSettings()
    if args.rerank:
        from datasette_llm_core.embeddings.cross_encoder import CrossEncoder

        reranker = CrossEncoder()
        rsettings = RerankSettings(depth=args.rerank_depth or rsettings.depth,
                                   max_tokens=args.rerank_tokens or rsettings.max_tokens,
                                   vector_weight=vector_weight_for(model.model_id, None),
                                   table_weights=table_weights_for(model.model_id, None))
    print(f"model {model.model_id}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores",
          flush=True)

    def progress(stage, done, total):
        if total and (done == total or done % 500 == 0 or stage == "searching" and done % 50 == 0):
            print(f"  {stage}: {done}/{total} ({time.perf_counter() - started:.0f}s)", flush=True)
    from datasette_llm_rag.fusion import fusion_for

    rrf_k, weights = fusion_for(model.model_id)  # as the question box fuses for this model
    settings = [EvalSettings(rrf_k=rrf_k, weights=weights)]
    if args.sweep or args.split:
        settings += [
            EvalSettings(rrf_k=k, depth=d, weights=w)
            for k in (5, 10, 20, 30, 60)
            for d in (50, 100)
            for w in ((1.0, 1.0), (1.0, 1.5), (1.0, 2.0))
        ]
    started = time.perf_counter()
    files = (corpus, os.path.join(args.data, "queries_train.jsonl"), os.path.join(args.data, "qrels_train.tsv"))
    if args.split:
        split(files, embedder, settings, args.limit)
        embedder.save()
        return
    results = evaluate(*files, embedder, limit=args.limit, settings_list=settings, progress=progress,
                       reranker=reranker, rerank_settings=rsettings)
    embedder.save()
    print(f"{results[0].documents} documents, {results[0].queries} judged queries, "
          f"{embedder.embedded} texts embedded this run ({embedder.seconds:.1f}s), "
          f"total {time.perf_counter() - started:.1f}s")
    print(results[0].read.summary())
    if reranker is not None:
        print(f"rerank: depth {rsettings.depth}, {rsettings.max_tokens} word pieces per pair, "
              f"best window of {rsettings.reranker_chars} characters read, {rsettings.passage_chars} shown; "
              f"cosine weight {rsettings.vector_weight}, first-stage weights {rsettings.table_weights}")
    print(f"load average after the run: {os.getloadavg()[0]:.1f}")
    print(f"default settings (rrf_k={settings[0].rrf_k}, depth={settings[0].depth}, weights={settings[0].weights}):")
    print(format_table(results[0]))
    if args.sweep:
        print("\nsweep (hybrid nDCG@10 / recall@100):")
        for r in sorted(results, key=lambda r: -r.metrics["hybrid"]["ndcg@10"]):
            s = r.settings
            h = r.metrics["hybrid"]
            print(f"  rrf_k={s.rrf_k:<4} depth={s.depth:<4} weights={s.weights}: "
                  f"{h['ndcg@10']:.4f} / {h['recall@100']:.4f}  mrr {h['mrr@10']:.4f}")


def split(files, embedder, settings, limit) -> None:
    tune = evaluate(*files, embedder, limit=limit, settings_list=settings, select=lambda i, _q: i % 2 == 0)
    best = max(tune, key=lambda r: r.metrics["hybrid"]["ndcg@10"])
    shipped = tune[0].settings
    held = evaluate(*files, embedder, limit=limit, settings_list=[shipped, best.settings],
                    select=lambda i, _q: i % 2 == 1)
    print(f"tuning half: {tune[0].queries} claims; held-out half: {held[0].queries} claims")
    print(f"best on the tuning half: rrf_k={best.settings.rrf_k} depth={best.settings.depth} "
          f"weights={best.settings.weights} (hybrid nDCG@10 {best.metrics['hybrid']['ndcg@10']:.4f}; "
          f"shipped settings there {tune[0].metrics['hybrid']['ndcg@10']:.4f})")
    for label, r in (("shipped settings", held[0]), ("best of the tuning half", held[1])):
        s = r.settings
        print(f"\nheld-out half, {label} (rrf_k={s.rrf_k}, depth={s.depth}, weights={s.weights}):")
        print(format_table(r))


if __name__ == "__main__":
    main()
