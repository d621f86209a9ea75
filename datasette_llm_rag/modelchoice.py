"""Which embedding model an index uses: the configured one, else the one it was built with.

New indexes use the gateway's default (bge-small-en-v1.5 since 0.2). An
index built before with another registered model (all-MiniLM-L6-v2) keeps
working with that model as long as no model is configured explicitly: its
refreshes embed new rows with the same model and its searches embed the
question with it. Switching is the operator's choice: a rebuild (``--rebuild``
or the Rebuild option on the index page) starts from empty with the default.
A configured model (``rag: embedding_model`` or ``defaults: embed``) that
differs from the index's is still refused with the rebuild hint.

Nothing here imports Datasette.
"""

from __future__ import annotations

import os
import sqlite3


def recorded_model(sidecar: str | None) -> str | None:
    """The embedding model id a sidecar records, or None (no file, unreadable, empty)."""
    if not sidecar or not os.path.exists(sidecar):
        return None
    try:
        conn = sqlite3.connect(f"file:{sidecar}?mode=ro", uri=True)
    except sqlite3.Error:
        return None
    try:
        row = conn.execute("select value from meta where key = 'embedding_model'").fetchone()
    except sqlite3.Error:
        return None
    finally:
        conn.close()
    return row[0] if row else None


def choose_model_id(
    configured: str | None,
    default: str,
    recorded: str | None,
    available: set[str],
    *,
    rebuild: bool = False,
) -> str:
    """The model to embed with: ``configured`` if set; else the index's
    ``recorded`` model when it is still available (and not rebuilding); else
    ``default``."""
    if configured:
        return configured
    if recorded and recorded in available and not rebuild:
        return recorded
    return default


def gateway_choice(gw, rag_config, database: str, sidecar: str | None, *, rebuild: bool = False,
                   recorded: str | None = None) -> str:
    """``choose_model_id`` with a gateway's settings and registered models."""
    configured = rag_config.model_for(database) or gw.settings.defaults.get("embed")
    if recorded is None and not configured:
        recorded = recorded_model(sidecar)
    default = gw.get_embedding_model(None).model_id
    available = {m.model_id for m in gw.embedding_models()}
    return choose_model_id(configured, default, recorded, available, rebuild=rebuild)
