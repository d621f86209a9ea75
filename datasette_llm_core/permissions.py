"""Permission checks that work the same on Datasette 0.65 and 1.0 alphas.

The suite's actions:

=================  ==========  ==============================================
action             resource    default
=================  ==========  ==============================================
llm-extract        table/db    denied (spends money)
llm-ask            database    denied (spends money: answers with a model)
llm-search         database    anyone who may view the database
llm-index          database    denied (spends: embeds rows)
llm-view-log       instance    denied (call log, other users' runs)
=================  ==========  ==============================================

The actor ``{"id": "root"}`` may do everything on both lines (on 1.0 Datasette
also grants root everything itself when started with ``--root``). Every action
on a database or table also needs Datasette's own permission to view it.

Grants, on both lines, under ``plugins: datasette-llm-newsroom: permissions:``
with Datasette's allow-block syntax (``{id: alice}``, ``{id: [a, b]}``,
``{roles: editor}``, ``true``)::

    permissions:
      llm-view-log: {id: editor}          # instance level: every database
      llm-extract: {id: [alice]}
      databases:
        newsroom:                         # one database, all its tables
          llm-ask: {id: bob}
          tables:
            filings:                      # one table (llm-extract only)
              llm-extract: {id: carol}

Plugin grants only ever add permissions. On Datasette 1.0 the actions are
also registered natively, so ``permissions:`` blocks in datasette.yaml work
too (and can deny, e.g. ``llm-search: false`` on a database).

The state database (``llm_newsroom``) holds the call log and everyone's runs:
viewing or downloading it, its tables and queries, and running SQL against it
are readable only with an explicit ``llm-view-log`` grant in the plugin's
config (root included: root needs the grant too); Datasette's write actions on
it (insert-row, execute-write-sql, ...) are denied to everyone but root. The
same holds for the state database file served under any other name. A
search-index sidecar served as a database (recognised by content, see
guard.py) is readable under the same rule and writable by no one; through
``--crossdb`` neither can be read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError

ACTIONS = {
    "llm-extract": "Run LLM extraction into a table",
    "llm-ask": "Ask questions answered by an LLM over indexed tables",
    "llm-search": "Semantic search over indexed tables",
    "llm-index": "Build or refresh the semantic search index",
    "llm-view-log": "View the LLM call log and the suite's state database",
}

#: The finest resource each action can be granted on.
ACTION_SCOPES = {
    "llm-extract": "table",
    "llm-ask": "database",
    "llm-search": "database",
    "llm-index": "database",
    "llm-view-log": "instance",
}

#: Actions allowed by default to anyone who may view the database.
DEFAULT_ALLOWED = frozenset({"llm-search"})

#: Datasette actions on the state database that need ``llm-view-log``.
STATE_DB_READ = (
    "view-database",
    "view-database-download",
    "view-table",
    "view-query",
    "execute-sql",
)
#: Datasette 1.0 write actions, refused on the state database to all but root:
#: the call log is an audit trail (grants like ``insert-row: true`` at instance
#: level must not reach it).
STATE_DB_WRITE = (
    "execute-write-sql",
    "create-table",
    "create-view",
    "store-query",
    "insert-row",
    "delete-row",
    "update-row",
    "alter-table",
    "set-column-type",
    "drop-table",
    "drop-view",
    "update-query",
    "delete-query",
)
STATE_DB_GUARDED = STATE_DB_READ + STATE_DB_WRITE

STATE_DB_NAME = "llm_newsroom"  # same as state.STATE_DB_NAME (no import cycle)


def _is_v1() -> bool:
    # Importing datasette.app here would be circular (plugins load while it
    # imports); the resource classes only exist on the 1.0 line.
    import importlib.util

    return importlib.util.find_spec("datasette.resources") is not None


IS_V1 = _is_v1()


# --------------------------------------------------------------------------
# Plugin-config grants (pure: no Datasette import needed except allow blocks)


@dataclass
class Grants:
    """Parsed ``permissions:`` section: allow blocks by scope."""

    instance: dict[str, Any] = field(default_factory=dict)
    databases: dict[str, dict[str, Any]] = field(default_factory=dict)
    tables: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)

    def blocks(self, action: str):
        """Yield ``(database, table, allow_block)`` for ``action``."""
        if action in self.instance:
            yield None, None, self.instance[action]
        for db, actions in self.databases.items():
            if action in actions:
                yield db, None, actions[action]
        for (db, table), actions in self.tables.items():
            if action in actions:
                yield db, table, actions[action]


def _check_actions(where: str, block: dict, allowed_actions: set[str], extra: set[str]) -> None:
    for key in block:
        if key in extra:
            continue
        if key not in ACTIONS:
            raise ConfigError(
                f"Unknown action {key!r} in plugins: datasette-llm-newsroom: permissions{where}. "
                f"Use one of: {', '.join(ACTIONS)}."
            )
        if key not in allowed_actions:
            raise ConfigError(
                f"Action {key!r} cannot be granted in permissions{where}: it applies to "
                f"the {ACTION_SCOPES[key]}, so grant it "
                + ("at instance level." if ACTION_SCOPES[key] == "instance" else "on a database.")
            )


def parse_grants(raw: dict | None) -> Grants:
    """Validate the plugin's ``permissions:`` section (raises ``ConfigError``)."""
    grants = Grants()
    if not raw:
        return grants
    if not isinstance(raw, dict):
        raise ConfigError("plugins: datasette-llm-newsroom: permissions must be a mapping.")
    _check_actions("", raw, set(ACTIONS), {"databases"})
    grants.instance = {k: v for k, v in raw.items() if k != "databases"}
    db_actions = {a for a, s in ACTION_SCOPES.items() if s in ("database", "table")}
    table_actions = {a for a, s in ACTION_SCOPES.items() if s == "table"}
    for db, block in (raw.get("databases") or {}).items():
        block = block or {}
        if not isinstance(block, dict):
            raise ConfigError(f"permissions: databases: {db} must be a mapping.")
        _check_actions(f": databases: {db}", block, db_actions, {"tables"})
        grants.databases[str(db)] = {k: v for k, v in block.items() if k != "tables"}
        for table, tblock in (block.get("tables") or {}).items():
            tblock = tblock or {}
            if not isinstance(tblock, dict):
                raise ConfigError(f"permissions: databases: {db}: tables: {table} must be a mapping.")
            _check_actions(f": databases: {db}: tables: {table}", tblock, table_actions, set())
            grants.tables[(str(db), str(table))] = dict(tblock)
    return grants


