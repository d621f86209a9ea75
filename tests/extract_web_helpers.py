"""Shared set-up for the extraction web tests (Datasette on either line)."""

from __future__ import annotations

import json
import re
import sqlite3

from datasette.app import Datasette

from datasette_llm_core.permissions import IS_V1 as V1

from .conftest import wait_for

PLUGIN = "datasette-llm-newsroom"


def make_news_db(path) -> str:
    conn = sqlite3.connect(path)
    if conn.execute("select 1 from sqlite_master where name = 'donors'").fetchone():
        conn.close()
        return str(path)  # a "restarted" server reuses the file
    conn.executescript(
        """
        create table donors (name text, amount integer, party text);
        insert into donors values ('Existing Person', 100, 'blue');
        """
    )
    conn.commit()
    conn.close()
    return str(path)


def make_ds(tmp_path, *, extract: dict | None = None, plugin: dict | None = None,
            rules: dict | None = None, immutable: list | None = None) -> Datasette:
    news = make_news_db(tmp_path / "news.db")
    settings = {"state_database": str(tmp_path / "state.db"), **(plugin or {})}
    if extract is not None:
        settings["extract"] = extract
    config = {**(rules or {}), "plugins": {PLUGIN: settings}}
    kwargs = {"config": config} if V1 else {"metadata": config}
    ds = Datasette([news], immutables=immutable or [], **kwargs)
    if V1:
        ds.root_enabled = True  # what `datasette --root` does
    return ds


def cookies(ds, actor_id: str | None) -> dict:
    return {"ds_actor": ds.sign({"a": {"id": actor_id}}, "actor")} if actor_id else {}


async def csrf_token(ds, path: str, cookie: dict) -> tuple[str, dict]:
    """The 0.65 form token (set by any page rendering csrftoken()); 1.0 needs none."""
    r = await ds.client.get(path, cookies=cookie)
    token = r.cookies.get("ds_csrftoken") or ""
    if not token:
        m = re.search(r'name="csrftoken" value="([^"]*)"', r.text)
        token = m.group(1) if m else ""
    jar = dict(cookie)
    if token and not V1:
        jar["ds_csrftoken"] = token
    return token, jar


async def post_form(ds, path: str, data: dict, cookie: dict, *, files=None, token_page: str | None = None):
    token, jar = await csrf_token(ds, token_page or path, cookie)
    data = {"csrftoken": token, **data}
    return await ds.client.post(path, data=data, files=files, cookies=jar) if files else \
        await ds.client.post(path, data=data, cookies=jar)


def rows_json(*rows: dict) -> str:
    return json.dumps({"rows": list(rows)})


def db_bytes(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


async def state_rows(ds, sql: str, params=()) -> list[tuple]:
    """Read the state database through Datasette: a second SQLite library
    (stdlib sqlite3 beside pysqlite3) in one process breaks file locking."""
    from datasette_llm_core.state import state_db

    db = await state_db(ds)
    return [tuple(r) for r in (await db.execute(sql, list(params))).rows]


async def news_rows(ds, sql: str, params=()) -> list[tuple]:
    return [tuple(r) for r in (await ds.databases["news"].execute(sql, list(params))).rows]


async def wait_run(ds, run_id: str, cookie: dict, timeout: float = 30.0) -> dict:
    async def finished():
        r = await ds.client.get(f"/-/llm-extract/api/runs/{run_id}", cookies=cookie)
        data = r.json()
        return data if data["status"] not in ("pending", "running") else None

    return await wait_for(finished, timeout=timeout)
