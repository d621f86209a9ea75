"""Issue 10 items 4, 15, 16 and 17, against a real ``datasette serve``:

- item 4: the examples export (``examples/<db>/<table>.jsonl``) gave anyone
  with ``llm-extract`` on the table every user's pasted text, rejected rows
  and run ids. Now: one's own reviewed rows, plus those whose owner shared
  them (a checkbox / ``share_examples`` when inserting); root gets all;
- item 15: ``?message=`` on the run page showed any text as a status notice;
  now only messages the server signed for that run show;
- item 16: shared templates had no size or count limit and could not be
  deleted; now 32 KB and 50 per owner, and the owner (or root) deletes;
- item 17: a table-level ``llm-extract`` grant did not reach ``/-/llm-extract``,
  ``templates`` or the menu on 0.65.
"""

from __future__ import annotations

import re

import pytest

from ..fake_openai_server import FakeOpenAIServer
from .sec_http_server import extraction_reply, start_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("sec-http-access")
    with FakeOpenAIServer(handler=extraction_reply) as fake:
        server = start_world(tmp_path, fake.base_url)
        try:
            yield server
        finally:
            server.stop()


def _export(world, actor) -> str:
    r = world.request("GET", "/-/llm-extract/examples/news/target.jsonl", actor=actor)
    assert r.status == 200, r
    return r.text


def test_examples_export_holds_only_own_or_shared_rows(world):
    private_run = world.inserted_run("alice", "Alicecorp paid 11 dollars. CONFIDENTIAL-SOURCE-A said so.")
    assert "CONFIDENTIAL-SOURCE-A" in _export(world, "alice")  # her own
    leaked = _export(world, "bob")
    assert "CONFIDENTIAL-SOURCE-A" not in leaked and private_run not in leaked, "bob got alice's document"
    assert "CONFIDENTIAL-SOURCE-A" not in _export(world, "carol")
    assert "CONFIDENTIAL-SOURCE-A" in _export(world, "root")
    # shared on purpose: now it may leave
    shared_run = world.inserted_run("alice", "Sharedco paid 22 dollars. PUBLIC-SOURCE-B.", share_examples=True)
    got = _export(world, "bob")
    assert "PUBLIC-SOURCE-B" in got and shared_run in got
    assert "CONFIDENTIAL-SOURCE-A" not in got


def test_run_page_shows_only_messages_the_server_set(world):
    run_id = world.inserted_run("alice", "Pagecorp paid 5 dollars.")
    phish = "Your session expired: call 555-0100 and give your password"
    r = world.request("GET", f"/-/llm-extract/runs/{run_id}?message={phish.replace(' ', '+')}", actor="alice")
    assert r.status == 200, r
    assert "555-0100" not in r.text, "the page showed a message from the link"
    # a real action's message still shows, from the redirect the server made
    token = world.csrf_token("alice")
    r = world.request("POST", f"/-/llm-extract/runs/{run_id}/undo", f"csrftoken={token}&confirm=yes", actor="alice",
                      csrf=token or None, content_type="application/x-www-form-urlencoded")
    assert r.status == 302, r
    location = r.headers["location"]
    page = world.request("GET", location, actor="alice")
    assert re.search(r'class="llm-message"[^>]*>Undone: 1 row\(s\) deleted', page.text), page.text[-2000:]
    # a signed message is bound to its run
    other = world.inserted_run("alice", "Othercorp paid 6 dollars.")
    query = location.split("?", 1)[1]
    page = world.request("GET", f"/-/llm-extract/runs/{other}?{query}", actor="alice")
    assert "Undone:" not in page.text


def _template(name: str, instructions: str = "", shared: bool = True) -> dict:
    return {"name": name, "shared": shared, "instructions": instructions,
            "schema": {"columns": [{"name": "name"}, {"name": "amount", "type": "integer"}]}}