def grants_for(datasette) -> Grants:
    from .config import plugin_settings

    return parse_grants(plugin_settings(datasette).permissions)


def _matches(actor: dict | None, allow_block: Any) -> bool:
    from datasette.utils import actor_matches_allow

    return bool(actor_matches_allow(actor, allow_block))


def granted_resources(grants: Grants, actor: dict | None, action: str) -> list[tuple[str | None, str | None]]:
    """``(database, table)`` pairs on which plugin config grants ``action`` to ``actor``."""
    return [(db, table) for db, table, block in grants.blocks(action) if _matches(actor, block)]


_ASCII_FOLD = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _table_key(name: str | None) -> str | None:
    # SQLite table names compare with NOCASE (ASCII only), as Datasette 1.0 does.
    return None if name is None else name.translate(_ASCII_FOLD)


def grant_covers(pairs, database: str | None, table: str | None) -> bool:
    """Does one of the granted ``(database, table)`` pairs cover this resource?"""
    for db, tbl in pairs:
        if db is None:
            return True
        if db == database and (tbl is None or _table_key(tbl) == _table_key(table)):
            return True
    return False


def is_root(actor: dict | None) -> bool:
    return bool(actor) and actor.get("id") == "root"


# --------------------------------------------------------------------------
# Public interface (views call only these)


