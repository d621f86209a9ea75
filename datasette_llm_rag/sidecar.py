"""The sidecar: a separate SQLite file holding a database's search index.

The source database is never written: rows are read through a read-only
connection and everything the index needs lives here, so immutable (``-i``)
databases can be indexed too. By default the sidecar sits beside its
database as ``<name>.llm-rag.db``.

Schema (created by the migrations below, tracked with ``PRAGMA user_version``):

- ``meta``: key/value facts about the index: embedding model id, dimensions,
  quantisation, creation time, a generation counter bumped on every write,
  and ``centre``: the vector subtracted before quantising (quant.py; absent
  in sidecars written before it, read as zero).
- ``entries``: one row per indexed chunk of a source row.
- ``vectors``: the chunk's embedding, int8 scalar-quantised with one scale per
  vector (``v ~= q8 * scale + centre``): a quarter of float32's size, and enough to
  rescore candidates to better than 0.98 recall against exact float32 search;
  since schema version 3 also ``r4``, what the int8 rounding lost (quant.py,
  ``meta.residual`` names the format), read only to rescore a search's best
  few rows. Rows written before have none and are scored from ``q8`` alone.
- ``entries_fts``: an FTS5 index of the entries' text (external content,
  tokenizer ``porter unicode61 remove_diacritics 2``). New entries are added
  to it by the indexer in bulk (three times faster than a trigger per row);
  triggers keep it in step when an entry's text changes or it is deleted. Any SQLite client can query it, and it is the
  reference for the in-memory ranking.
- ``terms`` and ``postings``: each entry's FTS5 tokens with their counts,
  loaded into an in-memory BM25 index that ranks as FTS5's ``bm25()`` does,
  about 40 times faster (see lexical.py).
"""

from __future__ import annotations

import os
import sqlite3
import time
from typing import Callable

from datasette_llm_core.errors import ConfigError
from datasette_llm_core.suitefiles import SIDECAR_APPLICATION_ID

from .lexical import FTS5_TOKENIZER, TOKENIZER_VERSION, TermEncoder
from .quant import RESIDUAL_FORMAT
from .ragconfig import SECTION, RagConfig, parse_rag_config

SIDECAR_SUFFIX = ".llm-rag.db"
QUANTISATION = "int8-per-vector-scale"
REBUILD_HINT = "re-index with `datasette llm-rag index DB --rebuild`"


class SidecarError(ConfigError):
    """The sidecar index cannot be used as it is (corrupt, unreadable, wrong model)."""


class ModelMismatchError(SidecarError):
    """The sidecar was built with another embedding model than the one configured."""


class IndexMissingError(SidecarError):
    """There is no sidecar index for this database yet."""


def sidecar_path(db_path: str | None, db_name: str, rag_config: RagConfig | dict | None) -> str:
    """Where the sidecar index of database ``db_name`` lives.

    Order: the database's own ``sidecar`` setting, then ``sidecar_dir`` +
    ``<db_name>.llm-rag.db``, then beside the database file. In-memory
    databases have no file to sit beside, so they need one of the first two.
    """
    config = parse_rag_config(rag_config)
    db_conf = config.databases.get(db_name)
    if db_conf is not None and db_conf.sidecar:
        path = os.path.expanduser(db_conf.sidecar)
        if not os.path.isabs(path) and config.sidecar_dir:
            path = os.path.join(os.path.expanduser(config.sidecar_dir), path)
        return os.path.abspath(path)
    if config.sidecar_dir:
        return os.path.abspath(
            os.path.join(os.path.expanduser(config.sidecar_dir), db_name + SIDECAR_SUFFIX)
        )
    if not db_path or db_path == ":memory:" or db_path.startswith("file::memory:"):
        raise ConfigError(
            f"Database {db_name!r} is in memory, so its search index cannot sit beside it: "
            f"set {SECTION}: sidecar_dir: (a folder) or "
            f"databases: {db_name}: sidecar: (a file path)."
        )
    return os.path.join(os.path.dirname(os.path.abspath(db_path)), db_name + SIDECAR_SUFFIX)


# ---------------------------------------------------------------- migrations


