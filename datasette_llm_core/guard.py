"""Which of Datasette's databases are the suite's own files, and the crossdb guard.

``suite_file(datasette, name)`` says whether the database Datasette serves as
``name`` is the state database or a search-index sidecar (recognised by
content, see suitefiles.py; cached, and looked at again only when a file that
was not the suite's changes). The permission hooks (permissions.py) use it on
both Datasette lines.

``--crossdb`` attaches every file database to the shared ``_memory``
connection, which serves every visitor alike, so no per-actor rule can apply
there: ``guard_crossdb_connection`` installs an SQLite authorizer on each
``_memory`` connection (Datasette calls ``prepare_connection`` before it
attaches the databases, on every new connection) that refuses to read any
table of an attached state database or sidecar, for everyone. Those who may
read them use their own database pages.
"""

from __future__ import annotations

import weakref

from .suitefiles import STATE, SuiteFile, classify_file, file_signature

STATE_DB_NAME = "llm_newsroom"  # same as state.STATE_DB_NAME (no import cycle)

# datasette -> {name: (path, signature, SuiteFile | None)}
_cache: "weakref.WeakKeyDictionary[object, dict]" = weakref.WeakKeyDictionary()


def _connect():
    from datasette.utils.sqlite import sqlite3

    return sqlite3.connect


def suite_file(datasette, name: str) -> SuiteFile | None:
    """The suite file Datasette serves as ``name``, or None for other databases."""
    db = (getattr(datasette, "databases", None) or {}).get(name)
    by_name = SuiteFile(STATE) if name == STATE_DB_NAME else None
    if db is None or db.is_memory or not db.path:
        return by_name
    cache = _cache.setdefault(datasette, {})
    entry = cache.get(name)
    if entry is not None and entry[0] == db.path:
        path, signature, found = entry
        if found is not None:
            return found  # once the suite's, always refused
        if not db.is_mutable or signature == file_signature(path):
            return by_name
    signature = file_signature(db.path)
    found = classify_file(db.path, _connect(), immutable=not db.is_mutable) or by_name
    cache[name] = (db.path, signature, found)
    return found


def suite_files(datasette) -> dict[str, SuiteFile]:
    """Every database Datasette serves that is the state database or a sidecar."""
    out = {}
    for name in list(datasette.databases):
        found = suite_file(datasette, name)
        if found is not None:
            out[name] = found
    return out


def _fold(name: str | None) -> str | None:
    # SQLite compares schema names ASCII-case-insensitively.
    return None if name is None else name.lower()


def guard_crossdb_connection(conn, datasette) -> None:
    """Refuse reads of attached suite files on a ``--crossdb`` ``_memory`` connection."""
    from datasette.utils.sqlite import sqlite3

    names = {_fold(STATE_DB_NAME)}
    for name, db in list(datasette.databases.items()):
        if not db.is_memory and suite_file(datasette, name) is not None:
            names.add(_fold(name))
    blocked = frozenset(names)
    refused = {sqlite3.SQLITE_READ, sqlite3.SQLITE_PRAGMA}
    deny, ok = sqlite3.SQLITE_DENY, sqlite3.SQLITE_OK

    def authorizer(action, arg1, arg2, schema, source):
        if action in refused and _fold(schema) in blocked:
            return deny
        return ok

    conn.set_authorizer(authorizer)
