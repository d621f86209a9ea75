"""Full-text ranking: SQLite FTS5's tokens and BM25, served from memory.

The sidecar keeps a real FTS5 index of every entry's text (``entries_fts``,
tokenizer ``porter unicode61 remove_diacritics 2``; see sidecar.py). Ranking a question with FTS5's own ``bm25()`` is exact but
slow on a large index: FTS5 scores every row that matches any word of the
question, and on 100k abstracts that took 43 ms per question (median; see
docs/rag-benchmarks.md), against about 1 ms for the vector search it is fused
with.

So the same ranking is computed from memory. This module splits text into
exactly the tokens FTS5 makes (the unicode61 rules, then the Porter stemmer as
FTS5 implements it, written here from the algorithm's description), and the
indexer stores each entry's token counts beside the FTS5 index (``terms`` and
``postings``). ``LexicalIndex`` loads them into compressed-sparse-row arrays
and scores with FTS5's formula:

    bm25 = sum over query terms of idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len / avglen))
    idf  = ln((N - df + 0.5) / (df + 0.5)), or 1e-6 when that is not positive

with k1 = 1.2 and b = 0.75 (FTS5's constants), N the entries, ``len`` an
entry's token count and ``avglen`` the mean over all entries. Tests check the
tokens against FTS5's own vocabulary and the ranking against ``bm25()``
(tests/test_rag_lexical.py). One deliberate difference: common English
function words (``STOP_TOKENS``) are left out of questions and of the
in-memory postings.
"""

from __future__ import annotations

import sqlite3
import threading
import unicodedata

import numpy as np

from .fusion import STOPWORDS

#: The FTS5 tokenizer whose tokens this module reproduces.
FTS5_TOKENIZER = "porter unicode61 remove_diacritics 2"
#: Bumped whenever tokens change, so that sidecars are re-tokenised (sidecar.py).
TOKENIZER_VERSION = "fts5-porter-unicode61-rd2"
K1 = 1.2
B = 0.75
#: FTS5's porter tokenizer leaves tokens shorter or longer than this alone (bytes).
_PORTER_MIN, _PORTER_MAX = 3, 64

class _Unicode61(dict):
    """Code point -> what FTS5's unicode61 tokenizer makes of that character.

    A token character maps to its folded form (lower case, Latin diacritics
    removed; "" for a combining mark that is dropped), a separator to a space.
    ASCII is filled in up front. Any other character is looked up the first
    time it is seen, by asking SQLite's own FTS5 tokenizer to split "q?q",
    so the tables are SQLite's, for any script, and stay in step with the
    SQLite in use. ``str.translate`` then folds a whole text at C speed.
    """

    def __init__(self) -> None:
        super().__init__((i, chr(i).lower() if chr(i).isalnum() else " ") for i in range(128))
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    def learn(self, chars: set[str]) -> None:
        unknown = sorted(c for c in chars if ord(c) not in self)
        if not unknown:
            return
        with self._lock:
            try:
                folded = self._ask(unknown)
            except sqlite3.Error:  # no FTS5 in this SQLite: a close approximation
                folded = {c: _approximate(c) for c in unknown}
            for c in unknown:
                self[ord(c)] = folded.get(c, " ")

    def _ask(self, chars: list[str]) -> dict[str, str]:
        if self._conn is None:
            conn = sqlite3.connect(":memory:", check_same_thread=False)
            conn.execute(
                "create virtual table t using fts5(x, tokenize='unicode61 remove_diacritics 2')"
            )
            conn.execute("create virtual table v using fts5vocab(t, 'instance')")
            self._conn = conn
        conn = self._conn
        out: dict[str, str] = {}
        conn.execute("begin")
        try:
            for i, c in enumerate(chars):
                try:
                    conn.execute("insert into t (rowid, x) values (?, ?)", (i, "q" + c + "q"))
                except (sqlite3.Error, UnicodeEncodeError):  # e.g. a lone surrogate
                    out[c] = " "
            tokens: dict[int, list[str]] = {}
            for term, doc in conn.execute("select term, doc from v order by doc, offset"):
                tokens.setdefault(doc, []).append(term)
            for i, c in enumerate(chars):
                got = tokens.get(i, [])
                # one token "q<folded>q" for a token character; "q", "q" for a separator
                out.setdefault(c, got[0][1:-1] if len(got) == 1 else " ")
        finally:
            conn.execute("rollback")
        return out

    def __missing__(self, code: int) -> str:
        self.learn({chr(code)})
        return self[code]


