"""Permission-filtered retrieval: which tables an actor may search, and the hits.

Every search starts from the configured tables of a database, keeps the ones
that exist and that the actor may view (Datasette's own view permissions, on
both lines), and passes exactly that list into the index search, so a row of
another table can never come back. Hits are checked against the list again
before they leave this module.
"""

from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import asdict, dataclass, field
from typing import Any

from datasette.utils import tilde_decode, tilde_encode

from datasette_llm_core import permissions
from datasette_llm_core.errors import ConfigError, LLMSuiteError
from datasette_llm_core.gateway import llm_gateway

from .fusion import fusion_for
from .ragconfig import RagConfig, rag_config_for

#: Longest question accepted, in characters.
DEFAULT_MAX_QUESTION_CHARS = 2000
#: Hits returned by default, and the most a client may ask for.
DEFAULT_K = 8
MAX_K = 50
#: Cosine similarity a hit needs to count as relevant (see ``is_relevant``);
#: calibrated for the local MiniLM model in benchmarks/bench_rag_relevance.py.
DEFAULT_MIN_SCORE = 0.45


class RetrievalError(LLMSuiteError):
    """Search cannot run; ``kind`` says why and the message what to do."""

    def __init__(self, message: str, kind: str, status: int = 400):
        super().__init__(message)
        self.kind = kind
        self.status = status


@dataclass
class RowHit:
    """One retrieved row, numbered for citation, with a link to its row page."""

    n: int
    database: str
    table: str
    pk: str
    pk_values: list
    title: str | None
    text: str
    url: str
    score: float
    vector_score: float | None
    vector_rank: int | None
    fts_rank: int | None
    chunk: int = 0
    relevant: bool = True
    #: The row changed since the index was refreshed: ``text`` and ``title``
    #: are its current values, the ranking is from the indexed text.
    stale: bool = False
    #: the reranker's calibrated score (0-1) when the hit was reranked; it
    #: orders the list and is the number the reader sees
    rerank_score: float | None = None
    #: the passage of ``text`` that matched the question (shown as the snippet)
    snippet: str | None = None

    def as_json(self) -> dict:
        return asdict(self)


@dataclass
class Retrieval:
    database: str
    question: str
    tables: list[str]
    hits: list[RowHit] = field(default_factory=list)

    @property
    def relevant(self) -> list[RowHit]:
        return [h for h in self.hits if h.relevant]


# ------------------------------------------------------------------ settings
def rag_settings(datasette) -> RagConfig:
    return rag_config_for(datasette)


def extra_setting(config: RagConfig, name: str, default: Any) -> Any:
    """A web-side setting from the top level of the ``rag`` section."""
    value = (config.model_extra or {}).get(name)
    return default if value is None else value


def max_question_chars(config: RagConfig) -> int:
    return int(extra_setting(config, "max_question_chars", DEFAULT_MAX_QUESTION_CHARS))


def min_score(config: RagConfig) -> float:
    return float(extra_setting(config, "min_score", DEFAULT_MIN_SCORE))


def clean_question(question: str | None, config: RagConfig) -> str:
    """The stripped question, or ``RetrievalError`` if empty or too long."""
    question = (question or "").strip()
    if not question:
        raise RetrievalError("Type a question or search words first.", "empty_question")
    limit = max_question_chars(config)
    if len(question) > limit:
        raise RetrievalError(
            f"That question is {len(question):,} characters long; the limit is "
            f"{limit:,}. Shorten it (the limit is rag: max_question_chars).",
            "question_too_long",
        )
    return question


def configured_databases(datasette, config: RagConfig | None = None) -> list[str]:
    """Databases with a ``rag`` config that are attached to this instance."""
    config = config or rag_settings(datasette)
    return [name for name in config.databases if name in datasette.databases]


# ------------------------------------------------------------------ tables
async def existing_tables(datasette, database: str, config: RagConfig) -> list[str]:
    """Configured tables that exist in the database, in config order."""
    if database not in datasette.databases:
        raise RetrievalError(f"Database {database!r} not found.", "not_found", 404)
    try:
        db_config = config.database(database)
    except ConfigError as e:
        raise RetrievalError(str(e), "not_configured", 404) from None
    present = set(await datasette.databases[database].table_names())
    return [t for t in db_config.tables if t in present]


