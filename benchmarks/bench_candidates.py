"""recall@10 and CPU time of vector search as the prefilter keeps more candidates.

    python benchmarks/bench_candidates.py --model bge-small-en-v1.5 --docs -1 --size 100000 \
        --candidates 2000,4000,8000

Reads the sidecar and ground truth that ``bench_search.py ... --keep`` left
for the same vectors, size, text mode and 100-claim query sample (run that
first), and searches it with each candidate count in turn: prefilter scan,
int8 rescoring of the candidates, top 10. What the shipped rule
(``store.default_candidates``) picks is marked.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rag_data import RESULTS, model_vectors, real_vectors  # noqa: E402

from datasette_llm_rag.store import RagIndex, default_candidates  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--text", choices=["full", "title"], default="full")
    parser.add_argument("--queries", type=int, default=100, help="as given to bench_search.py")
    parser.add_argument("--model", help="as given to bench_search.py")
    parser.add_argument("--docs", type=int, default=0, help="as given to bench_search.py")
    parser.add_argument("--growth", choices=["copies", "mix"], default="copies", help="as given to bench_search.py")
    parser.add_argument("--candidates", default="2000,4000,8000")
    args = parser.parse_args()
    _base, qvec, _texts, desc = model_vectors(args.model, args.docs) if args.model else real_vectors()
    pick = np.random.default_rng(42).choice(len(qvec), size=min(args.queries, len(qvec)), replace=False)
    path = os.path.join(RESULTS, f"bench-search-{args.size}-{args.text}{'-mix' if args.growth == 'mix' else ''}.llm-rag.db")
    if not os.path.exists(path + ".truth.npy"):
        sys.exit(f"No kept sidecar at {path}: run bench_search.py with --keep and the same options first.")
    truth = np.load(path + ".truth.npy")
    index = RagIndex(path)
    before = RagIndex(path, refine=0)  # int8 scores only, as before residuals
    state = index._current()
    state0 = before._current()
    if state.count != args.size or len(truth) != len(pick):
        sys.exit(f"{path} holds {state.count:,} vectors and {len(truth)} queries' truth: "
                 "rerun bench_search.py --keep with these options.")
    shipped = default_candidates(state.count, 10)
    print(f"vectors: {desc}; {state.count:,} rows; load average {os.getloadavg()[0]:.1f}")
    for c in [int(x) for x in args.candidates.split(",")]:
        recalls, cpu, recalls0, cpu0 = [], [], [], []
        for i, q in enumerate(qvec[pick]):  # with residuals and without, in turn
            for idx, st, rec, times in ((index, state, recalls, cpu), (before, state0, recalls0, cpu0)):
                t = time.process_time()
                pos, _ = idx._vector_top(st, q, 10, None, c)
                times.append(time.process_time() - t)
                rec.append(len(set(st.ids[pos].tolist()) & set(truth[i].tolist())) / 10)
        mark = "  <- shipped rule" if c == shipped else ""
        print(f"  {c:>7,} candidates: recall@10 {np.mean(recalls):.3f} (int8 only {np.mean(recalls0):.3f}), "
              f"CPU p50 {np.median(cpu) * 1000:.2f} ms (int8 only {np.median(cpu0) * 1000:.2f}){mark}")
    index.close()
    before.close()


if __name__ == "__main__":
    main()
