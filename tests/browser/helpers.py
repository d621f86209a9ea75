"""Checks every browser journey applies to the pages it visits."""

from __future__ import annotations

UNLABELLED_JS = """
(root) => {
  const scope = root ? document.querySelector(root) : document;
  if (!scope) return ["(scope " + root + " not found)"];
  const visible = (el) => !!(el.offsetWidth || el.offsetHeight || el.getClientRects().length)
    && getComputedStyle(el).visibility !== "hidden";
  const bad = [];
  for (const el of scope.querySelectorAll("input, select, textarea")) {
    if (["hidden", "submit", "button", "reset", "image"].includes(el.type)) continue;
    if (!visible(el)) continue;
    const labelled = (el.labels && el.labels.length)
      || (el.getAttribute("aria-label") || "").trim()
      || (el.getAttribute("aria-labelledby") || "").split(/\\s+/).some(
           (id) => id && document.getElementById(id));
    if (!labelled) bad.push(el.outerHTML.slice(0, 160));
  }
  return bad;
}
"""


def unlabelled_controls(page, scope: str | None = None) -> list[str]:
    """Visible inputs/selects/textareas (within ``scope``) with no label or aria-label."""
    return page.evaluate(UNLABELLED_JS, scope)


def assert_labelled(page, scope: str | None = None) -> None:
    bad = unlabelled_controls(page, scope)
    assert not bad, f"controls without a label on {page.url}:\n" + "\n".join(bad)


def assert_status(page, url: str, status: int) -> None:
    """Fetch ``url`` with the page's cookies (no navigation: Chromium logs any
    4xx document as a console error, which the suite treats as a failure)."""
    response = page.request.get(url, max_redirects=0)
    assert response.status == status, f"{url}: expected HTTP {status}, got {response.status}"


def root_page_of(browser, server, problems, timeout: int):
    """(context, page, base URL) signed in as root on a test's own ``datasette serve``
    (``tests.test_crash_recovery.Server``); close the context when done."""
    base = f"http://127.0.0.1:{server.port}"
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(timeout)
    context.add_cookies([{"name": "ds_actor", "value": server.cookie.split("=", 1)[1], "url": base}])
    page = context.new_page()
    problems.watch(page)
    return context, page, base
