"""Throughput of the built-in local embedder (all-MiniLM-L6-v2, int8 ONNX).

    python benchmarks/bench_embed_local.py            # ~1 minute on 2 idle cores
    python benchmarks/bench_embed_local.py --n 1024 --repeats 3   # longer run

Texts: ~100-word passages cut from the State of the Union addresses in
../shared/data/sotu when present (synthetic newsroom prose otherwise), and a
mixed-length set (10 to 300 words, like table rows) where padding matters.

Baseline measured in the same run: the same model with texts embedded in the
caller's order (each batch padded to its longest text) against the shipped
behaviour (sorted by token count, so each batch pads only to its own longest).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasette_llm_core.embeddings.local_minilm import LocalMiniLM  # noqa: E402

SOTU = Path(__file__).resolve().parents[2] / "shared" / "data" / "sotu"


def words_source() -> list[str]:
    if SOTU.exists():
        words: list[str] = []
        for path in sorted(SOTU.glob("*.txt"))[-40:]:
            words.extend(path.read_text(encoding="utf-8", errors="replace").split())
        return words
    vocab = (
        "the council voted to approve the budget after a long debate about schools roads "
        "police funding and the river cleanup while the mayor said revenue fell short"
    ).split()
    rng = random.Random(0)
    return [rng.choice(vocab) for _ in range(200_000)]


def passages(words: list[str], n: int, lengths) -> list[str]:
    rng = random.Random(1)
    out = []
    for _ in range(n):
        size = lengths(rng)
        start = rng.randrange(0, max(1, len(words) - size))
        out.append(" ".join(words[start : start + size]))
    return out


def rate(model: LocalMiniLM, texts: list[str], repeats: int) -> float:
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        model.embed_sync(texts)
        best = max(best, len(texts) / (time.perf_counter() - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=128, help="texts per set")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()

    words = words_source()
    sets = {
        "100-word passages": passages(words, args.n, lambda r: 100),
        "mixed 10-300 words": passages(words, args.n, lambda r: int(10 * (30 ** r.random()))),
    }
    shipped = LocalMiniLM()
    baseline = LocalMiniLM(sort_by_length=False)
    shipped.embed_sync(["warm up"])
    print(f"cpu count {os.cpu_count()}, batch size {shipped.batch_size}, {args.n} texts per set")
    print(f"{'set':<22}{'sorted texts/s':>16}{'unsorted texts/s':>18}{'ratio':>8}")
    for name, texts in sets.items():
        fast = rate(shipped, texts, args.repeats)
        slow = rate(baseline, texts, args.repeats)
        print(f"{name:<22}{fast:>16.1f}{slow:>18.1f}{fast / slow:>8.2f}")


if __name__ == "__main__":
    main()
