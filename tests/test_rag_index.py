"""Indexer: incremental refresh, read-only source, sidecar errors, verify, config checks."""

from __future__ import annotations

import hashlib
import os
import sqlite3

import pytest

from datasette_llm_core.errors import ConfigError
from datasette_llm_rag.indexer import refresh_index, verify
from datasette_llm_rag.ragconfig import parse_rag_config
from datasette_llm_rag.sidecar import (
    MIGRATIONS,
    ModelMismatchError,
    SidecarError,
    open_sidecar,
    sidecar_path,
)
from datasette_llm_rag.store import RagIndex
from datasette_llm_rag.textbuild import chunk_text

from .fakes import HashEmbeddingModel
from .rag_helpers import config, embedded_count, make_db

ARTICLES = [(i, f"Story {i}", f"The council voted on budget item {i} about parks") for i in range(1, 21)]
NOTES = ["call the mayor's office", "check the parks budget"]


def _sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


async def test_first_index_then_only_changes_are_embedded(tmp_path):
    db = make_db(tmp_path / "news.db", ARTICLES, NOTES)
    model = HashEmbeddingModel()
    stats = await refresh_index(db, "news", config(), model)
    assert (stats.added, stats.updated, stats.deleted, stats.unchanged) == (22, 0, 0, 0)
    assert embedded_count(model) == 22
    assert stats.sidecar == str(tmp_path / "news.llm-rag.db")

    model.calls.clear()
    stats = await refresh_index(db, "news", config(), model)
    assert (stats.added, stats.updated, stats.deleted, stats.unchanged) == (0, 0, 0, 22)
    assert embedded_count(model) == 0

    conn = sqlite3.connect(db)
    conn.execute("update articles set body = 'A new story about zoning' where id = 3")
    conn.execute("delete from articles where id = 4")
    conn.execute("insert into articles values (99, 'Fresh', 'Late-breaking news about the port')")
    conn.execute("update articles set title = 'Renamed' where id = 5")  # title only: text changes too
    conn.commit()
    conn.close()
    model.calls.clear()
    stats = await refresh_index(db, "news", config(), model)
    assert (stats.added, stats.updated, stats.deleted) == (1, 2, 1)
    assert stats.unchanged == 22 - 3
    assert embedded_count(model) == 3  # only the new and the two changed texts

    index = RagIndex(stats.sidecar)
    pks = {tuple(h.pk) for h in index.search_fts("zoning port", 10)}
    assert pks == {(3,), (99,)}
    assert index.search_fts("Story 4", 50, tables=["articles"])  # others still there
    assert all(h.pk != [4] for h in index.search_fts("Story 4", 50, tables=["articles"]))
    index.close()


async def test_title_only_change_is_not_re_embedded(tmp_path):
    db = make_db(tmp_path / "news.db", ARTICLES, NOTES)
    cfg = config(columns=["body"])  # title not part of the text
    model = HashEmbeddingModel()
    await refresh_index(db, "news", cfg, model)
    conn = sqlite3.connect(db)
    conn.execute("update articles set title = 'Brand new headline' where id = 2")
    conn.commit()
    conn.close()
    model.calls.clear()
    stats = await refresh_index(db, "news", cfg, model)
    assert embedded_count(model) == 0 and stats.unchanged == 22
    index = RagIndex(stats.sidecar)
    [hit] = [h for h in index.search_fts("budget item 2 about parks", 1)]
    assert hit.title == "Brand new headline" and hit.pk == [2]


async def test_batches_follow_model_batch_size_and_progress(tmp_path):
    db = make_db(tmp_path / "news.db", ARTICLES, NOTES)
    model = HashEmbeddingModel()
    model.batch_size = 5
    seen = []
    await refresh_index(db, "news", config(), model, progress=lambda d, t: seen.append((d, t)))
    assert [n for _k, n in model.calls] == [5, 5, 5, 5, 2]
    assert all(kind == "document" for kind, _n in model.calls)
    assert seen[0] == (0, 22) and seen[-1] == (22, 22)


async def test_embed_callable_is_used_instead_of_model(tmp_path):
    db = make_db(tmp_path / "news.db", ARTICLES[:3], [])
    model = HashEmbeddingModel()
    routed = []

    async def embed(texts, *, kind):
        routed.append((kind, len(texts)))
        return model.embed_sync(texts)

    await refresh_index(db, "news", config(), model, embed=embed)
    assert routed == [("document", 3)] and model.calls == []