def _approximate(c: str) -> str:
    if not (c.isalnum() or unicodedata.category(c) == "Mn"):
        return " "
    base = unicodedata.normalize("NFD", c.lower())
    return "".join(ch for ch in base if unicodedata.category(ch) != "Mn")[:1] or ""


_UNICODE61 = _Unicode61()
#: The same for ASCII text: ``str.translate`` has a fast path for a table of
#: ASCII characters.
_ASCII = str.maketrans({i: chr(i).lower() if chr(i).isalnum() else " " for i in range(128)})


def _fold(text: str) -> str:
    """``text`` with every separator a space and every token character folded."""
    return text.translate(_ASCII if text.isascii() else _UNICODE61)


def words(text: str) -> list[str]:
    """The folded words of ``text`` exactly as FTS5's unicode61 splits them
    (with remove_diacritics 2), before stemming."""
    # Characters not met before are looked up once (``_Unicode61.__missing__``).
    return _fold(text).split() if text else []


# ---------------------------------------------------------------- Porter stemmer
#
# Porter (1980) as SQLite's FTS5 applies it, on a token's UTF-8 bytes (a
# non-ASCII byte is a consonant). Notation: m is the number of vowel-consonant
# sequences in a stem; "y" is a vowel after a consonant.


def _consonants(s: str) -> list[bool]:
    out = []
    prev = False
    for c in s:
        cons = not (c in "aeiou" or (c == "y" and prev))
        out.append(cons)
        prev = cons
    return out


def _m(s: str) -> int:
    flags = _consonants(s)
    return sum(1 for i in range(1, len(flags)) if flags[i] and not flags[i - 1])


def _has_vowel(s: str) -> bool:
    # FTS5 counts "y" as a vowel anywhere but the first letter here.
    return any(c in "aeiou" or (c == "y" and i > 0) for i, c in enumerate(s))


def _cvc(s: str) -> bool:
    """Ends consonant-vowel-consonant, the last not w, x or y."""
    if len(s) < 3 or s[-1] in "wxy":
        return False
    f = _consonants(s)
    return f[-1] and not f[-2] and f[-3]


def _m_gt0(s: str) -> bool:
    return _m(s) > 0


def _m_gt1(s: str) -> bool:
    return _m(s) > 1


def _m_gt1_st(s: str) -> bool:
    return s[-1:] in ("s", "t") and _m(s) > 1


_STEP2 = [(suffix, out, _m_gt0) for suffix, out in (
    ("ational", "ate"), ("tional", "tion"), ("enci", "ence"), ("anci", "ance"), ("izer", "ize"),
    ("logi", "log"), ("bli", "ble"), ("alli", "al"), ("entli", "ent"), ("eli", "e"),
    ("ousli", "ous"), ("ization", "ize"), ("ation", "ate"), ("ator", "ate"), ("alism", "al"),
    ("iveness", "ive"), ("fulness", "ful"), ("ousness", "ous"), ("aliti", "al"),
    ("iviti", "ive"), ("biliti", "ble"),
)]
_STEP3 = [(suffix, out, _m_gt0) for suffix, out in (
    ("ical", "ic"), ("ness", ""), ("icate", "ic"), ("iciti", "ic"), ("ful", ""),
    ("ative", ""), ("alize", "al"),
)]
_STEP4 = [(suffix, "", _m_gt1_st if suffix == "ion" else _m_gt1) for suffix in (
    "al", "ance", "ence", "er", "ic", "able", "ible", "ant", "ement", "ment", "ent",
    "ion", "ou", "ism", "ate", "iti", "ous", "ive", "ize",
)]


def _by_penultimate(rules):
    # Like FTS5, pick a step's rules by the word's second-to-last letter.
    table: dict[str, list] = {}
    for rule in rules:
        table.setdefault(rule[0][-2], []).append(rule)
    return table


_STEP2, _STEP3, _STEP4 = map(_by_penultimate, (_STEP2, _STEP3, _STEP4))


