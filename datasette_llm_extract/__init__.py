"""Schema-driven extraction into reviewed, traceable table rows (Datasette hooks only)."""

from datasette import hookimpl

from . import hooks, views


@hookimpl
def register_routes():
    return views.routes()


@hookimpl
def startup(datasette):
    return hooks.startup(datasette)


@hookimpl
def database_actions(datasette, actor, database):
    return hooks.database_actions(datasette, actor, database)


@hookimpl
def table_actions(datasette, actor, database, table):
    return hooks.table_actions(datasette, actor, database, table)


@hookimpl
def menu_links(datasette, actor):
    return hooks.menu_links(datasette, actor)


@hookimpl
def render_cell(value, column, datasette):
    return hooks.render_cell(value, column, datasette)


@hookimpl
def skip_csrf(datasette, scope):
    return hooks.skip_csrf(scope)


@hookimpl
def register_commands(cli):
    hooks.register_commands(cli)


# Last: re-register if this package was registered while half-imported.
from datasette_llm_core.registration import register_fully  # noqa: E402

register_fully(__name__)