async def test_source_database_is_never_written(tmp_path):
    db = make_db(tmp_path / "news.db", ARTICLES, NOTES)
    before = _sha(db)
    mtime = os.stat(db).st_mtime_ns
    listing = sorted(os.listdir(tmp_path))
    model = HashEmbeddingModel()
    await refresh_index(db, "news", config(), model)
    await refresh_index(db, "news", config(), model, rebuild=True)
    await verify(db, "news", config(), model)
    assert _sha(db) == before and os.stat(db).st_mtime_ns == mtime
    # no journal, WAL or shm file appeared beside the source: only the sidecar's files
    added = set(os.listdir(tmp_path)) - set(listing)
    assert added and added <= {"news.llm-rag.db", "news.llm-rag.db-wal", "news.llm-rag.db-shm"}


async def test_immutable_source_and_read_only_file(tmp_path):
    db = make_db(tmp_path / "news.db", ARTICLES, NOTES)
    os.chmod(db, 0o444)
    before = _sha(db)
    side = str(tmp_path / "elsewhere" / "news.idx")
    stats = await refresh_index(db, "news", config(), HashEmbeddingModel(), immutable=True, sidecar=side)
    assert stats.added == 22 and os.path.exists(side)
    assert _sha(db) == before


async def test_caller_connection_is_only_read(tmp_path):
    db = make_db(tmp_path / "news.db", ARTICLES, NOTES)
    conn = sqlite3.connect(db)
    stats = await refresh_index(conn, "news", config(), HashEmbeddingModel(), sidecar=str(tmp_path / "s.db"))
    assert stats.added == 22
    assert conn.execute("select count(*) from articles").fetchone()[0] == 20  # still open and usable
    assert not conn.in_transaction
    conn.close()


async def test_model_mismatch_is_refused_until_rebuild(tmp_path):
    db = make_db(tmp_path / "news.db", ARTICLES, NOTES)
    await refresh_index(db, "news", config(), HashEmbeddingModel("model-a"))
    other = HashEmbeddingModel("model-b")
    with pytest.raises(ModelMismatchError) as e:
        await refresh_index(db, "news", config(), other)
    assert "model-a" in str(e.value) and "--rebuild" in str(e.value)
    assert other.calls == []  # refused before embedding anything
    report = await verify(db, "news", config(), other)
    assert report.model_ok is False and report.indexed_model == "model-a"

    stats = await refresh_index(db, "news", config(), other, rebuild=True)
    assert stats.added == 22
    index = RagIndex(stats.sidecar)
    assert index.model_id == "model-b"
    index.check_model("model-b")
    with pytest.raises(ModelMismatchError):
        index.check_model("model-a")
    with pytest.raises(ModelMismatchError):
        index.search_vector([0.1] * 10, 3)  # wrong dimensions: clear error, not a numpy crash


@pytest.mark.parametrize("content", [b"this is not a database at all" * 100, b""])
async def test_corrupt_sidecar_gives_a_clear_error(tmp_path, content):
    db = make_db(tmp_path / "news.db", ARTICLES, NOTES)
    side = tmp_path / "news.llm-rag.db"
    side.write_bytes(content)
    if content:
        with pytest.raises(SidecarError) as e:
            await refresh_index(db, "news", config(), HashEmbeddingModel())
        assert "--rebuild" in str(e.value) and str(side) in str(e.value)
        with pytest.raises(SidecarError):
            RagIndex(str(side)).search_fts("parks", 3)
    else:  # an empty file is a new, empty SQLite database: indexing just works
        stats = await refresh_index(db, "news", config(), HashEmbeddingModel())
        assert stats.added == 22


async def test_foreign_sqlite_file_as_sidecar_is_rejected_for_search(tmp_path):
    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("create table something (x)")
    conn.commit()
    conn.close()
    with pytest.raises(SidecarError) as e:
        RagIndex(str(other)).search_vector([0.0] * 4, 2)
    assert "missing tables" in str(e.value)