def _apply(w: str, rules: dict) -> str:
    # The first suffix that fits (leaving a non-empty stem) decides, whether
    # or not its condition holds: no later rule of the step is tried.
    for suffix, out, cond in rules.get(w[-2:-1], ()):
        if len(w) > len(suffix) and w.endswith(suffix):
            stem = w[: -len(suffix)]
            return stem + out if cond(stem) else w
    return w


def _porter(w: str) -> str:
    # Step 1a: plurals.
    if w.endswith("s"):
        if w[-2:-1] == "e":
            if (len(w) > 4 and w[-4:-2] == "ss") or (len(w) > 3 and w[-3] == "i"):
                w = w[:-2]
            else:
                w = w[:-1]
        elif w[-2:-1] != "s":
            w = w[:-1]
    # Step 1b: -eed, -ed, -ing.
    removed = False
    if len(w) > 3 and w.endswith("eed"):
        if _m_gt0(w[:-3]):
            w = w[:-1]
    elif len(w) > 2 and w.endswith("ed"):
        if _has_vowel(w[:-2]):
            w, removed = w[:-2], True
    elif len(w) > 3 and w.endswith("ing"):
        if _has_vowel(w[:-3]):
            w, removed = w[:-3], True
    if removed:
        if len(w) > 2 and w.endswith(("at", "bl", "iz")):
            w += "e"
        else:
            c = w[-1]
            if c not in "aeioulsz" and w[-2:-1] == c:  # "y" counts as a consonant here
                w = w[:-1]
            elif _m(w) == 1 and _cvc(w):
                w += "e"
    # Step 1c: y -> i after a vowel.
    if w.endswith("y") and _has_vowel(w[:-1]):
        w = w[:-1] + "i"
    w = _apply(_apply(_apply(w, _STEP2), _STEP3), _STEP4)
    # Step 5: a final -e, a double l.
    if w.endswith("e"):
        stem = w[:-1]
        m = _m(stem)
        if m > 1 or (m == 1 and not _cvc(stem)):
            w = stem
    if len(w) > 1 and w.endswith("ll") and _m_gt1(w[:-1]):
        w = w[:-1]
    return w


_STEMS: dict[str, str] = {}


def stem(word: str) -> str:
    """FTS5's porter stem of one folded word (cached)."""
    cached = _STEMS.get(word)
    if cached is not None:
        return cached
    if word.isascii():
        out = _porter(word) if _PORTER_MIN <= len(word) <= _PORTER_MAX else word
    else:
        raw = word.encode("utf-8")
        if _PORTER_MIN <= len(raw) <= _PORTER_MAX:
            # Stem the bytes: a multi-byte character counts as consonants.
            out = _porter(raw.decode("latin-1")).encode("latin-1").decode("utf-8")
        else:
            out = word
    if len(_STEMS) < 500_000:
        _STEMS[word] = out
    return out


# ---------------------------------------------------------------- tokens


#: Tokens left out of the index and of questions: the stems of common English
#: function words. Dropped by token, not by word, so that a word stemming to
#: the same token ("one" -> "on") is dropped too and the counts of every
#: indexed token stay exactly FTS5's.
STOP_TOKENS = frozenset(stem(w) for w in STOPWORDS)


def tokenize(text: str, *, stopwords: bool = True) -> list[str]:
    """Index tokens of ``text`` (FTS5's; ``STOP_TOKENS`` dropped). Never raises."""
    tokens = [stem(w) for w in words(text)]
    return [t for t in tokens if t not in STOP_TOKENS] if stopwords else tokens


def word_token(word: str) -> str:
    """The index token of one folded word: "" for a stop token, else its stem."""
    token = stem(word)
    return "" if token in STOP_TOKENS else token


def query_words(text: str) -> list[str]:
    """One folded word per distinct token of a question, stop tokens dropped
    (they are not indexed; a question of only those is left to the vector
    search); at most 64."""
    by_token: dict[str, str] = {}
    for w in words(text):
        token = stem(w)
        if token not in STOP_TOKENS:
            by_token.setdefault(token, w)
    return list(by_token.values())[:64]


def query_tokens(text: str) -> list[str]:
    """Distinct index tokens of a question (see ``query_words``)."""
    return [stem(w) for w in query_words(text)]


