"""Full-text search is SQLite FTS5's: the same tokens, the same bm25() ranking.

The sidecar holds a real FTS5 index; the in-memory ranking must agree with
it. Each check here compares with SQLite itself, on real text from the demo
data (State of the Union paragraphs) and, when ../shared is there, on the
SciFact abstracts.
"""

from __future__ import annotations

import glob
import json
import os
import random
import re
import sqlite3

import numpy as np
import pytest

from datasette_llm_rag import lexical
from datasette_llm_rag.indexer import refresh_index
from datasette_llm_rag.lexical import FTS5_TOKENIZER, fts5_query, query_words, stem, words
from datasette_llm_rag.sidecar import MIGRATIONS, SidecarError, open_sidecar
from datasette_llm_rag.store import RagIndex

from .fakes import HashEmbeddingModel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCIFACT = os.path.join(ROOT, "..", "shared", "data", "scifact-dev", "corpus.jsonl")


def _paragraphs() -> list[str]:
    out = []
    for path in sorted(glob.glob(os.path.join(ROOT, "demo_data", "raw", "sotu", "*.txt"))):
        with open(path, encoding="utf-8") as f:
            sentences = re.split(r"(?<=[.!?])\s+", f.read())
        # passages of three sentences, like the demo's paragraph rows
        out += [" ".join(sentences[i : i + 3]) for i in range(0, len(sentences), 3)]
    assert len(out) > 1000, "demo_data/raw/sotu is part of the repository"
    return out


def _fts5(texts: list[str]) -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:")
    conn.execute(f"create virtual table f using fts5(t, tokenize='{FTS5_TOKENIZER}')")
    conn.executemany("insert into f (rowid, t) values (?, ?)", list(enumerate(texts)))
    conn.execute("create virtual table v using fts5vocab(f, 'instance')")
    return conn


def _fts5_tokens(conn: sqlite3.Connection) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for term, doc in conn.execute("select term, doc from v order by doc, offset"):
        out.setdefault(doc, []).append(term)
    return out


def _ours(text: str) -> list[str]:
    return [stem(w) for w in words(text)]


def test_tokens_are_fts5s_on_real_text():
    texts = _paragraphs()
    conn = _fts5(texts)
    theirs = _fts5_tokens(conn)
    for i, text in enumerate(texts):
        assert _ours(text) == theirs.get(i, []), text[:80]


@pytest.mark.skipif(not os.path.exists(SCIFACT), reason="../shared/data/scifact-dev not present")
def test_tokens_are_fts5s_on_scifact_abstracts():
    # Scientific text: Greek letters, micro signs, accents, chemical names.
    with open(SCIFACT, encoding="utf-8") as f:
        texts = [(d["title"] + " " + d["abstract"] if "abstract" in d else d["title"] + " " + d["text"])
                 for d in map(json.loads, f)]
    conn = _fts5(texts)
    theirs = _fts5_tokens(conn)
    mismatched = [i for i, t in enumerate(texts) if _ours(t) != theirs.get(i, [])]
    assert mismatched == []


def test_tokens_are_fts5s_for_every_script_and_porter_edge_case():
    rng = random.Random(5)
    letters = [chr(c) for c in range(0xA0, 0x3000) if chr(c).isprintable()]
    suffixes = ("s es ies sses eed ed ing at bl iz ational tional enci anci izer logi bli alli "
                "entli eli ousli ization ation ator alism iveness fulness ousness aliti iviti "
                "biliti ical ness icate iciti ful ative alize al ance ence er ic able ible ant "
                "ement ment ent ion sion tion ou ism ate iti ous ive ize e ll y yying yyed").split()
    texts = []
    for _ in range(4000):
        base = "".join(rng.choice("bcdfghjklmnpqrstvwxyzaeiouyAEIOUY") for _ in range(rng.randint(0, 8)))
        texts.append(base + "".join(rng.choice(suffixes) for _ in range(rng.randint(0, 2))))
    for _ in range(1500):
        texts.append("".join(rng.choice(letters + list("abc xyz_-.,'")) for _ in range(rng.randint(1, 24))))
    texts += ["Straße naïve ΣΑΣ µm ϵ Ꭰ ﬁne İstanbul under_score e\u0301t", "x" * 70 + "ing", "\x00 a\x00b"]
    conn = _fts5(texts)
    theirs = _fts5_tokens(conn)
    bad = [t for i, t in enumerate(texts) if _ours(t) != theirs.get(i, [])]
    assert bad == []


def test_query_words_make_a_safe_fts5_query():
    assert query_words('NEAR(a, b) "x" title:y AND z*') == ["near", "b", "x", "title", "y", "z"]
    assert fts5_query('say "hello" OR drop') == '"say" OR "hello" OR "drop"'
    assert fts5_query("cells and the cell") == '"cells"'  # one word per token
    conn = _fts5(["a row"])
    for question in ['NEAR(', '"', "a:b", "*", "AND OR NOT", "col:x ^y", "-x", "日本語 の テスト"]:
        conn.execute("select count(*) from f where f match ?", (fts5_query(question) or '""',)).fetchone()


