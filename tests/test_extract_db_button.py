"""A visible "Extract data into a new table" button on the page of a writable
database, for whoever may extract there: an empty newsroom database has no
table whose menu could offer it. Datasette 1.0 renders it (top_database);
0.65 gets it from a script whose URL carries the target."""

from __future__ import annotations

import sqlite3
from urllib.parse import quote

import pytest
from datasette.app import Datasette

from datasette_llm_core import permissions as P

from .rag_web_helpers import cookies

NEW_URL = "/-/llm-extract/new/newsroom"
SCRIPT = "llm_extract_db_button.js?new=" + quote(NEW_URL, safe="")
BUTTON = f'<a class="llm-newsroom-button" href="{NEW_URL}">Extract data into a new table</a>'


@pytest.fixture
async def ds(tmp_path, fake_models):
    empty = tmp_path / "newsroom.db"
    sqlite3.connect(empty).execute("vacuum")  # a database file with no tables
    archive = tmp_path / "archive.db"
    conn = sqlite3.connect(archive)
    conn.execute("create table stories (id integer primary key, title text)")
    conn.commit()
    conn.close()
    plugin = {"state_database": str(tmp_path / "state.db"),
              "permissions": {"llm-extract": {"id": ["editor", "root"]}}}
    key = "config" if P.IS_V1 else "metadata"
    datasette = Datasette([str(empty)], immutables=[str(archive)],
                          **{key: {"plugins": {"datasette-llm-newsroom": plugin}}})
    if P.IS_V1:
        datasette.root_enabled = True  # what `datasette --root` does (create-table)
    await datasette.invoke_startup()
    return datasette


def has_button(text: str, url: str = NEW_URL) -> bool:
    if P.IS_V1:
        return f'href="{url}">Extract data into a new table</a>' in text
    return "llm_extract_db_button.js?new=" + quote(url, safe="") in text


async def test_button_on_an_empty_writable_database(ds):
    page = await ds.client.get("/newsroom", cookies=cookies(ds, "root"))
    assert page.status_code == 200
    assert has_button(page.text)
    if P.IS_V1:
        assert BUTTON in page.text
    else:
        assert SCRIPT in page.text
    assert "llm_newsroom.css" in page.text  # the button's style
    # the button leads somewhere that works for this actor
    target = await ds.client.get(NEW_URL, cookies=cookies(ds, "root"))
    assert target.status_code == 200


async def test_no_button_without_permission_or_writable_database(ds):
    for actor in (None, "reporter"):  # signed out; signed in without llm-extract
        page = await ds.client.get("/newsroom", cookies=cookies(ds, actor))
        assert page.status_code == 200
        assert "llm_extract_db_button" not in page.text and "llm-newsroom-button" not in page.text
    # an immutable database cannot take a new table
    page = await ds.client.get("/archive", cookies=cookies(ds, "root"))
    assert page.status_code == 200 and not has_button(page.text, "/-/llm-extract/new/archive")
    # not the suite's own state database either
    page = await ds.client.get("/llm_newsroom", cookies=cookies(ds, "root"))
    assert "llm_extract_db_button" not in page.text and "llm-newsroom-button" not in page.text


async def test_granted_editor_sees_it(ds):
    page = await ds.client.get("/newsroom", cookies=cookies(ds, "editor"))
    if P.IS_V1:
        # 1.0 also needs Datasette's own create-table: without it, no button
        # that would only lead to a 403
        assert not has_button(page.text)
    else:
        assert has_button(page.text)
