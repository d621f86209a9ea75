"""Data for the RAG benchmarks: real texts and real MiniLM vectors, cached.

Texts come from ../shared/data (SciFact abstracts and titles, State of the
Union paragraphs) when it is there; otherwise a deterministic word soup is
used and the benchmark says so. Vectors are real all-MiniLM-L6-v2 embeddings
(the shipped int8 ONNX model) of SciFact abstracts and claims, cached in
benchmarks/results/ so that only the first run pays for embedding.
"""

from __future__ import annotations

import json
import os
import random
import resource
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")
# ../shared beside the checkout; a git worktree one level deeper finds it at ../../shared
SHARED = next((p for p in (os.path.join(ROOT, "..", "shared", "data"), os.path.join(ROOT, "..", "..", "shared", "data"))
               if os.path.isdir(p)), os.path.join(ROOT, "..", "shared", "data"))
SCIFACT = os.path.join(SHARED, "scifact-dev")
SOTU = os.path.join(SHARED, "sotu")

if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def rss_mb() -> float:
    """Current resident set size in MB (Linux /proc; falls back to peak RSS)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def scifact_docs() -> list[dict] | None:
    path = os.path.join(SCIFACT, "corpus.jsonl")
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def scifact_queries() -> list[str] | None:
    path = os.path.join(SCIFACT, "queries_train.jsonl")
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f if line.strip()]


def short_texts(n: int, seed: int = 0) -> tuple[list[str], str]:
    """``n`` row texts of a few hundred characters, and where they came from."""
    docs = scifact_docs()
    rng = random.Random(seed)
    if docs:
        pool = [(d.get("title") or "") + ". " + (d.get("text") or "")[:200] for d in docs]
        source = "SciFact title + first 200 characters of the abstract"
    else:
        words = "council budget harbour school police water transit housing election audit".split()
        pool = [" ".join(rng.choice(words) for _ in range(40)) for _ in range(2000)]
        source = "synthetic word soup (../shared not found)"
    return [f"{pool[i % len(pool)]} (row {i})" for i in range(n)], source


def long_texts(n: int) -> tuple[list[str], str]:
    docs = scifact_docs()
    if docs:
        texts = [(d.get("title") or "") + "\n" + (d.get("text") or "") for d in docs]
        return (texts * (n // len(texts) + 1))[:n], "SciFact title + abstract"
    words = "council budget harbour school police water transit housing election audit".split()
    return [" ".join(words[(i + j) % 10] for j in range(250)) for i in range(n)], "synthetic"


def synthetic_vectors() -> tuple[np.ndarray, np.ndarray, list[str], str]:
    """Clustered Gaussian vectors (no embedding model needed); the texts are the
    SciFact abstracts when ../shared has them, so full-text search stays realistic."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(200, 384))
    d = centres[rng.integers(0, 200, 5000)] + rng.normal(size=(5000, 384))
    q = centres[rng.integers(0, 200, 500)] + rng.normal(size=(500, 384))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    docs = scifact_docs()
    if docs is not None and len(docs) >= 5000:
        texts = [(x.get("title") or "") + "\n" + (x.get("text") or "") for x in docs[:5000]]
        desc = "clustered Gaussian vectors, SciFact abstract texts"
    else:
        texts = [f"synthetic document {i}" for i in range(5000)]
        desc = "clustered Gaussian (no ../shared)"
    return d.astype(np.float32), q.astype(np.float32), texts, desc


def real_vectors() -> tuple[np.ndarray, np.ndarray, list[str], str]:
    """(document vectors, query vectors, document texts, description), cached."""
    os.makedirs(RESULTS, exist_ok=True)
    cache = os.path.join(RESULTS, "bench-vectors.npz")
    docs = scifact_docs()
    queries = scifact_queries()
    if docs is None or queries is None:
        return synthetic_vectors()
    texts = [(d.get("title") or "") + "\n" + (d.get("text") or "") for d in docs]
    if os.path.exists(cache):
        data = np.load(cache)
        if data["docs"].shape[0] == len(texts) and data["queries"].shape[0] == len(queries):
            return data["docs"], data["queries"], texts, _DESC
    # Reuse the evaluation's embedding cache when it is there.
    from datasette_llm_core.embeddings.local_minilm import LocalMiniLM
    from datasette_llm_rag.evaluate import CachingEmbedder

    embedder = CachingEmbedder(LocalMiniLM(), os.path.join(RESULTS, "scifact-minilm.npz"))
    print(f"embedding {len(texts)} SciFact abstracts and {len(queries)} claims (cached afterwards)...",
          flush=True)
    dvec = embedder.embed_sync(texts, kind="document")
    qvec = embedder.embed_sync(queries, kind="query")
    embedder.save()
    np.savez(cache, docs=dvec, queries=qvec)
    return dvec, qvec, texts, _DESC