async def _built(tmp_path, texts):
    db = str(tmp_path / "src.db")
    conn = sqlite3.connect(db)
    conn.execute("create table docs (id integer primary key, body text)")
    conn.executemany("insert into docs values (?, ?)", list(enumerate(texts, 1)))
    conn.commit()
    conn.close()
    cfg = {"databases": {"src": {"tables": {"docs": {"columns": ["body"]}}}}}
    stats = await refresh_index(db, "src", cfg, HashEmbeddingModel())
    return db, cfg, stats.sidecar


async def test_in_memory_ranking_is_fts5_bm25(tmp_path):
    texts = _paragraphs()
    _db, _cfg, side = await _built(tmp_path, texts)
    index = RagIndex(side)
    rng = random.Random(11)
    questions = [" ".join(rng.sample(words(rng.choice(texts)), 4)) for _ in range(150)]
    questions += ["health care for working families", "taxes", "the economy and jobs", "Iraq"]
    checked = 0
    for q in questions:
        state = index._current()
        pos, scores = state.lexical.search(q, 10, max_postings=None)
        ours = list(zip(state.ids[pos].tolist(), scores.tolist()))
        theirs = [(h.entry_id, h.fts_score) for h in index.search_fts5(q, 10)]
        if not theirs:
            assert ours == []
            continue
        checked += 1
        # Same scores (float32 in memory, double in SQLite).
        assert [s for _, s in ours] == pytest.approx([s for _, s in theirs], rel=2e-3), q
        # Same rows, except where two rows' scores tie within that rounding.
        for (a, sa), (b, sb) in zip(ours, theirs):
            assert a == b or abs(sa - sb) <= 2e-3 * max(sa, sb), q
    assert checked > 140
    # The table filter works the same way in both.
    hits = index.search_fts5("taxes", 10, tables=["docs"])
    assert hits and index.search_fts5("taxes", 10, tables=["other"]) == []


async def test_fts5_index_follows_changes_and_deletes(tmp_path):
    texts = ["the harbour budget was cut", "parks and zoning", "police overtime rose"]
    db, cfg, side = await _built(tmp_path, texts)
    conn = sqlite3.connect(db)
    conn.execute("update docs set body = 'harbour dredging contract' where id = 2")
    conn.execute("delete from docs where id = 3")
    conn.commit()
    conn.close()
    await refresh_index(db, "src", cfg, HashEmbeddingModel())
    s = sqlite3.connect(side)
    s.execute("insert into entries_fts (entries_fts) values ('integrity-check')")  # raises if out of step
    match = dict(s.execute(
        "select e.pk, count(*) from entries_fts f join entries e on e.id = f.rowid "
        "where entries_fts match 'harbour' group by e.pk"
    ).fetchall())
    assert match == {"[1]": 1, "[2]": 1}
    assert s.execute("select count(*) from entries_fts where entries_fts match 'police'").fetchone()[0] == 0
    assert s.execute("select count(*) from entries_fts where entries_fts match 'zoning'").fetchone()[0] == 0
    index = RagIndex(side)
    assert [h.pk for h in index.search_fts("harbour", 10)] == [h.pk for h in index.search_fts5("harbour", 10)]


def _version_one_sidecar(path: str) -> None:
    """A sidecar as version 1 of this plugin wrote it: no FTS5 table, old tokens."""
    conn = sqlite3.connect(path, isolation_level=None)
    MIGRATIONS[0][1](conn)
    conn.execute("pragma user_version = 1")
    q8 = np.ones(4, np.int8).tobytes()
    for i, text in enumerate(["Studies of binding cells", "harbour budgets increased"], 1):
        conn.execute("insert into entries (id, tbl, pk, chunk, text, hash, title) values (?, 'docs', ?, 0, ?, 'h', null)",
                     (i, f"[{i}]", text))
        conn.execute("insert into vectors values (?, ?, 0.5)", (i, q8))
    conn.execute("insert into terms values (0, 'study'), (1, 'increas')")  # the old light stemmer's tokens
    conn.execute("insert into postings values (1, ?, ?, 2)", (np.array([0], np.uint32).tobytes(), np.array([1], np.uint16).tobytes()))
    conn.execute("insert into meta values ('embedding_model', 'hash-64'), ('dimensions', '4'), ('generation', '3')")
    conn.close()


