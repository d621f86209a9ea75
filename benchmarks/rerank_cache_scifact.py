"""Cross-encoder scores for SciFact's hybrid candidates, cached, and the ways of using them.

    python benchmarks/rerank_cache_scifact.py score --variant tbest-128 [--every 1 --offset 0 --limit 809]
    python benchmarks/rerank_cache_scifact.py report [--variants tbest-128,best-64]
    python benchmarks/rerank_cache_scifact.py table [--variants best-64,tbest-64]

``score`` takes the judged train claims (every ``--every``-th from
``--offset``), the union of the hybrid top ``--depth`` under the shipped
fusion (rrf_k=10, weights 1 : 1.5) and under the fusion tuned for bge-small
(rrf_k=5, 1 : 1), and scores each claim-abstract pair with the shipped
cross-encoder for one passage variant (how the passage is chosen, and the
word pieces per pair), appending to benchmarks/results/scifact-rerank.json:
an interrupted run keeps what it scored, and a second run scores only what is
missing. The first-stage features (both fused orders, cosines, full-text
ranks) are stored once per claim.

``report`` then scores orders built from the cache: hybrid alone, and the
reranked orders for every variant and combination tried, tuned on the
even-numbered claims, reported on the odd-numbered half (which took no part in
choosing) and on all the claims scored. Nothing is re-embedded: the bge-small
vectors come from benchmarks/results/scifact-bge-small-en-v1.5.npz
(rag_eval_scifact.py writes it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
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
    read_dataset,
)

CACHE = os.path.join(HERE, "results", "scifact-rerank.json")
FUSIONS = {"shipped": (10, (1.0, 1.5)), "bge": (5, (1.0, 1.0))}


def passage_for(variant: str, question: str, text: str) -> list[str]:
    """The passage(s) the cross-encoder reads for one variant name ``kind-tokens``.

    best: rerank.best_passage (sentences holding most question words);
    tbest: the title line, then the best passage of the rest;
    start: the start of the text (title and first sentences);
    tbest2: title + each of the two best non-overlapping passages (max taken).
    """
    from datasette_llm_rag.rerank import best_passage

    kind, tokens = variant.rsplit("-", 1)
    chars = int(tokens) * 5  # more than fits: the encoder cuts at the word-piece budget
    if kind == "best":
        return [best_passage(question, text, chars)]
    if kind == "start":
        return [text[:chars]]
    title, _, body = text.partition("\n")
    if kind == "tbest":
        return [title + "\n" + best_passage(question, body, chars)]
    if kind == "tbest2":
        first = best_passage(question, body, chars // 2)
        rest = body.replace(first, " ")
        return [title + "\n" + first, title + "\n" + best_passage(question, rest, chars // 2)]
    raise SystemExit(f"unknown passage variant {variant!r}")


def load_cache(path: str = CACHE) -> dict:
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return {"claims": {}, "scores": {}}


def load_all() -> dict:
    """Every cache file under results/ merged (parallel runs write their own)."""
    import glob

    merged: dict = {"claims": {}, "scores": {}}
    for path in sorted(glob.glob(os.path.join(HERE, "results", "scifact-rerank*.json"))):
        part = load_cache(path)
        merged["claims"].update(part["claims"])
        for variant, by_claim in part["scores"].items():
            for qid, docs in by_claim.items():
                merged["scores"].setdefault(variant, {}).setdefault(qid, {}).update(docs)
    return merged


def save_cache(cache: dict, path: str = CACHE) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(cache, f)
    os.replace(tmp, path)


def score(args) -> None:
    from datasette_llm_core.embeddings import local_model
    from datasette_llm_core.embeddings.cross_encoder import CrossEncoder
    from datasette_llm_rag.indexer import refresh_index
    from datasette_llm_rag.store import RagIndex

    corpus_path = os.path.join(args.data, "corpus.jsonl")
    if not os.path.exists(corpus_path):
        print(f"SciFact not found under {args.data}: skipping")
        return
    corpus, queries, qrels, _read = read_dataset(
        corpus_path, os.path.join(args.data, "queries_train.jsonl"), os.path.join(args.data, "qrels_train.tsv"))
    qids = [q for i, q in enumerate(qrels) if i % args.every == args.offset][: args.limit]
    path = os.path.join(HERE, "results", "scifact-rerank" + (f"-{args.cache}" if args.cache else "") + ".json")
    cache = load_cache(path)
    model = local_model("bge-small-en-v1.5")
    embedder = CachingEmbedder(model, os.path.join(HERE, "results", f"scifact-{model.model_id}.npz"))
    variants = args.variant.split(",")
    print(f"{len(qids)} claims, variants {variants}; load average {os.getloadavg()[0]:.1f}", flush=True)
    ce = CrossEncoder(threads=args.threads)
    with tempfile.TemporaryDirectory() as work:
        db, side = os.path.join(work, "corpus.db"), os.path.join(work, "corpus.llm-rag.db")
        build_corpus_db(corpus, db)
        asyncio.run(refresh_index(db, "corpus", RAG_CONFIG, embedder, sidecar=side))
        embedder.save()
        index = RagIndex(side)
        vectors = embedder.embed_sync([queries[q] for q in qids], kind="query")
        started, pairs, last_save = time.perf_counter(), 0, time.perf_counter()
        for n, (qid, vec) in enumerate(zip(qids, vectors)):
            text = queries[qid]
            claim = cache["claims"].get(qid)
            texts = {}
            if claim is None or any(qid not in cache["scores"].get(v, {}) for v in variants):
                claim = {"orders": {}, "cos": {}, "fts": {}, "vrank": {}}
                for name, (k, weights) in FUSIONS.items():
                    hits = index.search_hybrid(text, vec, 100, rrf_k=k, depth=100, weights=weights)
                    claim["orders"][name] = _doc_ids(hits)
                    for h in hits:
                        doc = str(h.pk[0])
                        texts.setdefault(doc, h.text)
                        claim["cos"][doc] = h.vector_score
                        claim["fts"][doc] = h.fts_rank
                        claim["vrank"][doc] = h.vector_rank
                cache["claims"][qid] = claim
            for variant in variants:
                done = cache["scores"].setdefault(variant, {}).setdefault(qid, {})
                wanted = []
                for order in claim["orders"].values():
                    wanted += [d for d in order[: args.depth] if d not in wanted and d not in done]
                if not wanted:
                    continue
                passages, owners = [], []
                for doc in wanted:
                    for p in passage_for(variant, text, texts[doc]):
                        passages.append(p)
                        owners.append(doc)
                tokens = int(variant.rsplit("-", 1)[1])
                logits = ce.score(text, passages, max_tokens=tokens)
                for doc, x in zip(owners, logits):
                    done[doc] = max(done.get(doc, -1e9), float(x))
                pairs += len(passages)
            if time.perf_counter() - last_save > 30:
                save_cache(cache, path)
                last_save = time.perf_counter()
            if (n + 1) % 25 == 0:
                print(f"  {n + 1}/{len(qids)} claims, {pairs} pairs scored "
                      f"({time.perf_counter() - started:.0f}s, load {os.getloadavg()[0]:.1f})", flush=True)
        index.close()
    save_cache(cache, path)
    print(f"done: {pairs} pairs in {time.perf_counter() - started:.0f}s; load average {os.getloadavg()[0]:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("score")
    s.add_argument("--data", default=SCIFACT)
    s.add_argument("--variant", required=True, help="comma-separated, e.g. tbest-128,best-64")
    s.add_argument("--every", type=int, default=1)
    s.add_argument("--offset", type=int, default=0)
    s.add_argument("--limit", type=int, default=10_000)
    s.add_argument("--depth", type=int, default=12)
    s.add_argument("--threads", type=int, default=1)
    s.add_argument("--cache", default="", help="suffix of this run's cache file (parallel runs)")
    r = sub.add_parser("report")
    r.add_argument("--data", default=SCIFACT)
    r.add_argument("--variants", default=None)
    t = sub.add_parser("table")
    t.add_argument("--data", default=SCIFACT)
    t.add_argument("--variants", default=None)
    args = parser.parse_args()
    if args.command == "score":
        score(args)
    elif args.command == "report":
        from rerank_combine import report

        report(args, load_all())
    else:
        from rerank_combine import summary

        summary(args, load_all())


if __name__ == "__main__":
    main()
