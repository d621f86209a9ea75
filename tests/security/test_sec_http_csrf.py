"""Issue 10 item 1 and issue 16 item 9: cross-site requests and JSON clients.

The attack: a page on another origin of the same host (127.0.0.1, another
port: same-site, so the Lax session cookie goes along) makes a signed-in
user's browser POST to the suite. On Datasette 0.65 the suite let
multipart/form-data through the CSRF check on every ``/-/llm-extract/`` route
while the JSON API read the body as JSON whatever its declared type: the page
undid the user's insert and started a run as them. Now JSON endpoints accept
only ``application/json`` (415 otherwise: a cross-site page cannot send that
type without a CORS preflight), forms need their token, and a signed-in JSON
client gets the same treatment from ``ask.json`` as from the extraction API.
"""

from __future__ import annotations

import http.server
import threading

import pytest

from ..browser.conftest import CHROMIUM, CHROMIUM_ARGS, _skip_reason
from ..fake_openai_server import FakeOpenAIServer
from .sec_http_server import V1, extraction_reply, start_world

ATTACK_PAGE = """<!doctype html><html><body><p id="status">working</p><script>
(async function () {
  var target = %(target)s, run = %(run)s;
  var sent = [];
  async function post(path, body, type) {
    try {
      await fetch(target + path, {method: "POST", mode: "no-cors", credentials: "include",
                                  headers: {"content-type": type}, body: body});
      sent.push(path);
    } catch (e) { sent.push(path + " failed " + e); }
  }
  await post("/-/llm-extract/api/runs/" + run + "/undo", "{}", "multipart/form-data");
  await post("/-/llm-extract/api/runs", JSON.stringify({database: "news", table: "target",
             text: "Mallory paid 666 dollars.", columns: ["name", "amount"]}), "multipart/form-data");
  await post("/-/llm-extract/api/runs", JSON.stringify({database: "news", table: "target",
             text: "Mallory paid 667 dollars.", columns: ["name", "amount"]}), "text/plain");
  await post("/-/llm-extract/templates", JSON.stringify({name: "planted", shared: true,
             schema: {columns: [{name: "a"}]}}), "multipart/form-data");
  await post("/-/llm-extract/runs/" + run + "/undo", "csrftoken=guess", "application/x-www-form-urlencoded");
  document.getElementById("status").textContent = "done " + sent.length;
})();
</script></body></html>"""