async def test_verify_reports_deleted_changed_and_new_rows(tmp_path):
    db = make_db(tmp_path / "news.db", ARTICLES, NOTES)
    model = HashEmbeddingModel()
    await refresh_index(db, "news", config(), model)
    report = await verify(db, "news", config(), model)
    assert report.ok and (report.stale, report.missing, report.orphaned) == (0, 0, 0)
    assert report.entries == 22
    conn = sqlite3.connect(db)
    conn.execute("delete from articles where id = 7")
    conn.execute("update articles set body = 'changed' where id = 8")
    conn.execute("insert into notes (body) values ('new note')")
    conn.commit()
    conn.close()
    report = await verify(db, "news", config(), model)
    assert (report.stale, report.missing, report.orphaned) == (1, 1, 1)
    assert not report.ok
    await refresh_index(db, "news", config(), model)
    assert (await verify(db, "news", config(), model)).ok


async def test_unknown_table_and_column_name_the_available_ones(tmp_path):
    db = make_db(tmp_path / "news.db", ARTICLES, NOTES)
    bad_table = {"databases": {"news": {"tables": {"artcles": {"columns": ["body"]}}}}}
    with pytest.raises(ConfigError) as e:
        await refresh_index(db, "news", bad_table, HashEmbeddingModel())
    msg = str(e.value)
    assert "'artcles'" in msg and "articles" in msg and "notes" in msg and "news" in msg

    with pytest.raises(ConfigError) as e:
        await refresh_index(db, "news", config(columns=["title", "bdy"]), HashEmbeddingModel())
    msg = str(e.value)
    assert "'bdy'" in msg and "articles" in msg and "id, title, body" in msg

    with pytest.raises(ConfigError) as e:
        await refresh_index(db, "news", config(template="{title}: {summary}", columns=None), HashEmbeddingModel())
    assert "'summary'" in str(e.value)

    with pytest.raises(ConfigError) as e:
        await refresh_index(db, "news", config(title_column="headline"), HashEmbeddingModel())
    assert "'headline'" in str(e.value)

    with pytest.raises(ConfigError) as e:
        await refresh_index(db, "elsewhere", config(), HashEmbeddingModel())
    assert "'elsewhere'" in str(e.value) and "news" in str(e.value)


def test_config_validation():
    with pytest.raises(ConfigError) as e:
        parse_rag_config({"databases": {"news": {"tables": {"a": {"template": "{x.__class__}"}}}}})
    assert "plain column names" in str(e.value)
    with pytest.raises(ConfigError) as e:
        parse_rag_config({"databases": {"news": {"tables": {"a": {"colums": ["x"]}}}}})
    assert "colums" in str(e.value)
    with pytest.raises(ConfigError) as e:
        parse_rag_config({"databases": {"news": {"tables": {
            "a": {"embedding_model": "m1"}, "b": {"embedding_model": "m2"}}}}})
    assert "same embedding_model" in str(e.value)
    cfg = parse_rag_config({"embedding_model": "g", "answer_model": "x",
                            "databases": {"news": {"tables": {"a": None, "b": {"embedding_model": "g"}}}}})
    assert cfg.model_for("news", "a") == "g" and cfg.model_extra == {"answer_model": "x"}


def test_sidecar_path_rules(tmp_path):
    assert sidecar_path("/data/congress.db", "congress", {}) == "/data/congress.llm-rag.db"
    assert sidecar_path("/data/c.db", "congress", {"sidecar_dir": str(tmp_path)}) == str(
        tmp_path / "congress.llm-rag.db"
    )
    explicit = {"sidecar_dir": str(tmp_path), "databases": {"congress": {"sidecar": "x/idx.db"}}}
    assert sidecar_path("/data/c.db", "congress", explicit) == str(tmp_path / "x" / "idx.db")
    with pytest.raises(ConfigError) as e:
        sidecar_path(None, "scratch", {})
    assert "sidecar_dir" in str(e.value) and "scratch" in str(e.value)
    with pytest.raises(ConfigError):
        sidecar_path(":memory:", "scratch", {})


