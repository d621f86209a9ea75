"""API keys from datasette-secrets: ``api_key: {secret: NAME}``.

When datasette-secrets is installed (it supports Datasette 0.65; its admin
pages need ``datasette.permission_allowed``, which Datasette 1.0 alphas
removed), a model's key can name a secret that an admin sets in the browser
at ``/-/secrets``. The suite registers every secret its configuration names
(``register_secrets``) so it is listed there.

Precedence, checked on every gateway build (so once per request):

1. the environment variable ``NAME``;
2. ``DATASETTE_SECRETS_NAME`` (datasette-secrets' own environment override);
3. the value stored through ``/-/secrets``.

With none of them set the model stays listed but unavailable, with a
message that says where to set the key. The value goes only to the model's
provider (which redacts it from every error); it is never shown, logged or
stored by the suite.
"""

from __future__ import annotations

import os

from .calllog import remember_secret
from .config import SecretRef, Settings


def secret_names(settings: Settings) -> dict[str, list[str]]:
    """``{secret name: [model ids that use it]}`` for ``api_key: {secret: NAME}`` entries."""
    names: dict[str, list[str]] = {}
    for config in list(settings.models) + list(settings.embedding_models):
        if isinstance(config.api_key, SecretRef):
            names.setdefault(config.api_key.secret, []).append(config.id)
    return names


def secrets_installed() -> bool:
    try:
        import datasette_secrets  # noqa: F401
    except ImportError:
        return False
    return True


async def read_secret(datasette, name: str, actor_id: str | None = None, environ=None) -> str | None:
    """The value of secret ``name``: the environment variable ``NAME`` wins, then datasette-secrets."""
    environ = os.environ if environ is None else environ
    if environ.get(name):
        return environ[name]
    try:
        from datasette_secrets import get_secret
    except ImportError:
        return None
    try:
        return await get_secret(datasette, name, actor_id)
    except Exception:  # noqa: BLE001 - an unreadable store is "not set", never a crash
        return None


def _secret_holder(model):
    """The object that takes ``set_secret_key`` for ``model``: its provider, or the model."""
    connection = getattr(model, "connection", None)
    if connection is not None and getattr(connection, "secret_name", None):
        return connection
    if getattr(model, "secret_name", None):
        return model
    return None


async def apply_secret_keys(datasette, models: list, environ=None) -> list:
    """Give each model configured with ``{secret: NAME}`` the current value of NAME."""
    cache: dict[str, str | None] = {}
    for model in models:
        holder = _secret_holder(model)
        if holder is None:
            continue
        name = holder.secret_name
        if name not in cache:
            cache[name] = await read_secret(datasette, name, environ=environ)
            remember_secret(cache[name])  # redacted from the call log and errors from now on
        holder.set_secret_key(cache[name])
    return models


def registered_secrets(settings: Settings) -> list:
    """``datasette_secrets.Secret`` objects for the names the configuration uses."""
    from datasette_secrets import Secret

    return [
        Secret(name, description=f"API key for {', '.join(ids)} (datasette-llm-newsroom)")
        for name, ids in sorted(secret_names(settings).items())
    ]


def secrets_for(datasette) -> list:
    """What the ``register_secrets`` hook returns: none when the configuration is broken
    (the suite reports that itself; /-/secrets must still work)."""
    from .config import plugin_settings
    from .errors import ConfigError

    try:
        return registered_secrets(plugin_settings(datasette))
    except ConfigError:
        return []