async def allowed(
    datasette,
    actor: dict | None,
    action: str,
    database: str | None = None,
    table: str | None = None,
) -> bool:
    """May ``actor`` perform the suite ``action`` on this database/table?"""
    scope = ACTION_SCOPES.get(action)
    if scope is None:
        raise ValueError(f"Unknown action {action!r}; expected one of {', '.join(ACTIONS)}")
    view_table = None
    if scope == "instance":
        database = table = None
    elif database is None:
        raise ValueError(f"{action} needs a database")
    elif scope == "database":
        view_table = table
        table = None
    if not await can_view(datasette, actor, database, table if scope == "table" else None):
        return False
    if IS_V1:
        from datasette.resources import DatabaseResource, TableResource

        if database is None:
            resource = None
        elif table is not None:
            resource = TableResource(database, table)
        else:
            resource = DatabaseResource(database)
        ok = await datasette.allowed(action=action, resource=resource, actor=actor)
    else:
        if database is None:
            resource = None
        elif table is not None:
            resource = (database, table)
        else:
            resource = database
        ok = await datasette.permission_allowed(actor, action, resource=resource, default=False)
    if ok and scope == "database" and view_table is not None:
        ok = await can_view(datasette, actor, database, view_table)
    return bool(ok)


async def ensure_allowed(datasette, actor, action, database=None, table=None) -> None:
    """Raise ``datasette.Forbidden`` unless ``allowed(...)``."""
    from datasette import Forbidden

    if not await allowed(datasette, actor, action, database, table):
        raise Forbidden(f"You do not have permission to {ACTIONS.get(action, action).lower()}.")


async def can_view(datasette, actor, database: str | None, table: str | None = None) -> bool:
    """Datasette's own view-instance/view-database/view-table checks, on either line.

    Mirrors what Datasette's own pages check: the table page on 0.65 asks
    view-table, then view-database, then view-instance (first answer wins);
    1.0 resolves view-table alone (its rules cascade from database level).
    """
    if IS_V1:
        from datasette.resources import DatabaseResource, TableResource

        if database is None:
            return await datasette.allowed(action="view-instance", actor=actor)
        if table is None:
            return await datasette.allowed(
                action="view-database", resource=DatabaseResource(database), actor=actor
            )
        return await datasette.allowed(
            action="view-table", resource=TableResource(database, table), actor=actor
        )
    from datasette import Forbidden

    checks: list = []
    if table is not None:
        checks.append(("view-table", (database, table)))
    if database is not None:
        checks.append(("view-database", database))
    checks.append("view-instance")
    try:
        await datasette.ensure_permissions(actor, checks)
    except Forbidden:
        return False
    return True


async def viewable_tables(datasette, actor, database: str, tables: list[str]) -> list[str]:
    """The subset of ``tables`` in ``database`` that ``actor`` may view (order kept)."""
    if not tables:
        return []
    if not await can_view(datasette, actor, database):
        return []
    if not IS_V1:
        return [t for t in tables if await can_view(datasette, actor, database, t)]
    # 1.0: one query for every table Datasette's catalog knows about; tables
    # not in the catalog yet (created since the last schema refresh) are
    # checked one by one.
    from datasette.resources import TableResource

    page = await datasette.allowed_resources("view-table", actor, parent=database, limit=1000)
    ok: set[str] = set()
    async for resource in page.all():
        ok.add(TableResource.normalize_child(resource.child))
    known = await datasette.get_internal_database().execute(
        "select table_name from catalog_tables where database_name = ? "
        "union all select view_name from catalog_views where database_name = ?",
        [database, database],
    )
    in_catalog = {TableResource.normalize_child(r[0]) for r in known.rows}
    result = []
    for t in tables:
        key = TableResource.normalize_child(t)
        if key in ok:
            result.append(t)
        elif key not in in_catalog and await can_view(datasette, actor, database, t):
            result.append(t)
    return result


