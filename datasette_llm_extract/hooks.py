"""Bodies of the extraction plugin's Datasette hooks (``__init__`` only forwards)."""

from __future__ import annotations

import re

from markupsafe import Markup, escape

from datasette_llm_core import permissions
from datasette_llm_core.config import PLUGIN_NAME
from datasette_llm_core.state import STATE_DB_NAME

from . import enrich_jobs, runs, tasks  # noqa: F401  (runs registers the state-table migrations)
from .views import PREFIX
from .writer import RUN_COLUMN

RUN_ID_RE = re.compile(r"^[0-9a-f]{16}$")


def startup(datasette):
    async def inner():
        from datasette_llm_core.state import state_db

        from . import kept, pageviews

        await tasks.recover_interrupted(datasette)
        await kept.purge_expired(await state_db(datasette))
        await pageviews.load_descriptions(datasette)

    return inner


def asgi_wrapper(datasette):
    """Resume enrichment jobs whose server died, from the loop that serves requests, at the
    ASGI lifespan startup (uvicorn sends it before the first request): ``datasette serve``
    runs the startup hooks on a loop of its own that stops before serving, so a job started
    there would never run. Awaited there, so the state database is attached before any
    request refreshes Datasette's schemas (an in-process client sends no lifespan event:
    reading a job takes it over instead, ``enrich_views.job_for``)."""

    def wrap(app):
        started = False

        async def wrapped(scope, receive, send):
            nonlocal started
            if scope.get("type") == "lifespan" and not started:
                started = True
                try:
                    await enrich_jobs.take_over_abandoned(datasette)
                except Exception:  # noqa: BLE001 - never stop the server from starting
                    import logging

                    logging.getLogger(__name__).exception("could not resume abandoned enrichment jobs")
            await app(scope, receive, send)

        return wrapped

    return wrap


def _encode(name: str) -> str:
    from datasette.utils import tilde_encode

    return tilde_encode(name)


def database_actions(datasette, actor, database):
    async def inner():
        db = datasette.databases.get(database)
        if database == STATE_DB_NAME or db is None or not db.is_mutable:
            return []
        if not await permissions.allowed(datasette, actor, "llm-extract", database):
            return []
        return [{
            "href": datasette.urls.path(f"{PREFIX}/new/{_encode(database)}"),
            "label": "Extract data into a new table",
            "description": "Define columns, paste text or add files, and review what an LLM extracts.",
        }]

    return inner


async def new_table_url(datasette, actor, database: str) -> str | None:
    """Where "Extract data into a new table" leads on ``database``'s page, if
    ``actor`` may do it there (writable, not the state or an internal
    database, llm-extract granted, Datasette's create-table allowed)."""
    from .service import can_write

    db = datasette.databases.get(database)
    if db is None or database == STATE_DB_NAME or database.startswith("_") or not db.is_mutable:
        return None
    if not await permissions.allowed(datasette, actor, "llm-extract", database):
        return None
    if not await can_write(datasette, actor, "create-table", database):
        return None
    return datasette.urls.path(f"{PREFIX}/new/{_encode(database)}")


def top_database(datasette, request, database):
    """Datasette 1.0: a visible button at the top of the database page (the
    actions menu alone hides extraction from someone who has no table yet)."""
    async def inner():
        url = await new_table_url(datasette, request.actor if request else None, database)
        if not url:
            return ""
        return await datasette.render_template(
            "llm_extract_db_button.html", {"new_url": url}, request=request)

    return inner


def extra_js_urls(datasette, request, database, view_name, has_top_hooks: bool, table=None):
    """Datasette 0.65 has no top_database hook: a small script adds the same
    button, its target passed in its own URL (and on table pages, the enrichment banner)."""
    if has_top_hooks or not database or request is None:
        return []
    if view_name == "table" and table and request.actor:
        async def banner():
            from .enrich_views import banner_url

            url = await banner_url(datasette, request.actor, database, table)
            if not url:
                return []
            from urllib.parse import urlencode

            script = datasette.urls.static_plugins(PLUGIN_NAME, "llm_enrich_banner.js")
            return [script + "?" + urlencode({"banner": url})]

        return banner
    if view_name != "database":
        return []

    async def inner():
        url = await new_table_url(datasette, request.actor, database)
        if not url:
            return []
        from urllib.parse import urlencode

        script = datasette.urls.static_plugins(PLUGIN_NAME, "llm_extract_db_button.js")
        return [script + "?" + urlencode({"new": url})]

    return inner


