"""A reporter asks the question box: the cited answer streams in, citations lead to rows;
without any chat model, semantic search still answers with matching rows."""

from __future__ import annotations

import re

import pytest

from ..fake_openai_server import Reply, last_user_text
from .conftest import EXPECT_TIMEOUT
from .helpers import assert_labelled

pytestmark = pytest.mark.browser
expect = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed: pip install -e '.[test]'"
).expect

QUESTION = "What did Stephanie Clifford's lawsuit against Donald Trump involve?"
CASE = "Clifford v. Trump"
#: Only the District Court case (2:18-cv-02217) names Essential Consultants; the
#: answer below is true of that row, so it is the one the model cites.
NEEDLE = "Essential Consultants"


def _row_number(prompt: str, needle: str) -> int | None:
    """The number n of the <<<ROW n ...>>> block that contains ``needle``."""
    for match in re.finditer(r"<<<ROW (\d+)[^>]*>>>(.*?)<<<END ROW \1", prompt, re.S):
        if needle in match.group(2):
            return int(match.group(1))
    return None


def test_ask_streams_a_cited_answer_and_citation_opens_the_row(
    root_page, datasette_server, fake_llm, shots
):
    page = root_page
    seen = {}

    def handler(request):
        n = _row_number(last_user_text(request), NEEDLE)
        if n is None:
            return None
        seen["n"] = n
        answer = (f"Stephanie Clifford sued Donald J. Trump, Essential Consultants LLC and "
                  f"Michael Cohen in the Central District of California [{n}]. "
                  f"The case concerns the 2016 Trump campaign [{n}].")
        return Reply(content=answer, token_delay=0.12, ttft=0.3)

    fake_llm.handler = handler
    page.goto(datasette_server.url("/-/llm-ask/documents"))
    expect(page.locator("h1")).to_contain_text("Ask")
    assert_labelled(page, "#llm-rag-form")
    page.locator("#llm-rag-q").fill(QUESTION)
    ask = page.get_by_role("button", name="Ask")
    page.locator("#llm-rag-q").focus()
    page.keyboard.press("Tab")  # keyboard only: Tab from the question reaches the button
    expect(ask).to_be_focused()
    page.keyboard.press("Enter")

    answer = page.locator("#llm-rag-answer .llm-rag-answer-text")
    status = page.locator("#llm-rag-answer .llm-rag-status")
    # streaming: the first words show while the model is still writing
    expect(answer).to_contain_text("Stephanie Clifford", timeout=EXPECT_TIMEOUT)
    assert "Writing the answer" in status.inner_text()
    assert "campaign" not in answer.inner_text()
    # done: citations become links to the rows, listed under "Cited rows"
    cite = answer.locator("a.llm-rag-cite").first
    expect(cite).to_be_visible(timeout=EXPECT_TIMEOUT)
    assert seen, "the model never saw the Clifford row among its sources"
    expect(cite).to_have_text(f"[{seen['n']}]")
    expect(page.locator(".llm-rag-cited li")).to_have_count(1)
    expect(page.locator(".llm-rag-cited")).to_contain_text(CASE)
    # rows read as a reporter would: table title, no internal fused score
    results = page.locator("#llm-rag-results")
    expect(results).to_contain_text("in Lawsuits involving Donald Trump")
    assert not re.search(r"score \d", results.inner_text())
    # the question box reranks: the number shown is the reranker's, and it orders the list
    assert "relevance" in results.locator(".llm-rag-score").first.inner_text()
    assert "fused rank score" in (results.locator(".llm-rag-score").first.get_attribute("title") or "")
    expect(page.locator("#llm-rag-answer .llm-rag-meta")).to_contain_text("Check every cited row")
    assert_labelled(page, "#llm-rag-answer")
    shots(page, "cited-answer", readme=True, full_page=True)

    # a citation opens its row in a new tab: the answer stays where it was
    with page.context.expect_page() as opened:
        cite.click()
    row_page = opened.value
    expect(row_page).to_have_url(re.compile(r"/documents/trump_lawsuits/2~3A18-cv-02217"))
    expect(row_page.locator("body")).to_contain_text(CASE)
    expect(row_page.locator("body")).to_contain_text(NEEDLE)
    row_page.close()
    expect(answer).to_contain_text("The case concerns the 2016 Trump campaign")
    # the answer's permalink shows it again, with the row as the model read it
    page.locator("#llm-rag-answer a.llm-rag-permalink").click()
    expect(page).to_have_url(re.compile(r"/-/llm-rag/answers/rag-[0-9a-f]{32}$"))
    expect(page.locator(".llm-rag-answer-text")).to_contain_text("Stephanie Clifford sued")
    expect(page.locator(".llm-rag-cited")).to_contain_text(NEEDLE)
    expect(page.locator(".llm-rag-question")).to_contain_text(QUESTION)


def test_answer_citing_no_rows_is_flagged_and_rows_shown_as_search_results(
    root_page, datasette_server, fake_llm
):
    # Issue 16: a small real model answered without a single [n]; the page showed it as an answer.
    page = root_page
    fake_llm.handler = lambda request: Reply(content="Stephanie Clifford sued someone at some point.")
    try:
        page.goto(datasette_server.url("/-/llm-ask/documents"))
        page.locator("#llm-rag-q").fill(QUESTION)
        page.get_by_role("button", name="Ask").click()
        status = page.locator("#llm-rag-answer .llm-rag-status")
        expect(status).to_contain_text("cites none of the rows", timeout=EXPECT_TIMEOUT)
        expect(page.locator("#llm-rag-answer")).to_have_class(re.compile("llm-rag-uncited"))
        results = page.locator("#llm-rag-results")
        expect(results.locator("h2")).to_contain_text("Search results (the answer cites none of them)")
        expect(results).to_contain_text(CASE)
        expect(page.locator(".llm-rag-cited li")).to_have_count(0)
    finally:
        fake_llm.handler = None


def test_semantic_search_without_any_model(anon_page, search_only_server, fake_llm, shots):
    page = anon_page
    page.goto(search_only_server.url("/-/llm-ask/documents"))
    expect(page.locator("h1")).to_contain_text("Ask")
    search = page.get_by_role("button", name="Search")
    expect(search).to_be_visible()
    page.locator("#llm-rag-q").fill("hush money payment to an adult film actress")
    search.click()
    hits = page.locator("#llm-rag-results li")
    expect(hits.first).to_be_visible(timeout=EXPECT_TIMEOUT)
    expect(page.locator("#llm-rag-results")).to_contain_text("relevance")
    expect(page.locator("#llm-rag-results")).to_contain_text("in Lawsuits involving Donald Trump")
    assert_labelled(page, "main, .content, body")
    shots(page, "semantic-search")
    hits.first.get_by_role("link").click()
    expect(page).to_have_url(re.compile(r"/documents/trump_lawsuits/"))
    assert fake_llm.chat_requests() == []  # no model was asked anything


def test_question_box_on_a_table_page(anon_page, search_only_server):
    """The box Datasette shows above an indexed table (1.0: top_table hook; 0.65: script)."""
    page = anon_page
    page.goto(search_only_server.url("/documents/trump_lawsuits"))
    box = page.locator("form.llm-rag-box")
    expect(box).to_be_visible(timeout=EXPECT_TIMEOUT)
    assert_labelled(page, "form.llm-rag-box")
    field = box.get_by_role("searchbox")
    field.fill("Stephanie Clifford")
    field.press("Enter")
    expect(page).to_have_url(re.compile(r"/-/llm-ask/documents\?"))
    expect(page.locator("#llm-rag-results")).to_contain_text(CASE, timeout=EXPECT_TIMEOUT)
