"""Searching a sidecar index: vector, full-text, hybrid and similar-row search.

A ``RagIndex`` loads the sidecar's vectors into memory on first use and is
shared by every request (``get_index`` keeps one per sidecar path). Before
each search it checks the sidecar file's size and modification time, and
reloads when an indexer has committed a new generation.

Full-text search ranks as SQLite FTS5's ``bm25()`` over the sidecar's FTS5
index would, from an in-memory copy of its postings (lexical.py);
``search_fts5`` asks FTS5 itself.
Vectors stay int8-quantised in memory (one byte per dimension plus one scale
per vector: 384 MB for a million MiniLM vectors instead of 1.5 GB). Small
indexes are searched exactly. Larger ones are searched in two steps: a
scan over one-bit codes of the mean-centred vectors (48 bytes per vector),
each differing sign weighted by the query's own coordinate, picks 2% of the
rows (at least 4,000) as candidates, which are then rescored with their
int8 vectors; the best 32 are rescored again with their int8 rounding
residuals, read from the sidecar (quant.py). The ``tables`` argument of
every search restricts it to those tables *inside* the search, so rows of
other tables can never come back, whatever the fusion does.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from .fusion import rrf_arrays
from .lexical import LexicalIndex, fts5_query
from .quant import RESIDUAL_FORMAT, decode_centre, dequantize, residual_values
from .sidecar import REBUILD_HINT, ModelMismatchError, SidecarError, open_sidecar, read_meta

#: Below this many vectors search is exact over dequantised float32.
EXACT_LIMIT = 20_000
#: Fusion settings tuned on SciFact (docs/rag-evaluation.md).
DEFAULT_RRF_K = 10
DEFAULT_WEIGHTS = (1.0, 1.5)
#: A search's best rows rescored with their residuals: enough to reorder the
#: int8 near-ties around a top 10 (recall@10 needed ~20 at 1M, docs/rag-benchmarks.md).
REFINE = 32
#: Rows per block when scanning codes (fits in L2 cache with the temporaries).
BLOCK = 1 << 16


@dataclass
class Hit:
    """One search result: a chunk of a row of a table."""

    table: str
    pk: list
    chunk: int
    text: str
    title: str | None
    score: float  #: the ranking score of the search that returned it (RRF for hybrid)
    vector_rank: int | None = None  #: 1-based rank in the vector results, if there
    fts_rank: int | None = None  #: 1-based rank in the full-text results, if there
    vector_score: float | None = None  #: cosine similarity with the query vector
    fts_score: float | None = None  #: BM25 score (higher is better)
    entry_id: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class _Loaded:
    """An immutable snapshot of the sidecar's vectors."""

    def __init__(self) -> None:
        self.ids = np.zeros(0, np.int64)
        self.tcode = np.zeros(0, np.int16)
        self.tables: list[str] = []
        self.q8 = np.zeros((0, 0), np.int8)
        self.scale = np.zeros(0, np.float32)
        self.exact = False  # small index: score every vector
        self.words: list[np.ndarray] = []  # binary codes, one uint64 array per 64 dims
        self.mu: np.ndarray | None = None
        #: subtracted from every vector before quantising (quant.py); None: not centred
        self.centre: np.ndarray | None = None
        #: the sidecar keeps residuals (quant.RESIDUAL_FORMAT) to rescore the best rows with
        self.residual = False
        self.generation = ""
        self.meta: dict[str, str] = {}
        self.masks: dict[frozenset, np.ndarray] = {}
        self.lexical: LexicalIndex | None = None

    @property
    def count(self) -> int:
        return int(self.ids.shape[0])

    @property
    def dims(self) -> int:
        return int(self.q8.shape[1]) if self.q8.ndim == 2 else 0


