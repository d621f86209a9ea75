"""Building and refreshing a database's sidecar index.

``refresh_index`` reads the configured tables through a read-only connection,
builds each row's text (columns or template), splits long texts into chunks,
hashes every chunk and embeds only the chunks that are new or changed, in
batches of the model's ``batch_size``. Entries of rows that are gone are
deleted. Writes go to the sidecar in transactions; the source database is
never written.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import json
import os
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterable, Iterator, Sequence
from urllib.parse import quote

import numpy as np
from datasette.utils.sqlite import sqlite3 as source_sqlite

from datasette_llm_core.errors import ConfigError
from datasette_llm_core.sql import quote_identifier

from .lexical import TermEncoder
from .quant import choose_centre, decode_centre, encode_centre, quantize, residual_codes
from .ragconfig import SECTION, RagConfig, TableConfig, parse_rag_config
from .sidecar import (
    bump_generation,
    check_model,
    init_meta,
    open_sidecar,
    read_meta,
    sidecar_path,
)
from .textbuild import chunk_text, make_builder, text_hash

EmbedFn = Callable[..., Awaitable[np.ndarray]]
ProgressFn = Callable[[int, int], Any]

#: Entries written per sidecar transaction, at most...
WRITE_BATCH = 5000
#: ...and at most about this many characters of text: 5,000 long abstracts in
#: one transaction (SQLite's pending FTS5 data, postings, the batch's texts)
#: raised indexing's peak memory by ~130 MB over 1,000 (docs/rag-benchmarks.md);
#: 5,000 rows of ~300 characters stay one transaction, as before.
WRITE_CHARS = 2_000_000


@dataclass
class IndexStats:
    """What a refresh did, counted in entries (a row is one entry per chunk)."""

    added: int = 0
    updated: int = 0
    deleted: int = 0
    unchanged: int = 0
    seconds: float = 0.0
    embedded: int = 0  #: texts sent to the embedding model
    rows: int = 0  #: source rows read
    sidecar: str = ""


@dataclass
class VerifyReport:
    """How far a sidecar is from its source (``--verify``), counted in entries."""

    stale: int = 0  #: indexed, but the row's text changed since
    missing: int = 0  #: in the source, not in the index
    orphaned: int = 0  #: in the index, row (or table config) gone, or vector missing
    model_ok: bool = True  #: built with the configured embedding model
    indexed_model: str | None = None
    configured_model: str | None = None
    entries: int = 0
    details: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.model_ok and not (self.stale or self.missing or self.orphaned)


@dataclass
class TablePlan:
    """A table as it will be read: which columns, which primary key."""

    name: str
    config: TableConfig
    pk_columns: list[str]  # empty: rowid table
    text_columns: list[str]
    title_column: str | None


# ---------------------------------------------------------------- source access


def open_source(path: str, *, immutable: bool = False) -> Any:
    """Open a database read-only (``mode=ro``; ``immutable=1`` for -i databases).

    Through the SQLite library Datasette itself uses (pysqlite3 when it is
    installed): two copies of SQLite in one process do not see each other's
    POSIX locks, and closing a file in one drops the other's locks on it, which
    could let a write by Datasette (an extraction inserting rows) collide with
    this read.
    """
    if not os.path.exists(path):
        raise ConfigError(f"Database file {path} does not exist.")
    flag = "immutable=1" if immutable else "mode=ro"
    conn = source_sqlite.connect(
        f"file:{quote(os.path.abspath(path))}?{flag}", uri=True, check_same_thread=False
    )
    try:
        conn.execute("select count(*) from sqlite_master").fetchone()
    except source_sqlite.DatabaseError as e:
        conn.close()
        if not immutable:  # e.g. WAL database in a read-only folder
            return open_source(path, immutable=True)
        raise ConfigError(f"Cannot read database {path}: {e}") from None
    return conn


def plan_table(
    conn: sqlite3.Connection, db_name: str, table: str, config: TableConfig
) -> TablePlan:
    """Check that a configured table and its columns exist; ``ConfigError`` if not."""
    where = f"{SECTION}: databases: {db_name}: tables: {table}"
    kinds = dict(
        conn.execute("select name, type from sqlite_master where type in ('table', 'view')")
    )
    if table not in kinds:
        available = ", ".join(
            sorted(n for n in kinds if not n.startswith("sqlite_")) or ["none"]
        )
        raise ConfigError(
            f"Table {table!r} configured under {where} does not exist in database "
            f"{db_name!r}. Available tables: {available}."
        )
    if kinds[table] == "view":
        raise ConfigError(
            f"{table!r} in database {db_name!r} is a view; only tables can be indexed "
            f"(rows need a stable primary key). Fix {where}."
        )
    info = conn.execute(f"pragma table_info({quote_identifier(table)})").fetchall()
    all_columns = [r[1] for r in info]
    types = {r[1]: (r[2] or "").upper() for r in info}
    pk_columns = [r[1] for r in sorted((r for r in info if r[5]), key=lambda r: r[5])]
    wanted = config.text_columns()
    if wanted is None:  # every text column
        wanted = [
            c
            for c in all_columns
            if c not in pk_columns
            and (types[c] == "" or any(t in types[c] for t in ("TEXT", "CHAR", "CLOB")))
        ]
        if not wanted:
            raise ConfigError(
                f"Table {table!r} in database {db_name!r} has no text columns: "
                f"set columns: or template: under {where}. Columns: {', '.join(all_columns)}."
            )
    check = list(wanted) + ([config.title_column] if config.title_column else [])
    unknown = [c for c in check if c not in all_columns]
    if unknown:
        raise ConfigError(
            f"Column {unknown[0]!r} configured under {where} does not exist in table "
            f"{table!r} of database {db_name!r}. Available columns: {', '.join(all_columns)}."
        )
    return TablePlan(table, config, pk_columns, list(wanted), config.title_column)


def _value_columns(plan: TablePlan) -> list[str]:
    """The columns read besides the key: the text columns, then the title column."""
    value_cols = list(plan.text_columns)
    if plan.title_column and plan.title_column not in value_cols:
        value_cols.append(plan.title_column)
    return value_cols


def _row_reader(plan: TablePlan) -> tuple[str, int, Callable[[tuple], tuple[str, str, str | None]]]:
    """The select list for a planned table, its key's width, and the function turning
    one selected row into ``(pk_json, text, title)``."""
    key_sql = (
        ", ".join(quote_identifier(c) for c in plan.pk_columns) if plan.pk_columns else "rowid"
    )
    nkey = len(plan.pk_columns) or 1
    value_cols = _value_columns(plan)
    title_at = value_cols.index(plan.title_column) if plan.title_column else None
    dumps = json.dumps
    build = make_builder(plan.config, value_cols)

    def convert(row: tuple) -> tuple[str, str, str | None]:
        if nkey == 1 and type(row[0]) is int:
            pk = f"[{row[0]}]"  # same text as json.dumps([n]), much faster
        else:
            pk = dumps(list(row[:nkey]))
        values = row[nkey:]
        title = values[title_at] if title_at is not None else None
        return pk, build(values), (None if title is None else str(title))

    select = "{}, {}".format(key_sql, ", ".join(quote_identifier(c) for c in value_cols))
    return select, nkey, convert


def _iter_source_rows(conn: sqlite3.Connection, plan: TablePlan) -> Iterable[tuple[str, str, str | None]]:
    """``(pk_json, text, title)`` for every row of a planned table (one statement: read
    it to the end without awaiting in between)."""
    select, _, convert = _row_reader(plan)
    cursor = conn.execute("select {} from {}".format(select, quote_identifier(plan.name)))
    while True:
        rows = cursor.fetchmany(5000)
        if not rows:
            break
        for row in rows:
            yield convert(row)


def _source_pages(
    conn: sqlite3.Connection, plan: TablePlan, page: int = 1000
) -> Iterator[tuple[str, str, str | None]]:
    """Every row like ``_iter_source_rows``, but read a page at a time by key, each page
    a finished statement: between pages (while the rows are embedded) no read is open on
    the source, so nothing holds a lock that would stop Datasette writing to it."""
    _, _, convert = _row_reader(plan)
    table = quote_identifier(plan.name)
    if plan.pk_columns:
        keys = [quote_identifier(c) for c in plan.pk_columns]
    else:
        keys = ["rowid"]
    values = [quote_identifier(c) for c in _value_columns(plan)]
    try:  # a rowid table is paged by rowid, whatever its primary key
        conn.execute(f"select rowid from {table} limit 0").fetchall()
        by_rowid = True
    except Exception:  # noqa: BLE001 - WITHOUT ROWID: by its primary key
        by_rowid = False
    if by_rowid:
        order = "rowid"
        width = 1
        columns = ", ".join(["rowid"] + keys + values)
    else:
        order = ", ".join(keys)
        width = len(keys)
        columns = ", ".join(keys + values)
    marks = ", ".join("?" * width)
    after: tuple | None = None
    while True:
        if after is None:
            where = ""
        else:
            where = f" where ({order}) > ({marks})"
        rows = conn.execute(
            f"select {columns} from {table}{where} order by {order} limit {int(page)}", after or ()
        ).fetchall()
        if not rows:
            return
        for row in rows:
            yield convert(row[1:] if by_rowid else row)
        after = tuple(rows[-1][:width])
        if len(rows) < page:
            return


# ---------------------------------------------------------------- planning


@dataclass
class _Work:
    """What a refresh must do, without the texts: they are read again, a write batch at a
    time, by ``_items_to_embed`` (holding every new row's text made a first index of a
    large table cost memory in proportion to the table)."""

    new: int = 0  # chunks to embed and insert
    changed: int = 0  # chunks to embed again and update
    all_new: set[str] = field(default_factory=set)  # tables with no entries yet: every chunk is new
    new_keys: set[tuple[str, str, int]] = field(default_factory=set)  # (tbl, pk, chunk)
    changed_ids: dict[tuple[str, str, int], int] = field(default_factory=dict)  # -> entry id
    retitle: list[tuple[str | None, int]] = field(default_factory=list)  # (title, id)
    gone: list[int] = field(default_factory=list)  # entry ids to delete
    unchanged: int = 0
    rows: int = 0


def _pieces(plan: TablePlan, text: str) -> list[str]:
    chunk_chars = plan.config.chunk_chars
    return chunk_text(text, chunk_chars) if chunk_chars else [text]


def _plan_work(
    source: sqlite3.Connection,
    side: sqlite3.Connection,
    plans: list[TablePlan],
    all_tables: bool,
    configured: set[str],
) -> _Work:
    work = _Work()
    for plan in plans:
        existing: dict[tuple[str, int], tuple[int, str, str | None]] = {
            (pk, chunk): (id_, h, title)
            for id_, pk, chunk, h, title in side.execute(
                "select id, pk, chunk, hash, title from entries where tbl = ?", (plan.name,)
            )
        }
        fresh = not existing  # (existing empties as rows are matched: decide once)
        if fresh:
            work.all_new.add(plan.name)
        for pk, text, title in _iter_source_rows(source, plan):
            work.rows += 1
            if not text:
                continue
            pieces = _pieces(plan, text)
            if fresh:
                work.new += len(pieces)
                continue
            for number, piece in enumerate(pieces):
                h = text_hash(piece)
                old = existing.pop((pk, number), None)
                if old is None:
                    work.new += 1
                    work.new_keys.add((plan.name, pk, number))
                elif old[1] != h:
                    work.changed += 1
                    work.changed_ids[(plan.name, pk, number)] = old[0]
                else:
                    work.unchanged += 1
                    if old[2] != title:
                        work.retitle.append((title, old[0]))
        work.gone.extend(v[0] for v in existing.values())
    if all_tables:
        # Tables no longer configured lose their entries on a full refresh.
        for (id_,) in side.execute(
            "select id from entries where tbl not in ({})".format(",".join("?" * len(configured))),
            sorted(configured),
        ) if configured else side.execute("select id from entries"):
            work.gone.append(id_)
    return work


def _items_to_embed(
    source: sqlite3.Connection, plans: list[TablePlan], work: _Work
) -> Iterator[tuple[str, tuple]]:
    """The planned chunks with their texts, read again from the source in its order:
    ``("new", (tbl, pk, chunk, text, hash, title))`` or ``("changed", (id, text, hash,
    title))``. A row that changed since planning is embedded as it is now; one added
    since is left for the next refresh (unless its table was empty: all of it is new)."""
    for plan in plans:
        fresh = plan.name in work.all_new
        if not fresh and not work.new_keys and not work.changed_ids:
            continue
        for pk, text, title in _source_pages(source, plan):
            if not text:
                continue
            for number, piece in enumerate(_pieces(plan, text)):
                key = (plan.name, pk, number)
                if fresh or key in work.new_keys:
                    yield "new", (plan.name, pk, number, piece, text_hash(piece), title)
                elif key in work.changed_ids:
                    yield "changed", (work.changed_ids[key], piece, text_hash(piece), title)


def _take(items: Iterator, n: int) -> list:
    return list(itertools.islice(items, n))


# ---------------------------------------------------------------- writing


def _encoder(side: sqlite3.Connection) -> TermEncoder:
    """The sidecar's term ids, loaded once per refresh; new terms get new ids."""
    return TermEncoder(dict(side.execute("select term, id from terms")))


