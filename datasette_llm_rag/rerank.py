"""Reranking fused candidates with a cross-encoder, and the passage of a row that matched.

Hybrid search fuses ranks, and its numbers (RRF scores, cosine similarities)
are not comparable across tables: a long speech passage that mentions
"lawsuits" and "Trump" can sit above the lawsuit rows themselves. The
cross-encoder reads the question with each candidate's best passage and gives
one score on one scale, so the top ``depth`` candidates are reordered by it
and the reader sees ``sigmoid(logit)`` as "relevance NN%": the numbers shown
follow the order shown. Candidates below ``depth`` keep their fused order
after the reranked ones and are shown without a percentage. When every
candidate comes from one table, what the first stage knew (cosine, keyword
and fused ranks, comparable within a table) is added to the logit, and the
cross-encoder breaks near ties (``table_evidence``; SciFact,
docs/rag-evaluation.md).

``best_passage`` picks the run of whole sentences (at most ``chars``
characters) that holds most of the question's words, so long rows are judged
and shown by the part that matched, not by their first lines.

Nothing here imports Datasette.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from .lexical import query_tokens, tokenize

#: Candidates reranked by default, and the longest pair (question + passage)
#: in word pieces: the cost is about depth x tokens (docs/rag-benchmarks.md).
DEFAULT_DEPTH = 12
DEFAULT_TOKENS = 64
#: Characters of a row given to the reranker and shown as its snippet.
PASSAGE_CHARS = 400
#: A reranked row is "relevant" from this calibrated score up
#: (benchmarks/bench_multitable.py).
DEFAULT_MIN_RELEVANCE = 0.5

_SENTENCE = re.compile(r"(?<=[.!?;:])\s+|\n+")


#: Weight of the question-row cosine similarity added to the cross-encoder's
#: logit, around ``VECTOR_CENTER`` (benchmarks/bench_multitable.py).
DEFAULT_VECTOR_WEIGHT = 10.0
VECTOR_CENTER = 0.5
#: The embedding models that weight and centre were measured with. Another
#: model's cosines sit on another scale (a hosted model's relevant rows may
#: score 0.3), so its cosine gets no weight unless the operator sets one.
TUNED_VECTOR_MODELS = frozenset({"bge-small-en-v1.5", "all-MiniLM-L6-v2"})


def vector_weight_for(model_id: str | None, configured: float | None) -> float:
    """The cosine weight to use: the configured one, else the default for a
    model it was tuned on, else 0 (the cross-encoder alone)."""
    if configured is not None:
        return float(configured)
    return DEFAULT_VECTOR_WEIGHT if model_id in TUNED_VECTOR_MODELS else 0.0


#: Weights of the first-stage evidence added when every candidate comes from
#: one table (see ``table_evidence``): (cosine, full-text rank, fused rank). Tuned for
#: bge-small on the even-numbered SciFact train claims with cached
#: cross-encoder scores (benchmarks/rerank_cache_scifact.py); other models
#: get none unless configured.
TABLE_WEIGHTS_BY_MODEL: dict[str, tuple[float, float, float]] = {
    "bge-small-en-v1.5": (110.0, 20.0, 60.0),
}
NO_TABLE_WEIGHTS = (0.0, 0.0, 0.0)
#: Offset of the rank terms ``1 / (RANK_K + rank)``, as in the fusion.
RANK_K = 5


def table_weights_for(model_id: str | None, configured: Sequence[float] | None) -> tuple[float, float, float]:
    """The first-stage weights to use (``table_evidence``): the configured
    ones, else the tuned default of the index's model, else none."""
    if configured is not None:
        cos, fts, rank = (float(x) for x in configured)
        return cos, fts, rank
    return TABLE_WEIGHTS_BY_MODEL.get(model_id or "", NO_TABLE_WEIGHTS)


@dataclass
class RerankSettings:
    depth: int = DEFAULT_DEPTH
    max_tokens: int = DEFAULT_TOKENS
    passage_chars: int = PASSAGE_CHARS
    min_relevance: float = DEFAULT_MIN_RELEVANCE
    vector_weight: float = DEFAULT_VECTOR_WEIGHT
    table_weights: tuple[float, float, float] = NO_TABLE_WEIGHTS

    @property
    def reranker_chars(self) -> int:
        """Characters of the best passage given to the cross-encoder: five per
        word piece of the budget (a little more than the pair can hold), so the
        window is chosen around the question's words at the size it reads
        (320 at 64 word pieces; SciFact measured with exactly this)."""
        return 5 * self.max_tokens


def combined_logit(logit: float, cosine: float | None, weight: float) -> float:
    """The cross-encoder's logit plus ``weight`` x (cosine - ``VECTOR_CENTER``).

    The cross-encoder reads question and passage together but knows less
    than the embedding model about terse rows ("Issue: DACA"); the cosine of
    the same embedding space for every table adds that knowledge, on one
    scale for all tables.
    """
    if not weight or cosine is None:
        return float(logit)
    return float(logit) + weight * (float(cosine) - VECTOR_CENTER)


