"""Retrieval across tables of very different text length, with judged rows.

    python benchmarks/bench_multitable.py [--models bge-small-en-v1.5,all-MiniLM-L6-v2]

One database, five tables built from the repository's demo data (the same
files as demo_data/raw, from ../shared/data): State of the Union passages
2001-2017 (~1,500 characters each), the FiveThirtyEight Trump lawsuits,
congressional resignations, cabinet turnover and special-investigation
charges (one short line each). Each question's answers live in one table,
and the judged rows are picked by a rule on that table's columns (e.g. the
lawsuits whose issue is asylum, DACA, sanctuary cities, TPS or the travel
ban), never by looking at search results.

It reproduces the demo's failure: asked "Which lawsuits challenged Trump's
immigration policies?", hybrid search ranks speech passages about
immigration above the lawsuits. Reported per model: nDCG@10 of hybrid and of
hybrid + rerank, the share of the top 6 (the rows an answer is written from)
that come from the right table, rerank time per question, and how well the
calibrated reranker score separates judged from unjudged rows (to choose
``rerank: min_relevance``). Embeddings are cached in benchmarks/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import sqlite3
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from datasette_llm_rag.evaluate import CachingEmbedder, ndcg_at  # noqa: E402
from datasette_llm_rag.fusion import fusion_for  # noqa: E402
from datasette_llm_rag.rerank import RerankSettings, best_passage, rerank, table_weights_for  # noqa: E402

RESULTS = os.path.join(HERE, "results")
RAW = os.path.join(ROOT, "demo_data", "raw")
F38 = os.path.join(RAW, "fivethirtyeight")
SHARED_F38 = next((p for p in (os.path.join(ROOT, "..", "shared", "data", "fivethirtyeight"),
                   os.path.join(ROOT, "..", "..", "shared", "data", "fivethirtyeight"))
                   if os.path.isdir(p)), os.path.join(ROOT, "..", "shared", "data", "fivethirtyeight"))

IMMIGRATION = {"Asylum", "DACA", "Sanctuary cities", "Sanctuary laws", "TPS revocation", "Travel ban"}

#: (question, table, rule over that table's row dict)
QUESTIONS = [
    ("Which lawsuits challenged Trump's immigration policies?", "trump_lawsuits",
     lambda r: r["issue"] in IMMIGRATION),
    ("Who sued over the citizenship question on the census?", "trump_lawsuits",
     lambda r: r["issue"] == "Census"),
    ("Court cases about the ban on transgender people serving in the military", "trump_lawsuits",
     lambda r: r["issue"] == "Transgender military ban"),
    ("Lawsuits saying Trump's businesses take payments from foreign governments", "trump_lawsuits",
     lambda r: r["issue"] == "Emoluments"),
    ("Which cities sued the Justice Department over sanctuary city grants?", "trump_lawsuits",
     lambda r: r["issue"] == "Sanctuary cities"),
    ("Challenges to the national emergency declared to build the border wall", "trump_lawsuits",
     lambda r: r["issue"] == "National emergency declaration"),
    ("Lawsuits about free speech and Trump blocking critics", "trump_lawsuits",
     lambda r: r["issue"] == "First Amendment"),
    ("Which members of Congress resigned over unwanted sexual contact or harassment?",
     "congress_resignations", lambda r: "X" in r["Category"]),
    ("Members of Congress who resigned to serve in the military", "congress_resignations",
     lambda r: "H" in r["Category"]),
    ("Who was convicted or pleaded guilty in the Watergate investigation?", "special_investigations",
     lambda r: r["investigation"] == "watergate" and r["type"] in ("conviction", "guilty-plea")),
]

CONFIG = {
    "databases": {
        "bench": {
            "tables": {
                "sotu_passages": {"template": "{president}, State of the Union {year}: {text}",
                                  "title_column": "id", "chunk_chars": 1500},
                "trump_lawsuits": {"template": "{caseName}. Plaintiff: {plaintiff}. Defendant: "
                                   "{defendant}. Court: {currentLocation}. Issue: {issue}. "
                                   "Status: {status}.", "title_column": "caseName"},
                "congress_resignations": {"template": "{Member} ({Party}, {District}) resigned from "
                                          "Congress on {Resignation_Date}: {Reason}.",
                                          "title_column": "Member"},
                "cabinet_turnover": {"template": "{appointee}, {position} under President "
                                     "{president}, served {start_date} to {end_date}.",
                                     "title_column": "appointee"},
                "special_investigations": {"template": "{name}: {type} in the {investigation} "
                                           "investigation (president {president}).",
                                           "title_column": "name"},
            }
        }
    }
}


def _csv(name: str, file: str) -> list[dict]:
    for base in (F38, SHARED_F38):
        path = os.path.join(base, name, file)
        if os.path.exists(path):
            with open(path, encoding="utf-8-sig") as f:
                return list(csv.DictReader(f))
    raise SystemExit(f"{name}/{file} not found under {F38} or {SHARED_F38}")


def build(path: str) -> dict[str, list[dict]]:
    import importlib.util

    spec = importlib.util.spec_from_file_location("demo_build", os.path.join(ROOT, "demo_data", "build.py"))
    demo_build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo_build)
    split_passages = demo_build.split_passages

    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    tables: dict[str, list[dict]] = {}
    passages = []
    sotu = os.path.join(RAW, "sotu")
    for name in sorted(os.listdir(sotu)):
        if not name.endswith(".txt") or int(name[:4]) < 2001:
            continue
        year, rest = name[:-4].split("_", 1)
        president = " ".join(w.capitalize() for w in rest.split("_")[:-1])
        with open(os.path.join(sotu, name), encoding="utf-8") as f:
            for n, text in enumerate(split_passages(f.read()), 1):
                passages.append({"id": f"{year}-{n:03d}", "year": int(year),
                                 "president": president, "text": text})
    tables["sotu_passages"] = passages
    tables["trump_lawsuits"] = _csv("trump-lawsuits", "trump-lawsuits.csv")
    tables["congress_resignations"] = [
        {k.replace(" ", "_"): v for k, v in r.items()}
        for r in _csv("congress-resignations", "congressional_resignations.csv")
    ]
    tables["cabinet_turnover"] = [
        {k: v for k, v in r.items() if k} for r in _csv("cabinet-turnover", "cabinet-turnover.csv")
    ]
    tables["special_investigations"] = [
        {k.strip().replace("-", "_"): v for k, v in r.items()}
        for r in _csv("russia-investigation", "russia-investigation.csv")
    ]
    conn = sqlite3.connect(path)
    for name, rows in tables.items():
        cols = list(rows[0])
        if name == "trump_lawsuits":
            pk = "docketNumber"
        elif name == "sotu_passages":
            pk = "id"
        else:
            pk = None
        conn.execute("create table {} ({})".format(
            name, ", ".join(f'"{c}" text' + (" primary key" if c == pk else "") for c in cols)))
        conn.executemany(
            "insert or ignore into {} values ({})".format(name, ",".join("?" * len(cols))),
            [[r.get(c) for c in cols] for r in rows])
    conn.commit()
    conn.close()
    return tables


def judged(path: str) -> list[tuple[str, str, set[tuple[str, str]]]]:
    """(question, table, {(table, pk json)}) with the table's primary keys as the index stores them."""
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    out = []
    for question, table, rule in QUESTIONS:
        pk = {"trump_lawsuits": "docketNumber", "sotu_passages": "id"}.get(table, "rowid")
        rows = conn.execute(f"select {pk} as _pk, * from {table}").fetchall()
        keys = {(table, json.dumps([r["_pk"]])) for r in rows if rule(dict(r))}
        assert keys, question
        out.append((question, table, keys))
    conn.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="bge-small-en-v1.5,all-MiniLM-L6-v2")
    parser.add_argument("--depth", type=int, default=RerankSettings.depth)
    parser.add_argument("--tokens", type=int, default=RerankSettings.max_tokens)
    parser.add_argument("--weights", default="0,5,10,20,30", help="vector weights to compare")
    parser.add_argument("--rrf-k", type=int, default=None, help="fusion constant (default: the model's)")
    parser.add_argument("--table-weights", default=None,
                        help="cosine,full-text,rank weights within tables (default: the model's; 0,0,0: none)")
    parser.add_argument("--fts-weight", default=None, help="full-text weight in the fusion (default: the model's)")
    args = parser.parse_args()
    from datasette_llm_core.embeddings import local_model
    from datasette_llm_core.embeddings.cross_encoder import CrossEncoder
    from datasette_llm_rag.indexer import refresh_index
    from datasette_llm_rag.store import RagIndex

    os.makedirs(RESULTS, exist_ok=True)
    db = os.path.join(RESULTS, "multitable.db")
    tables = build(db)
    sizes = {t: (len(rows), int(np.mean([len(" ".join(str(v) for v in r.values())) for r in rows])))
             for t, rows in tables.items()}
    print("tables: " + ", ".join(f"{t} {n} rows (~{c} chars)" for t, (n, c) in sizes.items()))
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
    questions = judged(db)
    encoder = CrossEncoder()
    settings = RerankSettings(depth=args.depth, max_tokens=args.tokens)
    weights = [float(w) for w in args.weights.split(",")]
    report: dict = {"sizes": sizes, "models": {}}
    print(f"rerank depth {settings.depth}, {settings.max_tokens} word pieces", flush=True)
    for model_id in args.models.split(","):
        model = local_model(model_id)
        cache = os.path.join(RESULTS, f"multitable-{model.model_id}.npz")
        embedder = CachingEmbedder(model, cache)
        side = os.path.join(RESULTS, f"multitable-{model.model_id}.llm-rag.db")
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(side + suffix):
                os.remove(side + suffix)
        t0 = time.perf_counter()
        stats = asyncio.run(refresh_index(db, "bench", CONFIG, embedder, sidecar=side))
        embedder.save()
        print(f"\n{model.model_id}: {stats.added} entries indexed in {time.perf_counter() - t0:.0f}s "
              f"({embedder.embedded} embedded now)", flush=True)
        index = RagIndex(side)
        rrf_k, fusion_weights = fusion_for(model.model_id, args.rrf_k,
                                           float(args.fts_weight) if args.fts_weight is not None else None)
        fusion = {"rrf_k": rrf_k, "weights": fusion_weights}
        table_weights = table_weights_for(
            model.model_id, [float(x) for x in args.table_weights.split(",")] if args.table_weights else None)
        print(f"first-stage weights within tables (cosine, full text, fused rank): {table_weights}")
        print(f"fusion: rrf_k={rrf_k}, weights {fusion_weights[0]} : {fusion_weights[1]}", flush=True)
        rows_out, pairs, rerank_ms, embed_ms, search_ms, rerank_cpu_ms = [], {}, [], [], [], []
        model.embed_sync(["warm up"], kind="query")
        encoder.score("warm up", ["warm up"])
        for question, table, keys in questions:
            t = time.perf_counter()
            qvec = model.embed_sync([question], kind="query")[0]  # uncached: timed
            embed_ms.append(1000 * (time.perf_counter() - t))
            t = time.perf_counter()
            hits = index.search_hybrid(question, qvec, max(20, settings.depth), **fusion)
            search_ms.append(1000 * (time.perf_counter() - t))
            seen, uniq = set(), []
            for h in hits:  # one hit per row, as the question box shows them
                key = (h.table, json.dumps(h.pk))
                if key not in seen:
                    seen.add(key)
                    uniq.append(h)
            t, c = time.perf_counter(), time.process_time()
            passages = [best_passage(question, h.text, settings.reranker_chars) for h in uniq[: settings.depth]]
            logits = encoder.score(question, passages[: settings.depth], max_tokens=settings.max_tokens)
            rerank_ms.append(1000 * (time.perf_counter() - t))
            rerank_cpu_ms.append(1000 * (time.process_time() - c))
            gains = {"{}|{}".format(*k): 1 for k in keys}
            before = ["{}|{}".format(h.table, json.dumps(h.pk)) for h in uniq]
            row = {"question": question, "hybrid_ndcg": ndcg_at(before, gains),
                   "top6_right_hybrid": sum(h.table == table for h in uniq[:6]),
                   "top6_tables_hybrid": [h.table for h in uniq[:6]]}
            for w in weights:
                ranked = rerank(question, uniq, lambda q, p, _l=logits: _l,
                                RerankSettings(depth=settings.depth, vector_weight=w,
                                               table_weights=table_weights))
                after = ["{}|{}".format(h.table, json.dumps(h.pk)) for h, _s, _p in ranked]
                row[f"rerank_ndcg_{w}"] = ndcg_at(after, gains)
                row[f"top6_right_{w}"] = sum(h.table == table for h, _s, _p in ranked[:6])
                row[f"top6_tables_{w}"] = [h.table for h, _s, _p in ranked[:6]]
                row[f"top6_scores_{w}"] = [None if s is None else round(s, 3) for _h, s, _p in ranked[:6]]
                for h, score, _p in ranked:
                    if score is not None:
                        pairs.setdefault(w, []).append((score, (h.table, json.dumps(h.pk)) in keys))
            rows_out.append(row)
        index.close()
        head = " | ".join(f"+ rerank w={w}" for w in weights)
        print(f"| question | hybrid nDCG@10 | {head} | right table in top 6: hybrid | {head} |")
        print("|---" * (2 + 2 * len(weights)) + "|")
        for r in rows_out:
            print(f"| {r['question']} | {r['hybrid_ndcg']:.3f} | "
                  + " | ".join(f"{r[f'rerank_ndcg_{w}']:.3f}" for w in weights)
                  + f" | {r['top6_right_hybrid']}/6 | "
                  + " | ".join(f"{r[f'top6_right_{w}']}/6" for w in weights) + " |")

        def mean(key, rows=rows_out):
            return float(np.mean([r[key] for r in rows]))

        print(f"| **mean** | **{mean('hybrid_ndcg'):.3f}** | "
              + " | ".join(f"**{mean(f'rerank_ndcg_{w}'):.3f}**" for w in weights)
              + f" | {mean('top6_right_hybrid'):.1f}/6 | "
              + " | ".join(f"{mean(f'top6_right_{w}'):.1f}/6" for w in weights) + " |")
        first = rows_out[0]
        print(f"'{first['question']}' top 6, hybrid: {first['top6_tables_hybrid']}")
        for w in weights:
            print(f"  reranked (w={w}): {first[f'top6_tables_{w}']} scores {first[f'top6_scores_{w}']}")
        total = [a + b + c for a, b, c in zip(embed_ms, search_ms, rerank_ms)]
        print(f"question box, p50 (max) over {len(total)} questions: question embedding "
              f"{np.median(embed_ms):.0f} ms, hybrid search {np.median(search_ms):.1f} ms, rerank of "
              f"{settings.depth} candidates ({settings.max_tokens} word pieces each) "
              f"{np.median(rerank_ms):.0f} ms ({max(rerank_ms):.0f}); total {np.median(total):.0f} ms "
              f"(load average {os.getloadavg()[0]:.1f}); rerank CPU time p50 {np.median(rerank_cpu_ms):.0f} ms "
              f"(both threads: on an idle two-core machine the wall time is about half of it)")
        best_by_w = {}
        for w in weights:
            scores = np.array([s for s, _j in pairs[w]])
            labels = np.array([j for _s, j in pairs[w]])
            best = None
            for threshold in (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7):
                pred = scores >= threshold
                tp = int((pred & labels).sum())
                precision = tp / max(1, pred.sum())
                recall = tp / max(1, labels.sum())
                f1 = 2 * precision * recall / max(1e-9, precision + recall)
                print(f"    w={w} min_relevance {threshold}: precision {precision:.2f} "
                      f"recall {recall:.2f} F1 {f1:.2f}")
                if best is None or f1 > best[1]:
                    best = (threshold, f1, precision, recall)
            best_by_w[w] = best
            print(f"  w={w}: best min_relevance by F1 {best[0]} (precision {best[2]:.2f}, "
                  f"recall {best[3]:.2f}, F1 {best[1]:.2f})")
        report["models"][model.model_id] = {"questions": rows_out, "rerank_ms_p50": float(np.median(rerank_ms)),
                                            "total_ms_p50": float(np.median(total)),
                                            "best_min_relevance": best_by_w}
    with open(os.path.join(RESULTS, "bench_multitable.json"), "w") as f:
        json.dump(report, f, indent=2, default=str)


if __name__ == "__main__":
    main()
