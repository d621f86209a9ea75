"""Permission checks that work the same on Datasette 0.65 and 1.0 alphas.

The suite's actions:

=================  ==========  ==============================================
action             resource    default
=================  ==========  ==============================================
llm-extract        table/db    root only (spends money)
llm-ask            database    root only (spends money: answers with a model)
llm-search         database    anyone who may view the database
llm-index          database    root only (spends: embeds rows)
llm-view-log       instance    root only
=================  ==========  ==============================================

Grant them with Datasette's own ``permissions:`` blocks (1.0) or, on both
lines, under ``plugins: datasette-llm-newsroom: permissions:`` using the same
allow-block syntax, at instance level or per database/table.
"""

from __future__ import annotations

ACTIONS = {
    "llm-extract": "Run LLM extraction into a table",
    "llm-ask": "Ask questions answered by an LLM over indexed tables",
    "llm-search": "Semantic search over indexed tables",
    "llm-index": "Build or refresh the semantic search index",
    "llm-view-log": "View the LLM call log and the suite's state database",
}


# The functions below are the whole public interface; views call only these.
# (First version: root-only defaults; the full 0.65/1.0 compatibility layer
# with config-driven grants replaces the bodies, not the signatures.)


async def allowed(
    datasette,
    actor: dict | None,
    action: str,
    database: str | None = None,
    table: str | None = None,
) -> bool:
    """May ``actor`` perform the suite ``action`` on this database/table?"""
    if action == "llm-search":
        return await can_view(datasette, actor, database)
    return bool(actor and actor.get("id") == "root")


async def ensure_allowed(datasette, actor, action, database=None, table=None) -> None:
    """Raise ``datasette.Forbidden`` unless ``allowed(...)``."""
    from datasette import Forbidden

    if not await allowed(datasette, actor, action, database, table):
        raise Forbidden(f"You do not have permission to {ACTIONS.get(action, action).lower()}.")


async def can_view(datasette, actor, database: str | None, table: str | None = None) -> bool:
    """Datasette's own view-instance/view-database/view-table checks, on either line."""
    raise NotImplementedError


async def viewable_tables(datasette, actor, database: str, tables: list[str]) -> list[str]:
    """The subset of ``tables`` in ``database`` that ``actor`` may view."""
    raise NotImplementedError
