"""Orders built from cached cross-encoder scores (rerank_cache_scifact.py report / table).

A combination is (first-stage fusion, depth reranked, cosine weight,
full-text weight, fused-rank weight): the top ``depth`` of the fused order
are sorted by

    logit + cos_w * (cosine - 0.5) + fts_w / (5 + full-text rank) + hyb_w / (5 + fused place)

(rows the full-text search did not find get no full-text term), the rest keep
their fused order. On one table this is the order rerank.rerank gives with
``vector_weight + table_weights[0] = cos_w`` and ``table_weights[1:] =
(fts_w, hyb_w)``; ``shipped_order`` runs rerank.rerank itself. Every
combination is tuned on the even-numbered judged claims and scored on the
odd-numbered ones.
"""

from __future__ import annotations

import itertools
import os

from datasette_llm_rag.evaluate import ndcg_at, read_qrels

DEPTHS = (6, 8, 10, 12)
COS_WEIGHTS = (0, 10, 20, 40, 80, 120, 160)
FTS_WEIGHTS = (0, 5, 20, 40)
HYB_WEIGHTS = (0, 10, 30, 60, 100)


def order(claim: dict, logits: dict, fusion: str, depth: int, cos_w: float, fts_w: float,
          hyb_w: float = 0.0) -> list[str] | None:
    first = claim["orders"][fusion]
    place = {d: i for i, d in enumerate(first[:depth])}
    head = first[:depth]
    if any(d not in logits for d in head):
        return None

    def key(doc: str) -> float:
        cos = claim["cos"].get(doc)
        rank = claim["fts"].get(doc)
        value = logits[doc] + cos_w * ((cos if cos is not None else 0.5) - 0.5)
        if fts_w and rank:
            value += fts_w / (5 + rank)
        if hyb_w:
            value += hyb_w / (5 + place[doc] + 1)
        return value

    return sorted(head, key=lambda d: -key(d)) + first[depth:]


def combined_variant(cache: dict, name: str) -> dict:
    """``max:a+b`` or ``mean:a+b``: one logit per pair from two cached variants
    (the passage read two ways)."""
    how, _, parts = name.partition(":")
    if how not in ("max", "mean") or "+" not in parts:
        return {}
    a, b = (cache["scores"].get(p, {}) for p in parts.split("+", 1))
    out = {}
    for q in set(a) & set(b):
        docs = set(a[q]) & set(b[q])
        out[q] = {d: (max(a[q][d], b[q][d]) if how == "max" else (a[q][d] + b[q][d]) / 2) for d in docs}
    return out


def mean_ndcg(cache, qrels, qids, make) -> tuple[float, int]:
    values = []
    for qid in qids:
        ranked = make(qid)
        if ranked is None:
            return float("nan"), 0
        values.append(ndcg_at(ranked, qrels[qid]))
    return (sum(values) / len(values) if values else float("nan")), len(values)


def report(args, cache: dict) -> None:
    qrels, _info = read_qrels(os.path.join(args.data, "qrels_train.tsv"))
    index_of = {q: i for i, q in enumerate(qrels)}
    variants = args.variants.split(",") if args.variants else sorted(cache["scores"])
    for variant in variants:
        scored = cache["scores"].get(variant) or combined_variant(cache, variant)
        qids = [q for q in qrels if q in scored and q in cache["claims"] and scored[q]]
        tune = [q for q in qids if index_of[q] % 2 == 0]
        held = [q for q in qids if index_of[q] % 2 == 1]
        print(f"\n## {variant}: {len(qids)} claims scored ({len(tune)} tuning, {len(held)} held out)")

        for fusion in ("shipped", "bge"):
            def hybrid(q, f=fusion):
                return cache["claims"][q]["orders"][f]

            parts = [mean_ndcg(cache, qrels, s, hybrid) for s in (tune, held, qids)]
            print(f"hybrid {fusion}: tune {parts[0][0]:.4f}  held-out {parts[1][0]:.4f}  all {parts[2][0]:.4f}")
        results = []
        grid = itertools.product(("shipped", "bge"), DEPTHS, COS_WEIGHTS, FTS_WEIGHTS, HYB_WEIGHTS)
        for fusion, depth, cos_w, fts_w, hyb_w in grid:
            def make(q, f=fusion, d=depth, c=cos_w, t=fts_w, h=hyb_w, s=scored):
                return order(cache["claims"][q], s[q], f, d, c, t, h)
            t = mean_ndcg(cache, qrels, tune, make)
            if not t[1]:
                continue
            results.append((t[0], fusion, depth, cos_w, fts_w, hyb_w, make))
        results.sort(key=lambda r: -r[0])
        print("| fusion | depth | cos_w | fts_w | hyb_w | tune | held-out | all |")
        print("|---|---|---|---|---|---|---|---|")
        marks = [r for r in results if r[1:6] in {("shipped", 12, 10, 0, 0), ("bge", 12, 10, 0, 0),
                                                  ("bge", 12, 20, 0, 0), ("bge", 10, 20, 0, 0),
                                                  ("bge", 12, 40, 0, 0), ("bge", 10, 40, 0, 0)}]
        for r in results[:10] + marks:
            held_v = mean_ndcg(cache, qrels, held, r[6])[0]
            all_v = mean_ndcg(cache, qrels, qids, r[6])[0]
            print(f"| {r[1]} | {r[2]} | {r[3]} | {r[4]} | {r[5]} | {r[0]:.4f} | {held_v:.4f} | {all_v:.4f} |")