def fts5_query(text: str) -> str:
    """The question as an FTS5 query with the same terms ``LexicalIndex`` uses:
    its words OR'd together, each quoted, so no character is query syntax."""
    return " OR ".join('"' + w.replace('"', '""') + '"' for w in query_words(text))


# ---------------------------------------------------------------- index


class LexicalIndex:
    """BM25 over row positions 0..n-1 (the positions of the vector arrays)."""

    def __init__(self, n: int, vocabulary: dict[str, int], doc_pos: np.ndarray,
                 tids: np.ndarray, tfs: np.ndarray, lengths: np.ndarray) -> None:
        self.n = n
        self.vocabulary = vocabulary
        self.postings = int(len(tids))
        lengths = lengths.astype(np.float32)
        # FTS5 averages over every row, including rows without tokens.
        avg = float(lengths.sum()) / n if n and lengths.sum() > 0 else 1.0
        docs = doc_pos.astype(np.int32)
        tf = tfs.astype(np.float32)
        norm = K1 * (1 - B + B * lengths[docs] / avg)
        weights = tf * (K1 + 1) / (tf + norm)  # BM25 term weight without idf
        # Postings grouped by term, each term's strongest first (impact order),
        # so a query can stop after a term's top ``max_postings``.
        order = np.lexsort((-weights, tids))
        self.docs = docs[order]
        # float32: converting float16 back on every query cost more than the
        # whole accumulation (and scores now match FTS5's to float precision)
        self.weights = weights[order].astype(np.float32)
        nterms = (int(tids.max()) + 1) if len(tids) else 1
        counts = np.bincount(tids, minlength=nterms)
        self.ptr = np.zeros(nterms + 1, np.int64)
        np.cumsum(counts, out=self.ptr[1:])
        self.df = counts
        with np.errstate(divide="ignore", invalid="ignore"):
            idf = np.log((n - counts + 0.5) / (counts + 0.5))
        self.idf = np.where(idf > 0, idf, 1e-6).astype(np.float32)  # FTS5's idf, per term
        self._local = threading.local()

    @property
    def nbytes(self) -> int:
        return (self.docs.nbytes + self.weights.nbytes + self.ptr.nbytes + self.df.nbytes
                + self.idf.nbytes)

    def _buffer(self) -> np.ndarray:
        # One score per row, per thread, kept zeroed between searches.
        buf = getattr(self._local, "buf", None)
        if buf is None or len(buf) != self.n:
            buf = self._local.buf = np.zeros(self.n, np.float32)
        return buf

    def search(
        self, text: str, k: int, mask: np.ndarray | None = None, max_postings: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Positions and BM25 scores of the best ``k`` rows (only rows with a match),
        exactly as FTS5's ``bm25()`` ranks them.

        ``max_postings`` limits each term to its strongest postings (an
        approximation; by default every posting is scored: on 100k abstracts
        that measured no slower, and a tenth of the index kept only 92% of
        the exact top 10).
        """
        empty = np.zeros(0, np.int64), np.zeros(0, np.float32)
        if k <= 0 or self.n == 0:
            return empty
        slices, idfs = [], []
        for token in query_tokens(text):
            tid = self.vocabulary.get(token)
            if tid is None or tid >= len(self.df) or not self.df[tid]:
                continue
            lo, hi = int(self.ptr[tid]), int(self.ptr[tid + 1])
            if max_postings is not None:
                hi = min(hi, lo + max_postings)
            slices.append(slice(lo, hi))
            idfs.append(self.idf[tid])
        if not slices:
            return empty
        docs = np.concatenate([self.docs[s] for s in slices])
        weights = np.concatenate([self.weights[s] for s in slices])
        weights *= np.repeat(np.asarray(idfs, np.float32), [s.stop - s.start for s in slices])
        buf = self._buffer()
        try:
            np.add.at(buf, docs, weights)  # one call for every term's postings
            if mask is not None:
                np.multiply(buf, mask, out=buf)
            cand = self._candidates(buf, k, len(docs))
            scores = buf[cand]
        finally:
            buf.fill(0)
        # best first; ties broken by position (entry id order) so results are deterministic
        order = np.lexsort((cand, -scores))[:k]
        return cand[order].astype(np.int64), scores[order]

    @staticmethod
    def _candidates(buf: np.ndarray, k: int, touched: int) -> np.ndarray:
        """Positions of every row scoring at least the k-th best score (> 0).

        The k-th best score is bounded from below with a strided sample of the
        scores, so the whole score array is only compared, never sorted; if
        the bound turns out too high (fewer than k rows above it), the exact
        k-th score is taken instead.
        """
        n = len(buf)
        if touched > 4 * k and n > 64 * k:
            step = n // (32 * k)
            sample = buf[::step]
            j = min(len(sample), -(-4 * k // step))  # about 4k rows expected above it
            bound = np.partition(sample, len(sample) - j)[len(sample) - j]
            if bound > 0:
                cand = np.flatnonzero(buf >= bound)
                if len(cand) >= k:
                    return cand
        cand = np.flatnonzero(buf)
        if len(cand) > k:
            values = buf[cand]
            kth = np.partition(values, len(values) - k)[len(values) - k]
            cand = cand[values >= kth]
        return cand


# ---------------------------------------------------------------- encoding

#: Separates texts in ``TermEncoder.encode_many``: a control character, which
#: folding always turns into a space, so no word of a text can equal it.
_MARK = "\x00"


class TermEncoder:
    """Term ids for the sidecar's ``terms`` table, and texts encoded as postings.

    ``ids`` maps token -> id; new tokens get the next id and wait in
    ``pending`` until the caller writes them.
    """

    def __init__(self, ids: dict[str, int] | None = None) -> None:
        self.ids: dict[str, int] = dict(ids or {})
        self.next_id = max(self.ids.values(), default=-1) + 1
        self.pending: list[tuple[int, str]] = []
        self.word_ids: dict[str, int] = {}  # folded word -> term id, -1 for stop tokens

    def _word_id(self, word: str) -> int:
        token = word_token(word)
        if not token:
            tid = -1
        else:
            tid = self.ids.get(token)
            if tid is None:
                tid = self.ids[token] = self.next_id
                self.next_id += 1
                self.pending.append((tid, token))
        if len(self.word_ids) < 2_000_000:
            self.word_ids[word] = tid
        return tid

    def encode_many(self, texts: list[str]) -> list[tuple[bytes, bytes, int]]:
        """``(uint32 term ids, uint16 counts, token count)`` per text.

        Ids are ascending within a text; the token count includes stopwords,
        as FTS5 counts a row's length. The whole batch is counted at once
        with numpy rather than text by text.
        """
        # One split for the whole batch: the texts are folded one by one, then
        # joined with a marker token that cannot come out of a folded text.
        flat = f" {_MARK} ".join([_fold(t) for t in texts]).split()
        word_ids = self.word_ids
        word_ids[_MARK] = -2
        for w in set(flat).difference(word_ids):  # words not seen before
            self._word_id(w)
        try:
            ids = list(map(word_ids.__getitem__, flat))  # C-speed lookups
        except KeyError:  # the word cache is full: look the rest up one by one
            ids = [word_ids[w] if w in word_ids else self._word_id(w) for w in flat]
        tids = np.fromiter(ids, np.int64, len(ids))
        mark = tids == -2
        doc = np.cumsum(mark)  # the text each token belongs to
        lengths = np.bincount(doc[~mark], minlength=len(texts)).tolist()
        keep = tids >= 0  # stopwords are not indexed
        keys, counts = np.unique((doc[keep] << 32) | tids[keep], return_counts=True)
        bounds = np.searchsorted(keys >> 32, np.arange(len(texts) + 1)).tolist()
        tid_bytes = (keys & 0xFFFFFFFF).astype(np.uint32).tobytes()
        tf_bytes = np.minimum(counts, 65535).astype(np.uint16).tobytes()
        return [
            (tid_bytes[4 * a : 4 * b], tf_bytes[2 * a : 2 * b], n)
            for a, b, n in zip(bounds[:-1], bounds[1:], lengths)
        ]

    def committed(self) -> None:
        """The ``pending`` terms are written and committed."""
        self.pending = []

    def rollback(self) -> None:
        """Forget the ``pending`` terms: their transaction failed."""
        for _tid, term in self.pending:
            self.ids.pop(term, None)
        self.next_id = max(self.ids.values(), default=-1) + 1
        self.pending = []
        self.word_ids.clear()