def _centre(side: sqlite3.Connection, vectors: np.ndarray) -> tuple[np.ndarray | None, bool]:
    """The sidecar's centre, and whether it is chosen now (first vectors of an
    index built since centres exist: the mean of this batch)."""
    dims = vectors.shape[1] if vectors.ndim == 2 else 0
    row = side.execute("select value from meta where key = 'centre'").fetchone()
    if row is not None:
        return decode_centre(row[0], dims), False
    if side.execute("select 1 from vectors limit 1").fetchone() is not None:
        return None, False  # vectors written before centres: stay uncentred
    centre = choose_centre(vectors)
    return centre, centre is not None


def _write_batch(
    side: sqlite3.Connection,
    next_id: int,
    items: Sequence[tuple[str, tuple]],
    vectors: np.ndarray,
    encoder: TermEncoder | None = None,
) -> int:
    """Insert new and update changed entries with their vectors in one transaction.

    ``items`` are ``("new", (tbl, pk, chunk, text, hash, title))`` or
    ``("changed", (id, text, hash, title))``, aligned with ``vectors``.
    """
    encoder = encoder or _encoder(side)
    vectors = np.asarray(vectors, dtype=np.float32)
    inserts, vec_ids, updates, entry_ids, texts = [], [], [], [], []
    for kind, item in items:
        if kind == "new":
            entry_id = next_id
            next_id += 1
            inserts.append((entry_id, *item))
            text = item[3]
        else:
            entry_id, text, h, title = item
            updates.append((text, h, title, entry_id))
        vec_ids.append(entry_id)
        entry_ids.append(entry_id)
        texts.append(text)
    post_rows = [(i, *p) for i, p in zip(entry_ids, encoder.encode_many(texts))]
    side.execute("begin immediate")
    try:
        # The centre is read (or chosen) inside the write transaction, so two
        # writers can never quantise against different centres.
        centre, new_centre = _centre(side, vectors)
        if new_centre:
            side.execute("insert or replace into meta (key, value) values ('centre', ?)",
                         (encode_centre(centre),))
        shifted = vectors - centre if centre is not None else vectors
        q8, scale = quantize(shifted)
        dims = q8.shape[1] if q8.ndim == 2 else 0
        codes = q8.tobytes()  # slicing one bytes object beats a numpy index per row
        half = (dims + 1) // 2
        rest = residual_codes(shifted, q8, scale).tobytes() if dims else b""
        scales = scale.tolist()
        vec_rows = [
            (e, codes[j * dims : (j + 1) * dims], scales[j], rest[j * half : (j + 1) * half])
            for j, e in enumerate(vec_ids)
        ]
        if inserts:
            side.executemany(
                "insert into entries (id, tbl, pk, chunk, text, hash, title) "
                "values (?, ?, ?, ?, ?, ?, ?)",
                inserts,
            )
            # Triggers keep entries_fts in step on update and delete; inserts
            # are added here in bulk, which is three times faster.
            side.executemany(
                "insert into entries_fts (rowid, text) values (?, ?)",
                [(row[0], row[4]) for row in inserts],
            )
        if updates:
            side.executemany(
                "update entries set text = ?, hash = ?, title = ? where id = ?", updates
            )
        side.executemany(
            "insert or replace into vectors (entry_id, q8, scale, r4) values (?, ?, ?, ?)", vec_rows
        )
        if encoder.pending:
            side.executemany("insert into terms (id, term) values (?, ?)", encoder.pending)
        side.executemany(
            "insert or replace into postings (entry_id, tids, tfs, length) values (?, ?, ?, ?)",
            post_rows,
        )
        bump_generation(side)
        side.execute("commit")
    except BaseException:
        side.execute("rollback")
        encoder.rollback()
        raise
    encoder.committed()
    return next_id


