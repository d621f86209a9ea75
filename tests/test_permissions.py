"""The suite's actions and the hidden state database, on whichever Datasette line runs.

Run with /tmp/vs (0.65) and /tmp/va (1.0): the same matrix must hold on both.
"""

from __future__ import annotations

import sqlite3

import pytest
from datasette import Forbidden
from datasette.app import Datasette

from datasette_llm_core import permissions as P
from datasette_llm_core.errors import ConfigError

V1 = P.IS_V1

GRANTS = {
    "llm-extract": {"id": ["alice"]},
    "llm-view-log": {"id": "editor"},
    "databases": {
        "newsroom": {
            "llm-extract": {"id": "bob"},
            "llm-ask": {"id": "bob"},
            "llm-index": {"id": "bob"},
            "tables": {"t": {"llm-extract": {"id": "carol"}}},
        }
    },
}

ACTORS = {
    "anonymous": None,
    "signed-in": {"id": "someone"},
    "alice": {"id": "alice"},
    "bob": {"id": "bob"},
    "carol": {"id": "carol"},
    "editor": {"id": "editor"},
    "root": {"id": "root"},
}

# (database, table): "u" is hidden by an allow block from everyone but root.
RESOURCES = [
    ("newsroom", None),
    ("newsroom", "t"),
    ("newsroom", "u"),
    ("other", None),
    ("other", "t"),
]


def expected(name: str, action: str, database: str, table: str | None) -> bool:
    """The rules from the permissions module docstring, written out independently."""
    if name == "root":
        return True
    if action == "llm-view-log":  # instance action: database/table are ignored
        return name == "editor"
    if table == "u":  # cannot view it, so cannot act on it
        return False
    if action == "llm-search":
        return True
    if action == "llm-extract":
        if name == "alice":
            return True
        if name == "bob":
            return database == "newsroom"
        if name == "carol":
            return (database, table) == ("newsroom", "t")
        return False
    if action in ("llm-ask", "llm-index"):
        return name == "bob" and database == "newsroom"
    raise AssertionError(action)


def make_db(path, tables):
    conn = sqlite3.connect(path)
    for t in tables:
        conn.execute(f"create table {t} (id integer primary key, body text)")
    conn.commit()
    conn.close()
    return str(path)


def make_datasette(tmp_path, grants=GRANTS, config_extra=None, **kwargs) -> Datasette:
    paths = [
        make_db(tmp_path / "newsroom.db", ["t", "u"]),
        make_db(tmp_path / "other.db", ["t"]),
    ]
    plugin = {"state_database": ":memory:", "permissions": grants}
    allow = {"databases": {"newsroom": {"tables": {"u": {"allow": {"id": "root"}}}}}}
    rules = {**allow, **(config_extra or {})}
    if V1:
        return Datasette(
            paths,
            config={**rules, "plugins": {"datasette-llm-newsroom": plugin}},
            **kwargs,
        )
    return Datasette(
        paths, metadata={**rules, "plugins": {"datasette-llm-newsroom": plugin}}, **kwargs
    )


def database_names(index) -> list[str]:
    """Database names from /.json on either line (0.65: dict by name; 1.0: wrapped)."""
    if "databases" in index and "ok" in index:
        index = index["databases"]
    if isinstance(index, dict):
        return [v.get("name", k) if isinstance(v, dict) else k for k, v in index.items()]
    return [d["name"] for d in index]


def cookies(ds, actor):
    return {"ds_actor": ds.sign({"a": actor}, "actor")} if actor else {}


@pytest.fixture
async def ds(tmp_path):
    ds = make_datasette(tmp_path)
    await ds.invoke_startup()
    state = ds.databases[P.STATE_DB_NAME]
    await state.execute_write("create table if not exists llm_calls (id text primary key)")
    return ds


async def test_action_matrix(ds):
    mismatches = []
    checked = 0
    for name, actor in ACTORS.items():
        for action in P.ACTIONS:
            for database, table in RESOURCES:
                got = await P.allowed(ds, actor, action, database, table)
                want = expected(name, action, database, table)
                checked += 1
                if got != want:
                    mismatches.append((name, action, database, table, got, want))
    assert checked == len(ACTORS) * len(P.ACTIONS) * len(RESOURCES)
    assert not mismatches, mismatches


