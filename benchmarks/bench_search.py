"""Search speed, recall and memory of the sidecar index at 100k (and 1M) vectors.

    python benchmarks/bench_search.py                 # 100k vectors, ~2 minutes
    python benchmarks/bench_search.py --sizes 1000000 # the 1M run (~10 minutes)

Vectors: real all-MiniLM-L6-v2 embeddings of the 5,183 SciFact abstracts,
grown to N by adding to a real vector half the difference of two other real
vectors plus small isotropic noise, renormalised (see rag_data.augment).
Queries: real embeddings of SciFact claims. Each entry's text is the
abstract its vector grew from (``--text title`` uses only the title, which
keeps the 1M sidecar small).

Measured in the same run: median/p95 latency of vector, filtered vector and
hybrid search through ``RagIndex``; recall@10 against exact float32 search
over the unquantised vectors; exact numpy search over a float32 matrix; a
per-row Python cosine loop (timed on a sample, extrapolated); resident
memory added by loading the index (VmRSS delta).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rag_data import (  # noqa: E402
    RESULTS,
    augment,
    augment_mix,
    model_vectors,
    real_vectors,
    rss_mb,
    synthetic_vectors,
)

from datasette_llm_rag.indexer import _write_batch  # noqa: E402
from datasette_llm_rag.livecheck import live_rows_fn, pk_key, reconcile  # noqa: E402
from datasette_llm_rag.ragconfig import parse_rag_config  # noqa: E402
from datasette_llm_rag.sidecar import init_meta, open_sidecar  # noqa: E402
from datasette_llm_rag.store import RagIndex  # noqa: E402
from datasette_llm_rag.textbuild import text_hash  # noqa: E402

K = 10
LIVE_TABLES = parse_rag_config(
    {"databases": {"bench": {"tables": {"docs": {"columns": ["body"]}, "notes": {"columns": ["body"]}}}}}
).databases["bench"].tables


def grow(base: np.ndarray, n: int, growth: str):
    return augment_mix(base, n) if growth == "mix" else augment(base, n)


def sidecar_name(n: int, text: str, growth: str) -> str:
    return os.path.join(RESULTS, f"bench-search-{n}-{text}{'-mix' if growth == 'mix' else ''}.llm-rag.db")


def build(path: str, base: np.ndarray, texts: list[str], n: int, queries: np.ndarray, text_mode: str,
          growth: str = "copies"):
    """Write n vectors into a fresh sidecar, and the rows they index into a
    source database beside it; return exact top-K ids per query."""
    for suffix in ("", "-wal", "-shm", ".source.db"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    source = sqlite3.connect(path + ".source.db")
    for table in ("docs", "notes"):
        source.execute(f"create table {table} (id integer primary key, body text)")
    side = open_sidecar(path, create=True)
    side.execute("begin")
    init_meta(side, "all-MiniLM-L6-v2", base.shape[1])
    side.execute("commit")
    best_scores = np.full((len(queries), K), -np.inf, np.float32)
    best_ids = np.zeros((len(queries), K), np.int64)
    next_id = 1
    started = time.perf_counter()
    for block, src in grow(base, n, growth):
        items = []
        for j, s in enumerate(src.tolist()):
            row = next_id + j
            table = "notes" if row % 10 == 0 else "docs"
            text = texts[s].split("\n", 1)[0] if text_mode == "title" else texts[s]
            items.append(("new", (table, f"[{row}]", 0, text, text_hash(text), None)))
        first = next_id
        for _kind, (table, pk, _chunk, text, _h, _t) in items:
            source.execute(f"insert into {table} (id, body) values (?, ?)", (int(pk[1:-1]), text))
        next_id = _write_batch(side, next_id, items, block)
        scores = queries @ block.T  # exact float32 ground truth, streamed
        cand = np.concatenate([best_scores, scores], axis=1)
        cand_ids = np.concatenate([best_ids, np.broadcast_to(np.arange(first, next_id), scores.shape)], axis=1)
        top = np.argpartition(-cand, K - 1, axis=1)[:, :K]
        best_scores = np.take_along_axis(cand, top, 1)
        best_ids = np.take_along_axis(cand_ids, top, 1)
        print(f"\r  wrote {next_id - 1:,}/{n:,}", end="", flush=True)
    side.close()
    source.commit()
    source.close()
    print(f"\r  wrote {n:,} entries in {time.perf_counter() - started:.1f}s "
          f"({os.path.getsize(path) / 1e6:,.0f} MB sidecar)")
    return best_ids


CPU: dict[int, list[float]] = {}


def timed(fn, repeats):
    """Wall-clock times of ``repeats`` calls (CPU times, all threads, kept in CPU)."""
    times, cpu = [], []
    out = None
    for i in range(repeats):
        c = time.process_time()
        t = time.perf_counter()
        out = fn(i)
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    CPU[id(times)] = cpu
    return times, out


def interleaved(fns, repeats):
    """``timed`` for several functions called in turn, call i of each before
    call i + 1 of any: one time list per function."""
    out = [([], []) for _ in fns]
    for i in range(repeats):
        for fn, (times, cpu) in zip(fns, out):
            c = time.process_time()
            t = time.perf_counter()
            fn(i)
            times.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
    for times, cpu in out:
        CPU[id(times)] = cpu
    return [times for times, _ in out]


def cpu_ms(times) -> float:
    return statistics.median(CPU[id(times)]) * 1000


def ms(times):
    return statistics.median(times) * 1000, float(np.percentile(times, 95)) * 1000


def python_loop_per_row(vectors: np.ndarray, q: np.ndarray) -> float:
    """Seconds per row for a plain Python cosine loop (the naive baseline)."""
    rows = [list(map(float, v)) for v in vectors]
    qq = list(map(float, q))
    t = time.perf_counter()
    best = []
    for i, row in enumerate(rows):
        dot = sum(a * b for a, b in zip(row, qq))
        na = sum(a * a for a in row) ** 0.5
        nb = sum(b * b for b in qq) ** 0.5
        best.append((dot / (na * nb), i))
    best.sort(reverse=True)
    return (time.perf_counter() - t) / len(rows)


def run_size(n, base, qvec, texts, query_texts, args):
    print(f"\n=== {n:,} vectors (384 dims) ===")
    rng = np.random.default_rng(42)
    pick = rng.choice(len(qvec), size=min(args.queries, len(qvec)), replace=False)
    queries = qvec[pick]
    qtexts = [query_texts[i] for i in pick]
    path = sidecar_name(n, args.text, args.growth)
    truth_path = path + ".truth.npy"
    if args.keep and all(os.path.exists(p) for p in (path, truth_path, path + ".source.db")):
        truth = np.load(truth_path)
        print("  reusing the sidecar and ground truth kept by an earlier --keep run")
    else:
        truth = build(path, base, texts, n, queries, args.text, args.growth)
        np.save(truth_path, truth)

    # Memory: load the index in a fresh process, so nothing freed by the build
    # above can be reused and hide part of the index's footprint.
    probe = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--measure-load", path],
        capture_output=True, text=True, check=True,
    )
    load = json.loads(probe.stdout.strip().splitlines()[-1])
    index_mb, load_s = load["rss_mb"], load["seconds"]
    print(f"  load {load_s:.1f}s, resident memory added {index_mb:.0f} MB (fresh process; "
          f"vectors+codes {load['vector_mb']:.0f} MB, BM25 postings {load['lexical_mb']:.0f} MB)")
    index = RagIndex(path)
    assert index.count == n

    index.search_vector(queries[0], K)  # warm up (thread pool, caches)
    index.search_hybrid(qtexts[0], queries[0], K)
    recalls = []
    for i, q in enumerate(queries):
        got = {h.pk[0] for h in index.search_vector(q, K)}
        recalls.append(len(got & set(truth[i].tolist())) / K)
    # The same sidecar searched as before residuals (int8 scores only), in turn
    # with the shipped search below: recall here, latency there.
    before = RagIndex(path, refine=0)
    before_recalls = []
    for i, q in enumerate(queries):
        got = {h.pk[0] for h in before.search_vector(q, K)}
        before_recalls.append(len(got & set(truth[i].tolist())) / K)
    # The ceiling the int8 codes allow: every stored vector scored, no prefilter.
    state = index._current()
    int8_recalls = []
    for i, q in enumerate(queries[:50]):
        scores = (state.q8.astype(np.float32) @ q) * state.scale
        got = set(state.ids[np.argpartition(-scores, K)[:K]].tolist())
        int8_recalls.append(len(got & set(truth[i].tolist())) / K)
    del state
    # Vector-only and hybrid are timed in turn, query by query, so a change in
    # the machine's speed during the run (other work, a shared host) hits both
    # alike and the ratio stays honest.
    # What the question box runs: 2K fused candidates, then each one checked
    # against its live row in the source database (livecheck.py), timed in
    # turn with the same search without the check.
    source = sqlite3.connect(f"file:{path}.source.db?mode=ro", uri=True, check_same_thread=False)
    check = live_rows_fn("bench", LIVE_TABLES, {})

    def hybrid_live(i):
        hits = index.search_hybrid(qtexts[i], queries[i], 2 * K)
        wanted = {}
        for h in hits:
            wanted.setdefault(h.table, []).append(list(h.pk))
        live = live_rows_fn("bench", LIVE_TABLES, wanted)(source)
        return [h for h in hits if reconcile(h.text, h.title, h.chunk, live.get((h.table, pk_key(h.pk))))]

    assert check(source) == {} and len(hybrid_live(0)) == 2 * K  # nothing dropped: the rows are all live
    vec_t, hyb_t, filt_t, hyb2_t, live_t, vec0_t, hyb0_t = interleaved([
        lambda i: index.search_vector(queries[i], K),
        lambda i: index.search_hybrid(qtexts[i], queries[i], K),
        lambda i: index.search_vector(queries[i], K, tables=["docs"]),
        lambda i: index.search_hybrid(qtexts[i], queries[i], 2 * K),
        hybrid_live,
        lambda i: before.search_vector(queries[i], K),
        lambda i: before.search_hybrid(qtexts[i], queries[i], K),
    ], len(queries))
    before.close()
    source.close()
    per_query_ratio = float(np.median(np.asarray(hyb_t) / np.asarray(vec_t)))
    fts_t, _ = timed(lambda i: index.search_fts(qtexts[i % len(qtexts)], K), len(queries))
    # The same ranking asked of SQLite's FTS5 itself (bm25()), and how far the
    # in-memory top 10 (strongest postings only, see lexical.py) agrees with it.
    n_fts5 = min(len(queries), args.fts5_queries)
    fts5_t, _ = timed(lambda i: index.search_fts5(qtexts[i], K), n_fts5)
    agree = []
    for i in range(n_fts5):
        ours = [h.entry_id for h in index.search_fts(qtexts[i], K)]
        theirs = [h.entry_id for h in index.search_fts5(qtexts[i], K)]
        if theirs:
            agree.append(len(set(ours) & set(theirs)) / len(theirs))
    index.close()
    del index
    gc.collect()

    # Baselines over the same vectors.
    full = np.empty((n, base.shape[1]), np.float32)
    for start, (block, _src) in zip(range(0, n, 100_000), grow(base, n, args.growth)):
        full[start : start + len(block)] = block

    def exact(i):
        s = full @ queries[i % len(queries)]
        top = np.argpartition(-s, K)[:K]
        return top[np.argsort(-s[top])]

    exact_t, _ = timed(exact, min(len(queries), 30))
    sample = full[: min(n, args.loop_sample)]
    per_row = python_loop_per_row(sample, queries[0])
    # Codes of x - (the whole set's mean), against the sidecar's centre (the
    # first batch's mean), scored like "every int8 vector scored" above.
    from datasette_llm_rag.quant import quantize

    mu = full.mean(axis=0)
    centred_recalls = []
    for start in range(0, n, 100_000):
        part = full[start : start + 100_000] - mu
        q8c, scc = quantize(part)
        full[start : start + 100_000] = q8c.astype(np.float32) * scc[:, None] + mu
    for i, q in enumerate(queries[:50]):
        s = full @ q
        got = set((np.argpartition(-s, K)[:K] + 1).tolist())  # entry ids start at 1
        centred_recalls.append(len(got & set(truth[i].tolist())) / K)
    del full
    gc.collect()

    v_med, v_p95 = ms(vec_t)
    f_med, _ = ms(filt_t)
    h_med, h_p95 = ms(hyb_t)
    h2_med, _ = ms(hyb2_t)
    live_med, live_p95 = ms(live_t)
    fts_med, _ = ms(fts_t)
    fts5_med, _ = ms(fts5_t)
    e_med, _ = ms(exact_t)
    loop_ms = per_row * n * 1000
    result = {
        "n": n,
        "queries": len(queries),
        "text": args.text,
        "vector_median_ms": v_med,
        "vector_p95_ms": v_p95,
        "vector_filtered_median_ms": f_med,
        "fts_median_ms": fts_med,
        "fts5_sql_median_ms": fts5_med,
        "fts5_top10_overlap": float(np.mean(agree)) if agree else None,
        "hybrid_median_ms": h_med,
        "hybrid_p95_ms": h_p95,
        "hybrid_over_vector": h_med / v_med,
        "hybrid_over_vector_per_query_median": per_query_ratio,
        "hybrid_2k_median_ms": h2_med,
        "hybrid_2k_live_check_median_ms": live_med,
        "hybrid_2k_live_check_p95_ms": live_p95,
        "live_check_cost_ms": live_med - h2_med,
        "hybrid_2k_cpu_median_ms": cpu_ms(hyb2_t),
        "hybrid_2k_live_check_cpu_median_ms": cpu_ms(live_t),
        "growth": args.growth,
        "recall_at_10": float(np.mean(recalls)),
        "recall_at_10_int8_only": float(np.mean(before_recalls)),
        "vector_int8_only_median_ms": ms(vec0_t)[0],
        "hybrid_int8_only_median_ms": ms(hyb0_t)[0],
        "hybrid_int8_only_p95_ms": ms(hyb0_t)[1],
        "vector_int8_only_cpu_median_ms": cpu_ms(vec0_t),
        "hybrid_int8_only_cpu_median_ms": cpu_ms(hyb0_t),
        "recall_min": float(np.min(recalls)),
        "recall_at_10_int8_exact": float(np.mean(int8_recalls)),
        "recall_at_10_int8_centred_exact": float(np.mean(centred_recalls)),
        "exact_numpy_median_ms": e_med,
        "python_loop_ms_extrapolated": loop_ms,
        "python_loop_sample_rows": len(sample),
        "speedup_vs_python_loop": loop_ms / v_med,
        "speedup_vs_exact_numpy": e_med / v_med,
        "index_rss_mb": index_mb,
        "float32_matrix_mb": n * base.shape[1] * 4 / 2**20,
        "load_seconds": load_s,
        "sidecar_mb": os.path.getsize(path) / 2**20,
    }
    result.update(
        load_average=os.getloadavg()[0],
        vector_cpu_median_ms=cpu_ms(vec_t), fts_cpu_median_ms=cpu_ms(fts_t),
        hybrid_cpu_median_ms=cpu_ms(hyb_t), exact_cpu_median_ms=cpu_ms(exact_t),
    )
    print(f"  load average {result['load_average']:.1f} on {os.cpu_count()} cores; CPU medians (all threads): "
          f"vector {cpu_ms(vec_t):.2f} ms, fts {cpu_ms(fts_t):.2f} ms, hybrid {cpu_ms(hyb_t):.2f} ms, "
          f"exact numpy {cpu_ms(exact_t):.2f} ms")
    print(f"  vector search   median {v_med:.2f} ms  p95 {v_p95:.2f} ms   recall@10 vs exact float32 "
          f"{result['recall_at_10']:.4f} (min {result['recall_min']:.1f}); every int8 vector scored: "
          f"{result['recall_at_10_int8_exact']:.4f}, with the whole set's mean as centre "
          f"{result['recall_at_10_int8_centred_exact']:.4f} (first {len(int8_recalls)} queries)")
    print(f"  int8 only (before residuals), same sidecar, timed in turn: recall@10 "
          f"{result['recall_at_10_int8_only']:.4f}; vector {ms(vec0_t)[0]:.2f} ms, hybrid {ms(hyb0_t)[0]:.2f} ms "
          f"p50 ({ms(hyb0_t)[1]:.2f} p95; CPU {cpu_ms(vec0_t):.2f} / {cpu_ms(hyb0_t):.2f} ms)")
    print(f"  filtered (90%)  median {f_med:.2f} ms")
    print(f"  fts only        median {fts_med:.2f} ms; FTS5 bm25() in SQLite {fts5_med:.1f} ms "
          f"({fts5_med / fts_med:.0f}x slower), top-10 overlap with it "
          f"{result['fts5_top10_overlap'] or 0:.3f} over {n_fts5} queries")
    print(f"  hybrid          median {h_med:.2f} ms  p95 {h_p95:.2f} ms   = {h_med / v_med:.2f}x vector-only "
          f"(median of per-query ratios {per_query_ratio:.2f}x; timed in turn with vector-only)")
    print(f"  + live rows     median {live_med:.2f} ms  p95 {live_p95:.2f} ms   hybrid of {2 * K} candidates "
          f"checked against the source rows; the same search unchecked {h2_med:.2f} ms "
          f"(check costs {live_med - h2_med:.2f} ms, {live_med / h2_med:.2f}x; CPU medians "
          f"{cpu_ms(live_t):.2f} vs {cpu_ms(hyb2_t):.2f} ms)")
    print(f"  exact numpy     median {e_med:.2f} ms   -> index is {e_med / v_med:.1f}x faster")
    print(f"  python loop     {loop_ms:,.0f} ms extrapolated from {len(sample):,} rows "
          f"-> index is {loop_ms / v_med:,.0f}x faster")
    print(f"  memory          +{index_mb:.0f} MB resident (float32 matrix would be "
          f"{result['float32_matrix_mb']:.0f} MB)")
    if not args.keep:
        for suffix in ("", "-wal", "-shm", ".truth.npy", ".source.db"):
            if os.path.exists(path + suffix):
                os.remove(path + suffix)
    return result


def measure_load(path: str) -> None:
    """Child process: RSS added by loading the index at ``path`` (printed as JSON)."""
    gc.collect()
    before = rss_mb()
    t = time.perf_counter()
    index = RagIndex(path)
    _ = index.count  # force the lazy load
    seconds = time.perf_counter() - t
    gc.collect()
    state = index._current()
    vector_mb = (state.q8.nbytes + state.scale.nbytes + state.ids.nbytes + state.tcode.nbytes
                 + sum(w.nbytes for w in state.words)) / 2**20
    lexical_mb = state.lexical.nbytes / 2**20 if state.lexical else 0.0
    print(json.dumps({"rss_mb": rss_mb() - before, "seconds": seconds,
                      "vector_mb": vector_mb, "lexical_mb": lexical_mb}))


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--measure-load":
        measure_load(sys.argv[2])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000", help="comma-separated vector counts")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--text", choices=["full", "title"], default="full")
    parser.add_argument("--loop-sample", type=int, default=5000)
    parser.add_argument("--fts5-queries", type=int, default=50,
                        help="questions also ranked by SQLite FTS5's bm25() (slow at scale)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the benchmark sidecar and reuse it on the next --keep run")
    parser.add_argument("--synthetic", action="store_true",
                        help="clustered Gaussian vectors instead of MiniLM embeddings (no model run; "
                        "latency of the search machinery, not retrieval quality)")
    parser.add_argument("--model", help="vectors of this local model (e.g. bge-small-en-v1.5) instead of "
                        "MiniLM's, from results/scifact-<model>.npz (what is missing is embedded)")
    parser.add_argument("--growth", choices=["copies", "mix"], default="copies",
                        help="how vectors beyond the real ones are made: 'copies' (a real vector plus half the "
                        "difference of two others, the original benchmark) or 'mix' (distinct blends of 2-3 real "
                        "vectors plus data-shaped noise, matched to the real data's neighbour statistics)")
    parser.add_argument("--docs", type=int, default=0, help="with --model: only the first N abstracts (-1: those already in the cache)")
    args = parser.parse_args()
    os.makedirs(RESULTS, exist_ok=True)
    if args.synthetic:
        base, qvec, texts, desc = synthetic_vectors()
    elif args.model:
        base, qvec, texts, desc = model_vectors(args.model, args.docs)
    else:
        base, qvec, texts, desc = real_vectors()
    from rag_data import scifact_queries

    query_texts = scifact_queries() or [f"query {i}" for i in range(len(qvec))]
    print(f"vectors: {desc}; {os.cpu_count()} cores; numpy {np.__version__}")
    results = [run_size(int(s), base, qvec, texts, query_texts, args) for s in args.sizes.split(",")]
    out = os.path.join(RESULTS, "bench_search.json")
    previous = {}
    if os.path.exists(out):
        with open(out) as f:
            previous = {r["n"]: r for r in json.load(f)}
    previous = {(r["n"], r.get("growth", "copies")): r for r in previous.values()}
    previous.update({(r["n"], r["growth"]): r for r in results})
    with open(out, "w") as f:
        json.dump(sorted(previous.values(), key=lambda r: (r["n"], r["growth"])), f, indent=2)
    print(f"\nresults appended to {out}")


if __name__ == "__main__":
    main()
