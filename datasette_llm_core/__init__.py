"""Shared layer of the suite: hook specs, model registry, call log, permissions.

This module holds only Datasette hook implementations; the logic lives in the
other modules of the package.
"""

from datasette import hookimpl
from datasette.plugins import pm

from . import calllog, hookspecs  # noqa: F401 - calllog registers its migrations
from .state import STATE_DB_NAME, attach_state_database, state_db, tune_connection

pm.add_hookspecs(hookspecs)


@hookimpl
def startup(datasette):
    async def inner():
        attach_state_database(datasette)
        await state_db(datasette)

    return inner


@hookimpl
def prepare_connection(conn, database, datasette):
    if database == STATE_DB_NAME:
        tune_connection(conn)


# --- permissions (logic in permissions.py) --------------------------------
# permission_allowed exists only on Datasette 0.65; register_actions and
# permission_resources_sql only on 1.0. Pluggy keeps an impl for a hook the
# running line lacks as unverified and never calls it (tests load both lines).
from . import permissions as _permissions  # noqa: E402


@hookimpl(specname="permission_allowed", trylast=True)
def llm_permission_allowed(datasette, actor, action, resource):
    if action in _permissions.ACTIONS or action in _permissions.STATE_DB_GUARDED:
        return _permissions.permission_allowed_065(datasette, actor, action, resource)
    return None


@hookimpl(specname="register_actions")
def llm_register_actions(datasette):
    return _permissions.action_objects()


@hookimpl(specname="permission_resources_sql")
def llm_permission_resources_sql(datasette, actor, action):
    if action in _permissions.ACTIONS or action in _permissions.STATE_DB_GUARDED:
        return _permissions.permission_resources_sql_v1(datasette, actor, action)
    return None


@hookimpl(specname="skip_csrf")
def llm_skip_csrf(datasette, scope):
    return _permissions.skip_csrf_body(scope)


@hookimpl(specname="menu_links")
def llm_menu_links(datasette, actor, request):
    return _permissions.menu_links_body(datasette, actor)


@hookimpl(specname="forbidden")
def llm_state_db_forbidden(datasette, request, message):
    from .denied import state_db_forbidden

    return state_db_forbidden(datasette, request, message)


@hookimpl(specname="startup")
def llm_check_permission_config(datasette):
    _permissions.grants_for(datasette)  # raises ConfigError on a bad permissions: block


# --- models built from configuration (logic in providers/builtin.py) -------
@hookimpl(specname="register_llm_models")
def llm_config_chat_models(datasette):
    from .config import plugin_settings
    from .providers.builtin import chat_models_for

    return chat_models_for(datasette, plugin_settings(datasette))


@hookimpl(specname="register_embedding_models")
def llm_config_embedding_models(datasette):
    from .config import plugin_settings
    from .providers.builtin import embedding_models_for

    return embedding_models_for(datasette, plugin_settings(datasette))


# --- built-in local embedder (logic in embeddings/local_minilm.py) ---------
@hookimpl(specname="register_embedding_models")
def llm_local_embedding_models(datasette):
    from .embeddings import local_embedding_models

    return local_embedding_models()


# Last: re-register if this package was registered while half-imported.
from datasette_llm_core.registration import register_fully  # noqa: E402

register_fully(__name__)