def _m0001_initial(conn: sqlite3.Connection) -> None:
    conn.execute(
        """create table meta (
  key text primary key, -- fact name: embedding_model, dimensions, quantisation, created, generation
  value text -- its value, as text
)"""
    )
    conn.execute(
        """create table entries (
  id integer primary key, -- entry id; also the FTS rowid and the vectors key
  tbl text not null, -- source table name
  pk text not null, -- JSON list of the source row's primary key values ([rowid] for rowid tables)
  chunk integer not null default 0, -- chunk number within the row's text, 0 first
  text text not null, -- the text that was embedded and full-text indexed
  hash text not null, -- blake2b hash of text: unchanged rows are not embedded again
  title text, -- display title from the table's title_column
  unique (tbl, pk, chunk)
)"""
    )
    conn.execute(
        """create table vectors (
  entry_id integer primary key references entries(id) on delete cascade, -- entries.id
  q8 blob not null, -- int8 codes, one byte per dimension: round(v / scale)
  scale real not null -- per-vector scale so that v ~= q8 * scale + meta centre (float32 v is L2-normalised)
)"""
    )
    conn.execute(
        """create table terms (
  id integer primary key, -- term id used in postings.tids
  term text not null unique -- a token as lexical.tokenize makes it (folded, stemmed)
)"""
    )
    conn.execute(
        """create table postings (
  entry_id integer primary key, -- entries.id
  tids blob not null, -- uint32 term ids of the distinct tokens of the entry's text
  tfs blob not null, -- uint16 count of each of those terms, same order
  length integer not null -- number of tokens in the text (BM25 length normalisation)
)"""
    )


def _m0002_fts5(conn: sqlite3.Connection) -> None:
    conn.execute(
        "create virtual table entries_fts using fts5(text, content='entries', "
        f"content_rowid='id', tokenize='{FTS5_TOKENIZER}')"
    )
    conn.execute(
        """create trigger entries_fts_delete after delete on entries begin
  insert into entries_fts (entries_fts, rowid, text) values ('delete', old.id, old.text);
end"""
    )
    conn.execute(
        """create trigger entries_fts_update after update of text on entries begin
  insert into entries_fts (entries_fts, rowid, text) values ('delete', old.id, old.text);
  insert into entries_fts (rowid, text) values (new.id, new.text);
end"""
    )
    conn.execute("insert into entries_fts (entries_fts) values ('rebuild')")
    retokenize(conn)


def retokenize(conn: sqlite3.Connection) -> None:
    """Recompute ``terms`` and ``postings`` from the entries' text with the
    current tokenizer (no re-embedding). Call inside a write transaction."""
    conn.execute("delete from postings")
    conn.execute("delete from terms")
    encoder = TermEncoder()
    cursor = conn.execute("select id, text from entries order by id")
    while True:
        rows = cursor.fetchmany(5000)
        if not rows:
            break
        ids = [r[0] for r in rows]
        encoded = encoder.encode_many([r[1] for r in rows])
        conn.executemany(
            "insert into postings (entry_id, tids, tfs, length) values (?, ?, ?, ?)",
            [(i, *e) for i, e in zip(ids, encoded)],
        )
    conn.executemany("insert into terms (id, term) values (?, ?)", encoder.pending)
    conn.execute(
        "insert into meta (key, value) values ('tokenizer', ?) "
        "on conflict(key) do update set value = excluded.value",
        (TOKENIZER_VERSION,),
    )
    bump_generation(conn)


def _m0003_residual(conn: sqlite3.Connection) -> None:
    # Nullable: vectors written before keep none. No data is rewritten, and a
    # reader of schema 2 (or a read-only copy not yet upgraded) still works.
    conn.execute(
        "alter table vectors add column r4 blob "
        "/* 4-bit codes of v - (q8 * scale + centre) in steps of scale/14, two per byte; null: none */"
    )
    conn.execute(
        "insert into meta (key, value) values ('residual', ?) "
        "on conflict(key) do update set value = excluded.value",
        (RESIDUAL_FORMAT,),
    )


MIGRATIONS: list[tuple[str, Callable[[sqlite3.Connection], None]]] = [
    ("0001_initial", _m0001_initial),
    ("0002_fts5", _m0002_fts5),
    ("0003_residual", _m0003_residual),
]
#: The oldest schema a reader can search as it is (later migrations only add
#: what makes search better, and a read-only copy cannot be upgraded).
READABLE_VERSION = 2


