"""Cited question answering and semantic search over existing tables (Datasette hooks only).

Datasette 1.0 alphas get the question box through ``top_homepage`` /
``top_database`` / ``top_table`` and the similar-rows link through
``row_actions``; 0.65 has none of those hooks, so there a small script
(added with ``extra_js_urls``) builds the same box and link. Pluggy keeps
the impls for hooks a line lacks unverified and never calls them.
"""

from datasette import hookimpl
from datasette import hookspecs as _datasette_hookspecs

from . import limits_page, permalinks, published, views

HAS_TOP_HOOKS = hasattr(_datasette_hookspecs, "top_homepage")


@hookimpl
def register_routes(datasette):
    return [
        (r"^/-/llm-ask$", views.ask_page),
        (r"^/-/llm-ask/(?P<database>[^/]+)$", views.ask_page),
        (r"^/-/llm-rag/feedback\.json$", views.feedback_api),
        (r"^/-/llm-rag/answers/(?P<answer_id>rag-[0-9a-f]{32})(?:\.(?P<format>json))?$",
         permalinks.answer_view),
        (r"^/-/llm-rag/limits(?:\.(?P<format>json))?$", limits_page.limits_view),
        (r"^/-/llm-rag/index$", views.index_list),
        (r"^/-/llm-rag/index/(?P<database>[^/]+?)\.json$", views.index_status_json),
        (r"^/-/llm-rag/index/(?P<database>[^/]+)$", views.index_page),
        (
            r"^/-/llm-rag/similar/(?P<database>[^/]+)/(?P<table>[^/]+)/"
            r"(?P<pks>[^/]+?)(?:\.(?P<format>json))?$",
            views.similar_view,
        ),
        (r"^/-/llm-rag/(?P<database>[^/]+)/search\.json$", views.search_json),
        (r"^/-/llm-rag/(?P<database>[^/]+)/ask\.json$", views.ask_api),
    ]


@hookimpl
def asgi_wrapper(datasette):
    return published.refuse_index_files


@hookimpl
def register_commands(cli):
    try:
        from . import cli as rag_cli
    except ImportError:  # the engine's CLI module is optional for the web side
        return
    rag_cli.register(cli)


@hookimpl
def top_homepage(datasette, request):
    return views.box_html(datasette, request)


@hookimpl
def top_database(datasette, request, database):
    return views.box_html(datasette, request, database)


@hookimpl
def top_table(datasette, request, database, table):
    return views.box_html(datasette, request, database, table)


@hookimpl(specname="row_actions")
def llm_rag_row_actions(datasette, actor, request, database, table, row):
    async def inner():
        link = await views.similar_link(
            datasette, actor, database, table, request.url_vars.get("pks", "")
        )
        if not link:
            return []
        return [{"href": link, "label": "Similar rows",
                 "description": "Rows close in meaning, from the search index"}]

    return inner


@hookimpl
def extra_js_urls(template, database, table, columns, view_name, request, datasette):
    if HAS_TOP_HOOKS:
        return []

    async def inner():
        url = await views.box_script_url(datasette, request, database, table, view_name)
        return [url] if url else []

    return inner


@hookimpl
def extra_css_urls(template, database, table, columns, view_name, request, datasette):
    if view_name in ("index", "database", "table", "row") or (template or "").startswith("llm_rag"):
        return [views.static_url(datasette, "llm_rag.css")]
    return []


@hookimpl
def menu_links(datasette, actor, request):
    return views.menu_links(datasette, actor)


@hookimpl
def database_actions(datasette, actor, database, request):
    return views.database_action_links(datasette, actor, database)


@hookimpl
def table_actions(datasette, actor, database, table, request):
    return views.table_action_links(datasette, actor, database, table)


# Last: re-register if this package was registered while half-imported.
from datasette_llm_core.registration import register_fully  # noqa: E402

register_fully(__name__)