async def test_matrix_has_both_outcomes_for_every_action(ds):
    # Guards the matrix itself: each action is granted to someone and refused to someone.
    for action in P.ACTIONS:
        outcomes = {
            expected(name, action, db, table) for name in ACTORS for db, table in RESOURCES
        }
        assert outcomes == {True, False}, action


async def test_instance_action_ignores_resource(ds):
    assert await P.allowed(ds, {"id": "editor"}, "llm-view-log")
    assert not await P.allowed(ds, {"id": "alice"}, "llm-view-log")
    assert not await P.allowed(ds, None, "llm-view-log")


async def test_ensure_allowed_raises_forbidden(ds):
    await P.ensure_allowed(ds, {"id": "bob"}, "llm-ask", "newsroom")
    with pytest.raises(Forbidden):
        await P.ensure_allowed(ds, {"id": "bob"}, "llm-ask", "other")
    with pytest.raises(Forbidden):
        await P.ensure_allowed(ds, None, "llm-extract", "newsroom", "t")


async def test_unknown_action_and_missing_database_are_programming_errors(ds):
    with pytest.raises(ValueError):
        await P.allowed(ds, {"id": "root"}, "llm-teleport", "newsroom")
    with pytest.raises(ValueError):
        await P.allowed(ds, {"id": "root"}, "llm-ask")


async def test_can_view_and_viewable_tables(ds):
    assert await P.can_view(ds, None, "newsroom")
    assert await P.can_view(ds, None, "newsroom", "t")
    assert not await P.can_view(ds, None, "newsroom", "u")
    assert await P.can_view(ds, {"id": "root"}, "newsroom", "u")
    assert await P.viewable_tables(ds, None, "newsroom", ["u", "t"]) == ["t"]
    assert await P.viewable_tables(ds, {"id": "root"}, "newsroom", ["u", "t"]) == ["u", "t"]
    # A table created after startup (not yet in 1.0's catalog) is still checked.
    await ds.databases["newsroom"].execute_write("create table late (id integer)")
    assert await P.viewable_tables(ds, None, "newsroom", ["late", "u"]) == ["late"]
    assert await P.viewable_tables(ds, None, P.STATE_DB_NAME, ["llm_calls"]) == []
    assert await P.viewable_tables(ds, {"id": "editor"}, P.STATE_DB_NAME, ["llm_calls"]) == [
        "llm_calls"
    ]


async def test_database_allow_block_limits_search(tmp_path):
    ds = make_datasette(tmp_path, config_extra={"databases": {
        "newsroom": {"tables": {"u": {"allow": {"id": "root"}}}},
        "other": {"allow": {"id": "alice"}},
    }})
    await ds.invoke_startup()
    assert await P.allowed(ds, None, "llm-search", "newsroom")
    assert not await P.allowed(ds, None, "llm-search", "other")
    assert await P.allowed(ds, {"id": "alice"}, "llm-search", "other")
    # A grant does not beat Datasette's own view permission.
    (tmp_path / "second").mkdir()
    ds2 = make_datasette(
        tmp_path / "second",
        grants={"databases": {"other": {"llm-ask": {"id": "bob"}}}},
        config_extra={"databases": {"other": {"allow": {"id": "alice"}}}},
    )
    await ds2.invoke_startup()
    assert not await P.allowed(ds2, {"id": "bob"}, "llm-ask", "other")


@pytest.mark.parametrize("name", ["anonymous", "signed-in", "alice", "bob", "carol"])
async def test_state_database_hidden_over_http(ds, name):
    c = cookies(ds, ACTORS[name])
    for path in (
        "/llm_newsroom",
        "/llm_newsroom.json",
        "/llm_newsroom/llm_calls",
        "/llm_newsroom/llm_calls.json",
        "/llm_newsroom/_llm_migrations.json",
    ):
        response = await ds.client.get(path, cookies=c)
        assert response.status_code == 403, (path, response.status_code)
    for path in ("/llm_newsroom.json?sql=select+*+from+llm_calls",
                 "/llm_newsroom/-/query.json?sql=select+*+from+llm_calls"):
        response = await ds.client.get(path, cookies=c)
        if response.status_code in (301, 302):
            response = await ds.client.get(response.headers["location"], cookies=c)
        assert response.status_code in (403, 404), (path, response.status_code)
        assert response.status_code == 403 or "query" in path, path
    index = (await ds.client.get("/.json", cookies=c)).json()
    names = database_names(index)
    assert P.STATE_DB_NAME not in names
    assert "newsroom" in names
    html = (await ds.client.get("/", cookies=c)).text
    assert "LLM call log" not in html


