"""Property-based tests (hypothesis): names, questions and answers of any shape.

Deterministic (``derandomize=True``) so a run never flakes, and no example
database is written into the checkout.
"""

from __future__ import annotations

import re
import sqlite3

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datasette_llm_core.sql import quote_identifier, quote_identifiers
from datasette_llm_rag.citations import (
    CitationStreamFilter,
    answer_structure,
    render_html,
    validate_citations,
)
from datasette_llm_rag.prompts import Source, build_answer_request

from .test_injection import audit_html

PROPS = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=300,
    suppress_health_check=[HealthCheck.too_slow],
)

# Any unicode text, weighted towards the characters that break naive SQL.
hostile_chars = st.sampled_from(list("\"'`[];-- \t\n\\%_*/()?:@$") + ["\u202e", "\u200b", "\ufeff", "é", "名"])
names = st.one_of(
    st.text(min_size=1, max_size=40).filter(lambda s: "\x00" not in s),
    st.text(hostile_chars, min_size=1, max_size=20),
    st.builds(lambda a, b: a + b, st.text(hostile_chars, max_size=5), st.sampled_from(["select", "rowid", "_rowid_", "oid", "id", "table"])),
)


@PROPS
@given(table=names, columns=st.lists(names, min_size=1, max_size=6, unique_by=str.casefold))
def test_quoted_identifiers_round_trip_through_sqlite(table, columns):
    conn = sqlite3.connect(":memory:")
    conn.execute(f"create table {quote_identifier(table)} ({quote_identifiers(columns)})")
    info = [row[1] for row in conn.execute(f"pragma table_info({quote_identifier(table)})")]
    assert info == columns
    placeholders = ", ".join("?" for _ in columns)
    values = [f"v{i}" for i in range(len(columns))]
    conn.execute(
        f"insert into {quote_identifier(table)} ({quote_identifiers(columns)}) values ({placeholders})",
        values,
    )
    got = conn.execute(f"select {quote_identifiers(columns)} from {quote_identifier(table)}").fetchall()
    assert got == [tuple(values)]
    tables = [r[0] for r in conn.execute("select name from sqlite_master where type='table'")]
    assert tables == [table]


@PROPS
@given(text=st.text(max_size=400), allowed=st.sets(st.integers(1, 20), max_size=5))
def test_any_answer_renders_safely(text, allowed):
    links = {n: f"/db/t/{n}" for n in allowed}
    blocks = answer_structure(text, allowed)
    html = str(render_html(blocks, links.get))
    assert audit_html(html, set(links.values())) == []
    shown = {int(n) for n in re.findall(r'class="llm-rag-cite"[^>]*>\[(\d+)\]', html)}
    assert shown <= allowed


@PROPS
@given(
    text=st.text(st.sampled_from(list("ab [],;0123456789 9")), max_size=120),
    allowed=st.sets(st.integers(0, 12), max_size=4),
    size=st.integers(1, 9),
)
def test_stream_filter_agrees_with_whole_text(text, allowed, size):
    f = CitationStreamFilter(allowed)
    out = "".join(f.feed(text[i : i + size]) for i in range(0, len(text), size)) + f.flush()
    assert out == validate_citations(text, allowed).text


@PROPS
@given(question=st.text(max_size=300), row=st.text(max_size=300))
def test_any_question_and_row_build_a_fenced_request(question, row):
    request = build_answer_request(question, [Source(n=1, table="t", pk="1", title=row[:30], text=row)], marker="zq9")
    user = request.messages[0].parts[0].text
    data = user.split("\n\nQuestion (answer it from the rows above")[0]
    assert data.count("<<<ROW 1 zq9>>>") == 1
    assert data.count("<<<END ROW 1 zq9>>>") == 1
    assert user.count("<<<ROW 1 zq9>>>") == 1 + question.count("<<<ROW 1 zq9>>>")


# --- table specs: any accepted name survives creating the table and inserting ---------

from datasette_llm_extract.schema import (  # noqa: E402
    COLUMN_TYPES,
    SchemaError,
    row_model,
    validate_row,
    validate_table_spec,
)
from datasette_llm_extract.service import UserError, check_new_table_name  # noqa: E402
from datasette_llm_extract.writer import insert_rows_fn, table_columns  # noqa: E402

SAMPLE = {"text": "a'b\"c", "integer": 7, "number": 2.5, "date": "2024-02-29", "boolean": True, "choice": "x"}