def extra_css_urls(datasette, view_name):
    if view_name == "database":
        return [datasette.urls.static_plugins(PLUGIN_NAME, "llm_newsroom.css")]
    return []


def table_actions(datasette, actor, database, table, request=None):
    async def inner():
        from .enrich_views import start_url

        db = datasette.databases.get(database)
        if database == STATE_DB_NAME or db is None or not db.is_mutable:
            return []
        if not await db.table_exists(table):  # views cannot take rows
            return []
        if not await permissions.allowed(datasette, actor, "llm-extract", database, table):
            return []
        query = request.query_string if request is not None else ""
        return [{
            "href": datasette.urls.path(f"{PREFIX}/into/{_encode(database)}/{_encode(table)}"),
            "label": "Extract data into this table",
            "description": "Fill this table's columns from text, images or PDFs, with review.",
        }, {
            "href": start_url(datasette, database, table, query),
            "label": "Extract into new columns",
            "description": "A model reads each selected row (this view's filter) and fills new columns, "
                           "with review, quotes and undo.",
        }]

    return inner


def top_table(datasette, request, database, table):
    """Datasette 1.0: progress of this table's enrichment jobs the viewer owns (0.65: a script
    fetches the same fragment, see ``extra_js_urls``)."""
    async def inner():
        from .enrich_views import banner_html

        return await banner_html(datasette, request.actor if request else None, database, table, request)

    return inner


def menu_links(datasette, actor):
    async def inner():
        from .views import may_extract_somewhere

        if not actor or not await may_extract_somewhere(datasette, actor):
            return []
        return [{"href": datasette.urls.path(PREFIX), "label": "LLM extraction runs"}]

    return inner


_PKS: dict = {}  # (database, table) -> (monotonic time, primary keys): one lookup per page, not per cell


async def _primary_keys(db, database: str, table: str) -> list[str]:
    import time

    key = (id(db), database, table)
    cached = _PKS.get(key)
    if cached is not None and time.monotonic() - cached[0] < 5.0:
        return cached[1]
    pks = await db.primary_keys(table)
    if len(_PKS) > 1000:
        _PKS.clear()
    _PKS[key] = (time.monotonic(), pks)
    return pks


def render_cell(row, value, column, table, database, datasette):
    """``_llm_run`` cells link to the row's provenance card (which anyone who may
    view the row may open); outside a table (SQL results) to the run page."""
    if column != RUN_COLUMN or not isinstance(value, str) or not RUN_ID_RE.match(value):
        return None

    async def inner():
        from datasette.utils import path_from_row_pks

        from .pageviews import card_url

        db = datasette.databases.get(database) if database else None
        href = None
        if db is not None and table and row is not None:
            try:
                pks = await _primary_keys(db, database, table)
                href = card_url(datasette, database, table, path_from_row_pks(row, pks, not pks))
            except (KeyError, IndexError, TypeError):
                href = None
        if href is None:
            href = datasette.urls.path(f"{PREFIX}/runs/{value}")
            return Markup('<a href="{}" title="Extraction run that produced this row">run {}</a>').format(
                escape(href), escape(value[:8]))
        return Markup('<a href="{}" title="Where this row came from: document, page, quote, model">'
                      'source · run {}</a>').format(escape(href), escape(value[:8]))

    return inner


def register_commands(cli):
    try:
        from . import cli as extract_cli
    except ImportError:  # the CLI module is optional
        return
    register = getattr(extract_cli, "register", None)
    if register is not None:
        register(cli)