async def searchable_tables(
    datasette, actor, database: str, config: RagConfig, requested: list[str] | None = None
) -> list[str]:
    """Configured, existing tables of ``database`` that ``actor`` may view.

    ``requested`` narrows the list (a table filter from the user); names not
    in the allowed list are silently ignored, so the filter can never widen.
    """
    tables = await existing_tables(datasette, database, config)
    tables = await permissions.viewable_tables(datasette, actor, database, tables)
    if requested:
        wanted = set(requested)
        tables = [t for t in tables if t in wanted]
    return tables


# ------------------------------------------------------------------ index
def sidecar_for(datasette, database: str, config: RagConfig) -> str:
    from .indexer import sidecar_path

    db = datasette.databases[database]
    return sidecar_path(db.path, database, config)


def index_hint(database: str) -> str:
    return (
        f"Build it with `datasette llm-rag index <path-to-{database}.db>` or, with the "
        f"llm-index permission, from the page /-/llm-rag/index/{database}."
    )


def open_index(datasette, database: str, config: RagConfig):
    """The shared index of ``database``'s sidecar, or ``RetrievalError`` if there is none."""
    from . import store

    try:
        path = sidecar_for(datasette, database, config)
    except ConfigError as e:
        raise RetrievalError(str(e), "not_configured", 500) from None
    if not os.path.exists(path):
        raise RetrievalError(
            f"There is no search index for {database!r} yet. {index_hint(database)}",
            "no_index",
            409,
        )
    return store.get_index(path, full_text=config.full_text)


def index_errors(database: str, fn, *args, **kwargs):
    """Run an index operation, turning sidecar problems into messages that say what to do."""
    from .sidecar import IndexMissingError, ModelMismatchError, SidecarError

    path = getattr(getattr(fn, "__self__", None), "path", None)

    def said(e: Exception) -> str:
        # Anyone may read these messages: name the index file, not where it lives.
        text = str(e)
        return text.replace(path, os.path.basename(path)) if path else text

    try:
        return fn(*args, **kwargs)
    except ModelMismatchError as e:
        raise RetrievalError(
            f"{said(e)} From the web: the Rebuild option on /-/llm-rag/index/{database}.",
            "model_mismatch",
            409,
        ) from None
    except IndexMissingError:
        raise RetrievalError(
            f"There is no search index for {database!r} yet. {index_hint(database)}",
            "no_index",
            409,
        ) from None
    except (SidecarError, sqlite3.DatabaseError) as e:
        raise RetrievalError(
            f"The search index for {database!r} cannot be read: {said(e)} {index_hint(database)}",
            "corrupt_index",
            500,
        ) from None


async def embed_query(datasette, actor, text: str, model_id: str):
    gw = await llm_gateway(datasette)
    # purpose "search": counted per day in llm_call_totals, not one call-log row per search
    vectors = await gw.embed([text], kind="query", purpose="search", actor=actor, model_id=model_id)
    return vectors[0]


async def embedding_model_id(datasette, database: str, config: RagConfig, index=None) -> str:
    """The configured embedding model's id; when none is configured, the model
    the index was built with if still registered, else the gateway's default
    (see modelchoice.py: an index built with the previous default keeps working)."""
    from .modelchoice import gateway_choice

    gw = await llm_gateway(datasette)
    recorded = None
    if index is not None:
        # a bound method of the index, so that errors name its file, not its folder
        recorded = index_errors(database, index._current).meta.get("embedding_model")
    return gateway_choice(gw, config, database, None, recorded=recorded or "")


# ------------------------------------------------------------------ rows
def pk_values(pk: Any) -> list:
    """A hit's primary key as a list of values (the index stores it as JSON)."""
    if isinstance(pk, (list, tuple)):
        return list(pk)
    if isinstance(pk, str):
        try:
            value = json.loads(pk)
        except ValueError:
            return [pk]
        return list(value) if isinstance(value, list) else [value]
    return [pk]


