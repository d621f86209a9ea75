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
