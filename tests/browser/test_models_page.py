"""The models page in Chromium against a real server: the Test button, passing and failing."""

import pytest

from ..fake_openai_server import Reply
from .conftest import EXPECT_TIMEOUT
from .helpers import assert_labelled

pytestmark = pytest.mark.browser
expect = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed: pip install -e '.[test]'"
).expect


def test_test_button_shows_ok_then_the_exact_error(root_page, datasette_server, fake_llm, shots):
    page = root_page
    page.goto(datasette_server.url("/-/llm-models"))
    expect(page.locator("h1")).to_have_text("LLM models")
    row = page.locator('tr[data-model-id="fake"]')
    expect(row).to_contain_text("configuration")
    expect(row).to_contain_text("environment variable FAKE_LLM_KEY")
    expect(row).to_contain_text("ready")
    assert_labelled(page)

    fake_llm.on(None, Reply(content="OK"))
    row.get_by_role("button", name="Test fake").click()
    result = row.locator(".llm-core-result")
    expect(result).to_contain_text("OK in", timeout=EXPECT_TIMEOUT)
    expect(result).to_contain_text(": OK")

    fake_llm.enqueue(Reply(status=503, error_message="The fake server is overloaded right now"))
    row.get_by_role("button", name="Test fake").click()
    expect(result).to_contain_text("Failed (server_error, HTTP 503)", timeout=EXPECT_TIMEOUT)
    expect(result).to_contain_text("The fake server is overloaded right now")
    shots(page, "models-page-test")
    # one request per click: no retry, no fallback, and the form token was accepted
    assert len(fake_llm.chat_requests()) == 2
    assert "sk-fake-browser-suite-key" not in page.content()