def test_sidecar_schema_is_commented_and_migrations_are_idempotent(tmp_path):
    path = str(tmp_path / "s.db")
    open_sidecar(path, create=True).close()
    conn = open_sidecar(path)  # second open: migrations do not run again
    sql = {name: s for name, s in conn.execute("select name, sql from sqlite_master where type='table'")}
    for table in ("meta", "entries", "vectors"):
        body = sql[table].split("(", 1)[1]
        columns = [line for line in body.splitlines() if line.strip() and not line.strip().startswith(("unique", ")"))]
        # columns added later by ALTER TABLE carry /* */ comments (SQLite appends them before the ")")
        assert columns and all("--" in line or "/*" in line for line in columns), table
    assert conn.execute("pragma user_version").fetchone()[0] == len(MIGRATIONS)
    conn.close()


async def test_long_texts_are_chunked(tmp_path):
    paragraph = "The harbour commission met again. " * 20  # ~680 chars
    body = "\n\n".join(f"Part {i}. " + paragraph for i in range(5))
    db = make_db(tmp_path / "news.db", [(1, "Long", body)], [])
    model = HashEmbeddingModel()
    stats = await refresh_index(db, "news", config(columns=["body"], chunk_chars=800), model)
    assert stats.added == 5 and embedded_count(model) == 5
    conn = open_sidecar(stats.sidecar)
    chunks = conn.execute("select chunk, text from entries where tbl='articles' order by chunk").fetchall()
    assert [c for c, _ in chunks] == list(range(5))
    assert all(len(t) <= 800 for _, t in chunks)
    assert chunks[2][1].startswith("Part 2.")


def test_chunk_text_never_loses_words():
    text = " ".join(f"w{i}" for i in range(2000))
    for size in (100, 333, 1000):
        pieces = chunk_text(text, size)
        assert all(len(p) <= size for p in pieces)
        assert " ".join(pieces).split() == text.split()
    assert chunk_text("short", 100) == ["short"]
    assert chunk_text("x" * 250, 100) == ["x" * 100, "x" * 100, "x" * 50]


async def test_tables_not_configured_any_more_are_dropped(tmp_path):
    db = make_db(tmp_path / "news.db", ARTICLES, NOTES)
    model = HashEmbeddingModel()
    await refresh_index(db, "news", config(), model)
    only_articles = {"databases": {"news": {"tables": {"articles": {"columns": ["body"]}}}}}
    stats = await refresh_index(db, "news", only_articles, model)
    assert stats.deleted == 2  # the notes entries
    # --table restricts a refresh to one table and leaves the others alone
    stats = await refresh_index(db, "news", config(), model, tables=["notes"])
    assert stats.added == 2 and stats.deleted == 0
    with pytest.raises(ConfigError):
        await refresh_index(db, "news", config(), model, tables=["nope"])


def test_source_is_read_with_datasettes_sqlite_library(tmp_path):
    # Two SQLite copies in one process do not share POSIX locks: reads of a
    # database Datasette may be writing go through Datasette's own library.
    from datasette.utils.sqlite import sqlite3 as datasette_sqlite

    from datasette_llm_rag.indexer import open_source

    db = make_db(tmp_path / "news.db", [(1, "t", "b")])
    conn = open_source(db)
    try:
        assert isinstance(conn, datasette_sqlite.Connection)
        assert conn.execute("select count(*) from articles").fetchone()[0] == 1
        with pytest.raises(datasette_sqlite.OperationalError):  # read-only
            conn.execute("insert into articles values (2, 'x', 'y')")
    finally:
        conn.close()


async def test_the_source_is_not_locked_while_rows_are_embedded(tmp_path):
    """The rows' texts are read again a page at a time while they are embedded (the plan
    holds no texts, so a first index of a large table does not cost memory in proportion
    to it). Between pages no read is open on the source: a write to it (Datasette
    inserting extracted rows, rollback-journal mode) never waits for the index."""
    articles = [(i, f"Story {i}", f"Council story {i} about the budget and road {i}.") for i in range(1, 2501)]
    db = make_db(tmp_path / "news.db", articles, [])
    model = HashEmbeddingModel()
    model.batch_size = 200
    writes = []

    async def embed(texts, *, kind):
        writer = sqlite3.connect(db, timeout=0)  # "database is locked" at once if a read is open
        try:
            writer.execute("insert into notes (body) values (?)", (f"written while embedding {len(writes)}",))
            writer.commit()
        finally:
            writer.close()
        writes.append(len(texts))
        return model.embed_sync(texts)

    stats = await refresh_index(db, "news", config(), model, embed=embed, tables=["articles"])
    assert sum(writes) == stats.embedded == stats.added == 2500 and len(writes) == 13
    assert (await verify(db, "news", config(), model, tables=["articles"])).ok


