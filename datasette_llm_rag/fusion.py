"""Ranking helpers: the stopword list and reciprocal rank fusion."""

from __future__ import annotations

from typing import TYPE_CHECKING, Hashable, Iterable, Sequence

if TYPE_CHECKING:
    import numpy as np

# Common English function words: they match almost every row and only slow
# BM25 down without changing the ranking much. Written out here, not taken
# from any library, and deliberately short.
STOPWORDS = frozenset(
    """
    a about above after again against all am an and any are as at be because been
    before being below between both but by can could did do does doing down during
    each few for from further had has have having he her here hers herself him himself
    his how i if in into is it its itself just me more most my myself no nor not of
    off on once only or other our ours ourselves out over own same she should so some
    such than that the their theirs them themselves then there these they this those
    through to too under until up very was we were what when where which while who whom
    why will with would you your yours yourself yourselves
    """.split()
)

#: Fusion settings (rrf_k, (vector weight, full-text weight)) per embedding
#: model, tuned on SciFact train claims (docs/rag-evaluation.md) and checked on
#: benchmarks/bench_multitable.py. bge-small's cosines rank SciFact well on
#: their own, so its vector ranks count as much as the keyword ranks and the
#: first places of each list weigh more (k=5); the MiniLM setting is the one
#: tuned when it was the only model. Any other model gets the MiniLM setting.
FUSION_BY_MODEL: dict[str, tuple[int, tuple[float, float]]] = {
    "bge-small-en-v1.5": (5, (1.0, 1.0)),
    "all-MiniLM-L6-v2": (10, (1.0, 1.5)),
}
DEFAULT_FUSION: tuple[int, tuple[float, float]] = (10, (1.0, 1.5))


def fusion_for(model_id: str | None, rrf_k: int | None = None,
               fts_weight: float | None = None) -> tuple[int, tuple[float, float]]:
    """``(rrf_k, (vector weight, full-text weight))`` for an index of
    ``model_id``: the configured values where given, else the model's tuned
    defaults."""
    k, (vw, fw) = FUSION_BY_MODEL.get(model_id or "", DEFAULT_FUSION)
    return (k if rrf_k is None else int(rrf_k)), (vw, fw if fts_weight is None else float(fts_weight))


def rrf(
    rankings: Sequence[Iterable[Hashable]],
    *,
    k: int = 60,
    weights: Sequence[float] | None = None,
) -> list[tuple[Hashable, float, list[int | None]]]:
    """Reciprocal rank fusion: ``score(d) = sum_i w_i / (k + rank_i(d))``, ranks from 1.

    Returns ``(item, score, [rank in each list or None])`` best first; ties
    keep the order in which items were first seen (earlier lists first).
    """
    if k < 0:
        raise ValueError("k must be >= 0")
    weights = list(weights) if weights is not None else [1.0] * len(rankings)
    if len(weights) != len(rankings):
        raise ValueError("one weight per ranking")
    scores: dict[Hashable, float] = {}
    ranks: dict[Hashable, list[int | None]] = {}
    for i, ranking in enumerate(rankings):
        for rank, item in enumerate(ranking, start=1):
            if item not in scores:
                scores[item] = 0.0
                ranks[item] = [None] * len(rankings)
            if ranks[item][i] is not None:  # duplicate in one list: keep the best rank
                continue
            ranks[item][i] = rank
            scores[item] += weights[i] / (k + rank)
    order = sorted(scores, key=lambda item: -scores[item])  # sorted() is stable
    return [(item, scores[item], ranks[item]) for item in order]


def rrf_arrays(
    rankings: Sequence["np.ndarray"], *, k: int = 60, weights: Sequence[float] | None = None
) -> tuple["np.ndarray", "np.ndarray", "np.ndarray"]:
    """``rrf`` for integer id arrays, vectorised: ``(ids, scores, ranks)`` best first.

    ``ranks[i, j]`` is the 1-based rank of ``ids[i]`` in ranking ``j``, 0 if
    absent. Same order as ``rrf`` (ties: first seen, earlier lists first).
    """
    import numpy as np

    weights = list(weights) if weights is not None else [1.0] * len(rankings)
    arrays = [np.asarray(r, np.int64) for r in rankings]
    if not arrays or not sum(len(a) for a in arrays):
        return np.zeros(0, np.int64), np.zeros(0), np.zeros((0, len(arrays)), np.int64)
    allids = np.concatenate(arrays)
    uniq, first, inverse = np.unique(allids, return_index=True, return_inverse=True)
    scores = np.zeros(len(uniq))
    ranks = np.zeros((len(uniq), len(arrays)), np.int64)
    at = 0
    for j, (arr, w) in enumerate(zip(arrays, weights)):
        where = inverse[at : at + len(arr)]
        r = np.arange(1, len(arr) + 1)
        # duplicates inside one list keep their best (first) rank
        fresh = ranks[where, j] == 0
        _, keep = np.unique(where, return_index=True)
        mask = np.zeros(len(arr), bool)
        mask[keep] = True
        mask &= fresh
        ranks[where[mask], j] = r[mask]
        scores[where[mask]] += w / (k + r[mask])
        at += len(arr)
    order = np.lexsort((first, -scores))
    return uniq[order], scores[order], ranks[order]