async def test_state_database_visible_to_log_viewers(ds):
    c = cookies(ds, ACTORS["editor"])
    for path in ("/llm_newsroom", "/llm_newsroom/llm_calls.json"):
        response = await ds.client.get(path, cookies=c)
        assert response.status_code == 200, (path, response.status_code)
    html = (await ds.client.get("/", cookies=c)).text
    assert "LLM call log" in html
    assert ds.urls.table(P.STATE_DB_NAME, "llm_calls") in html
    assert await P.can_view(ds, ACTORS["editor"], P.STATE_DB_NAME, "llm_calls")


async def test_root_reads_the_state_database_only_by_explicit_grant(tmp_path):
    # The state database holds every user's pasted documents and prompts:
    # being root is not a grant to read them (issue #10.3, "root included only by grant").
    for grants, want in ((GRANTS, 403), ({**GRANTS, "llm-view-log": {"id": ["editor", "root"]}}, 200)):
        (tmp_path / str(want)).mkdir()
        ds = make_datasette(tmp_path / str(want), grants=grants)
        await ds.invoke_startup()
        await ds.databases[P.STATE_DB_NAME].execute_write("create table if not exists llm_calls (id text primary key)")
        c = cookies(ds, ACTORS["root"])
        for path in ("/llm_newsroom", "/llm_newsroom/llm_calls.json",
                     "/llm_newsroom.json?sql=select+*+from+llm_calls"):
            response = await ds.client.get(path, cookies=c)
            if response.status_code in (301, 302):
                response = await ds.client.get(response.headers["location"], cookies=c)
            assert response.status_code == want, (grants, path, response.status_code)
        html = (await ds.client.get("/", cookies=c)).text
        assert ("LLM call log" in html) is (want == 200)
        assert "/-/llm-models" in html  # root still operates the models page
        assert await P.can_view(ds, ACTORS["root"], P.STATE_DB_NAME, "llm_calls") is (want == 200)


async def test_plain_datasette_state_db_guard_only_touches_state_db(ds):
    # Other databases stay public by default.
    assert (await ds.client.get("/newsroom/t.json")).status_code == 200
    assert (await ds.client.get("/other.json")).status_code == 200


def test_parse_grants_shape():
    grants = P.parse_grants(GRANTS)
    assert grants.instance == {"llm-extract": {"id": ["alice"]}, "llm-view-log": {"id": "editor"}}
    assert set(grants.databases["newsroom"]) == {"llm-extract", "llm-ask", "llm-index"}
    assert grants.tables[("newsroom", "t")] == {"llm-extract": {"id": "carol"}}
    assert P.parse_grants(None).instance == {}


@pytest.mark.parametrize(
    "raw, fragment",
    [
        ({"llm-teleport": True}, "Unknown action"),
        ({"databases": {"d": {"llm-view-log": True}}}, "instance level"),
        ({"databases": {"d": {"tables": {"t": {"llm-ask": True}}}}}, "on a database"),
        ({"databases": {"d": ["llm-ask"]}}, "must be a mapping"),
    ],
)
def test_parse_grants_rejects_bad_config(raw, fragment):
    with pytest.raises(ConfigError) as e:
        P.parse_grants(raw)
    assert fragment in str(e.value)


async def test_bad_permission_config_fails_at_startup(tmp_path):
    ds = make_datasette(tmp_path, grants={"llm-teleport": {"id": "x"}})
    with pytest.raises(ConfigError):
        await ds.invoke_startup()