def summary(args, cache: dict) -> None:
    """The table of docs/rag-evaluation.md: fixed settings, then the best
    tie-break combination chosen on the tuning half, for each 64-word-piece
    variant scored on every claim."""
    qrels, _info = read_qrels(os.path.join(args.data, "qrels_train.tsv"))
    index_of = {q: i for i, q in enumerate(qrels)}
    variants = args.variants.split(",") if args.variants else ["best-64", "tbest-64"]
    scores = {v: cache["scores"].get(v) or combined_variant(cache, v) for v in variants}
    qids = [q for q in qrels if q in cache["claims"] and all(scores[v].get(q) for v in variants)]
    halves = ([q for q in qids if index_of[q] % 2 == 0], [q for q in qids if index_of[q] % 2 == 1], qids)
    print(f"{len(qids)} claims ({len(halves[0])} tuning, {len(halves[1])} held out); variants {variants}")
    print("| order | tuning half | held-out half | all |\n|---|---|---|---|")

    def line(label, make):
        values = [mean_ndcg(cache, qrels, h, make)[0] for h in halves]
        print(f"| {label} | " + " | ".join(f"{v:.4f}" for v in values) + " |")

    for fusion, label in (("shipped", "rrf_k=10, 1 : 1.5"), ("bge", "rrf_k=5, 1 : 1")):
        line(f"hybrid ({label})", lambda q, f=fusion: cache["claims"][q]["orders"][f])
    for v in variants:
        s = scores[v]
        for fusion, w in (("shipped", 10), ("bge", 10), ("bge", 20), ("bge", 40)):
            line(f"{v}, {fusion} fusion, cosine weight {w}",
                 lambda q, f=fusion, w=w, s=s: order(cache["claims"][q], s[q], f, 12, w, 0, 0))
        best = None
        for depth, cos_w, fts_w, hyb_w in itertools.product(DEPTHS, COS_WEIGHTS, FTS_WEIGHTS, HYB_WEIGHTS):
            def make(q, d=depth, c=cos_w, t=fts_w, h=hyb_w, s=s):
                return order(cache["claims"][q], s[q], "bge", d, c, t, h)
            value = mean_ndcg(cache, qrels, halves[0], make)[0]
            if best is None or value > best[0]:
                best = (value, (depth, cos_w, fts_w, hyb_w), make)
        d, c, t, h = best[1]
        line(f"{v}, bge fusion, first stage weighed in, best of the tuning half (depth {d}, cosine {c}, "
             f"full-text {t}, fused rank {h})", best[2])
        line(f"{v}, as shipped (rerank.rerank, bge-small defaults)",
             lambda q, s=s: shipped_order(cache["claims"][q], s[q]))
        if v == variants[0]:
            print(f"  {v}, as shipped: " + relevance_split(cache, qrels, qids, s))
            print(f"  {v}, without the first stage: " + relevance_split(cache, qrels, qids, s, (0, 0, 0)))


def shipped_ranked(claim: dict, logits: dict, model_id: str = "bge-small-en-v1.5",
                   table_weights: tuple | None = None) -> list:
    """``rerank.rerank``'s output for one claim from the cached logits."""
    from types import SimpleNamespace

    from datasette_llm_rag.rerank import (
        RerankSettings,
        rerank,
        table_weights_for,
        vector_weight_for,
    )

    fused = claim["orders"]["bge" if model_id == "bge-small-en-v1.5" else "shipped"]
    hits = [SimpleNamespace(doc=d, table="docs", vector_score=claim["cos"].get(d), fts_rank=claim["fts"].get(d),
                            text="", title=None) for d in fused]
    settings = RerankSettings(vector_weight=vector_weight_for(model_id, None),
                              table_weights=table_weights if table_weights is not None
                              else table_weights_for(model_id, None))
    return rerank("", hits, lambda _q, ps: [logits[h.doc] for h in hits[: len(ps)]], settings)


def relevance_split(cache: dict, qrels: dict, qids: list, scored: dict, table_weights=None,
                    threshold: float = 0.5) -> str:
    """Precision and recall of ``min_relevance`` over the reranked rows."""
    marked = hits = judged = 0
    for q in qids:
        for h, score, _p in shipped_ranked(cache["claims"][q], scored[q], table_weights=table_weights):
            if score is None:
                continue
            relevant = qrels[q].get(h.doc, 0) > 0
            judged += relevant
            if score >= threshold:
                marked += 1
                hits += relevant
    return (f"min_relevance {threshold}: {marked / len(qids):.2f} rows a claim marked relevant, "
            f"precision {hits / max(1, marked):.2f}, recall {hits / max(1, judged):.2f}")


def shipped_order(claim: dict, logits: dict, model_id: str = "bge-small-en-v1.5") -> list[str]:
    """The order the question box gives (rerank.rerank with the model's default
    settings and fusion), from the cached logits: the check that the library
    function does what the tuned combination above does."""
    ranked = shipped_ranked(claim, logits, model_id)
    return [h.doc for h, _s, _p in ranked]