def table_evidence(
    head: Sequence[Any],
    weights: Sequence[float],
    *,
    table_of: Callable[[Any], Any],
    cosine_of: Callable[[Any], float | None],
    fts_rank_of: Callable[[Any], int | None],
) -> list[float]:
    """What the first stage knew about each candidate, in logit units around
    0, when every candidate comes from one table; nothing (zeros) when they
    come from several.

    ``cos_w x cosine + fts_w / (RANK_K + full-text rank) + rank_w / (RANK_K +
    place in the fused order)``, minus its mean over the candidates. Within
    one table these signals are comparable and, on SciFact, better than the
    cross-encoder alone, so they order the rows with the cross-encoder
    breaking near ties. Across tables they are not comparable (a long
    passage's cosines and keyword ranks sit on another scale than a short
    row's: the lawsuits/speeches failure), so a mixed list is ordered by the
    cross-encoder's one scale (plus ``vector_weight``). Counting the evidence
    within each table of a mixed list, centred per table, was measured too:
    it interleaves the tables (benchmarks/bench_multitable.py: right table
    in the top 6, 4.8 against 5.2 of 6).
    """
    cos_w, fts_w, rank_w = (float(w) for w in weights)
    if not head or not (cos_w or fts_w or rank_w) or len({table_of(h) for h in head}) > 1:
        return [0.0] * len(head)
    raw = []
    for place, hit in enumerate(head, start=1):
        cos, fts = cosine_of(hit), fts_rank_of(hit)
        value = cos_w * (float(cos) if cos is not None else 0.0)
        value += fts_w / (RANK_K + fts) if fts else 0.0
        raw.append(value + rank_w / (RANK_K + place))
    mean = sum(raw) / len(raw)
    return [x - mean for x in raw]


def sentences(text: str) -> list[tuple[int, int]]:
    """(start, end) character spans of the sentences (or lines) of ``text``."""
    spans = []
    at = 0
    for m in _SENTENCE.finditer(text):
        if m.start() > at:
            spans.append((at, m.start()))
        at = m.end()
    if at < len(text):
        spans.append((at, len(text)))
    return spans


def best_passage(question: str, text: str, chars: int = PASSAGE_CHARS) -> str:
    """The run of whole sentences of ``text`` (at most ``chars`` characters)
    holding the most distinct words of ``question``; the start of the text
    when none matches. A sentence longer than ``chars`` is cut around its
    first matching word."""
    text = text or ""
    if len(text) <= chars:
        return text
    wanted = set(query_tokens(question))
    spans = sentences(text)
    if not spans:
        return text[:chars]
    found = [set(tokenize(text[a:b])) & wanted for a, b in spans]
    best, best_key = (0, 0), (0, 0)
    for i in range(len(spans)):
        if not found[i]:  # a passage starts at a sentence that matched
            continue
        seen: set[str] = set()
        j = i
        while j < len(spans) and spans[j][1] - spans[i][0] <= chars:
            seen |= found[j]
            j += 1
        if j == i:  # one sentence longer than the window
            seen = found[i]
            j = i + 1
        key = (len(seen), -i)
        if best_key == (0, 0) or key > best_key:
            best_key, best = key, (i, j)
    if best_key == (0, 0):  # nothing matched: whole sentences from the start
        j = 0
        while j < len(spans) and spans[j][1] <= chars:
            j += 1
        best = (0, max(1, j))
    i, j = best
    start, end = spans[i][0], spans[j - 1][1]
    if end - start > chars:  # a single long sentence: centre on its first match
        piece = text[start:end]
        lower = piece.lower()
        hits = [lower.find(w) for w in _words_of(question) if lower.find(w) >= 0]
        centre = min(hits) if hits else 0
        lo = max(0, min(centre - chars // 3, len(piece) - chars))
        return piece[lo : lo + chars].strip()
    return text[start:end].strip()


def _words_of(question: str) -> list[str]:
    return [w.lower() for w in re.findall(r"\w{3,}", question)]


def calibrated(logit: float) -> float:
    """The cross-encoder's logit as a 0-1 score (its training activation)."""
    return 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, float(logit)))))


def rerank(
    question: str,
    hits: Sequence[Any],
    score: Callable[[str, list[str]], Sequence[float]],
    settings: RerankSettings = RerankSettings(),
    *,
    text_of: Callable[[Any], str] = lambda h: h.text,
    cosine_of: Callable[[Any], float | None] = lambda h: getattr(h, "vector_score", None),
    table_of: Callable[[Any], Any] = lambda h: getattr(h, "table", None),
    fts_rank_of: Callable[[Any], int | None] = lambda h: getattr(h, "fts_rank", None),
) -> list[tuple[Any, float | None, str]]:
    """``(hit, calibrated score or None, passage)`` with the top ``depth`` hits
    reordered by ``score(question, passages)`` (logits, combined with the
    cosine when ``vector_weight`` is set, and with the first-stage evidence
    when ``table_weights`` are and every candidate comes from one table), the
    rest after them in their given order. Ties keep the given order."""
    head = list(hits[: max(0, settings.depth)])
    tail = list(hits[max(0, settings.depth):])
    passages = [best_passage(question, text_of(h), settings.passage_chars) for h in hits]
    read = [best_passage(question, text_of(h), settings.reranker_chars) for h in head]
    logits = list(score(question, read)) if head else []
    logits = [combined_logit(x, cosine_of(h), settings.vector_weight) for x, h in zip(logits, head)]
    extra = table_evidence(head, settings.table_weights, table_of=table_of, cosine_of=cosine_of,
                           fts_rank_of=fts_rank_of)
    logits = [x + e for x, e in zip(logits, extra)]
    order = sorted(range(len(head)), key=lambda i: -logits[i])
    out = [(head[i], calibrated(logits[i]), passages[i]) for i in order]
    out += [(h, None, passages[len(head) + n]) for n, h in enumerate(tail)]
    return out
