"""Full-text ranking: a BM25 inverted index held in numpy arrays.

Why not SQLite FTS5's ``bm25()``? FTS5 ranks every matching row one by one;
a question is an OR of its words, which matches most rows of a large index,
and on 100k SciFact abstracts that measured 270-800 ms per query (see
docs/rag-benchmarks.md), far slower than the vector search it is fused with.
Here each entry's term counts are stored in the sidecar (``terms`` and
``postings`` tables) and loaded into one compressed-sparse-row array per
index: scoring a query is one ``bincount`` over the postings of its terms.

Scoring is Okapi BM25 (k1=1.2, b=0.75, the usual defaults, and FTS5's) with
the non-negative idf ``ln(1 + (N - df + 0.5) / (df + 0.5))``. Tokens are
lower-cased word characters, stopwords removed, with a light English
suffix stemmer (plurals, -ing, -ed) written for this module.
"""

from __future__ import annotations

import re
import threading
import unicodedata
from collections import Counter

import numpy as np

from .fusion import STOPWORDS

K1 = 1.2
B = 0.75
#: Postings read per query term, strongest first (see ``LexicalIndex.search``):
#: at least this many, or a tenth of the index. On SciFact, cutting terms at a
#: tenth of the corpus left nDCG@10 unchanged (0.6942 -> 0.6931 at 500 of
#: 5,183); at 1-2% it fell (0.643-0.669).
MIN_POSTINGS = 5000
_WORD = re.compile(r"\w+", re.UNICODE)
_STEMS: dict[str, str] = {}


_COMBINING = re.compile(r"[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]+")


def _fold(text: str) -> str:
    """Lower case without diacritics (café -> cafe); other scripts are kept."""
    text = text.lower()
    if text.isascii():
        return text
    return _COMBINING.sub("", unicodedata.normalize("NFKD", text))


_SUFFIXES = ("ational", "ation", "ness", "ment", "ity", "ly", "al", "ive")


def stem(word: str) -> str:
    """Light suffix stripping so inflections meet: ``increases``, ``increased``,
    ``increasing`` and ``increase`` all become ``increas``; ``studies`` -> ``study``.

    Far simpler than Porter's algorithm; on SciFact it recovers most of what
    stemming adds to BM25 (see docs/rag-evaluation.md).
    """
    cached = _STEMS.get(word)
    if cached is not None:
        return cached
    w = word
    if len(w) > 4 and w.endswith("ies"):
        w = w[:-3] + "y"
    elif len(w) > 4 and w.endswith("sses"):
        w = w[:-2]
    elif len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "us", "is")):
        w = w[:-1]
    if len(w) > 5 and w.endswith("ing"):
        w = w[:-3]
    elif len(w) > 4 and w.endswith("ed") and not w.endswith("eed"):
        w = w[:-2]
    for suffix in _SUFFIXES:
        if len(w) > len(suffix) + 3 and w.endswith(suffix):
            w = w[: -len(suffix)]
            break
    if len(w) > 4 and w.endswith("e"):
        w = w[:-1]
    if len(w) > 4 and w[-1] == w[-2] and w[-1] not in "lsz":  # stopped -> stopp -> stop
        w = w[:-1]
    if len(_STEMS) < 500_000:
        _STEMS[word] = w
    return w


def tokenize(text: str, *, stopwords: frozenset[str] = STOPWORDS) -> list[str]:
    """Index tokens of ``text``: folded, stopwords dropped, stemmed. Never raises."""
    if not text:
        return []
    return [stem(w) for w in _WORD.findall(_fold(text)) if w not in stopwords]


def word_counts(text: str) -> Counter:
    """Folded words of ``text`` with their counts (before stopwords and stemming)."""
    return Counter(_WORD.findall(_fold(text))) if text else Counter()


def word_token(word: str) -> str:
    """The index token of one folded word: "" for a stopword, else its stem."""
    return "" if word in STOPWORDS else stem(word)


def term_counts(text: str) -> dict[str, int]:
    """Token -> count for one text (what ``Counter(tokenize(text))`` gives)."""
    out: dict[str, int] = {}
    for word, count in word_counts(text).items():
        token = word_token(word)
        if token:
            out[token] = out.get(token, 0) + count
    return out


def query_tokens(text: str) -> list[str]:
    """Distinct tokens of a question; falls back to stopwords if that is all it has."""
    tokens = list(dict.fromkeys(tokenize(text)))
    if not tokens:
        tokens = list(dict.fromkeys(tokenize(text, stopwords=frozenset())))
    return tokens[:64]