class _AttackSite:
    """A page on another origin of 127.0.0.1 (same site as the suite's server)."""

    def __init__(self, html: str):
        page = html.encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                self.send_response(200)
                self.send_header("content-type", "text/html; charset=utf-8")
                self.send_header("content-length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/attack.html"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("sec-http-csrf")
    with FakeOpenAIServer(handler=extraction_reply) as fake:
        server = start_world(tmp_path, fake.base_url)
        try:
            yield server
        finally:
            server.stop()


def _run_status(server, run_id: str) -> str:
    conn = server.state()
    try:
        return conn.execute("select status from llm_extract_runs where id = ?", [run_id]).fetchone()[0]
    finally:
        conn.close()


@pytest.mark.browser
def test_cross_site_page_cannot_undo_or_start_runs_as_the_signed_in_user(world):
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    run_id = world.inserted_run("alice", "Acme paid 12 dollars. Bolt paid 30 dollars.")
    assert _run_status(world, run_id) == "inserted"
    runs_before = world.count("select count(*) from llm_extract_runs")
    templates_before = world.count("select count(*) from llm_extract_templates")
    html = ATTACK_PAGE % {"target": repr(world.base_url), "run": repr(run_id)}
    with _AttackSite(html) as site, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context()
            context.add_cookies([{"name": "ds_actor", "value": world.actor_cookie_value("alice"),
                                  "domain": "127.0.0.1", "path": "/", "sameSite": "Lax"}])
            page = context.new_page()
            page.goto(site.url)
            page.wait_for_function("document.getElementById('status').textContent.startsWith('done')",
                                   timeout=15_000)
            assert page.text_content("#status") == "done 5"  # every request went out
            context.close()
        finally:
            browser.close()
    # give a started run time to show up before counting
    import time

    time.sleep(0.5)
    assert _run_status(world, run_id) == "inserted", "the attack page undid the user's insert"
    assert world.count("select count(*) from llm_extract_runs") == runs_before, "the attack page started a run"
    assert world.count("select count(*) from llm_extract_templates") == templates_before


def test_json_endpoints_refuse_other_content_types(world):
    body = '{"database": "news", "table": "target", "text": "Acme paid 1 dollars.", "columns": ["name"]}'
    for actor in ("alice", None):
        for content_type in ("multipart/form-data", "text/plain", "application/x-www-form-urlencoded"):
            r = world.request("POST", "/-/llm-extract/api/runs", body, actor=actor, content_type=content_type)
            if actor is None:
                assert r.status == 403, r  # not signed in: refused before the body is looked at
                continue
            assert r.status == 415, (content_type, r)
            assert "application/json" in r.json()["error"]
    run_id = world.inserted_run("alice", "Cobalt paid 5 dollars.")
    r = world.request("POST", f"/-/llm-extract/api/runs/{run_id}/undo", "{}", actor="alice",
                      content_type="multipart/form-data")
    assert r.status == 415, r
    assert _run_status(world, run_id) == "inserted"
    r = world.request("POST", "/-/llm-extract/templates", '{"name": "x", "schema": {"columns": [{"name": "a"}]}}',
                      actor="alice", content_type="text/plain")
    assert r.status == 415, r
    # the same request as JSON works: API clients are not locked out
    r = world.request("POST", f"/-/llm-extract/api/runs/{run_id}/undo", {}, actor="alice")
    assert r.status == 200, r
    assert _run_status(world, run_id) == "undone"


@pytest.mark.skipif(V1, reason="0.65's token check: 1.0 refuses cross-site POSTs by Sec-Fetch-Site/Origin")
def test_forms_need_their_token(world):
    run_id = world.inserted_run("alice", "Delta paid 7 dollars.")
    for body, content_type in (("", "application/x-www-form-urlencoded"),
                               ("csrftoken=forged", "application/x-www-form-urlencoded")):
        r = world.request("POST", f"/-/llm-extract/runs/{run_id}/undo", body, actor="alice",
                          content_type=content_type, csrf="the-real-one")
        assert r.status == 403, r
    multipart = ('--b\r\nContent-Disposition: form-data; name="csrftoken"\r\n\r\nforged\r\n--b--\r\n')
    r = world.request("POST", f"/-/llm-extract/runs/{run_id}/undo", multipart, actor="alice",
                      content_type="multipart/form-data; boundary=b", csrf="the-real-one")
    assert r.status == 403, r
    assert _run_status(world, run_id) == "inserted"
    token = world.csrf_token("alice")
    r = world.request("POST", f"/-/llm-extract/runs/{run_id}/undo", f"csrftoken={token}&confirm=yes", actor="alice",
                      content_type="application/x-www-form-urlencoded", csrf=token)
    assert r.status == 302, r
    assert _run_status(world, run_id) == "undone"


def test_signed_in_json_client_can_ask(world):
    """Issue 16 item 9: on 0.65 ``ask.json`` answered 403 to a signed-in JSON client."""
    r = world.request("POST", "/-/llm-rag/news/ask.json", {"q": "road budgets"}, actor="alice")
    assert r.status == 200, r
    assert r.json()["ok"] is True and r.json()["mode"] == "answer"
    # like the extraction API: JSON only
    r = world.request("POST", "/-/llm-rag/news/ask.json", "q=road+budgets", actor="alice",
                      content_type="application/x-www-form-urlencoded")
    assert r.status == 415, r
    r = world.request("POST", "/-/llm-rag/feedback.json", '{"answer_id": "x", "rating": "up"}',
                      actor="alice", content_type="text/plain")
    assert r.status == 415, r


@pytest.mark.skipif(not V1, reason="API tokens exist on Datasette 1.0 only")
def test_api_token_client_can_ask_and_extract(world):
    """What the README tells API clients on 1.0: a token from ``datasette create-token``."""
    import subprocess
    import sys

    from .sec_http_server import SECRET

    token = subprocess.run([sys.executable, "-m", "datasette", "create-token", "alice", "--secret", SECRET],
                           capture_output=True, text=True, check=True, timeout=60,
                           cwd=world.tmp_path).stdout.strip()
    assert token.startswith("dstok_")
    auth = {"authorization": f"Bearer {token}"}
    r = world.request("POST", "/-/llm-rag/news/ask.json", {"q": "road budgets"}, headers=auth)
    assert r.status == 200 and r.json()["mode"] == "answer", r
    r = world.request("POST", "/-/llm-extract/api/runs", {"database": "news", "table": "target",
                      "text": "Tokenco paid 9 dollars.", "columns": ["name", "amount"]}, headers=auth)
    assert r.status == 201 and r.json()["actor_id"] == "alice", r