def _delete_and_retitle(side: sqlite3.Connection, gone: list[int], retitle: list[tuple]) -> None:
    if not gone and not retitle:
        return
    side.execute("begin immediate")
    try:
        for start in range(0, len(gone), 500):
            part = gone[start : start + 500]
            marks = ",".join("?" * len(part))
            side.execute(f"delete from vectors where entry_id in ({marks})", part)
            side.execute(f"delete from postings where entry_id in ({marks})", part)
            side.execute(f"delete from entries where id in ({marks})", part)
        if retitle:
            side.executemany("update entries set title = ? where id = ?", retitle)
        bump_generation(side)
        side.execute("commit")
    except BaseException:
        side.execute("rollback")
        raise


def _clear(side: sqlite3.Connection) -> None:
    side.execute("begin immediate")
    try:
        side.execute("delete from vectors")
        side.execute("delete from entries")
        side.execute("delete from postings")
        side.execute("delete from terms")
        side.execute("delete from meta where key in ('embedding_model', 'dimensions')")
        bump_generation(side)
        side.execute("commit")
    except BaseException:
        side.execute("rollback")
        raise


# ---------------------------------------------------------------- public API


def _resolve_embed(embedder: Any, embed: EmbedFn | None) -> EmbedFn:
    if embed is not None:
        return embed
    if embedder is None:
        raise ConfigError("No embedding model: configure one or pass embed=")
    return embedder.embed