def test_templates_are_limited_and_their_owner_can_delete_them(world):
    r = world.request("POST", "/-/llm-extract/templates", _template("huge", "x" * 40_000), actor="bob")
    assert r.status == 413, r
    assert "limit" in r.json()["error"]
    ids = []
    for i in range(50):
        r = world.request("POST", "/-/llm-extract/templates", _template(f"bob-{i}"), actor="bob")
        assert r.status == 201, r
        ids.append(r.json()["id"])
    r = world.request("POST", "/-/llm-extract/templates", _template("bob-51"), actor="bob")
    assert r.status == 409, r
    assert "delete one" in r.json()["error"]
    # another user cannot delete bob's shared template; bob and root can
    r = world.request("POST", f"/-/llm-extract/templates/{ids[0]}/delete", {}, actor="alice")
    assert r.status == 403, r
    r = world.request("POST", f"/-/llm-extract/templates/{ids[0]}/delete", {}, actor="bob")
    assert r.status == 200, r
    r = world.request("POST", f"/-/llm-extract/templates/{ids[1]}/delete", {}, actor="root")
    assert r.status == 200, r
    r = world.request("POST", f"/-/llm-extract/templates/{ids[0]}/delete", {}, actor="bob")
    assert r.status == 404, r
    r = world.request("POST", "/-/llm-extract/templates", _template("bob-again"), actor="bob")
    assert r.status == 201, r
    # the start page stays small however many shared templates exist
    page = world.request("GET", "/-/llm-extract/into/news/target", actor="alice")
    assert page.status == 200 and len(page.body) < 600_000, len(page.body)


def test_table_level_grant_reaches_the_extraction_pages(world):
    r = world.request("GET", "/-/llm-extract", actor="carol")
    assert r.status == 200, r
    assert "/-/llm-extract/into/news/target" in r.text
    r = world.request("POST", "/-/llm-extract/templates", _template("carol's", shared=False), actor="carol")
    assert r.status == 201, r
    home = world.request("GET", "/", actor="carol")
    assert 'href="/-/llm-extract"' in home.text, "no menu link for a table-level grant"
    # and still nothing beyond that table
    assert world.request("GET", "/-/llm-extract/new/news", actor="carol").status == 403
    assert world.request("GET", "/-/llm-extract/into/news/notes", actor="carol").status == 403
    nobody = world.request("GET", "/-/llm-extract", actor="mallory")
    assert nobody.status == 403
    assert 'href="/-/llm-extract"' not in world.request("GET", "/", actor="mallory").text


@pytest.mark.browser
def test_owner_deletes_a_template_from_the_start_page(world):
    from ..browser.conftest import CHROMIUM, CHROMIUM_ARGS, _skip_reason

    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    r = world.request("POST", "/-/llm-extract/templates", _template("alice-doomed", shared=False), actor="alice")
    assert r.status == 201, r
    template_id = r.json()["id"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context()
            context.add_cookies([{"name": "ds_actor", "value": world.actor_cookie_value("alice"),
                                  "domain": "127.0.0.1", "path": "/", "sameSite": "Lax"}])
            page = context.new_page()
            page.on("dialog", lambda dialog: dialog.accept())
            page.goto(world.base_url + "/-/llm-extract/into/news/target")
            delete = page.locator('[data-llm-action="delete-template"]')
            page.select_option("#llm-template", str(template_id))
            delete.click()
            page.wait_for_selector("text=Template deleted.", timeout=10_000)
            assert page.locator(f'#llm-template option[value="{template_id}"]').count() == 0
            # someone else's shared template offers no delete button
            shared = [o for o in page.locator("#llm-template option").all() if "(shared)" in o.text_content()]
            if shared:
                page.select_option("#llm-template", shared[0].get_attribute("value"))
                assert delete.is_hidden()
            context.close()
        finally:
            browser.close()
    assert world.count("select count(*) from llm_extract_templates where id = ?", [template_id]) == 0