def test_old_sidecar_is_upgraded_in_place_without_re_embedding(tmp_path):
    path = str(tmp_path / "old.llm-rag.db")
    _version_one_sidecar(path)
    # Read-only (how the web side opens it): a clear message, not "damaged".
    with pytest.raises(SidecarError) as e:
        open_sidecar(path, readonly=True)
    assert "older version" in str(e.value) and "llm-rag index" in str(e.value)
    # Opening it for writing (as any refresh does) upgrades it.
    conn = open_sidecar(path)
    assert conn.execute("pragma user_version").fetchone()[0] == len(MIGRATIONS)
    assert conn.execute("select count(*) from vectors").fetchone()[0] == 2  # vectors kept
    terms = {t for (t,) in conn.execute("select term from terms")}
    assert {"studi", "bind", "cell", "harbour", "budget", "increas"} <= terms and "study" not in terms
    assert conn.execute("select count(*) from entries_fts where entries_fts match 'binding'").fetchone()[0] == 1
    conn.close()
    index = RagIndex(path)
    assert [h.pk for h in index.search_fts("budget increase", 5)] == [[2]]
    assert [h.pk for h in index.search_fts5("budget increase", 5)] == [[2]]


def test_tokenizer_change_re_tokenises_on_next_write_open(tmp_path, monkeypatch):
    path = str(tmp_path / "s.llm-rag.db")
    open_sidecar(path, create=True).close()
    monkeypatch.setattr("datasette_llm_rag.sidecar.TOKENIZER_VERSION", "a-future-tokenizer")
    with pytest.raises(SidecarError, match="older version"):
        open_sidecar(path, readonly=True)
    conn = open_sidecar(path)
    assert conn.execute("select value from meta where key = 'tokenizer'").fetchone()[0] == "a-future-tokenizer"


def test_unicode_table_is_learnt_from_sqlite_and_thread_safe():
    import threading

    table = lexical._Unicode61()
    out: list[list[str]] = []
    text = "Ελληνικά ΣΑΣ µm ﬁne Ꭰ ắ"

    def work():
        out.append(text.translate(table).split())

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    conn = _fts5([text])
    expected = _fts5_tokens(conn)[0]
    assert all([stem(w) for w in o] == expected for o in out)


async def test_full_text_sqlite_mode_ranks_with_fts5_and_loads_no_postings(tmp_path):
    texts = _paragraphs()[:800]
    _db, _cfg, side = await _built(tmp_path, texts)
    memory, sqlite_mode = RagIndex(side), RagIndex(side, full_text="sqlite")
    assert memory._current().lexical is not None and sqlite_mode._current().lexical is None
    qvec = np.ones(HashEmbeddingModel().dimensions, np.float32)
    for q in ["health care for working families", "taxes", "Iraq war veterans", "the of"]:
        a = [(h.entry_id, h.fts_rank) for h in memory.search_hybrid(q, qvec, 10)]
        b = [(h.entry_id, h.fts_rank) for h in sqlite_mode.search_hybrid(q, qvec, 10)]
        assert a == b, q
        assert [h.entry_id for h in memory.search_fts(q, 10)] == [h.entry_id for h in sqlite_mode.search_fts(q, 10)]
    # the table filter applies inside SQLite too
    assert sqlite_mode.search_fts("taxes", 10, tables=["nothing"]) == []


def test_full_text_setting_is_checked():
    from datasette_llm_rag.ragconfig import parse_rag_config

    assert parse_rag_config({"full_text": "sqlite"}).full_text == "sqlite"
    with pytest.raises(Exception) as e:
        parse_rag_config({"full_text": "elastic"})
    assert "full_text" in str(e.value)


async def test_verify_leaves_an_old_sidecar_as_it_is_and_says_to_upgrade(tmp_path):
    import hashlib

    from datasette_llm_rag.indexer import verify

    db = str(tmp_path / "src.db")
    conn = sqlite3.connect(db)
    conn.execute("create table docs (id integer primary key, body text)")
    conn.executemany("insert into docs values (?, ?)", [(1, "Studies of binding cells"), (2, "harbour budgets increased")])
    conn.commit()
    conn.close()
    side = str(tmp_path / "old.llm-rag.db")
    _version_one_sidecar(side)
    before = hashlib.sha256(open(side, "rb").read()).hexdigest()
    cfg = {"databases": {"src": {"tables": {"docs": {"columns": ["body"]}}}}}
    with pytest.raises(SidecarError, match="older version"):
        await verify(db, "src", cfg, HashEmbeddingModel(), sidecar=side)
    assert hashlib.sha256(open(side, "rb").read()).hexdigest() == before


def test_a_sqlite_without_fts5_gets_a_clear_message(tmp_path, monkeypatch):
    from datasette_llm_core.errors import ConfigError
    from datasette_llm_rag import sidecar as sidecar_module

    def no_fts5(conn):
        raise sqlite3.OperationalError("no such module: fts5")

    migrations = list(MIGRATIONS)
    migrations[1] = ("0002_fts5", no_fts5)
    monkeypatch.setattr(sidecar_module, "MIGRATIONS", migrations)
    with pytest.raises(ConfigError) as e:
        open_sidecar(str(tmp_path / "s.llm-rag.db"), create=True)
    assert "without FTS5" in str(e.value) and "damaged" not in str(e.value)