# --------------------------------------------------------------------------
# Hook bodies (the @hookimpl wrappers live in __init__.py)


def action_objects() -> list:
    """Datasette 1.0 ``Action`` objects for register_actions."""
    from datasette.permissions import Action
    from datasette.resources import DatabaseResource, TableResource

    classes = {"table": TableResource, "database": DatabaseResource, "instance": None}
    return [
        Action(name=name, description=desc, resource_class=classes[ACTION_SCOPES[name]])
        for name, desc in ACTIONS.items()
    ]


async def permission_allowed_065(datasette, actor, action, resource):
    """Datasette 0.65 ``permission_allowed`` body (registered trylast: last answer wins)."""
    if action in ACTIONS:
        if is_root(actor) or action in DEFAULT_ALLOWED:
            return True
        if isinstance(resource, (tuple, list)):
            database, table = resource
        else:
            database, table = resource, None
        pairs = granted_resources(grants_for(datasette), actor, action)
        return True if grant_covers(pairs, database, table) else None
    if action in STATE_DB_GUARDED:
        database = resource[0] if isinstance(resource, (tuple, list)) else resource
        if database is None:
            return None
        from .guard import suite_file

        found = suite_file(datasette, database)
        if found is None:
            return None
        if not await _may_touch_suite_file(datasette, actor, action, found.kind):
            return False
    return None


async def may_read_suite_file(datasette, actor) -> bool:
    """A search index holds the text of every indexed row, private tables
    included, and the state database holds every user's pasted documents and
    prompts: only an explicit ``llm-view-log`` grant opens either (root too:
    being root is not a grant to read everyone's documents)."""
    if granted_resources(grants_for(datasette), actor, "llm-view-log"):
        return True
    if is_root(actor):
        return False
    return await allowed(datasette, actor, "llm-view-log")


async def _may_touch_suite_file(datasette, actor, action: str, kind: str) -> bool:
    """Datasette's own ``action`` on a state database or sidecar it serves."""
    from .suitefiles import STATE

    if action in STATE_DB_WRITE:
        # The call log is an audit trail; an index is written by the indexer only.
        return kind == STATE and is_root(actor)
    return await may_read_suite_file(datasette, actor)


_param_counter = 0
SOURCE = "datasette-llm-newsroom"  # names our rules on 1.0's permission debug pages


async def permission_resources_sql_v1(datasette, actor, action):
    """Datasette 1.0 ``permission_resources_sql`` body."""
    from datasette.permissions import PermissionSQL

    global _param_counter
    if action in ACTIONS:
        rows: list[tuple[str | None, str | None, str]] = []
        if is_root(actor):
            rows.append((None, None, "root may use every LLM action"))
        if action in DEFAULT_ALLOWED:
            rows.append((None, None, f"{action} is allowed to anyone who can view the database"))
        for db, table in granted_resources(grants_for(datasette), actor, action):
            where = "/".join(p for p in (db, table) if p) or "instance"
            rows.append((db, table, f"granted in plugin config ({where})"))
        if not rows:
            return None
        _param_counter += 1
        n = _param_counter
        selects, params = [], {}
        for i, (db, table, reason) in enumerate(rows):
            params[f"llmnr_{n}_{i}_p"] = db
            params[f"llmnr_{n}_{i}_c"] = table
            params[f"llmnr_{n}_{i}_r"] = reason
            selects.append(
                f"SELECT :llmnr_{n}_{i}_p AS parent, :llmnr_{n}_{i}_c AS child, "
                f"1 AS allow, :llmnr_{n}_{i}_r AS reason"
            )
        return PermissionSQL(sql="\nUNION ALL\n".join(selects), params=params, source=SOURCE)
    if action in STATE_DB_GUARDED:
        from .guard import suite_files

        denied: list[tuple[str, str | None]] = []
        answers: dict[str, bool] = {}
        for name, found in suite_files(datasette).items():
            if found.kind not in answers:
                answers[found.kind] = await _may_touch_suite_file(datasette, actor, action, found.kind)
            if answers[found.kind]:
                continue
            denied.append((name, None))
            if action == "view-table":  # a table-level allow must not reopen it
                denied.extend((name, table) for table in found.tables)
        if not denied:
            return None
        _param_counter += 1
        n = _param_counter
        selects, params = [], {}
        reason = (
            "the suite's own files are written by the suite only"
            if action in STATE_DB_WRITE
            else "the LLM state database and search indexes need llm-view-log"
        )
        params[f"llmnr_{n}_r"] = reason
        for i, (db, table) in enumerate(denied):
            params[f"llmnr_{n}_{i}_p"] = db
            params[f"llmnr_{n}_{i}_c"] = table
            selects.append(
                f"SELECT :llmnr_{n}_{i}_p AS parent, :llmnr_{n}_{i}_c AS child, "
                f"0 AS allow, :llmnr_{n}_r AS reason"
            )
        return PermissionSQL(sql="\nUNION ALL\n".join(selects), params=params, source=SOURCE)
    return None


