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
