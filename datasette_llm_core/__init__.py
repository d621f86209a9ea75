"""Shared layer of the suite: hook specs, model registry, call log, permissions.

This module holds only Datasette hook implementations; the logic lives in the
other modules of the package.
"""

from datasette import hookimpl
from datasette.plugins import pm

from . import calllog, hookspecs, limits  # noqa: F401 - they register their migrations
from .state import STATE_DB_NAME, attach_state_database, state_db, tune_connection
from .tracebacks import quiet_error_tracebacks

pm.add_hookspecs(hookspecs)


@hookimpl
def startup(datasette):
    quiet_error_tracebacks()

    async def inner():
        attach_state_database(datasette)
        await state_db(datasette)
        await calllog.prune_old_calls(datasette)

    return inner


@hookimpl
def prepare_connection(conn, database, datasette):
    if database == STATE_DB_NAME:
        tune_connection(conn)
    elif database == "_memory" and getattr(datasette, "crossdb", False):
        from .guard import guard_crossdb_connection

        guard_crossdb_connection(conn, datasette)


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
    limits.limits_for(datasette)  # ... and on a bad limits: block


# --- models built from configuration (logic in providers/builtin.py) -------
# Keys named as datasette-secrets secrets are read per request (secrets.py).
@hookimpl(specname="register_llm_models")
def llm_config_chat_models(datasette):
    from .config import plugin_settings
    from .providers.builtin import chat_models_for
    from .secrets import apply_secret_keys, secret_names

    settings = plugin_settings(datasette)
    models = chat_models_for(datasette, settings)
    return apply_secret_keys(datasette, models) if secret_names(settings) else models


@hookimpl(specname="register_embedding_models")
def llm_config_embedding_models(datasette):
    from .config import plugin_settings
    from .providers.builtin import embedding_models_for
    from .secrets import apply_secret_keys, secret_names

    settings = plugin_settings(datasette)
    models = embedding_models_for(datasette, settings)
    return apply_secret_keys(datasette, models) if secret_names(settings) else models


# --- models of the llm package (logic in providers/llm_plugin.py) ----------
@hookimpl(specname="register_llm_models")
def llm_package_chat_models(datasette):
    from .providers.llm_plugin import registered_chat_models

    return registered_chat_models(datasette)


@hookimpl(specname="register_embedding_models")
def llm_package_embedding_models(datasette):
    from .providers.llm_plugin import registered_embedding_models

    return registered_embedding_models(datasette)


# --- datasette-secrets (a hook of that plugin; unused when it is absent) ----
@hookimpl(specname="register_secrets")
def llm_register_secrets(datasette):
    from .secrets import secrets_for

    return secrets_for(datasette)


# --- the models page (logic in models_page.py) -----------------------------
@hookimpl(specname="register_routes")
def llm_core_routes(datasette):
    from . import models_page

    return [
        (r"^/-/llm-models$", models_page.models_view),
        (r"^/-/llm-models/test$", models_page.test_view),
    ]


@hookimpl(specname="skip_csrf")
def llm_core_skip_csrf(datasette, scope):
    from .models_page import skip_csrf

    return skip_csrf(scope)


# --- built-in local embedder (logic in embeddings/local_minilm.py) ---------
@hookimpl(specname="register_embedding_models")
def llm_local_embedding_models(datasette):
    from .embeddings import local_embedding_models

    return local_embedding_models()


# Last: re-register if this package was registered while half-imported.
from datasette_llm_core.registration import register_fully  # noqa: E402

register_fully(__name__)