async def _call_embed(embed: EmbedFn, texts: list[str]) -> np.ndarray:
    result = embed(texts, kind="document")
    if inspect.isawaitable(result):
        result = await result
    vectors = np.asarray(result, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[0] != len(texts):
        raise ConfigError(
            f"The embedding model returned shape {vectors.shape} for {len(texts)} texts."
        )
    return vectors


def _selected_tables(config: RagConfig, db_name: str, tables: Sequence[str] | None) -> list[str]:
    db_conf = config.database(db_name)
    if not db_conf.tables:
        raise ConfigError(
            f"No tables configured for database {db_name!r}: add them under "
            f"{SECTION}: databases: {db_name}: tables:"
        )
    if tables is None:
        return list(db_conf.tables)
    unknown = [t for t in tables if t not in db_conf.tables]
    if unknown:
        raise ConfigError(
            f"Table {unknown[0]!r} is not configured for database {db_name!r} "
            f"(configured: {', '.join(db_conf.tables)})."
        )
    return list(tables)


def source_mtime(path: str | None) -> float | None:
    """When a database file (or its WAL) was last written, or None."""
    if not path:
        return None
    times = []
    for suffix in ("", "-wal"):
        try:
            times.append(os.stat(path + suffix).st_mtime)
        except OSError:
            pass
    return max(times) if times else None


def _record_source_mtime(side: sqlite3.Connection, seen: float | None) -> None:
    """Note how the source looked when this refresh began (the index page
    compares it with the file later to say the database has changed since)."""
    if seen is None:
        return
    side.execute(
        "insert into meta (key, value) values ('source_mtime', ?) "
        "on conflict(key) do update set value = excluded.value",
        (repr(seen),),
    )


def _open_source_arg(source: Any, immutable: bool) -> tuple[Any, bool]:
    if not isinstance(source, (str, os.PathLike)):  # a connection, of either library
        return source, False
    return open_source(os.fspath(source), immutable=immutable), True


def _model_id(embedder: Any, model_id: str | None) -> str:
    mid = model_id or getattr(embedder, "model_id", None)
    if not mid:
        raise ConfigError("The embedding model has no model_id; pass model_id=")
    return mid


async def refresh_index(
    source: str | sqlite3.Connection,
    db_name: str,
    rag_config: RagConfig | dict | None,
    embedder: Any,
    *,
    embed: EmbedFn | None = None,
    model_id: str | None = None,
    sidecar: str | None = None,
    tables: Sequence[str] | None = None,
    progress: ProgressFn | None = None,
    rebuild: bool = False,
    immutable: bool = False,
    batch_size: int | None = None,
) -> IndexStats:
    """Bring the sidecar of ``db_name`` up to date with its source database.

    ``source`` is the database path (opened read-only) or an open connection
    (only read). ``embedder`` is the ``EmbeddingModel`` (its ``model_id``,
    ``dimensions`` and ``batch_size`` are used); ``embed(texts, kind=)`` may be
    given to route calls elsewhere, e.g. ``functools.partial(gw.embed,
    purpose="embed", actor=actor)`` so every call is logged. Only new or
    changed chunks are embedded. ``progress(done, total)`` is called after each
    embedded batch (total = texts to embed). ``rebuild`` starts from empty,
    which is also how to switch embedding models.
    """
    started = time.perf_counter()
    config = parse_rag_config(rag_config)
    selected = _selected_tables(config, db_name, tables)
    mid = _model_id(embedder, model_id)
    embed_fn = _resolve_embed(embedder, embed)
    size = int(batch_size or getattr(embedder, "batch_size", 0) or 64)
    dims = int(getattr(embedder, "dimensions", 0) or 0)

    src, owned = _open_source_arg(source, immutable)
    src_path = os.fspath(source) if isinstance(source, (str, os.PathLike)) else None
    seen = source_mtime(src_path)
    path = sidecar or sidecar_path(src_path, db_name, config)
    # A caller's own connection may be bound to its thread; ours are not.
    run = asyncio.to_thread if owned else _run_inline
    side = None
    try:
        plans = await run(
            lambda: [plan_table(src, db_name, t, config.databases[db_name].tables[t]) for t in selected]
        )
        side = await asyncio.to_thread(open_sidecar, path, create=True)
        if rebuild:
            await asyncio.to_thread(_clear, side)
        else:
            check_model(side, path, mid, dims or None)
        work = await run(
            _plan_work,
            src,
            side,
            plans,
            tables is None,
            set(config.databases[db_name].tables),
        )
        stats = IndexStats(
            added=work.new,
            updated=work.changed,
            deleted=len(work.gone),
            unchanged=work.unchanged,
            rows=work.rows,
            sidecar=path,
        )
        total = work.new + work.changed
        if progress:
            progress(0, total)
        meta_written = "embedding_model" in read_meta(side)
        next_id = (side.execute("select coalesce(max(id), 0) from entries").fetchone()[0]) + 1
        encoder = await asyncio.to_thread(_encoder, side)
        done = 0
        pending_items: list[tuple[str, tuple]] = []
        pending_vecs: list[np.ndarray] = []
        pending_chars = 0
        items = _items_to_embed(src, plans, work) if total else iter(())
        batch = await run(_take, items, size)
        while batch:
            texts = [item[3] if kind == "new" else item[1] for kind, item in batch]
            vectors = await _call_embed(embed_fn, texts)
            if not meta_written:
                await asyncio.to_thread(_init_meta, side, mid, vectors.shape[1])
                meta_written = True
            elif dims and vectors.shape[1] != dims:
                raise ConfigError(
                    f"Embedding model {mid!r} returned {vectors.shape[1]} dimensions, "
                    f"expected {dims}."
                )
            pending_items.extend(batch)
            pending_vecs.append(vectors)
            pending_chars += sum(map(len, texts))
            done += len(batch)
            batch = await run(_take, items, size)  # read ahead: is this the last?
            if not batch:
                total = done  # rows deleted (or added to an empty table) since planning
            if not batch or len(pending_items) >= WRITE_BATCH or pending_chars >= WRITE_CHARS:
                next_id = await asyncio.to_thread(
                    _write_batch, side, next_id, pending_items, np.concatenate(pending_vecs), encoder
                )
                pending_items, pending_vecs, pending_chars = [], [], 0
            if progress:
                progress(done, max(total, done))
        if not meta_written and dims:
            await asyncio.to_thread(_init_meta, side, mid, dims)
        await asyncio.to_thread(_delete_and_retitle, side, work.gone, work.retitle)
        if tables is None:  # a refresh of every configured table
            await asyncio.to_thread(_in_transaction, side, _record_source_mtime, seen)
        stats.embedded = done
        stats.seconds = time.perf_counter() - started
        return stats
    finally:
        if side is not None:
            side.close()
        if owned:
            src.close()


def _in_transaction(side: sqlite3.Connection, fn, *args) -> None:
    side.execute("begin immediate")
    try:
        fn(side, *args)
        side.execute("commit")
    except BaseException:
        side.execute("rollback")
        raise


def _init_meta(side: sqlite3.Connection, model_id: str, dims: int) -> None:
    _in_transaction(side, init_meta, model_id, dims)


async def _run_inline(fn, *args):
    return fn(*args)


async def verify(
    source: str | sqlite3.Connection,
    db_name: str,
    rag_config: RagConfig | dict | None,
    embedder: Any = None,
    *,
    model_id: str | None = None,
    sidecar: str | None = None,
    immutable: bool = False,
    tables: Sequence[str] | None = None,
) -> VerifyReport:
    """Compare the sidecar with its source without changing either (only ``tables``,
    when given: their counts alone, for a reader who may not view the others)."""
    config = parse_rag_config(rag_config)
    selected = _selected_tables(config, db_name, tables)
    src, owned = _open_source_arg(source, immutable)
    src_path = os.fspath(source) if isinstance(source, (str, os.PathLike)) else None
    path = sidecar or sidecar_path(src_path, db_name, config)
    side = open_sidecar(path, readonly=True)  # change nothing, not even an upgrade
    try:
        plans = [plan_table(src, db_name, t, config.databases[db_name].tables[t]) for t in selected]
        work = _plan_work(src, side, plans, tables is None, set(config.databases[db_name].tables))
        meta = read_meta(side)
        configured = model_id or getattr(embedder, "model_id", None) or config.model_for(db_name)
        only = "" if tables is None else " and tbl in ({})".format(",".join("?" * len(selected)))
        args = [] if tables is None else selected
        no_vector = side.execute(
            "select count(*) from entries where id not in (select entry_id from vectors)" + only, args
        ).fetchone()[0]
        report = VerifyReport(
            stale=work.changed,
            missing=work.new,
            orphaned=len(work.gone) + no_vector,
            indexed_model=meta.get("embedding_model"),
            configured_model=configured,
            entries=side.execute("select count(*) from entries where 1" + only, args).fetchone()[0],
        )
        report.model_ok = configured is None or meta.get("embedding_model") in (None, configured)
        if not report.model_ok:
            report.details.append(
                f"index built with {meta.get('embedding_model')!r}, configured {configured!r}"
            )
        return report
    finally:
        side.close()
        if owned:
            src.close()
