"""What a refused visitor reads: sign in first, or ask for a named permission.

A 403 that only says "you do not have permission" leaves a signed-out
reporter guessing; one that says "sign in" sends a signed-in one round in
circles. ``denied_message`` tells the two apart (pure: no Datasette import).
``state_db_forbidden`` rewrites Datasette's own 403 on the state database
(the call log) the same way, through Datasette's ``forbidden`` hook.
"""

from __future__ import annotations

#: What each action lets someone do, as the end of "Sign in to ...".
VERBS = {
    "llm-extract": "run LLM extraction",
    "llm-ask": "ask questions answered by a model",
    "llm-search": "search",
    "llm-index": "see or refresh the search index",
    "llm-view-log": "see the LLM call log",
}


def _where(database: str | None, table: str | None) -> str:
    if database and table:
        return f" on {database}/{table}"
    if database:
        return f" in {database!r}"
    return ""


def denied_message(actor: dict | None, action: str, database: str | None = None,
                   table: str | None = None) -> str:
    """The message of a 403 for ``action``: sign in (no actor) or ask an administrator."""
    verb = VERBS.get(action, action)
    where = _where(database, table)
    if not actor:
        return (f"Sign in to {verb}{where}. You are not signed in, and this page is only "
                "for signed-in users with permission.")
    return (f"Your account does not have the {action} permission{where} (needed to {verb}). "
            "Ask an administrator to grant it.")


def state_db_forbidden(datasette, request, message: str):
    """Datasette's own 403 on the state database's pages, reworded; ``None`` elsewhere."""
    from .state import STATE_DB_NAME

    if request is None or request.method not in ("GET", "HEAD"):
        return None
    base = datasette.urls.database(STATE_DB_NAME)
    path = request.path
    if path != base and not path.startswith(base + "/") and not path.startswith(base + "."):
        return None

    async def inner():
        from datasette.forbidden import forbidden as default_forbidden

        from . import permissions

        # Refused for another reason than the call-log grant: Datasette's words.
        # (Datasette asserts every forbidden() awaitable gives a response.)
        if not await permissions.allowed(datasette, request.actor, "llm-view-log"):
            message_ = denied_message(request.actor, "llm-view-log")
        else:
            message_ = message
        response = default_forbidden(datasette=datasette, request=request, message=message_)
        return await response() if callable(response) else response

    return inner