async def menu_links_body(datasette, actor) -> list[dict]:
    if STATE_DB_NAME not in datasette.databases:
        return []
    if not await allowed(datasette, actor, "llm-view-log"):
        return []
    links = []
    if await may_read_suite_file(datasette, actor):
        # Newest calls first: the table's primary key is a random id.
        href = datasette.urls.table(STATE_DB_NAME, "llm_calls") + "?_sort_desc=started_at"
        links.append({"href": href, "label": "LLM call log"})
    links.append({"href": datasette.urls.path("/-/llm-models"), "label": "LLM models"})
    return links


# --------------------------------------------------------------------------
# CSRF on Datasette 0.65 (1.0 checks Sec-Fetch-Site/Origin for every POST)

import re  # noqa: E402

#: The suite's routes that take a body, and what kind. "json" routes accept
#: only ``application/json`` (a cross-site page cannot send it without a CORS
#: preflight, which Datasette does not grant); "form" routes compare the
#: form's ``csrftoken`` with the ``ds_csrftoken`` cookie themselves
#: (``bodies.form_token_ok``), after their permission check.
BODY_ROUTES = [
    (re.compile(r"^/-/llm-extract/api/runs(/[0-9a-f]{16}/[a-z]+)?$"), "json"),
    (re.compile(r"^/-/llm-extract/templates(/[0-9]+/delete)?$"), "json"),
    (re.compile(r"^/-/llm-rag/feedback\.json$"), "json"),
    (re.compile(r"^/-/llm-rag/[^/]+/ask\.json$"), "json"),
    (re.compile(r"^/-/llm-extract/(new/[^/]+|into/[^/]+/[^/]+|estimate|runs/[0-9a-f]{16}/[a-z]+)$"), "form"),
    (re.compile(r"^/-/llm-rag/index/[^/]+$"), "form"),
    # enrichment jobs: JSON, or a form whose token the view checks (enrich_views._read_body)
    (re.compile(r"^/-/llm-extract/enrich/(api/jobs|jobs/[0-9a-f]{16}/[a-z]+)$"), "form"),
]


def body_route_kind(path: str) -> str | None:
    for pattern, kind in BODY_ROUTES:
        if pattern.match(path):
            return kind
    return None


def skip_csrf_body(scope) -> bool | None:
    """Datasette 0.65 ``skip_csrf``: the suite checks its own routes.

    asgi-csrf would read (and keep in memory) a whole urlencoded or multipart
    body before any permission check, and it refuses JSON from signed-in API
    clients. The views of these routes check permission first, then read the
    body under a cap, accepting only JSON on JSON routes and only forms with a
    valid token on form routes.
    """
    if scope.get("type") != "http":
        return None
    return True if body_route_kind(scope.get("path", "")) else None