async def test_pages_follow_the_key_of_every_kind_of_table(tmp_path):
    """Rowid tables are paged by rowid (a text key included), WITHOUT ROWID tables by their
    primary key (a compound one too): every row is embedded exactly once."""
    from datasette_llm_rag import indexer

    path = tmp_path / "keys.db"
    conn = sqlite3.connect(path)
    conn.execute("create table plain (body text)")
    conn.execute("create table texty (code text primary key, body text)")
    conn.execute("create table pair (a text, b integer, body text, primary key (a, b)) without rowid")
    for n in range(2345):
        conn.execute("insert into plain values (?)", (f"plain {n}",))
        conn.execute("insert into texty values (?, ?)", (f"k{n:05d}-{'z' if n % 2 else 'a'}", f"texty {n}"))
        conn.execute("insert into pair values (?, ?, ?)", (f"g{n % 7}", n, f"pair {n}"))
    conn.commit()
    conn.close()
    rag = {"databases": {"keys": {"tables": {"plain": {}, "texty": {"columns": ["body"]},
                                              "pair": {"columns": ["body"]}}}}}
    model = HashEmbeddingModel()
    stats = await refresh_index(str(path), "keys", rag, model)
    assert stats.embedded == stats.added == 3 * 2345
    # the plan of a first index holds no row at all; a partial one only the missing keys
    side = sqlite3.connect(stats.sidecar)
    side.execute("delete from vectors where entry_id in (select id from entries where tbl = 'pair' and id % 2)")
    side.execute("delete from entries where tbl = 'pair' and id % 2")
    side.commit()
    source, side_ro = indexer.open_source(str(path)), indexer.open_sidecar(stats.sidecar)
    try:
        plans = [indexer.plan_table(source, "keys", n, parse_rag_config(rag).databases["keys"].tables[n])
                 for n in ("plain", "pair")]
        work = indexer._plan_work(source, side_ro, plans, False, {"plain", "texty", "pair"})
        assert work.all_new == set() and work.new == len(work.new_keys) > 1000
        assert all(key[0] == "pair" and len(key) == 3 for key in work.new_keys)  # keys, no texts
    finally:
        source.close()
        side_ro.close()
        side.close()
    await refresh_index(str(path), "keys", rag, model)
    assert (await verify(str(path), "keys", rag, model)).ok
    source = indexer.open_source(str(path))
    try:
        cfg = parse_rag_config(rag)
        for name in ("plain", "texty", "pair"):
            plan = indexer.plan_table(source, "keys", name, cfg.databases["keys"].tables[name])
            paged = list(indexer._source_pages(source, plan, page=100))
            assert sorted(paged) == sorted(indexer._iter_source_rows(source, plan)), name
            assert len(paged) == len(set(p[0] for p in paged)) == 2345, name
    finally:
        source.close()


async def test_rows_changed_between_planning_and_embedding_are_embedded_as_they_are_now(tmp_path):
    """The texts are read when embedded: a row edited after the plan was made is stored
    with its new text (and hash), one deleted meanwhile is skipped, and the next refresh
    finds nothing to do."""
    articles = [(i, f"Story {i}", f"Council story {i}.") for i in range(1, 3001)]
    db = make_db(tmp_path / "news.db", articles, [])
    model = HashEmbeddingModel()
    model.batch_size = 500  # the first call comes before the source's third page (of 1,000) is read
    calls = []

    async def embed(texts, *, kind):
        if not calls:
            conn = sqlite3.connect(db)
            conn.execute("update articles set body = 'Rewritten after planning.' where id = 2500")
            conn.execute("delete from articles where id = 2600")
            conn.commit()
            conn.close()
        calls.append(len(texts))
        return model.embed_sync(texts)

    stats = await refresh_index(db, "news", config(), model, embed=embed, tables=["articles"])
    assert stats.embedded == 2999
    report = await verify(db, "news", config(), model, tables=["articles"])
    assert report.ok, report
    again = await refresh_index(db, "news", config(), model, tables=["articles"])
    assert again.embedded == 0