@PROPS
@given(
    table=names,
    columns=st.lists(st.tuples(names, st.sampled_from(COLUMN_TYPES)), min_size=1, max_size=5),
    keyed=st.booleans(),
)
def test_any_accepted_spec_round_trips_through_sqlite(table, columns, keyed):
    raw = {"columns": [{"name": n, "type": t, "choices": ["x", "y"] if t == "choice" else []} for n, t in columns]}
    if keyed:
        raw["key_columns"] = [columns[0][0]]
        raw["primary_key"] = True
    try:
        spec = validate_table_spec(raw)
        table = check_new_table_name(table)
    except (SchemaError, UserError) as e:
        assert str(e)  # refused with a message, never another exception
        return
    model = row_model(spec)
    values, errors = validate_row(model, {c.name: SAMPLE[c.type] for c in spec.columns})
    assert errors == []
    conn = sqlite3.connect(":memory:", isolation_level=None)
    result = insert_rows_fn(table, spec, True, [(0, values)], "run1", True)(conn)
    assert [i for i, _ in result["inserted"]] == [0]
    stored = [c["name"] for c in table_columns(conn, table)]
    assert stored == spec.column_names() + ["_llm_run"]
    row = conn.execute(
        f"select {quote_identifiers(spec.column_names())} from {quote_identifier(table)}"
    ).fetchone()
    expected = tuple(int(v) if isinstance(v, bool) else v for v in (values[n] for n in spec.column_names()))
    assert row == expected
    assert [r[0] for r in conn.execute("select name from sqlite_master where type='table'")] == [table]


# --- any question, asked through the real API: never a 500 -----------------------------


def test_any_unicode_question_never_gives_a_server_error(tmp_path, fake_models, scripted_model):
    import asyncio
    import json

    from datasette.app import Datasette

    from datasette_llm_core import permissions as P
    from datasette_llm_rag.indexer import refresh_index

    from .fakes import HashEmbeddingModel

    news = tmp_path / "news.db"
    conn = sqlite3.connect(news)
    conn.execute("create table articles (id integer primary key, title text, body text)")
    conn.executemany("insert into articles values (?, ?, ?)",
                     [(i, f"t{i}", f"road budget {i} école 名字 \u202e") for i in range(1, 6)])
    conn.commit()
    conn.close()
    tables = {"articles": {"columns": ["title", "body"], "title_column": "title"}}
    side = tmp_path / "news.llm-rag.db"
    scripted_model.responder = lambda request: "An answer [1] with [9] and <b>tags</b>."
    plugin = {"state_database": ":memory:", "defaults": {"answer": "scripted", "embed": "hash-embed"},
              "rag": {"embedding_model": "hash-embed",
                      "databases": {"news": {"sidecar": str(side), "tables": tables}}}}
    config = {"plugins": {"datasette-llm-newsroom": plugin}}
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(refresh_index(str(news), "news", {"databases": {"news": {"tables": tables}}},
                                              HashEmbeddingModel(), sidecar=str(side)))
        ds = Datasette([str(news)], config=config) if P.IS_V1 else Datasette([str(news)], metadata=config)
        if P.IS_V1:
            ds.root_enabled = True
        loop.run_until_complete(ds.invoke_startup())
        jar = {"ds_actor": ds.sign({"a": {"id": "root"}}, "actor")}
        page = loop.run_until_complete(ds.client.get("/-/llm-ask/news", cookies=jar))
        headers = {}
        if page.cookies.get("ds_csrftoken"):
            jar["ds_csrftoken"] = page.cookies["ds_csrftoken"]
            headers["x-csrftoken"] = page.cookies["ds_csrftoken"]

        async def check(question: str):
            r = await ds.client.post("/-/llm-rag/news/ask.json", cookies=jar, headers=headers, json={"q": question})
            assert r.status_code < 500, (question, r.status_code, r.text[:300])
            body = r.json()
            assert body["ok"] or body.get("error")
            r = await ds.client.get("/-/llm-rag/news/search.json", params={"q": question}, cookies=jar)
            assert r.status_code < 500, (question, r.status_code, r.text[:300])
            r = await ds.client.get("/-/llm-ask/news", params={"q": question}, cookies=jar)
            assert r.status_code < 500, (question, r.status_code)
            assert "<b>tags</b>" not in r.text
            json.dumps(body)

        @settings(derandomize=True, database=None, deadline=None, max_examples=120,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
        @given(question=st.one_of(
            st.text(max_size=300),
            st.text(hostile_chars, max_size=60),
            st.sampled_from(['"', "NEAR(", "*", "AND OR NOT", "\x00", "\ud800".encode("utf-8", "surrogatepass").decode("utf-8", "replace"), " " * 50]),
        ))
        def run(question):
            loop.run_until_complete(check(question))

        run()
    finally:
        loop.close()