def _apply_migrations(conn: sqlite3.Connection) -> None:
    version = conn.execute("pragma user_version").fetchone()[0]
    for number, (_name, fn) in enumerate(MIGRATIONS, start=1):
        if number <= version:
            continue
        conn.execute("begin immediate")
        try:
            # Re-check inside the write lock: another process may have migrated.
            if conn.execute("pragma user_version").fetchone()[0] >= number:
                conn.execute("rollback")
                continue
            fn(conn)
            conn.execute(f"pragma user_version = {int(number)}")
            conn.execute("commit")
        except BaseException:
            conn.execute("rollback")
            raise


def _upgrade_tokens(conn: sqlite3.Connection) -> None:
    """Re-tokenise an index whose terms came from another tokenizer version."""
    row = conn.execute("select value from meta where key = 'tokenizer'").fetchone()
    if row and row[0] == TOKENIZER_VERSION:
        return
    conn.execute("begin immediate")
    try:
        retokenize(conn)
        conn.execute("commit")
    except BaseException:
        conn.execute("rollback")
        raise


def _mark_application_id(conn: sqlite3.Connection) -> None:
    """Mark the file as a search index, so Datasette serving it refuses it
    (datasette_llm_core.suitefiles). Not a migration: older indexes stay
    usable and get the mark the next time they are opened for writing."""
    if conn.execute("pragma application_id").fetchone()[0] != SIDECAR_APPLICATION_ID:
        conn.execute(f"pragma application_id = {int(SIDECAR_APPLICATION_ID)}")


# ---------------------------------------------------------------- opening


def _corrupt(path: str, detail: str) -> SidecarError:
    return SidecarError(
        f"The search index {path} is damaged or not a search index ({detail}): "
        f"delete it and {REBUILD_HINT}."
    )


def read_only_location(path: str) -> bool:
    """True when nothing on this machine may write the sidecar: its folder (or
    the file itself) is read-only, as on a read-only mount or in a published
    image. Permission bits do not stop root; ``os.access`` still reports a
    read-only file system (EROFS)."""
    folder = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)  # a folder the first refresh will create
    if not os.access(folder, os.W_OK):
        return True
    return os.path.exists(path) and not os.access(path, os.W_OK)


def _wal_pending(path: str) -> bool:
    try:
        return os.path.getsize(path + "-wal") > 0
    except OSError:
        return False


def connect_readonly(path: str) -> sqlite3.Connection:
    """A read-only connection that writes no file, not even WAL's ``-shm``.

    Where the sidecar may be written (its folder is writable) this is
    ``mode=ro``: it sees a refresh committed by another process. Where
    nothing can write it (read-only mount, published image) SQLite's
    ``immutable=1`` is used, which needs no lock or ``-shm`` file; a WAL
    sidecar there must have no un-merged ``-wal`` (``datasette llm-rag index``
    merges it when it finishes), or SQLite could not see those changes.
    """
    from urllib.parse import quote

    uri = f"file:{quote(os.path.abspath(path))}"
    if read_only_location(path):
        if _wal_pending(path):
            raise SidecarError(
                f"The search index {path} is on a read-only file system and was copied "
                "while it was being written (its -wal file holds changes SQLite cannot merge "
                "there): run `datasette llm-rag index DB_PATH` where it is built (it merges "
                "them when it finishes) and copy the database and its index again."
            )
        uri += "?immutable=1"
    else:
        uri += "?mode=ro"
    return sqlite3.connect(uri, uri=True, check_same_thread=False)


