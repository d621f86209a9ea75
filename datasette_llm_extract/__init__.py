"""Schema-driven extraction into reviewed, traceable table rows (Datasette hooks only).

The "Extract data into a new table" button on database pages comes from
``top_database`` on Datasette 1.0 and from a small script (``extra_js_urls``)
on 0.65, which lacks that hook; pluggy never calls an impl for a missing hook.
"""

from datasette import hookimpl
from datasette import hookspecs as _datasette_hookspecs

from . import hooks, views

#: Datasette 1.0 alphas have top_database; 0.65 gets the same button from a script.
HAS_TOP_HOOKS = hasattr(_datasette_hookspecs, "top_database")


@hookimpl
def register_routes():
    return views.routes()


@hookimpl
def startup(datasette):
    return hooks.startup(datasette)


@hookimpl
def asgi_wrapper(datasette):
    return hooks.asgi_wrapper(datasette)


@hookimpl
def database_actions(datasette, actor, database):
    return hooks.database_actions(datasette, actor, database)


@hookimpl
def top_database(datasette, request, database):
    return hooks.top_database(datasette, request, database)


@hookimpl
def extra_js_urls(datasette, request, database, table, view_name):
    return hooks.extra_js_urls(datasette, request, database, view_name, HAS_TOP_HOOKS, table)


@hookimpl
def extra_css_urls(datasette, view_name):
    return hooks.extra_css_urls(datasette, view_name)


@hookimpl
def table_actions(datasette, actor, database, table, request):
    return hooks.table_actions(datasette, actor, database, table, request)


@hookimpl
def top_table(datasette, request, database, table):
    # Datasette 1.0 only: a banner with the progress of this table's enrichment jobs
    return hooks.top_table(datasette, request, database, table)


@hookimpl
def menu_links(datasette, actor):
    return hooks.menu_links(datasette, actor)


@hookimpl
def render_cell(row, value, column, table, database, datasette):
    return hooks.render_cell(row, value, column, table, database, datasette)


@hookimpl
def get_metadata(datasette, key, database, table):
    # Datasette 0.65 only (1.0 has no such hook): column descriptions from the column builder
    from . import pageviews

    return pageviews.get_metadata(datasette, database, table)


@hookimpl
def register_enrichments(datasette):
    # only called when datasette-enrichments is installed (its hook)
    from .enrich_enrichments import enrichments

    return enrichments(datasette)


@hookimpl
def register_commands(cli):
    hooks.register_commands(cli)


# Last: re-register if this package was registered while half-imported.
from datasette_llm_core.registration import register_fully  # noqa: E402

register_fully(__name__)
