"""Indexing speed: write path, unchanged refresh, and end-to-end vs the raw model.

    python benchmarks/bench_index.py                      # 100k rows + 256 real embeddings, ~3 min
    python benchmarks/bench_index.py --rows 20000 --real 128

1. Write path: ``refresh_index`` over a 100k-row source table whose texts are
   real (SciFact title + start of abstract, ~300 characters), with an
   embedder that returns precomputed vectors, so the time measured is reading,
   text building, hashing, quantising, the sidecar inserts and the FTS5
   index; the (tiny) time inside the embedder is subtracted and reported.
2. Refreshing the same 100k rows when nothing changed, then after 1% changed.
3. End to end with the shipped local model (all-MiniLM-L6-v2 int8 ONNX) on
   the same real abstracts: raw ``embed_sync`` throughput in the indexer's
   batch size, then ``refresh_index`` throughput on the same texts.
4. ``--memory N``: peak memory (the process's maximum resident set) of
   ``refresh_index`` over N SciFact abstracts with a local model (``--model``),
   each run in a fresh process: the raw model's ``embed_sync`` over the same
   texts (throughput baseline), the indexer as shipped (sub-batches bounded
   by padded word pieces) and, with ``--before``, as before (fixed batches of
   64). Skips parts 1-3.

    python benchmarks/bench_index.py --memory 5183 --model bge-small-en-v1.5
    python benchmarks/bench_index.py --memory 100000 --pool   # the indexer alone, no model
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rag_data import RESULTS, long_texts, short_texts  # noqa: E402

from datasette_llm_rag.indexer import refresh_index  # noqa: E402

BODY_ONLY = {"databases": {"bench": {"tables": {"rows": {"columns": ["body"], "title_column": "title"}}}}}
CONFIG = {"databases": {"bench": {"tables": {"rows": {"columns": ["title", "body"], "title_column": "title"}}}}}


class PoolEmbedder:
    """Returns unit vectors from a fixed pool: embedding costs ~nothing."""

    model_id = "pool-384"
    dimensions = 384
    batch_size = 64

    def __init__(self):
        rng = np.random.default_rng(0)
        pool = rng.normal(size=(4096, 384)).astype(np.float32)
        self.pool = pool / np.linalg.norm(pool, axis=1, keepdims=True)
        self.seconds = 0.0
        self.texts = 0
        self.at = 0

    async def embed(self, texts, *, kind):
        t = time.perf_counter()
        idx = (np.arange(len(texts)) + self.at) % len(self.pool)
        self.at += len(texts)
        out = self.pool[idx]
        self.texts += len(texts)
        self.seconds += time.perf_counter() - t
        return out


def make_source(path: str, texts: list[str]) -> None:
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    conn = sqlite3.connect(path)
    conn.execute("create table rows (id integer primary key, title text, body text)")
    conn.executemany(
        "insert into rows values (?, ?, ?)",
        ((i, t.split(". ", 1)[0][:120], t) for i, t in enumerate(texts, 1)),
    )
    conn.commit()
    conn.close()


def clear(path: str) -> None:
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--real", type=int, default=256, help="abstracts for the real-model comparison (0: skip)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--memory", type=int, default=0, help="peak-memory runs over N abstracts (part 4 only)")
    parser.add_argument("--model", default="all-MiniLM-L6-v2", help="local model for --memory")
    parser.add_argument("--spread", action="store_true",
                        help="--memory N: N abstracts evenly spaced over all 5,183 sorted by length (the "
                        "longest included, which set the peak), instead of the first N")
    parser.add_argument("--pool", action="store_true",
                        help="--memory N: the indexer alone, with an embedder returning fixed vectors (no model; "
                        "N may exceed 5,183: the abstracts repeat)")
    parser.add_argument("--before", action="store_true",
                        help="--memory: also run the batching before the memory fix (needs ~3 GB)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.makedirs(RESULTS, exist_ok=True)
    if args.child:
        return memory_child(args)
    if args.memory:
        return memory(args)
    result: dict = {"rows": args.rows}

    texts, source = short_texts(args.rows)
    db = os.path.join(RESULTS, "bench-index.db")
    side = os.path.join(RESULTS, "bench-index.llm-rag.db")
    make_source(db, texts)
    clear(side)
    avg = sum(map(len, texts)) / len(texts)
    print(f"source: {args.rows:,} rows, texts: {source}, {avg:.0f} characters on average")

    load = os.getloadavg()[0]
    print(f"load average before the run: {load:.1f} on {os.cpu_count()} cores "
          "(wall-clock figures suffer when other work shares the machine; CPU-time figures much less)")
    emb = PoolEmbedder()
    cpu0 = time.process_time()
    stats = asyncio.run(refresh_index(db, "bench", CONFIG, emb, sidecar=side))
    cpu = time.process_time() - cpu0
    write_s = stats.seconds - emb.seconds
    result.update(
        load_average=load,
        first_index_seconds=stats.seconds,
        first_index_cpu_seconds=cpu,
        embed_seconds_inside=emb.seconds,
        write_path_rows_per_s=args.rows / write_s,
        write_path_rows_per_cpu_s=args.rows / max(cpu - emb.seconds, 1e-9),
        avg_chars=avg,
    )
    print(f"1. first index: {stats.seconds:.2f}s wall ({cpu:.2f}s CPU), {emb.seconds:.2f}s inside the "
          f"embedder -> write path {args.rows / write_s:,.0f} rows/s wall, "
          f"{result['write_path_rows_per_cpu_s']:,.0f} rows per CPU-second")

    emb2 = PoolEmbedder()
    cpu0 = time.process_time()
    stats = asyncio.run(refresh_index(db, "bench", CONFIG, emb2, sidecar=side))
    cpu = time.process_time() - cpu0
    assert stats.unchanged == args.rows and emb2.texts == 0
    result["unchanged_refresh_seconds"] = stats.seconds
    result["unchanged_refresh_cpu_seconds"] = cpu
    print(f"2. unchanged refresh of {args.rows:,} rows: {stats.seconds:.2f}s wall ({cpu:.2f}s CPU) "
          f"({stats.unchanged:,} unchanged, 0 embedded); "
          f"{result['first_index_seconds'] / stats.seconds:.1f}x faster than indexing from scratch")

    conn = sqlite3.connect(db)
    changed = max(1, args.rows // 100)
    conn.execute("update rows set body = body || ' (corrected)' where id % 100 = 0")
    conn.commit()
    conn.close()
    emb3 = PoolEmbedder()
    stats = asyncio.run(refresh_index(db, "bench", CONFIG, emb3, sidecar=side))
    result["one_percent_refresh_seconds"] = stats.seconds
    print(f"   after changing {changed:,} rows (1%): {stats.seconds:.2f}s, {emb3.texts:,} texts embedded")
    clear(side)
    clear(db)

    if args.real:
        from datasette_llm_core.embeddings.local_minilm import LocalMiniLM, missing_dependencies

        if missing_dependencies():
            print("3. skipped: local model dependencies missing")
        else:
            model = LocalMiniLM()
            long, lsource = long_texts(args.real)
            model.embed_sync(long[:8])  # load the model once, outside both timings
            db2 = os.path.join(RESULTS, "bench-index-real.db")
            side2 = os.path.join(RESULTS, "bench-index-real.llm-rag.db")
            make_source(db2, long)
            raw_times, idx_times, raw_cpu, idx_cpu = [], [], [], []
            for _round in range(args.rounds):  # alternate, keep the best of each
                c = time.process_time()
                t = time.perf_counter()
                for start in range(0, len(long), model.batch_size):
                    model.embed_sync(long[start : start + model.batch_size])
                raw_times.append(time.perf_counter() - t)
                raw_cpu.append(time.process_time() - c)
                clear(side2)
                c = time.process_time()
                stats = asyncio.run(refresh_index(db2, "bench", BODY_ONLY, model, sidecar=side2))
                idx_cpu.append(time.process_time() - c)
                assert stats.embedded == len(long)
                idx_times.append(stats.seconds)
            # the indexer embeds exactly the strings the raw run embedded
            raw_tps = len(long) / min(raw_times)
            idx_tps = len(long) / min(idx_times)
            result.update(real_texts=len(long), raw_model_texts_per_s=raw_tps, indexer_texts_per_s=idx_tps,
                          end_to_end_ratio=idx_tps / raw_tps, rounds=args.rounds,
                          raw_round_seconds=raw_times, indexer_round_seconds=idx_times)
            print("   rounds (s): raw " + ", ".join(f"{x:.1f}" for x in raw_times)
                  + " | refresh_index " + ", ".join(f"{x:.1f}" for x in idx_times))
            cpu_ratio = min(raw_cpu) / min(idx_cpu)
            result.update(raw_cpu_seconds=raw_cpu, indexer_cpu_seconds=idx_cpu, end_to_end_cpu_ratio=cpu_ratio)
            print("   CPU seconds (all threads): raw " + ", ".join(f"{x:.1f}" for x in raw_cpu)
                  + " | refresh_index " + ", ".join(f"{x:.1f}" for x in idx_cpu)
                  + f" -> refresh_index does the same work in {1 / cpu_ratio:.1%} of the raw model's CPU time")
            print(f"3. {len(long)} texts ({lsource}), best of {args.rounds} alternating rounds: raw model "
                  f"{raw_tps:.1f} texts/s, refresh_index {idx_tps:.1f} texts/s -> "
                  f"{idx_tps / raw_tps:.1%} of the raw model")
            clear(side2)
            clear(db2)

    out = os.path.join(RESULTS, "bench_index.json")
    with open(out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"results written to {out}")


def memory_texts(args) -> list[str]:
    if not args.spread:
        return long_texts(args.memory)[0]
    everything, _src = long_texts(5183)  # all SciFact abstracts
    everything = sorted(set(everything), key=len)
    n = min(args.memory, len(everything))
    picks = np.unique(np.linspace(0, len(everything) - 1, n).round().astype(int))
    return [everything[i] for i in picks]


def memory_child(args) -> None:
    """One indexing run in this (fresh) process; prints peak RSS and speed as JSON."""
    import resource

    if args.pool:
        model = PoolEmbedder()
    else:
        from datasette_llm_core.embeddings import local_model

        model = local_model(args.model)
    if args.child == "raw":
        return raw_child(model, args)
    if args.child == "before":
        model.token_budget = 10**9  # fixed batches of batch_size, as before
        model.batch_size = 64
    texts = memory_texts(args)
    tag = f"{args.child}-{os.getpid()}"
    db = os.path.join(RESULTS, f"bench-mem-{tag}.db")
    side = os.path.join(RESULTS, f"bench-mem-{tag}.llm-rag.db")
    make_source(db, texts)
    clear(side)
    if not args.pool:
        model.embed_sync(texts[:2])
    count = len(texts)
    del texts  # only the indexer's own copies count
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    cpu = time.process_time()
    stats = asyncio.run(refresh_index(db, "bench", BODY_ONLY, model, sidecar=side))
    cpu = time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    clear(side)
    clear(db)
    print(json.dumps({"peak_mb": peak, "after_load_mb": base, "texts_per_s": count / stats.seconds,
                      "texts_per_cpu_s": count / cpu}))


def raw_child(model, args) -> None:
    """The raw model over the same texts, in the indexer's batch size: no
    database, no text building, no writes (the throughput the indexer is held to)."""
    import resource

    texts = memory_texts(args)
    model.embed_sync(texts[:2])
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    cpu, t = time.process_time(), time.perf_counter()
    for start in range(0, len(texts), model.batch_size):
        model.embed_sync(texts[start : start + model.batch_size])
    seconds, cpu = time.perf_counter() - t, time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_mb": peak, "after_load_mb": base, "texts_per_s": len(texts) / seconds,
                      "texts_per_cpu_s": len(texts) / cpu}))


def memory(args) -> None:
    import subprocess

    load = os.getloadavg()[0]
    print(f"peak memory of refresh_index over {args.memory} SciFact abstracts"
          f"{' spread over all 5,183 by length' if args.spread else ''} with {args.model} "
          f"(load average {load:.1f} on {os.cpu_count()} cores)", flush=True)
    out = {}
    # raw model first, then the indexer as shipped; the batching before the
    # memory fix (fixed batches of 64: about 3 GB over SciFact) only with --before
    modes = ("shipped",) if args.pool else ("raw", "shipped") + (("before",) if args.before else ())
    for mode in modes:
        run = subprocess.run([sys.executable, __file__, "--child", mode, "--memory", str(args.memory),
                              "--model", args.model] + (["--spread"] if args.spread else [])
                             + (["--pool"] if args.pool else []),
                             capture_output=True, text=True, check=True)
        out[mode] = json.loads(run.stdout.strip().splitlines()[-1])
        r = out[mode]
        print(f"  {mode:8}: peak {r['peak_mb']:.0f} MB (model loaded: {r['after_load_mb']:.0f} MB), "
              f"{r['texts_per_s']:.1f} texts/s, {r['texts_per_cpu_s']:.1f} texts per CPU-second "
              f"(load average {os.getloadavg()[0]:.1f})", flush=True)
    if args.pool:
        return
    raw, shipped = out["raw"], out["shipped"]
    print(f"  indexer/raw model: throughput {shipped['texts_per_s'] / raw['texts_per_s']:.2f}x wall-clock, "
          f"{shipped['texts_per_cpu_s'] / raw['texts_per_cpu_s']:.2f}x per CPU-second; "
          f"peak {shipped['peak_mb']:.0f} MB (goal: at most 600 MB, at least 0.90x)")
    if "before" in out:
        print(f"  shipped/before: peak {shipped['peak_mb'] / out['before']['peak_mb']:.2f}x, "
              f"throughput {shipped['texts_per_s'] / out['before']['texts_per_s']:.2f}x")
    with open(os.path.join(RESULTS, f"bench_index_memory_{args.model}.json"), "w") as f:
        json.dump({"texts": args.memory, "spread": args.spread, "model": args.model, "load_average": load, **out}, f, indent=2)


if __name__ == "__main__":
    main()