def open_sidecar(path: str, *, create: bool = False, readonly: bool = False) -> sqlite3.Connection:
    """Open (and migrate) a sidecar; clear ``SidecarError`` if it is unusable.

    ``create=False`` raises ``IndexMissingError`` when the file does not exist.
    ``readonly`` opens it without writing anything (``connect_readonly``):
    searching a published, read-only index needs nothing else.
    """
    if not os.path.exists(path):
        if not create:
            raise IndexMissingError(
                f"There is no search index at {path} yet: build it with "
                "`datasette llm-rag index DB_PATH`."
            )
        parent = os.path.dirname(os.path.abspath(path))
        try:
            os.makedirs(parent, exist_ok=True)
        except OSError as e:
            raise ConfigError(
                f"Cannot create the folder for the search index {path}: {e.strerror}. "
                f"Set {SECTION}: sidecar_dir: to a writable folder."
            ) from None
    try:
        if readonly:
            conn = connect_readonly(path)
        else:
            conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            conn.execute("pragma journal_mode=wal")
            conn.execute("pragma synchronous=normal")
            # Deletes remove vectors explicitly; enforcing the foreign key on
            # every insert would only slow the write path down.
        conn.execute("pragma busy_timeout=5000")
        if not readonly:
            _apply_migrations(conn)
            _upgrade_tokens(conn)
            _mark_application_id(conn)
        _check_schema(conn, path)
    except SidecarError:
        raise
    except sqlite3.DatabaseError as e:
        if readonly and "unable to open" in str(e).lower():
            raise SidecarError(
                f"Cannot read the search index {path} ({e}): check that the file is readable "
                f"by the server, or {REBUILD_HINT}."
            ) from None
        if "readonly" in str(e).lower() or "unable to open" in str(e).lower():
            raise ConfigError(
                f"Cannot write the search index {path} ({e}). "
                f"Set {SECTION}: sidecar_dir: to a writable folder."
            ) from None
        if "no such module: fts5" in str(e).lower():
            raise ConfigError(
                f"This Python's SQLite library (version {sqlite3.sqlite_version}) was built "
                "without FTS5, which the search index needs for full-text search: use a "
                "Python whose sqlite3 module has FTS5 (most do)."
            ) from None
        raise _corrupt(path, str(e)) from None
    return conn


def _check_schema(conn: sqlite3.Connection, path: str) -> None:
    names = {
        row[0]
        for row in conn.execute("select name from sqlite_master where type in ('table', 'view')")
    }
    version = conn.execute("pragma user_version").fetchone()[0]
    tokenizer = None
    if "meta" in names:
        row = conn.execute("select value from meta where key = 'tokenizer'").fetchone()
        tokenizer = row[0] if row else None
    if "entries" in names and (version < READABLE_VERSION or tokenizer != TOKENIZER_VERSION):
        raise SidecarError(
            f"The search index {path} was built by an older version of this plugin: "
            "upgrade it with `datasette llm-rag index DB_PATH` (or Refresh on the index "
            "page); rows are not embedded again."
        )
    missing = {"meta", "entries", "entries_fts", "vectors", "terms", "postings"} - names
    if missing:
        raise _corrupt(path, "missing tables: " + ", ".join(sorted(missing)))


def read_meta(conn: sqlite3.Connection) -> dict[str, str]:
    return {k: v for k, v in conn.execute("select key, value from meta")}


def check_model(conn: sqlite3.Connection, path: str, model_id: str, dimensions: int | None) -> None:
    """Raise ``ModelMismatchError`` if the sidecar holds another model's vectors."""
    meta = read_meta(conn)
    built = meta.get("embedding_model")
    if built is None:
        return
    if built != model_id or (
        dimensions and meta.get("dimensions") and int(meta["dimensions"]) != int(dimensions)
    ):
        raise ModelMismatchError(
            f"The search index {path} was built with embedding model {built!r} "
            f"({meta.get('dimensions')} dimensions) but {model_id!r} is configured: "
            f"vectors from different models cannot be compared, so {REBUILD_HINT}."
        )


def init_meta(conn: sqlite3.Connection, model_id: str, dimensions: int) -> None:
    """Record the model of a new (or rebuilt) index; call inside a transaction."""
    now = str(time.time())
    for key, value in (
        ("embedding_model", model_id),
        ("dimensions", str(int(dimensions))),
        ("quantisation", QUANTISATION),
        ("created", now),
    ):
        conn.execute(
            "insert into meta (key, value) values (?, ?) "
            "on conflict(key) do update set value = excluded.value",
            (key, value),
        )
    conn.execute("insert or ignore into meta (key, value) values ('generation', '0')")
    conn.execute("delete from meta where key = 'centre'")  # chosen again with the first vectors


def bump_generation(conn: sqlite3.Connection) -> None:
    """Mark a change so loaded indexes reload; call inside the write transaction."""
    conn.execute(
        "insert into meta (key, value) values ('generation', '1') "
        "on conflict(key) do update set value = cast(value as integer) + 1"
    )
    conn.execute(
        "insert into meta (key, value) values ('updated', ?) "
        "on conflict(key) do update set value = excluded.value",
        (str(time.time()),),
    )