def pk_path(values: list) -> str:
    """The tilde-encoded row path Datasette uses in row URLs (``a,b``)."""
    return ",".join(tilde_encode(str(v)) for v in values)


def pk_from_path(path: str) -> list[str]:
    return [tilde_decode(part) for part in path.split(",")]


def pk_label(values: list) -> str:
    return ", ".join(str(v) for v in values)


#: A row that also matched full-text search needs this share of ``min_score``.
FTS_FACTOR = 0.75


def is_relevant(hit, threshold: float, *, fts_factor: float = FTS_FACTOR) -> bool:
    """Relevant when the vector similarity clears ``threshold``, or the row also
    matched the full-text search and clears ``fts_factor`` of it (calibrated in
    benchmarks/bench_rag_relevance.py)."""
    score = hit.vector_score
    if score is None:
        return hit.fts_rank is not None and threshold <= 0
    if score >= threshold:
        return True
    return hit.fts_rank is not None and score >= threshold * fts_factor


def _to_row_hits(datasette, database, hits, allowed: set[str], threshold: float) -> list[RowHit]:
    out: list[RowHit] = []
    seen: set[tuple[str, str]] = set()
    for hit in hits:
        if hit.table not in allowed:  # never trust the filter alone
            continue
        key = (hit.table, json.dumps(pk_values(hit.pk), default=str))
        if key in seen:  # several chunks of one row: keep the best
            continue
        seen.add(key)
        values = pk_values(hit.pk)
        out.append(
            RowHit(
                n=len(out) + 1,
                database=database,
                table=hit.table,
                pk=pk_label(values),
                pk_values=values,
                title=hit.title,
                text=hit.text,
                url=datasette.urls.row(database, hit.table, pk_path(values)),
                score=float(hit.score),
                vector_score=None if hit.vector_score is None else float(hit.vector_score),
                vector_rank=hit.vector_rank,
                fts_rank=hit.fts_rank,
                chunk=getattr(hit, "chunk", 0) or 0,
                relevant=is_relevant(hit, threshold),
            )
        )
    return out


async def retrieve(
    datasette,
    actor,
    database: str,
    question: str,
    *,
    tables: list[str] | None = None,
    k: int = DEFAULT_K,
    config: RagConfig | None = None,
    rerank: bool | None = None,
) -> Retrieval:
    """Hybrid search over the tables ``actor`` may view (optionally narrowed).

    ``rerank`` (default: the database's ``rerank: answers`` setting) reorders
    the top candidates with the cross-encoder; see ``rerank_rows``.
    """
    config = config or rag_settings(datasette)
    question = clean_question(question, config)
    k = max(1, min(int(k), MAX_K))
    allowed = await searchable_tables(datasette, actor, database, config, tables)
    result = Retrieval(database=database, question=question, tables=allowed)
    if not allowed:
        return result
    settings = config.rerank_for(database)
    use_rerank = settings.answers if rerank is None else bool(rerank)
    index = open_index(datasette, database, config)
    model_id = await embedding_model_id(datasette, database, config, index)
    index_errors(database, index.check_model, model_id)
    qvec = await embed_query(datasette, actor, question, model_id)
    wanted = max(k * 2, settings.depth) if use_rerank else k * 2
    rrf_k, weights = fusion_for(model_id, config.rrf_k, config.fts_weight)
    hits = index_errors(
        database, index.search_hybrid, question, qvec, wanted, tables=allowed, rrf_k=rrf_k,
        weights=weights,
    )
    rows = _to_row_hits(datasette, database, hits, set(allowed), min_score(config))
    rows = await check_live(datasette, database, config, rows)
    if use_rerank:
        rows = (await rerank_rows(question, rows, settings, model_id))[:k]
    else:
        rows = rows[:k]
        for row in rows:
            row.snippet = _passage(question, row.text)
        # Rows relevant enough come first, weaker matches after them, each
        # group in fused order; numbers follow the order shown.
        rows.sort(key=lambda r: not r.relevant)
    for n, row in enumerate(rows, 1):
        row.n = n
    result.hits = rows
    return result