class LexicalIndex:
    """BM25 over row positions 0..n-1 (the positions of the vector arrays)."""

    def __init__(self, n: int, vocabulary: dict[str, int], doc_pos: np.ndarray,
                 tids: np.ndarray, tfs: np.ndarray, lengths: np.ndarray) -> None:
        self.n = n
        self.vocabulary = vocabulary
        self.postings = int(len(tids))
        lengths = lengths.astype(np.float32)
        avg = float(lengths[lengths > 0].mean()) if (lengths > 0).any() else 1.0
        docs = doc_pos.astype(np.int32)
        tf = tfs.astype(np.float32)
        norm = K1 * (1 - B + B * lengths[docs] / avg)
        weights = tf * (K1 + 1) / (tf + norm)  # BM25 term weight without idf
        # Postings grouped by term, each term's strongest first (impact order),
        # so a query can stop after a term's top ``max_postings``.
        order = np.lexsort((-weights, tids))
        self.docs = docs[order]
        self.weights = weights[order].astype(np.float16)  # float16 halves the memory
        nterms = (int(tids.max()) + 1) if len(tids) else 1
        counts = np.bincount(tids, minlength=nterms)
        self.ptr = np.zeros(nterms + 1, np.int64)
        np.cumsum(counts, out=self.ptr[1:])
        self.df = counts
        self.docs_with_text = int((lengths > 0).sum())
        self._local = threading.local()

    @property
    def nbytes(self) -> int:
        return self.docs.nbytes + self.weights.nbytes + self.ptr.nbytes + self.df.nbytes

    def search(
        self, text: str, k: int, mask: np.ndarray | None = None, max_postings: int | None = -1
    ) -> tuple[np.ndarray, np.ndarray]:
        """Positions and BM25 scores of the best ``k`` rows (only rows with a match).

        Each term contributes at most its ``max_postings`` strongest postings:
        a very common word (low idf) then adds nothing to the rows where it
        weighs least, which bounds the cost of a query on a large index.
        The default (-1) is ``max(MIN_POSTINGS, n // 10)``; ``None`` scores
        exhaustively.
        """
        if max_postings == -1:
            max_postings = max(MIN_POSTINGS, self.n // 10)
        if k <= 0 or self.n == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        parts_docs, parts_w = [], []
        n_docs = max(self.docs_with_text, 1)
        for token in query_tokens(text):
            tid = self.vocabulary.get(token)
            if tid is None or tid >= len(self.df):
                continue
            df = int(self.df[tid])
            if df == 0:
                continue
            idf = np.log1p((n_docs - df + 0.5) / (df + 0.5))
            lo, hi = self.ptr[tid], self.ptr[tid + 1]
            if max_postings is not None:
                hi = min(hi, lo + max_postings)
            parts_docs.append(self.docs[lo:hi])
            parts_w.append(self.weights[lo:hi].astype(np.float32) * np.float32(idf))
        if not parts_docs:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        docs = np.concatenate(parts_docs)
        weights = np.concatenate(parts_w)
        # Accumulate into a per-thread score buffer, read back only the rows
        # touched, then clear them: cost follows the postings, not the index size.
        buf = getattr(self._local, "buf", None)
        if buf is None or len(buf) != self.n:
            buf = self._local.buf = np.zeros(self.n, np.float32)
        np.add.at(buf, docs, weights)
        try:
            scores = buf[docs]  # one entry per posting: a row may appear more than once
            if mask is not None:
                scores = np.where(mask[docs], scores, 0)
            # a row appears once per matching term: keep room for all its copies
            want = min(len(scores), k * len(parts_docs))
            top = np.argpartition(-scores, want - 1)[:want] if want < len(scores) else np.arange(len(scores))
            cand_docs, cand_scores = docs[top], scores[top]
        finally:
            buf[docs] = 0
        keep = cand_scores > 0
        cand_docs, cand_scores = cand_docs[keep], cand_scores[keep]
        cand_docs, first = np.unique(cand_docs, return_index=True)
        cand_scores = cand_scores[first]
        # best first; ties broken by position (entry id order) so results are deterministic
        order = np.lexsort((cand_docs, -cand_scores))[:k]
        return cand_docs[order].astype(np.int64), cand_scores[order]