@pytest.mark.skipif(not V1, reason="native permissions: blocks are a Datasette 1.0 feature")
async def test_native_permissions_blocks_on_v1(tmp_path):
    ds = make_datasette(
        tmp_path,
        grants={},
        config_extra={
            "permissions": {"llm-ask": {"id": "dave"}, "llm-view-log": {"id": "dave"}},
            "databases": {
                "newsroom": {"permissions": {"llm-search": False}},
                "other": {"tables": {"t": {"permissions": {"llm-extract": {"id": "erin"}}}}},
            },
        },
    )
    await ds.invoke_startup()
    actions = {a.name: a for a in ds.actions.values()}
    assert actions["llm-extract"].resource_class.__name__ == "TableResource"
    assert actions["llm-ask"].resource_class.__name__ == "DatabaseResource"
    assert actions["llm-view-log"].resource_class is None
    assert await P.allowed(ds, {"id": "dave"}, "llm-ask", "other")
    assert not await P.allowed(ds, {"id": "erin"}, "llm-ask", "other")
    assert await P.allowed(ds, {"id": "erin"}, "llm-extract", "other", "t")
    assert not await P.allowed(ds, {"id": "erin"}, "llm-extract", "newsroom", "t")
    # A native deny at database level beats the suite's default for llm-search.
    assert not await P.allowed(ds, None, "llm-search", "newsroom")
    assert await P.allowed(ds, None, "llm-search", "other")
    response = await ds.client.get("/llm_newsroom.json", cookies=cookies(ds, {"id": "dave"}))
    assert response.status_code == 200


@pytest.mark.skipif(not V1, reason="--root is a Datasette 1.0 switch here")
async def test_root_enabled_on_v1_still_needs_a_grant_for_the_state_db(tmp_path):
    ds = make_datasette(tmp_path, grants={})
    ds.root_enabled = True
    await ds.invoke_startup()
    assert await P.allowed(ds, {"id": "root"}, "llm-view-log")  # operates models, sees runs
    c = cookies(ds, {"id": "root"})
    # ...but `--root` is not a grant to read everyone's pasted documents.
    assert (await ds.client.get("/llm_newsroom.json", cookies=c)).status_code == 403


def test_grant_covers_matches_tables_like_sqlite():
    pairs = [("newsroom", "Filings")]
    assert P.grant_covers(pairs, "newsroom", "filings")
    assert not P.grant_covers(pairs, "newsroom", "filings2")
    assert not P.grant_covers(pairs, "Newsroom", "filings")  # database names are exact
    assert not P.grant_covers(pairs, "newsroom", None)  # a table grant is not a database grant
    assert P.grant_covers([("newsroom", None)], "newsroom", "anything")
    assert P.grant_covers([(None, None)], "other", None)


def test_the_running_line_calls_our_permission_hook():
    # Impls for hooks the other line has are kept unverified by pluggy and
    # never called; the ones for this line must be attached to a real spec.
    from datasette.plugins import pm

    import datasette_llm_core

    verified = {h.name for h in pm.get_hookcallers(datasette_llm_core) if h.spec is not None}
    assert "menu_links" in verified
    if V1:
        assert {"register_actions", "permission_resources_sql"} <= verified
        assert "permission_allowed" not in verified
    else:
        assert "permission_allowed" in verified
        assert not {"register_actions", "permission_resources_sql"} & verified



@pytest.mark.skipif(not V1, reason="the write API is a Datasette 1.0 feature")
async def test_instance_wide_write_grants_do_not_reach_the_state_db(tmp_path):
    from datasette.resources import DatabaseResource, TableResource

    ds = make_datasette(
        tmp_path,
        config_extra={"permissions": {"insert-row": True, "execute-write-sql": {"id": "editor"}}},
    )
    await ds.invoke_startup()
    editor = {"id": "editor"}  # may read the log (llm-view-log), not write it
    assert await ds.allowed(action="insert-row", resource=TableResource("newsroom", "t"), actor=None)
    for actor in (None, editor):
        assert not await ds.allowed(
            action="insert-row", resource=TableResource(P.STATE_DB_NAME, "llm_calls"), actor=actor
        )
    assert await ds.allowed(
        action="execute-write-sql", resource=DatabaseResource("newsroom"), actor=editor
    )
    assert not await ds.allowed(
        action="execute-write-sql", resource=DatabaseResource(P.STATE_DB_NAME), actor=editor
    )
    assert await P.can_view(ds, editor, P.STATE_DB_NAME, "llm_calls")


async def test_write_guard_on_065_refuses_non_root():
    # 0.65 has no write API; plugins that add one use these names too.
    class FakeDatasette:  # the write branch must not consult anything else
        pass

    async def check(actor, database=P.STATE_DB_NAME):
        return await P.permission_allowed_065(
            FakeDatasette(), actor, "insert-row", (database, "llm_calls")
        )

    assert await check({"id": "editor"}) is False
    assert await check({"id": "root"}) is None
    assert await check({"id": "editor"}, "newsroom") is None