def _passage(question: str, text: str) -> str:
    from .rerank import best_passage

    return best_passage(question, text)


async def rerank_rows(question: str, rows: list[RowHit], settings, model_id: str | None = None) -> list[RowHit]:
    """``rows`` with the first ``settings.depth`` reordered by the cross-encoder:
    its calibrated score becomes ``rerank_score`` and decides ``relevant``
    (``min_relevance``); rows past the depth follow, unscored and weaker."""
    import asyncio

    from datasette_llm_core.embeddings.cross_encoder import CrossEncoder

    from .rerank import RerankSettings, rerank, table_weights_for, vector_weight_for

    encoder = CrossEncoder()
    rsettings = RerankSettings(depth=settings.depth, max_tokens=settings.max_tokens,
                               min_relevance=settings.min_relevance,
                               vector_weight=vector_weight_for(model_id, settings.vector_weight),
                               table_weights=table_weights_for(model_id, settings.table_weights))

    def run():
        return rerank(question, rows,
                      lambda q, p: encoder.score(q, p, max_tokens=rsettings.max_tokens),
                      rsettings)

    ranked = await asyncio.to_thread(run)
    out = []
    for row, score, passage in ranked:
        row.rerank_score = score
        row.snippet = passage
        row.relevant = score is not None and score >= rsettings.min_relevance
        out.append(row)
    return out


async def similar_rows(
    datasette, actor, database: str, table: str, pk: list, *, k: int = DEFAULT_K,
    config: RagConfig | None = None,
) -> tuple[list[RowHit], list[str]]:
    """Rows close to one row, from tables ``actor`` may view (the row's table included)."""
    config = config or rag_settings(datasette)
    allowed = await searchable_tables(datasette, actor, database, config)
    if table not in allowed:
        raise RetrievalError(
            f"Table {table!r} is not searchable here (not configured for the index, "
            "or you may not view it).",
            "not_found",
            404,
        )
    index = open_index(datasette, database, config)
    model_id = await embedding_model_id(datasette, database, config, index)
    index_errors(database, index.check_model, model_id)
    if not await _row_is_live(datasette, database, config, table, pk):
        raise RetrievalError(f"There is no such row in {table!r} (any more).", "not_found", 404)
    hits = index_errors(database, index.similar, table, pk, k * 2, tables=allowed)
    rows = _to_row_hits(datasette, database, hits, set(allowed), threshold=0.0)
    rows = (await check_live(datasette, database, config, rows))[:k]
    for n, row in enumerate(rows, 1):
        row.n = n
    return rows, allowed


async def _row_is_live(datasette, database: str, config: RagConfig, table: str, pk: list) -> bool:
    from .livecheck import live_rows_fn

    tables = config.database(database).tables
    live = await datasette.databases[database].execute_fn(
        live_rows_fn(database, {table: tables[table]}, {table: [list(pk)]})
    )
    return bool(live)  # one key asked (from the URL, as text: SQLite's affinity matches it)


async def check_live(datasette, database: str, config: RagConfig, rows: list[RowHit]) -> list[RowHit]:
    """Drop hits whose row is gone; show changed rows with their current text
    and title, marked ``stale`` (see livecheck.py)."""
    from .livecheck import live_rows_fn, pk_key, reconcile

    if not rows:
        return rows
    tables = config.database(database).tables
    wanted: dict[str, list[list]] = {}
    for row in rows:
        wanted.setdefault(row.table, []).append(row.pk_values)
    live = await datasette.databases[database].execute_fn(
        live_rows_fn(database, {t: tables[t] for t in wanted if t in tables}, wanted)
    )
    out = []
    for row in rows:
        shown = reconcile(row.text, row.title, row.chunk, live.get((row.table, pk_key(row.pk_values))))
        if shown is None:
            continue
        row.text, row.title, row.stale = shown
        out.append(row)
    return out