def model_vectors(model_id: str, docs_limit: int = 0) -> tuple[np.ndarray, np.ndarray, list[str], str]:
    """Like ``real_vectors`` with another local model (e.g. bge-small-en-v1.5),
    from the cache rag_eval_scifact.py writes (results/scifact-<model>.npz),
    embedding what is missing; ``docs_limit``: only the first N abstracts."""
    docs, queries = scifact_docs(), scifact_queries()
    if docs is None or queries is None:
        return synthetic_vectors()
    from datasette_llm_core.embeddings import local_model
    from datasette_llm_rag.evaluate import CachingEmbedder

    model = local_model(model_id)
    texts = [(d.get("title") or "") + "\n" + (d.get("text") or "") for d in docs]
    embedder = CachingEmbedder(model, os.path.join(RESULTS, f"scifact-{model.model_id}.npz"))
    if docs_limit < 0:  # only the abstracts already in the cache
        texts = [t for t in texts if not embedder.missing([t])]
    elif docs_limit:
        texts = texts[:docs_limit]
    todo = embedder.missing(texts) + embedder.missing(queries, "query")
    if todo:
        print(f"embedding {todo:,} texts with {model.model_id} (cached afterwards)...", flush=True)
    dvec = embedder.embed_sync(texts, kind="document")
    qvec = embedder.embed_sync(queries, kind="query")
    embedder.save()
    return dvec, qvec, texts, (f"real {model.model_id} (int8 ONNX) embeddings of {len(texts):,} SciFact "
                               f"abstracts; queries: {len(queries)} SciFact claims")


_DESC = "real all-MiniLM-L6-v2 (int8 ONNX) embeddings of 5,183 SciFact abstracts; queries: 809 SciFact claims"


def augment(base: np.ndarray, n: int, *, alpha: float = 0.5, sigma: float = 0.15, seed: int = 0,
            block: int = 100_000):
    """Yield float32 blocks of ``n`` unit vectors grown from ``base``.

    Row i < len(base) is base[i] itself; each further row is a real vector
    plus ``alpha`` times the difference of two other random real vectors (so
    the perturbation follows the real data's covariance) plus isotropic noise
    of norm ~``sigma``, renormalised. Also yields which base row each came from.
    """
    rng = np.random.default_rng(seed)
    m, d = base.shape
    for start in range(0, n, block):
        size = min(block, n - start)
        idx = np.arange(start, start + size)
        src = np.where(idx < m, idx, rng.integers(0, m, size))
        out = base[src].astype(np.float32).copy()
        extra = idx >= m
        k = int(extra.sum())
        if k:
            j = rng.integers(0, m, k)
            l_ = rng.integers(0, m, k)
            out[extra] += alpha * (base[j] - base[l_])
            out[extra] += (sigma / np.sqrt(d)) * rng.standard_normal((k, d), dtype=np.float32)
            out[extra] /= np.linalg.norm(out[extra], axis=1, keepdims=True)
        yield out, src


def augment_mix(base: np.ndarray, n: int, *, alpha: float = 10.0, beta: float = 0.6, seed: int = 0,
                block: int = 100_000):
    """Like ``augment``, but every further row is a distinct blend, not a near-copy.

    Row i < len(base) is base[i]; each further row is the mean of the real
    vectors plus a blend of the residuals (vector minus mean) of 2 or 3
    random real vectors, weights Dirichlet(``alpha``) divided by their norm,
    mixed with a ``beta`` share of noise shaped like the data (a Gaussian
    combination of 16 more residuals), renormalised. Both parts keep the real
    data's mean and covariance. The defaults were chosen by growing 1,000 real
    bge-small vectors to 5,183 and comparing with the real 5,183 (docs/rag-
    benchmarks.md): nearest-neighbour cosines 0.815/0.861/0.905 (10/50/90%)
    against 0.802/0.855/0.907, pairwise 0.527/0.640/0.726 against 0.526/0.634/0.728;
    ``augment`` gives 0.893/0.912/0.927 and 0.412/0.542/0.648.
    Also yields the base row of each grown row's largest weight.
    """
    rng = np.random.default_rng(seed)
    m, d = base.shape
    mean = base.mean(0)
    resid = (base - mean).astype(np.float32)
    for start in range(0, n, block):
        size = min(block, n - start)
        idx = np.arange(start, start + size)
        out = base[np.minimum(idx, m - 1)].astype(np.float32).copy()
        src = np.minimum(idx, m - 1)
        extra = idx >= m
        k = int(extra.sum())
        if k:
            w = rng.dirichlet(np.full(3, alpha), k)
            w[rng.integers(2, 4, k) == 2, 2] = 0.0
            w /= np.linalg.norm(w, axis=1, keepdims=True)
            ids = rng.integers(0, m, (k, 3))
            blend = np.einsum("kj,kjd->kd", w.astype(np.float32), resid[ids])
            z = rng.standard_normal((k, 16)).astype(np.float32) / 4.0
            noise = np.einsum("kj,kjd->kd", z, resid[rng.integers(0, m, (k, 16))])
            v = mean + np.sqrt(1 - beta**2) * blend + beta * noise
            out[extra] = v / np.linalg.norm(v, axis=1, keepdims=True)
            src[extra] = ids[np.arange(k), w.argmax(1)]
        yield out, src