def query_planes(q: np.ndarray, mu: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The query's sign words and two weight planes for the prefilter.

    ``|q - mu|`` is cut into four equal bands up to its largest coordinate;
    band b (0-3) has bit 0 in ``low`` and bit 1 in ``high``, so a differing
    sign costs ``1 + 2*low + 4*high`` = 1, 3, 5 or 7: a two-bit version of
    scoring the binary codes against the query's real coordinates, which
    plain Hamming distance (every bit alike) approximates poorly.
    """
    c = np.asarray(q, np.float32).reshape(-1) - mu
    mag = np.abs(c)
    band = np.minimum((mag * (4 / max(float(mag.max()), 1e-12))).astype(np.int64), 3)
    return (
        _binary_words(c[None, :], 0.0)[0],
        _binary_words((band & 1)[None, :], 0)[0],
        _binary_words((band >> 1)[None, :], 0)[0],
    )


def _binary_words(x: np.ndarray, mu: np.ndarray | float) -> np.ndarray:
    """Sign bits of ``x - mu`` packed into uint64 words: shape (n, ceil(d/64))."""
    bits = np.packbits(x > mu, axis=1, bitorder="little")
    pad = (-bits.shape[1]) % 8
    if pad:
        bits = np.pad(bits, ((0, 0), (0, pad)))
    return np.ascontiguousarray(bits).view(np.uint64)


class RagIndex:
    """The loaded search index of one sidecar file. Thread-safe."""

    def __init__(
        self,
        path: str,
        *,
        exact_limit: int = EXACT_LIMIT,
        threads: int = 2,
        full_text: str = "memory",
        refine: int = REFINE,
    ) -> None:
        self.path = os.path.abspath(path)
        #: "memory": full-text ranking from postings loaded with the vectors;
        #: "sqlite": FTS5's bm25() in SQLite at each search (nothing loaded).
        self.full_text = full_text
        self.exact_limit = exact_limit
        #: best rows rescored with their residuals (0: int8 scores only, as before schema 3)
        self.refine = refine
        self._state: _Loaded | None = None
        self._signature: tuple | None = None
        self._load_lock = threading.Lock()
        self._db_lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._threads = max(1, threads)
        self._pool: ThreadPoolExecutor | None = None
        #: how many times the vectors were (re)loaded; tests and the index page read it
        self.loads = 0

    # ------------------------------------------------------------ loading

    def _file_signature(self) -> tuple:
        sig = []
        for suffix in ("", "-wal"):
            try:
                st = os.stat(self.path + suffix)
                sig.append((st.st_mtime_ns, st.st_size, st.st_ino))
            except FileNotFoundError:
                sig.append(None)
        return tuple(sig)

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = open_sidecar(self.path, readonly=True)
        return self._conn

    def _query(self, sql: str, params: Sequence = ()) -> list[tuple]:
        with self._db_lock:
            try:
                return self._connection().execute(sql, params).fetchall()
            except sqlite3.DatabaseError as e:
                self._drop_connection()
                raise SidecarError(
                    f"Cannot read the search index {self.path} ({e}): {REBUILD_HINT}."
                ) from None

    def _drop_connection(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    def _current(self) -> _Loaded:
        """The loaded snapshot, reloading if the sidecar changed on disk."""
        signature = self._file_signature()
        state = self._state
        if state is not None and signature == self._signature:
            return state
        with self._load_lock:
            if self._state is not None and self._signature == signature:
                return self._state
            if self._state is not None:
                with self._db_lock:
                    self._drop_connection()  # a replaced file needs a new handle
                generation = self._query("select value from meta where key = 'generation'")
                if generation and generation[0][0] == self._state.generation:
                    self._signature = signature
                    return self._state
            self._state = None  # let the old snapshot go before the new one is built
            self._state = self._load()
            _release_free_memory()
            self._signature = signature
            self.loads += 1
            return self._state

    def _load(self) -> _Loaded:
        state = _Loaded()
        with self._db_lock:
            try:
                conn = self._connection()
                state.meta = read_meta(conn)
                state.generation = state.meta.get("generation", "")
                dims = int(state.meta.get("dimensions") or 0)
                state.centre = decode_centre(state.meta.get("centre"), dims)
                state.residual = state.meta.get("residual") == RESIDUAL_FORMAT
                n = conn.execute("select count(*) from vectors").fetchone()[0]
                state.ids = np.empty(n, np.int64)
                state.tcode = np.empty(n, np.int16)
                state.q8 = np.empty((n, dims), np.int8)
                state.scale = np.empty(n, np.float32)
                codes: dict[str, int] = {}
                cursor = conn.execute(
                    "select v.entry_id, e.tbl, v.q8, v.scale from vectors v "
                    "join entries e on e.id = v.entry_id order by v.entry_id"
                )
                at = 0
                while True:
                    rows = cursor.fetchmany(8192)
                    if not rows:
                        break
                    m = len(rows)
                    if at + m > n:  # written meanwhile: keep what was counted
                        rows = rows[: n - at]
                        m = len(rows)
                    ids, tbls, blobs, scales = zip(*rows)
                    state.ids[at : at + m] = ids
                    state.tcode[at : at + m] = [codes.setdefault(t, len(codes)) for t in tbls]
                    buf = b"".join(blobs)
                    if len(buf) != m * dims:
                        raise SidecarError(
                            f"The search index {self.path} has vectors of the wrong size "
                            f"(expected {dims} dimensions): {REBUILD_HINT}."
                        )
                    state.q8[at : at + m] = np.frombuffer(buf, np.int8).reshape(m, dims)
                    state.scale[at : at + m] = scales
                    at += m
                    if at >= n:
                        break
                if at < n:  # rows deleted meanwhile (or vectors without entries)
                    state.ids, state.tcode = state.ids[:at], state.tcode[:at]
                    state.q8, state.scale = state.q8[:at], state.scale[:at]
                state.tables = [t for t, _ in sorted(codes.items(), key=lambda kv: kv[1])]
                if self.full_text == "memory":
                    state.lexical = self._load_lexical(conn, state)
            except SidecarError:
                self._drop_connection()
                raise
            except sqlite3.DatabaseError as e:
                self._drop_connection()
                raise SidecarError(
                    f"The search index {self.path} is damaged ({e}): delete it and {REBUILD_HINT}."
                ) from None
        self._prepare(state)
        return state

    def _load_lexical(self, conn: sqlite3.Connection, state: _Loaded) -> LexicalIndex:
        vocabulary = dict(conn.execute("select term, id from terms"))
        n = state.count
        lengths = np.zeros(n, np.int32)
        tid_parts, tf_parts, pos_parts = [], [], []
        cursor = conn.execute("select entry_id, tids, tfs, length from postings order by entry_id")
        while True:
            rows = cursor.fetchmany(8192)
            if not rows:
                break
            ids, tids, tfs, lens = zip(*rows)
            where = np.searchsorted(state.ids, np.asarray(ids, np.int64))
            where = np.minimum(where, max(n - 1, 0))
            known = state.ids[where] == np.asarray(ids, np.int64) if n else np.zeros(len(ids), bool)
            counts = np.fromiter((len(t) // 4 for t in tids), np.int64, len(tids))
            if (counts * 2 != np.fromiter((len(f) for f in tfs), np.int64, len(tfs))).any():
                raise SidecarError(
                    f"The search index {self.path} has damaged term postings: {REBUILD_HINT}."
                )
            keep_rows = np.repeat(known, counts)
            tid_parts.append(np.frombuffer(b"".join(tids), np.uint32)[keep_rows])
            tf_parts.append(np.frombuffer(b"".join(tfs), np.uint16)[keep_rows])
            pos_parts.append(np.repeat(where, counts)[keep_rows])
            lengths[where[known]] = np.asarray(lens, np.int32)[known]

        def cat(parts, dt):
            return np.concatenate(parts) if parts else np.zeros(0, dt)

        return LexicalIndex(
            n, vocabulary, cat(pos_parts, np.int64), cat(tid_parts, np.uint32).astype(np.int64),
            cat(tf_parts, np.uint16), lengths,
        )

    def _prepare(self, state: _Loaded) -> None:
        n = state.count
        if n <= self.exact_limit:
            state.exact = True
            return
        # Mean of the vectors, then one-bit codes of the centred vectors, blockwise.
        total = np.zeros(state.dims, np.float64)
        for start in range(0, n, BLOCK):
            total += dequantize(state.q8[start : start + BLOCK], state.scale[start : start + BLOCK]).sum(0)
        state.mu = (total / n).astype(np.float32)
        if state.centre is not None:  # codes are of v - centre: the mean of v is theirs + centre
            state.mu = state.mu + state.centre
        nwords = (state.dims + 63) // 64
        words = np.empty((nwords, n), np.uint64)
        for start in range(0, n, BLOCK):
            block = dequantize(state.q8[start : start + BLOCK], state.scale[start : start + BLOCK])
            if state.centre is not None:
                block += state.centre
            words[:, start : start + len(block)] = _binary_words(block, state.mu).T
        state.words = [words[w] for w in range(nwords)]

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            with self._load_lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="llm-rag")
        return self._pool

    # ------------------------------------------------------------ properties

    @property
    def count(self) -> int:
        return self._current().count

    @property
    def dimensions(self) -> int:
        return self._current().dims

    @property
    def model_id(self) -> str | None:
        return self._current().meta.get("embedding_model")

    @property
    def meta(self) -> dict[str, str]:
        return dict(self._current().meta)

    def table_counts(self) -> dict[str, int]:
        """Entries per table, for the index page."""
        return {t: n for t, n in self._query("select tbl, count(*) from entries group by tbl")}

    def check_model(self, model_id: str) -> None:
        """Raise ``ModelMismatchError`` unless the index was built with ``model_id``."""
        built = self.model_id
        if built is not None and built != model_id:
            raise ModelMismatchError(
                f"The search index {self.path} was built with embedding model {built!r} "
                f"but {model_id!r} is configured: {REBUILD_HINT}."
            )

    def close(self) -> None:
        with self._db_lock:
            self._drop_connection()
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None

    # ------------------------------------------------------------ vector search

    def _mask(self, state: _Loaded, tables: Iterable[str] | None) -> np.ndarray | None:
        """Boolean mask of allowed rows, or None for all tables."""
        if tables is None:
            return None
        wanted = frozenset(tables)
        key = frozenset(i for i, t in enumerate(state.tables) if t in wanted)
        if len(key) == len(state.tables):
            return None
        mask = state.masks.get(key)
        if mask is None:
            mask = np.isin(state.tcode, np.fromiter(key, np.int16, len(key)))
            if len(state.masks) > 32:
                state.masks.clear()
            state.masks[key] = mask
        return mask

    def _query_vector(self, state: _Loaded, query_vec: Any) -> np.ndarray:
        q = np.asarray(query_vec, dtype=np.float32).reshape(-1)
        if state.dims and q.shape[0] != state.dims:
            raise ModelMismatchError(
                f"The query vector has {q.shape[0]} dimensions but the search index "
                f"{self.path} holds {state.dims}-dimensional vectors "
                f"(model {state.meta.get('embedding_model')!r}): {REBUILD_HINT}."
            )
        return q

    def _hamming(
        self, state: _Loaded, q: np.ndarray, mask: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Weighted Hamming distance of every code to the query, and its histogram.

        Each bit where a code's sign differs from the query's costs 1, 3, 5
        or 7 by how far the query's own coordinate is from the mean (its
        ``query_planes``): a sign flip where the query barely leans one way
        says little, one where it leans hard says much. Rows outside
        ``mask`` get the largest distance and are not counted. The scan runs
        in blocks that stay in cache, split over the pool's threads (numpy
        releases the GIL in each operation).
        """
        qwords, low, high = query_planes(q, state.mu)
        n = state.count
        top = 7 * 64 * len(qwords)  # largest possible distance
        dist = np.empty(n, np.uint16)
        far = np.iinfo(np.uint16).max

        def scan(lo: int, hi: int) -> np.ndarray:
            hist = np.zeros(top + 1, np.int64)
            size = min(BLOCK, hi - lo)
            tmp = np.empty(size, np.uint64)
            part = np.empty(size, np.uint64)
            cnt = np.empty(size, np.uint8)
            # differing signs: all of them, those in band 1 or 3, those in band 2 or 3
            every, odd, upper = (np.empty(size, np.uint16) for _ in range(3))
            for start in range(lo, hi, BLOCK):
                end = min(start + BLOCK, hi)
                m = end - start
                for acc in (every, odd, upper):
                    acc[:m] = 0
                for w, qw, lw, hw in zip(state.words, qwords, low, high):
                    np.bitwise_xor(w[start:end], qw, out=tmp[:m])
                    np.bitwise_count(tmp[:m], out=cnt[:m])
                    np.add(every[:m], cnt[:m], out=every[:m])
                    for plane, acc in ((lw, odd), (hw, upper)):
                        np.bitwise_and(tmp[:m], plane, out=part[:m])
                        np.bitwise_count(part[:m], out=cnt[:m])
                        np.add(acc[:m], cnt[:m], out=acc[:m])
                out = dist[start:end]
                np.left_shift(upper[:m], 1, out=out)  # every + 2*odd + 4*upper
                np.add(out, odd[:m], out=out)
                np.left_shift(out, 1, out=out)
                np.add(out, every[:m], out=out)
                if mask is not None:
                    out[~mask[start:end]] = far
                    hist += np.bincount(out[out != far], minlength=top + 1)[: top + 1]
                else:
                    hist += np.bincount(out, minlength=top + 1)
            return hist

        if self._threads > 1 and n >= 4 * BLOCK:
            step = -(-n // self._threads)
            step = -(-step // BLOCK) * BLOCK
            futures = [self._executor().submit(scan, lo, min(lo + step, n)) for lo in range(0, n, step)]
            hist = sum(f.result() for f in futures)
        else:
            hist = scan(0, n)
        return dist, hist

    def _vector_top(
        self,
        state: _Loaded,
        q: np.ndarray,
        k: int,
        tables: Iterable[str] | None,
        candidates: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Row positions and cosine scores of the best ``k`` vectors, best first."""
        n = state.count
        if n == 0 or k <= 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        mask = self._mask(state, tables)
        # With residuals, the int8 top ``max(k, refine)`` is rescored exactly
        # enough to order near-ties, then cut to k.
        refine = self.refine if state.residual else 0
        kk = max(k, refine)
        if state.exact:
            scores = _dot(state.q8, q) * state.scale + _offset(state, q)
            if mask is not None:
                scores = np.where(mask, scores, -np.inf)
            pos = _top(scores, kk)
            scores = scores[pos]
        else:
            dist, hist = self._hamming(state, q, mask)
            want = candidates or default_candidates(n, k)
            allowed = int(hist.sum())
            if allowed == 0:
                return np.zeros(0, np.int64), np.zeros(0, np.float32)
            # smallest distance that keeps at least ``want`` candidates
            cutoff = int(np.searchsorted(np.cumsum(hist), min(want, allowed)))
            pos = np.flatnonzero(dist <= cutoff)
            if len(pos) > 2 * want:  # many ties at the cutoff: keep the closest
                pos = pos[np.argpartition(dist[pos], want)[:want]]
            scores = _dot(state.q8[pos], q) * state.scale[pos] + _offset(state, q)
            order = _top(scores, kk)
            pos, scores = pos[order], scores[order]
        keep = np.isfinite(scores)
        pos, scores = pos[keep], scores[keep]
        if refine and len(pos):
            pos, scores = self._refine(state, q, pos, scores, refine)
        return pos[:k], scores[:k]

    def _refine(
        self, state: _Loaded, q: np.ndarray, pos: np.ndarray, scores: np.ndarray, rows: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Add to the int8 scores of the first ``rows`` positions what rounding
        lost (their residuals, read from the sidecar), and re-sort.

        A million vectors put a question's 10th and 11th best rows ~7e-4
        apart, about the int8 rounding error, so the int8 order swaps
        near-ties; with the residual a score is within ~2e-5 of float32.
        Rows without a residual (written before schema 3) keep their score.
        A row rewritten since the snapshot was loaded (the next search
        reloads it) gets a residual of its new vector: an error no larger
        than int8's own, for one search.
        """
        head = pos[:rows]
        ids = state.ids[head].tolist()
        found = self._query(
            "select entry_id, r4 from vectors where entry_id in ({}) and r4 is not null".format(
                ",".join("?" * len(ids))
            ),
            ids,
        )
        half = (state.dims + 1) // 2
        found = [(i, r) for i, r in found if r is not None and len(r) == half]
        if not found:
            return pos, scores
        at = {i: j for j, i in enumerate(ids)}
        where = np.fromiter((at[i] for i, _ in found), np.int64, len(found))
        codes = np.frombuffer(b"".join(r for _, r in found), np.uint8).reshape(len(found), half)
        scores = scores.copy()
        scores[where] += _dot_float(residual_values(codes, state.dims), q) * state.scale[head[where]]
        order = np.argsort(-scores, kind="stable")
        return pos[order], scores[order]

    def search_vector(
        self, query_vec: Any, k: int = 10, tables: Iterable[str] | None = None
    ) -> list[Hit]:
        """The ``k`` chunks closest to ``query_vec`` (cosine), only from ``tables`` if given."""
        state = self._current()
        q = self._query_vector(state, query_vec)
        pos, scores = self._vector_top(state, q, k, tables)
        return self._ranked(zip(state.ids[pos].tolist(), scores.tolist()), "vector")

    def _ranked(self, ranking: Iterable[tuple[int, float]], method: str) -> list[Hit]:
        """Hits for ``(entry id, score)`` pairs, best first, with the score and
        rank recorded as ``method``'s ("vector" or "fts")."""
        ranking = list(ranking)
        hits = self._hydrate([entry_id for entry_id, _ in ranking])
        out = []
        for rank, (entry_id, score) in enumerate(ranking, 1):
            hit = hits.get(entry_id)
            if hit is None:
                continue
            hit.score = float(score)
            setattr(hit, f"{method}_score", float(score))
            setattr(hit, f"{method}_rank", rank)
            out.append(hit)
        return out

    # ------------------------------------------------------------ full-text search

    def _fts_top(
        self, state: _Loaded, query_text: str, k: int, tables: Iterable[str] | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Row positions and BM25 scores of the best ``k`` full-text matches."""
        if k <= 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        if state.lexical is None:  # full_text: sqlite
            rows = self._fts5_rows(query_text, k, tables)
            ids = np.asarray([r[0] for r in rows], np.int64)
            pos = np.clip(np.searchsorted(state.ids, ids), 0, max(state.count - 1, 0))
            known = state.ids[pos] == ids if state.count else np.zeros(len(ids), bool)
            scores = np.asarray([r[1] for r in rows], np.float32)
            return pos[known], scores[known]
        mask = self._mask(state, tables)
        return state.lexical.search(query_text or "", k, mask)

    def search_fts(self, query_text: str, k: int = 10, tables: Iterable[str] | None = None) -> list[Hit]:
        """The ``k`` best BM25 matches for the words of ``query_text``.

        Any text is safe: it is only split into words, never parsed as a
        query language, so quotes, ``NEAR(``, ``*`` or ``AND`` are just words.
        """
        state = self._current()
        pos, scores = self._fts_top(state, query_text, k, tables)
        return self._ranked(zip(state.ids[pos].tolist(), scores.tolist()), "fts")

    def search_fts5(self, query_text: str, k: int = 10, tables: Iterable[str] | None = None) -> list[Hit]:
        """``search_fts`` straight from SQLite: FTS5's own ``bm25()`` over the
        sidecar's ``entries_fts``. Same terms and ranking, read from disk on
        every call, so much slower on a large index; the evaluation and the
        tests use it as the reference for the in-memory ranking."""
        return self._ranked(self._fts5_rows(query_text, k, tables), "fts")

    def _fts5_rows(
        self, query_text: str, k: int, tables: Iterable[str] | None
    ) -> list[tuple[int, float]]:
        """``(entry id, bm25)`` of the best ``k`` rows by SQLite FTS5's own ranking."""
        query = fts5_query(query_text or "")
        if not query or k <= 0:
            return []
        sql = (
            "select f.rowid, -bm25(entries_fts) from entries_fts f "
            "{join} where entries_fts match ? {where} order by bm25(entries_fts), f.rowid limit ?"
        )
        params: list[Any] = [query]
        join = where = ""
        if tables is not None:
            names = sorted(set(tables))
            if not names:
                return []
            join = "join entries e on e.id = f.rowid"
            where = "and e.tbl in ({})".format(",".join("?" * len(names)))
            params += names
        return self._query(sql.format(join=join, where=where), [*params, int(k)])

    # ------------------------------------------------------------ hybrid

    def search_hybrid(
        self,
        query_text: str,
        query_vec: Any,
        k: int = 10,
        tables: Iterable[str] | None = None,
        rrf_k: int = DEFAULT_RRF_K,
        *,
        depth: int | None = None,
        weights: tuple[float, float] = DEFAULT_WEIGHTS,
    ) -> list[Hit]:
        """Vector and full-text results fused with reciprocal rank fusion.

        Each method contributes its top ``depth`` (default ``max(100, 2k)``)
        results, both already restricted to ``tables``; ``weights`` scale the
        (vector, full-text) terms of the fusion. The defaults were tuned on
        SciFact (docs/rag-evaluation.md).
        """
        state = self._current()
        q = self._query_vector(state, query_vec)
        depth = depth or max(100, 2 * k)
        tables = None if tables is None else list(tables)
        # One after the other, in this thread: on two cores, running the
        # full-text half on a second thread measured slower (1.48x vector-only
        # against 1.33x at 100k rows), the two halves contending for the GIL
        # between their numpy steps.
        fpos, fscores = self._fts_top(state, query_text, depth, tables)
        pos, vscores = self._vector_top(state, q, depth, tables)
        vec_ids = state.ids[pos].tolist()
        fts_ids = state.ids[fpos]
        fts = list(zip(fts_ids.tolist(), fscores.tolist()))
        f_ids, f_scores, f_ranks = rrf_arrays([state.ids[pos], fts_ids], k=rrf_k, weights=weights)
        fused = [
            (i, s, [r[0] or None, r[1] or None])
            for i, s, r in zip(f_ids[:k].tolist(), f_scores[:k].tolist(), f_ranks[:k].tolist())
        ]
        ids = [int(i) for i, _, _ in fused]
        hits = self._hydrate(ids)
        vmap = dict(zip(vec_ids, vscores.tolist()))
        fmap = dict(fts)
        missing = [i for i in ids if i not in vmap]
        if missing:  # cosine for the full-text-only hits, from their int8 vectors
            where = np.searchsorted(state.ids, missing)
            where = np.clip(where, 0, max(state.count - 1, 0))
            ok = state.ids[where] == np.asarray(missing)
            sc = _dot(state.q8[where], q) * state.scale[where] + _offset(state, q)
            for i, good, s in zip(missing, ok.tolist(), sc.tolist()):
                if good:
                    vmap[i] = s
        out = []
        for entry_id, score, (vrank, frank) in fused:
            hit = hits.get(int(entry_id))
            if hit is None:
                continue
            hit.score = float(score)
            hit.vector_rank, hit.fts_rank = vrank, frank
            hit.vector_score = vmap.get(int(entry_id))
            hit.fts_score = fmap.get(int(entry_id))
            out.append(hit)
        return out

    # ------------------------------------------------------------ similar rows

    def similar(
        self, table: str, pk: Sequence[Any], k: int = 10, tables: Iterable[str] | None = None
    ) -> list[Hit]:
        """Rows most similar to row ``pk`` of ``table`` (its chunks averaged), one hit per
        row, the row itself excluded. ``tables`` restricts the results as in search."""
        state = self._current()
        own = self._entry_ids_for(table, pk)
        if not own:
            return []
        where = np.searchsorted(state.ids, own)
        where = where[(where < state.count)]
        where = where[state.ids[where] == np.asarray(own)[: len(where)]] if len(where) else where
        if not len(where):
            return []
        vecs = dequantize(state.q8[where], state.scale[where])
        if state.centre is not None:
            vecs += state.centre
        q = vecs.mean(0)
        norm = float(np.linalg.norm(q))
        if norm:
            q /= norm
        pos, scores = self._vector_top(state, q, 4 * k + len(own), tables)
        own_set = set(own)
        order_ids = [i for i in state.ids[pos].tolist()]
        hits = self._hydrate([i for i in order_ids if i not in own_set])
        seen: set[tuple[str, str]] = set()
        out: list[Hit] = []
        for entry_id, score in zip(order_ids, scores.tolist()):
            hit = hits.get(entry_id)
            if hit is None:
                continue
            key = (hit.table, json.dumps(hit.pk))
            if key in seen or (hit.table == table and key[1] == json.dumps(list(pk))):
                continue
            seen.add(key)
            hit.score = hit.vector_score = float(score)
            hit.vector_rank = len(out) + 1
            out.append(hit)
            if len(out) >= k:
                break
        return out

    def _entry_ids_for(self, table: str, pk: Sequence[Any]) -> list[int]:
        for variant in _pk_variants(pk):
            rows = self._query(
                "select id from entries where tbl = ? and pk = ? order by chunk",
                (table, json.dumps(variant)),
            )
            if rows:
                return [r[0] for r in rows]
        return []

    # ------------------------------------------------------------ rows

    def _hydrate(self, ids: list[int]) -> dict[int, Hit]:
        if not ids:
            return {}
        out: dict[int, Hit] = {}
        for start in range(0, len(ids), 500):
            part = ids[start : start + 500]
            rows = self._query(
                "select id, tbl, pk, chunk, text, title from entries where id in ({})".format(
                    ",".join("?" * len(part))
                ),
                part,
            )
            for id_, tbl, pk, chunk, text, title in rows:
                out[id_] = Hit(
                    table=tbl, pk=json.loads(pk), chunk=chunk, text=text, title=title,
                    score=0.0, entry_id=id_,
                )
        return out


def _dot(codes: np.ndarray, q: np.ndarray) -> np.ndarray:
    """int8 codes times a float32 query, without BLAS.

    einsum runs in the calling thread; BLAS matrix-vector products start a
    thread pool whose spinning threads cost several times more CPU on a
    busy two-core server than the product itself.
    """
    return np.einsum("ij,j->i", codes, q.astype(np.float32, copy=False), dtype=np.float32)


def _dot_float(rows: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Float32 rows times the query, in the calling thread (see ``_dot``)."""
    return np.einsum("ij,j->i", rows, q.astype(np.float32, copy=False))


def _offset(state: _Loaded, q: np.ndarray) -> float:
    """``q . centre``: what every int8 dot product lacks when codes are of ``v - centre``."""
    return float(q @ state.centre) if state.centre is not None else 0.0


def default_candidates(n: int, k: int) -> int:
    """How many binary-code candidates to rescore with int8 vectors: 2% of
    the rows, at least 4,000. recall@10 against exact search needed about
    4,000 at 100k bge-small vectors; at 1M (near-copies, with residual
    rescoring) 1% gave 0.982, 2% 0.988 for 2.5 ms more CPU (docs/rag-benchmarks.md)."""
    return int(min(n, max(20 * k, 4000, n // 50)))


def _release_free_memory() -> None:
    """Hand memory freed after a load back to the OS (glibc keeps it otherwise)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    k = min(k, scores.shape[0])
    if k <= 0:
        return np.zeros(0, np.int64)
    if k < scores.shape[0]:
        part = np.argpartition(-scores, k - 1)[:k]
    else:
        part = np.arange(scores.shape[0])
    return part[np.argsort(-scores[part], kind="stable")]


def _pk_variants(pk: Sequence[Any]) -> list[list]:
    """The pk as given, then with numeric strings as numbers (URLs carry strings)."""
    pk = list(pk)
    variants = [pk]
    converted = []
    for value in pk:
        if isinstance(value, str):
            try:
                value = int(value)
            except ValueError:
                try:
                    value = float(value)
                except ValueError:
                    pass
        converted.append(value)
    if converted != pk:
        variants.append(converted)
    as_text = [str(v) if not isinstance(v, str) else v for v in pk]
    if as_text not in variants:
        variants.append(as_text)
    return variants


# ---------------------------------------------------------------- shared cache

_INDEXES: dict[str, RagIndex] = {}
_INDEXES_LOCK = threading.Lock()


def get_index(sidecar_path: str, *, full_text: str = "memory") -> RagIndex:
    """The shared ``RagIndex`` of a sidecar (created on first use, loaded lazily)."""
    key = os.path.abspath(sidecar_path)
    with _INDEXES_LOCK:
        index = _INDEXES.get(key)
        if index is None or index.full_text != full_text:  # a changed setting: start afresh
            if index is not None:
                index.close()
            index = _INDEXES[key] = RagIndex(key, full_text=full_text)
        return index


def forget_index(sidecar_path: str) -> None:
    """Drop a cached index (after deleting or replacing its file)."""
    with _INDEXES_LOCK:
        index = _INDEXES.pop(os.path.abspath(sidecar_path), None)
    if index is not None:
        index.close()
